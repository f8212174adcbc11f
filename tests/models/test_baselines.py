"""Classical baselines and the shared evaluation, on tiny synthetic windows (no Spark, no torch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from loganomaly.errors import ConfigError, ModelError
from loganomaly.evaluation.metrics import evaluate
from loganomaly.models.baselines import (
    BASELINES,
    Baseline,
    IsolationForestBaseline,
    OneClassSVMBaseline,
    PCABaseline,
    Standardiser,
    flatten_windows,
    make_baseline,
)

T, F = 4, 3


def low_rank_windows(n: int, seed: int) -> np.ndarray:
    """Normal windows: two latent factors mixed into T*F columns on very different scales, plus noise."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(2, T * F))
    scale = np.tile([1.0, 100.0, 0.01], T)
    rows = rng.normal(size=(n, 2)) @ mixing + rng.normal(0, 0.05, (n, T * F))
    return (rows * scale).reshape(n, T, F)


def toy_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and validation normals, and a test set of 80 normals and 20 injected outliers."""
    train, val = low_rank_windows(300, seed), low_rank_windows(100, seed + 1)
    normal = low_rank_windows(80, seed + 2)
    rng = np.random.default_rng(seed + 3)
    scale = np.tile([1.0, 100.0, 0.01], T)
    outliers = (rng.normal(0, 3, (20, T * F)) * scale).reshape(20, T, F)  # off the normal subspace
    test = np.concatenate([normal, outliers])
    labels = np.r_[np.zeros(80, int), np.ones(20, int)]
    return train, val, test, labels


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_rank_injected_outliers_above_normals(name: str) -> None:
    train, val, test, labels = toy_set()
    detector = make_baseline(name).fit(train)
    scores = detector.score(test)
    assert scores.shape == (100,) and scores.dtype == np.float64
    threshold = detector.calibrate(val, 0.95)
    assert detector.threshold == threshold
    # About 5% of normal validation windows lie above the 0.95 quantile.
    assert detector.predict(val).mean() == pytest.approx(0.05, abs=0.011)
    result = evaluate(scores, labels, threshold)
    assert result["roc_auc"] > 0.9, result
    assert result["recall"] > 0.8, result


def test_standardiser_uses_training_statistics_only() -> None:
    train = np.array([[0.0, 5.0], [2.0, 5.0]])
    s = Standardiser.fit(train)
    assert s.mean.tolist() == [1.0, 5.0]
    assert s.std.tolist() == [1.0, 0.01]  # constant column floored, not zero
    assert s.transform(np.array([[3.0, 6.0]])).tolist() == [[2.0, 100.0]]
    with pytest.raises(ModelError, match="columns"):
        s.transform(np.zeros((1, 3)))


def test_standardiser_and_baselines_take_the_std_floor_of_the_lstm() -> None:
    train = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [2.0, 0.1]])
    assert Standardiser.fit(train).std[1] == pytest.approx(0.0433, abs=1e-4)
    floored = Standardiser.fit(train, std_floor=0.1)
    assert floored.std.tolist() == [1.0, 0.1]
    with pytest.raises(ModelError, match="std floor"):
        Standardiser.fit(train, std_floor=0.0)
    windows = low_rank_windows(50, 0)
    detector = make_baseline("pca", n_components=2).fit(windows, std_floor=50.0)
    assert detector.standardiser is not None
    assert detector.standardiser.std.min() == 50.0  # the 0.01- and 1-scale columns are floored


def test_flatten_windows() -> None:
    assert flatten_windows(np.zeros((5, T, F))).shape == (5, T * F)
    assert flatten_windows(np.zeros((5, 7))).shape == (5, 7)
    with pytest.raises(ModelError, match="shape"):
        flatten_windows(np.zeros(5))
    with pytest.raises(ModelError, match="NaN"):
        flatten_windows(np.array([[np.nan]]))


def test_pca_saves_as_json_and_scores_identically(tmp_path: Path) -> None:
    train, val, test, _ = toy_set()
    detector = PCABaseline(n_components=2).fit(train)
    assert isinstance(detector, PCABaseline)
    detector.calibrate(val, 0.99)
    path = detector.save(tmp_path / "pca.json")
    json.loads(path.read_text())  # plain JSON, no pickle anywhere
    loaded = PCABaseline.load(path)
    assert np.array_equal(loaded.score(test), detector.score(test))
    assert loaded.threshold == detector.threshold
    assert loaded.components is not None and loaded.components.shape == (2, T * F)


def test_pca_from_dict_refuses_bad_parameters() -> None:
    train, *_ = toy_set()
    data = PCABaseline(n_components=2).fit(train).to_dict()
    with pytest.raises(ModelError, match="unknown keys"):
        PCABaseline.from_dict({**data, "whiten": True})
    with pytest.raises(ModelError, match="format"):
        PCABaseline.from_dict({**data, "format": 99})
    with pytest.raises(ModelError, match="do not fit"):
        PCABaseline.from_dict({**data, "mean": [0.0]})


@pytest.mark.parametrize("detector", [IsolationForestBaseline(), OneClassSVMBaseline()])
def test_tree_and_svm_baselines_are_not_persisted(detector: Baseline) -> None:
    assert not detector.persistable
    with pytest.raises(ModelError, match="refit"):
        detector.to_dict()


def test_isolation_forest_is_seeded() -> None:
    train, _, test, _ = toy_set()
    a = IsolationForestBaseline(n_estimators=50, seed=3).fit(train).score(test)
    b = IsolationForestBaseline(n_estimators=50, seed=3).fit(train).score(test)
    assert np.array_equal(a, b)


def test_one_class_svm_caps_training_windows() -> None:
    train, _, test, _ = toy_set()
    detector = OneClassSVMBaseline(max_train=50).fit(train)
    assert isinstance(detector, OneClassSVMBaseline)
    assert detector.model.support_vectors_.shape[0] <= 50
    assert detector.score(test).shape == (100,)


def test_baseline_misuse_is_refused() -> None:
    detector = PCABaseline(n_components=2)
    with pytest.raises(ModelError, match="not fitted"):
        detector.score(np.zeros((2, T, F)))
    train, val, *_ = toy_set()
    detector.fit(train)
    with pytest.raises(ModelError, match="calibrate"):
        detector.predict(val)
    with pytest.raises(ModelError, match="quantile"):
        detector.calibrate(val, 1.5)
    with pytest.raises(ModelError, match="n_components"):
        PCABaseline(n_components=1.5)
    with pytest.raises(ConfigError, match="isolation_forest, one_class_svm, pca"):
        make_baseline("lof")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_baseline("pca", whiten=True)


# --------------------------------------------------------------------------------------- evaluate


def test_evaluate_hand_computed_case() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    labels = np.array([0, 0, 1, 0, 0, 1, 1, 1])
    r = evaluate(scores, labels, threshold=0.45)
    # Predicted anomalous: 0.5 0.6 0.7 0.8 -> tp 3 (0.6, 0.7, 0.8), fp 1 (0.5); missed: 0.3.
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (3, 1, 3, 1)
    assert r["precision"] == pytest.approx(0.75)
    assert r["recall"] == pytest.approx(0.75)
    assert r["f1"] == pytest.approx(0.75)
    # 16 (positive, negative) pairs; the positive scores higher in all but 0.3<0.4, 0.3<0.5.
    assert r["roc_auc"] == pytest.approx(14 / 16)
    # Average precision: positives at ranks 1, 2, 3, 6 -> (1 + 1 + 1 + 4/6) / 4.
    assert r["pr_auc"] == pytest.approx((3 + 4 / 6) / 4)
    # Best F1: flag the top 3 (P=1, R=3/4, F1=6/7) vs the top 6 (P=4/6, R=1, F1=0.8).
    assert r["best_f1"] == pytest.approx(6 / 7)
    assert r["best_f1_threshold"] == pytest.approx(0.55)
    assert evaluate(scores, labels, r["best_f1_threshold"])["f1"] == pytest.approx(6 / 7)
    assert r["n"] == 8 and r["n_positive"] == 4 and r["note"] is None


def test_evaluate_threshold_is_strictly_above() -> None:
    r = evaluate(np.array([1.0, 2.0]), np.array([0, 1]), threshold=2.0)
    assert (r["tp"], r["fn"]) == (0, 1)
    assert r["precision"] == 0.0 and r["f1"] == 0.0  # nothing predicted: 0, not an error
    # The best threshold separates 1.0 from 2.0 under the same > rule.
    assert r["best_f1"] == 1.0 and r["best_f1_threshold"] == pytest.approx(1.5)


def test_evaluate_best_threshold_below_the_lowest_score() -> None:
    r = evaluate(np.array([1.0, 1.0]), np.array([0, 1]), threshold=0.0)
    # Only "flag everything" finds the positive; the threshold must sit just below 1.0.
    assert r["best_f1"] == pytest.approx(2 / 3)
    assert r["best_f1_threshold"] < 1.0
    assert evaluate(np.array([1.0, 1.0]), np.array([0, 1]), r["best_f1_threshold"])["tp"] == 1


@pytest.mark.parametrize("label", [0, 1])
def test_evaluate_one_class_gives_nan_and_a_note(label: int) -> None:
    r = evaluate(np.array([0.1, 0.9, 0.5]), np.full(3, label), threshold=0.4)
    assert math.isnan(r["roc_auc"]) and math.isnan(r["pr_auc"]) and math.isnan(r["best_f1_threshold"])
    assert "only" in r["note"] and "undefined" in r["note"]
    if label == 0:
        assert (r["fp"], r["tn"], r["precision"], r["recall"]) == (2, 1, 0.0, 0.0)
    else:
        assert (r["tp"], r["fn"], r["precision"], r["recall"]) == (2, 1, 1.0, 2 / 3)


def test_evaluate_refuses_bad_input() -> None:
    with pytest.raises(ModelError, match="as many"):
        evaluate(np.array([0.1, 0.2]), np.array([1]), 0.5)
    with pytest.raises(ModelError, match="as many"):
        evaluate(np.array([]), np.array([]), 0.5)
    with pytest.raises(ModelError, match="0/1"):
        evaluate(np.array([0.1, 0.2]), np.array([0, 2]), 0.5)
    with pytest.raises(ModelError, match="NaN"):
        evaluate(np.array([np.nan, 0.2]), np.array([0, 1]), 0.5)
    assert evaluate(np.array([0.1, 0.9]), np.array([False, True]), 0.5)["f1"] == 1.0
