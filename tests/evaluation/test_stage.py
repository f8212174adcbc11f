"""``evaluate`` on a hand-made scores table whose metrics are worked out by hand."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest

from loganomaly.config import Config
from loganomaly.errors import StageInputError
from loganomaly.evaluation import stage as evaluate
from loganomaly.lake.schemas import TABLES
from loganomaly.models.autoencoder import LSTMAutoencoder, LSTMAutoencoderConfig
from loganomaly.models.bundle import save_bundle
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.window import ModelBundle

pytestmark = pytest.mark.spark

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 3, 5, tzinfo=UTC)
THRESHOLD = 0.5
# (entity, hour, score). Positives (by every label source below): a@0 (0.9) and b@2 (0.45).
# At 0.5: tp=1 (a0), fp=1 (a2), fn=1 (b2), tn=3 -> P=R=F1=0.5.
# ROC-AUC: 0.9 beats 4 negatives, 0.45 beats 3 -> 7/8. AP: 1*(1/2) + (2/3)*(1/2) = 5/6.
# Best F1 0.8 at cutoff 0.45 -> threshold midway to the next lower score 0.3: 0.375.
WINDOWS = [("a", 0, 0.9), ("a", 1, 0.2), ("a", 2, 0.6), ("b", 0, 0.3), ("b", 1, 0.1), ("b", 2, 0.45)]


def _h(hour: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hour)


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, str]:
    cfg = LSTMAutoencoderConfig(n_features=2, window_steps=3, hidden_size=4)
    bundle = ModelBundle(
        model_cfg=cfg,
        state_dict=LSTMAutoencoder(cfg).state_dict(),
        normaliser=Normaliser([0.0, 0.0], [1.0, 1.0]),
        threshold=THRESHOLD,
        feature_names=["f1", "f2"],
        features={},
    )
    save_bundle(tmp_path / "model", bundle)
    return tmp_path / "model", bundle.version


@pytest.fixture
def scored(spark, lake, model):  # type: ignore[no-untyped-def]
    model_dir, version = model
    rows = [
        (e, _h(h), _h(h + 1), T0.date(), s, THRESHOLD, s > THRESHOLD, "", [], version, "score-1")
        for e, h, s in WINDOWS
    ]
    # Another model's scores of the same windows must not be evaluated.
    rows.append(("a", _h(1), _h(2), T0.date(), 99.0, 1.0, True, "", [], "other-model", "score-0"))
    lake.write("scores", spark.createDataFrame(rows, TABLES["scores"].ddl), partition_by=("date",))
    return model_dir


def _intervals(tmp_path: Path) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(
        "entity,start,end,kind\n"
        "a,2024-03-05T00:30:00Z,2024-03-05T00:45:00Z,port_scan\n"
        # touches b@1's end only (windows are half-open), overlaps b@2
        "b,2024-03-05T02:00:00Z,2024-03-05T02:30:00+00:00,failure_storm\n"
        "c,2024-03-05T00:00:00,2024-03-05T05:00:00,unscored_entity\n"
    )
    return path


def _assert_hand_metrics(summary: evaluate.EvaluationSummary) -> None:
    assert (summary.n_windows, summary.n_positive) == (6, 2)
    stored, best = summary.results["stored"], summary.results["best_f1"]
    assert stored["threshold"] == THRESHOLD
    assert (stored["tp"], stored["fp"], stored["tn"], stored["fn"]) == (1, 1, 3, 1)
    assert stored["precision"] == pytest.approx(0.5)
    assert stored["recall"] == pytest.approx(0.5)
    assert stored["f1"] == pytest.approx(0.5)
    assert stored["roc_auc"] == pytest.approx(7 / 8)
    assert stored["pr_auc"] == pytest.approx(5 / 6)
    # What an analyst reads: 1 of 4 benign windows flagged; 2 alerts over 2 entity-days (a and b,
    # one day), 1 of them false; flagging all 6 windows (2 anomalous) gives F1 2 * (1/3) / (4/3).
    assert stored["fpr"] == pytest.approx(0.25)
    assert stored["n_entity_days"] == 2
    assert stored["alerts_per_entity_day"] == pytest.approx(1.0)
    assert stored["false_alerts_per_entity_day"] == pytest.approx(0.5)
    assert stored["flag_all_f1"] == pytest.approx(0.5)
    assert best["threshold"] == pytest.approx(0.375)
    assert (best["tp"], best["fp"], best["tn"], best["fn"]) == (2, 1, 3, 0)
    assert best["precision"] == pytest.approx(2 / 3)
    assert best["recall"] == pytest.approx(1.0)
    assert best["f1"] == pytest.approx(0.8)


def test_interval_labels_give_the_hand_computed_metrics(spark, lake, scored, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    summary = evaluate.run(spark, Config(), scored, labels=str(_intervals(tmp_path)), lake=lake)
    _assert_hand_metrics(summary)
    rows = {r.threshold_kind: r for r in lake.read("evaluations").collect()}
    assert set(rows) == {"stored", "best_f1"}
    stored = rows["stored"]
    assert (stored.tp, stored.fp, stored.tn, stored.fn, stored.n_windows, stored.n_positive) == (1, 1, 3, 1, 6, 2)
    assert stored.label_source == f"file:{(tmp_path / 'labels.csv').resolve()}"
    assert stored.model_version == summary.model_version and stored.run_id == summary.run_id
    assert stored.roc_auc == pytest.approx(7 / 8) and rows["best_f1"].f1 == pytest.approx(0.8)
    assert list(lake.read("evaluations").columns) == list(TABLES["evaluations"].columns)


def test_event_labels_give_the_same_metrics(spark, lake, scored) -> None:  # type: ignore[no-untyped-def]
    events = [
        ("a", _h(0.5), "attack"),
        ("a", _h(1.2), "normal"),
        ("a", _h(2.0), "-"),
        ("b", _h(0.1), " BENIGN "),  # normal labels compare case-insensitively, trimmed
        ("b", _h(2) - dt.timedelta(seconds=1), None),
        ("b", _h(2.1), "Anomaly"),
        ("b", _h(3), "attack"),  # at b@2's window_end: in no window
        ("c", _h(0.5), "attack"),
    ]
    lake.write("events", spark.createDataFrame(events, "entity string, ts timestamp, label string"))
    summary = evaluate.run(spark, Config(), scored, lake=lake)
    assert summary.label_source == evaluate.EVENTS_SOURCE
    _assert_hand_metrics(summary)


def test_key_labels_and_unlisted_keys(spark, lake, scored, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "anomaly_label.csv"
    keys.write_text("BlockId,Label\na,Anomaly\nb,Normal\nc,Anomaly\n")
    summary = evaluate.run(spark, Config(), scored, labels=str(keys), lake=lake)
    # positives a (0.9, 0.2, 0.6); at 0.5 a0 and a2 are caught, no b window crosses it
    stored = summary.results["stored"]
    assert (summary.n_windows, summary.n_positive, summary.n_unlabelled) == (6, 3, 0)
    assert (stored["tp"], stored["fp"], stored["tn"], stored["fn"]) == (2, 0, 3, 1)

    only_a = tmp_path / "only_a.csv"
    only_a.write_text("key,label\na,1\n")
    summary = evaluate.run(spark, Config(), scored, labels=str(only_a), lake=lake)
    # b is not listed: its windows are unknown, left out; one class left -> AUCs undefined
    assert (summary.n_windows, summary.n_positive, summary.n_unlabelled) == (3, 3, 3)
    assert set(summary.results) == {"stored"} and summary.note
    assert math.isnan(summary.results["stored"]["roc_auc"])
    assert summary.as_dict()["results"]["stored"]["roc_auc"] is None
    row = [r for r in lake.read("evaluations").collect() if r.label_source.endswith("only_a.csv")]
    assert len(row) == 1 and row[0].roc_auc is None and row[0].tp == 2


def test_rerun_replaces_rows_of_the_same_model_and_labels(spark, lake, scored, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    labels = str(_intervals(tmp_path))
    first = evaluate.run(spark, Config(), scored, labels=labels, lake=lake)
    second = evaluate.run(spark, Config(), scored, labels=labels, lake=lake)
    rows = lake.read("evaluations").collect()
    assert len(rows) == 2 and {r.run_id for r in rows} == {second.run_id} != {first.run_id}
    assert lake.version("evaluations") == 1  # created, then merged once
    lake.write("events", spark.createDataFrame([("a", _h(0.5), "x")], "entity string, ts timestamp, label string"))
    evaluate.run(spark, Config(), scored, lake=lake)  # another label source: its own rows
    assert lake.read("evaluations").count() == 4


def test_bad_inputs_are_refused(spark, lake, scored, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.csv"
    bad.write_text("host,when\na,now\n")
    with pytest.raises(StageInputError, match="neither"):
        evaluate.run(spark, Config(), scored, labels=str(bad), lake=lake)
    with pytest.raises(StageInputError, match="does not exist"):
        evaluate.run(spark, Config(), scored, labels=str(tmp_path / "missing.csv"), lake=lake)
    with pytest.raises(StageInputError, match="events"):
        evaluate.run(spark, Config(), scored, lake=lake)  # no file and no events table
