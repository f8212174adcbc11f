"""Where the ranks of a training run execute: ``local``, ``torch_distributor`` or ``horovod``.

Each backend is one object named in :data:`loganomaly.registry.BACKENDS`; every backend runs the
same function, :func:`rank_main`, once per rank, for every model kind. A rank gets a
:class:`RankJob`: the kind's :class:`~loganomaly.models.kind.RankWork` (its data and its own
settings), the training settings, and where to checkpoint. It builds its communication
(:class:`~loganomaly.runtime.collective.Collective`), asks the work for this rank's task and trains it
on the shared loop (:func:`loganomaly.training.loop.train_work`). The driver gets rank 0's result
back and the kind calibrates and saves the bundle.

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
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from loganomaly.config import Device, TrainConfig
from loganomaly.errors import BackendUnavailableError, ConfigError, ModelError
from loganomaly.models.kind import RankWork
from loganomaly.models.task import TrainResult
from loganomaly.registry import BACKENDS
from loganomaly.runtime.collective import Collective, TorchCollective
from loganomaly.training.loop import train_work

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: TorchDistributor ``local_mode``: None decides from the master (``local[*]`` -> True). Candidate
#: for a config field ``train.distributor_local_mode``.
TORCH_DISTRIBUTOR_LOCAL_MODE: bool | None = None

HOROVOD_INSTALL_HINT = (
    "Horovod 0.28.1 builds from source only: pip install 'cmake<4', then with a C++ compiler wrapper "
    "that adds -std=c++17, HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 "
    "HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 pip install --no-build-isolation horovod==0.28.1 "
    "(see the README, \"Training backends\", or `make horovod`); or use train.backend=torch_distributor"
)

_RESULT_MAGIC = b"LGANRES1"


@dataclass
class RankJob:
    """Everything a rank needs, as plain picklable data (no SparkSession, no open files).

    Attributes:
        work: what to train and on which data (the kind's settings travel in it).
        train_cfg: training settings.
        checkpoint_dir: where rank 0 checkpoints every epoch (shared storage on a cluster).
        resume: continue from the checkpoint there.
        init_weights: safetensors bytes of weights to start from (continuing a model), or ``None``.
        comm: ``single``, ``torch`` (init a process group from torchrun's environment) or ``horovod``.
        device: ``auto``, ``cpu`` or ``cuda`` for the ranks (``cpu`` when Spark grants no GPUs).
    """

    work: RankWork
    train_cfg: TrainConfig
    checkpoint_dir: str | None = None
    resume: bool = False
    init_weights: bytes | None = None
    comm: str = "single"
    device: Device = "auto"


# ----------------------------------------------------------------------------- result transport
def encode_result(result: TrainResult) -> bytes:
    """Rank 0's result as bytes: magic, JSON header length, JSON header, safetensors weights."""
    header = {
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "extras": result.extras,
    }
    head = json.dumps(header).encode()
    return _RESULT_MAGIC + struct.pack("<Q", len(head)) + head + save_safetensors(result.state_dict)


def decode_result(data: object) -> TrainResult:
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
    return TrainResult(state, header["history"], int(header["best_epoch"]), float(header["best_val_loss"]),
                       dict(header.get("extras") or {}))


# ----------------------------------------------------------------------------- ranks
def _configure_rank_logging() -> None:
    """A rank is its own process (torchrun, a Spark task): give it a handler if it has none."""
    root = logging.getLogger()
    if not root.handlers:
        rank = os.environ.get("RANK", "0")
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")


def rank_main(job: RankJob) -> bytes:
    """One rank of a training run, for every backend and kind; returns rank 0's encoded result.

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
        result = train_work(job.work, cfg, comm, Path(job.checkpoint_dir) if job.checkpoint_dir else None,
                            job.resume, init_state)
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


# ----------------------------------------------------------------------------- backends
class Backend(ABC):
    """Where a run's ranks execute. Register one in :data:`loganomaly.registry.BACKENDS`."""

    #: Whether it launches Spark jobs (and so needs a SparkSession).
    needs_spark = True

    def ranks(self, cfg: TrainConfig, num_processes: int | None) -> int:
        """How many ranks it runs."""
        n = num_processes if num_processes is not None else cfg.num_processes
        if n < 1:
            raise ConfigError(f"train.num_processes must be >= 1, got {n}")
        return n

    @abstractmethod
    def launch(self, spark: SparkSession | None, job: RankJob, n: int) -> bytes:
        """Run :func:`rank_main` on ``n`` ranks; rank 0's encoded result."""


class LocalBackend(Backend):
    """``local``: one process, in the driver (no Spark needed)."""

    needs_spark = False

    def ranks(self, cfg: TrainConfig, num_processes: int | None) -> int:
        return 1

    def launch(self, spark: SparkSession | None, job: RankJob, n: int) -> bytes:
        return rank_main(job)


class TorchDistributorBackend(Backend):
    """``torch_distributor``: DDP ranks launched by PySpark's TorchDistributor (what Databricks recommends)."""

    def launch(self, spark: SparkSession | None, job: RankJob, n: int) -> bytes:
        from pyspark.ml.torch.distributor import TorchDistributor

        assert spark is not None
        local_mode = TORCH_DISTRIBUTOR_LOCAL_MODE
        if local_mode is None:
            local_mode = _is_local_master(spark)
        use_gpu = _distributor_use_gpu(spark, local_mode, job.train_cfg.device)
        job.comm, job.device = "torch", (job.train_cfg.device if use_gpu else "cpu")
        log.info("training %s with TorchDistributor: %d processes, local_mode=%s, use_gpu=%s",
                 type(job.work).__name__, n, local_mode, use_gpu)
        payload = TorchDistributor(num_processes=n, local_mode=local_mode, use_gpu=use_gpu).run(rank_main, job)
        return payload if isinstance(payload, bytes) else b""


class HorovodBackend(Backend):
    """``horovod``: ``horovod.spark.run`` (Horovod builds from source only; see :data:`HOROVOD_INSTALL_HINT`)."""

    def launch(self, spark: SparkSession | None, job: RankJob, n: int) -> bytes:
        horovod_spark = import_horovod()
        job.comm = "horovod"
        log.info("training %s with horovod.spark.run: %d processes", type(job.work).__name__, n)
        payload: bytes = horovod_spark.run(rank_main, args=(job,), num_proc=n)[0]
        return payload

    def ranks(self, cfg: TrainConfig, num_processes: int | None) -> int:
        n = super().ranks(cfg, num_processes)
        import_horovod()  # fail on the driver, before any rank starts
        return n


LOCAL = LocalBackend()
TORCH_DISTRIBUTOR = TorchDistributorBackend()
HOROVOD = HorovodBackend()


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
        BackendUnavailableError: Horovod is not installed or was built without PyTorch.
    """
    try:
        import horovod.spark as horovod_spark  # type: ignore[import-not-found]
        import horovod.torch  # type: ignore[import-not-found]  # noqa: F401
    except (ImportError, OSError) as exc:
        raise BackendUnavailableError(f"train.backend=horovod but Horovod cannot be imported ({exc}). "
                                     f"{HOROVOD_INSTALL_HINT}") from None
    return horovod_spark


def run_backend(
    spark: SparkSession | None,
    backend: str,
    work: RankWork,
    cfg: TrainConfig,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    num_processes: int | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Run ``work`` on the backend ``backend`` names (one process for ``local``); rank 0's result.

    Example:
        >>> result = run_backend(spark, "torch_distributor", plan.work, cfg.train)
        >>> result.best_val_loss, result.history[-1]["batches_min"] == result.history[-1]["batches_max"]

    Args:
        spark: the active session (the distributed backends launch Spark jobs; ``local`` needs none).
        backend: a name in :data:`loganomaly.registry.BACKENDS`.
        num_processes: ranks; by default ``cfg.num_processes`` (``local`` always runs one).
        init_state: start from these weights (continuing an existing model).

    Raises:
        ConfigError: unknown backend, a distributed backend without a SparkSession, or a reader
            that cannot serve this work.
        BackendUnavailableError: ``horovod`` is not installed.
        StageInputError: fewer training rows than ranks.
    """
    chosen: Backend = BACKENDS.get(backend)
    n = chosen.ranks(cfg, num_processes)
    # Fail on the driver, not in n ranks at once.
    work.check_world(n, cfg)
    if chosen.needs_spark and spark is None:
        raise ConfigError(f"train.backend={backend} needs a SparkSession")
    # Weights cross to the ranks as safetensors bytes, like the result coming back.
    init_weights = save_safetensors({k: v.contiguous() for k, v in init_state.items()}) if init_state else None
    job = RankJob(work, cfg, str(checkpoint_dir) if checkpoint_dir else None, resume, init_weights)
    result = decode_result(chosen.launch(spark, job, n))
    _check_equal_batches(result)
    return result


def _check_equal_batches(result: TrainResult) -> None:
    """The reader's promise, checked after the fact: every rank ran the same number of batches."""
    uneven = [h["epoch"] for h in result.history if h.get("batches_min", 0) != h.get("batches_max", 0)]
    if uneven:
        raise ModelError(f"ranks ran different numbers of batches in epochs {uneven}")


__all__ = [
    "HOROVOD",
    "LOCAL",
    "TORCH_DISTRIBUTOR",
    "Backend",
    "HorovodCollective",
    "RankJob",
    "decode_result",
    "encode_result",
    "import_horovod",
    "rank_main",
    "run_backend",
]
