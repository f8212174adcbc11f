"""Network indicators as a signal of their own: window totals, calibration with its margin and
floor, a model that does not see them, the combined score, explanations and top features, bundles
with and without the signal (CPU, no Spark)."""

from __future__ import annotations

import dataclasses
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


def test_ignored_columns_are_left_out_of_the_model_input_and_older_bundles_zero_them() -> None:
    x = windows([window(5, (1, 2, 1)), window(3), window(9, unnamed=(4, 0, 0))])
    plain = Normaliser.fit(x)
    blind = plain.ignoring([3, 2])
    assert blind.ignored == [2, 3] and blind.dropped and blind.mean == plain.mean and blind.width == 2
    out = blind.transform(x)
    assert out.shape == (3, T, 2)
    np.testing.assert_array_equal(out, plain.transform(x)[:, :, :2])
    # per-input values go back to their columns, the left-out ones filled
    wide = blind.widen(out, fill=-1.0)
    np.testing.assert_array_equal(wide[:, :, :2], out)
    assert (wide[:, :, 2:] == -1.0).all() and plain.widen(out) is out
    assert Normaliser.from_dict(blind.to_dict()) == blind and blind.to_dict()["dropped"] is True
    assert "ignored" not in plain.to_dict() and "dropped" not in plain.to_dict()  # bundles without it keep their bytes
    # a bundle of before 2026-12-05: the columns stay model inputs, set to 0
    zeroed = Normaliser.from_dict({**blind.to_dict(), "dropped": False})
    assert "dropped" not in zeroed.to_dict() and zeroed.width == 4
    old = zeroed.transform(x)
    assert old.shape == (3, T, 4) and not old[:, :, 2:].any()
    np.testing.assert_array_equal(old[:, :, :2], out)
    with pytest.raises(ModelError, match="ignored"):
        Normaliser(plain.mean, plain.std, [4])
    with pytest.raises(ModelError, match="ignored"):
        Normaliser.from_dict({**plain.to_dict(), "ignored": [True]})
    with pytest.raises(ModelError, match="dropped"):
        Normaliser.from_dict({**blind.to_dict(), "dropped": 1})
    with pytest.raises(ModelError, match="drops all"):
        plain.ignoring([0, 1, 2, 3])


def bundle_of(threshold: float, thresholds: list[float] | None, older: bool = False) -> ModelBundle:
    """An untrained autoencoder over :data:`NAMES` that does not see the indicators (``older``:
    as bundles before 2026-12-05 held it, the indicators zeroed model inputs)."""
    torch.manual_seed(0)
    normaliser = Normaliser.fit(windows([window(5), window(3, (1, 0, 0)), window(8)])).ignoring([2, 3])
    if older:
        normaliser = dataclasses.replace(normaliser, dropped=False)
    cfg = LSTMAutoencoderConfig(n_features=normaliser.width, window_steps=T, hidden_size=4)
    signal = None if thresholds is None else Indicators(["repeated_failures", "unnamed_requests"], thresholds,
                                                        [t / 2 for t in thresholds], [4.0, 1.0], 0.01, 60)
    bundle = ModelBundle(model_cfg=cfg, state_dict=LSTMAutoencoder(cfg).state_dict(), normaliser=normaliser,
                         threshold=threshold, feature_names=list(NAMES),
                         features={"step_seconds": 60, "window_steps": T, "stride_steps": 1, "transform": "log1p"},
                         metrics={"val_feature_error": [0.1] * normaliser.width}, indicators=signal)
    KIND.check_bundle(bundle)
    return bundle


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
    for older in (False, True):
        flagged_by_error = score(bundle_of(threshold=0.0, thresholds=[18.0, 2.5], older=older), x)
        assert flagged_by_error["top_features"][1] and not set(flagged_by_error["top_features"][1]) & {
            "repeated_failures", "unnamed_requests"}
        assert flagged_by_error["explanation"][3].startswith("reconstruction error ")


def test_a_bundle_whose_model_width_is_not_its_normalisers_is_refused() -> None:
    bundle = bundle_of(threshold=1.0, thresholds=[18.0, 2.5])
    with pytest.raises(ModelError, match="the model takes 4"):
        KIND.check_bundle(dataclasses.replace(bundle, model_cfg=LSTMAutoencoderConfig(4, T, hidden_size=4)))
    older = bundle_of(threshold=1.0, thresholds=[18.0, 2.5], older=True)
    with pytest.raises(ModelError, match="the model takes 2"):
        KIND.check_bundle(dataclasses.replace(older, model_cfg=LSTMAutoencoderConfig(2, T, hidden_size=4)))


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


def test_an_older_bundle_continues_as_the_same_network_without_its_zeroed_inputs() -> None:
    """``train.init_from`` a bundle of before 2026-12-05 (the indicators zeroed model inputs):
    its weights cut to the other columns compute the same errors and probabilities on them."""
    from loganomaly.models.autoencoder import window_step_errors
    from loganomaly.models.classifier import KIND as CLASSIFIER
    from loganomaly.models.classifier import ClassifierConfig, LSTMClassifier, classifier_probabilities

    x = windows([window(5, (17, 18, 17)), window(3, (1, 2, 1)), window(9, unnamed=(4, 0, 0)), window(2)])
    for members in (1, 2):
        old = bundle_of(threshold=1.0, thresholds=[18.0, 2.5], older=True)
        cfg = LSTMAutoencoderConfig(n_features=4, window_steps=T, hidden_size=4, members=members)
        old = dataclasses.replace(old, model_cfg=cfg, state_dict=LSTMAutoencoder(cfg).state_dict())
        new = KIND.without_zeroed_inputs(old, [2, 3])
        KIND.check_bundle(new)
        assert new.model_cfg.n_features == 2 and new.normaliser.dropped and new.normaliser.ignored == [2, 3]
        before = window_step_errors(old.build_model(), old.normaliser.transform(x))[:, :, :2]
        after = window_step_errors(new.build_model(), new.normaliser.transform(x))
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-7)
        assert KIND.without_zeroed_inputs(new, [2, 3]) is new  # already without them
        assert KIND.without_zeroed_inputs(old, [3]) is old  # other columns: left for the caller to refuse
    torch.manual_seed(1)
    ccfg = ClassifierConfig(n_features=4, n_classes=2, hidden_size=4, bidirectional=True)
    old_c = dataclasses.replace(bundle_of(threshold=0.5, thresholds=None, older=True), model_cfg=ccfg,
                                state_dict=LSTMClassifier(ccfg).state_dict())
    new_c = CLASSIFIER.without_zeroed_inputs(old_c, [2, 3])
    CLASSIFIER.check_bundle(new_c)
    np.testing.assert_allclose(classifier_probabilities(new_c.build_model(), new_c.normaliser.transform(x)),
                               classifier_probabilities(old_c.build_model(), old_c.normaliser.transform(x)),
                               rtol=1e-5, atol=1e-7)
