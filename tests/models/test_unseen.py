"""The unseen-template share: which columns count, the share, its calibration, the combined score and
its explanation, and bundles with and without it (CPU, no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.config import load_config
from loganomaly.errors import ConfigError, ModelError
from loganomaly.models.autoencoder import KIND, LSTMAutoencoder, LSTMAutoencoderConfig
from loganomaly.models.bundle import META, load_bundle, save_bundle
from loganomaly.models.normaliser import Normaliser, PeerGroups, fit_group_normalisers, group_index
from loganomaly.models.unseen import (
    UnseenShare,
    combined_scores,
    share_text,
    shares,
    unseen_columns,
    unseen_counts,
)
from loganomaly.models.window import ModelBundle
from loganomaly.runtime.collective import Collective
from tests.models.test_peer_groups import GROUPS
from tests.models.test_peer_groups import NAMES as PEER_NAMES
from tests.models.test_peer_groups import T as PEER_T
from tests.models.test_peer_groups import windows as peer_windows

NAMES = ["events", "errors", "tpl:Taaa", "tpl:Tbbb", "tpl:other", "tpl:unknown"]
T = 2


def windows(rows: list[list[list[float]]]) -> np.ndarray:
    """Raw windows as featurize stores them (log1p counts) from whole counts ``[N, T, F]``."""
    return np.log1p(np.asarray(rows, dtype=np.float64)).astype(np.float32)


def window(events: tuple[int, int], unknown: tuple[int, int] = (0, 0), bbb: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """One window of two steps: ``events`` per step, of which ``unknown`` no template fits and
    ``bbb`` are of template Tbbb; the rest are Taaa."""
    return [[e, 0, e - u - b, b, 0, u] for e, u, b in zip(events, unknown, bbb, strict=True)]


# --- which events count as unseen, and the share ------------------------------------------------


def test_unseen_columns_are_unknown_and_the_template_columns_no_training_window_held() -> None:
    # Tbbb never occurred in a training window (mean 0); tpl:other is a bucket the model saw.
    assert unseen_columns(NAMES, [0.7, 0.1, 0.6, 0.0, 0.0, 0.0]) == ["tpl:Tbbb", "tpl:unknown"]
    assert unseen_columns(NAMES, [0.7, 0.1, 0.6, 0.2, 0.1, 0.0]) == ["tpl:unknown"]
    with pytest.raises(ModelError, match="tpl:unknown"):
        unseen_columns(["events", "errors"], [0.1, 0.2])
    with pytest.raises(ModelError, match="normaliser means"):
        unseen_columns(NAMES, [0.1])


def test_share_sums_the_steps_counts_and_is_zero_for_a_silent_window() -> None:
    x = windows([window((5, 4), unknown=(3, 4)), window((2, 0)), window((0, 0)), window((1, 2), bbb=(1, 0))])
    unseen, events = unseen_counts(x, NAMES, ["tpl:Tbbb", "tpl:unknown"])
    assert events.tolist() == [9, 2, 0, 3]
    assert unseen.tolist() == [7, 0, 0, 1]
    np.testing.assert_allclose(shares(unseen, events), [7 / 9, 0, 0, 1 / 3])
    with pytest.raises(ModelError, match="lack the features"):
        unseen_counts(x, NAMES[:-1], ["tpl:unknown"])


# --- calibration ------------------------------------------------------------------------------


def test_calibration_takes_the_budget_quantile_of_the_screened_windows_with_a_floor() -> None:
    mean = [0.7, 0.1, 0.6, 0.0, 0.0, 0.0]
    # 100 validation windows: 90 without novelty, 10 with one Tbbb event of 4 (share 0.25), one
    # screened-out window made only of Tbbb.
    rows = [window((2, 2))] * 90 + [window((2, 2), bbb=(1, 0))] * 10 + [window((3, 3), bbb=(3, 3))]
    x = windows(rows)
    keep = np.ones(len(x), dtype=bool)
    keep[-1] = False
    cal = UnseenShare.calibrate(x, NAMES, mean, keep, budget=0.05, minimum=0.1)
    assert cal.columns == ["tpl:Tbbb", "tpl:unknown"]
    assert cal.calibrated == pytest.approx(0.25) and cal.threshold == pytest.approx(0.25) and cal.can_alert
    assert (cal.validation_windows, cal.validation_with_unseen) == (100, 10)
    # A budget wider than the novel share: the quantile is 0 and the floor decides.
    wide = UnseenShare.calibrate(x, NAMES, mean, keep, budget=0.2, minimum=0.1)
    assert wide.calibrated == 0.0 and wide.threshold == 0.1
    # Normal windows that consist only of unseen templates beyond the budget: no share can exceed it.
    busy = windows([window((2, 2))] * 60 + [window((1, 1), unknown=(1, 1))] * 40)
    silent = UnseenShare.calibrate(busy, NAMES, mean, np.ones(len(busy), dtype=bool), budget=0.01, minimum=0.1)
    assert silent.threshold == 1.0 and not silent.can_alert


def test_calibration_refuses_bad_settings() -> None:
    x = windows([window((1, 1))] * 3)
    mean = [0.7, 0.1, 0.6, 0.0, 0.0, 0.0]
    with pytest.raises(ModelError, match="budget"):
        UnseenShare.calibrate(x, NAMES, mean, np.ones(3, bool), budget=1.5, minimum=0.1)
    with pytest.raises(ModelError, match="unseen_share_min"):
        UnseenShare.calibrate(x, NAMES, mean, np.ones(3, bool), budget=0.01, minimum=0.0)
    with pytest.raises(ModelError, match="no screened validation windows"):
        UnseenShare.calibrate(x, NAMES, mean, np.zeros(3, bool), budget=0.01, minimum=0.1)


def test_config_switch_and_floor_are_validated() -> None:
    cfg = load_config(overrides=["model.unseen_share=true", "model.unseen_share_min=0.3"])
    assert cfg.model.unseen_share and cfg.model.unseen_share_min == 0.3
    assert not load_config().model.unseen_share
    with pytest.raises(ConfigError, match="kind=autoencoder"):
        load_config(overrides=["model.unseen_share=true", "model.kind=deeplog"])
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match="unseen_share_min"):
            load_config(overrides=[f"model.unseen_share_min={bad}"])


# --- the combined score and its explanation -----------------------------------------------------


def test_combined_score_passes_the_threshold_when_either_signal_does() -> None:
    error = np.array([1.0, 12.0, 1.0, 12.0])
    share = np.array([0.1, 0.1, 0.9, 0.9])
    score = combined_scores(error, share, threshold=10.0, share_threshold=0.3)
    assert (score > 10.0).tolist() == [False, True, True, True]
    # A share at or below its threshold leaves the error alone (the ranking of unflagged windows is
    # the error's); windows the share flags keep the error's order among themselves.
    np.testing.assert_allclose(score, [1.0, 12.0, 31.0, 42.0])
    with pytest.raises(ModelError):
        combined_scores(error, share, 10.0, 0.0)
    assert share_text(7, 9, 7 / 9, 0.3) == "7 of 9 events match no template the model knows (share 0.78 > calibrated 0.30)"


def unseen_bundle(threshold: float, share_threshold: float | None) -> tuple[ModelBundle, np.ndarray]:
    """An untrained autoencoder over :data:`NAMES` (its errors are what they are; the test sets the threshold)."""
    torch.manual_seed(0)
    cfg = LSTMAutoencoderConfig(n_features=len(NAMES), window_steps=T, hidden_size=4)
    train = windows([window((3, 2)), window((2, 2)), window((1, 3)), window((4, 1))])
    normaliser = Normaliser.fit(train)
    unseen = None
    if share_threshold is not None:
        unseen = UnseenShare(unseen_columns(NAMES, normaliser.mean), share_threshold, share_threshold, 0.1, 0.01, 50, 0)
    bundle = ModelBundle(model_cfg=cfg, state_dict=LSTMAutoencoder(cfg).state_dict(), normaliser=normaliser,
                         threshold=threshold, feature_names=list(NAMES),
                         features={"step_seconds": 300, "window_steps": T, "stride_steps": 1, "transform": "log1p"},
                         metrics={"val_feature_error": [0.1] * len(NAMES)}, unseen=unseen)
    return bundle, train


def score(bundle: ModelBundle, x: np.ndarray) -> dict[str, list]:  # type: ignore[type-arg]
    return KIND.score_windows(bundle, bundle.build_model(), torch.device("cpu"), x, 2).to_pydict()


def test_a_window_of_unseen_templates_is_flagged_by_the_share_and_says_so() -> None:
    # A threshold no reconstruction error reaches: only the share can flag.
    bundle, _ = unseen_bundle(threshold=1e9, share_threshold=0.3)
    x = windows([window((5, 4), unknown=(3, 4)), window((3, 2)), window((4, 4), unknown=(1, 0))])
    out = score(bundle, x)
    assert [s > bundle.threshold for s in out["score"]] == [True, False, False]
    assert out["score"][0] == pytest.approx(1e9 * (7 / 9) / 0.3, rel=1e-5)  # plus an error of ~1e3
    text = out["explanation"][0]
    assert text.startswith("unseen-template share: 7 of 9 events match no template the model knows "
                           "(share 0.78 > calibrated 0.30); reconstruction error ")
    assert "<= threshold 1e+09, largest errors: " in text
    assert out["top_features"][0] and out["explanation"][1:] == ["", ""]


def test_a_window_flagged_by_its_error_says_so_and_names_the_share_only_when_it_passed() -> None:
    bundle, _ = unseen_bundle(threshold=1e-9, share_threshold=0.3)
    x = windows([window((5, 4), unknown=(3, 4)), window((3, 2))])
    out = score(bundle, x)
    assert all(s > bundle.threshold for s in out["score"])
    assert out["explanation"][0].startswith("unseen-template share: 7 of 9 events")
    assert "reconstruction error" in out["explanation"][0] and "> threshold 1e-09: " in out["explanation"][0]
    assert out["explanation"][1].startswith("reconstruction error ") and "unseen" not in out["explanation"][1]


def test_without_the_signal_the_score_is_the_reconstruction_error_alone() -> None:
    with_share, _ = unseen_bundle(threshold=1e9, share_threshold=0.3)
    without, _ = unseen_bundle(threshold=1e9, share_threshold=None)
    x = windows([window((5, 4), unknown=(3, 4)), window((3, 2))])
    plain = score(without, x)
    assert plain["explanation"] == ["", ""]
    combined = score(with_share, x)
    # The share lifts only the window it flags; the other keeps its reconstruction error.
    assert combined["score"][1] == plain["score"][1]
    assert combined["score"][0] == pytest.approx(plain["score"][0] + 1e9 * (7 / 9) / 0.3)


# --- bundles ------------------------------------------------------------------------------------


def test_bundle_round_trip_with_and_without_the_signal(tmp_path: Path) -> None:
    x = windows([window((5, 4), unknown=(3, 4)), window((3, 2))])
    with_share, _ = unseen_bundle(threshold=1e9, share_threshold=0.3)
    save_bundle(tmp_path / "with", with_share)
    loaded = load_bundle(tmp_path / "with")
    assert isinstance(loaded, ModelBundle) and loaded.unseen == with_share.unseen
    assert json.loads((tmp_path / "with" / META).read_text())["unseen_share"]["threshold"] == 0.3
    assert score(loaded, x) == score(with_share, x)

    without, _ = unseen_bundle(threshold=1e9, share_threshold=None)
    save_bundle(tmp_path / "without", without)
    assert "unseen_share" not in json.loads((tmp_path / "without" / META).read_text())
    plain = load_bundle(tmp_path / "without")
    assert isinstance(plain, ModelBundle) and plain.unseen is None
    assert score(plain, x) == score(without, x)


def test_a_damaged_or_mismatched_unseen_record_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="malformed"):
        UnseenShare.from_dict({"columns": ["tpl:unknown"], "threshold": 0.3})
    with pytest.raises(ModelError, match="above 0"):
        UnseenShare(["tpl:unknown"], 0.0, 0.0, 0.1, 0.01, 1, 0)
    bundle, _ = unseen_bundle(threshold=1.0, share_threshold=0.3)
    assert bundle.unseen is not None
    bundle.unseen.columns = ["tpl:Tzzz"]
    with pytest.raises(ModelError, match="tpl:Tzzz"):
        save_bundle(tmp_path / "bad", bundle)


def test_the_kind_calibrates_the_share_only_when_switched_on() -> None:
    _, train = unseen_bundle(threshold=1.0, share_threshold=None)
    normaliser = Normaliser.fit(train)
    off = load_config()
    assert KIND.calibrate_unseen(train, normaliser, list(NAMES), None, off) is None
    on = load_config(overrides=["model.unseen_share=true"])
    cal = KIND.calibrate_unseen(train, normaliser, list(NAMES), np.ones(len(train), bool), on)
    assert cal is not None and cal.columns == ["tpl:Tbbb", "tpl:unknown"] and cal.threshold == on.model.unseen_share_min


def test_with_peer_groups_the_share_flags_past_the_group_threshold_and_the_group_is_named_first() -> None:

    torch.manual_seed(0)
    n_features = len(PEER_NAMES)
    cfg = LSTMAutoencoderConfig(n_features=n_features, window_steps=PEER_T, hidden_size=8)
    model = LSTMAutoencoder(cfg)
    cols = [PEER_NAMES.index("group:" + g) for g in GROUPS]
    x = np.concatenate([peer_windows(40, "internal", 1.0, 0), peer_windows(40, "external", 5.0, 1)])
    unknown, events = PEER_NAMES.index("tpl:unknown"), PEER_NAMES.index("events")
    x[:, :, unknown] = 0.0
    x[45, :, unknown] = x[45, :, events]  # one external window made only of lines no template fits
    peers = PeerGroups(GROUPS, cols, fit_group_normalisers(x, group_index(x, cols), GROUPS, 30, Collective()),
                       {"internal": 1e9, "external": 1e9}, 0.05, 2)
    bundle = ModelBundle(model_cfg=cfg, state_dict=model.state_dict(), normaliser=Normaliser.fit(x), threshold=1.0,
                         feature_names=PEER_NAMES, features={"step_seconds": 300, "window_steps": PEER_T,
                                                             "stride_steps": 2},
                         metrics={"val_feature_error": [0.1] * n_features}, peers=peers,
                         unseen=UnseenShare(["tpl:unknown"], 0.5, 0.0, 0.5, 0.01, 80, 0))
    out = KIND.score_windows(bundle, model, torch.device("cpu"), x, 2).to_pydict()
    flagged = [i for i, s in enumerate(out["score"]) if s > bundle.threshold]
    assert flagged == [45]
    text = out["explanation"][45]
    assert text.startswith("peer group external (own threshold 1e+09)")
    assert "; unseen-template share: " in text and "(share 1.00 > calibrated 0.50); reconstruction error " in text


def test_the_train_summary_and_report_show_the_share_threshold_only_when_there_is_one() -> None:
    with_share, _ = unseen_bundle(threshold=1.0, share_threshold=0.3)
    without, _ = unseen_bundle(threshold=1.0, share_threshold=None)
    assert KIND.summary(with_share)["unseen_share_threshold"] == 0.3
    assert "unseen_share_threshold" not in KIND.summary(without)
    assert dict(KIND.report_facts(with_share))["unseen-template share threshold"] == (
        "0.3 (calibrated 0.3; 0 of 50 validation windows held unseen templates)")
    assert "unseen-template share threshold" not in dict(KIND.report_facts(without))
