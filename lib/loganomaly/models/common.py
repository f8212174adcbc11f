"""Checks every model config shares: strict rebuilding from JSON and shape validation.

Configs are rebuilt from ``model.json`` and checkpoints with :func:`strict_from_dict`, which refuses
unknown keys: a bundle written by a newer release could carry a setting this code would silently
drop, and then build a different network than the one the weights belong to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, TypeVar

import torch

from loganomaly.errors import ModelError

C = TypeVar("C")

__all__ = ["check_dropout", "check_positive_ints", "inference_autocast", "strict_from_dict"]


def inference_autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """bf16 autocast for a forward pass on CUDA when asked; disabled elsewhere.

    CPU bf16 autocast of an LSTM fails in oneDNN on CPUs without bf16 instructions, so it is never
    enabled on a CPU, whatever ``bf16`` says.
    """
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


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
