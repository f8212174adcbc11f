"""Network indicators: malware's habits as a signal of their own, beside the reconstruction error.

Why a signal of its own. Held out of training, two Zeek captures were missed entirely at the
stored threshold although they ranked first (README, "Leave one capture out"): an NjRAT bot whose
every window holds some 50 unanswered TCP attempts to one controller address and port, and a
Kovter click-fraud host sending bursts of HTTP requests to bare addresses and TLS without a
server name. By volume both look like any workstation of the training captures, and their hosts
are busy from the first window, so neither the model's threshold nor the host's own history
(``score.entity_baseline``) separates them. Fed to the autoencoder as two more features, the
counts made things worse: they are 0 in almost every normal window, so a benign host's 2 or 4
failed attempts gave errors as large as the bot's, raised the threshold (13 -> 62) and lowered a
held-out capture's ROC-AUC from 1.000 to 0.833. So the model does not see them
(:attr:`loganomaly.models.normaliser.Normaliser.ignored`) and they are judged here, as counts.

What is counted. The features of ``features.network_indicators``
(:data:`~loganomaly.features.windows.INDICATOR_FEATURES`), summed over a window's steps:
``repeated_failures`` (per step, the most never-established TCP attempts to one peer and port),
``unnamed_requests`` (HTTP requests without a host name, TLS sessions without SNI),
``malformed_requests`` (requests that are not the protocol of their connection: Zeek's
``bad_HTTP_request``) and ``failed_targets`` (below). The third came from reading capture 009's
missed windows: after its first six hours of unnamed requests, the Kovter host spent seventeen
sending requests Zeek could not parse as HTTP to a new web server every minute or two; the
model scored those hours 1-2.5 times its threshold, but they were the host's own normal by
then, so its baseline excused them.
``failed_targets`` (per step, how many peers and ports the never-established attempts went to)
is a scanner's habit: a sweep tries hundreds, a workstation a few. Read off capture 002 (an
Nmap scan, never trained on): its internal scanner was flagged at the start of the scan and then
excused by its own history, three windows of the scan already behind it. Its floor is Zeek's
scan detector's (:data:`FLOORS`), not one fitted to the captures.

Calibration. Per indicator, on every window of the training period, training and validation
(:func:`loganomaly.models.window.indicator_windows`; the model never fits these counts, so each
window is a fair sample of normal, and the validation blocks alone can miss a host's busiest
hours): the alert budget's quantile of the totals of the windows where the indicator shows at
all (above 0), times :data:`MARGIN`, and at least :data:`MIN_THRESHOLD` (or the indicator's
own floor, :data:`FLOORS`). Of all windows, the quantile of a count that is 0 almost
everywhere depends on how many quiet windows there are (on the same captures, 957 validation
windows put it at 2 and the 1,909 of the whole training period at 1), so a longer training period gave a lower threshold; among the windows that show
it, the quantile reads the tail of normal failures itself (the most of them when they are
few). Those windows are still a small sample of normal, and a habit that marks malware shows
at several times what normal operation brings (NjRAT's 27-52 attempts per window against a
handful for any benign host of the four captures), so the margin costs little recall and keeps
a network a little noisier than the training ones from alerting. The floor keeps one
or two odd requests (an antivirus update by address, a certificate check) from ever alerting on
their own. Both numbers were set after looking at the four captures' counts: see the README.

Combining: as the other count signals (:func:`loganomaly.models.unseen.combined_scores`), the
score is the error plus ``threshold * count / count threshold`` for the indicator with the
largest ratio where it passes its threshold. A window flagged this way names the indicator first
in ``top_features``; the per-entity score baseline leaves such flags alone (a host's own history
cannot excuse a habit of malware: the bot calls its controller from its first window on). Pure
numpy, tested without Spark or torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loganomaly.config import Config
from loganomaly.errors import ModelError
from loganomaly.features.windows import INDICATOR_FEATURES, INDICATOR_UNITS, written_indicators
from loganomaly.models.unseen import window_total

log = logging.getLogger(__name__)

__all__ = ["FLOORS", "INDICATOR_FEATURES", "INDICATOR_TEXT", "MARGIN", "MIN_THRESHOLD", "Indicators", "floor_of",
           "signal_only_columns"]

#: How a flagged window's explanation introduces the indicators that passed.
INDICATOR_TEXT = "network indicators: "

#: Threshold = this many times the budget quantile of the training period's nonzero window totals.
MARGIN = 2.0
#: The least threshold: a window needs three (whole counts above 2.5) to alert on an indicator.
MIN_THRESHOLD = 2.5
#: Indicators with a floor of their own. ``failed_targets``: Zeek's own scan detector
#: (``policy/misc/scan.zeek``) reports a port scan at 15 distinct ports of one victim and an
#: address scan at 25 hosts on one port, failed within 5 minutes; a window of failed attempts to
#: fewer than 15 peers and ports is left to the model, however quiet the training hosts were (a
#: workstation retrying a few dead shares, or a printer search, is not a sweep).
FLOORS: dict[str, float] = {"failed_targets": 15.0}


def floor_of(name: str) -> float:
    """The least threshold of indicator ``name``."""
    return FLOORS.get(name, MIN_THRESHOLD)


def indicator_columns(names: Sequence[str], wanted: Sequence[str] | None = None) -> list[int]:
    """The columns of the indicators ``wanted`` in ``names``; by default of those of
    :data:`INDICATOR_FEATURES` that ``names`` holds (a feature list from before
    ``malformed_requests`` holds the first two, and its ``sequences`` table keeps that list).

    Raises:
        ModelError: one wanted is missing, or ``names`` holds none (the windows were built without
            ``features.network_indicators``).
    """
    if wanted is None:
        present = [n for n in INDICATOR_FEATURES if n in names]
        wanted = present if written_indicators(present) else INDICATOR_FEATURES
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ModelError(f"model.network_indicators reads {missing}, not among the feature names: set "
                         "features.network_indicators=true and run featurize with a refit")
    return [list(names).index(n) for n in wanted]


def signal_only_columns(cfg: Config, names: Sequence[str]) -> list[int]:
    """The feature columns the model must not see under ``cfg`` (the indicators when ``model.network_indicators``)."""
    return indicator_columns(names) if cfg.model.network_indicators else []


def _nonzero_quantile(totals: np.ndarray, q: float) -> float:
    """The ``q`` quantile of the totals above 0 (0 when none is): see "Calibration" above."""
    shown = totals[totals > 0]
    return float(np.quantile(shown, q)) if len(shown) else 0.0


@dataclass
class Indicators:
    """The calibrated indicator signal, stored in the bundle (``model.json`` key ``indicators``).

    Attributes:
        names: the indicator features, in :data:`INDICATOR_FEATURES` order (the first two in a
            bundle from before ``malformed_requests``).
        thresholds: per indicator, a window whose total is above it is flagged.
        calibrated: per indicator, the budget quantile of the calibration windows' totals.
        validation_max: per indicator, the largest calibration window total.
        budget: the alert budget the quantiles were taken at.
        validation_windows: how many windows set them (the names are those of bundles from
            before the training windows joined the validation ones in calibration).
    """

    names: list[str]
    thresholds: list[float]
    calibrated: list[float]
    validation_max: list[float]
    budget: float
    validation_windows: int

    def __post_init__(self) -> None:
        k = len(self.names)
        if not k or not len(self.thresholds) == len(self.calibrated) == len(self.validation_max) == k:
            raise ModelError(f"indicator signal needs one threshold per indicator, got {self.names} and "
                             f"{self.thresholds}")
        if any(not np.isfinite(t) or t < floor_of(n) for n, t in zip(self.names, self.thresholds, strict=True)):
            raise ModelError(f"indicator thresholds must be numbers >= their floors ({MIN_THRESHOLD}; "
                             f"{FLOORS}), got {dict(zip(self.names, self.thresholds, strict=True))}")

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "thresholds": [float(v) for v in self.thresholds],
                "calibrated": [float(v) for v in self.calibrated],
                "validation_max": [float(v) for v in self.validation_max],
                "budget": float(self.budget), "validation_windows": int(self.validation_windows)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Indicators:
        """Rebuild from :meth:`to_dict`; a missing or malformed key is a ModelError (a damaged bundle)."""
        try:
            return cls(names=[str(n) for n in data["names"]], thresholds=[float(v) for v in data["thresholds"]],
                       calibrated=[float(v) for v in data["calibrated"]],
                       validation_max=[float(v) for v in data["validation_max"]],
                       budget=float(data["budget"]), validation_windows=int(data["validation_windows"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model.json's indicators is malformed ({exc!r}): {data!r}") from exc

    @classmethod
    def calibrate(cls, x: np.ndarray, names: Sequence[str], budget: float, log1p: bool = True) -> Indicators:
        """Thresholds from raw training-period windows ``x[N, T, F]`` at alert budget ``budget``.

        Raises:
            ModelError: no windows, a budget outside (0, 1), or the indicator features missing.
        """
        if not 0.0 < budget < 1.0:
            raise ModelError(f"alert budget must be in (0, 1), got {budget}")
        if len(x) == 0:
            raise ModelError("no windows to calibrate model.network_indicators on")
        totals = cls.totals(x, names, log1p)
        calibrated = [_nonzero_quantile(totals[:, j], 1.0 - budget) for j in range(totals.shape[1])]
        present = [names[c] for c in indicator_columns(names)]
        out = cls(present, [max(MARGIN * c, floor_of(n)) for n, c in zip(present, calibrated, strict=True)],
                  calibrated,
                  [float(v) for v in totals.max(axis=0)], budget, len(x))
        log.info("network indicators over %d training-period windows: thresholds %s (budget quantiles %s, largest %s)",
                 len(x), dict(zip(out.names, out.thresholds, strict=True)), calibrated, out.validation_max)
        return out

    @staticmethod
    def totals(x: np.ndarray, names: Sequence[str], log1p: bool = True,
               wanted: Sequence[str] | None = None) -> np.ndarray:
        """``[N, K]`` whole counts per raw window of each indicator (``wanted``: a bundle's
        :attr:`names`; by default every one ``names`` holds), summed over its steps."""
        return np.stack([window_total(x, [c], log1p) for c in indicator_columns(names, wanted)], axis=1)

    def ratios(self, totals: np.ndarray) -> np.ndarray:
        """``[N, K]`` totals over their thresholds (above 1: the indicator flags the window)."""
        return np.asarray(totals, dtype=np.float64) / np.asarray(self.thresholds, dtype=np.float64)

    def passed(self, totals: np.ndarray) -> list[str]:
        """Of one window's totals, the indicators above their thresholds, largest ratio first."""
        ratio = self.ratios(np.asarray(totals, dtype=np.float64)[None, :])[0]
        order = np.argsort(-ratio, kind="stable")
        return [self.names[j] for j in order if ratio[j] > 1.0]

    def text(self, totals: np.ndarray, passed: Sequence[str] | None = None) -> str:
        """What a person reads: ``52 repeated failed attempts to one peer and port (> threshold 18; at most 9 in a
        training window)`` for each indicator that passed (``passed``, else :meth:`passed`), largest ratio first."""
        parts = []
        for name in self.passed(totals) if passed is None else passed:
            j = self.names.index(name)
            parts.append(f"{totals[j]:.0f} {INDICATOR_UNITS[name]} (> threshold {self.thresholds[j]:.3g}; at most "
                         f"{self.validation_max[j]:.0f} in a training window)")
        return ", ".join(parts)
