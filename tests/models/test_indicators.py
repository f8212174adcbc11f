"""Network indicators as a signal of their own: window totals, calibration with its margin and
floor, a model that does not see them, the combined score, explanations and top features, bundles
with and without the signal (CPU, no Spark)."""

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
from loganomaly.models.indicators import FLOORS, MARGIN, MIN_THRESHOLD, Indicators, signal_only_columns
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.window import ModelBundle

NAMES = ["events", "connections", "repeated_failures", "unnamed_requests"]
T = 3


def windows(rows: list[list[list[float]]]) -> np.ndarray:
    """Raw windows as featurize stores them (log1p counts) from whole counts ``[N, T, F]``."""
    return np.log1p(np.asarray(rows, dtype=np.float64)).astype(np.float32)


def window(connections: int, failures: tuple[int, ...] = (0, 0, 0), unnamed: tuple[int, ...] = (0, 0, 0)) -> list[list[float]]:
    return [[connections + 1, connections, f, u] for f, u in zip(failures, unnamed, strict=True)]


def test_totals_sum_the_steps_and_calibration_doubles_the_budget_quantile_of_nonzero_windows_with_a_floor() -> None:
    x = windows([window(5, (1, 2, 1)), window(5, unnamed=(0, 1, 0))] + [window(5)] * 98)
    assert Indicators.totals(x[:2], NAMES).tolist() == [[4.0, 0.0], [0.0, 1.0]]
    quiet = Indicators.calibrate(x, NAMES, budget=0.05)
    # One window in 100 holds each: the quantiles are of those windows alone (the 98 quiet ones
    # would put them at 0), so 4 failures set twice 4 and one unnamed request leaves the floor.
    assert quiet.thresholds == [MARGIN * 4.0, MIN_THRESHOLD] and quiet.calibrated == [4.0, 1.0]
    assert quiet.validation_max == [4.0, 1.0] and quiet.validation_windows == 100
    none = Indicators.calibrate(windows([window(5)] * 10), NAMES, budget=0.05)
    assert none.thresholds == [MIN_THRESHOLD, MIN_THRESHOLD] and none.calibrated == [0.0, 0.0]
    # More quiet windows leave the threshold where it was.
    assert Indicators.calibrate(np.concatenate([x, windows([window(5)] * 900)]), NAMES, 0.05).thresholds == \
        quiet.thresholds
    noisy = windows([window(5, (2, 2, 2))] * 10 + [window(5)] * 90)
    cal = Indicators.calibrate(noisy, NAMES, budget=0.05)
    # 10 % of the windows hold 6 failures: beyond the budget, so the threshold is twice that.
    assert cal.thresholds[0] == MARGIN * 6.0 and cal.calibrated[0] == 6.0
    with pytest.raises(ModelError, match="budget"):
        Indicators.calibrate(x, NAMES, budget=1.0)
    with pytest.raises(ModelError, match="features.network_indicators"):
        Indicators.totals(x[:, :, :3], NAMES[:3])


def test_config_switches_and_signal_only_columns() -> None:
    with pytest.raises(ConfigError, match="features.network_indicators=true"):
        load_config(overrides=["model.network_indicators=true"])
    with pytest.raises(ConfigError, match="model.kind=deeplog"):
        load_config(overrides=["model.network_indicators=true", "features.network_indicators=true",
                               "model.kind=deeplog"])
    on = load_config(overrides=["model.network_indicators=true", "features.network_indicators=true"])
    assert signal_only_columns(on, NAMES) == [2, 3]
    assert signal_only_columns(load_config(), NAMES) == []
    with pytest.raises(ModelError, match="refit"):
        signal_only_columns(on, NAMES[:2])


def test_an_ignored_column_reaches_the_model_as_zero() -> None:
    x = windows([window(5, (1, 2, 1)), window(3), window(9, unnamed=(4, 0, 0))])
    plain = Normaliser.fit(x)
    blind = plain.ignoring([3, 2])
    assert blind.ignored == [2, 3] and blind.mean == plain.mean
    out = blind.transform(x)
    assert not out[:, :, 2:].any()
    np.testing.assert_array_equal(out[:, :, :2], plain.transform(x)[:, :, :2])
    assert Normaliser.from_dict(blind.to_dict()) == blind
    assert "ignored" not in plain.to_dict()  # bundles without it keep their bytes
    with pytest.raises(ModelError, match="ignored"):
        Normaliser(plain.mean, plain.std, [4])
    with pytest.raises(ModelError, match="ignored"):
        Normaliser.from_dict({**plain.to_dict(), "ignored": [True]})


