"""Run the rank-aware training on a backend: ``local``, ``torch_distributor`` or ``horovod``.

Every backend runs the same function, :func:`rank_main`, once per rank, for every model kind:

* the autoencoder and the supervised classifier (:class:`WindowWork`): the rank reads its shard
  of the pinned ``sequences`` snapshot (:mod:`loganomaly.training.readers.arrow`, or Petastorm with
  ``train.reader=petastorm``; no Spark in the ranks; the classifier also reads each window's class
  from ``sequences.n_abnormal``) and trains with :func:`loganomaly.training.tasks.train_on_snapshot`;
* DeepLog (:class:`DeepLogWork`): the driver has already collected the training period's
  sessions (it fits the vocabulary on them) and ships them, laid out as
  :class:`~loganomaly.models.sequence.SessionRows` (one int64 per event), to every rank; each
  rank trains on its shard of the events with :func:`loganomaly.models.sequence.train_deeplog`.

Both run on :func:`loganomaly.training.loop.fit`. The driver gets rank 0's result back (best weights,
history, and for the autoencoder the normaliser the ranks fitted), then calibrates and saves
the bundle.

* ``local``: one process, in the driver.
* ``torch_distributor``: ``pyspark.ml.torch.distributor.TorchDistributor``, DDP over gloo on
  CPU and nccl on GPU. On a ``local[*]`` master it runs in local mode: torchrun on the driver
  machine with ``num_processes`` processes, using the driver's ``sys.executable`` (the project's
  interpreter); on a cluster each of ``num_processes`` barrier tasks runs one torchrun node.
* ``horovod``: ``horovod.spark.run`` with ``horovod.torch``'s ``DistributedOptimizer`` and
  parameter broadcast; imported only when chosen, since Horovod builds from source only.

The result crosses process boundaries as bytes: a JSON header and a safetensors blob (see
:func:`encode_result`), so the driver never unpickles tensors. TorchDistributor's own transport
is cloudpickle (of a plain ``bytes`` object here) and, in its run script, *every* rank writes its
return value to the same output file; so every rank returns rank 0's bytes (broadcast), which
makes that race harmless.

A rank function must be importable on the workers: :func:`rank_main` is a module-level function
(cloudpickle ships it by reference) and its :class:`RankJob` holds only plain data, never the
SparkSession. On a cluster ``checkpoint_dir`` must be storage every rank sees (DBFS, a Volume).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from loganomaly.config import Device, TrainConfig
from loganomaly.errors import ConfigError, EngineUnavailableError, ModelError
from loganomaly.models.autoencoder import LSTMAutoencoderConfig
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.sequence import ClassifierConfig, DeepLogConfig, SessionRows, train_deeplog
from loganomaly.training.readers.arrow import ShardPlan
from loganomaly.training.tasks import (
    Collective,
    SnapshotTrainResult,
    TorchCollective,
    train_on_snapshot,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

BACKENDS = ("local", "torch_distributor", "horovod")

#: TorchDistributor ``local_mode``: None decides from the master (``local[*]`` -> True). Candidate
#: for a config field ``train.distributor_local_mode``.
TORCH_DISTRIBUTOR_LOCAL_MODE: bool | None = None

HOROVOD_INSTALL_HINT = (
    "Horovod 0.28.1 builds from source only: pip install 'cmake<4', then with a C++ compiler wrapper "
    "that adds -std=c++17, HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 "
    "HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 pip install --no-build-isolation horovod==0.28.1 "
    "(see DESIGN.md); or use train.backend=torch_distributor"
)

_RESULT_MAGIC = b"LGANRES1"


@dataclass
class WindowWork:
    """A window model's data for the ranks (autoencoder or classifier): where its windows are.

    Attributes:
        train_plan: training windows of the pinned snapshot, dealt to ranks.
        val_plan: validation windows.
        model_cfg: model kind and size.
        normaliser: keep this normaliser instead of fitting one (continuing a model's training).
        balanced: classifier only: weigh both classes alike in the loss.
    """

    train_plan: ShardPlan
    val_plan: ShardPlan
    model_cfg: LSTMAutoencoderConfig | ClassifierConfig
    normaliser: Normaliser | None = None
    balanced: bool = True

    def check_world(self, world: int, cfg: TrainConfig) -> None:
        """Fail on the driver, not in every rank, when the data cannot be dealt to ``world`` ranks."""
        if isinstance(self.model_cfg, ClassifierConfig) and cfg.reader != "arrow":
            raise ConfigError("the classifier reads its labels (sequences.n_abnormal) with train.reader=arrow only")
        self.train_plan.check_world(world)
        if cfg.reader == "petastorm" and world > 1:
            from loganomaly.training.readers.petastorm import check_dealing

            check_dealing(self.train_plan, world)

    def run(self, cfg: TrainConfig, comm: Collective, checkpoint_dir: Path | None, resume: bool,
            init_state: dict[str, torch.Tensor] | None) -> SnapshotTrainResult:
        return train_on_snapshot(self.train_plan, self.val_plan, self.model_cfg, cfg, comm=comm,
                                 checkpoint_dir=checkpoint_dir, resume=resume, init_state=init_state,
                                 normaliser=self.normaliser, balanced=self.balanced)


@dataclass
class DeepLogWork:
    """DeepLog's data for the ranks: the encoded sessions themselves (every rank takes its shard).

    Attributes:
        rows: training events.
        val_rows: validation events (each rank validates every ``world``-th).
        model_cfg: model shape (its vocabulary size).
    """

    rows: SessionRows
    val_rows: SessionRows
    model_cfg: DeepLogConfig

    def check_world(self, world: int, cfg: TrainConfig) -> None:
        if cfg.reader != "arrow":
            raise ConfigError("train.reader applies to the autoencoder's windows; DeepLog ships its sessions "
                              "to the ranks itself, so leave train.reader=arrow")
        if len(self.rows) < world:
            raise ModelError(f"{len(self.rows)} training events cannot give each of {world} ranks one")

    def run(self, cfg: TrainConfig, comm: Collective, checkpoint_dir: Path | None, resume: bool,
            init_state: dict[str, torch.Tensor] | None) -> SnapshotTrainResult:
        result = train_deeplog(self.rows, self.val_rows, self.model_cfg, cfg, comm=comm,
                                    checkpoint_dir=checkpoint_dir, resume=resume, init_state=init_state)
        return SnapshotTrainResult(result.state_dict, result.history, result.best_epoch, result.best_val_loss,
                                   None, len(self.rows), len(self.val_rows))


@dataclass
class RankJob:
    """Everything a rank needs, as plain picklable data (no SparkSession, no open files).

    Attributes:
        work: what to train and on which data.
        train_cfg: training settings.
        checkpoint_dir: where rank 0 checkpoints every epoch (shared storage on a cluster).
        resume: continue from the checkpoint there.
        init_weights: safetensors bytes of weights to start from (continuing a model), or ``None``.
        comm: ``single``, ``torch`` (init a process group from torchrun's environment) or ``horovod``.
        device: ``auto``, ``cpu`` or ``cuda`` for the ranks (``cpu`` when Spark grants no GPUs).
    """

    work: WindowWork | DeepLogWork
    train_cfg: TrainConfig
    checkpoint_dir: str | None = None
    resume: bool = False
    init_weights: bytes | None = None
    comm: str = "single"
    device: Device = "auto"


# ----------------------------------------------------------------------------- result transport
def encode_result(result: SnapshotTrainResult) -> bytes:
    """Rank 0's result as bytes: magic, JSON header length, JSON header, safetensors weights."""
    header = {
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "normaliser": result.normaliser.to_dict() if result.normaliser is not None else None,
        "train_windows": result.train_windows,
        "validation_windows": result.validation_windows,
    }
    head = json.dumps(header).encode()
    return _RESULT_MAGIC + struct.pack("<Q", len(head)) + head + save_safetensors(result.state_dict)


def decode_result(data: object) -> SnapshotTrainResult:
    """Inverse of :func:`encode_result`; never unpickles.

    Raises:
        ModelError: the bytes are not a result (e.g. a backend returned nothing).
    """
    if not isinstance(data, bytes) or not data.startswith(_RESULT_MAGIC):
        raise ModelError(f"the training backend returned no result ({type(data).__name__} of "
                         f"{len(data) if isinstance(data, bytes) else '?'} bytes); see the rank logs")
    at = len(_RESULT_MAGIC)
    (size,) = struct.unpack("<Q", data[at : at + 8])
    header = json.loads(data[at + 8 : at + 8 + size])
    state = load_safetensors(data[at + 8 + size :])
    normaliser = Normaliser.from_dict(header["normaliser"]) if header["normaliser"] else None
    return SnapshotTrainResult(state, header["history"], int(header["best_epoch"]), float(header["best_val_loss"]),
                               normaliser, int(header["train_windows"]), int(header["validation_windows"]))


# ----------------------------------------------------------------------------- ranks
def _configure_rank_logging() -> None:
    """A rank is its own process (torchrun, a Spark task): give it a handler if it has none."""
    root = logging.getLogger()
    if not root.handlers:
        rank = os.environ.get("RANK", "0")
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")


def rank_main(job: RankJob) -> bytes:
    """One rank of a training run, for every backend; returns rank 0's encoded result.

    With ``comm="torch"`` it joins the process group torchrun describes in the environment
    (nccl when the rank trains on CUDA, else gloo) and leaves it at the end.
    """
    _configure_rank_logging()
    created = False
    comm: Collective
    if job.comm == "torch":
        if not torch.distributed.is_initialized():
            on_gpu = job.device != "cpu" and torch.cuda.is_available()
            torch.distributed.init_process_group(backend="nccl" if on_gpu else "gloo")
            created = True
        comm = TorchCollective()
    elif job.comm == "horovod":
        comm = HorovodCollective()
    elif job.comm == "single":
        comm = Collective()
    else:
        raise ConfigError(f"unknown rank communication {job.comm!r}; choose one of: single, torch, horovod")
    cfg = job.train_cfg
    if job.device != cfg.device:
        cfg = replace(cfg, device=job.device)
    try:
        init_state = load_safetensors(job.init_weights) if job.init_weights else None
        result = job.work.run(cfg, comm, Path(job.checkpoint_dir) if job.checkpoint_dir else None, job.resume,
                              init_state)
        payload = encode_result(result) if comm.rank == 0 else b""
        if job.comm == "torch":
            payload = comm.broadcast_bytes(payload)
    finally:
        if created:
            torch.distributed.destroy_process_group()
    return payload


class HorovodCollective(Collective):
    """Horovod (``horovod.torch``): allreduce/allgather, DistributedOptimizer, parameter broadcast."""

    name = "horovod"

    def __init__(self) -> None:
        import horovod.torch as hvd  # type: ignore[import-not-found]

        hvd.init()
        self.hvd = hvd
        super().__init__(hvd.rank(), hvd.size(), hvd.local_rank())

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.hvd.allreduce(t, op=self.hvd.Sum)

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return self.gather(t).max(dim=0).values

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return self.hvd.allgather(t.unsqueeze(0))

    def broadcast_bytes(self, data: bytes) -> bytes:
        size = self.hvd.broadcast(torch.tensor([len(data)], dtype=torch.int64), root_rank=0)
        if int(size[0]) == 0:
            return b""
        buf = torch.zeros(int(size[0]), dtype=torch.uint8)
        if self.rank == 0:
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return bytes(self.hvd.broadcast(buf, root_rank=0).numpy().tobytes())

    def wrap(self, model: nn.Module, optimiser: torch.optim.Optimizer, device: torch.device
             ) -> tuple[nn.Module, torch.optim.Optimizer]:
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        if optimiser.state:
            # Only a resumed optimiser has state; broadcasting an empty Adam would take a step.
            hvd.broadcast_optimizer_state(optimiser, root_rank=0)
        wrapped = hvd.DistributedOptimizer(optimiser, named_parameters=model.named_parameters())
        return model, wrapped

    def step(self, model: nn.Module, optimiser: torch.optim.Optimizer, clip_value: float | None) -> None:
        if clip_value is None:
            optimiser.step()
            return
        # Horovod averages gradients asynchronously: wait for them before clipping, then step
        # without a second synchronisation (the pattern horovod documents for clipping).
        optimiser.synchronize()  # type: ignore[attr-defined]
        torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
        with optimiser.skip_synchronize():  # type: ignore[attr-defined]
            optimiser.step()


# ----------------------------------------------------------------------------- driver side
def _is_local_master(spark: SparkSession) -> bool:
    master = spark.sparkContext.master or ""
    return master == "local" or master.startswith("local[")


def _distributor_use_gpu(spark: SparkSession, local_mode: bool, device: str) -> bool:
    """Whether TorchDistributor may hand GPUs to the ranks: only when Spark has GPUs configured.

    TorchDistributor refuses ``use_gpu=True`` unless the driver (local mode) or each task
    (``spark.task.resource.gpu.amount``) owns GPUs, so "auto" means: CUDA wanted and Spark grants it.

    Raises:
        ModelError: ``train.device=cuda`` but Spark grants no GPUs.
    """
    if device == "cpu":
        return False
    conf = spark.sparkContext.getConf()
    if local_mode:
        granted = "gpu" in spark.sparkContext.resources and int(conf.get("spark.driver.resource.gpu.amount", "0")) > 0
    else:
        granted = float(conf.get("spark.task.resource.gpu.amount", "0")) >= 1
    if not granted:
        hint = "spark.driver.resource.gpu.amount and a discovery script" if local_mode else \
            "spark.task.resource.gpu.amount=1"
        if device == "cuda":
            raise ModelError(f"train.device=cuda but Spark grants no GPUs to the training ranks; set {hint}")
        if local_mode and torch.cuda.is_available():
            log.warning("CUDA is available but Spark grants the driver no GPUs (%s); ranks train on CPU", hint)
    return granted


def import_horovod() -> Any:
    """``horovod.spark`` (with ``horovod.torch`` checked), imported only when the backend is chosen.

    Raises:
        EngineUnavailableError: Horovod is not installed or was built without PyTorch.
    """
    try:
        import horovod.spark as horovod_spark  # type: ignore[import-not-found]
        import horovod.torch  # type: ignore[import-not-found]  # noqa: F401
    except (ImportError, OSError) as exc:
        raise EngineUnavailableError(f"train.backend=horovod but Horovod cannot be imported ({exc}). "
                                     f"{HOROVOD_INSTALL_HINT}") from None
    return horovod_spark


def train_backend(
    spark: SparkSession | None,
    backend: str,
    train_plan: ShardPlan,
    val_plan: ShardPlan,
    model_cfg: LSTMAutoencoderConfig | ClassifierConfig,
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    num_processes: int | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    normaliser: Normaliser | None = None,
    balanced: bool = True,
) -> SnapshotTrainResult:
    """Train a window model (autoencoder or classifier) on ``backend``; return rank 0's result on the driver.

    Example:
        >>> result = train_backend(spark, "torch_distributor", train_plan, val_plan, model_cfg, cfg.train)
        >>> result.best_val_loss, result.history[-1]["batches_min"] == result.history[-1]["batches_max"]

    Args:
        spark: the active session (the distributed backends launch Spark jobs; ``local`` needs none).
        backend: one of :data:`BACKENDS`.
        num_processes: ranks; by default ``cfg.num_processes`` (``local`` always runs one).
        init_state, normaliser: continue training an existing model: start from its weights and
            keep its normaliser (the weights only make sense on inputs normalised the same way).
        balanced: classifier only: weigh both classes alike in the loss.

    Raises:
        ConfigError: unknown backend, a distributed backend without a SparkSession,
            ``train.reader=petastorm`` where Petastorm cannot run (it needs ``make compat``), or
            with the classifier (which reads its labels with the Arrow reader).
        EngineUnavailableError: ``horovod`` is not installed.
        StageInputError: fewer training windows than ranks, or (Petastorm) a rank whose row groups
            would hold no training window.
    """
    if cfg.reader == "petastorm":
        # Fail on the driver, not in every rank: Petastorm runs only in the compatibility environment.
        from loganomaly.training.readers.petastorm import import_petastorm

        import_petastorm()
    work = WindowWork(train_plan, val_plan, model_cfg, normaliser, balanced)
    return run_backend(spark, backend, work, cfg, checkpoint_dir, resume, num_processes, init_state)


def train_deeplog_backend(
    spark: SparkSession | None,
    backend: str,
    rows: SessionRows,
    val_rows: SessionRows,
    model_cfg: DeepLogConfig,
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    num_processes: int | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> SnapshotTrainResult:
    """Train DeepLog on ``backend``; as :func:`train_backend`, with the sessions shipped to the ranks.

    Raises:
        ConfigError: unknown backend, a distributed backend without a SparkSession, or a
            ``train.reader`` other than ``arrow``.
        EngineUnavailableError: ``horovod`` is not installed.
        ModelError: fewer training events than ranks.
    """
    return run_backend(spark, backend, DeepLogWork(rows, val_rows, model_cfg), cfg, checkpoint_dir, resume,
                       num_processes, init_state)


def run_backend(
    spark: SparkSession | None,
    backend: str,
    work: WindowWork | DeepLogWork,
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    num_processes: int | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> SnapshotTrainResult:
    """Run ``work`` on ``backend`` (one process for ``local``) and return rank 0's result."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown train.backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    n = num_processes if num_processes is not None else cfg.num_processes
    if backend == "local":
        work.check_world(1, cfg)
        return work.run(cfg, Collective(), checkpoint_dir, resume, init_state)
    # Weights cross to the ranks as safetensors bytes, like the result coming back.
    init_weights = save_safetensors({k: v.contiguous() for k, v in init_state.items()}) if init_state else None
    job = RankJob(work, cfg, str(checkpoint_dir) if checkpoint_dir else None, resume, init_weights)
    if n < 1:
        raise ConfigError(f"train.num_processes must be >= 1, got {n}")
    # Fail on the driver, not in n ranks at once.
    work.check_world(n, cfg)
    if backend == "horovod":
        horovod_spark = import_horovod()
    if spark is None:
        raise ConfigError(f"train.backend={backend} needs a SparkSession")
    if backend == "torch_distributor":
        from pyspark.ml.torch.distributor import TorchDistributor

        local_mode = TORCH_DISTRIBUTOR_LOCAL_MODE
        if local_mode is None:
            local_mode = _is_local_master(spark)
        use_gpu = _distributor_use_gpu(spark, local_mode, cfg.device)
        job.comm, job.device = "torch", (cfg.device if use_gpu else "cpu")
        log.info("training %s with TorchDistributor: %d processes, local_mode=%s, use_gpu=%s",
                 type(work).__name__, n, local_mode, use_gpu)
        payload = TorchDistributor(num_processes=n, local_mode=local_mode, use_gpu=use_gpu).run(rank_main, job)
    else:
        job.comm = "horovod"
        log.info("training %s with horovod.spark.run: %d processes", type(work).__name__, n)
        payload = horovod_spark.run(rank_main, args=(job,), num_proc=n)[0]
    result = decode_result(payload)
    _check_equal_batches(result)
    return result


def _check_equal_batches(result: SnapshotTrainResult) -> None:
    """The reader's promise, checked after the fact: every rank ran the same number of batches."""
    uneven = [h["epoch"] for h in result.history if h.get("batches_min", 0) != h.get("batches_max", 0)]
    if uneven:
        raise ModelError(f"ranks ran different numbers of batches in epochs {uneven}")


__all__ = [
    "BACKENDS",
    "WindowWork",
    "DeepLogWork",
    "HorovodCollective",
    "RankJob",
    "run_backend",
    "train_deeplog_backend",
    "decode_result",
    "encode_result",
    "import_horovod",
    "rank_main",
    "train_backend",
]
