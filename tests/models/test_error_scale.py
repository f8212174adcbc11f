"""``model.error_scale: typical``: each feature's squared error over its typical validation error in
the window score (CPU, no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.config import load_config
from loganomaly.errors import ConfigError
from loganomaly.features.split import Shard
from loganomaly.models.autoencoder import (
    ERROR_SCALE_FLOOR,
    KIND,
    LSTMAutoencoder,
    LSTMAutoencoderConfig,
    error_weights,
    flagged_step_errors,
    window_errors,
    window_step_errors,
)
from loganomaly.models.bundle import META, load_bundle, save_bundle
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.window import ModelBundle

T, F = 3, 4


def model() -> LSTMAutoencoder:
    torch.manual_seed(0)
    return LSTMAutoencoder(LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=4)).eval()


def test_weighted_scores_are_the_weighted_mean_and_the_errors_stay_unweighted() -> None:
    net = model()
    x = np.random.default_rng(0).normal(size=(7, T, F)).astype(np.float32)
    per_step = window_step_errors(net, x)
    weights = np.array([1.0, 10.0, 0.5, 100.0])
    scores, flagged, errors = flagged_step_errors(net, x, -np.inf, weights=weights)
    assert np.allclose(scores, (per_step * weights).mean(axis=(1, 2)))
    assert flagged.tolist() == list(range(7)) and np.allclose(errors, per_step)
    plain, _, _ = flagged_step_errors(net, x, -np.inf)
    assert np.allclose(plain, per_step.mean(axis=(1, 2))) and not np.allclose(plain, scores)


def test_weights_are_the_inverse_typical_error_with_a_floor() -> None:
    assert error_weights(np.array([0.5, 2.0, 0.0])).tolist() == [2.0, 0.5, 1.0 / ERROR_SCALE_FLOOR]


def shard(x: np.ndarray) -> Shard:
    n = len(x)
    return Shard(x=x, entity=np.array(["h"] * n, dtype=object), window_start=np.arange(n, dtype=np.int64) * 3_600_000_000)


def test_calibration_weighs_the_validation_errors_and_stores_the_weights() -> None:
    net = model()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, T, F)).astype(np.float32)
    x[:, :, 3] *= 0.01  # a feature that hardly varies: small errors, large weight
    plain_cfg = load_config(overrides=["train.screen_mad_k=null", "train.alert_budget=0.05"])
    cfg = load_config(overrides=["train.screen_mad_k=null", "train.alert_budget=0.05", "model.error_scale=typical"])
    device = torch.device("cpu")
    t_plain, m_plain, s_plain = KIND.calibrate_screened(net, device, x, shard(x), plain_cfg, None)
    threshold, metrics, scores = KIND.calibrate_screened(net, device, x, shard(x), cfg, None)
    assert "error_weights" not in m_plain
    _, per_feature = window_errors(net, x)
    weights = error_weights(per_feature.mean(axis=0))
    assert np.allclose(metrics["error_weights"], weights)
    assert np.allclose(scores, (per_feature * weights).mean(axis=1))
    # Standardised errors average 1 per feature over the windows they were taken on.
    assert scores.mean() == pytest.approx(1.0)
    assert np.quantile(scores, 0.5) < threshold and threshold != t_plain
    assert np.allclose(s_plain, per_feature.mean(axis=1))


def bundle_of(weights: list[float] | None) -> ModelBundle:
    net = model()
    train = np.zeros((4, T, F), dtype=np.float32)
    metrics: dict = {"val_feature_error": [0.1] * F}  # type: ignore[type-arg]
    if weights is not None:
        metrics["error_weights"] = weights
    return ModelBundle(model_cfg=LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=4),
                       state_dict=net.state_dict(), normaliser=Normaliser.fit(train), threshold=1e9,
                       feature_names=[f"f{i}" for i in range(F)],
                       features={"step_seconds": 300, "window_steps": T, "stride_steps": 1, "transform": "log1p"},
                       metrics=metrics)


def test_scoring_uses_the_stored_weights_and_bundles_without_them_score_as_before(tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(size=(5, T, F)).astype(np.float32)
    plain = bundle_of(None)
    weighted = bundle_of([1.0, 1.0, 1.0, 50.0])

    def score(b: ModelBundle) -> np.ndarray:
        out = KIND.score_windows(b, b.build_model(), torch.device("cpu"), x, 2).to_pydict()
        return np.asarray(out["score"])

    per_step = window_step_errors(plain.build_model(), plain.normaliser.transform(x))
    assert np.allclose(score(plain), per_step.mean(axis=(1, 2)))
    assert np.allclose(score(weighted), (per_step * np.array([1.0, 1.0, 1.0, 50.0])).mean(axis=(1, 2)))
    save_bundle(tmp_path / "w", weighted)
    assert json.loads((tmp_path / "w" / META).read_text())["metrics"]["error_weights"][3] == 50.0
    loaded = load_bundle(tmp_path / "w")
    assert isinstance(loaded, ModelBundle) and np.allclose(score(loaded), score(weighted))


def test_the_setting_is_validated() -> None:
    with pytest.raises(ConfigError, match="none.*typical|typical.*none"):
        load_config(overrides=["model.error_scale=max"])
    with pytest.raises(ConfigError, match="model.kind=deeplog"):
        load_config(overrides=["model.error_scale=typical", "model.kind=deeplog"])
    assert load_config(overrides=["model.error_scale=typical"]).model.error_scale == "typical"
