"""What every model kind shares: strict rebuilding from JSON, shape checks, the batched forward loop.

Configs are rebuilt from ``model.json`` and checkpoints with :func:`strict_from_dict`, which refuses
unknown keys: a bundle written by a newer release could carry a setting this code would silently
drop, and then build a different network than the one the weights belong to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from loganomaly.errors import ModelError

C = TypeVar("C")

__all__ = ["check_dropout", "check_positive_ints", "forward_batches", "inference_autocast", "strict_from_dict"]


def inference_autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """bf16 autocast for a forward pass on CUDA when asked; disabled elsewhere.

    CPU bf16 autocast of an LSTM fails in oneDNN on CPUs without bf16 instructions, so it is never
    enabled on a CPU, whatever ``bf16`` says.
    """
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def forward_batches(
    model: nn.Module, x: np.ndarray, batch_size: int, device: torch.device | None = None, bf16: bool = False
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(start, batch, output)`` per ``batch_size`` windows of ``x`` ``[N, T, F]``, in inference mode.

    The one batched forward loop of every inference function: shape and size checks, eval mode, a
    contiguous float32 copy of each slice on ``device`` (default: where the parameters are), the
    optional bf16 autocast (:func:`inference_autocast`) and a float32 output. The callers reduce
    each output on the device before anything is copied back.
    """
    if x.ndim != 3:
        raise ModelError(f"windows must have shape [N, T, F], got {x.shape}")
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}")
    device = device or next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)).to(device)
            with inference_autocast(device, bf16):
                out = model(batch)
            yield start, batch, out.float()


def strict_from_dict(cls: type[C], data: Any, what: str, error: type[Exception] = ModelError) -> C:
    """Rebuild dataclass ``cls`` from a dict; an unknown or missing key is ``error``, never ignored."""
    if not isinstance(data, dict):
        raise error(f"{what} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise error(f"unknown {what} keys {unknown}; valid keys: {', '.join(names)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise error(f"incomplete {what} {data!r}: {exc}") from None


def check_positive_ints(obj: object, names: Iterable[str], what: str, error: type[Exception] = ModelError) -> None:
    """Refuse nonsense early: torch's own errors for a zero-sized layer are cryptic."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise error(f"{what} {name} must be a positive integer, got {value!r}")


def check_dropout(value: float, what: str) -> None:
    """Dropout must be a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ModelError(f"{what} dropout must be in [0, 1), got {value!r}")
