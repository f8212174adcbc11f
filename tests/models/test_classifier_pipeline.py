"""The supervised classifier as a product path (``model.kind=classifier``), on real Spark and Delta.

Metric series from the project's generator carry ``label=incident`` on the rows of injected
episodes; featurize counts them per window (``sequences.n_abnormal``), and the classifier learns
normal against anomalous windows. Training runs on two TorchDistributor ranks, so the labels,
the class counts behind the loss weights and the equal batches cross process boundaries.
"""

from __future__ import annotations

import pytest

from loganomaly import pipeline
from loganomaly.config import load_config
from loganomaly.errors import ConfigError, StageInputError
from loganomaly.evaluation import stage as evaluate
from loganomaly.ingest import synthetic
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import load_bundle
from loganomaly.models.classifier import ClassifierConfig
from loganomaly.models.window import ModelBundle
from loganomaly.training import stage as train
from tests.test_split_pipeline import CONF, SMALL

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def classifier_run(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("classifier")
    train_data = synthetic.generate_metrics(root / "train", hosts=3, days=2, anomalies=12, seed=3)
    score_data = synthetic.generate_metrics(root / "score", hosts=3, days=1, start="2024-03-10", anomalies=4, seed=4)
    cfg = load_config(profile="metrics", conf_dir=CONF, overrides=[
        *SMALL, f"lake.root={root / 'lake'}", "model.kind=classifier", "train.epochs=15", "train.device=cpu",
        "train.backend=torch_distributor", "train.num_processes=2", "train.learning_rate=0.01",
    ])
    model_dir = root / "model"
    summary = pipeline.run_split(spark, cfg, model_dir, [str(train_data.files[0])], [str(score_data.files[0])])
    return cfg, root, model_dir, summary


def test_classifier_bundle_records_both_classes_and_equal_batches(classifier_run) -> None:  # type: ignore[no-untyped-def]
    _, _, model_dir, _ = classifier_run
    bundle = load_bundle(model_dir)
    assert isinstance(bundle, ModelBundle) and isinstance(bundle.model_cfg, ClassifierConfig)
    assert bundle.kind == ClassifierConfig.bundle_kind and bundle.model_cfg.n_classes == 2
    assert bundle.training["backend"] == "torch_distributor"
    history = bundle.training["history"]
    assert all(h["batches_min"] == h["batches_max"] for h in history)
    assert bundle.metrics["best_val_loss"] < history[0]["val_loss"] or bundle.metrics["best_epoch"] == 0
    assert 0.0 < bundle.threshold < 1.0


def test_classifier_finds_the_incidents_of_the_scored_input(spark, classifier_run) -> None:  # type: ignore[no-untyped-def]
    cfg, root, model_dir, _ = classifier_run
    result = evaluate.run(spark, cfg, model_dir)
    assert result.n_positive > 0
    assert result.results["stored"]["roc_auc"] >= 0.9
    assert result.results["stored"]["recall"] >= 0.75
    rows = Lake(spark, str(root / "lake"), "deltars").read("scores").collect()
    assert all(0.0 <= r.score <= 1.0 for r in rows)
    flagged = [r for r in rows if r.is_anomaly]
    # Flagged windows are explained by occlusion: the features without which P(anomalous) falls most.
    assert flagged and all(r.top_features and "without it" in r.explanation for r in flagged)
    assert all(r.explanation == "" for r in rows if not r.is_anomaly)
    named = [name for r in flagged for name in r.top_features[:1]]
    # The injected episodes are a stuck CPU with collapsing disk I/O.
    # (the metrics profile reads each metric against the host's trailing median: rel:metric:<name>)
    assert {"rel:metric:cpu", "rel:metric:disk_io"} & set(named)


def test_classifier_refuses_unlabelled_training_data(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from loganomaly.features import stage as featurize
    from loganomaly.ingest import stage as ingest

    # Training on normal windows only would leave the classifier one class: the kind refuses it first.
    normal_only = load_config(profile="metrics", conf_dir=CONF, overrides=[
        *SMALL, f"lake.root={tmp_path / 'lake'}", "model.kind=classifier", "train.normal_only=true",
    ])
    with pytest.raises(ConfigError, match="normal_only"):
        train.run(spark, normal_only, tmp_path / "model")
    clean = synthetic.generate_metrics(tmp_path / "clean", hosts=2, days=1, anomalies=0, seed=5)
    cfg = load_config(profile="metrics", conf_dir=CONF, overrides=[
        *SMALL, f"lake.root={tmp_path / 'lake'}", "model.kind=classifier", "train.epochs=1", "train.device=cpu",
    ])
    ingest.run(spark, cfg, [str(clean.files[0])])
    featurize.run(spark, cfg)
    with pytest.raises(StageInputError, match="normal and anomalous"):
        train.run(spark, cfg, tmp_path / "model")
