"""Window cutting maths, without Spark."""

from __future__ import annotations

import numpy as np
import pandas as pd

from loganomaly.windows import FEATURE_NAMES, WindowSpec, build_windows, to_tensor


def steps_frame(step_indices: list[int], step_s: int = 60) -> pd.DataFrame:
    data = {f: [float(i + 1) for i in range(len(step_indices))] for f in FEATURE_NAMES}
    return pd.DataFrame(
        {"step": [i * step_s for i in step_indices], "n_events": [1] * len(step_indices), **data}
    )


def test_windows_align_to_the_stride_grid_and_cover_every_event() -> None:
    spec = WindowSpec(step_seconds=60, window_steps=4, stride_steps=2)
    idx = [101, 102, 103, 110]
    out = build_windows(steps_frame(idx), spec)
    starts = out["window_start"].to_numpy() // 60
    assert all(s % 2 == 0 for s in starts)
    assert (out["window_end"] - out["window_start"] == 240).all()
    for i in idx:  # every event step lies inside at least one window
        assert any(s <= i < s + 4 for s in starts)
    # windows without events are not emitted
    assert (out["n_events"] > 0).all()


def test_gaps_are_zero_steps_and_layout_is_row_major() -> None:
    spec = WindowSpec(step_seconds=60, window_steps=4, stride_steps=4)
    out = build_windows(steps_frame([0, 2]), spec)
    assert len(out) == 1
    x = to_tensor(out["features"].tolist(), 4, len(FEATURE_NAMES))
    assert x.shape == (1, 4, len(FEATURE_NAMES))
    np.testing.assert_array_equal(x[0, :, 0], [1.0, 0.0, 2.0, 0.0])
    assert out["n_events"].tolist() == [2]


def test_same_events_give_same_window_keys_in_any_order() -> None:
    spec = WindowSpec(step_seconds=300, window_steps=12, stride_steps=3)
    steps = steps_frame(list(range(5000, 5100, 7)), step_s=300)
    a = build_windows(steps, spec)
    b = build_windows(steps.sample(frac=1.0, random_state=1).sort_values("step"), spec)
    assert a["window_start"].tolist() == b["window_start"].tolist()
    np.testing.assert_array_equal(np.stack(a["features"]), np.stack(b["features"]))


def test_short_activity_gets_one_padded_window() -> None:
    out = build_windows(steps_frame([7]), WindowSpec(60, 10, 5))
    assert out["window_start"].tolist() == [5 * 60]
    assert out["n_events"].tolist() == [1]
