"""The rank-aware training loop, sharding, checkpoints and threshold calibration (CPU, no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.config import TrainConfig
from loganomaly.errors import ModelError
from loganomaly.models.autoencoder import (
    LSTMAutoencoder,
    LSTMAutoencoderConfig,
    window_errors,
    window_step_errors,
)
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.autoencoder import explain
from loganomaly.training.tasks import train_autoencoder
from loganomaly.training.loop import CHECKPOINT_META, load_checkpoint
from loganomaly.models.autoencoder import calibrate_threshold
from loganomaly.runtime.collective import shard_indices
from tests.models.test_autoencoder import F, T, periodic_windows


def small_train_cfg(**overrides: object) -> TrainConfig:
    cfg = TrainConfig(epochs=6, batch_size=16, learning_rate=1e-2, patience=0, seed=5, device="cpu")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def data() -> tuple[np.ndarray, np.ndarray]:
    raw = periodic_windows(160, seed=1)
    norm = Normaliser.fit(raw[:128])
    return norm.transform(raw[:128]), norm.transform(raw[128:])


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 3), (7, 2), (1, 4), (100, 7)])
def test_shards_cover_every_row_and_are_equal_in_length(n: int, world: int) -> None:
    shards = [shard_indices(n, rank, world, epoch_seed=42) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1, "ranks must run the same number of batches"
    assert set(np.concatenate(shards).tolist()) == set(range(n))
    # padding repeats at most world - 1 rows
    assert sum(len(s) for s in shards) - n < world
    # another epoch seed gives another order
    assert not np.array_equal(shards[0], shard_indices(n, 0, world, epoch_seed=43)) or n <= world


def test_training_lowers_validation_loss_and_is_reproducible() -> None:
    train_x, val_x = data()
    model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    first = train_autoencoder(train_x, val_x, model_cfg, small_train_cfg())
    losses = [h["val_loss"] for h in first.history]
    assert len(losses) == 6
    assert min(losses) < losses[0] * 0.9
    assert first.best_val_loss == pytest.approx(min(losses))
    again = train_autoencoder(train_x, val_x, model_cfg, small_train_cfg())
    for name, tensor in first.state_dict.items():
        torch.testing.assert_close(tensor, again.state_dict[name])


def test_resume_repeats_the_uninterrupted_run(tmp_path: Path) -> None:
    train_x, val_x = data()
    model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    full = train_autoencoder(train_x, val_x, model_cfg, small_train_cfg(), checkpoint_dir=tmp_path / "a")
    # stop after 3 epochs, then resume to 6
    train_autoencoder(train_x, val_x, model_cfg, small_train_cfg(epochs=3), checkpoint_dir=tmp_path / "b")
    meta = json.loads((tmp_path / "b" / CHECKPOINT_META).read_text())
    assert meta["epoch"] == 2 and meta["model"] == model_cfg.to_dict() and meta["train"]["epochs"] == 3
    resumed = train_autoencoder(
        train_x, val_x, model_cfg, small_train_cfg(), checkpoint_dir=tmp_path / "b", resume=True
    )
    assert [h["epoch"] for h in resumed.history] == list(range(6))
    assert [h["val_loss"] for h in resumed.history] == pytest.approx([h["val_loss"] for h in full.history])
    for name, tensor in full.state_dict.items():
        torch.testing.assert_close(tensor, resumed.state_dict[name])


def test_checkpoint_of_another_model_or_torn_checkpoint_is_refused(tmp_path: Path) -> None:
    train_x, val_x = data()
    model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    train_autoencoder(train_x, val_x, model_cfg, small_train_cfg(epochs=2), checkpoint_dir=tmp_path)
    bigger = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=16)
    with pytest.raises(ModelError, match="checkpoint .* is of model"):
        train_autoencoder(train_x, val_x, bigger, small_train_cfg(), checkpoint_dir=tmp_path, resume=True)
    # a checkpoint.json from another epoch than the weights: a crash between two renames
    meta = json.loads((tmp_path / CHECKPOINT_META).read_text())
    meta["epoch"] = 7
    (tmp_path / CHECKPOINT_META).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="epoch"):
        load_checkpoint(tmp_path)


def test_early_stopping_stops_when_validation_stalls() -> None:
    train_x, val_x = data()
    model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    # a learning rate of ~0 never improves after epoch 0
    result = train_autoencoder(train_x, val_x, model_cfg, small_train_cfg(epochs=20, patience=2, learning_rate=1e-12))
    assert len(result.history) == 3
    assert result.best_epoch == 0


def test_bad_data_is_refused() -> None:
    model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    ok = np.zeros((4, T, F), np.float32)
    with pytest.raises(ModelError, match="no validation windows"):
        train_autoencoder(ok, np.zeros((0, T, F), np.float32), model_cfg, small_train_cfg())
    with pytest.raises(ModelError, match="shape"):
        train_autoencoder(np.zeros((4, T, F + 1), np.float32), ok, model_cfg, small_train_cfg())


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
