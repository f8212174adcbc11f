"""The rank-aware training loop: sharding, reproducibility, checkpoints, resume, early stopping and the
optimiser recipe, on the autoencoder and classifier tasks (CPU, no Spark)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from loganomaly.config import TrainConfig
from loganomaly.errors import ModelError
from loganomaly.features.split import Selection, plan_shards, time_range, write_windows
from loganomaly.lake.snapshot import Snapshot
from loganomaly.models.autoencoder import AutoencoderTask, AutoencoderWork, LSTMAutoencoderConfig
from loganomaly.models.classifier import ClassifierConfig, LSTMClassifier
from loganomaly.models.normaliser import Normaliser
from loganomaly.runtime.collective import Collective, shard_indices
from loganomaly.training.loop import (
    CHECKPOINT_EMA,
    CHECKPOINT_META,
    CHECKPOINT_WEIGHTS,
    WeightAverage,
    _val_sums,
    build_optimizer,
    init_weights,
    load_checkpoint,
    train_work,
)
from tests.models.fitting import (
    fit_autoencoder,
    fit_classifier,
    seed_article,
    sequence_settings,
    single_thread,
)
from tests.models.test_autoencoder import F, T, periodic_windows
from tests.models.test_classifier import separable
from tests.training.readers import test_arrow


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the tiny classifier runs (see :func:`tests.models.fitting.single_thread`)."""
    with single_thread():
        yield


def small_train_cfg(**overrides: object) -> TrainConfig:
    # Xavier: the autoencoder's own init (``train.init: auto`` in the train stage), as these runs always had.
    cfg = TrainConfig(epochs=6, batch_size=16, learning_rate=1e-2, patience=0, seed=5, device="cpu", init="xavier")
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
    first = fit_autoencoder(train_x, val_x, model_cfg, small_train_cfg())
    losses = [h["val_loss"] for h in first.history]
    assert len(losses) == 6
    assert min(losses) < losses[0] * 0.9
    assert first.best_val_loss == pytest.approx(min(losses))
    again = fit_autoencoder(train_x, val_x, model_cfg, small_train_cfg())
    for name, tensor in first.state_dict.items():
        torch.testing.assert_close(tensor, again.state_dict[name])


@pytest.mark.parametrize(("ema_decay", "members"), [(None, 1), (0.9, 1), (0.9, 2)])
def test_resume_repeats_the_uninterrupted_run(tmp_path: Path, ema_decay: float | None, members: int) -> None:
    train_x, val_x = data()
    model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8, members=members)
    full = fit_autoencoder(train_x, val_x, model_cfg, small_train_cfg(ema_decay=ema_decay),
                           checkpoint_dir=tmp_path / "a")
    # stop after 3 epochs, then resume to 6
    fit_autoencoder(train_x, val_x, model_cfg, small_train_cfg(epochs=3, ema_decay=ema_decay),
                    checkpoint_dir=tmp_path / "b")
    meta = json.loads((tmp_path / "b" / CHECKPOINT_META).read_text())
    assert meta["epoch"] == 2 and meta["model"] == model_cfg.to_dict() and meta["train"]["epochs"] == 3
    assert (tmp_path / "b" / CHECKPOINT_EMA).is_file() == (ema_decay is not None)
    resumed = fit_autoencoder(
        train_x, val_x, model_cfg, small_train_cfg(ema_decay=ema_decay), checkpoint_dir=tmp_path / "b", resume=True
    )
    assert [h["epoch"] for h in resumed.history] == list(range(6))
    assert [h["val_loss"] for h in resumed.history] == pytest.approx([h["val_loss"] for h in full.history])
    for name, tensor in full.state_dict.items():
        torch.testing.assert_close(tensor, resumed.state_dict[name])


