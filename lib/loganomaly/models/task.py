"""What a model kind hands the training loop, and what the loop hands back.

A model kind (:mod:`loganomaly.models.kind`) builds a :class:`FitTask` on every rank: its network,
its rows and its loss. The loop (:func:`loganomaly.training.loop.fit`) owns everything else and
returns a :class:`TrainResult`. The two types live here, below both, so a kind never imports
the training layer and the loop never imports a kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["FitTask", "TensorTask", "TrainResult", "float_tensor"]


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
    #: What the rank's task adds for the driver (JSON-ready, e.g. the normaliser the ranks fitted).
    extras: dict[str, Any] = field(default_factory=dict)


class FitTask(ABC):
    """One model's part of a training run on one rank: its network, its rows, its loss.

    The loop asks for batches by position: ``order(epoch)`` gives this rank's positions into its
    training rows for one epoch (the same length on every rank), ``train_batch`` cuts the inputs and
    targets at those positions. Validation rows are this rank's share only; the loop sums the
    losses over ranks.
    """

    #: Name in log lines.
    label: str = "model"
    #: What ``train.init: auto`` means for this model: ``default`` (torch's initialisation) or ``xavier``.
    default_init: str = "default"

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


def float_tensor(a: np.ndarray) -> torch.Tensor:
    """A contiguous float32 tensor sharing memory with ``a`` where it already is float32."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
