"""The autoencoder kind: network, config, init, errors, calibration, explanations, rank work (CPU, no Spark)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.config import TrainConfig
from loganomaly.errors import ConfigError, ModelError, StageInputError
from loganomaly.features.split import Selection, plan_shards
from loganomaly.models.autoencoder import (
    KIND,
    AutoencoderTask,
    AutoencoderWork,
    LSTMAutoencoder,
    LSTMAutoencoderConfig,
    calibrate_threshold,
    explain,
    flagged_step_errors,
    window_errors,
    window_step_errors,
)
from loganomaly.models.bundle import load_bundle, save_bundle
from loganomaly.models.kind import Inference
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.window import ModelBundle
from loganomaly.runtime.collective import Collective
from loganomaly.runtime.device import pick_device
from loganomaly.training.loop import init_weights
from tests.models.fitting import fit_autoencoder, sequence_settings, snapshot_plans

T, F = 12, 3


def periodic_windows(n: int, seed: int = 0) -> np.ndarray:
    """Smooth daily-like curves with a random phase per window, on very different scales."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    angle = 2 * np.pi * np.arange(T)[None, :] / T + phase
    counts = 50 + 20 * np.sin(angle) + rng.normal(0, 1, (n, T))
    log_bytes = 9 + np.cos(angle) + rng.normal(0, 0.05, (n, T))
    ports = 4 + 0.5 * np.sin(2 * angle) + rng.normal(0, 0.05, (n, T))
    return np.stack([counts, log_bytes, ports], axis=-1).astype(np.float32)


def small_cfg() -> LSTMAutoencoderConfig:
    return LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)


def make_bundle(seed: int = 0) -> tuple[ModelBundle, np.ndarray]:
    torch.manual_seed(seed)
    cfg = small_cfg()
    raw = periodic_windows(64, seed)
    normaliser = Normaliser.fit(raw)
    bundle = ModelBundle(
        model_cfg=cfg,
        state_dict=LSTMAutoencoder(cfg).state_dict(),
        normaliser=normaliser,
        threshold=0.25,
        feature_names=["conn_count", "log_bytes", "distinct_ports"],
        features={"step_seconds": 300, "window_steps": T, "stride_steps": 3},
        metrics={"best_val_loss": 0.1, "val_feature_error": [0.1, 0.2, 0.3], "n": np.float32(1.5)},
        training={"run_id": "train-test", "sequences_version": 4, "history": [{"epoch": 0, "val_loss": 0.5}]},
    )
    return bundle, raw


# --- model ------------------------------------------------------------------------------------


def test_forward_shape_and_config_round_trip() -> None:
    cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8, num_layers=2, dropout=0.1)
    model = LSTMAutoencoder(cfg)
    out = model(torch.zeros(5, T, F))
    assert out.shape == (5, T, F)
    assert LSTMAutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    # Windows of another length still run: the latent is repeated to the input's length.
    assert model(torch.zeros(2, 4, F)).shape == (2, 4, F)


def test_config_rejects_unknown_missing_and_invalid_keys() -> None:
    with pytest.raises(ModelError, match="unknown model config keys"):
        LSTMAutoencoderConfig.from_dict({"n_features": 3, "window_steps": 12, "heads": 4})
    with pytest.raises(ModelError, match="incomplete"):
        LSTMAutoencoderConfig.from_dict({"n_features": 3})
    with pytest.raises(ModelError, match="hidden_size"):
        LSTMAutoencoderConfig(n_features=3, window_steps=12, hidden_size=0)
    with pytest.raises(ModelError, match="dropout"):
        LSTMAutoencoderConfig(n_features=3, window_steps=12, dropout=1.5)


def test_the_kind_trains_from_xavier_weights_and_zero_biases() -> None:
    """Xavier is the autoencoder's own init: ``train.init: auto`` gives it in the loop, bit for bit."""
    assert AutoencoderTask.default_init == "xavier"
    model = LSTMAutoencoder(small_cfg())
    init_weights(model, AutoencoderTask.default_init)
    for name, param in model.named_parameters():
        if "bias" in name:
            assert torch.count_nonzero(param) == 0, name
        else:
            fan_out, fan_in = param.shape
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert param.abs().max() <= bound + 1e-6, name
            assert param.std() > 0, name
    with pytest.raises(ConfigError, match="auto"):
        init_weights(model, "auto")  # the loop resolves it from the task, nobody else
    x = periodic_windows(24)
    auto = fit_autoencoder(x, x[:8], small_cfg(), sequence_settings(epochs=1, init="auto"))
    xavier = fit_autoencoder(x, x[:8], small_cfg(), sequence_settings(epochs=1, init="xavier"))
    default = fit_autoencoder(x, x[:8], small_cfg(), sequence_settings(epochs=1, init="default"))
    assert all(torch.equal(auto.state_dict[k], xavier.state_dict[k]) for k in auto.state_dict)
    assert not all(torch.equal(auto.state_dict[k], default.state_dict[k]) for k in auto.state_dict)


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ModelError, match="auto, cpu, cuda"):
        pick_device("tpu")