def bundle_of(threshold: float, thresholds: list[float] | None) -> ModelBundle:
    """An untrained autoencoder over :data:`NAMES` that does not see the indicators."""
    torch.manual_seed(0)
    cfg = LSTMAutoencoderConfig(n_features=len(NAMES), window_steps=T, hidden_size=4)
    normaliser = Normaliser.fit(windows([window(5), window(3, (1, 0, 0)), window(8)])).ignoring([2, 3])
    signal = None if thresholds is None else Indicators(["repeated_failures", "unnamed_requests"], thresholds,
                                                        [t / 2 for t in thresholds], [4.0, 1.0], 0.01, 60)
    return ModelBundle(model_cfg=cfg, state_dict=LSTMAutoencoder(cfg).state_dict(), normaliser=normaliser,
                       threshold=threshold, feature_names=list(NAMES),
                       features={"step_seconds": 60, "window_steps": T, "stride_steps": 1, "transform": "log1p"},
                       metrics={"val_feature_error": [0.1] * len(NAMES)}, indicators=signal)


def score(bundle: ModelBundle, x: np.ndarray) -> dict[str, list]:  # type: ignore[type-arg]
    return KIND.score_windows(bundle, bundle.build_model(), torch.device("cpu"), x, 2).to_pydict()


def test_a_bot_calling_a_dead_controller_is_flagged_and_named_first() -> None:
    x = windows([window(5, (17, 18, 17)), window(5, (1, 2, 1)), window(5, unnamed=(1, 2, 0)), window(5)])
    plain = score(bundle_of(threshold=1e9, thresholds=None), x)
    # the model does not see the indicators: windows that differ only there score alike
    assert plain["score"][0] == plain["score"][1] == plain["score"][3]
    out = score(bundle_of(threshold=1e9, thresholds=[18.0, 2.5]), x)
    assert [s > 1e9 for s in out["score"]] == [True, False, True, False]
    assert out["score"][0] == pytest.approx(plain["score"][0] + 1e9 * 52 / 18.0)
    assert out["score"][1] == plain["score"][1]
    assert out["explanation"][0].startswith(
        "network indicators: 52 repeated failed attempts to one peer and port (> threshold 18; at most 4 in a training "
        "window); reconstruction error ")
    assert out["top_features"][0][0] == "repeated_failures"
    assert out["top_features"][2][0] == "unnamed_requests"
    # the model's own explanation never names a feature it does not see
    assert all(n not in out["top_features"][0][1:] for n in ("repeated_failures", "unnamed_requests"))
    flagged_by_error = score(bundle_of(threshold=0.0, thresholds=[18.0, 2.5]), x)
    assert flagged_by_error["top_features"][1] and not set(flagged_by_error["top_features"][1]) & {
        "repeated_failures", "unnamed_requests"}


def test_bundle_round_trip_and_damaged_records(tmp_path: Path) -> None:
    x = windows([window(5, (17, 18, 17)), window(5)])
    bundle = bundle_of(threshold=1e9, thresholds=[18.0, 2.5])
    save_bundle(tmp_path / "with", bundle)
    loaded = load_bundle(tmp_path / "with")
    assert isinstance(loaded, ModelBundle) and loaded.indicators == bundle.indicators
    assert loaded.normaliser.ignored == [2, 3]
    meta = json.loads((tmp_path / "with" / META).read_text())
    assert meta["indicators"]["thresholds"] == [18.0, 2.5] and meta["normaliser"]["ignored"] == [2, 3]
    assert score(loaded, x) == score(bundle, x)
    assert dict(KIND.report_facts(loaded))["network indicator thresholds"].startswith(
        "repeated_failures 18 (at most 4 in 60 training-period windows)")
    save_bundle(tmp_path / "without", bundle_of(threshold=1e9, thresholds=None))
    assert "indicators" not in json.loads((tmp_path / "without" / META).read_text())
    with pytest.raises(ModelError, match="malformed"):
        Indicators.from_dict({"names": ["repeated_failures"]})
    with pytest.raises(ModelError, match=r">= their floors \(2.5"):
        Indicators(["repeated_failures"], [1.0], [0.5], [1.0], 0.01, 10)
    missing = bundle_of(threshold=1.0, thresholds=[18.0, 2.5])
    missing.feature_names = [*NAMES[:3], "errors"]
    with pytest.raises(ModelError, match="network-indicator"):
        save_bundle(tmp_path / "bad", missing)


