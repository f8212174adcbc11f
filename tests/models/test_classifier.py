"""The supervised LSTM classifier on tiny synthetic windows: network, task, class weights, rank work (CPU, no Spark)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.config import TrainConfig
from loganomaly.errors import ModelError, StageInputError
from loganomaly.models.classifier import (
    ClassifierConfig,
    ClassifierTask,
    ClassifierWork,
    LSTMClassifier,
    balanced_class_weights,
    classifier_probabilities,
    window_labels,
)
from loganomaly.runtime.collective import Collective
from loganomaly.training.readers.arrow import ShardReader
from tests.models.fitting import fit_classifier, seed_article, sequence_settings, snapshot_plans, trained

pytestmark = pytest.mark.usefixtures("one_thread")

T, F = 6, 3


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 windows sit at +1 on feature 0, class 0 at -1, with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.5, (n, T, F)).astype(np.float32)
    x[:, :, 0] += np.where(y == 1, 1.0, -1.0)[:, None]
    return x, y


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_classifier_config_round_trip_and_refusals() -> None:
    cfg = ClassifierConfig(n_features=3, n_classes=2, bidirectional=True)
    assert ClassifierConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelError, match="valid keys"):
        ClassifierConfig.from_dict({**cfg.to_dict(), "window": 4})
    with pytest.raises(ModelError, match="n_classes"):
        ClassifierConfig(n_features=3, n_classes=1)


@pytest.mark.parametrize(
    "settings",
    [
        sequence_settings(epochs=15, batch_size=16, learning_rate=0.01, patience=4, device="cpu"),
        seed_article(epochs=15, batch_size=16, patience=4, device="cpu"),
    ],
    ids=["adam", "seed_article_sgd_nesterov"],
)
def test_classifier_learns_a_separable_problem(settings: TrainConfig) -> None:
    x, y = separable(256, 0)
    vx, vy = separable(128, 1)
    cfg = ClassifierConfig(n_features=F, n_classes=2, hidden_size=8)
    model = trained(cfg, fit_classifier(x, y, vx, vy, cfg, settings))
    assert isinstance(model, LSTMClassifier)
    proba = classifier_probabilities(model, vx, batch_size=50)
    assert proba.shape == (128, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert (proba.argmax(axis=1) == vy).mean() > 0.9


def test_classifier_same_seed_gives_identical_weights() -> None:
    x, y = separable(48, 3)
    cfg = ClassifierConfig(n_features=F, n_classes=2, hidden_size=4, num_layers=2, dropout=0.3)
    settings = seed_article(epochs=2, batch_size=8, device="cpu")
    first = fit_classifier(x, y, x[:8], y[:8], cfg, settings, class_weights="balanced")
    second = fit_classifier(x, y, x[:8], y[:8], cfg, settings, class_weights="balanced")
    assert _same(first.state_dict, second.state_dict)


def test_class_weights(tmp_path: Path) -> None:
    assert balanced_class_weights(np.array([0, 0, 0, 1]), 2) == pytest.approx([4 / 6, 2.0])
    assert balanced_class_weights(np.array([0, 0]), 3) == pytest.approx([2 / 6, 1.0, 1.0])
    # The kind's rank work weighs the classes of the training windows so (model.class_weights: balanced).
    x, y = separable(40, 4)
    train, val = snapshot_plans(tmp_path, x, abnormal=y * 3)
    cfg = ClassifierConfig(n_features=F, n_classes=2, hidden_size=4)
    settings = sequence_settings(epochs=1, device="cpu")
    labels = window_labels(ShardReader(train, 0, 1).load())
    assert 0 < labels.sum() < len(labels)
    task, _ = ClassifierWork(train, val, cfg).build_task(settings, Collective())
    assert isinstance(task, ClassifierTask) and task.train_y is not None and task.weights is not None
    assert task.train_y.tolist() == labels.tolist()
    assert task.weights.tolist() == pytest.approx(balanced_class_weights(labels, 2))
    unweighted, _ = ClassifierWork(train, val, cfg, balanced=False).build_task(settings, Collective())
    assert isinstance(unweighted, ClassifierTask) and unweighted.weights is None


def test_classifier_refuses_bad_data(tmp_path: Path) -> None:
    """Windows and their labels are checked when a rank reads its shard."""
    x, y = separable(16, 5)
    cfg = ClassifierConfig(n_features=F, n_classes=2, hidden_size=4)
    settings = sequence_settings(epochs=1, device="cpu")

    def build(name: str, windows: np.ndarray, abnormal: np.ndarray | None) -> None:
        ClassifierWork(*snapshot_plans(tmp_path / name, windows, abnormal), cfg).build_task(settings, Collective())

    with pytest.raises(ModelError, match="expects"):
        build("narrow", x[:, :, :2], y)
    # Labels are each window's n_abnormal: a table without them, or with one class only, cannot train.
    with pytest.raises(StageInputError, match="n_abnormal"):
        build("unlabelled", x, None)
    with pytest.raises(StageInputError, match="normal and anomalous"):
        build("one_class", x, np.zeros(len(x), np.int64))
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        build("nan", bad, y)


def test_bidirectional_classifier_shape() -> None:
    model = LSTMClassifier(ClassifierConfig(n_features=F, n_classes=3, hidden_size=5, num_layers=2,
                                            bidirectional=True))
    assert model(torch.zeros(4, T, F)).shape == (4, 3)

