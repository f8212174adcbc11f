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
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from loganomaly.config import Config
from loganomaly.errors import ModelError
from loganomaly.features.split import Shard, ShardPlan, Split
from loganomaly.features.windows import (
    CATEGORY_PREFIX,
    INDICATOR_UNITS,
    NOVELTY_UNITS,
    OTHER_CATEGORY,
    RELATIVE_PREFIX,
    relative_baseline,
    signed_expm1,
)
from loganomaly.models.common import check_dropout, check_positive_ints, forward_batches, strict_from_dict
from loganomaly.models.indicators import INDICATOR_TEXT, Indicators
from loganomaly.models.kind import Inference, scored_batch
from loganomaly.models.new_errors import NewErrors, warm_mask
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.screening import screened_budget
from loganomaly.models.task import FitTask, TensorTask, float_tensor
from loganomaly.models.unseen import UnseenShare, combined_scores, share_text
from loganomaly.models.window import (
    ModelBundle,
    Period,
    WindowData,
    WindowKind,
    WindowWork,
    alert_budget,
)
from loganomaly.runtime.collective import Collective

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
        members: independently initialised autoencoders of this shape trained side by side on the
            same batches; a window's error is the mean of theirs (``model.members``). 1: one network,
            whose weights keep the names every earlier bundle has.
    """

    n_features: int
    window_steps: int
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    members: int = 1

    #: ``kind`` of the bundle this model is saved in (the only kind before DeepLog).
    bundle_kind: ClassVar[str] = "lstm_autoencoder"

    def __post_init__(self) -> None:
        check_positive_ints(self, ("n_features", "window_steps", "hidden_size", "num_layers", "members"),
                            "model config")
        check_dropout(self.dropout, "model config")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (checkpoints, bundles).

        ``members`` is written only when above 1: a one-network bundle keeps the ``model.json``
        (and so the version hash) it had before the setting existed, and older code still reads it.
        """
        data = dataclasses.asdict(self)
        if data["members"] == 1:
            del data["members"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LSTMAutoencoderConfig:
        """Rebuild from :meth:`to_dict`; an unknown or missing key is a ModelError, never ignored.

        Unknown keys are refused because a bundle written by a newer model version could carry a
        setting this code would silently drop, and then build a different network.
        """
        return strict_from_dict(cls, data, "model config")

    def build(self) -> LSTMAutoencoder:
        """A freshly initialised network of this shape."""
        return LSTMAutoencoder(self)


def _reconstruct(encoder: nn.LSTM, decoder: nn.LSTM, output: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    _, (h, _) = encoder(x)
    latent = h[-1].unsqueeze(1).expand(-1, x.shape[1], -1)
    decoded, _ = decoder(latent)
    return output(decoded)


class _Reconstructor(nn.Module):
    """One encoder LSTM -> last hidden state -> decoder LSTM over the repeated latent -> linear to F."""

    def __init__(self, cfg: LSTMAutoencoderConfig) -> None:
        super().__init__()
        # torch warns when dropout is set on a single-layer LSTM, where it does nothing.
        dropout = cfg.dropout if cfg.num_layers > 1 else 0.0
        self.encoder = nn.LSTM(cfg.n_features, cfg.hidden_size, cfg.num_layers, batch_first=True, dropout=dropout)
        self.decoder = nn.LSTM(cfg.hidden_size, cfg.hidden_size, cfg.num_layers, batch_first=True, dropout=dropout)
        self.output = nn.Linear(cfg.hidden_size, cfg.n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _reconstruct(self.encoder, self.decoder, self.output, x)


class LSTMAutoencoder(nn.Module):
    """Encoder LSTM -> last hidden state -> decoder LSTM over the repeated latent -> linear to F.

    The decoder sees only the latent vector at every step (no teacher forcing), so everything it
    reconstructs must pass through the bottleneck.

    With ``members`` K > 1 the module holds K such networks, each initialised on its own, and
    returns all K reconstructions ``[K, B, T, F]``; :func:`squared_errors` averages their squared
    errors. Each member's gradient comes from its own error only, so they train as K separate
    models on the same batches. Why: one network's ranking and threshold move with its seed, and a
    nightly retrain is a new seed; the mean of several moves less (NSL-KDD over three seeds:
    validation ROC-AUC sd 0.0002 with three members against 0.0005 with one, at the same mean;
    README "Features and models").
    """

    def __init__(self, cfg: LSTMAutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.members == 1:
            # The single network's layers sit on the module itself: the weight names of every
            # bundle written before ``members`` existed.
            one = _Reconstructor(cfg)
            self.encoder, self.decoder, self.output = one.encoder, one.decoder, one.output
        else:
            self.members = nn.ModuleList(_Reconstructor(cfg) for _ in range(cfg.members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x[B, T, F]`` as ``recon[B, T, F]``, or ``[K, B, T, F]`` with K members."""
        if self.cfg.members > 1:
            return torch.stack([member(x) for member in self.members])
        return _reconstruct(self.encoder, self.decoder, self.output, x)


def squared_errors(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared reconstruction error ``[B, T, F]`` of ``x``: the members' mean where ``recon`` holds several."""
    err = (recon - x) ** 2
    return err.mean(dim=0) if recon.dim() == x.dim() + 1 else err


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
    scores: list[np.ndarray] = []
    per_feature: list[np.ndarray] = []
    for _, batch, recon in forward_batches(model, x, batch_size, device):
        err = squared_errors(recon, batch)
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
    out = [squared_errors(recon, batch).cpu().numpy() for _, batch, recon in forward_batches(model, x, batch_size, device)]
    if not out:
        return np.zeros((0, *x.shape[1:]), dtype=np.float64)
    return np.concatenate(out).astype(np.float64)


def flagged_step_errors(
    model: nn.Module,
    x: np.ndarray,
    threshold: float | np.ndarray,
    batch_size: int = 1024,
    device: torch.device | None = None,
    bf16: bool = False,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window scores, and the per-step errors of only the windows scoring above ``threshold``.

    What scoring needs: every window's score (as :func:`window_errors`) but the full error tensor
    (which feature, at which step) only for the windows it explains. The score is reduced on the
    device, so unflagged windows' errors never leave it nor become float64 arrays.

    Args:
        x: normalised windows ``[N, T, F]``.
        threshold: windows scoring above it are returned with their errors; one per window
            (``[N]``, e.g. each window's peer-group threshold) or one for all.
        bf16: bf16 autocast of the forward pass (CUDA only; float32 elsewhere).
        weights: per-feature weights of the squared errors in the score (``model.error_scale``,
            :func:`error_weights`); None: the plain mean. The returned errors are unweighted.

    Returns:
        ``(score[N], flagged[K], per_step[K, T, F])``: float64 scores, the indices of the windows
        above ``threshold`` in order, and their squared errors (float64).
    """
    scores: list[np.ndarray] = []
    flagged: list[np.ndarray] = []
    errors: list[np.ndarray] = []
    per_window = np.ndim(threshold) > 0
    scale: torch.Tensor | None = None
    for i, batch, recon in forward_batches(model, x, batch_size, device, bf16):
        err = squared_errors(recon, batch)
        if weights is None:
            score = err.double().mean(dim=(1, 2))
        else:
            if scale is None:
                scale = torch.from_numpy(np.asarray(weights, dtype=np.float64)).to(batch.device)
            score = (err.double() * scale).mean(dim=(1, 2))
        limit = (torch.from_numpy(np.asarray(threshold, dtype=np.float64)[i : i + batch_size]).to(batch.device)
                 if per_window else float(threshold))
        above = torch.nonzero(score > limit).squeeze(1)
        scores.append(score.cpu().numpy())
        if len(above):
            flagged.append(above.cpu().numpy() + i)
            errors.append(err[above].cpu().numpy().astype(np.float64))
    if not scores:
        return np.zeros(0, np.float64), np.zeros(0, np.int64), np.zeros((0, *x.shape[1:]), np.float64)
    if not flagged:
        return np.concatenate(scores), np.zeros(0, np.int64), np.zeros((0, *x.shape[1:]), np.float64)
    return np.concatenate(scores), np.concatenate(flagged), np.concatenate(errors)


class AutoencoderTask(TensorTask):
    """The autoencoder's part of the loop: normalised windows ``[N, T, F]`` reconstruct themselves."""

    label = "autoencoder"
    #: Xavier weights and zero biases keep early activations away from tanh/sigmoid saturation; the
    #: autoencoder has always trained from them (``train.init: auto``).
    default_init = "xavier"

    def __init__(self, train_x: np.ndarray, order: Callable[[int], np.ndarray], val_x: np.ndarray,
                 model_cfg: LSTMAutoencoderConfig) -> None:
        super().__init__(float_tensor(train_x), order, float_tensor(val_x))
        self.model_cfg = model_cfg

    def model_config(self) -> dict[str, Any]:
        return self.model_cfg.to_dict()

    def build_model(self) -> nn.Module:
        return LSTMAutoencoder(self.model_cfg)

    def loss_sums(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_window = squared_errors(output, target).mean(dim=(1, 2))
        return per_window.sum(dtype=torch.float64), torch.tensor(float(len(target)), device=output.device)


#: Robust floor of the threshold: median + this many robust standard deviations (1.4826 * MAD).
THRESHOLD_MAD_FLOOR = 3.0
#: The log-normal tail may extrapolate at most this factor beyond the largest validation score.
THRESHOLD_TAIL_CAP = 2.0


def calibrate_threshold(val_scores: np.ndarray, quantile: float) -> float:
    """Threshold for a false-alarm rate of about ``1 - quantile`` on normal data like validation.

    The larger of three estimates of the ``quantile`` of normal scores:

    * the empirical quantile of the validation scores;
    * the same quantile of a log-normal fitted to them. Reconstruction errors are positive and
      right-skewed; with a few hundred validation windows the empirical 0.995 quantile is just the
      largest score or two and badly underestimates the tail that thousands of scored windows
      will sample, so the fitted tail extrapolates where the sample runs out;
    * ``median + 3 * 1.4826 * MAD``, a floor for tiny validation sets where both are unstable.

    The log-normal estimate is capped at :data:`THRESHOLD_TAIL_CAP` times the largest validation
    score: when validation scores are not one skewed hump (windows of rare but normal events
    score orders of magnitude above quiet ones, as on BGL), the fitted spread explodes and the
    "tail" lands far beyond anything normal ever scored, which would silence the detector.

    Raises:
        ModelError: no scores, non-finite scores, or a quantile outside (0, 1).
    """
    scores = np.asarray(val_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ModelError("no validation scores to calibrate a threshold")
    if not np.isfinite(scores).all():
        raise ModelError("validation scores contain NaN or infinity; the model did not train properly")
    if not 0.0 < quantile < 1.0:
        raise ModelError(f"threshold quantile must be in (0, 1), got {quantile}")
    median = float(np.median(scores))
    mad = float(np.median(np.abs(scores - median)))
    candidates = [float(np.quantile(scores, quantile)), median + THRESHOLD_MAD_FLOOR * 1.4826 * mad]
    positive = scores[scores > 0]
    if positive.size >= 2:
        logs = np.log(positive)
        z = statistics.NormalDist().inv_cdf(quantile)
        tail = float(np.exp(logs.mean() + z * logs.std(ddof=1)))
        candidates.append(min(tail, THRESHOLD_TAIL_CAP * float(scores.max())))
    return max(candidates)


def screened_threshold(val_scores: np.ndarray, cfg: Config, previous_flagged: np.ndarray | None = None,
                       budget: float | None = None) -> tuple[float, dict[str, Any]]:
    """:func:`calibrate_threshold` at the alert budget (``budget``, else :func:`alert_budget`) on the
    screened validation scores.

    Screening (:func:`loganomaly.models.screening.screened_budget`) leaves out suspected
    incidents (log score beyond ``train.screen_mad_k`` robust standard deviations) and the windows
    a previous model flagged beyond its budget's worth (``previous_flagged``), and caps the scores
    of the flags within it. Returns the threshold and the screening record (counts, and ``keep``,
    the mask of the windows that set it).
    """
    budget = alert_budget(cfg) if budget is None else budget
    keep, values, screening = screened_budget(val_scores, budget, cfg.train.screen_mad_k, previous_flagged,
                                              cfg.train.screen_previous_max_share)
    threshold = calibrate_threshold(values[keep], 1.0 - screening.budget)
    record = screening.as_dict()
    record["mad_k"] = cfg.train.screen_mad_k
    record["keep"] = keep
    if screening.screened_robust or screening.screened_previous or screening.capped_previous:
        log.info("calibration: of %d validation windows, %d beyond the robust rule and %d flagged by the previous "
                 "model beyond its budget left out, %d of its flags kept with capped scores; threshold %.5g",
                 screening.validation_windows, screening.screened_robust, screening.screened_previous,
                 screening.capped_previous, threshold)
    return threshold, record


#: ``model.error_scale: typical`` divides each feature's error by its typical validation error, at
#: least this (normalised units squared: a residual of a thousandth of a standard deviation), so a
#: feature reconstructed exactly in validation cannot weigh without bound. Observed typical errors
#: of features that never varied in training are 6e-5 to 6e-4 (README "Detection quality").
ERROR_SCALE_FLOOR = 1e-6


def error_weights(typical: np.ndarray) -> np.ndarray:
    """Per-feature weights of ``model.error_scale: typical``: 1 / typical error (floored)."""
    return 1.0 / np.maximum(np.asarray(typical, dtype=np.float64), ERROR_SCALE_FLOOR)


def stored_weights(bundle: ModelBundle) -> np.ndarray | None:
    """The bundle's per-feature error weights, or None (the plain mean: every bundle without them)."""
    weights = bundle.metrics.get("error_weights")
    return None if weights is None else np.asarray(weights, dtype=np.float64)


#: Typical per-feature errors below this are floored when explaining: a feature that never varied
#: in training has ~0 typical error, and the ratio to it would say nothing more than "unusual".
TYPICAL_ERROR_FLOOR = 0.05


def explain(
    x: np.ndarray,
    per_step_error: np.ndarray,
    typical: np.ndarray,
    mean: np.ndarray,
    names: list[str],
    top_k: int,
    log1p: bool = True,
    prefixes: list[str] | None = None,
    ignored: Sequence[int] = (),
) -> tuple[list[list[str]], list[str]]:
    """Name the features whose error most exceeds their typical (validation) error, in user units.

    Ranking is by ``error / typical error``; the text shows what a person can check against the
    raw lines: the feature's value at the step where it was worst next to its training mean, both
    undone from log1p (``failed_connections=240 at 08:35 step (normal ~0.2)``).

    Args:
        x: raw windows ``[N, T, F]`` (as stored in ``sequences``).
        per_step_error: squared reconstruction error ``[N, T, F]``.
        typical: per-feature mean error on validation windows ``[F]``.
        mean: per-feature training mean (raw units of ``x``) ``[F]``, or one per window ``[N, F]``
            (each window's peer-group normaliser).
        names: feature names.
        top_k: features named per window.
        log1p: whether features are stored as log1p (then values are shown as expm1).
        prefixes: per window, text put first (which peer group and baseline judged it).
        ignored: feature columns the model does not see (never named: their error says nothing).

    Entity features read in their own units: a novelty count as ``3 new destination ports (first
    seen)``, a relative feature as the value against the baseline it was compared with
    (``rel:inbound_connections: 12 vs baseline 2``, the baseline being the entity's trailing one
    or its peer group's on a cold start).
    """
    per_feature = per_step_error.mean(axis=1)
    # Floor: a feature that never varied in training (errors on a quiet day) has ~0 typical
    # error; the ratio would be astronomic and say nothing more than "unusual".
    ratio = per_feature / np.maximum(typical, TYPICAL_ERROR_FLOOR)
    if len(ignored):
        ratio[:, list(ignored)] = -np.inf
        top_k = min(top_k, ratio.shape[1] - len(set(ignored)))
    order = np.argsort(-ratio, axis=1)[:, :top_k]  # [N, K]
    rows = np.arange(len(order))[:, None]
    step = per_step_error.argmax(axis=1)[rows, order]  # [N, K]: each named feature's worst step
    undo = signed_expm1 if log1p else (lambda v: v)
    # Gathered and undone as arrays; only the formatting is per named feature.
    observed = undo(x[rows, step, order]).tolist()
    means = np.asarray(mean, dtype=np.float64)
    normal = undo(means[None, :] if means.ndim == 1 else means)
    normal = np.broadcast_to(normal, (len(x), x.shape[2]))
    # rel:<f> is log1p(f) - log1p(baseline): with f's own value beside it the baseline reads back.
    base_of = {i: names.index(n[len(RELATIVE_PREFIX):]) for i, n in enumerate(names)
               if n.startswith(RELATIVE_PREFIX) and n[len(RELATIVE_PREFIX):] in names}
    tops = [[names[f] for f in idx] for idx in order.tolist()]

    def text(n: int, f: int, o: float, s: int) -> str:
        name = names[f]
        if name in NOVELTY_UNITS:
            return f"{o:.3g} {NOVELTY_UNITS[name]} (first seen) at step {s + 1}"
        if name in INDICATOR_UNITS:
            return f"{o:.3g} {INDICATOR_UNITS[name]} at step {s + 1} (normal ~{normal[n, f]:.3g})"
        if name.startswith(CATEGORY_PREFIX):
            field, _, category = name[len(CATEGORY_PREFIX):].partition("=")
            what = f"another {field}" if category == OTHER_CATEGORY else f"{field}={category}"
            return f"{o:.3g} events with {what} at step {s + 1} (normal ~{normal[n, f]:.3g})"
        if f in base_of and log1p:
            b = base_of[f]
            value = float(signed_expm1(np.asarray(x[n, s, b])))
            baseline = float(relative_baseline(x[n, s, b], x[n, s, f]))
            return f"{names[b]} {value:.3g} vs baseline {baseline:.3g} at step {s + 1}"
        if name.startswith(RELATIVE_PREFIX) and log1p:
            # The level itself is not a feature (features.metric_levels: false): only the ratio reads back.
            ratio = float(np.exp(x[n, s, f]))
            return f"{name[len(RELATIVE_PREFIX):]} at {ratio:.3g}x its baseline (as 1 + value) at step {s + 1}"
        return f"{name}={o:.3g} at step {s + 1} (normal ~{normal[n, f]:.3g})"

    texts = [
        "; ".join(text(n, f, o, s) for f, o, s in zip(idx, obs, st, strict=True))
        for n, (idx, obs, st) in enumerate(zip(order.tolist(), observed, step.tolist(), strict=True))
    ]
    if prefixes is not None:
        texts = [f"{p}: {t}" if p else t for p, t in zip(prefixes, texts, strict=True)]
    return tops, texts


@dataclass
class AutoencoderWork(WindowWork):
    """The autoencoder's rank work: its windows are their own targets."""

    def task(self, data: WindowData, comm: Collective) -> FitTask:
        return AutoencoderTask(data.train_x, data.order, data.val_x, self.model_cfg)


class AutoencoderKind(WindowKind):
    """``model.kind=autoencoder`` (the default): reconstruction error of normal windows.

    The threshold is calibrated on validation normal windows (:func:`calibrate_threshold`); a window
    is explained by the features whose error most exceeds their typical validation error.
    """

    name = "autoencoder"
    bundle_kind = LSTMAutoencoderConfig.bundle_kind
    feature_input_weights = ("encoder.weight_ih_l0",)
    feature_output_weights = ("output.weight", "output.bias")

    def model_config(self, cfg: Config, n_steps: int, n_features: int) -> LSTMAutoencoderConfig:
        return LSTMAutoencoderConfig(n_features=n_features, window_steps=n_steps, hidden_size=cfg.model.hidden_size,
                                     num_layers=cfg.model.num_layers, dropout=cfg.model.dropout,
                                     members=cfg.model.members)

    def config_from(self, data: dict[str, Any]) -> LSTMAutoencoderConfig:
        return LSTMAutoencoderConfig.from_dict(data)

    def work(self, train_plan: ShardPlan, val_plan: ShardPlan, model_cfg: Any, normaliser: Normaliser | None,
             cfg: Config) -> AutoencoderWork:
        return AutoencoderWork(train_plan, val_plan, model_cfg, normaliser)

    stable_threshold = True

    def calibrate(self, model: nn.Module, device: torch.device, val_x: np.ndarray, val_shard: Shard,
                  cfg: Config) -> tuple[float, dict[str, Any], np.ndarray]:
        threshold, metrics, scores = self.calibrate_screened(model, device, val_x, val_shard, cfg, None)
        metrics.pop("_keep", None)  # the screened-window mask is for training's own unseen-share step
        return threshold, metrics, scores

    def calibrate_screened(self, model: nn.Module, device: torch.device, val_x: np.ndarray, val_shard: Shard,
                           cfg: Config, previous_flagged: np.ndarray | None,
                           period: Period | None = None) -> tuple[float, dict[str, Any], np.ndarray]:
        """The budget threshold on the screened validation windows (:func:`screened_threshold`).

        ``period`` is (entity, window start) of the training period's windows, over which a daily
        budget (``train.alerts_per_entity_day``) becomes a share; without it the validation
        windows' own (they are slices of each day, so a budget comes out smaller than asked).
        """
        val_scores, val_feature_errors = window_errors(model, val_x, device=device)
        period = period if period is not None else Period(val_shard.entity, val_shard.window_start)
        budget = period.budget(cfg)
        threshold, screening = screened_threshold(val_scores, cfg, previous_flagged, budget)
        keep = screening.pop("keep")
        weights = None
        if cfg.model.error_scale == "typical":
            # The typical errors of the windows the plain score keeps (suspected incidents left
            # out) set the weights; the weighted scores are then screened and calibrated afresh.
            weights = error_weights(val_feature_errors[keep].mean(axis=0))
            val_scores = (val_feature_errors * weights).mean(axis=1)
            threshold, screening = screened_threshold(val_scores, cfg, previous_flagged, budget)
            keep = screening.pop("keep")
        # Typical per-feature error on normal windows (the screened ones): scoring explains a
        # window by how many times its error exceeds this.
        typical = val_feature_errors[keep].mean(axis=0)
        # "_keep" is for calibrate_unseen (same screened windows); finish pops it before the bundle.
        metrics: dict[str, Any] = {"val_feature_error": [float(v) for v in typical], "screening": screening,
                                   "_keep": keep}
        if weights is not None:
            metrics["error_weights"] = [float(v) for v in weights]
        if cfg.train.alerts_per_entity_day is not None:
            metrics["alert_rate"] = {
                "alerts_per_entity_day": cfg.train.alerts_per_entity_day,
                "windows_per_entity_day": period.density(),
                "share": budget,
            }
        return threshold, metrics, val_scores

    def calibrate_unseen(self, val_raw: np.ndarray, normaliser: Normaliser, names: list[str],
                         keep: np.ndarray | None, cfg: Config, budget: float | None = None) -> UnseenShare | None:
        """With ``model.unseen_share``: the share threshold on the screened validation windows, at the alert budget."""
        if not cfg.model.unseen_share:
            return None
        mask = np.ones(len(val_raw), dtype=bool) if keep is None else keep
        return UnseenShare.calibrate(val_raw, names, normaliser.mean, mask, alert_budget(cfg) if budget is None else budget,
                                     cfg.model.unseen_share_min)

    def calibrate_new_errors(self, val_raw: np.ndarray, starts_us: np.ndarray, names: list[str], split: Split,
                             cfg: Config, budget: float | None = None) -> NewErrors | None:
        """With ``model.new_errors``: the count threshold on the validation windows after the warm-up.

        Not on the screened windows (see :mod:`loganomaly.models.new_errors`): a window with a new
        kind of error has a large reconstruction error too, and leaving such windows out would
        read normal operation as bringing fewer new errors than it does.
        """
        if not cfg.model.new_errors:
            return None
        keep = warm_mask(starts_us, split.train_from, split.train_until, cfg.model.new_errors_warmup)
        return NewErrors.calibrate(val_raw, names, keep, alert_budget(cfg) if budget is None else budget,
                                   cfg.model.new_errors_warmup)

    def calibrate_indicators(self, val_raw: np.ndarray, names: list[str], cfg: Config,
                             budget: float | None = None) -> Indicators | None:
        """With ``model.network_indicators``: the count thresholds on the training period's
        windows (``val_raw``: :func:`loganomaly.models.window.indicator_windows`, training and
        validation, the indicator columns only).

        Not on screened windows (as the new-error signal): screening reads the reconstruction
        error, which these features do not enter, and leaving windows out would read normal
        operation as quieter than it is.
        """
        if not cfg.model.network_indicators:
            return None
        return Indicators.calibrate(val_raw, names, alert_budget(cfg) if budget is None else budget)

    def calibrate_group(self, val_scores: np.ndarray, cfg: Config,
                        previous_flagged: np.ndarray | None = None, budget: float | None = None) -> float | None:
        return screened_threshold(val_scores, cfg, previous_flagged, budget)[0]

    def score_windows(self, bundle: ModelBundle, model: nn.Module, device: torch.device, x: np.ndarray,
                      top_k: int, inference: Inference | None = None) -> pa.RecordBatch:
        """Mean squared reconstruction error per window; only windows above the threshold are explained.

        Unflagged windows get no ``top_features`` and an empty ``explanation``: nobody reads them,
        and explaining every window cost a float64 copy of every error and Python per row.

        With the unseen-template signal (``bundle.unseen``, :mod:`loganomaly.models.unseen`), the
        score is the error plus ``threshold * share / share threshold`` where the share passes its
        threshold (:func:`~loganomaly.models.unseen.combined_scores`): a window is flagged when
        either passes its own threshold, and a window the share flagged is explained by it first
        (``unseen-template share: 7 of 9 events match no template the model knows (share 0.78 >
        calibrated 0.30)``), then by its reconstruction error, said to be below or above its
        threshold.

        With peer groups, a window is standardised with its group's normaliser and judged by its
        group's threshold; its score is the error rescaled so that the bundle's (global)
        threshold stands for every group's (``error * threshold / group threshold``): the
        scoring stage compares every score with one threshold, and a score reads as "this many
        times its group's alert level" across groups.
        """
        inference = inference or Inference()
        log1p = bundle.features.get("transform", "log1p") == "log1p"
        unseen = bundle.unseen
        by_share = np.zeros(len(x), dtype=bool)
        prefixes: list[str] | None = None
        if unseen is not None:
            share, n_unseen, n_events = unseen.of(x, bundle.feature_names, log1p)
            by_share = share > unseen.threshold
        novel = bundle.new_errors
        if novel is not None:
            n_new = novel.of(x, bundle.feature_names, log1p)
            by_share = by_share | (n_new > novel.threshold)
        habits = bundle.indicators
        if habits is not None:
            totals = habits.totals(x, bundle.feature_names, log1p, habits.names)
            ratio = habits.ratios(totals).max(axis=1)
            by_share = by_share | (ratio > 1.0)
            # Per window an indicator flagged, which ones did (named in its text and first in its top features).
            habit_names = {int(i): habits.passed(totals[i]) for i in np.flatnonzero(ratio > 1.0)}
        if bundle.peers is None:
            normalised = bundle.normaliser.transform(x)
            mean = np.asarray(bundle.normaliser.mean, dtype=np.float64)
            limits = np.full(len(x), float(bundle.threshold))
        else:
            groups = bundle.peers.groups_of(x)
            limits = bundle.peers.thresholds_of(groups, bundle.threshold)
            normalised = bundle.normalise(x, groups)
        # A window the share flags gets its errors back too (limit -inf), to be explained.
        limit = np.where(by_share, -np.inf, limits) if by_share.any() else (
            limits if bundle.peers is not None else float(bundle.threshold))
        scores, flagged, per_step = flagged_step_errors(model, normalised, limit, inference.batch_size,
                                                        device, inference.bf16, stored_weights(bundle))
        if bundle.peers is not None:
            scores = scores * (bundle.threshold / limits)
            mean = bundle.peers.means_of(groups[flagged], bundle.normaliser)
            prefixes = bundle.judged_against(x[flagged], groups[flagged], limits[flagged])
        error = scores
        if unseen is not None:
            scores = combined_scores(scores, share, float(bundle.threshold), unseen.threshold)
        if novel is not None:
            scores = combined_scores(scores, n_new, float(bundle.threshold), novel.threshold)
        if habits is not None:
            scores = combined_scores(scores, ratio, float(bundle.threshold), 1.0)
        if unseen is not None or novel is not None or habits is not None:
            def passed(i: int) -> list[str]:
                """The texts of the count signals that passed their thresholds on window ``i``."""
                out = []
                if unseen is not None and share[i] > unseen.threshold:
                    out.append("unseen-template share: "
                               + share_text(n_unseen[i], n_events[i], share[i], unseen.threshold))
                if novel is not None and n_new[i] > novel.threshold:
                    out.append("new error kinds: " + novel.text(n_new[i]))
                if habits is not None and i in habit_names:
                    out.append(INDICATOR_TEXT + habits.text(totals[i], habit_names[i]))
                return out

            prefixes = [self._signals(error[i], float(bundle.threshold), passed(i),
                                      "" if prefixes is None else prefixes[k])
                        for k, i in enumerate(flagged.tolist())]
        tops: list[list[str]] = []
        texts: list[str] = []
        if len(flagged):
            # Errors per model input, put back at their feature columns (the dropped ones are never named).
            norm = bundle.normaliser
            typical = np.asarray(bundle.metrics.get("val_feature_error") or np.ones(norm.width), dtype=np.float64)
            tops, texts = explain(x[flagged], norm.widen(per_step), norm.widen(typical, 1.0), mean,
                                  bundle.feature_names, top_k, log1p, prefixes, norm.ignored)
            if habits is not None:
                # The indicators that flagged a window come first: what decided, and what the
                # per-entity score baseline reads to leave the flag alone.
                def first(i: int, top: list[str]) -> list[str]:
                    passed = habit_names.get(i, [])
                    return [*passed, *(n for n in top if n not in passed)]

                tops = [first(i, top) for i, top in zip(flagged.tolist(), tops, strict=True)]
        return scored_batch(scores, flagged, list(tops), list(texts))

    @staticmethod
    def _signals(error: float, threshold: float, passed: list[str], prefix: str) -> str:
        """Which signal flagged a window, in the order a person checks them (the count signals first when they flagged).

        ``passed`` holds the texts of the count signals (unseen share, new error kinds) that passed
        their thresholds on the window.
        """
        parts = [prefix] if prefix else []
        parts += passed
        if error > threshold:
            parts.append(f"reconstruction error {error:.4g} > threshold {threshold:.4g}")
        else:
            parts.append(f"reconstruction error {error:.4g} <= threshold {threshold:.4g}, largest errors")
        return "; ".join(parts)


KIND = AutoencoderKind()
