"""The rank-aware training loop every model shares: the autoencoder, DeepLog and the classifier.

Rank and world size come from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), as
TorchDistributor and torchrun set them, or from the :class:`Collective` a backend passes in, so
the same :func:`fit` runs alone or as one of several DDP or Horovod processes. Each rank seeds
from the base seed plus its rank, sees its own shard, and runs the same number of batches per
epoch (DDP hangs on uneven inputs). Rank 0 alone logs and writes checkpoints; a checkpoint
carries the model config and train config beside the weights, so a run can resume, or a model
be served, from it alone.

A model brings a :class:`FitTask`: how to build the network, how to cut a batch of inputs and
targets from its rows, and its loss as (sum, weight) so every mean is exact whatever the batch
and shard sizes. Everything else (optimiser, clipping, bf16 autocast, early stopping, resume,
checkpoints, progress, MLflow) is written once, here.

Checkpoint files in ``checkpoint_dir`` (rank 0 rewrites them after every epoch):

* ``checkpoint.safetensors``: weights after the last finished epoch;
* ``best.safetensors``: weights of the best validation epoch (what a server should load);
* ``optimizer.pt``: optimiser state, so a resumed run takes the same steps an uninterrupted one would;
* ``ema.safetensors``: with ``train.ema_decay``, the moving average of the weights after the last
  finished epoch (its step count is in ``checkpoint.json``);
* ``checkpoint.json``: epoch, best epoch and loss, history, model config, train config. Written
  last, it is the commit record: every other file carries its epoch and must agree with it.

Nothing is ever unpickled: weights are safetensors, the optimizer state is read with
``torch.load(weights_only=True)``, the rest is JSON.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import math
import random
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from loganomaly.config import Init, Optimizer, TrainConfig
from loganomaly.errors import ConfigError, ModelError
from loganomaly.models.kind import RankWork
from loganomaly.models.task import FitTask, TrainResult
from loganomaly.runtime.collective import Collective, default_collective, epoch_seed
from loganomaly.runtime.files import atomic_write
from loganomaly.training.tracking import log_epoch

log = logging.getLogger(__name__)

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_BEST = "best.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_META = "checkpoint.json"
CHECKPOINT_EMA = "ema.safetensors"
CHECKPOINT_FORMAT = 1

#: Smallest drop of the validation loss that counts as an improvement (float noise is not one).
MIN_IMPROVEMENT = 1e-7
#: ``optimizer`` values: Adam, or SGD with Nesterov momentum (the seed article's recipe).
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
#: ``init`` values: torch's default initialisation, or Xavier-uniform weights with zero biases.
INITS: tuple[str, ...] = typing.get_args(Init)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    assert isinstance(inner, nn.Module)
    return inner


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the (unwrapped) model's weights."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in _unwrap(model).state_dict().items()}


class WeightAverage:
    """An exponential moving average of a model's weights, updated after every optimiser step.

    Why: the weights after an epoch's last step carry that step's noise, and early stopping picks
    among such noisy snapshots, so two seeds of the same setting end an epoch or two apart in quality.
    The average (Polyak averaging) moves less; validation, early stopping and the saved model use it.
    The decay of step ``n`` is ``min(decay, (1 + n) / (10 + n))``: the random initial weights fade
    within the first steps instead of weighing on the average for thousands of them.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(_unwrap(model))
        self.model.requires_grad_(False)
        self.decay, self.steps = decay, 0
        # (average, live) tensor pairs, taken at the first update (after any DDP/Horovod wrapping):
        # the optimiser and load_state_dict change the live tensors in place, so the pairs stay
        # valid and no step rebuilds two state dicts.
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (integer buffers are copied)."""
        if self._pairs is None:
            live = _unwrap(model).state_dict()
            self._pairs = [(mine, live[name]) for name, mine in self.model.state_dict().items()]
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for mine, current in self._pairs:
            if mine.is_floating_point():
                mine.lerp_(current, 1.0 - d)
            else:
                mine.copy_(current)
        self.steps += 1

    def load(self, state: dict[str, torch.Tensor], steps: int, origin: str) -> None:
        _load_weights(self.model, state, origin)
        self.steps = steps


def init_weights(model: nn.Module, init: str) -> None:
    """Re-initialise ``model`` in place: ``xavier`` gives Xavier-uniform weights and zero biases.

    Xavier keeps early pre-activations away from tanh/sigmoid saturation, which the seed article's
    slow SGD schedule depends on. Embedding tables keep their normal init (Xavier on a
    vocabulary-sized table makes the vectors tiny), and a padding row stays zero.
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    if init == "auto":
        raise ConfigError("init 'auto' is the task's own choice: pass task.default_init (fit does)")
    if init == "default":
        return
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.dim() >= 2:
                nn.init.xavier_uniform_(param)
            elif "bias" in name:
                nn.init.zeros_(param)


