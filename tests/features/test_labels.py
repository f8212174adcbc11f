"""One list of normal labels, read when training and when judging: ``0`` and ``false`` are normal in both.

The defect this guards against: featurize counted a label ``0`` as abnormal (``sequences.n_abnormal``,
what ``train.normal_only`` and the classifier train on) while evaluate counted it as normal, so the
same window was an anomaly when training and a normal window when judging.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from loganomaly.evaluation import stage as evaluate
from loganomaly.features import stage as featurize
from loganomaly.features.labels import NORMAL_LABELS, is_abnormal_label, is_normal_value
from loganomaly.lake.schemas import TABLES
from tests.features.test_stage import DAY1, config, event, write_events

#: Label values and whether they mean abnormal.
VALUES: dict[str | None, bool] = {
    "0": False, "false": False, " FALSE ": False, "-": False, "": False, "Normal": False, "Benign": False,
    "background": False, None: False,
    "1": True, "true": True, "attack": True, "Malicious": True, "Anomaly": True,
}
#: One host per label value; every event of a host carries its label.
HOST_LABELS: dict[str, str | None] = {"h0": "0", "h1": "false", "h2": "FALSE", "h3": "-", "h4": None,
                                      "h5": "1", "h6": "attack"}
ABNORMAL_HOSTS = {"h5", "h6"}


def test_zero_and_false_are_in_the_one_normal_list() -> None:
    assert {"0", "false"} <= set(NORMAL_LABELS)
    # evaluate judges with the list featurize counts with, not a copy of its own
    assert tuple(evaluate.DEFAULT_NORMAL_LABELS) == tuple(NORMAL_LABELS)
    for value, abnormal in VALUES.items():
        assert is_normal_value(value) is not abnormal, value


@pytest.mark.spark
def test_the_spark_rule_is_the_python_rule(spark) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    df = spark.createDataFrame([(v,) for v in VALUES], "label string")
    got = {r.label: r.abnormal for r in df.select("label", is_abnormal_label(F.col("label")).alias("abnormal")).collect()}
    assert got == VALUES


@pytest.mark.spark
def test_label_zero_is_normal_when_training_and_when_judging(spark, lake) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    rows, n = [], 0
    for host, label in HOST_LABELS.items():
        for i in range(3):
            rows.append(event(DAY1 + dt.timedelta(seconds=20 * i), n, "TA", entity=host, label=label))
            n += 1
    write_events(spark, lake, rows)
    featurize.run(spark, config(str(lake.root)), lake=lake, top_templates=1, session_key="column:entity")

    # Training's view: n_abnormal of the windows (train.normal_only, the classifier's classes) ...
    windows = lake.read("sequences").select("entity", "window_start", "window_end", "date", "n_abnormal")
    trained = {(r.entity, r.window_start): r.n_abnormal for r in windows.collect()}
    assert {e for e, _ in trained} == set(HOST_LABELS)
    assert {e for (e, _), k in trained.items() if k > 0} == ABNORMAL_HOSTS
    assert all(k == 3 for (e, _), k in trained.items() if e in ABNORMAL_HOSTS)
    # ... and the session labels DeepLog trains on (a null label is a normal session).
    sessions = {r.session_key: r.label for r in lake.read("sessions").collect()}
    assert sessions == {h: (label if h in ABNORMAL_HOSTS else None) for h, label in HOST_LABELS.items()}

    # Judging's view: the events labelling evaluate applies, window by window.
    judged = evaluate.label_windows_by_events(windows, lake.read("events"), evaluate.DEFAULT_NORMAL_LABELS)
    by_window = {(r.entity, r.window_start): r.label for r in judged.collect()}
    assert by_window == {key: int(k > 0) for key, k in trained.items()}

    # The same through the stage's own entry point (default labels), on scores that are n_abnormal.
    scores = windows.select(
        "entity", "window_start", "window_end", "date", F.col("n_abnormal").cast("double").alias("score"),
        F.lit(0.5).alias("threshold"), (F.col("n_abnormal") > 0).alias("is_anomaly"), F.lit("").alias("explanation"),
        F.array().cast("array<string>").alias("top_features"), F.lit("m").alias("model_version"),
        F.lit("score-1").alias("run_id"),
    )
    lake.write("scores", spark.createDataFrame(scores.collect(), TABLES["scores"].ddl), partition_by=("date",))
    data = evaluate.labelled_windows(spark, lake, "m")
    assert data.label_source == evaluate.EVENTS_SOURCE and data.n_unlabelled == 0
    assert len(data.labels) == len(trained)
    np.testing.assert_array_equal(data.labels, (data.scores > 0).astype(np.int64))
