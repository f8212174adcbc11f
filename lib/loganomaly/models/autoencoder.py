"""LSTM sequence autoencoder over numeric windows, with its dataclass config.

A window of T steps x F features is encoded by an LSTM into its last hidden state, which a
second LSTM unrolls back into T steps; the anomaly score is the reconstruction error. Trained on
normal windows only, it reconstructs normal activity well and unusual activity badly. The
bottleneck (one hidden vector per window) is what stops it from learning the identity.

Nothing here touches a device at import time: :func:`loganomaly.runtime.device.pick_device` decides at run time, so the same
code runs on a CPU-only worker and on a GPU node.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from loganomaly.errors import ModelError

log = logging.getLogger(__name__)


@dataclass
class LSTMAutoencoderConfig:
    """Shape and size of the autoencoder; stored with every checkpoint and bundle to rebuild it.

    Attributes:
        n_features: F, per-step features of a window.
        window_steps: T, steps per window (recorded so a bundle can check the data it scores).
        hidden_size: width of both LSTMs and of the latent vector.
        num_layers: stacked LSTM layers in encoder and decoder.
        dropout: dropout between stacked layers (ignored by torch for a single layer).
    """

    n_features: int
    window_steps: int
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Refuse nonsense early: torch's own errors for a zero-sized LSTM are cryptic.
        for name in ("n_features", "window_steps", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"model config {name} must be a positive integer, got {value!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ModelError(f"model config dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (checkpoints, bundles)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LSTMAutoencoderConfig:
        """Rebuild from :meth:`to_dict`; an unknown or missing key is a ModelError, never ignored.

        Unknown keys are refused because a bundle written by a newer model version could carry a
        setting this code would silently drop, and then build a different network.
        """
        if not isinstance(data, dict):
            raise ModelError(f"model config must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ModelError(f"unknown model config keys {unknown}; valid keys: {', '.join(names)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelError(f"incomplete model config {data!r}: {exc}") from None


class LSTMAutoencoder(nn.Module):
    """Encoder LSTM -> last hidden state -> decoder LSTM over the repeated latent -> linear to F.

    The decoder sees only the latent vector at every step (no teacher forcing), so everything it
    reconstructs must pass through the bottleneck.
    """

    def __init__(self, cfg: LSTMAutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # torch warns when dropout is set on a single-layer LSTM, where it does nothing.
        dropout = cfg.dropout if cfg.num_layers > 1 else 0.0
        self.encoder = nn.LSTM(cfg.n_features, cfg.hidden_size, cfg.num_layers, batch_first=True, dropout=dropout)
        self.decoder = nn.LSTM(cfg.hidden_size, cfg.hidden_size, cfg.num_layers, batch_first=True, dropout=dropout)
        self.output = nn.Linear(cfg.hidden_size, cfg.n_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier weights and zero biases: keeps early activations away from tanh/sigmoid saturation."""
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.xavier_uniform_(param)
            else:
                nn.init.zeros_(param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x[B, T, F]`` as ``recon[B, T, F]``."""
        _, (h, _) = self.encoder(x)
        latent = h[-1].unsqueeze(1).expand(-1, x.shape[1], -1)
        decoded, _ = self.decoder(latent)
        return self.output(decoded)



def window_errors(
    model: nn.Module, x: np.ndarray, batch_size: int = 1024, device: torch.device | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reconstruction errors of normalised windows: the anomaly score and its per-feature split.

    Batched so a large partition never needs one huge activation tensor; errors are computed in
    float32 even if the model was trained under bf16 autocast.

    Args:
        model: a trained autoencoder (put in eval mode here).
        x: normalised windows ``[N, T, F]``.
        batch_size: windows per forward pass.
        device: where to run; by default where the model's parameters are.

    Returns:
        ``(score[N], per_feature[N, F])``: mean squared error over steps and features, and per
        feature over steps, as float64.
    """
    if x.ndim != 3:
        raise ModelError(f"windows must have shape [N, T, F], got {x.shape}")
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}")
    device = device or next(model.parameters()).device
    scores: list[np.ndarray] = []
    per_feature: list[np.ndarray] = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(device)
            err = (model(batch).float() - batch) ** 2
            per_feature.append(err.mean(dim=1).cpu().numpy())
            scores.append(err.mean(dim=(1, 2)).cpu().numpy())
    if not scores:
        return np.zeros(0, dtype=np.float64), np.zeros((0, x.shape[2]), dtype=np.float64)
    return np.concatenate(scores).astype(np.float64), np.concatenate(per_feature).astype(np.float64)


def window_step_errors(
    model: nn.Module, x: np.ndarray, batch_size: int = 1024, device: torch.device | None = None
) -> np.ndarray:
    """Squared reconstruction error per window, step and feature ``[N, T, F]`` (float64).

    The full error tensor is what explanations need (which feature, at which step); the window
    score is its mean, identical to :func:`window_errors`.
    """
    if x.ndim != 3:
        raise ModelError(f"windows must have shape [N, T, F], got {x.shape}")
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}")
    device = device or next(model.parameters()).device
    out: list[np.ndarray] = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(device)
            out.append(((model(batch).float() - batch) ** 2).cpu().numpy())
    if not out:
        return np.zeros((0, *x.shape[1:]), dtype=np.float64)
    return np.concatenate(out).astype(np.float64)