def _val_loss(state: dict[str, torch.Tensor], train_x: np.ndarray, val_x: np.ndarray,
              model_cfg: LSTMAutoencoderConfig) -> float:
    task = AutoencoderTask(train_x, lambda epoch: np.arange(len(train_x)), val_x, model_cfg)
    model = task.build_model()
    model.load_state_dict(state)
    total, weight = _val_sums(model, task, 64, torch.device("cpu"), False)
    return total / weight


def test_the_weight_average_is_what_validation_judges_and_what_training_returns(tmp_path: Path) -> None:
    train_x, val_x = data()
    model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    result = fit_autoencoder(train_x, val_x, model_cfg, small_train_cfg(epochs=4, ema_decay=0.9),
                             checkpoint_dir=tmp_path)
    # The returned weights are the ones whose validation loss was the best recorded.
    assert _val_loss(result.state_dict, train_x, val_x, model_cfg) == pytest.approx(result.best_val_loss, rel=1e-5)
    meta = json.loads((tmp_path / CHECKPOINT_META).read_text())
    averaged = load_file(str(tmp_path / CHECKPOINT_EMA))
    last = load_file(str(tmp_path / CHECKPOINT_WEIGHTS))
    # The last epoch's recorded loss is the average's, not the last step's weights'.
    recorded = meta["history"][-1]["val_loss"]
    assert _val_loss(averaged, train_x, val_x, model_cfg) == pytest.approx(recorded, rel=1e-5)
    assert _val_loss(last, train_x, val_x, model_cfg) != pytest.approx(recorded, rel=1e-3)
    assert meta["ema_steps"] == sum(h["batches"] for h in meta["history"])  # one update per optimiser step
    # Without the setting the same seed trains the same steps but returns other weights; a run
    # without it in the same directory removes the average, and resuming it with the setting is refused.
    plain = fit_autoencoder(train_x, val_x, model_cfg, small_train_cfg(epochs=2), checkpoint_dir=tmp_path)
    assert any(not torch.equal(plain.state_dict[k], v) for k, v in result.state_dict.items())
    assert not (tmp_path / CHECKPOINT_EMA).exists()
    with pytest.raises(ModelError, match="without train.ema_decay"):
        fit_autoencoder(train_x, val_x, model_cfg, small_train_cfg(epochs=4, ema_decay=0.9),
                        checkpoint_dir=tmp_path, resume=True)


def test_weight_average_steps_follow_the_warm_up_then_the_decay() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(10.0)
    average.update(model)  # step 0: decay min(0.5, 1/10) = 0.1 -> 0.1 * 0 + 0.9 * 10
    assert float(average.model.weight) == pytest.approx(9.0)
    for _ in range(20):
        average.update(model)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average.update(model)  # past the warm-up: decay 0.5, from an average that had reached 10
    assert float(average.model.weight) == pytest.approx(5.0, abs=1e-3)
    assert not average.model.weight.requires_grad and average.steps == 22


def test_checkpoint_of_another_model_or_torn_checkpoint_is_refused(tmp_path: Path) -> None:
    train_x, val_x = data()
    model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    fit_autoencoder(train_x, val_x, model_cfg, small_train_cfg(epochs=2), checkpoint_dir=tmp_path)
    bigger = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=16)
    with pytest.raises(ModelError, match="checkpoint .* is of model"):
        fit_autoencoder(train_x, val_x, bigger, small_train_cfg(), checkpoint_dir=tmp_path, resume=True)
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
    result = fit_autoencoder(train_x, val_x, model_cfg, small_train_cfg(epochs=20, patience=2, learning_rate=1e-12))
    assert len(result.history) == 3
    assert result.best_epoch == 0


