"""The unseen-template share: a window's second signal, calibrated apart from the reconstruction error.

Why a signal of its own. A message no training template fits gets template ``T0`` and is counted
in the ``tpl:unknown`` feature; a template the model's training windows never held has a column
that was 0 in every one of them. Inside the reconstruction error both read against the
normaliser's floor (a feature constant in training), so one such event adds tens of standard
deviations to a window, whatever else the window holds, and the error threshold has no way to say
how much novelty normal operation brings. Here the novelty is measured in user terms instead, the
share of a window's events whose templates the model never saw, and gets its own threshold at the
alert budget the reconstruction threshold uses.

What counts as unseen. ``tpl:unknown`` (no template fits) plus every ``tpl:<id>`` column whose
training mean is 0 (mined from the training input, but never in a training window: only in the
validation blocks). Both are equally new to the model. The second kind is also what makes the
threshold calibratable at all: the miner learns from the whole training input, so no validation
window holds a ``T0`` event, but validation windows do hold templates the training part never
showed, at the rate normal operation brings new event types. ``tpl:other`` (known templates
outside the frequent ones) is not unseen: the model saw that bucket.

Combining. The scoring stage flags ``score > threshold`` with one threshold; with the signal on,
the score is the reconstruction error plus ``threshold * share / share_threshold`` for a window
whose share passes its threshold (:func:`combined_scores`), so a window is flagged when either
signal passes its own threshold, and scores still rank. Pure numpy, tested without Spark or torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loganomaly.errors import ModelError
from loganomaly.features.windows import OTHER_TEMPLATES, TEMPLATE_PREFIX, UNKNOWN_TEMPLATES, signed_expm1

log = logging.getLogger(__name__)

__all__ = ["EVENTS", "UnseenShare", "combined_scores", "share_text", "unseen_columns", "unseen_counts",
           "window_total"]

#: The per-step event count (log1p), the share's denominator.
EVENTS = "events"


def unseen_columns(names: Sequence[str], train_mean: Sequence[float]) -> list[str]:
    """The template columns whose events the model never saw: ``tpl:unknown`` and the never-trained ones.

    Args:
        names: the model's feature names.
        train_mean: the normaliser's per-feature mean over the training windows (stored values,
            log1p counts: a mean of exactly 0 means the column was 0 in every training window).

    Raises:
        ModelError: the feature list has no ``events`` or no ``tpl:unknown`` column (templates
            off), so there is no share to compute.
    """
    if EVENTS not in names or UNKNOWN_TEMPLATES not in names:
        raise ModelError(f"model.unseen_share needs the {EVENTS!r} and {UNKNOWN_TEMPLATES!r} features "
                         "(templates enabled); this feature list has neither or only one")
    mean = np.asarray(train_mean, dtype=np.float64)
    if len(mean) != len(names):
        raise ModelError(f"{len(mean)} normaliser means for {len(names)} features")
    return [n for i, n in enumerate(names)
            if n == UNKNOWN_TEMPLATES
            or (n.startswith(TEMPLATE_PREFIX) and n != OTHER_TEMPLATES and mean[i] == 0.0)]


def unseen_counts(x: np.ndarray, names: Sequence[str], columns: Sequence[str],
                  log1p: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(events with unseen templates, events) per window of raw windows ``x[N, T, F]``, as whole counts.

    Counts are stored as log1p per step, so they are undone and summed over the window's steps
    (rounded: float32 storage leaves 0.999... for 1).
    """
    index = {n: i for i, n in enumerate(names)}
    missing = [c for c in [EVENTS, *columns] if c not in index]
    if missing:
        raise ModelError(f"windows lack the features {missing} the unseen-template share reads")
    events = window_total(x, [index[EVENTS]], log1p)
    unseen = window_total(x, [index[c] for c in columns], log1p) if columns else np.zeros(len(x))
    return unseen, events


def window_total(x: np.ndarray, columns: Sequence[int], log1p: bool = True) -> np.ndarray:
    """Whole count per raw window ``x[N, T, F]`` of the features at ``columns``, summed over steps and columns.

    Counts are stored as log1p per step, so they are undone first; rounded, since float32 storage
    leaves 0.999... for 1. Only the columns read are converted: scoring calls this on every batch,
    and a float64 copy of whole windows would cost more than the count.
    """
    picked = np.asarray(x[:, :, list(columns)], dtype=np.float64)
    return np.rint((signed_expm1(picked) if log1p else picked).sum(axis=(1, 2)))


