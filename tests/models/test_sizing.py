"""The scoring size rule (threads, Arrow batch, forward pass), without Spark."""

from __future__ import annotations

import pytest

from loganomaly.models.sizing import (
    ARROW_BATCH_FLOATS,
    ARROW_ROWS,
    DEFAULT_ARROW_ROWS,
    DEFAULT_FORWARD_ROWS,
    FORWARD_BATCH_FLOATS,
    FORWARD_ROWS,
    scoring_sizes,
    torch_threads,
)


@pytest.mark.parametrize(("task_cpus", "threads"), [(None, 1), (0, 1), (1, 1), (2, 2), (8, 8)])
def test_torch_threads_are_the_task_cores(task_cpus: int | None, threads: int) -> None:
    assert torch_threads(task_cpus) == threads


def test_batches_hold_a_fixed_number_of_floats() -> None:
    sizes = scoring_sizes(12 * 24, task_cpus=2)
    assert sizes.threads == 2
    assert sizes.arrow_rows == ARROW_BATCH_FLOATS // (12 * 24)
    assert sizes.forward_rows == FORWARD_BATCH_FLOATS // (12 * 24)
    # twice the floats per window: half the windows per batch
    wide = scoring_sizes(2 * 12 * 24)
    assert wide.arrow_rows == sizes.arrow_rows // 2 and wide.forward_rows == sizes.forward_rows // 2


def test_batch_rows_are_clamped_and_default_for_rows_of_no_fixed_size() -> None:
    tiny, huge = scoring_sizes(1), scoring_sizes(10**9)
    assert (tiny.arrow_rows, tiny.forward_rows) == (ARROW_ROWS[1], FORWARD_ROWS[1])
    assert (huge.arrow_rows, huge.forward_rows) == (ARROW_ROWS[0], FORWARD_ROWS[0])
    assert scoring_sizes(None) == scoring_sizes(0) == scoring_sizes(None, 1)
    assert (scoring_sizes(None).arrow_rows, scoring_sizes(None).forward_rows) == (DEFAULT_ARROW_ROWS,
                                                                                  DEFAULT_FORWARD_ROWS)
