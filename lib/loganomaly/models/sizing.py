"""How much model work one scoring task does at a time: sized from the task and the row, not hard-coded.

Three numbers, chosen on the driver from ``spark.task.cpus`` and the kind's row size
(:meth:`loganomaly.models.kind.ModelKind.row_floats`, ``T x F`` for a window) and shipped to the
Python workers with the scoring function:

* **torch threads** per Python worker = ``spark.task.cpus``: Spark runs one task per
  ``spark.task.cpus`` cores, each in its own Python worker, so more threads than that oversubscribe
  the cores the other tasks use, and fewer leave the task's cores idle.
* **Arrow batch** (``spark.sql.execution.arrow.maxRecordsPerBatch``) = :data:`ARROW_BATCH_FLOATS`
  input floats per batch (16 MiB of float32), clamped to ``[1024, 65536]`` rows: large enough that
  the per-batch Python cost (pyarrow calls, the DataFrame of results) is small next to the model,
  small enough that a batch, its normalised copy and its errors stay in a few tens of MiB.
* **forward pass** = :data:`FORWARD_BATCH_FLOATS` input floats per pass (4 MiB), clamped to
  ``[64, 16384]`` rows: an LSTM's activations are a few times its input, so this bounds the
  working set a pass needs (it stays in cache-friendly sizes on a CPU and fills a GPU well).

A kind without a fixed row size (DeepLog's sessions vary in length) keeps the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ARROW_BATCH_FLOATS", "ARROW_ROWS", "DEFAULT_ARROW_ROWS", "DEFAULT_FORWARD_ROWS", "FORWARD_BATCH_FLOATS",
           "FORWARD_ROWS", "ScoringSizes", "scoring_sizes", "torch_threads"]

#: Input floats per Arrow batch handed to the scoring function.
ARROW_BATCH_FLOATS = 1 << 22
#: Input floats per forward pass of the network.
FORWARD_BATCH_FLOATS = 1 << 20
#: Rows per Arrow batch / forward pass when a kind's rows have no fixed size.
DEFAULT_ARROW_ROWS = 4096
DEFAULT_FORWARD_ROWS = 1024
ARROW_ROWS = (1024, 65536)
FORWARD_ROWS = (64, 16384)


@dataclass(frozen=True)
class ScoringSizes:
    """Torch threads per Python worker, rows per Arrow batch and rows per forward pass."""

    threads: int
    arrow_rows: int
    forward_rows: int


def torch_threads(task_cpus: int | None) -> int:
    """Torch intra-op threads for a Python worker running one task of ``task_cpus`` cores (at least 1)."""
    return max(1, int(task_cpus or 1))


def _rows(row_floats: int | None, target: int, bounds: tuple[int, int], default: int) -> int:
    if not row_floats or row_floats < 1:
        return default
    low, high = bounds
    return min(high, max(low, target // row_floats))


def scoring_sizes(row_floats: int | None, task_cpus: int | None = 1) -> ScoringSizes:
    """The sizes for rows of ``row_floats`` input floats scored by tasks of ``task_cpus`` cores.

    Example:
        >>> scoring_sizes(12 * 24, task_cpus=1)  # windows of 12 steps x 24 features
        ScoringSizes(threads=1, arrow_rows=14563, forward_rows=3640)
    """
    return ScoringSizes(
        threads=torch_threads(task_cpus),
        arrow_rows=_rows(row_floats, ARROW_BATCH_FLOATS, ARROW_ROWS, DEFAULT_ARROW_ROWS),
        forward_rows=_rows(row_floats, FORWARD_BATCH_FLOATS, FORWARD_ROWS, DEFAULT_FORWARD_ROWS),
    )
