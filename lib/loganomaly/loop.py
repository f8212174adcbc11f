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
* ``checkpoint.json``: epoch, best epoch and loss, history, model config, train config. Written
  last, it is the commit record: every other file carries its epoch and must agree with it.

Nothing is ever unpickled: weights are safetensors, the optimizer state is read with
``torch.load(weights_only=True)``, the rest is JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import random
import sys
import time
import typing
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from loganomaly.config import Init, Optimizer, TrainConfig
from loganomaly.errors import ConfigError, ModelError
from loganomaly.files import atomic_write
from loganomaly.model import pick_device

log = logging.getLogger(__name__)

CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_BEST = "best.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_META = "checkpoint.json"
CHECKPOINT_FORMAT = 1

#: Smallest drop of the validation loss that counts as an improvement (float noise is not one).
MIN_IMPROVEMENT = 1e-7
#: ``optimizer`` values: Adam, or SGD with Nesterov momentum (the seed article's recipe).
OPTIMIZERS: tuple[str, ...] = typing.get_args(Optimizer)
#: ``init`` values: torch's default initialisation, or Xavier-uniform weights with zero biases.
INITS: tuple[str, ...] = typing.get_args(Init)


class LoopSettings(Protocol):
    """The settings :func:`fit` reads (a dataclass: checkpoints store it as JSON).

    :class:`loganomaly.config.TrainConfig` and :class:`loganomaly.sequence_models.SequenceTrainConfig`
    both provide them.
    """

    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def patience(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def bf16(self) -> bool: ...
    @property
    def optimizer(self) -> str: ...
    @property
    def momentum(self) -> float: ...
    @property
    def clip_value(self) -> float | None: ...
    @property
    def init(self) -> str: ...


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


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch that does not collide across (seed, epoch) pairs."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)
    assert isinstance(inner, nn.Module)
    return inner


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the (unwrapped) model's weights."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in _unwrap(model).state_dict().items()}


def init_weights(model: nn.Module, init: str) -> None:
    """Re-initialise ``model`` in place: ``xavier`` gives Xavier-uniform weights and zero biases.

    Xavier keeps early pre-activations away from tanh/sigmoid saturation, which the seed article's
    slow SGD schedule depends on. Embedding tables keep their normal init (Xavier on a
    vocabulary-sized table makes the vectors tiny), and a padding row stays zero.
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
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


def build_optimizer(model: nn.Module, settings: LoopSettings) -> torch.optim.Optimizer:
    """The optimiser ``settings.optimizer`` names, over all of ``model``'s parameters."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd_nesterov":
        return torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=settings.momentum,
                               nesterov=True, weight_decay=settings.weight_decay)
    raise ConfigError(f"unknown optimizer {settings.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")


@dataclass
class TrainResult:
    """What training produced.

    Attributes:
        state_dict: CPU weights of the best validation epoch.
        history: one record per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``seconds`` and
            ``batches`` (this rank's optimiser steps; equal on every rank).
        best_epoch: epoch (0-based) of ``state_dict``.
        best_val_loss: its validation loss (the task's weighted mean over all ranks' validation rows).
    """

    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float


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

    def step(self, model: nn.Module, optimiser: torch.optim.Optimizer, clip_value: float | None) -> None:
        """One optimiser step on the (averaged) gradients, clipped element-wise when asked."""
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
        optimiser.step()


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



# --------------------------------------------------------------------------------------------------
# MLflow tracking (train.mlflow)
# --------------------------------------------------------------------------------------------------

MLFLOW_INSTALL_HINT = "pip install 'loganomaly[mlflow]' (mlflow-skinny)"
#: Artifact folder of the run that holds the bundle's files (download it and load it as a bundle).
MLFLOW_BUNDLE_PATH = "bundle"
#: MLflow accepts at most this many params per ``log_batch`` call.
_MLFLOW_PARAMS_PER_BATCH = 100
#: Tracking URIs without a scheme that MLflow reads as a named store, not as a local path.
_MLFLOW_NAMED_STORES = frozenset({"databricks", "databricks-uc", "uc"})


