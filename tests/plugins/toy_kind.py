"""A fourth model kind written the way a user would: one module, one registration, no product code changed.

``step_linear`` reconstructs every step of a window through a linear bottleneck (a per-step PCA
learnt by gradient descent): far simpler than the LSTM autoencoder, but it goes through the same
plan, ranks, loop, calibration, bundle, scoring and report as the built-in kinds. Reusing
:class:`~loganomaly.models.window.WindowKind` gives it the ``sequences`` plan, the normaliser and
the feature-name checks; the kind itself is its network, task, calibration and explanation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from loganomaly.config import Config
from loganomaly.features.split import Shard, ShardPlan
from loganomaly.models.common import strict_from_dict
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.task import FitTask, TensorTask, float_tensor
from loganomaly.models.window import ModelBundle, WindowData, WindowKind, WindowWork
from loganomaly.runtime.collective import Collective


@dataclass
class StepLinearConfig:
    n_features: int
    bottleneck: int = 2
    bundle_kind: ClassVar[str] = "toy_step_linear"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> StepLinearConfig:
        return strict_from_dict(cls, data, "step_linear config")

    def build(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.n_features, self.bottleneck), nn.Linear(self.bottleneck, self.n_features))


class StepLinearTask(TensorTask):
    label = "step_linear"

    def __init__(self, data: WindowData, cfg: StepLinearConfig) -> None:
        super().__init__(float_tensor(data.train_x), data.order, float_tensor(data.val_x))
        self.cfg = cfg

    def model_config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def build_model(self) -> nn.Module:
        return self.cfg.build()

    def loss_sums(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_window = ((output - target) ** 2).mean(dim=(1, 2))
        return per_window.sum(dtype=torch.float64), torch.tensor(float(len(target)), device=output.device)


@dataclass
class StepLinearWork(WindowWork):
    def task(self, data: WindowData, comm: Collective) -> FitTask:
        return StepLinearTask(data, self.model_cfg)


def _errors(model: nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    with torch.inference_mode():
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        return ((model(batch).float() - batch) ** 2).mean(dim=1).cpu().numpy().astype(np.float64)  # [N, F]


class StepLinearKind(WindowKind):
    name = "step_linear"
    bundle_kind = StepLinearConfig.bundle_kind

    def model_config(self, cfg: Config, n_steps: int, n_features: int) -> StepLinearConfig:
        return StepLinearConfig(n_features=n_features, bottleneck=min(2, n_features))

    def config_from(self, data: dict[str, Any]) -> StepLinearConfig:
        return StepLinearConfig.from_dict(data)

    def work(self, train_plan: ShardPlan, val_plan: ShardPlan, model_cfg: Any, normaliser: Normaliser | None,
             cfg: Config) -> StepLinearWork:
        return StepLinearWork(train_plan, val_plan, model_cfg, normaliser)

    def calibrate(self, model: nn.Module, device: torch.device, val_x: np.ndarray, val_shard: Shard,
                  cfg: Config) -> tuple[float, dict[str, Any], np.ndarray]:
        scores = _errors(model, val_x, device).mean(axis=1)
        return float(np.quantile(scores, cfg.train.threshold_quantile)), {}, scores

    def score_windows(self, bundle: ModelBundle, model: nn.Module, device: torch.device, x: np.ndarray,
                      top_k: int, inference: Any = None) -> pd.DataFrame:
        per_feature = _errors(model, bundle.normaliser.transform(x), device)
        top = np.argsort(-per_feature, axis=1)[:, :top_k]
        names = [[bundle.feature_names[f] for f in row] for row in top]
        return pd.DataFrame({"score": per_feature.mean(axis=1), "top_features": names,
                             "explanation": ["largest error: " + ", ".join(n) for n in names]})


KIND = StepLinearKind()