def test_window_errors_shapes_and_batching() -> None:
    torch.manual_seed(0)
    model = LSTMAutoencoder(small_cfg())
    x = Normaliser.fit(periodic_windows(50)).transform(periodic_windows(50))
    score, per_feature = window_errors(model, x, batch_size=1024)
    assert score.shape == (50,) and per_feature.shape == (50, F)
    assert score.dtype == np.float64
    # The score is the mean of the per-feature errors (equal step counts per feature).
    np.testing.assert_allclose(score, per_feature.mean(axis=1), rtol=1e-5)
    with torch.no_grad():
        direct = ((model(torch.from_numpy(x)) - torch.from_numpy(x)) ** 2).mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(score, direct, rtol=1e-5)
    small_batches, _ = window_errors(model, x, batch_size=7)
    np.testing.assert_allclose(small_batches, score, rtol=1e-5)
    empty, empty_pf = window_errors(model, x[:0])
    assert empty.shape == (0,) and empty_pf.shape == (0, F)
    with pytest.raises(ModelError, match=r"\[N, T, F\]"):
        window_errors(model, x[0])


# --- calibration and explanations -------------------------------------------------------------


def test_threshold_extrapolates_the_tail_of_a_small_validation_set() -> None:
    rng = np.random.default_rng(0)
    population = rng.lognormal(mean=-1.0, sigma=0.6, size=200_000)
    sample = population[:150]
    threshold = calibrate_threshold(sample, 0.995)
    # the empirical quantile of 150 scores is about their maximum and under-covers the tail
    assert threshold >= np.quantile(sample, 0.995)
    false_alarms = float((population > threshold).mean())
    assert false_alarms < 0.02
    # and it is not absurdly high either: well below the population's 0.99999 quantile
    assert threshold < np.quantile(population, 0.99999)


def test_threshold_of_two_humps_stays_near_the_largest_normal_score() -> None:
    # half the normal windows reconstruct almost perfectly, the rest (rare but normal events) do not
    rng = np.random.default_rng(1)
    scores = np.concatenate([rng.lognormal(-9.0, 0.3, 500), rng.lognormal(4.5, 0.05, 500)])
    threshold = calibrate_threshold(scores, 0.99)
    assert np.quantile(scores, 0.99) <= threshold <= 2.0 * scores.max()


def test_threshold_refuses_bad_scores() -> None:
    with pytest.raises(ModelError):
        calibrate_threshold(np.array([]), 0.99)
    with pytest.raises(ModelError):
        calibrate_threshold(np.array([0.1, np.nan]), 0.99)
    with pytest.raises(ModelError):
        calibrate_threshold(np.array([0.1, 0.2]), 1.0)


def test_step_errors_agree_with_window_errors_and_explain_names_the_broken_feature() -> None:
    raw = periodic_windows(40, seed=3)
    norm = Normaliser.fit(raw)
    model = LSTMAutoencoder(LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8))
    broken = raw.copy()
    broken[0, 5, 2] += 50.0  # distinct_ports jumps at step 6 of window 0
    x = norm.transform(broken)
    per_step = window_step_errors(model, x, batch_size=7)
    scores, _ = window_errors(model, x, batch_size=7)
    np.testing.assert_allclose(per_step.mean(axis=(1, 2)), scores, rtol=1e-6)
    tops, texts = explain(
        broken, per_step, np.full(F, 0.1), np.asarray(norm.mean), ["conn", "bytes", "ports"], 2, log1p=False
    )
    assert tops[0][0] == "ports"
    assert "at step 6" in texts[0] and "ports=" in texts[0]


