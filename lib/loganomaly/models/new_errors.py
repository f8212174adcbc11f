"""Error-level events of a new kind: a window's signal of its own, beside the reconstruction error.

Why a signal of its own. A system that starts logging a failure nobody has seen is the classic
alert of log monitoring ("first occurrence" rules), and inside the reconstruction error it has no
reliable weight: a window of one such line is mostly like any other one-line window, and its
count column is one feature among dozens. Measured on BGL_2k (README "Detection quality"): every
alert of the later months is one unseen line at FATAL level, and the error ranks them well
(ROC-AUC 0.95) but its stored threshold flags none.

What is counted. The ``new_errors`` feature (:data:`~loganomaly.features.windows.NEW_ERRORS`,
``features.new_errors``): per step, error-level events whose template has its first error-level
event in the lake in that step, and error-level lines no template fits. So the training lake
itself shows how often normal operation brings new kinds of error, measured forward in time as a
nightly job meets them.

Calibration. The threshold is the alert budget's quantile of the window counts over the
validation windows of the training period, leaving out the first ``model.new_errors_warmup`` of
the period (at a lake's start every kind of error is new). It is not taken on the screened
windows the error threshold uses: a window holding a new kind of error has a large error too and
would be screened, so the rate would be read as lower than normal operation brings. Counts are
whole numbers, so the threshold is at least 0.5: with no new error in the calibration windows, one
new error-level event flags its window.

Combining: as the unseen-template share (:func:`loganomaly.models.unseen.combined_scores`), the
score is the error plus ``threshold * count / count threshold`` where the count passes its
threshold. Pure numpy, tested without Spark or torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loganomaly.errors import ModelError
from loganomaly.features.windows import NEW_ERRORS
from loganomaly.models.unseen import window_total

log = logging.getLogger(__name__)

__all__ = ["NEW_ERRORS", "NewErrors", "new_error_counts", "warm_mask"]

#: Counts are whole numbers: a threshold below 0.5 would read as "above 0" anyway.
MIN_THRESHOLD = 0.5


def new_error_counts(x: np.ndarray, names: Sequence[str], log1p: bool = True) -> np.ndarray:
    """Error-level events of a new kind per raw window ``x[N, T, F]`` (the steps' counts summed, whole)."""
    if NEW_ERRORS not in names:
        raise ModelError(f"windows lack the {NEW_ERRORS!r} feature (features.new_errors) that model.new_errors reads")
    return window_total(x, [list(names).index(NEW_ERRORS)], log1p)


def warm_mask(starts_us: np.ndarray, train_from: float, train_until: float, warmup: float) -> np.ndarray:
    """Windows starting after the first ``warmup`` of the training period ``[train_from, train_until]`` (s)."""
    if not 0.0 <= warmup < 1.0:
        raise ModelError(f"model.new_errors_warmup must be in [0, 1), got {warmup}")
    cut = train_from + (train_until - train_from) * warmup
    return np.asarray(starts_us, dtype=np.float64) / 1e6 >= cut


@dataclass
class NewErrors:
    """The calibrated new-error signal, stored in the bundle (``model.json`` key ``new_errors``).

    Attributes:
        threshold: a window whose count is above it is flagged (``max(calibrated, 0.5)``).
        calibrated: the budget quantile of the calibration windows' counts.
        budget: the alert budget it was calibrated for.
        warmup: ``model.new_errors_warmup`` at training.
        validation_windows: how many validation windows (after the warm-up) set it.
        validation_with_new: how many of them held a new error-level event.
    """

    threshold: float
    calibrated: float
    budget: float
    warmup: float
    validation_windows: int
    validation_with_new: int

    def __post_init__(self) -> None:
        if not self.threshold >= MIN_THRESHOLD or not np.isfinite(self.threshold):
            raise ModelError(f"new-error threshold must be a number >= {MIN_THRESHOLD}, got {self.threshold!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": float(self.threshold), "calibrated": float(self.calibrated), "budget": float(self.budget),
                "warmup": float(self.warmup), "validation_windows": int(self.validation_windows),
                "validation_with_new": int(self.validation_with_new)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NewErrors:
        """Rebuild from :meth:`to_dict`; a missing key is a ModelError (a damaged bundle)."""
        try:
            return cls(threshold=float(data["threshold"]), calibrated=float(data["calibrated"]),
                       budget=float(data["budget"]), warmup=float(data["warmup"]),
                       validation_windows=int(data["validation_windows"]),
                       validation_with_new=int(data["validation_with_new"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model.json's new_errors is malformed ({exc!r}): {data!r}") from exc

    @classmethod
    def calibrate(cls, x: np.ndarray, names: Sequence[str], keep: np.ndarray, budget: float, warmup: float,
                  log1p: bool = True) -> NewErrors:
        """The count threshold from raw validation windows ``x``, on those ``keep`` marks (after the warm-up).

        Raises:
            ModelError: no window kept, or a budget outside (0, 1).
        """
        if not 0.0 < budget < 1.0:
            raise ModelError(f"alert budget must be in (0, 1), got {budget}")
        mask = np.asarray(keep, dtype=bool)
        if mask.shape != (len(x),) or not mask.any():
            raise ModelError(f"no validation windows after the first {warmup:.0%} of the training period to calibrate "
                             f"model.new_errors on ({int(mask.sum())} of {len(x)}); lower model.new_errors_warmup")
        counts = new_error_counts(x[mask], names, log1p)
        calibrated = float(np.quantile(counts, 1.0 - budget))
        out = cls(max(calibrated, MIN_THRESHOLD), calibrated, budget, warmup, int(mask.sum()), int((counts > 0).sum()))
        log.info("new error kinds: %d of %d validation windows after the first %.0f%% of the training period hold "
                 "error-level events of a new kind; threshold %.3g (calibrated %.3g, budget %.3g)",
                 out.validation_with_new, out.validation_windows, 100 * warmup, out.threshold, calibrated, budget)
        return out

    def of(self, x: np.ndarray, names: Sequence[str], log1p: bool = True) -> np.ndarray:
        """Counts of raw windows ``x``."""
        return new_error_counts(x, names, log1p)

    def text(self, count: float) -> str:
        """What a person reads: ``1 error-level event of a kind never logged at error level before (> 0.5; ...)``."""
        rel = ">" if count > self.threshold else "<="
        plural = "" if count == 1 else "s"
        return (f"{count:.0f} error-level event{plural} of a kind never logged at error level before "
                f"({rel} threshold {self.threshold:.3g}; {self.validation_with_new} of {self.validation_windows} "
                f"validation windows held one)")