def build_optimizer(model: nn.Module, settings: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``settings.optimizer`` names, over all of ``model``'s parameters."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd_nesterov":
        return torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=settings.momentum,
                               nesterov=True, weight_decay=settings.weight_decay)
    raise ConfigError(f"unknown optimizer {settings.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")


def save_checkpoint(
    directory: Path,
    state: dict[str, torch.Tensor],
    best_state: dict[str, torch.Tensor],
    optimiser_state: dict[str, Any],
    meta: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write one epoch's checkpoint; ``checkpoint.json`` goes last, as the commit record."""
    directory.mkdir(parents=True, exist_ok=True)
    tag = {"epoch": str(meta["epoch"])}
    atomic_write(directory / CHECKPOINT_WEIGHTS, lambda p: save_file(state, str(p), metadata=tag))
    atomic_write(directory / CHECKPOINT_BEST, lambda p: save_file(best_state, str(p), metadata=tag))
    if ema_state is not None:
        atomic_write(directory / CHECKPOINT_EMA, lambda p: save_file(ema_state, str(p), metadata=tag))
    else:  # an average left by an earlier run with the setting on must not be resumed from later
        (directory / CHECKPOINT_EMA).unlink(missing_ok=True)
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



# --------------------------------------------------------------------------------------------------
# What a model brings to the loop
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def _val_sums(model: nn.Module, task: FitTask, batch_size: int, device: torch.device, autocast: bool
              ) -> tuple[float, float]:
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    weight = torch.zeros((), dtype=torch.float64, device=device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        for x, y in task.val_batches(batch_size):
            loss_sum, w = task.loss_sums(model(x).float(), y)
            total += loss_sum.double()
            weight += w.double()
    return float(total), float(weight)


def fit(
    task: FitTask,
    settings: TrainConfig,
    comm: Collective | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``task``'s model on this rank; return the best validation epoch's weights.

    Every rank of a run calls it with the same settings and its own task. Batches follow
    ``task.order``; torch is reseeded from ``settings.seed + rank`` and the epoch, so dropout masks
    depend on (seed, rank, epoch) alone and a resumed run repeats exactly what the uninterrupted
    run would have done. The gradient step clips element-wise when ``settings.clip_value`` is set.

    Args:
        task: the model, its rows and its loss on this rank.
        settings: optimiser, epochs, patience (``<= 0`` disables early stopping), seed, device, bf16.
        comm: the process group; by default from the environment (DDP when initialised).
        checkpoint_dir: where rank 0 writes a checkpoint after every epoch.
        resume: continue from the checkpoint in ``checkpoint_dir`` at its next epoch (with its
            history, best weights and optimiser state). Without a checkpoint there, training starts
            fresh (logged), so a restarted job needs no special case.
        init_state: start from these weights (continue training an existing model on new data).
        extra_meta: more JSON for every checkpoint record (e.g. the normaliser).

    Raises:
        ModelError: weights that do not fit the model, a checkpoint of another model or
            unreadable, ``resume`` without ``checkpoint_dir``, ranks that disagree on where to
            start, or a validation loss that is not finite.
    """
    comm = comm or default_collective()
    rank, world = comm.rank, comm.world
    if resume and checkpoint_dir is None:
        raise ModelError("resume=True needs a checkpoint_dir to resume from")

    seed_everything(settings.seed + rank)
    device = comm.device(settings.device)
    autocast = settings.bf16 and device.type == "cuda"
    if settings.bf16 and not autocast and rank == 0:
        # CPU bf16 autocast of an LSTM fails in oneDNN on CPUs without bf16 instructions.
        log.warning("bf16 autocast is for CUDA only; training %s in float32 on %s", task.label, device)

    model: nn.Module = task.build_model()
    init_weights(model, task.default_init if settings.init == "auto" else settings.init)
    model.to(device)
    if init_state is not None:
        _load_weights(model, init_state, "init_state")
    optimiser = build_optimizer(model, settings)
    ema = WeightAverage(model, settings.ema_decay) if settings.ema_decay is not None else None
    model_config = task.model_config()
    start_epoch, best_val, best_epoch = 0, math.inf, -1
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    if resume and checkpoint_dir is not None:
        if (checkpoint_dir / CHECKPOINT_META).is_file():
            state, best_state, meta = load_checkpoint(checkpoint_dir)
            if meta.get("model") != model_config:
                raise ModelError(f"checkpoint in {checkpoint_dir} is of model {meta.get('model')}, not {model_config}")
            _load_weights(model, state, f"checkpoint in {checkpoint_dir}")
            try:
                optimiser.load_state_dict(meta["optimizer"])
            except (ValueError, KeyError) as exc:
                raise ModelError(f"optimiser state in {checkpoint_dir} does not fit: {exc}") from None
            # The saved learning rate would silently win over a changed config otherwise.
            for group in optimiser.param_groups:
                group["lr"], group["weight_decay"] = settings.learning_rate, settings.weight_decay
            if ema is not None:
                if not (checkpoint_dir / CHECKPOINT_EMA).is_file() or "ema_steps" not in meta:
                    raise ModelError(f"checkpoint in {checkpoint_dir} was written without train.ema_decay; resume "
                                     "with the run's own settings, or start afresh in another checkpoint directory")
                ema.load(_read_tagged_weights(checkpoint_dir / CHECKPOINT_EMA, int(meta["epoch"])),
                         int(meta["ema_steps"]), f"weight average in {checkpoint_dir}")
            start_epoch = int(meta["epoch"]) + 1
            best_val, best_epoch, history = float(meta["best_val_loss"]), int(meta["best_epoch"]), meta["history"]
            if rank == 0:
                log.info("resuming %s from %s at epoch %d (best epoch %d, val_loss %.5f)",
                         task.label, checkpoint_dir, start_epoch, best_epoch, best_val)
        elif rank == 0:
            log.warning("resume requested but %s holds no checkpoint; starting from epoch 0", checkpoint_dir)
    if comm.distributed:
        _check_same_on_all_ranks(start_epoch, "the epoch to start from", comm)
        model, optimiser = comm.wrap(model, optimiser, device)

    task.to(device)
    stale = 0 if best_epoch < 0 else start_epoch - 1 - best_epoch
    if 0 < settings.patience <= stale and start_epoch < settings.epochs:
        if rank == 0:
            log.info("checkpoint had already stopped early (no improvement for %d epochs)", stale)
        start_epoch = settings.epochs
    batch_size = settings.batch_size

    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        # Per-epoch reseed: dropout masks depend on (seed, rank, epoch) only, so resuming is exact.
        torch.manual_seed(epoch_seed(settings.seed + rank, epoch))
        model.train()
        idx = torch.from_numpy(task.order(epoch)).to(device)
        # Accumulate on the device: a float() per batch would synchronise a GPU every step.
        total = torch.zeros((), dtype=torch.float64, device=device)
        weight = torch.zeros((), dtype=torch.float64, device=device)
        batches = 0
        n_batches = math.ceil(len(idx) / batch_size)
        progress = _Progress(epoch, n_batches, enabled=rank == 0)
        for start in range(0, len(idx), batch_size):
            x, y = task.train_batch(idx[start : start + batch_size])
            optimiser.zero_grad()  # set_to_none is the default; horovod's optimiser takes no argument
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                output = model(x)
            loss_sum, w = task.loss_sums(output.float(), y)
            (loss_sum / w.clamp_min(1e-12)).backward()
            comm.step(model, optimiser, settings.clip_value)
            if ema is not None:
                ema.update(model)
            total += loss_sum.detach().double()
            weight += w.detach().double()
            batches += 1
            progress.step(batches, functools.partial(_ratio, total, weight))
        progress.close()
        judged = ema.model if ema is not None else _unwrap(model)  # what validation, and the bundle, use
        val_sum, val_weight = _val_sums(judged, task, batch_size * 4, device, autocast)
        sums = torch.tensor([float(total), float(weight), val_sum, val_weight], dtype=torch.float64)
        batches_min, batches_max = batches, batches
        if comm.distributed:
            sums = comm.sum(sums)
            spread = comm.max(torch.tensor([batches, -batches], dtype=torch.int64))
            batches_max, batches_min = int(spread[0]), -int(spread[1])
        train_loss = float(sums[0]) / max(float(sums[1]), 1e-12)
        val_loss = float(sums[2]) / float(sums[3]) if float(sums[3]) > 0 else math.nan
        if not math.isfinite(val_loss):
            raise ModelError(f"{task.label}: validation loss is {val_loss} at epoch {epoch}; "
                             "lower the learning rate (or check the validation rows)")
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
            best_state = cpu_state(judged)
        else:
            stale += 1
        if rank == 0:
            log.info("%s epoch %d train_loss %.5f val_loss %.5f (%.1fs, %d batches on each of %d ranks)%s",
                     task.label, epoch, train_loss, val_loss, record["seconds"], batches, world,
                     " best" if improved else "")
            log_epoch(settings, record)
            if checkpoint_dir is not None:
                assert best_state is not None  # epoch 0 always improves on inf
                meta = {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch,
                    "best_epoch": best_epoch,
                    "best_val_loss": best_val,
                    "history": history,
                    "model": model_config,
                    "train": dataclasses.asdict(settings),  # type: ignore[call-overload]
                    "world_size": world,
                    **({"ema_steps": ema.steps} if ema is not None else {}),
                    **(extra_meta or {}),
                }
                save_checkpoint(checkpoint_dir, cpu_state(model), best_state, optimiser.state_dict(), meta,
                                cpu_state(ema.model) if ema is not None else None)
        if 0 < settings.patience <= stale:
            if rank == 0:
                log.info("%s: early stop at epoch %d, no improvement for %d epochs (best epoch %d, val_loss %.5f)",
                         task.label, epoch, stale, best_epoch, best_val)
            break
    if best_state is None:
        # No epoch ran (e.g. the epochs were already reached and no checkpoint): the weights as they are.
        best_state = cpu_state(ema.model if ema is not None else model)
    return TrainResult(best_state, history, best_epoch, best_val)


def _ratio(total: torch.Tensor, weight: torch.Tensor) -> float:
    return float(total) / max(float(weight), 1e-12)


def train_work(
    work: RankWork,
    settings: TrainConfig,
    comm: Collective | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """One rank of a training run: the kind's task for this rank, trained on :func:`fit`.

    What every backend's rank runs (:func:`loganomaly.training.backends.rank_main`), and what a
    notebook or test calls to train a kind's :class:`~loganomaly.models.kind.RankWork` in this process.
    The task's extras (e.g. the normaliser the ranks fitted) go into every checkpoint record and
    come back in :attr:`TrainResult.extras`.
    """
    comm = comm or default_collective()
    task, extras = work.build_task(settings, comm)
    result = fit(task, settings, comm, checkpoint_dir, resume, init_state, extras)
    result.extras = extras
    return result
