"""The supervised LSTM classifier: a model kind for windows whose anomalies are labelled.

A window of ``sequences`` is anomalous (class 1) when it holds an event labelled abnormal
(``sequences.n_abnormal > 0``: Zeek's ``label``, a CSV ``label`` column, a label file). Windows
``[B, T, F]`` go through an LSTM, its last hidden state through a linear layer to class logits.
The ranks count the classes of all training windows together so every rank weighs the loss alike
(``model.class_weights: balanced``: each class as much as the other, since attacks are rare); the
threshold on P(anomalous) is the best F1 on the labelled validation windows; a flagged window is
explained by occlusion. Training data with only one class are refused.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch.nn import functional as F

from loganomaly.config import Config
from loganomaly.errors import ConfigError, ModelError, StageInputError
from loganomaly.features.split import Shard, ShardPlan
from loganomaly.features.windows import signed_expm1
from loganomaly.models.common import check_dropout, check_positive_ints, forward_batches, strict_from_dict
from loganomaly.models.kind import Inference, TrainingPlan, scored_batch
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.task import FitTask, TensorTask, float_tensor
from loganomaly.models.window import ModelBundle, WindowData, WindowKind, WindowWork
from loganomaly.runtime.collective import Collective

if TYPE_CHECKING:
    from loganomaly.lake.tables import Lake

log = logging.getLogger(__name__)

__all__ = ["KIND", "ClassifierConfig", "ClassifierKind", "ClassifierTask", "LSTMClassifier",
           "balanced_class_weights", "calibrate_probability_threshold", "classifier_probabilities",
           "explain_classifier", "window_labels"]

#: Flagged windows explained per batch of occlusion passes (memory: this x F x T x F floats).
OCCLUSION_CHUNK = 128


@dataclass
class ClassifierConfig:
    """Shape of an :class:`LSTMClassifier`; stored with its weights to rebuild it.

    Attributes:
        n_features: F, per-step features of a window.
        n_classes: C, output classes (2 for normal/anomalous).
        hidden_size: LSTM width.
        num_layers: stacked LSTM layers.
        dropout: dropout between stacked layers (ignored by torch for one layer).
        bidirectional: read windows in both directions (the seed article's model is not).
    """

    n_features: int
    n_classes: int
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False

    #: ``kind`` of the bundle this model is saved in.
    bundle_kind: ClassVar[str] = "lstm_classifier"

    def __post_init__(self) -> None:
        check_positive_ints(self, ("n_features", "n_classes", "hidden_size", "num_layers"), "classifier config")
        if self.n_classes < 2:
            raise ModelError(f"classifier config n_classes must be >= 2, got {self.n_classes}")
        check_dropout(self.dropout, "classifier config")
        if not isinstance(self.bidirectional, bool):
            raise ModelError(f"classifier config bidirectional must be a boolean, got {self.bidirectional!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (checkpoints, bundles)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ClassifierConfig:
        """Rebuild from :meth:`to_dict`; an unknown or missing key is a ModelError, never ignored."""
        return strict_from_dict(cls, data, "classifier config")

    def build(self) -> LSTMClassifier:
        """A freshly initialised network of this shape."""
        return LSTMClassifier(self)


class LSTMClassifier(nn.Module):
    """LSTM over ``[B, T, F]`` -> last hidden state (both directions if bidirectional) -> linear to logits.

    The cell is the standard LSTM: sigmoid gates, tanh on the candidate cell state and on the
    output, i.e. the "tanh LSTM" of the seed article.
    """

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dropout = cfg.dropout if cfg.num_layers > 1 else 0.0
        self.lstm = nn.LSTM(cfg.n_features, cfg.hidden_size, cfg.num_layers, batch_first=True, dropout=dropout,
                            bidirectional=cfg.bidirectional)
        directions = 2 if cfg.bidirectional else 1
        self.output = nn.Linear(cfg.hidden_size * directions, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Windows ``x[B, T, F]`` to class logits ``[B, C]``."""
        _, (h, _) = self.lstm(x)
        # h is [layers * directions, B, H]; the last layer's directions are its last rows.
        last = torch.cat([h[-2], h[-1]], dim=1) if self.cfg.bidirectional else h[-1]
        return self.output(last)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> list[float]:
    """``n / (C * count_c)`` per class, so every class weighs as much in the loss as a balanced set.

    A class absent from ``y`` gets weight 1.0 (it contributes no loss anyway).
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)[:n_classes]
    n = float(counts.sum())
    return [n / (n_classes * c) if c else 1.0 for c in counts]


class ClassifierTask(TensorTask):
    """The classifier's part of the loop: windows ``[N, T, F]`` to classes, weighted cross-entropy."""

    label = "classifier"

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, order: Callable[[int], np.ndarray],
                 val_x: np.ndarray, val_y: np.ndarray, cfg: ClassifierConfig,
                 class_weights: Sequence[float] | None) -> None:
        super().__init__(float_tensor(train_x), order, float_tensor(val_x),
                         torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
                         torch.from_numpy(np.asarray(val_y, dtype=np.int64)))
        self.cfg = cfg
        self.weights = None if class_weights is None else torch.tensor([float(w) for w in class_weights])

    def model_config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def build_model(self) -> nn.Module:
        return LSTMClassifier(self.cfg)

    def to(self, device: torch.device) -> None:
        super().to(device)
        if self.weights is not None:
            self.weights = self.weights.to(device)

    def loss_sums(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Weighted sum and the sum of the weights: the same mean as F.cross_entropy(weight=...).
        total = F.cross_entropy(output, target, weight=self.weights, reduction="sum")
        if self.weights is None:
            return total, torch.tensor(float(len(target)), device=output.device)
        return total, self.weights[target].sum()


def classifier_probabilities(
    model: LSTMClassifier, x: np.ndarray, batch_size: int = 1024, device: torch.device | None = None,
    bf16: bool = False,
) -> np.ndarray:
    """Class probabilities ``[N, C]`` (float64) of windows ``x[N, T, F]``, computed in batches.

    The probability of the anomalous class is the score to threshold or rank. ``bf16``: autocast
    the forward pass (CUDA only; float32 elsewhere).
    """
    if x.ndim != 3 or x.shape[2] != model.cfg.n_features:
        raise ModelError(f"windows have shape {x.shape}; expected [N, T, {model.cfg.n_features}]")
    out = [torch.softmax(logits, dim=1).cpu().numpy()
           for _, _, logits in forward_batches(model, x, batch_size, device, bf16)]
    if not out:
        return np.zeros((0, model.cfg.n_classes), dtype=np.float64)
    return np.concatenate(out).astype(np.float64)


def window_labels(shard: Shard) -> np.ndarray:
    """Class per window: 1 when it holds an abnormal-labelled event, else 0.

    Raises:
        StageInputError: the shard carries no labels.
    """
    if shard.abnormal is None:
        raise StageInputError("sequences has no n_abnormal column (or train.reader=petastorm, which does not read "
                              "it): the classifier needs labelled windows from featurize with labels")
    return (shard.abnormal > 0).astype(np.int64)


def calibrate_probability_threshold(probability: np.ndarray, labels: np.ndarray) -> float:
    """The classifier's threshold: the best F1 on labelled validation windows, else 0.5.

    The windows with ``probability > threshold`` are flagged; the threshold lies halfway between
    the lowest flagged probability and the next one, so nearby scores fall on the side they fell
    on in validation. Without both classes in validation there is nothing to choose on, and 0.5
    (the decision the softmax was trained for) is kept.

    Raises:
        ModelError: no windows, mismatched lengths, or probabilities outside [0, 1].
    """
    p = np.asarray(probability, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if p.size == 0 or p.size != y.size:
        raise ModelError(f"need as many labels as probabilities (> 0), got {p.size} and {y.size}")
    if not ((p >= 0) & (p <= 1)).all():
        raise ModelError("probabilities must lie in [0, 1]")
    if y.all() or not y.any():
        return 0.5
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    # Flagging the top k windows (ties kept together: cut only where the probability changes).
    cuts = np.flatnonzero(np.r_[ps[1:] < ps[:-1], True])
    tp = np.cumsum(ys)[cuts]
    f1 = 2 * tp / (cuts + 1 + y.sum())
    best = int(cuts[int(np.argmax(f1))])
    below = ps[best + 1] if best + 1 < len(ps) else 0.0
    return float((ps[best] + below) / 2)


def _classifier_task(data: WindowData, model_cfg: ClassifierConfig, comm: Collective, balanced: bool) -> ClassifierTask:
    y, val_y = window_labels(data.shard), window_labels(data.val_shard)
    counts = comm.sum(torch.from_numpy(np.bincount(y, minlength=2)[:2].astype(np.int64)))
    if int(counts.min()) == 0:
        raise StageInputError(f"the classifier needs normal and anomalous training windows, got class counts "
                              f"{counts.tolist()}; label more data or use model.kind=autoencoder")
    weights = [float(counts.sum()) / (2.0 * float(c)) for c in counts] if balanced else None
    if comm.rank == 0:
        log.info("classifier: %d normal and %d anomalous training windows; class weights %s",
                 int(counts[0]), int(counts[1]), weights)
    return ClassifierTask(data.train_x, y, data.order, data.val_x, val_y, model_cfg, weights)


def explain_classifier(
    model: torch.nn.Module,
    device: torch.device,
    x: np.ndarray,
    normalised: np.ndarray,
    probability: np.ndarray,
    mean: np.ndarray,
    names: list[str],
    top_k: int,
    log1p: bool = True,
    columns: np.ndarray | None = None,
) -> tuple[list[list[str]], list[str]]:
    """Name the features without which the classifier would find a window least anomalous.

    Occlusion: each feature in turn is set to its training mean at every step (0 once normalised)
    and the window is classified again; the features whose removal lowers the probability of the
    anomalous class most explain it. It costs one forward pass per feature and window, so callers
    pass only the windows they flag.

    Args:
        x: raw windows ``[N, T, F]``; normalised: the same, normalised.
        probability: the anomalous-class probability of each window ``[N]``.
        mean: per-feature training mean (raw units of ``x``) ``[F]``.
        columns: the feature column of each model input (``Normaliser.kept``: the model may see
            fewer features than ``x`` holds); None: the same columns.
    """
    assert isinstance(model, LSTMClassifier)
    n, steps, n_feat = normalised.shape
    if n == 0:
        return [], []
    drop = np.empty((n, n_feat), dtype=np.float64)
    idx = np.arange(n_feat)
    # A bounded number of windows at a time: the occluded copies are F times the windows.
    for lo in range(0, n, OCCLUSION_CHUNK):
        part = normalised[lo : lo + OCCLUSION_CHUNK]
        occluded = np.repeat(part[:, None], n_feat, axis=1)  # [n, F(occluded), T, F]
        occluded[:, idx, :, idx] = 0.0
        flat = occluded.reshape(len(part) * n_feat, steps, n_feat)
        without = classifier_probabilities(model, flat, device=device)[:, 1].reshape(len(part), n_feat)
        drop[lo : lo + len(part)] = probability[lo : lo + len(part), None] - without
    order = np.argsort(-drop, axis=1)[:, :top_k]
    worst_step = np.abs(normalised).argmax(axis=1)  # [N, F]
    column = np.arange(n_feat) if columns is None else np.asarray(columns)
    undo = signed_expm1 if log1p else (lambda v: v)
    tops, texts = [], []
    for i, chosen in enumerate(order):
        tops.append([names[column[f]] for f in chosen])
        parts = []
        for f in chosen:
            step, c = int(worst_step[i, f]), int(column[f])
            parts.append(f"{names[c]}={float(undo(x[i, step, c])):.3g} at step {step + 1} "
                         f"(normal ~{float(undo(mean[c])):.3g}; P(anomalous) {probability[i]:.2f} -> "
                         f"{probability[i] - drop[i, f]:.2f} without it)")
        texts.append("; ".join(parts))
    return tops, texts


@dataclass
class ClassifierWork(WindowWork):
    """The classifier's rank work: its windows, and whether to balance the classes in the loss."""

    balanced: bool = True
    needs_labels = True

    def task(self, data: WindowData, comm: Collective) -> FitTask:
        return _classifier_task(data, self.model_cfg, comm, self.balanced)


class ClassifierKind(WindowKind):
    """``model.kind=classifier``."""

    name = "classifier"
    bundle_kind = ClassifierConfig.bundle_kind
    feature_input_weights = ("lstm.weight_ih_l0", "lstm.weight_ih_l0_reverse")

    def plan(self, spark: Any, cfg: Config, lake: Lake, model_dir: Path) -> TrainingPlan:
        """As every window kind, after refusing settings that would leave it one class.

        Raises:
            ConfigError: ``train.normal_only`` (it would drop the anomalous windows it learns from).
        """
        if cfg.train.normal_only:
            raise ConfigError("model.kind=classifier learns from both classes; set train.normal_only=false")
        return super().plan(spark, cfg, lake, model_dir)

    def model_config(self, cfg: Config, n_steps: int, n_features: int) -> ClassifierConfig:
        return ClassifierConfig(n_features=n_features, n_classes=2, hidden_size=cfg.model.hidden_size,
                                num_layers=cfg.model.num_layers, dropout=cfg.model.dropout)

    def config_from(self, data: dict[str, Any]) -> ClassifierConfig:
        return ClassifierConfig.from_dict(data)

    def work(self, train_plan: ShardPlan, val_plan: ShardPlan, model_cfg: Any, normaliser: Normaliser | None,
             cfg: Config) -> ClassifierWork:
        return ClassifierWork(train_plan, val_plan, model_cfg, normaliser, balanced=cfg.model.class_weights == "balanced")

    def calibrate(self, model: nn.Module, device: torch.device, val_x: np.ndarray, val_shard: Shard,
                  cfg: Config) -> tuple[float, dict[str, Any], np.ndarray]:
        assert isinstance(model, LSTMClassifier)
        val_scores = classifier_probabilities(model, val_x, device=device)[:, 1]
        val_y = window_labels(val_shard)
        threshold = calibrate_probability_threshold(val_scores, val_y)
        flagged = val_scores > threshold
        metrics = {
            "val_anomalous_windows": int(val_y.sum()),
            "val_precision": float((flagged & (val_y == 1)).sum() / max(int(flagged.sum()), 1)),
            "val_recall": float((flagged & (val_y == 1)).sum() / max(int(val_y.sum()), 1)),
        }
        return threshold, metrics, val_scores

    def score_windows(self, bundle: ModelBundle, model: nn.Module, device: torch.device, x: np.ndarray,
                      top_k: int, inference: Inference | None = None) -> pa.RecordBatch:
        """P(anomalous) of every window; only windows above the threshold are explained (by occlusion)."""
        assert isinstance(model, LSTMClassifier)
        inference = inference or Inference()
        # With peer groups: each window standardised by its group's normaliser (one probability
        # threshold for all: a probability means the same in every group).
        groups = bundle.peers.groups_of(x) if bundle.peers is not None else None
        normalised = bundle.normalise(x, groups)
        mean = np.asarray(bundle.normaliser.mean, dtype=np.float64)
        log1p = bundle.features.get("transform", "log1p") == "log1p"
        probability = classifier_probabilities(model, normalised, inference.batch_size, device, inference.bf16)[:, 1]
        flagged = np.flatnonzero(probability > bundle.threshold)
        tops: list[list[str]] = []
        texts: list[str] = []
        if len(flagged):
            prefixes = (bundle.judged_against(x[flagged], groups[flagged], np.full(len(flagged), bundle.threshold))
                        if groups is not None else [""] * len(flagged))
            found_tops, found_texts = explain_classifier(model, device, x[flagged], normalised[flagged],
                                                         probability[flagged], mean, bundle.feature_names, top_k, log1p,
                                                         bundle.normaliser.kept())
            tops = list(found_tops)
            texts = [f"{prefix}: {text}" if prefix else text
                     for prefix, text in zip(prefixes, found_texts, strict=True)]
        return scored_batch(probability, flagged, tops, texts)


KIND = ClassifierKind()
