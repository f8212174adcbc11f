"""Spark-free maths of time-step windows: per-step feature rows of one entity -> sliding windows.

A window is ``window_steps`` consecutive steps of ``step_seconds``; windows start every
``stride_steps`` steps on a grid aligned to the Unix epoch, so the same events always give the
same window keys (entity, window_start) whichever run or partition computes them. Steps with no
events are zero rows: silence is information too (a host that stops talking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Per-step features, in the order they are stored in ``sequences.features``. Counts and byte
#: sums are log1p-transformed so that one busy host does not dwarf the others.
FEATURE_NAMES: list[str] = [
    "events",
    "connections",
    "log_lines",
    "bytes_out",
    "bytes_in",
    "distinct_dst_ports",
    "distinct_dst_addrs",
    "failed_connections",
    "errors",
    "warnings",
    "mean_duration",
]


@dataclass(frozen=True)
class WindowSpec:
    """How steps and windows are cut; stored with the model so scoring cuts them the same way."""

    step_seconds: int
    window_steps: int
    stride_steps: int

    def to_dict(self) -> dict[str, int]:
        return {
            "step_seconds": self.step_seconds,
            "window_steps": self.window_steps,
            "stride_steps": self.stride_steps,
        }


def build_windows(
    steps: pd.DataFrame, spec: WindowSpec, feature_names: list[str] = FEATURE_NAMES
) -> pd.DataFrame:
    """Cut one entity's step rows into sliding windows.

    Args:
        steps: rows of one entity with ``step`` (epoch seconds of the step start, a multiple of
            ``spec.step_seconds``), ``n_events`` and one column per feature name.
        spec: step, window length and stride.
        feature_names: feature columns, in storage order.

    Returns:
        One row per window: ``window_start``/``window_end`` (epoch seconds), ``features`` (flat
        float32 array of ``window_steps * n_features``, row-major) and ``n_events``. Only windows
        that contain at least one event are returned. An entity active for less than one window
        gets a single window padded with empty steps.
    """
    columns = ["window_start", "window_end", "features", "n_events"]
    if steps.empty:
        return pd.DataFrame(columns=columns)
    step_s, length, stride = spec.step_seconds, spec.window_steps, spec.stride_steps
    idx = steps["step"].to_numpy(dtype=np.int64) // step_s
    # Window starts are multiples of the stride (in steps since the epoch). Every event step lies
    # in some window; edge windows reach at most ``stride - 1`` empty steps past the active span.
    first = int(idx.min() // stride * stride)
    last_start = max(first, int(-(-(idx.max() - length + 1) // stride) * stride))
    starts = np.arange(0, last_start - first + 1, stride, dtype=np.int64)
    n_rows = int(last_start - first + length)
    grid = np.zeros((n_rows, len(feature_names)), dtype=np.float32)
    counts = np.zeros(n_rows, dtype=np.int64)
    grid[idx - first] = steps[feature_names].to_numpy(dtype=np.float32)
    counts[idx - first] = steps["n_events"].to_numpy(dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(counts)])
    n_events = cum[starts + length] - cum[starts]
    keep = n_events > 0
    starts, n_events = starts[keep], n_events[keep]
    windows = (
        np.stack([grid[s : s + length].reshape(-1) for s in starts])
        if len(starts)
        else np.zeros((0, length * len(feature_names)), dtype=np.float32)
    )
    start_s = (first + starts) * step_s
    return pd.DataFrame(
        {
            "window_start": start_s,
            "window_end": start_s + length * step_s,
            "features": list(windows.astype(np.float32)),
            "n_events": n_events,
        },
        columns=columns,
    )


def to_tensor(flat: np.ndarray | list[np.ndarray], n_steps: int, n_features: int) -> np.ndarray:
    """Stack flat window vectors into a ``[N, n_steps, n_features]`` float32 array."""
    if len(flat) == 0:
        return np.zeros((0, n_steps, n_features), dtype=np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in flat]).reshape(-1, n_steps, n_features)