def shares(unseen: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Unseen / events per window, 0 for a window without events, never above 1."""
    out = np.zeros(len(events), dtype=np.float64)
    busy = events > 0
    out[busy] = np.minimum(unseen[busy] / events[busy], 1.0)
    return out


@dataclass
class UnseenShare:
    """The calibrated unseen-template signal, stored in the bundle (``model.json`` key ``unseen_share``).

    Attributes:
        columns: the feature columns whose events count as unseen (:func:`unseen_columns`).
        threshold: a window whose share is above it is flagged (``max(calibrated, minimum)``).
        calibrated: the budget quantile of the screened validation shares, before the minimum.
        minimum: ``model.unseen_share_min`` at training.
        budget: the alert budget it was calibrated for.
        validation_windows: how many screened validation windows set it.
        validation_with_unseen: how many of them held an unseen event (normal novelty).
    """

    columns: list[str]
    threshold: float
    calibrated: float
    minimum: float
    budget: float
    validation_windows: int
    validation_with_unseen: int

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold or not np.isfinite(self.threshold):
            raise ModelError(f"unseen-share threshold must be a number above 0, got {self.threshold!r}")

    @property
    def can_alert(self) -> bool:
        """False when normal validation windows reach share 1 beyond the budget: no share exceeds it."""
        return self.threshold < 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "threshold": float(self.threshold), "calibrated": float(self.calibrated),
                "minimum": float(self.minimum), "budget": float(self.budget),
                "validation_windows": int(self.validation_windows),
                "validation_with_unseen": int(self.validation_with_unseen)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnseenShare:
        """Rebuild from :meth:`to_dict`; a missing key is a ModelError (a damaged bundle)."""
        try:
            return cls(columns=[str(c) for c in data["columns"]], threshold=float(data["threshold"]),
                       calibrated=float(data["calibrated"]), minimum=float(data["minimum"]),
                       budget=float(data["budget"]), validation_windows=int(data["validation_windows"]),
                       validation_with_unseen=int(data["validation_with_unseen"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model.json's unseen_share is malformed ({exc!r}): {data!r}") from exc

    @classmethod
    def calibrate(cls, x: np.ndarray, names: Sequence[str], train_mean: Sequence[float], keep: np.ndarray,
                  budget: float, minimum: float, log1p: bool = True) -> UnseenShare:
        """The share threshold from raw validation windows ``x``, on those ``keep`` marks (the screened ones).

        The same rule as the reconstruction threshold's empirical part: the ``1 - budget``
        quantile of the shares. The log-normal tail of
        :func:`loganomaly.models.autoencoder.calibrate_threshold` is not used: a share is bounded
        by 1 and mostly 0, not a right-skewed error. ``minimum`` keeps a validation set without
        any novelty (every share 0) from making one unseen event among many an alert.

        Raises:
            ModelError: no validation windows kept, a budget outside (0, 1) or a minimum outside (0, 1].
        """
        if not 0.0 < budget < 1.0:
            raise ModelError(f"alert budget must be in (0, 1), got {budget}")
        if not 0.0 < minimum <= 1.0:
            raise ModelError(f"model.unseen_share_min must be in (0, 1], got {minimum}")
        mask = np.asarray(keep, dtype=bool)
        if mask.shape != (len(x),) or not mask.any():
            raise ModelError(f"no screened validation windows to calibrate the unseen share on ({int(mask.sum())} "
                             f"kept of {len(x)})")
        columns = unseen_columns(names, train_mean)
        unseen, events = unseen_counts(x[mask], names, columns, log1p)
        share = shares(unseen, events)
        calibrated = float(np.quantile(share, 1.0 - budget))
        out = cls(columns, max(calibrated, minimum), calibrated, minimum, budget, int(mask.sum()),
                  int((unseen > 0).sum()))
        log.info("unseen-template share: %d of %d screened validation windows hold events of templates the model "
                 "never saw (%d such columns); threshold %.3g (calibrated %.3g, minimum %.3g, budget %.3g)%s",
                 out.validation_with_unseen, out.validation_windows, len(columns), out.threshold, calibrated,
                 minimum, budget, "" if out.can_alert else "; it cannot alert: normal windows reach share 1")
        return out

    def of(self, x: np.ndarray, names: Sequence[str], log1p: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(share, unseen events, events) of raw windows ``x``."""
        unseen, events = unseen_counts(x, names, self.columns, log1p)
        return shares(unseen, events), unseen, events


def combined_scores(error: np.ndarray, share: np.ndarray, threshold: float, share_threshold: float) -> np.ndarray:
    """The error, plus ``threshold * share / share_threshold`` where the share passes its threshold.

    Above ``threshold`` exactly when either signal passes its own: the share's term is then above
    ``threshold`` by itself (``share_threshold`` maps onto ``threshold``), and without it the score
    is the error. Two choices keep the score a ranking as well as a rule. A share at or below its
    threshold adds nothing: as ``max(error, threshold * share / share_threshold)`` it lifted every
    window of share 1 to the same score when the threshold was 1 (measured on BGL_2k, where most
    later windows are one unseen line: ROC-AUC 0.950 -> 0.651, with nothing more flagged). And
    the error is added rather than maxed, so windows the share flags keep the error's order
    among themselves instead of tying at their share.
    """
    if share_threshold <= 0:
        raise ModelError(f"unseen-share threshold must be above 0, got {share_threshold}")
    ratio = np.asarray(share, np.float64) / share_threshold
    return np.asarray(error, dtype=np.float64) + np.where(ratio > 1.0, threshold * ratio, 0.0)


def share_text(unseen: float, events: float, share: float, share_threshold: float) -> str:
    """What a person reads: ``7 of 9 events match no template the model knows (share 0.78 > calibrated 0.3)``."""
    rel = ">" if share > share_threshold else "<="
    return (f"{unseen:.0f} of {events:.0f} events match no template the model knows "
            f"(share {share:.2f} {rel} calibrated {share_threshold:.2f})")
