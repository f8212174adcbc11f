"""Process groups for rank-aware code: one process, ``torch.distributed`` (DDP), or a backend's own.

Training code (the loop, a model kind's task) is written once against :class:`Collective`: a sum,
max, gather or broadcast over ranks, and how to wrap a model so gradients are averaged. A single
process is the base class itself, so nothing branches on "distributed or not". Horovod's
collective lives with its backend (:mod:`loganomaly.training.backends`), since Horovod is optional.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from torch import nn

from loganomaly.errors import ModelError
from loganomaly.runtime.device import pick_device

log = logging.getLogger(__name__)

__all__ = ["Collective", "TorchCollective", "default_collective", "epoch_seed", "rank_info", "shard_indices"]


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