def absolute_tracking_uri(uri: str) -> str:
    """``uri`` with a relative local store made absolute (``mlruns``, ``file:mlruns``, ``sqlite:///m.db``).

    Ranks may run in another working directory (torchrun, Spark tasks); an absolute store is the
    same store for all of them. Server, ``databricks`` and other remote URIs are returned unchanged.
    """
    parsed = urllib.parse.urlparse(uri)
    if uri in _MLFLOW_NAMED_STORES:
        return uri
    if parsed.scheme == "":
        return Path(uri).resolve().as_uri()
    if parsed.scheme == "file" and not parsed.netloc:
        path = Path(urllib.parse.unquote(parsed.path))
        return uri if path.is_absolute() else path.resolve().as_uri()
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # SQLAlchemy: three slashes then a relative path, four for an absolute one.
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def mlflow_params(sections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{"model": {...}, "train": {...}}`` as MLflow params ``model.kind``, ``train.epochs``, ...

    The ``mlflow_*`` settings are left out (a tracking URI may hold credentials); non-scalar values
    are written as JSON.
    """
    params = {}
    for section, values in sections.items():
        for key, value in values.items():
            if key.startswith("mlflow"):
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            params[f"{section}.{key}"] = text
    return params


def import_mlflow() -> Any:
    """The ``mlflow`` package, imported only when tracking is asked for.

    Raises:
        ConfigError: ``train.mlflow`` is on but MLflow is not installed.
    """
    try:
        import mlflow  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(f"train.mlflow=true but MLflow cannot be imported ({exc}); {MLFLOW_INSTALL_HINT}") from None
    return mlflow


@dataclass
class MlflowRun:
    """The MLflow run of one ``train``, driven from the driver (one process: nothing to gate by rank).

    The driver logs the params and, at the end, the bundle and the summary; rank 0 logs each
    epoch's losses itself (:func:`_log_mlflow`), into the run named by ``train.mlflow_run_id``.

    Attributes:
        client: an ``mlflow.tracking.MlflowClient`` on ``tracking_uri``.
        run_id: the run's id.
        tracking_uri: the absolute tracking URI the ranks are given.
        owned: whether this run was started here (and is ended here) or given by ``train.mlflow_run_id``.
    """

    client: Any
    run_id: str
    tracking_uri: str
    owned: bool

    def train_config(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` for the ranks: pointing at this run and at the absolute store."""
        return dataclasses.replace(cfg, mlflow_run_id=self.run_id, mlflow_tracking_uri=self.tracking_uri)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param  # type: ignore[import-not-found]

        items = [Param(k, v) for k, v in sorted(params.items())]
        for start in range(0, len(items), _MLFLOW_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _MLFLOW_PARAMS_PER_BATCH])

    def log_outcome(self, files: list[Path], metrics: dict[str, float], tags: dict[str, str],
                    name: str | None = None) -> None:
        """The saved bundle's ``files`` as artifacts under ``bundle/``, final metrics and tags.

        A failure is logged, not raised: the bundle is saved already and training is not repeated
        for the sake of its record.
        """
        from mlflow.entities import Metric, RunTag  # type: ignore[import-not-found]

        try:
            for path in files:
                self.client.log_artifact(self.run_id, str(path), MLFLOW_BUNDLE_PATH)
            now = int(time.time() * 1000)
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())],
                tags=[RunTag(k, v) for k, v in sorted(tags.items())],
            )
            if name and self.owned:
                self.client.update_run(self.run_id, name=name)
        except Exception as exc:  # the bundle exists; a tracking outage must not fail the stage now
            log.warning("mlflow: could not log the outcome of run %s (%s); the bundle itself is saved",
                        self.run_id, exc)
            return
        log.info("mlflow: run %s holds %d artifacts under %s/ and %d final metrics",
                 self.run_id, len(files), MLFLOW_BUNDLE_PATH, len(metrics))


