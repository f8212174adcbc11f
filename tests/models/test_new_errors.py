"""Error-level events of a new kind as a signal of their own: counts, calibration after the warm-up,
the combined score and its explanation, bundles with and without it (CPU, no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.config import load_config
from loganomaly.errors import ConfigError, ModelError
from loganomaly.features.split import Split
from loganomaly.models.autoencoder import KIND, LSTMAutoencoder, LSTMAutoencoderConfig
from loganomaly.models.bundle import META, load_bundle, save_bundle
from loganomaly.models.new_errors import NewErrors, new_error_counts, warm_mask
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.unseen import UnseenShare, unseen_columns
from loganomaly.models.window import ModelBundle

NAMES = ["events", "errors", "tpl:Taaa", "tpl:other", "tpl:unknown", "new_errors"]
T = 2


def windows(rows: list[list[list[float]]]) -> np.ndarray:
    """Raw windows as featurize stores them (log1p counts) from whole counts ``[N, T, F]``."""
    return np.log1p(np.asarray(rows, dtype=np.float64)).astype(np.float32)


def window(events: tuple[int, int], new: tuple[int, int] = (0, 0), unknown: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """Two steps of ``events`` each, of which ``unknown`` fit no template and ``new`` are new error-level ones."""
    return [[e, n, e - u, 0, u, n] for e, n, u in zip(events, new, unknown, strict=True)]


def test_counts_sum_the_steps_and_need_the_feature() -> None:
    x = windows([window((5, 4), new=(1, 2)), window((3, 2)), window((0, 1), new=(0, 1))])
    assert new_error_counts(x, NAMES).tolist() == [3.0, 0.0, 1.0]
    with pytest.raises(ModelError, match="features.new_errors"):
        new_error_counts(x[:, :, :5], NAMES[:5])


def test_the_warm_up_leaves_out_the_first_share_of_the_training_period() -> None:
    day = 86_400.0
    starts = np.array([0.0, 0.2, 0.25, 0.9]) * day * 1e6
    assert warm_mask(starts, 0.0, day, 0.25).tolist() == [False, False, True, True]
    assert warm_mask(starts, 0.0, day, 0.0).all()
    with pytest.raises(ModelError, match=r"\[0, 1\)"):
        warm_mask(starts, 0.0, day, 1.0)


def test_calibration_takes_the_budget_quantile_and_never_goes_below_one_event() -> None:
    quiet = windows([window((3, 2))] * 99 + [window((3, 2), new=(1, 0))])
    cal = NewErrors.calibrate(quiet, NAMES, np.ones(100, bool), budget=0.05, warmup=0.25)
    # 1 window in 100 holds one: under a 5 % budget the quantile is 0, so one new error flags.
    assert (cal.threshold, cal.calibrated, cal.validation_windows, cal.validation_with_new) == (0.5, 0.0, 100, 1)
    busy = windows([window((3, 2), new=(1, 0))] * 10 + [window((3, 2), new=(2, 1))] * 10 + [window((3, 2))] * 80)
    cal = NewErrors.calibrate(busy, NAMES, np.ones(100, bool), budget=0.05, warmup=0.25)
    # 10 % of the windows hold 3: beyond the budget, so the threshold rises to 3 (4 or more flag).
    assert cal.threshold == 3.0 and cal.validation_with_new == 20
    keep = np.zeros(100, bool)
    keep[60:] = True  # only the windows after the warm-up: none holds a new error
    assert NewErrors.calibrate(busy, NAMES, keep, budget=0.05, warmup=0.25).threshold == 0.5
    with pytest.raises(ModelError, match="lower model.new_errors_warmup"):
        NewErrors.calibrate(busy, NAMES, np.zeros(100, bool), budget=0.05, warmup=0.9)
    with pytest.raises(ModelError, match="alert budget"):
        NewErrors.calibrate(busy, NAMES, keep, budget=1.0, warmup=0.25)


def test_config_switches_are_validated() -> None:
    with pytest.raises(ConfigError, match="features.new_errors=true"):
        load_config(overrides=["model.new_errors=true"])
    with pytest.raises(ConfigError, match="model.kind=deeplog"):
        load_config(overrides=["model.new_errors=true", "features.new_errors=true", "model.kind=deeplog"])
    with pytest.raises(ConfigError, match="new_errors_warmup"):
        load_config(overrides=["model.new_errors_warmup=1.0"])
    cfg = load_config(overrides=["model.new_errors=true", "features.new_errors=true"])
    assert cfg.model.new_errors and cfg.model.new_errors_warmup == 0.25


def bundle_of(threshold: float, new_threshold: float | None, share_threshold: float | None = None) -> ModelBundle:
    """An untrained autoencoder over :data:`NAMES` (its errors are what they are; the test sets the thresholds)."""
    torch.manual_seed(0)
    cfg = LSTMAutoencoderConfig(n_features=len(NAMES), window_steps=T, hidden_size=4)
    normaliser = Normaliser.fit(windows([window((3, 2)), window((2, 2)), window((1, 3), new=(1, 0))]))
    novel = None if new_threshold is None else NewErrors(new_threshold, 0.0, 0.01, 0.25, 40, 0)
    unseen = None
    if share_threshold is not None:
        unseen = UnseenShare(unseen_columns(NAMES, normaliser.mean), share_threshold, share_threshold, 0.1, 0.01, 50, 0)
    return ModelBundle(model_cfg=cfg, state_dict=LSTMAutoencoder(cfg).state_dict(), normaliser=normaliser,
                       threshold=threshold, feature_names=list(NAMES),
                       features={"step_seconds": 300, "window_steps": T, "stride_steps": 1, "transform": "log1p"},
                       metrics={"val_feature_error": [0.1] * len(NAMES)}, new_errors=novel, unseen=unseen)


def score(bundle: ModelBundle, x: np.ndarray) -> dict[str, list]:  # type: ignore[type-arg]
    return KIND.score_windows(bundle, bundle.build_model(), torch.device("cpu"), x, 2).to_pydict()


def test_a_new_error_flags_its_window_and_says_so_and_other_windows_keep_their_error() -> None:
    x = windows([window((5, 4), new=(0, 1)), window((3, 2)), window((4, 4), new=(2, 1))])
    plain = score(bundle_of(threshold=1e9, new_threshold=None), x)
    assert plain["explanation"] == ["", "", ""]
    out = score(bundle_of(threshold=1e9, new_threshold=0.5), x)
    assert [s > 1e9 for s in out["score"]] == [True, False, True]
    assert out["score"][1] == plain["score"][1]
    assert out["score"][0] == pytest.approx(plain["score"][0] + 1e9 * 1 / 0.5)
    assert out["explanation"][0].startswith(
        "new error kinds: 1 error-level event of a kind never logged at error level before (> threshold 0.5; "
        "0 of 40 validation windows held one); reconstruction error ")
    assert "<= threshold 1e+09, largest errors: " in out["explanation"][0]
    assert out["explanation"][2].startswith("new error kinds: 3 error-level events of a kind")
    # A higher calibrated threshold: 3 new errors pass 2.5, 1 does not.
    out = score(bundle_of(threshold=1e9, new_threshold=2.5), x)
    assert [s > 1e9 for s in out["score"]] == [False, False, True]


def test_both_count_signals_are_named_when_both_passed() -> None:
    x = windows([window((5, 4), new=(1, 1), unknown=(3, 4)), window((3, 2), unknown=(0, 2))])
    out = score(bundle_of(threshold=1e9, new_threshold=0.5, share_threshold=0.3), x)
    assert out["explanation"][0].startswith("unseen-template share: 7 of 9 events match no template the model "
                                            "knows (share 0.78 > calibrated 0.30); new error kinds: 2 error-level")
    assert out["explanation"][1].startswith("unseen-template share: 2 of 5 events")
    assert "new error kinds" not in out["explanation"][1]


def test_bundle_round_trip_and_damaged_records(tmp_path: Path) -> None:
    x = windows([window((5, 4), new=(0, 1)), window((3, 2))])
    bundle = bundle_of(threshold=1e9, new_threshold=0.5)
    save_bundle(tmp_path / "with", bundle)
    loaded = load_bundle(tmp_path / "with")
    assert isinstance(loaded, ModelBundle) and loaded.new_errors == bundle.new_errors
    assert json.loads((tmp_path / "with" / META).read_text())["new_errors"]["validation_windows"] == 40
    assert score(loaded, x) == score(bundle, x)
    assert KIND.summary(loaded)["new_errors_threshold"] == 0.5
    assert dict(KIND.report_facts(loaded))["new error kinds threshold"].startswith("0.5 (calibrated 0; 0 of 40")
    save_bundle(tmp_path / "without", bundle_of(threshold=1e9, new_threshold=None))
    assert "new_errors" not in json.loads((tmp_path / "without" / META).read_text())
    assert "new_errors_threshold" not in KIND.summary(load_bundle(tmp_path / "without"))
    with pytest.raises(ModelError, match="malformed"):
        NewErrors.from_dict({"threshold": 0.5})
    with pytest.raises(ModelError, match=">= 0.5"):
        NewErrors(0.0, 0.0, 0.01, 0.25, 1, 0)
    missing = bundle_of(threshold=1.0, new_threshold=0.5)
    missing.feature_names = [*NAMES[:5], "tpl:Tzzz"]
    with pytest.raises(ModelError, match="new_errors"):
        save_bundle(tmp_path / "bad", missing)


def test_the_kind_calibrates_only_when_switched_on_and_after_the_warm_up() -> None:
    x = windows([window((3, 2), new=(1, 0))] * 4 + [window((3, 2))] * 12)
    starts = (np.arange(16) * 3600 * 1e6).astype(np.int64)  # one window an hour over 16 hours
    split = Split(0.0, 16 * 3600.0)
    off = load_config()
    assert KIND.calibrate_new_errors(x, starts, list(NAMES), split, off) is None
    on = load_config(overrides=["model.new_errors=true", "features.new_errors=true"])
    cal = KIND.calibrate_new_errors(x, starts, list(NAMES), split, on)
    # The first quarter (4 windows) is the warm-up: every error is new there, and it is left out.
    assert cal is not None and (cal.validation_windows, cal.validation_with_new, cal.threshold) == (12, 0, 0.5)
    cal = KIND.calibrate_new_errors(x, starts, list(NAMES), split,
                                    load_config(overrides=["model.new_errors=true", "features.new_errors=true",
                                                           "model.new_errors_warmup=0"]))
    assert cal is not None and cal.validation_with_new == 4 and cal.threshold == 1.0
