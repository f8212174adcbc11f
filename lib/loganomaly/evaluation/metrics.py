"""Detection metrics on labelled scores: the one implementation every detector is judged with.

``evaluate`` (the stage), the report and ``bench/quality.py`` all call :func:`evaluate`, so the LSTM
kinds and the baselines are compared with the same code at the same kind of threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics

from loganomaly.errors import ModelError

__all__ = ["evaluate"]


def evaluate(
    scores: np.ndarray, labels: np.ndarray, threshold: float, entity_days: np.ndarray | None = None,
    flagged: np.ndarray | None = None,
) -> dict[str, Any]:
    """Detection quality of ``scores`` (higher = more anomalous) against binary ``labels`` (1 = anomaly).

    A score strictly above ``threshold`` is a predicted anomaly (as everywhere in loganomaly), unless
    ``flagged`` gives each window's flag (the stored ``is_anomaly``, which per-entity score
    baselines can clear on windows above the threshold: :mod:`loganomaly.scoring.baseline`).
    Precision, recall and F1 with no predicted (or no actual) anomaly are 0.0, not an error.

    F1 alone flatters when most windows are anomalous (a capture of an attacked host), so the
    result also carries what an analyst lives with: ``fpr``, the share of benign windows flagged
    (NaN without benign windows), ``flag_all_f1``, the F1 that flagging every window gets (the
    floor any detector must beat), and, given ``entity_days`` (one hashable key per window, e.g.
    ``(entity, date)``), ``alerts_per_entity_day`` and ``false_alerts_per_entity_day``: flagged
    windows (all, and benign only) divided by the number of distinct entity-days scored.

    When the labels hold one class only, ROC-AUC, PR-AUC and the best-F1 threshold are undefined:
    they are NaN and ``note`` says why (a test period without anomalies is normal, not a crash).

    Returns:
        ``n``, ``n_positive``, ``threshold``, ``tp``, ``fp``, ``tn``, ``fn``, ``precision``,
        ``recall``, ``f1``, ``roc_auc``, ``pr_auc`` (average precision), ``best_f1``,
        ``best_f1_threshold`` (a threshold for the same ``>`` rule, halfway between the two scores
        it separates), ``fpr``, ``flag_all_f1``, ``n_entity_days``, ``alerts_per_entity_day``,
        ``false_alerts_per_entity_day`` (NaN without ``entity_days``) and ``note`` (``None`` unless
        something is undefined).

    Example:
        >>> r = evaluate(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), threshold=0.5)
        >>> r["precision"], r["recall"], r["roc_auc"]
        (1.0, 0.5, 0.75)

    Raises:
        ModelError: different lengths, no samples, non-finite scores or labels other than 0/1.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y_raw = np.asarray(labels).ravel()
    if s.size == 0 or s.size != y_raw.size:
        raise ModelError(f"evaluate needs as many labels as scores (> 0), got {s.size} scores, {y_raw.size} labels")
    if not np.isfinite(s).all():
        raise ModelError("scores contain NaN or infinity")
    if not np.isin(y_raw, (0, 1)).all():
        raise ModelError(f"labels must be 0/1 or boolean, got values {sorted(set(y_raw.tolist()))[:5]}")
    y = y_raw.astype(np.int64)
    if flagged is not None and np.asarray(flagged).size != s.size:
        raise ModelError(f"evaluate needs one flag per score, got {np.asarray(flagged).size} for {s.size} scores")
    pred = (s > threshold if flagged is None else np.asarray(flagged, dtype=bool).ravel()).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in metrics.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    # Flagging every window: precision = the positive share p, recall 1, so F1 = 2p / (1 + p).
    share = float(y.mean())
    n_days, alerts, false_alerts = math.nan, math.nan, math.nan
    if entity_days is not None:
        keys = list(entity_days)
        if len(keys) != s.size:
            raise ModelError(f"evaluate needs one entity-day per score, got {len(keys)} for {s.size} scores")
        n_days = float(len(set(keys)))
        alerts, false_alerts = (tp + fp) / n_days, fp / n_days
    result: dict[str, Any] = {
        "n": int(s.size),
        "n_positive": int(y.sum()),
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": float(metrics.precision_score(y, pred, zero_division=0)),
        "recall": float(metrics.recall_score(y, pred, zero_division=0)),
        "f1": float(metrics.f1_score(y, pred, zero_division=0)),
        "roc_auc": math.nan,
        "pr_auc": math.nan,
        "best_f1": math.nan,
        "best_f1_threshold": math.nan,
        "fpr": fp / (fp + tn) if fp + tn else math.nan,
        "flag_all_f1": 2 * share / (1 + share),
        "n_entity_days": n_days,
        "alerts_per_entity_day": alerts,
        "false_alerts_per_entity_day": false_alerts,
        "note": None,
    }
    if y.min() == y.max():
        only = "anomalies" if y[0] == 1 else "normal samples"
        result["note"] = f"labels hold only {only}; ROC-AUC, PR-AUC and the best-F1 threshold are undefined"
        return result
    result["roc_auc"] = float(metrics.roc_auc_score(y, s))
    result["pr_auc"] = float(metrics.average_precision_score(y, s))
    best_f1, best_threshold = _best_f1(s, y)
    result["best_f1"], result["best_f1_threshold"] = best_f1, best_threshold
    return result


def _best_f1(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Highest F1 over all thresholds, and a threshold reaching it under the ``score > t`` rule.

    ``precision_recall_curve`` predicts ``score >= c`` for each distinct score c; the same split
    under ``>`` is any t in [next lower distinct score, c), and the midpoint is the robust choice.
    """
    precision, recall, cutoffs = metrics.precision_recall_curve(y, s)
    # The curve's last point (precision 1, recall 0) has no cutoff.
    p, r = precision[:-1], recall[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    best = int(np.argmax(f1))
    cutoff = float(cutoffs[best])
    distinct = np.unique(s)
    lower = distinct[distinct < cutoff]
    threshold = (float(lower[-1]) + cutoff) / 2 if lower.size else float(np.nextafter(cutoff, -np.inf))
    return float(f1[best]), threshold
