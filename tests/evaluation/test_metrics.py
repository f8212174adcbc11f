"""The metrics an analyst reads, on hand-computed small cases (no JVM)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loganomaly.errors import ModelError
from loganomaly.evaluation.metrics import evaluate

# Six windows: three benign (0.1, 0.6, 0.2), three anomalous (0.9, 0.3, 0.8); threshold 0.5.
# Flagged: 0.6 (benign), 0.9 and 0.8 (anomalous): tp 2, fp 1, tn 2, fn 1.
SCORES = np.array([0.1, 0.6, 0.2, 0.9, 0.3, 0.8])
LABELS = np.array([0, 0, 0, 1, 1, 1])


def test_false_positive_rate_and_recall_at_the_threshold() -> None:
    r = evaluate(SCORES, LABELS, 0.5)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 1, 2, 1)
    assert r["fpr"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(2 / 3)


def test_fpr_is_undefined_without_benign_windows() -> None:
    r = evaluate(np.array([0.2, 0.9]), np.array([1, 1]), 0.5)
    assert math.isnan(r["fpr"])
    assert r["recall"] == 0.5


def test_flag_all_f1_is_the_floor_of_a_mostly_anomalous_set() -> None:
    # 9 anomalous of 10: flagging all gives precision 0.9, recall 1, F1 = 1.8 / 1.9.
    labels = np.array([0] + [1] * 9)
    r = evaluate(np.linspace(0, 1, 10), labels, 2.0)
    assert r["flag_all_f1"] == pytest.approx(1.8 / 1.9)
    assert r["f1"] == 0.0  # nothing flagged at threshold 2
    assert evaluate(SCORES, LABELS, 0.5)["flag_all_f1"] == pytest.approx(2 / 3)  # p = 0.5: 1 / 1.5


def test_flag_all_f1_is_zero_without_anomalies() -> None:
    assert evaluate(np.array([0.1, 0.2]), np.array([0, 0]), 0.5)["flag_all_f1"] == 0.0


def test_alerts_per_entity_day() -> None:
    # Two entities over two days, but host b appears on one day only: 3 entity-days.
    keys = [("a", "d1"), ("a", "d1"), ("a", "d2"), ("b", "d1"), ("b", "d1"), ("a", "d2")]
    r = evaluate(SCORES, LABELS, 0.5, entity_days=_keys(keys))
    assert r["n_entity_days"] == 3
    assert r["alerts_per_entity_day"] == pytest.approx(3 / 3)  # 3 flagged windows
    assert r["false_alerts_per_entity_day"] == pytest.approx(1 / 3)  # 1 of them benign


def _keys(pairs: list[tuple[str, str]]) -> np.ndarray:
    out = np.empty(len(pairs), dtype=object)
    out[:] = pairs
    return out


def test_alerts_per_entity_day_undefined_without_keys() -> None:
    r = evaluate(SCORES, LABELS, 0.5)
    assert math.isnan(r["alerts_per_entity_day"]) and math.isnan(r["n_entity_days"])


def test_entity_days_must_match_the_scores() -> None:
    with pytest.raises(ModelError, match="one entity-day per score"):
        evaluate(SCORES, LABELS, 0.5, entity_days=_keys([("a", "d1")]))