def test_the_kind_calibrates_only_when_switched_on() -> None:
    x = windows([window(5, (3, 3, 3))] * 5 + [window(5)] * 95)
    assert KIND.calibrate_indicators(x, list(NAMES), load_config()) is None
    on = load_config(overrides=["model.network_indicators=true", "features.network_indicators=true",
                                "train.alert_budget=0.1"])
    cal = KIND.calibrate_indicators(x, list(NAMES), on)
    assert cal is not None and cal.thresholds == [MARGIN * 9.0, MIN_THRESHOLD]
    cal = KIND.calibrate_indicators(x, list(NAMES), on, budget=0.01)
    assert cal is not None and cal.thresholds[0] == MARGIN * 9.0


def test_malformed_requests_are_a_third_indicator_and_two_indicator_lists_keep_working() -> None:
    """A feature list with ``malformed_requests`` calibrates and explains three indicators; one
    from before it (bundles and ``sequences`` tables of then) keeps its two."""
    names = [*NAMES, "malformed_requests"]

    def row(connections: int, malformed: tuple[int, ...] = (0, 0, 0)) -> list[list[float]]:
        return [[connections + 1, connections, 0, 0, m] for m in malformed]

    train = windows([row(5, (0, 1, 0))] + [row(5)] * 99)
    signal = Indicators.calibrate(train, names, budget=0.05)
    assert signal.names == ["repeated_failures", "unnamed_requests", "malformed_requests"]
    assert signal.thresholds == [MIN_THRESHOLD] * 3 and signal.validation_max == [0.0, 0.0, 1.0]
    test = windows([row(5, (4, 5, 3)), row(5, (1, 0, 1))])
    totals = signal.totals(test, names, wanted=signal.names)
    assert totals[:, 2].tolist() == [12.0, 2.0]
    assert signal.passed(totals[0]) == ["malformed_requests"] and signal.passed(totals[1]) == []
    assert signal.text(totals[0]) == ("12 malformed requests (not the protocol of their connection) (> threshold "
                                      "2.5; at most 1 in a training window)")
    older = Indicators.calibrate(train[:, :, :4], NAMES, budget=0.05)
    assert older.names == ["repeated_failures", "unnamed_requests"]
    # a bundle of then reads its two columns from a list that holds them
    assert Indicators.totals(test[:, :, :4], NAMES, wanted=older.names).shape == (2, 2)
    # no version wrote a list with the third indicator alone
    with pytest.raises(ModelError, match="features.network_indicators"):
        Indicators.totals(test[:, :, [0, 1, 4]], ["events", "connections", "malformed_requests"])


def test_failed_targets_has_the_floor_of_zeeks_scan_detector() -> None:
    """A sweep of failed attempts over many peers and ports flags its window; a training period
    where no host failed to more than one target does not lower the bar under 15."""
    names = [*NAMES, "malformed_requests", "failed_targets"]

    def row(targets: tuple[int, ...] = (0, 0, 0)) -> list[list[float]]:
        return [[6, 5, 0, 0, 0, t] for t in targets]

    signal = Indicators.calibrate(windows([row((1, 0, 0))] * 5 + [row()] * 95), names, budget=0.05)
    assert signal.names[-1] == "failed_targets" and signal.calibrated[-1] == 1.0  # 2 x 1 is under the floor
    assert signal.thresholds == [MIN_THRESHOLD] * 3 + [FLOORS["failed_targets"]] == [2.5, 2.5, 2.5, 15.0]
    totals = signal.totals(windows([row((3, 4, 5)), row((90, 102, 97))]), names, wanted=signal.names)
    assert signal.passed(totals[0]) == [] and signal.passed(totals[1]) == ["failed_targets"]
    assert signal.text(totals[1]).startswith("289 peers and ports tried without a connection (> threshold 15;")
    with pytest.raises(ModelError, match="floors"):
        Indicators(names[2:], [2.5, 2.5, 2.5, 10.0], [0.0] * 4, [0.0] * 4, 0.05, 100)
