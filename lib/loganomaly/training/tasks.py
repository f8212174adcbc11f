"""Training the LSTM autoencoder on the shared rank-aware loop (:mod:`loganomaly.training.loop`).

:func:`train_on_snapshot` is what every backend's rank runs: read this rank's shard of the pinned
``sequences`` snapshot, fit the normaliser across ranks, train. :func:`train_autoencoder` trains on
arrays already in memory. Both hand an :class:`AutoencoderTask` (windows are their own targets,
loss the per-window mean squared error) to :func:`loganomaly.training.loop.fit`, which DeepLog and the
classifier share. The loop's names (checkpoints, collectives, sharding) are re-exported here.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loganomaly.config import TrainConfig
from loganomaly.errors import ConfigError, ModelError, StageInputError
from loganomaly.models.autoencoder import LSTMAutoencoder, LSTMAutoencoderConfig
from loganomaly.models.normaliser import STD_FLOOR, Normaliser
from loganomaly.models.sequence import ClassifierConfig, ClassifierTask
from loganomaly.training.loop import (
    CHECKPOINT_BEST,
    CHECKPOINT_FORMAT,
    CHECKPOINT_META,
    CHECKPOINT_OPTIMIZER,
    CHECKPOINT_WEIGHTS,
    MIN_IMPROVEMENT,
    Collective,
    FitTask,
    TensorTask,
    TorchCollective,
    TrainResult,
    default_collective,
    epoch_seed,
    fit,
    load_checkpoint,
    rank_info,
    save_checkpoint,
    seed_everything,
    shard_indices,
)
from loganomaly.training.readers.arrow import Shard, ShardPlan, ShardReader

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_BEST",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_META",
    "CHECKPOINT_OPTIMIZER",
    "CHECKPOINT_WEIGHTS",
    "MIN_IMPROVEMENT",
    "AutoencoderTask",
    "Collective",
    "SnapshotTrainResult",
    "TorchCollective",
    "TrainResult",
    "calibrate_probability_threshold",
    "calibrate_threshold",
    "default_collective",
    "fit_normaliser",
    "load_checkpoint",
    "rank_info",
    "save_checkpoint",
    "seed_everything",
    "shard_indices",
    "train_autoencoder",
    "train_on_snapshot",
    "window_labels",
]


class AutoencoderTask(TensorTask):
    """The autoencoder's part of the loop: normalised windows ``[N, T, F]`` reconstruct themselves."""

    label = "autoencoder"

    def __init__(self, train_x: np.ndarray, order: Callable[[int], np.ndarray], val_x: np.ndarray,
                 model_cfg: LSTMAutoencoderConfig) -> None:
        super().__init__(_float_tensor(train_x), order, _float_tensor(val_x))
        self.model_cfg = model_cfg

    def model_config(self) -> dict[str, Any]:
        return self.model_cfg.to_dict()

    def build_model(self) -> nn.Module:
        return LSTMAutoencoder(self.model_cfg)

    def loss_sums(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_window = ((output - target) ** 2).mean(dim=(1, 2))
        return per_window.sum(dtype=torch.float64), torch.tensor(float(len(target)), device=output.device)


def _float_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def train_autoencoder(
    train_x: np.ndarray,
    val_x: np.ndarray,
    model_cfg: LSTMAutoencoderConfig,
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train with Adam and early stopping on validation loss; return the best weights.

    Runs as one DDP process when ``WORLD_SIZE > 1`` and ``torch.distributed`` is initialised by
    the caller (every rank passes the same full arrays and takes its own shard); otherwise as a
    single process. Batches are shuffled with a generator seeded from ``cfg.seed`` and the epoch,
    and torch is reseeded from ``cfg.seed + rank`` and the epoch, so a resumed run repeats exactly
    what the uninterrupted run would have done. Data in a Delta table goes through
    :func:`train_on_snapshot` instead, which reads only each rank's shard.

    Args:
        train_x: normalised training windows ``[N, T, F]``.
        val_x: normalised validation windows (each rank evaluates its share; the loss is the mean
            over all windows).
        model_cfg: model size.
        cfg: optimiser, epochs, patience (``<= 0`` disables early stopping), seed, device, bf16.
        checkpoint_dir: where rank 0 writes a checkpoint after every epoch.
        resume: continue from the checkpoint in ``checkpoint_dir`` at its next epoch (with its
            history, best weights and optimiser state). Without a checkpoint there, training starts
            fresh (logged), so a restarted job needs no special case.
        init_state: start from these weights (continue training an existing model on new data).

    Raises:
        ModelError: empty or mis-shaped data, weights that do not fit ``model_cfg``, a checkpoint
            of another model, or ``resume`` without ``checkpoint_dir``.
    """
    comm = default_collective()
    _check_data(train_x, val_x, model_cfg)
    n, rank, world = len(train_x), comm.rank, comm.world

    def order(epoch: int) -> np.ndarray:
        return shard_indices(n, rank, world, epoch_seed(cfg.seed, epoch))

    task = AutoencoderTask(train_x, order, val_x[rank::world], model_cfg)
    return fit(task, cfg, comm, checkpoint_dir, resume, init_state)


@dataclass
class SnapshotTrainResult(TrainResult):
    """:class:`TrainResult` plus the normaliser the ranks fitted on the training shards together."""

    normaliser: Normaliser | None = None
    train_windows: int = 0
    validation_windows: int = 0


def train_on_snapshot(
    train_plan: ShardPlan,
    val_plan: ShardPlan,
    model_cfg: LSTMAutoencoderConfig | ClassifierConfig,
    cfg: TrainConfig,
    comm: Collective | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
    normaliser: Normaliser | None = None,
    balanced: bool = True,
) -> SnapshotTrainResult:
    """The rank-aware entry point of every backend: read this rank's shard of a pinned snapshot, train.

    Every rank calls it with the same plans (see :mod:`loganomaly.training.readers.arrow`). The rank reads only
    its rows, the ranks fit the normaliser together (exact mean and standard deviation of all
    training windows, combined from per-rank moments), then train on :func:`loganomaly.training.loop.fit`:
    equal batch counts on every rank, rank 0 checkpointing every epoch.

    The model config picks the model: the autoencoder reconstructs its windows; the supervised
    classifier learns each window's class, anomalous (1) when it holds an event labelled abnormal
    (``sequences.n_abnormal > 0``). The ranks count the classes of all training windows together,
    so every rank weighs the loss alike (``balanced``: each class as much as the other, since
    attacks are rare).

    Args:
        train_plan: training windows dealt to ranks (padded to equal lengths).
        val_plan: validation windows (split without padding; a rank may get none).
        model_cfg: model kind and size; ``n_features`` (and the autoencoder's ``window_steps``)
            must match the data.
        cfg: the training settings (``seed`` also seeds the per-epoch shuffles; ``reader`` picks
            :mod:`loganomaly.training.readers.arrow` or :mod:`loganomaly.training.readers.petastorm`, same plans and guarantees).
        comm: the process group; by default from the environment (DDP when initialised).
        checkpoint_dir, resume, init_state: as in :func:`train_autoencoder`.
        normaliser: use this one instead of fitting one (continuing an existing model's training:
            its weights expect inputs normalised as before).
        balanced: classifier only: weigh both classes alike in the loss.

    Raises:
        ConfigError: ``cfg.reader`` is unknown or cannot run in this environment.
        StageInputError: fewer training windows than ranks, no validation windows, or (Petastorm)
            a rank whose row groups hold no training window; for the classifier, no labels or a
            single class among all training windows.
        ModelError: as in :func:`train_autoencoder`.
    """
    comm = comm or default_collective()
    steps = None if isinstance(model_cfg, ClassifierConfig) else model_cfg.window_steps
    data = _load_snapshot(train_plan, val_plan, cfg, comm, normaliser, model_cfg.n_features, steps)
    task: FitTask
    if isinstance(model_cfg, ClassifierConfig):
        task = _classifier_task(data, model_cfg, comm, balanced)
    else:
        task = AutoencoderTask(data.train_x, data.order, data.val_x, model_cfg)
    result = fit(task, cfg, comm, checkpoint_dir, resume, init_state, data.meta)
    return SnapshotTrainResult(result.state_dict, result.history, result.best_epoch, result.best_val_loss,
                               data.normaliser, train_plan.total, val_plan.total)


def _classifier_task(data: _SnapshotData, model_cfg: ClassifierConfig, comm: Collective, balanced: bool
                     ) -> ClassifierTask:
    y, val_y = window_labels(data.shard), window_labels(data.val_shard)
    counts = comm.sum(torch.from_numpy(np.bincount(y, minlength=2)[:2].astype(np.int64)))
    if int(counts.min()) == 0:
        raise StageInputError(f"the classifier needs normal and anomalous training windows, got class counts "
                              f"{counts.tolist()}; label more data or use model.kind=autoencoder")
    weights = [float(counts.sum()) / (2.0 * float(c)) for c in counts] if balanced else None
    if comm.rank == 0:
        log.info("classifier: %d normal and %d anomalous training windows; class weights %s",
                 int(counts[0]), int(counts[1]), weights)
    return ClassifierTask(data.train_x, y, data.order, data.val_x, val_y, model_cfg, weights)


def window_labels(shard: Shard) -> np.ndarray:
    """Class per window: 1 when it holds an abnormal-labelled event, else 0.

    Raises:
        StageInputError: the shard carries no labels.
    """
    if shard.abnormal is None:
        raise StageInputError("sequences has no n_abnormal column (or train.reader=petastorm, which does not read "
                              "it): the classifier needs labelled windows from featurize with labels")
    return (shard.abnormal > 0).astype(np.int64)


@dataclass
class _SnapshotData:
    shard: Shard
    val_shard: Shard
    order: Callable[[int], np.ndarray]
    normaliser: Normaliser
    train_x: np.ndarray
    val_x: np.ndarray
    meta: dict[str, Any]


def _load_snapshot(train_plan: ShardPlan, val_plan: ShardPlan, cfg: TrainConfig, comm: Collective,
                   normaliser: Normaliser | None, n_features: int, window_steps: int | None) -> _SnapshotData:
    """This rank's windows, normalised with a given normaliser or one the ranks fit together."""
    if val_plan.total == 0:
        raise StageInputError("no validation windows in the snapshot's training period")
    started = time.perf_counter()
    shard, val_shard, order = _read_shards(train_plan, val_plan, cfg.reader, comm)
    if shard.x.shape[2] != n_features or (window_steps is not None and shard.x.shape[1] != window_steps):
        raise ModelError(f"windows have shape {shard.x.shape[1:]}, the model expects "
                         f"({window_steps or 'any'}, {n_features})")
    if normaliser is None:
        normaliser = fit_normaliser(shard.x, comm)
    elif len(normaliser.mean) != n_features:
        raise ModelError(f"the normaliser has {len(normaliser.mean)} features, the windows {n_features}")
    train_x = normaliser.transform(shard.x)
    val_x = normaliser.transform(val_shard.x) if len(val_shard) else np.zeros((0, *shard.x.shape[1:]), np.float32)
    if comm.rank == 0:
        log.info("rank 0/%d: %d training and %d validation windows of %d and %d read in %.2fs",
                 comm.world, len(shard), len(val_shard), train_plan.total, val_plan.total,
                 time.perf_counter() - started)
    meta = {
        "normaliser": normaliser.to_dict(),
        "snapshot": {"path": train_plan.snapshot.path, "version": train_plan.snapshot.version},
    }
    return _SnapshotData(shard, val_shard, order, normaliser, train_x, val_x, meta)


def _read_shards(train_plan: ShardPlan, val_plan: ShardPlan, reader: str, comm: Collective
                 ) -> tuple[Shard, Shard, Callable[[int], np.ndarray]]:
    """This rank's training and validation windows and its per-epoch order, with ``train.reader``.

    Raises:
        ConfigError: an unknown reader, or ``petastorm`` where Petastorm cannot run.
    """
    if reader == "arrow":
        train_reader = ShardReader(train_plan, comm.rank, comm.world)
        return (train_reader.load(), ShardReader(val_plan, comm.rank, comm.world, equal=False).load(),
                train_reader.epoch_indices)
    if reader == "petastorm":
        # Imported here: Petastorm lives only in the compatibility environment (make compat).
        from loganomaly.training.readers.petastorm import PetastormShardReader

        petastorm_reader = PetastormShardReader(train_plan, comm.rank, comm.world)
        shard = petastorm_reader.load(comm)
        val_shard = PetastormShardReader(val_plan, comm.rank, comm.world, equal=False).load(comm)
        return shard, val_shard, petastorm_reader.epoch_indices
    raise ConfigError(f"unknown train.reader {reader!r}; choose one of: arrow, petastorm")


def fit_normaliser(x: np.ndarray, comm: Collective) -> Normaliser:
    """Per-feature mean and std of all ranks' windows, as :meth:`Normaliser.fit` on their union would give.

    Each rank sends (count, mean, sum of squared deviations) per feature; every rank combines them
    in rank order (Chan et al.), so all ranks hold the identical normaliser without any rank
    seeing another's windows.

    Raises:
        ModelError: a rank's windows hold NaN or infinity (every rank raises together).
    """
    f = x.shape[2]
    flat = x.reshape(-1, f).astype(np.float64)
    bad = 0.0 if np.isfinite(flat).all() else 1.0
    n = float(len(flat))
    mean = flat.mean(axis=0) if n else np.zeros(f)
    m2 = ((flat - mean) ** 2).sum(axis=0) if n else np.zeros(f)
    local = torch.from_numpy(np.concatenate([[n, bad], mean, m2]))
    parts = comm.gather(local).numpy()
    if parts[:, 1].any():
        raise ModelError("cannot fit a normaliser: the windows contain NaN or infinite values")
    total, mu, acc = 0.0, np.zeros(f), np.zeros(f)
    for row in parts:
        nb, mb, m2b = row[0], row[2 : 2 + f], row[2 + f :]
        if nb == 0:
            continue
        delta = mb - mu
        combined = total + nb
        mu = mu + delta * nb / combined
        acc = acc + m2b + delta**2 * total * nb / combined
        total = combined
    if total == 0:
        raise ModelError("cannot fit a normaliser on zero windows")
    std = np.sqrt(acc / total)
    floored = int((std < STD_FLOOR).sum())
    if floored and comm.rank == 0:
        log.info("normaliser: %d of %d features (near) constant in training; std floored at %g", floored, f, STD_FLOOR)
    return Normaliser(mu.tolist(), np.maximum(std, STD_FLOOR).tolist())


def _check_data(train_x: np.ndarray, val_x: np.ndarray, model_cfg: LSTMAutoencoderConfig) -> None:
    for name, x in (("training", train_x), ("validation", val_x)):
        if x.ndim != 3 or x.shape[2] != model_cfg.n_features:
            raise ModelError(f"{name} windows have shape {x.shape}; expected [N, T, {model_cfg.n_features}]")
        if len(x) == 0:
            raise ModelError(f"no {name} windows to train on")


#: Robust floor of the threshold: median + this many robust standard deviations (1.4826 * MAD).
THRESHOLD_MAD_FLOOR = 3.0
#: The log-normal tail may extrapolate at most this factor beyond the largest validation score.
THRESHOLD_TAIL_CAP = 2.0


def calibrate_threshold(val_scores: np.ndarray, quantile: float) -> float:
    """Threshold for a false-alarm rate of about ``1 - quantile`` on normal data like validation.

    The larger of three estimates of the ``quantile`` of normal scores:

    * the empirical quantile of the validation scores;
    * the same quantile of a log-normal fitted to them. Reconstruction errors are positive and
      right-skewed; with a few hundred validation windows the empirical 0.995 quantile is just the
      largest score or two and badly underestimates the tail that thousands of scored windows
      will sample, so the fitted tail extrapolates where the sample runs out;
    * ``median + 3 * 1.4826 * MAD``, a floor for tiny validation sets where both are unstable.

    The log-normal estimate is capped at :data:`THRESHOLD_TAIL_CAP` times the largest validation
    score: when validation scores are not one skewed hump (windows of rare but normal events
    score orders of magnitude above quiet ones, as on BGL), the fitted spread explodes and the
    "tail" lands far beyond anything normal ever scored, which would silence the detector.

    Raises:
        ModelError: no scores, non-finite scores, or a quantile outside (0, 1).
    """
    scores = np.asarray(val_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ModelError("no validation scores to calibrate a threshold")
    if not np.isfinite(scores).all():
        raise ModelError("validation scores contain NaN or infinity; the model did not train properly")
    if not 0.0 < quantile < 1.0:
        raise ModelError(f"threshold quantile must be in (0, 1), got {quantile}")
    median = float(np.median(scores))
    mad = float(np.median(np.abs(scores - median)))
    candidates = [float(np.quantile(scores, quantile)), median + THRESHOLD_MAD_FLOOR * 1.4826 * mad]
    positive = scores[scores > 0]
    if positive.size >= 2:
        logs = np.log(positive)
        z = statistics.NormalDist().inv_cdf(quantile)
        tail = float(np.exp(logs.mean() + z * logs.std(ddof=1)))
        candidates.append(min(tail, THRESHOLD_TAIL_CAP * float(scores.max())))
    return max(candidates)


def calibrate_probability_threshold(probability: np.ndarray, labels: np.ndarray) -> float:
    """The classifier's threshold: the best F1 on labelled validation windows, else 0.5.

    The windows with ``probability > threshold`` are flagged; the threshold lies halfway between
    the lowest flagged probability and the next one, so nearby scores fall on the side they fell
    on in validation. Without both classes in validation there is nothing to choose on, and 0.5
    (the decision the softmax was trained for) is kept.

    Raises:
        ModelError: no windows, mismatched lengths, or probabilities outside [0, 1].
    """
    p = np.asarray(probability, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if p.size == 0 or p.size != y.size:
        raise ModelError(f"need as many labels as probabilities (> 0), got {p.size} and {y.size}")
    if not ((p >= 0) & (p <= 1)).all():
        raise ModelError("probabilities must lie in [0, 1]")
    if y.all() or not y.any():
        return 0.5
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    # Flagging the top k windows (ties kept together: cut only where the probability changes).
    cuts = np.flatnonzero(np.r_[ps[1:] < ps[:-1], True])
    tp = np.cumsum(ys)[cuts]
    f1 = 2 * tp / (cuts + 1 + y.sum())
    best = int(cuts[int(np.argmax(f1))])
    below = ps[best + 1] if best + 1 < len(ps) else 0.0
    return float((ps[best] + below) / 2)
