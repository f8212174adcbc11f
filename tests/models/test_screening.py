"""Screened, stable calibration (issue 13 point 7): incidents in the validation windows must not set
the threshold, and retraining on the same windows must not move it. Pure numpy, no Spark."""

from __future__ import annotations

import numpy as np
import pytest

from loganomaly.config import Config, TrainConfig
from loganomaly.errors import ModelError
from loganomaly.models.autoencoder import screened_threshold
from loganomaly.models.screening import robust_screen, screened_budget, steady_threshold


def _cfg(**train: object) -> Config:
    cfg = Config()
    cfg.train = TrainConfig(**{"threshold_quantile": 0.995, **train})  # type: ignore[arg-type]
    return cfg


def _benign(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(mean=-2.0, sigma=0.5, size=n)


def test_an_incident_block_in_validation_leaves_the_threshold_near_the_clean_one() -> None:
    clean = _benign(600, 0)
    # a past incident: 40 consecutive windows (6 %) reconstructing 50-400 times worse
    incident = np.random.default_rng(1).uniform(50, 400, 40) * np.exp(-2.0)
    dirty = np.concatenate([clean[:300], incident, clean[300:]])
    clean_threshold, _ = screened_threshold(clean, _cfg())
    screened, record = screened_threshold(dirty, _cfg())
    unscreened, _ = screened_threshold(dirty, _cfg(screen_mad_k=None))
    assert abs(screened / clean_threshold - 1) < 0.1, (screened, clean_threshold)
    assert unscreened > 5 * clean_threshold  # what the unscreened calibration does with the same windows
    assert record["screened_robust"] == 40 and record["kept"] == 600 and record["keep"][300:340].sum() == 0
    # on the clean windows the rule screens (nearly) nothing: the benign tail is not cut
    assert screened_threshold(clean, _cfg())[1]["screened_robust"] <= 1


def test_the_previous_models_flags_do_not_ratchet_the_threshold_across_retrains() -> None:
    scores = _benign(2000, 2)
    cfg = _cfg(threshold_quantile=0.99)
    threshold, _ = screened_threshold(scores, cfg)
    first = threshold
    for _ in range(10):  # retrain after retrain on the same windows, each screened by the model before
        threshold, record = screened_threshold(scores, cfg, scores > threshold)
        assert 0.95 < threshold / first < 1.05, (first, threshold)
    assert record["capped_previous"] > 0 and record["screened_previous"] == 0


def test_windows_the_previous_model_flagged_in_an_incident_are_left_out() -> None:
    clean = _benign(600, 3)
    # a milder incident the robust rule misses, but the previous model flagged
    mild = np.random.default_rng(4).uniform(2.5, 3.5, 20) * np.exp(-2.0) * 1.6
    scores = np.concatenate([clean, mild])
    flagged = np.concatenate([clean > np.quantile(clean, 0.995), np.ones(20, bool)])
    with_previous, record = screened_threshold(scores, _cfg(), flagged)
    without, _ = screened_threshold(scores, _cfg())
    clean_threshold, _ = screened_threshold(clean, _cfg())
    assert record["screened_robust"] == 0 and record["screened_previous"] >= 17  # the rule alone misses them
    assert abs(with_previous / clean_threshold - 1) < 0.05 and without > 1.2 * clean_threshold


def test_robust_screen_edge_cases() -> None:
    assert not robust_screen(np.zeros(10), 5.0).any()  # no spread: nothing judged
    assert not robust_screen(np.array([1.0, 1.0, 1.0, 1.0, 9.0]), 5.0).any()  # MAD 0
    assert not robust_screen(_benign(50, 5), None).any()  # screening off
    with pytest.raises(ModelError):
        robust_screen(np.array([0.1, np.inf]), 5.0)
    with pytest.raises(ModelError, match="previous model's flags"):
        screened_budget(np.ones(5), 0.01, 5.0, np.ones(4, bool))
    # screening that would leave under two windows calibrates on all of them
    keep, values, record = screened_budget(np.array([0.1, 0.2, 0.3]), 0.01, 5.0, np.ones(3, bool))
    assert keep.all() and record.screened_previous == 0 and values.tolist() == [0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    ("new", "previous", "clamp", "expected", "clamped"),
    [
        (5.0, 1.0, True, 5.0, False),  # within 10x: kept
        (50.0, 1.0, True, 10.0, True),  # up 50x: clamped to 10x
        (0.001, 1.0, True, 0.1, True),  # down 1000x: clamped to 1/10
        (50.0, 1.0, False, 50.0, False),  # warn only
        (50.0, None, True, 50.0, False),  # no previous model
    ],
)
def test_steady_threshold(new: float, previous: float | None, clamp: bool, expected: float, clamped: bool) -> None:
    threshold, record = steady_threshold(new, previous, 10.0, clamp)
    assert threshold == pytest.approx(expected) and record["clamped"] == clamped
    assert record["ratio"] == (None if previous is None else pytest.approx(new / previous))


def test_screening_settings_are_checked() -> None:
    from loganomaly.config import load_config
    from loganomaly.errors import ConfigError

    assert load_config(overrides=["train.screen_mad_k=null"]).train.screen_mad_k is None
    with pytest.raises(ConfigError, match="screen_mad_k"):
        load_config(overrides=["train.screen_mad_k=0"])
    with pytest.raises(ConfigError, match="threshold_max_ratio"):
        load_config(overrides=["train.threshold_max_ratio=1"])


def test_a_previous_model_that_flags_too_much_is_not_trusted() -> None:
    # the previous model did not know the new normal: it flags 30 % of the windows
    scores = _benign(600, 6)
    flagged = np.random.default_rng(7).random(600) < 0.3
    alone, _ = screened_threshold(scores, _cfg())
    threshold, record = screened_threshold(scores, _cfg(), flagged)
    assert record["previous_ignored"] and record["screened_previous"] == record["capped_previous"] == 0
    assert threshold == pytest.approx(alone)
    trusted, record = screened_threshold(scores, _cfg(screen_previous_max_share=1.0), flagged)
    assert not record["previous_ignored"] and record["screened_previous"] > 100
