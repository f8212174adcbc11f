"""Window cutting maths and the feature-name rule, without Spark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loganomaly.features.windows import (
    FEATURE_NAMES,
    OTHER_TEMPLATES,
    UNKNOWN_TEMPLATES,
    WindowSpec,
    build_windows,
    feature_metrics,
    feature_names_for,
    feature_templates,
    has_metric_levels,
    to_tensor,
)


def steps_frame(step_indices: list[int], step_s: int = 60, refs: bool = False) -> pd.DataFrame:
    data = {f: [float(i + 1) for i in range(len(step_indices))] for f in FEATURE_NAMES}
    frame = pd.DataFrame(
        {"step": [i * step_s for i in step_indices], "n_events": [1] * len(step_indices), **data}
    )
    if refs:  # the step's events sit 5 s and 10 s into it (epoch microseconds)
        frame["first_ts"] = (frame["step"] + 5) * 1_000_000
        frame["last_ts"] = (frame["step"] + 10) * 1_000_000
    return frame


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
    assert "first_event_ts" not in out.columns  # references only when the steps carry them


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
    steps = steps_frame(list(range(5000, 5100, 7)), step_s=300, refs=True)
    a = build_windows(steps, spec)
    b = build_windows(steps.sample(frac=1.0, random_state=1), spec)
    assert a["window_start"].tolist() == b["window_start"].tolist()
    np.testing.assert_array_equal(np.stack(a["features"]), np.stack(b["features"]))
    assert a["first_event_ts"].tolist() == b["first_event_ts"].tolist()


def test_short_activity_gets_one_padded_window() -> None:
    out = build_windows(steps_frame([7]), WindowSpec(60, 10, 5))
    assert out["window_start"].tolist() == [5 * 60]
    assert out["n_events"].tolist() == [1]


def test_event_references_are_the_first_and_last_busy_step_of_each_window() -> None:
    spec = WindowSpec(step_seconds=60, window_steps=4, stride_steps=2)
    out = build_windows(steps_frame([101, 102, 103, 110], refs=True), spec)
    by_start = {int(r.window_start) // 60: r for r in out.itertuples()}
    # window [100, 104) holds steps 101..103; [102, 106) holds 102, 103; [108, 112) holds 110
    assert by_start[100].first_event_ts == (101 * 60 + 5) * 1_000_000
    assert by_start[100].last_event_ts == (103 * 60 + 10) * 1_000_000
    assert by_start[102].first_event_ts == (102 * 60 + 5) * 1_000_000
    assert by_start[108].first_event_ts == (110 * 60 + 5) * 1_000_000
    assert by_start[108].last_event_ts == (110 * 60 + 10) * 1_000_000
    for r in out.itertuples():  # references always lie inside the window
        assert r.window_start * 1e6 <= r.first_event_ts <= r.last_event_ts < r.window_end * 1e6


def test_template_features_follow_the_fixed_ones_and_round_trip() -> None:
    names = feature_names_for(["Tb", "Ta"])
    assert names[: len(FEATURE_NAMES)] == FEATURE_NAMES
    assert names[len(FEATURE_NAMES):] == ["tpl:Tb", "tpl:Ta", OTHER_TEMPLATES, UNKNOWN_TEMPLATES]
    assert feature_templates(names) == ["Tb", "Ta"]
    assert feature_templates(feature_names_for([])) == []


def test_template_counts_can_be_left_out_and_the_list_still_round_trips() -> None:
    """``features.template_counts: false``: no ``tpl:`` feature at all (other and unknown too),
    and the list is still one this version reads back; frequent templates need the counts on."""
    names = feature_names_for([], template_counts=False)
    assert names == FEATURE_NAMES
    assert feature_templates(names) == []
    with_more = feature_names_for([], ["cpu"], ["internal", "external"], {"status": ["SF"]}, True, True, False)
    assert not any(n.startswith("tpl:") for n in with_more)
    assert with_more.index("new_errors") == len(FEATURE_NAMES) + 8  # after the network features
    assert feature_templates(with_more) == []
    with pytest.raises(ValueError, match="template counts"):
        feature_names_for(["Ta"], template_counts=False)
    with pytest.raises(ValueError):  # half a set of template counts is no list we compute
        feature_templates([*FEATURE_NAMES, OTHER_TEMPLATES])


@pytest.mark.parametrize(
    "names",
    [
        [*FEATURE_NAMES[:-1], "tpl:Ta", OTHER_TEMPLATES, UNKNOWN_TEMPLATES],  # a base feature missing
        ["renamed", *feature_names_for(["Ta"])[1:]],
    ],
)
def test_feature_lists_this_version_cannot_compute_are_refused(names: list[str]) -> None:
    with pytest.raises(ValueError, match="not"):
        feature_templates(names)


def test_metric_features_follow_the_templates_and_round_trip() -> None:
    from loganomaly.features.windows import feature_metrics, signed_expm1, signed_log1p

    names = feature_names_for(["Ta"], ["cpu", "mem_used"])
    assert names[-2:] == ["metric:cpu", "metric:mem_used"]
    assert feature_templates(names) == ["Ta"]
    assert feature_metrics(names) == ["cpu", "mem_used"]
    with pytest.raises(ValueError):
        feature_templates([*names[:-2], "metric:cpu", "tpl:late"])
    values = np.array([-250.0, -0.5, 0.0, 0.3, 1e6])
    np.testing.assert_allclose(signed_expm1(signed_log1p(values)), values, rtol=1e-9)
    np.testing.assert_allclose(signed_log1p(values[2:]), np.log1p(values[2:]))


def test_abnormal_event_counts_are_summed_per_window() -> None:
    steps = steps_frame([0, 1, 2, 3])
    steps["n_abnormal"] = [0, 2, 0, 1]
    out = build_windows(steps, WindowSpec(60, 2, 1), FEATURE_NAMES)
    assert out["n_abnormal"].tolist() == [2, 2, 1]


def test_category_features_round_trip_through_the_names() -> None:
    from loganomaly.features.windows import feature_categories

    categories = {"status": ["SF", "S0"], "proto": []}
    names = feature_names_for(["Ta"], ["cpu"], None, categories)
    assert names[-4:] == ["cat:status=SF", "cat:status=S0", "cat:status=<other>", "cat:proto=<other>"]
    assert feature_categories(names) == categories
    assert feature_templates(names) == ["Ta"]
    with pytest.raises(ValueError, match="category counts"):  # a value without its <other> is not a list we compute
        feature_templates([n for n in names if n != "cat:status=<other>"])


def test_metric_levels_can_be_left_to_their_relative_twins() -> None:
    """``features.metric_levels: false``: a metric is only its ``rel:`` twin, and the list round-trips."""
    groups = ["internal", "external", "default"]
    both = feature_names_for([], ["cpu", "mem"], groups)
    relative = feature_names_for([], ["cpu", "mem"], groups, metric_levels=False)
    assert "metric:cpu" in both and "metric:cpu" not in relative
    assert [n for n in relative if "metric:" in n] == ["rel:metric:cpu", "rel:metric:mem"]
    assert set(relative) < set(both) and len(relative) == len(both) - 2
    for names in (both, relative):
        assert feature_metrics(names) == ["cpu", "mem"]
        assert feature_templates(names) == []  # the list is one this version computes
    assert has_metric_levels(both) and not has_metric_levels(relative)
    assert has_metric_levels(feature_names_for([], [], groups, metric_levels=False))  # no metrics: nothing left out
    with pytest.raises(ValueError, match="entity features"):
        feature_names_for([], ["cpu"], None, metric_levels=False)