@contextlib.contextmanager
def mlflow_run(cfg: TrainConfig, params: dict[str, str]) -> Iterator[MlflowRun | None]:
    """Start (or join) the MLflow run of a training when ``cfg.mlflow`` is on; ``None`` otherwise.

    The run lives in ``cfg.mlflow_experiment`` (created when missing) in the store named by
    ``cfg.mlflow_tracking_uri``, ``$MLFLOW_TRACKING_URI`` or MLflow's default. A run started here
    ends FINISHED, or FAILED when the block raises; a run given by ``cfg.mlflow_run_id`` is left
    running for its owner.

    Example:
        >>> with mlflow_run(cfg.train, mlflow_params({"train": cfg.to_dict()["train"]})) as run:
        ...     settings = run.train_config(cfg.train) if run else cfg.train  # doctest: +SKIP

    Raises:
        ConfigError: MLflow is not installed, or the run cannot be started in that store.
    """
    if not cfg.mlflow:
        yield None
        return
    mlflow = import_mlflow()
    from mlflow.tracking import MlflowClient  # type: ignore[import-not-found]

    uri = absolute_tracking_uri(cfg.mlflow_tracking_uri or mlflow.get_tracking_uri())
    client = MlflowClient(tracking_uri=uri)
    try:
        if cfg.mlflow_run_id:
            run = MlflowRun(client, client.get_run(cfg.mlflow_run_id).info.run_id, uri, owned=False)
        else:
            experiment = client.get_experiment_by_name(cfg.mlflow_experiment)
            if experiment is None:
                try:
                    experiment_id = client.create_experiment(cfg.mlflow_experiment)
                except Exception:  # another process created it meanwhile
                    experiment = client.get_experiment_by_name(cfg.mlflow_experiment)
                    if experiment is None:
                        raise
                    experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
            created = client.create_run(experiment_id, tags={"loganomaly.stage": "train"})
            run = MlflowRun(client, created.info.run_id, uri, owned=True)
        run.log_params(params)
    except Exception as exc:
        raise ConfigError(f"train.mlflow: cannot start a run in {uri} (experiment {cfg.mlflow_experiment!r}, "
                          f"run {cfg.mlflow_run_id or 'new'}): {exc}") from exc
    log.info("mlflow: tracking this training as run %s in %s", run.run_id, uri)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        if run.owned:
            try:
                client.set_terminated(run.run_id, status=status)
            except Exception as exc:
                log.warning("mlflow: could not mark run %s %s: %s", run.run_id, status, exc)


@functools.lru_cache(maxsize=4)
def _mlflow_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient  # type: ignore[import-not-found]

    return MlflowClient(tracking_uri=uri or None)


def _log_mlflow(settings: LoopSettings, record: dict[str, float]) -> None:
    """One epoch's metrics (step = epoch) to MLflow, from rank 0; never fails training.

    Into the run ``settings.mlflow_run_id`` when ``settings.mlflow`` is on (what ``train`` sets up
    for its ranks); otherwise into the caller's active run when the caller has started one with
    ``mlflow.start_run()`` (e.g. a notebook calling the loop directly).
    """
    metrics = {k: float(v) for k, v in record.items() if k != "epoch"}
    step = int(record["epoch"])
    run_id = getattr(settings, "mlflow_run_id", "") if getattr(settings, "mlflow", False) else ""
    try:
        if run_id:
            from mlflow.entities import Metric  # type: ignore[import-not-found]

            now = int(time.time() * 1000)
            client = _mlflow_client(getattr(settings, "mlflow_tracking_uri", ""))
            client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        elif "mlflow" in sys.modules:  # only a caller that imported MLflow can have a run active
            mlflow = sys.modules["mlflow"]
            if mlflow.active_run() is not None:
                mlflow.log_metrics(metrics, step=step)
    except Exception as exc:  # a tracking server outage must not kill a training run
        log.warning("mlflow logging failed: %s", exc)


# --------------------------------------------------------------------------------------------------
# What a model brings to the loop
# --------------------------------------------------------------------------------------------------


