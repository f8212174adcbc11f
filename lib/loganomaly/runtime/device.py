"""Where tensors run: chosen at run time, never at import, so one code path serves CPU and GPU workers."""

from __future__ import annotations

import torch

from loganomaly.errors import ModelError

#: Accepted values of ``pick_device``'s argument (``train.device`` in the config).
DEVICES = ("auto", "cpu", "cuda")

def pick_device(requested: str = "auto") -> torch.device:
    """The device to run on, decided at run time, never at import.

    Args:
        requested: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.

    Raises:
        ModelError: ``cuda`` was requested but is not available, or the value is unknown.
    """
    if requested not in DEVICES:
        raise ModelError(f"unknown device {requested!r}; choose one of: {', '.join(DEVICES)}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise ModelError("device 'cuda' requested but CUDA is not available on this machine")
    return torch.device("cpu")

