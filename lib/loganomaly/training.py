"""One rank-aware training loop for the autoencoder.

Rank and world size come from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), as
TorchDistributor and torchrun set them, so the same function runs alone or as one of several
DDP processes. Each rank seeds from the base seed plus its rank, sees its own shard, and runs the
same number of batches per epoch (DDP hangs on uneven inputs). Rank 0 alone logs and writes
checkpoints; a checkpoint carries the model config and train config beside the weights, so a run
can resume, or a model be served, from it alone.

Checkpoint files in ``checkpoint_dir`` (rank 0 rewrites them after every epoch):

* ``checkpoint.safetensors``: weights after the last finished epoch;
* ``best.safetensors``: weights of the best validation epoch (what a server should load);
* ``optimizer.pt``: Adam state, so a resumed run takes the same steps an uninterrupted one would;
* ``checkpoint.json``: epoch, best epoch and loss, history, model config, train config. Written
  last, it is the commit record: every other file carries its epoch and must agree with it.

Nothing is ever unpickled: weights are safetensors, the optimizer state is read with
``torch.load(weights_only=True)``, the rest is JSON.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from loganomaly.bundle import atomic_write
from loganomaly.config import TrainConfig
from loganomaly.errors import ConfigError, ModelError, StageInputError
from loganomaly.model import LSTMAutoencoder, LSTMAutoencoderConfig, pick_device
from loganomaly.normalize import STD_FLOOR, Normaliser
from loganomaly.reader import Shard, ShardPlan, ShardReader

log = logging.getLogger(__name__)

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_BEST = "best.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_META = "checkpoint.json"
CHECKPOINT_FORMAT = 1

#: Smallest drop of the validation loss that counts as an improvement (float noise is not one).
MIN_IMPROVEMENT = 1e-7


@dataclass
class TrainResult:
    """What training produced.

    Attributes:
        state_dict: CPU weights of the best validation epoch.
        history: one record per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``seconds`` and
            ``batches`` (this rank's optimiser steps; equal on every rank).
        best_epoch: epoch (0-based) of ``state_dict``.
        best_val_loss: its validation loss (mean squared error, averaged over all ranks' windows).
    """

    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float


def rank_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the environment; a single process is (0, 1, 0)."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    except ValueError as exc:
        raise ModelError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise ModelError(f"invalid RANK={rank} for WORLD_SIZE={world}")
    return rank, world, local_rank


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shard_indices(n: int, rank: int, world: int, epoch_seed: int) -> np.ndarray:
    """This rank's row indices for one epoch: a seeded shuffle shared by all ranks, dealt round-robin.

    All ranks must use the same ``epoch_seed`` so the shards partition the data. Every rank gets
    ``ceil(n / world)`` rows (the shuffle is extended by repeating its first rows), so every rank
    runs the same number of batches: DDP blocks forever when one rank has a batch the others lack.
    """
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.random.default_rng(epoch_seed).permutation(n)
    per_rank = math.ceil(n / world)
    padded = np.resize(order, per_rank * world)
    return padded[rank::world]


def _epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch that does not collide across (seed, epoch) pairs."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    assert isinstance(inner, nn.Module)
    return inner


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in _unwrap(model).state_dict().items()}


def _val_sums(model: nn.Module, x: torch.Tensor, batch_size: int, autocast: bool) -> tuple[float, int]:
    """Sum of per-window MSE and window count, so ranks with unequal shards average exactly."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        for i in range(0, len(x), batch_size):
            batch = x[i : i + batch_size]
            total += ((model(batch).float() - batch) ** 2).mean(dim=(1, 2)).sum(dtype=torch.float64)
    return float(total), len(x)


def save_checkpoint(
    directory: Path,
    state: dict[str, torch.Tensor],
    best_state: dict[str, torch.Tensor],
    optimiser_state: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """Write one epoch's checkpoint; ``checkpoint.json`` goes last, as the commit record."""
    directory.mkdir(parents=True, exist_ok=True)
    tag = {"epoch": str(meta["epoch"])}
    atomic_write(directory / CHECKPOINT_WEIGHTS, lambda p: save_file(state, str(p), metadata=tag))
    atomic_write(directory / CHECKPOINT_BEST, lambda p: save_file(best_state, str(p), metadata=tag))
    atomic_write(
        directory / CHECKPOINT_OPTIMIZER,
        lambda p: torch.save({"epoch": int(meta["epoch"]), "optimizer": optimiser_state}, p),
    )
    atomic_write(directory / CHECKPOINT_META, lambda p: p.write_text(json.dumps(meta, indent=2)))


def _read_tagged_weights(path: Path, epoch: int) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            tagged = (f.metadata() or {}).get("epoch")
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types on a corrupt file
        raise ModelError(f"checkpoint file {path} cannot be read: {exc}") from None
    if tagged != str(epoch):
        raise ModelError(
            f"checkpoint file {path} is from epoch {tagged}, checkpoint.json from epoch {epoch} "
            "(a crash during a save?); delete the checkpoint directory or resume from a copy"
        )
    return state


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: (last weights, best weights, meta).

    ``meta["optimizer"]`` holds the optimiser state (read with ``weights_only=True``).

    Raises:
        ModelError: files are missing, unreadable, or from different epochs.
    """
    meta_path = directory / CHECKPOINT_META
    names = (CHECKPOINT_META, CHECKPOINT_WEIGHTS, CHECKPOINT_BEST, CHECKPOINT_OPTIMIZER)
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise ModelError(f"incomplete checkpoint in {directory}: missing {', '.join(missing)}")
    try:
        meta = json.loads(meta_path.read_text())
        epoch = int(meta["epoch"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{meta_path} is not a valid checkpoint record: {exc!r}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{meta_path}: unsupported checkpoint format {meta.get('format')!r}")
    state = _read_tagged_weights(directory / CHECKPOINT_WEIGHTS, epoch)
    best = _read_tagged_weights(directory / CHECKPOINT_BEST, epoch)
    try:
        optim = torch.load(directory / CHECKPOINT_OPTIMIZER, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        raise ModelError(f"{directory / CHECKPOINT_OPTIMIZER} cannot be read safely: {exc}") from None
    if not isinstance(optim, dict) or optim.get("epoch") != epoch:
        raise ModelError(f"{directory / CHECKPOINT_OPTIMIZER} does not belong to epoch {epoch} of {meta_path}")
    meta["optimizer"] = optim["optimizer"]
    return state, best, meta


class Collective:
    """What the training loop needs from a process group; this base class is a single process.

    The loop is written once against this interface so the local run, TorchDistributor (DDP) and
    Horovod share every line of it; a backend only says how to reduce, gather, broadcast and
    wrap the model and optimiser.
    """

    name = "single"

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, requested: str) -> torch.device:
        """The device of this rank: ``cuda:<local rank>`` on a GPU node, else the CPU."""
        device = pick_device(requested)
        if device.type == "cuda" and self.distributed:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a new tensor or ``t`` itself)."""
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """``[world, *t.shape]``: every rank's ``t``, in rank order."""
        return t.unsqueeze(0)

    def broadcast_bytes(self, data: bytes) -> bytes:
        """Rank 0's ``data`` on every rank."""
        return data

    def wrap(self, model: nn.Module, optimiser: torch.optim.Optimizer, device: torch.device
             ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Make ranks start identical and average gradients; called after any resume loading."""
        return model, optimiser


class TorchCollective(Collective):
    """``torch.distributed`` (gloo on CPU, nccl on GPU) with DDP; the group must be initialised."""

    name = "torch"

    def __init__(self) -> None:
        _, _, local_rank = rank_info()
        super().__init__(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank)

    def _device_of(self, t: torch.Tensor) -> torch.device:
        # nccl reduces CUDA tensors only; gloo CPU ones.
        return torch.device("cuda", self.local_rank) if torch.distributed.get_backend() == "nccl" \
            else torch.device("cpu")

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        out = t.to(self._device_of(t)).clone()
        torch.distributed.all_reduce(out)
        return out.to(t.device)

    def max(self, t: torch.Tensor) -> torch.Tensor:
        out = t.to(self._device_of(t)).clone()
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MAX)
        return out.to(t.device)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        local = t.to(self._device_of(t)).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(parts, local)
        return torch.stack(parts).to(t.device)

    def broadcast_bytes(self, data: bytes) -> bytes:
        device = self._device_of(torch.empty(0))
        size = torch.tensor([len(data) if self.rank == 0 else 0], dtype=torch.int64, device=device)
        torch.distributed.broadcast(size, src=0)
        if int(size) == 0:
            return b""
        buf = torch.zeros(int(size), dtype=torch.uint8, device=device)
        if self.rank == 0:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        torch.distributed.broadcast(buf, src=0)
        return bytes(buf.cpu().numpy().tobytes())

    def wrap(self, model: nn.Module, optimiser: torch.optim.Optimizer, device: torch.device
             ) -> tuple[nn.Module, torch.optim.Optimizer]:
        # DDP broadcasts rank 0's weights here, so ranks start identical despite per-rank seeds.
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return ddp, optimiser


def default_collective() -> Collective:
    """The collective the environment implies: DDP when a process group is up, else one process."""
    rank, world, local_rank = rank_info()
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world > 1 and initialised:
        # The process group is the authority once it exists; the environment only seeded it.
        return TorchCollective()
    if world > 1 and rank == 0:
        log.warning("WORLD_SIZE=%d but torch.distributed is not initialised; training alone", world)
    return Collective(rank, 1, local_rank)


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{origin} does not fit the model config: {exc}") from None


def _check_same_on_all_ranks(value: int, what: str, comm: Collective) -> None:
    """Fail fast instead of hanging when ranks disagree (e.g. one rank cannot see the checkpoint)."""
    t = comm.max(torch.tensor([value, -value], dtype=torch.int64))
    if int(t[0]) != value or int(-t[1]) != value:
        raise ModelError(f"ranks disagree on {what} (this rank: {value}); is checkpoint_dir shared by all ranks?")


#: Without tqdm, rank 0 logs the running loss at most this often within an epoch.
PROGRESS_LOG_SECONDS = 10.0


class _Progress:
    """Per-batch progress on rank 0: a tqdm bar with the running loss when tqdm is installed, else
    a log line every :data:`PROGRESS_LOG_SECONDS`. The loss is read (a GPU sync) only when shown."""

    def __init__(self, epoch: int, total: int, enabled: bool) -> None:
        self.epoch, self.total, self.enabled = epoch, total, enabled
        self.every = max(1, total // 20)
        self.last_log = time.perf_counter()
        self.bar: Any = None
        if enabled:
            try:
                from tqdm.auto import tqdm  # type: ignore[import-untyped]
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, desc=f"epoch {epoch}", leave=False, unit="batch")

    def step(self, done: int, running_loss: Callable[[], float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if done % self.every == 0 or done == self.total:
                self.bar.set_postfix(loss=f"{running_loss():.5f}")
        elif time.perf_counter() - self.last_log >= PROGRESS_LOG_SECONDS:
            self.last_log = time.perf_counter()
            log.info("epoch %d: batch %d/%d, running train_loss %.5f", self.epoch, done, self.total, running_loss())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
        return shard_indices(n, rank, world, _epoch_seed(cfg.seed, epoch))

    return _fit(train_x, order, val_x[rank::world], model_cfg, cfg, comm, checkpoint_dir, resume, init_state)


@dataclass
class SnapshotTrainResult(TrainResult):
    """:class:`TrainResult` plus the normaliser the ranks fitted on the training shards together."""

    normaliser: Normaliser | None = None
    train_windows: int = 0
    validation_windows: int = 0


def train_on_snapshot(
    train_plan: ShardPlan,
    val_plan: ShardPlan,
    model_cfg: LSTMAutoencoderConfig,
    cfg: TrainConfig,
    comm: Collective | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
) -> SnapshotTrainResult:
    """The rank-aware entry point of every backend: read this rank's shard of a pinned snapshot, train.

    Every rank calls it with the same plans (see :mod:`loganomaly.reader`). The rank reads only
    its rows, the ranks fit the normaliser together (exact mean and standard deviation of all
    training windows, combined from per-rank moments), then train with :func:`train_autoencoder`'s
    loop: equal batch counts on every rank, rank 0 checkpointing every epoch.

    Args:
        train_plan: training windows dealt to ranks (padded to equal lengths).
        val_plan: validation windows (split without padding; a rank may get none).
        model_cfg: model size; ``n_features``/``window_steps`` must match the data.
        cfg: the training settings (``seed`` also seeds the per-epoch shuffles; ``reader`` picks
            :mod:`loganomaly.reader` or :mod:`loganomaly.petastorm_reader`, same plans and guarantees).
        comm: the process group; by default from the environment (DDP when initialised).
        checkpoint_dir, resume, init_state: as in :func:`train_autoencoder`.

    Raises:
        ConfigError: ``cfg.reader`` is unknown or cannot run in this environment.
        StageInputError: fewer training windows than ranks, no validation windows, or (Petastorm)
            a rank whose row groups hold no training window.
        ModelError: as in :func:`train_autoencoder`.
    """
    comm = comm or default_collective()
    if val_plan.total == 0:
        raise StageInputError("no validation windows in the snapshot's training period")
    started = time.perf_counter()
    shard, val_shard, order = _read_shards(train_plan, val_plan, cfg.reader, comm)
    normaliser = fit_normaliser(shard.x, comm)
    train_x = normaliser.transform(shard.x)
    val_x = normaliser.transform(val_shard.x) if len(val_shard) else np.zeros((0, *shard.x.shape[1:]), np.float32)
    if shard.x.shape[1:] != (model_cfg.window_steps, model_cfg.n_features):
        raise ModelError(f"windows have shape {shard.x.shape[1:]}, the model expects "
                         f"({model_cfg.window_steps}, {model_cfg.n_features})")
    if comm.rank == 0:
        log.info("rank 0/%d: %d training and %d validation windows of %d and %d read in %.2fs",
                 comm.world, len(shard), len(val_shard), train_plan.total, val_plan.total,
                 time.perf_counter() - started)
    meta = {
        "normaliser": normaliser.to_dict(),
        "snapshot": {"path": train_plan.snapshot.path, "version": train_plan.snapshot.version},
    }
    result = _fit(train_x, order, val_x, model_cfg, cfg, comm, checkpoint_dir, resume,
                  init_state, meta)
    return SnapshotTrainResult(result.state_dict, result.history, result.best_epoch, result.best_val_loss,
                               normaliser, train_plan.total, val_plan.total)


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
        from loganomaly.petastorm_reader import PetastormShardReader

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


def _mean(total: torch.Tensor, count: int) -> float:
    return float(total) / max(count, 1)


def _fit(
    train_rows: np.ndarray,
    order: Callable[[int], np.ndarray],
    val_rows: np.ndarray,
    model_cfg: LSTMAutoencoderConfig,
    cfg: TrainConfig,
    comm: Collective,
    checkpoint_dir: Path | None,
    resume: bool,
    init_state: dict[str, torch.Tensor] | None,
    extra_meta: dict[str, Any] | None = None,
) -> TrainResult:
    """The loop shared by every entry point and backend.

    ``train_rows`` are the rows this rank may index, ``order(epoch)`` this rank's positions into
    them for one epoch (the same length on every rank), ``val_rows`` this rank's validation share.
    """
    rank, world = comm.rank, comm.world
    if resume and checkpoint_dir is None:
        raise ModelError("resume=True needs a checkpoint_dir to resume from")

    seed_everything(cfg.seed + rank)
    device = comm.device(cfg.device)
    autocast = cfg.bf16 and device.type == "cuda"
    if cfg.bf16 and not autocast and rank == 0:
        # CPU bf16 autocast of an LSTM fails in oneDNN on CPUs without bf16 instructions.
        log.warning("bf16 autocast is for CUDA only; training in float32 on %s", device)

    model: nn.Module = LSTMAutoencoder(model_cfg).to(device)
    if init_state is not None:
        _load_weights(model, init_state, "init_state")
    optimiser: torch.optim.Optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    start_epoch, best_val, best_epoch = 0, math.inf, -1
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    if resume and checkpoint_dir is not None:
        if (checkpoint_dir / CHECKPOINT_META).is_file():
            state, best_state, meta = load_checkpoint(checkpoint_dir)
            if meta.get("model") != model_cfg.to_dict():
                raise ModelError(
                    f"checkpoint in {checkpoint_dir} is of model {meta.get('model')}, not {model_cfg.to_dict()}"
                )
            _load_weights(model, state, f"checkpoint in {checkpoint_dir}")
            try:
                optimiser.load_state_dict(meta["optimizer"])
            except (ValueError, KeyError) as exc:
                raise ModelError(f"optimiser state in {checkpoint_dir} does not fit: {exc}") from None
            # The saved learning rate would silently win over a changed config otherwise.
            for group in optimiser.param_groups:
                group["lr"], group["weight_decay"] = cfg.learning_rate, cfg.weight_decay
            start_epoch = int(meta["epoch"]) + 1
            best_val, best_epoch, history = float(meta["best_val_loss"]), int(meta["best_epoch"]), meta["history"]
            if rank == 0:
                log.info("resuming from %s at epoch %d (best epoch %d, val_loss %.5f)",
                         checkpoint_dir, start_epoch, best_epoch, best_val)
        elif rank == 0:
            log.warning("resume requested but %s holds no checkpoint; starting from epoch 0", checkpoint_dir)
    if comm.distributed:
        _check_same_on_all_ranks(start_epoch, "the epoch to start from", comm)
        model, optimiser = comm.wrap(model, optimiser, device)

    train_t = torch.from_numpy(np.ascontiguousarray(train_rows, dtype=np.float32)).to(device)
    # Validation needs no equal shards: it runs on the unwrapped module, outside the collectives.
    val_t = torch.from_numpy(np.ascontiguousarray(val_rows, dtype=np.float32)).to(device)
    stale = 0 if best_epoch < 0 else start_epoch - 1 - best_epoch
    if 0 < cfg.patience <= stale and start_epoch < cfg.epochs:
        if rank == 0:
            log.info("checkpoint had already stopped early (no improvement for %d epochs)", stale)
        start_epoch = cfg.epochs

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        # Per-epoch reseed: dropout masks depend on (seed, rank, epoch) only, so resuming is exact.
        torch.manual_seed(_epoch_seed(cfg.seed + rank, epoch))
        model.train()
        idx = torch.from_numpy(order(epoch)).to(device)
        # Accumulate on the device: a float() per batch would synchronise a GPU every step.
        total = torch.zeros((), dtype=torch.float64, device=device)
        batches, seen = 0, 0
        n_batches = math.ceil(len(idx) / cfg.batch_size)
        progress = _Progress(epoch, n_batches, enabled=rank == 0)
        for start in range(0, len(idx), cfg.batch_size):
            batch = train_t[idx[start : start + cfg.batch_size]]
            optimiser.zero_grad()  # set_to_none is the default; horovod's optimiser takes no argument
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                recon = model(batch)
            loss = ((recon.float() - batch) ** 2).mean()
            loss.backward()
            optimiser.step()
            total += loss.detach().double() * len(batch)
            batches += 1
            seen += len(batch)
            progress.step(batches, functools.partial(_mean, total, seen))
        progress.close()
        train_loss = float(total) / max(len(idx), 1)
        val_sum, val_count = _val_sums(_unwrap(model), val_t, cfg.batch_size * 4, autocast)
        batches_min, batches_max = batches, batches
        if comm.distributed:
            # Every rank saw the same number of training rows, so the mean of means is the mean.
            sums = comm.sum(torch.tensor([train_loss, val_sum, val_count], dtype=torch.float64))
            train_loss, val_loss = float(sums[0]) / world, float(sums[1]) / max(float(sums[2]), 1.0)
            spread = comm.max(torch.tensor([batches, -batches], dtype=torch.int64))
            batches_max, batches_min = int(spread[0]), -int(spread[1])
        else:
            val_loss = val_sum / max(val_count, 1)
        if not math.isfinite(val_loss):
            raise ModelError(f"validation loss is {val_loss} at epoch {epoch}; lower train.learning_rate")
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "seconds": time.perf_counter() - started,
            "batches": batches,
            "batches_min": batches_min,
            "batches_max": batches_max,
            "samples": len(idx) * world,
        }
        history.append(record)
        improved = val_loss < best_val - MIN_IMPROVEMENT
        if improved:
            best_val, best_epoch, stale = val_loss, epoch, 0
            best_state = _cpu_state(model)
        else:
            stale += 1
        if rank == 0:
            log.info("epoch %d train_loss %.5f val_loss %.5f (%.1fs, %d batches on each of %d ranks)%s", epoch,
                     train_loss, val_loss, record["seconds"], batches, world, " best" if improved else "")
            _log_mlflow(record)
            if checkpoint_dir is not None:
                assert best_state is not None  # epoch 0 always improves on inf
                meta = {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch,
                    "best_epoch": best_epoch,
                    "best_val_loss": best_val,
                    "history": history,
                    "model": model_cfg.to_dict(),
                    "train": asdict(cfg),
                    "world_size": world,
                    **(extra_meta or {}),
                }
                save_checkpoint(checkpoint_dir, _cpu_state(model), best_state, optimiser.state_dict(), meta)
        if 0 < cfg.patience <= stale:
            if rank == 0:
                log.info("early stop at epoch %d: no improvement for %d epochs (best epoch %d, val_loss %.5f)",
                         epoch, stale, best_epoch, best_val)
            break
    if best_state is None:
        # No epoch ran (e.g. cfg.epochs already reached and no checkpoint): the weights as they are.
        best_state = _cpu_state(model)
    return TrainResult(best_state, history, best_epoch, best_val)


def _check_data(train_x: np.ndarray, val_x: np.ndarray, model_cfg: LSTMAutoencoderConfig) -> None:
    for name, x in (("training", train_x), ("validation", val_x)):
        if x.ndim != 3 or x.shape[2] != model_cfg.n_features:
            raise ModelError(f"{name} windows have shape {x.shape}; expected [N, T, {model_cfg.n_features}]")
        if len(x) == 0:
            raise ModelError(f"no {name} windows to train on")


def _log_mlflow(record: dict[str, float]) -> None:
    """Per-epoch metrics to MLflow when it is installed and a run is active; never fails training."""
    try:
        import mlflow  # type: ignore[import-not-found]
    except ImportError:
        return
    try:
        if mlflow.active_run() is not None:
            metrics = {k: float(v) for k, v in record.items() if k != "epoch"}
            mlflow.log_metrics(metrics, step=int(record["epoch"]))
    except Exception as exc:  # a tracking server outage must not kill a training run
        log.warning("mlflow logging failed: %s", exc)


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