class FitTask(ABC):
    """One model's part of a training run on one rank: its network, its rows, its loss.

    The loop asks for batches by position: ``order(epoch)`` gives this rank's positions into its
    training rows for one epoch (the same length on every rank), ``train_batch`` cuts the inputs and
    targets at those positions. Validation rows are this rank's share only; the loop sums the
    losses over ranks.
    """

    #: Name in log lines.
    label: str = "model"

    @abstractmethod
    def model_config(self) -> dict[str, Any]:
        """The model's config as JSON; stored in checkpoints, and a resume refuses another."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised network (torch is seeded just before)."""

    @abstractmethod
    def order(self, epoch: int) -> np.ndarray:
        """This rank's positions into its training rows for ``epoch``; equal length on every rank."""

    @abstractmethod
    def to(self, device: torch.device) -> None:
        """Move the rows to ``device`` once, before the first epoch."""

    @abstractmethod
    def train_batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of the training rows at ``positions`` (a device tensor)."""

    @abstractmethod
    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) of this rank's validation rows, ``batch_size`` at a time."""

    @abstractmethod
    def loss_sums(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of per-row losses, their total weight) of one batch, both on the output's device."""


@dataclass
class TensorTask(FitTask):
    """Rows held as tensors: ``x`` rows with targets ``y`` (``None``: the rows are their own targets).

    Attributes:
        train_x: this rank's indexable training rows (all of them, or its shard).
        order_fn: ``epoch -> positions`` into ``train_x`` (see :meth:`FitTask.order`).
        val_x: this rank's validation rows.
        train_y, val_y: targets, one per row, or ``None`` for an autoencoder.
    """

    train_x: torch.Tensor
    order_fn: Callable[[int], np.ndarray]
    val_x: torch.Tensor
    train_y: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    def order(self, epoch: int) -> np.ndarray:
        return self.order_fn(epoch)

    def to(self, device: torch.device) -> None:
        self.train_x, self.val_x = self.train_x.to(device), self.val_x.to(device)
        if self.train_y is not None and self.val_y is not None:
            self.train_y, self.val_y = self.train_y.to(device), self.val_y.to(device)

    def train_batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.train_x[positions]
        return x, (x if self.train_y is None else self.train_y[positions])

    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.val_x), batch_size):
            x = self.val_x[start : start + batch_size]
            yield x, (x if self.val_y is None else self.val_y[start : start + batch_size])


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
    settings: LoopSettings,
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
    init_weights(model, settings.init)
    model.to(device)
    if init_state is not None:
        _load_weights(model, init_state, "init_state")
    optimiser = build_optimizer(model, settings)
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
            total += loss_sum.detach().double()
            weight += w.detach().double()
            batches += 1
            progress.step(batches, functools.partial(_ratio, total, weight))
        progress.close()
        val_sum, val_weight = _val_sums(_unwrap(model), task, batch_size * 4, device, autocast)
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
            best_state = cpu_state(model)
        else:
            stale += 1
        if rank == 0:
            log.info("%s epoch %d train_loss %.5f val_loss %.5f (%.1fs, %d batches on each of %d ranks)%s",
                     task.label, epoch, train_loss, val_loss, record["seconds"], batches, world,
                     " best" if improved else "")
            _log_mlflow(settings, record)
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
                    **(extra_meta or {}),
                }
                save_checkpoint(checkpoint_dir, cpu_state(model), best_state, optimiser.state_dict(), meta)
        if 0 < settings.patience <= stale:
            if rank == 0:
                log.info("%s: early stop at epoch %d, no improvement for %d epochs (best epoch %d, val_loss %.5f)",
                         task.label, epoch, stale, best_epoch, best_val)
            break
    if best_state is None:
        # No epoch ran (e.g. the epochs were already reached and no checkpoint): the weights as they are.
        best_state = cpu_state(model)
    return TrainResult(best_state, history, best_epoch, best_val)


def _ratio(total: torch.Tensor, weight: torch.Tensor) -> float:
    return float(total) / max(float(weight), 1e-12)
