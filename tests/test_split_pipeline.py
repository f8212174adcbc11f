"""Separate training and scoring inputs (``pipeline --train-input/--score-input``), on real Spark and Delta.

Two data sets, both from the project's generator: CSV metric series (the ``metrics`` profile:
numeric columns become per-step features) through the library, and HDFS-format block logs through
the command line with the ``hdfs`` profile (DeepLog from raw lines, judged by a block label file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from loganomaly import pipeline
from loganomaly.cli import main
from loganomaly.config import load_config
from loganomaly.evaluation import stage as evaluate
from loganomaly.features.layout import decode_windows
from loganomaly.ingest import synthetic
from loganomaly.lake.tables import Lake

pytestmark = [pytest.mark.spark, pytest.mark.slow]

CONF = Path(__file__).resolve().parents[1] / "conf"
SMALL = ["spark.master=local[2]", "spark.shuffle_partitions=2", "spark.log_level=ERROR", "lake.engine=deltars"]


@pytest.fixture(scope="module")
def metrics_run(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("split-metrics")
    train_data = synthetic.generate_metrics(root / "train", hosts=3, days=2, anomalies=0, seed=1)
    score_data = synthetic.generate_metrics(root / "score", hosts=3, days=1, start="2024-03-10", anomalies=4, seed=2)
    cfg = load_config(profile="metrics", conf_dir=CONF,
                      overrides=[*SMALL, f"lake.root={root / 'lake'}", "train.epochs=25", "train.device=cpu"])
    model_dir = root / "model"
    summary = pipeline.run_split(spark, cfg, model_dir, [str(train_data.files[0])], [str(score_data.files[0])])
    return cfg, root, model_dir, summary, train_data, score_data


def test_training_and_scoring_inputs_land_in_separate_lakes(spark, metrics_run) -> None:  # type: ignore[no-untyped-def]
    cfg, root, _, summary, train_data, score_data = metrics_run
    training = Lake(spark, str(root / "lake" / pipeline.TRAINING_LAKE), "deltars")
    scoring = Lake(spark, str(root / "lake"), "deltars")
    files = {r.file for r in training.read("events").select("file").distinct().collect()}
    assert files == {str(train_data.files[0].resolve())}
    files = {r.file for r in scoring.read("events").select("file").distinct().collect()}
    assert files == {str(score_data.files[0].resolve())}
    # every CSV line is an event or quarantined (the header row is quarantined as a header)
    assert scoring.read("events").count() + scoring.read("quarantine").count() == score_data.n_lines
    scored_dates = {r.date.isoformat() for r in scoring.read("scores").select("date").distinct().collect()}
    assert scored_dates == {"2024-03-10"}
    assert summary.stages["featurize_score"]["feature_names"] == summary.stages["featurize_train"]["feature_names"]


def test_metric_columns_become_features_relative_to_each_hosts_trailing_median(spark, metrics_run) -> None:  # type: ignore[no-untyped-def]
    """The metrics profile judges each metric against the host's own last hour, not its training level."""
    _, root, _, summary, _, _ = metrics_run
    names = summary.stages["featurize_train"]["feature_names"]
    assert [n for n in names if "metric:" in n] == ["rel:metric:cpu", "rel:metric:mem_used", "rel:metric:disk_io"]
    # a window in the afternoon, hours into the scored day: each host's baseline is its own history
    row = (Lake(spark, str(root / "lake"), "deltars").read("sequences")
           .where("window_start = timestamp'2024-03-10 15:00:00' AND n_abnormal = 0").first())
    x = decode_windows(pa.array([row.features]), row.n_steps, row.n_features)[0]
    memory = x[:, names.index("rel:metric:mem_used")]
    disk = x[:, names.index("rel:metric:disk_io")]
    # log ratios to the trailing median: memory moves by well under 1 % a minute, disk I/O by noise
    assert np.abs(memory).max() < 0.01 and np.abs(disk).max() < 0.5
    assert np.abs(disk).max() > 0  # not a constant


def test_injected_incidents_are_found_in_the_scored_input(spark, metrics_run) -> None:  # type: ignore[no-untyped-def]
    cfg, _, model_dir, _, _, _ = metrics_run
    result = evaluate.run(spark, cfg, model_dir)
    assert result.n_positive > 0
    assert result.results["stored"]["roc_auc"] >= 0.9
    assert result.results["stored"]["recall"] >= 0.75


def test_rerunning_the_split_pipeline_duplicates_nothing(spark, metrics_run) -> None:  # type: ignore[no-untyped-def]
    cfg, root, model_dir, first, train_data, score_data = metrics_run
    before = Lake(spark, str(root / "lake"), "deltars").read("events").count()
    again = pipeline.run_split(spark, cfg, model_dir, [str(train_data.files[0])], [str(score_data.files[0])])
    assert again.stages["ingest_train"]["files_loaded"] == 0
    assert again.stages["ingest_score"]["files_loaded"] == 0
    lake = Lake(spark, str(root / "lake"), "deltars")
    assert lake.read("events").count() == before
    version = again.stages["score"]["model_version"]
    scored = lake.read("scores").where(f"model_version = '{version}'").count()
    assert scored == again.stages["score"]["windows"] == first.stages["score"]["windows"]


def test_deeplog_from_raw_hdfs_lines_through_the_cli(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    train_data = synthetic.generate_hdfs(tmp_path / "train", blocks=160, anomalous=0, seed=3)
    # the scored blocks start ten minutes before midnight, so their sessions fall on two dates
    score_data = synthetic.generate_hdfs(tmp_path / "score", blocks=60, anomalous=6, seed=4,
                                         start="2008-11-10T23:50:00")
    common = ["--profile", "hdfs", "--conf-dir", str(CONF), "--lake", str(tmp_path / "lake"),
              "--log-level", "WARNING", *(x for s in [*SMALL, "model.hidden_size=32", "model.num_layers=1",
                                                       "train.epochs=30", "train.device=cpu", "model.history=4"]
                                           for x in ("--set", s))]
    assert main(["pipeline", *common, "--model-dir", str(tmp_path / "model"),
                 "--train-input", str(train_data.files[0]), "--score-input", str(score_data.files[0])]) == 0
    # the stages' summaries as JSON, then the top anomalies as a table
    stages, _ = json.JSONDecoder().raw_decode(capsys.readouterr().out)
    scored = stages["score"]
    assert scored["dates"] == ["2008-11-10", "2008-11-11"] and scored["windows"] == 60

    # --since-last-run works for DeepLog too: only the last scored date again, its rows replaced
    assert main(["score", *common, "--model-dir", str(tmp_path / "model"), "--since-last-run"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["model_version"] == scored["model_version"] and again["dates"] == ["2008-11-11"]
    assert 0 < again["windows"] < 60

    assert main(["evaluate", *common, "--model-dir", str(tmp_path / "model"),
                 "--labels", str(score_data.labels_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_windows"] == 60 and out["n_positive"] == 6
    stored = out["results"]["stored"]
    assert stored["recall"] == 1.0
    assert stored["precision"] >= 0.8