def test_train_work_runs_alone_and_returns_the_normaliser(tmp_path: Path) -> None:
    """One rank of a run in this process: its shard of a pinned snapshot, the normaliser in the extras."""
    path = str(tmp_path / "sequences")
    version = write_windows(path, test_arrow.windows(test_arrow.N), np.arange(test_arrow.N) * test_arrow.HOUR, 60.0,
                            max_rows_per_group=5)
    snapshot = Snapshot(path, version)
    lo, hi = time_range(snapshot) or (0.0, 0.0)
    train, val = plan_shards(snapshot, [Selection(lo, hi, 0.25, "train"), Selection(lo, hi, 0.25, "validation")], 5)
    cfg = TrainConfig(epochs=2, batch_size=8, learning_rate=1e-2, patience=0, seed=5, device="cpu", init="xavier")
    model_cfg = LSTMAutoencoderConfig(n_features=test_arrow.F, window_steps=test_arrow.T, hidden_size=4)
    result = train_work(AutoencoderWork(train, val, model_cfg), cfg, comm=Collective(),
                        checkpoint_dir=tmp_path / "ckpt")
    assert [h["batches"] for h in result.history] == [train.batches_per_epoch(1, 8)] * 2
    assert Normaliser.from_dict(result.extras["normaliser"]) is not None
    assert result.history[0]["samples"] == train.total  # one rank: every training window once
    assert (tmp_path / "ckpt" / "checkpoint.json").is_file()
    # the extras travel in every checkpoint record
    assert json.loads((tmp_path / "ckpt" / CHECKPOINT_META).read_text())["normaliser"] == result.extras["normaliser"]


# ----------------------------------------------------------------------------- the optimiser recipe


def test_seed_article_settings_and_optimizer() -> None:
    preset = seed_article()
    assert (preset.seed, preset.learning_rate, preset.clip_value, preset.init) == (123, 0.005, 0.5, "xavier")
    model = LSTMClassifier(ClassifierConfig(n_features=F, n_classes=2, hidden_size=4))
    optimiser = build_optimizer(model, preset)
    assert isinstance(optimiser, torch.optim.SGD)
    group = optimiser.param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.9 and group["lr"] == 0.005
    assert isinstance(build_optimizer(model, TrainConfig()), torch.optim.Adam)


def test_xavier_init_zeroes_biases() -> None:
    torch.manual_seed(0)
    model = LSTMClassifier(ClassifierConfig(n_features=F, n_classes=2, hidden_size=4))
    init_weights(model, "xavier")
    biases = [p for n, p in model.named_parameters() if "bias" in n]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)


def _max_grad_seen_by_step(monkeypatch: pytest.MonkeyPatch, settings: TrainConfig) -> float:
    """Train one epoch on large inputs, recording the largest gradient element the SGD step sees."""
    seen: list[float] = []
    original = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(max(float(p.grad.abs().max()) for g in self.param_groups for p in g["params"]
                        if p.grad is not None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    x, y = separable(64, 2)
    fit_classifier(x * 50, y, x[:8] * 50, y[:8], ClassifierConfig(n_features=F, n_classes=2, hidden_size=4),
                   settings)
    monkeypatch.undo()
    assert seen
    return max(seen)


@pytest.mark.usefixtures("one_thread")
def test_seed_article_clips_gradients_element_wise(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = seed_article(epochs=1, batch_size=8, device="cpu")
    assert _max_grad_seen_by_step(monkeypatch, seed_article(epochs=1, batch_size=8, device="cpu",
                                                            clip_value=None)) > 0.5
    assert _max_grad_seen_by_step(monkeypatch, settings) == pytest.approx(0.5)


@pytest.mark.usefixtures("one_thread")
def test_bf16_on_cpu_warns_and_trains_in_float32(caplog: pytest.LogCaptureFixture) -> None:
    x, y = separable(16, 6)
    cfg = ClassifierConfig(n_features=F, n_classes=2, hidden_size=4)
    with caplog.at_level(logging.WARNING, logger="loganomaly.training.loop"):
        result = fit_classifier(x, y, x, y, cfg, sequence_settings(epochs=1, device="cpu", bf16=True))
    assert "CUDA only" in caplog.text
    assert all(v.dtype == torch.float32 for v in result.state_dict.values())