def test_a_relative_metric_without_its_level_is_explained_as_a_ratio_to_its_baseline() -> None:
    """``features.metric_levels: false``: ``rel:metric:disk_io`` has no level beside it, so the
    explanation gives the ratio it stands for (disk I/O at 0.01x its trailing median)."""
    names = ["rel:metric:cpu", "rel:metric:disk_io"]
    x = np.zeros((1, 3, 2))
    x[0, 1, 1] = np.log1p(5.0) - np.log1p(600.0)  # disk I/O collapsing from ~600 to 5
    per_step = np.zeros((1, 3, 2))
    per_step[0, 1, 1] = 900.0
    tops, texts = explain(x, per_step, np.full(2, 0.1), np.zeros(2), names, 1)
    assert tops[0] == ["rel:metric:disk_io"]
    assert texts[0] == "metric:disk_io at 0.00998x its baseline (as 1 + value) at step 2"


def test_only_flagged_windows_are_explained_and_keep_their_explanation() -> None:
    """Scoring explains windows above the threshold exactly as explaining every window did; the rest stay empty."""
    bundle, raw = make_bundle(seed=4)
    model = bundle.build_model()
    x = raw.copy()
    x[::5, 3, 1] += 8.0  # every fifth window has a burst of bytes
    per_step = window_step_errors(model, bundle.normaliser.transform(x))
    everything = explain(x, per_step, np.asarray(bundle.metrics["val_feature_error"]),
                         np.asarray(bundle.normaliser.mean), bundle.feature_names, 2)
    score = per_step.mean(axis=(1, 2))
    bundle.threshold = float(np.median(score))  # half the windows flagged
    for batch_size in (7, 1024):
        scored = KIND.score_windows(bundle, model, torch.device("cpu"), x, 2, Inference(batch_size=batch_size)).to_pandas()
        # float32 networks: a batch of another size may take another CPU kernel (a last batch of
        # one window did on an Intel Xeon runner), so scores agree to float32 rounding, not exactly.
        np.testing.assert_allclose(scored["score"].to_numpy(), score, rtol=1e-6)
        flagged = score > bundle.threshold
        assert 0 < flagged.sum() < len(x)
        for i in range(len(x)):
            if flagged[i]:
                assert list(scored["top_features"][i]) == everything[0][i]
                assert scored["explanation"][i] == everything[1][i] != ""
            else:
                assert list(scored["top_features"][i]) == [] and scored["explanation"][i] == ""


def test_flagged_step_errors_returns_the_errors_of_flagged_windows_only() -> None:
    bundle, raw = make_bundle(seed=5)
    model = bundle.build_model()
    x = bundle.normaliser.transform(raw)
    per_step = window_step_errors(model, x)
    threshold = float(np.quantile(per_step.mean(axis=(1, 2)), 0.75))
    score, flagged, errors = flagged_step_errors(model, x, threshold, batch_size=5)
    np.testing.assert_allclose(score, per_step.mean(axis=(1, 2)), rtol=1e-6)  # batches of 5 against one
    np.testing.assert_array_equal(flagged, np.flatnonzero(score > threshold))
    np.testing.assert_allclose(errors, per_step[flagged], rtol=1e-6)
    none = flagged_step_errors(model, x, np.inf)
    assert none[1].shape == (0,) and none[2].shape == (0, T, F)


# --- rank work ---------------------------------------------------------------------------------


def test_bad_data_is_refused(tmp_path: Path) -> None:
    """Windows of another shape, or no validation windows, are refused when a rank reads its shard."""
    model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    settings = TrainConfig(epochs=6, batch_size=16, learning_rate=1e-2, patience=0, seed=5, device="cpu",
                           init="xavier")
    train, val = snapshot_plans(tmp_path, periodic_windows(40))
    (nothing,) = plan_shards(val.snapshot, [Selection(0.0, 1.0, 0.25, "validation")], seed=1)
    assert train.total and val.total and nothing.total == 0
    with pytest.raises(StageInputError, match="no validation windows"):
        AutoencoderWork(train, nothing, model_cfg).build_task(settings, Collective())
    for other in (LSTMAutoencoderConfig(n_features=F + 1, window_steps=T, hidden_size=8),
                  LSTMAutoencoderConfig(n_features=F, window_steps=T + 1, hidden_size=8)):
        with pytest.raises(ModelError, match="windows have shape"):
            AutoencoderWork(train, val, other).build_task(settings, Collective())
    # Windows already in memory go straight to the loop, which refuses to run without validation.
    ok = np.zeros((4, T, F), np.float32)
    with pytest.raises(ModelError, match="validation loss"):
        fit_autoencoder(ok, np.zeros((0, T, F), np.float32), model_cfg, settings)


# --- several members ----------------------------------------------------------------------------


