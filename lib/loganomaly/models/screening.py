"""Which validation windows may set a threshold, and how far a retrain may move it.

A nightly job retrains on everything so far, unlabelled. Past incidents then sit inside the
validation blocks, and a budget quantile of scores that hold them is the incidents' level, not
the benign tail's: one model's threshold lands orders of magnitude above the next one's, and the
model trained just after an incident flags nothing for days. Two screens keep them out:

* a robust rule on the log scores (:func:`robust_screen`): beyond ``median + k * 1.4826 * MAD``
  a window is a suspected incident. Reconstruction errors are right-skewed and roughly log-normal
  on benign windows, so the log scale makes "k robust standard deviations" mean the same at every
  error level; median and MAD ignore up to half the sample, so an incident block cannot drag the
  rule up with it the way it drags a quantile or a standard deviation;
* the previous model's verdict (:func:`screened_budget`): it was calibrated to flag about the
  budget of benign windows, so a budget's worth of its flags are the benign tail and stay (with
  their scores capped, so their values cannot lift the threshold), and the flags beyond that
  number are an incident it saw and are left out. Leaving all its flags out would instead cut the
  top of the benign tail at every retrain and ratchet the threshold down; tried here, that or
  counting them as spent budget made the threshold swing by 1.4x from one retrain to the next.

:func:`steady_threshold` then bounds how far the threshold may move from the previous bundle's.
Pure numpy, tested without Spark or torch.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from loganomaly.errors import ModelError

log = logging.getLogger(__name__)

__all__ = ["Screening", "robust_screen", "screened_budget", "steady_threshold"]

#: 1.4826 * MAD estimates the standard deviation of a normal distribution.
MAD_SCALE = 1.4826


def robust_screen(scores: np.ndarray, k: float | None) -> np.ndarray:
    """True for the windows whose score is a suspected incident: log score > median + k robust SDs.

    Scores of 0 or below are never suspected (a perfect reconstruction is no incident). With no
    spread (MAD 0: over half the scores equal) nothing is suspected, since the rule has no scale.

    Raises:
        ModelError: non-finite scores.
    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise ModelError("validation scores contain NaN or infinity; the model did not train properly")
    suspect = np.zeros(x.shape, dtype=bool)
    positive = x > 0
    if k is None or positive.sum() < 3:
        return suspect
    logs = np.log(x[positive])
    median = float(np.median(logs))
    spread = MAD_SCALE * float(np.median(np.abs(logs - median)))
    if spread <= 0:
        return suspect
    suspect[positive] = logs > median + k * spread
    return suspect


@dataclass
class Screening:
    """What screening did to one set of validation windows (stored in the bundle's metrics)."""

    validation_windows: int
    screened_robust: int  # beyond the robust rule: suspected incidents, left out
    screened_previous: int  # flagged by the previous model beyond its budget's worth: left out
    capped_previous: int  # flagged by the previous model within its budget: kept, score capped
    kept: int
    budget: float
    previous_ignored: bool = False  # the previous model flagged more than max_previous_share: not trusted

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def screened_budget(
    scores: np.ndarray, budget: float, k: float | None, previous_flagged: np.ndarray | None = None,
    max_previous_share: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, Screening]:
    """(keep mask, scores to calibrate on, what was screened) for ``budget`` over ``scores``.

    Suspected incidents (:func:`robust_screen`) are left out. Of the windows the previous model
    flagged (``previous_flagged``), a budget's worth (``budget`` of the windows left) is what it
    flags on benign data anyway: they stay, counted as alerts, but with their score capped at the
    largest score of the unflagged windows, so their own values (an incident's, or the far tail's)
    cannot lift the quantile or the fitted tail. The flagged windows beyond that number, the
    highest-scoring first, are an incident the previous model saw: left out. On benign data the
    previous model flags about the budget, nothing is left out, and the threshold stays where it
    was (a retrain on the same windows does not move it).

    A previous model that flags more than ``max_previous_share`` of the windows the rule keeps is
    not judging incidents but its own miscalibration on data it did not see (a level shift, a new
    daily pattern): its flags are ignored (logged). Trusting them anyway would leave out the new
    normal and pin the new threshold to the old, wrong one: seen in ``bench/walkforward.py``, where
    a first model flagging 30 % of the next day's windows made its successor flag 60 %.
    Should screening leave fewer than two windows, nothing is screened (logged).

    Raises:
        ModelError: non-finite scores, or flags for another number of windows.
    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    n = int(x.size)
    suspect = robust_screen(x, k)
    flagged = np.zeros(n, dtype=bool) if previous_flagged is None else np.asarray(previous_flagged, dtype=bool).ravel()
    if flagged.shape != (n,):
        raise ModelError(f"previous model's flags for {flagged.size} windows, scores for {n}")
    keep = ~suspect
    flagged = flagged & keep
    ignored = bool(flagged.sum() > max_previous_share * keep.sum())
    if ignored:
        log.warning("the previous model flags %d of %d validation windows (over %.3g of them): not screening by it",
                    int(flagged.sum()), int(keep.sum()), max_previous_share)
        flagged[:] = False
    dropped = 0
    allowed = int(np.floor(budget * int(keep.sum())))
    index = np.flatnonzero(flagged)
    if len(index) > allowed:
        excess = index[np.argsort(-x[index], kind="stable")[: len(index) - allowed]]
        keep[excess] = False
        flagged[excess] = False
        dropped = int(len(excess))
    values = x.copy()
    if flagged.any() and (keep & ~flagged).any():
        values[flagged] = np.minimum(values[flagged], values[keep & ~flagged].max())
    if keep.sum() < 2:
        log.warning("screening would leave %d of %d validation windows; calibrating on all of them", int(keep.sum()), n)
        return np.ones(n, dtype=bool), x, Screening(n, 0, 0, 0, n, float(budget))
    return keep, values, Screening(n, int(suspect.sum()), dropped, int(flagged.sum()), int(keep.sum()), float(budget),
                                   ignored)


def steady_threshold(
    threshold: float, previous: float | None, max_ratio: float | None, clamp: bool
) -> tuple[float, dict[str, Any]]:
    """The threshold after the stability check against the previous bundle's, and the check's record.

    ``ratio`` is new / previous before clamping. Outside ``[1 / max_ratio, max_ratio]`` the
    threshold is clamped to the nearer bound when ``clamp``, else kept; either way a warning says so.
    """
    record: dict[str, Any] = {"previous_threshold": previous, "ratio": None, "clamped": False,
                              "max_ratio": max_ratio}
    if previous is None or not np.isfinite(previous) or previous <= 0 or threshold <= 0:
        return threshold, record
    ratio = float(threshold / previous)
    record["ratio"] = ratio
    if max_ratio is None or 1.0 / max_ratio <= ratio <= max_ratio:
        return threshold, record
    bound = previous * (max_ratio if ratio > 1 else 1.0 / max_ratio)
    if clamp:
        log.warning("threshold %.5g is %.3gx the previous model's %.5g (limit %gx): clamped to %.5g",
                    threshold, ratio, previous, max_ratio, bound)
        record["clamped"] = True
        record["unclamped_threshold"] = float(threshold)
        return float(bound), record
    log.warning("threshold %.5g is %.3gx the previous model's %.5g (limit %gx); kept (train.threshold_clamp=false)",
                threshold, ratio, previous, max_ratio)
    return threshold, record