def _member(model: LSTMAutoencoder, k: int) -> LSTMAutoencoder:
    """Member ``k`` of an ensemble as a one-network autoencoder with that member's weights."""
    single = LSTMAutoencoder(LSTMAutoencoderConfig(**{**model.cfg.to_dict(), "members": 1}))
    prefix = f"members.{k}."
    single.load_state_dict({n[len(prefix):]: v for n, v in model.state_dict().items() if n.startswith(prefix)})
    return single


def test_members_config_round_trip_and_bundles_of_one_network_keep_their_json() -> None:
    three = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8, members=3)
    assert three.to_dict()["members"] == 3
    assert LSTMAutoencoderConfig.from_dict(three.to_dict()) == three
    # One network writes no ``members`` key: its model.json (and version hash) is that of earlier bundles.
    assert "members" not in small_cfg().to_dict()
    assert LSTMAutoencoderConfig.from_dict(small_cfg().to_dict()).members == 1
    assert sorted(LSTMAutoencoder(small_cfg()).state_dict())[0] == "decoder.bias_hh_l0"
    with pytest.raises(ModelError, match="members"):
        LSTMAutoencoderConfig(n_features=F, window_steps=T, members=0)


def test_the_window_error_of_members_is_the_mean_of_their_own_errors() -> None:
    torch.manual_seed(0)
    model = LSTMAutoencoder(LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8, members=3))
    assert model(torch.zeros(5, T, F)).shape == (3, 5, T, F)
    x = Normaliser.fit(periodic_windows(40)).transform(periodic_windows(40))
    own = [window_errors(_member(model, k), x) for k in range(3)]
    # Independently initialised: the members disagree.
    assert not np.allclose(own[0][0], own[1][0])
    score, per_feature = window_errors(model, x, batch_size=16)
    np.testing.assert_allclose(score, np.mean([s for s, _ in own], axis=0), rtol=1e-5)
    np.testing.assert_allclose(per_feature, np.mean([p for _, p in own], axis=0), rtol=1e-5)
    steps = window_step_errors(model, x)
    np.testing.assert_allclose(steps.mean(axis=(1, 2)), score, rtol=1e-5)
    flagged_score, flagged, errors = flagged_step_errors(model, x, float(np.median(score)))
    np.testing.assert_allclose(flagged_score, score, rtol=1e-5)
    np.testing.assert_array_equal(flagged, np.flatnonzero(score > np.median(score)))
    np.testing.assert_allclose(errors, steps[flagged], rtol=1e-5)


def test_each_member_learns_from_its_own_error_only() -> None:
    """The loss of K members is the mean of their losses: member k's gradient is its own, over K."""
    torch.manual_seed(1)
    cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8, members=2)
    model = LSTMAutoencoder(cfg)
    x = torch.from_numpy(Normaliser.fit(periodic_windows(16)).transform(periodic_windows(16)))
    task = AutoencoderTask(x.numpy(), lambda epoch: np.arange(16), x.numpy(), cfg)
    total, n = task.loss_sums(model(x), x)
    (total / n).backward()
    single = _member(model, 1)
    one, m = task.loss_sums(single(x), x)
    (one / m).backward()
    for name, param in single.named_parameters():
        twin = dict(model.named_parameters())[f"members.1.{name}"]
        assert twin.grad is not None and param.grad is not None
        torch.testing.assert_close(twin.grad, param.grad / 2, rtol=1e-4, atol=1e-7)


def test_an_ensemble_trains_and_its_bundle_round_trips(tmp_path: Path) -> None:
    x = periodic_windows(48)
    normaliser = Normaliser.fit(x)
    cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8, members=2)
    result = fit_autoencoder(normaliser.transform(x), normaliser.transform(x[:12]), cfg,
                             sequence_settings(epochs=3, init="auto"))
    assert any(k.startswith("members.1.") for k in result.state_dict)
    bundle = ModelBundle(model_cfg=cfg, state_dict=result.state_dict, normaliser=normaliser, threshold=0.5,
                         feature_names=["conn_count", "log_bytes", "distinct_ports"],
                         features={"step_seconds": 300, "window_steps": T, "stride_steps": 3},
                         metrics={"best_val_loss": result.best_val_loss}, training={"run_id": "t"})
    save_bundle(tmp_path / "model", bundle)
    loaded = load_bundle(tmp_path / "model")
    assert isinstance(loaded, ModelBundle) and loaded.model_cfg.members == 2
    model = loaded.model_cfg.build()
    model.load_state_dict(loaded.state_dict)
    trained = LSTMAutoencoder(cfg)
    trained.load_state_dict(result.state_dict)
    xn = normaliser.transform(x)
    np.testing.assert_allclose(window_errors(model, xn)[0], window_errors(trained, xn)[0], rtol=1e-6)
