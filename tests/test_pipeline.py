"""The whole pipeline end to end on generated data, on real Spark and real Delta tables."""

from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest

from loganomaly.cli import main
from loganomaly.config import load_config
from loganomaly.features import stage as featurize
from loganomaly.ingest import stage as ingest
from loganomaly.ingest import synthetic
from loganomaly.lake.tables import Lake
from loganomaly.scoring import stage as score
from loganomaly.training import stage as train

pytestmark = pytest.mark.spark

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def cfg(run_dir: Path):  # type: ignore[no-untyped-def]
    return load_config(
        profile="test", overrides=[f"lake.root={run_dir / 'lake'}", "lake.engine=deltars"], conf_dir=CONF
    )


@pytest.fixture(scope="module")
def built(spark, cfg, run_dir: Path):  # type: ignore[no-untyped-def]
    data = synthetic.generate(run_dir / "raw", cfg.generate)
    lake = Lake(spark, cfg.lake.root, "deltars")
    summaries = {
        "ingest": ingest.run(spark, cfg, [str(run_dir / "raw")], lake=lake),
        "featurize": featurize.run(spark, cfg, lake=lake),
        "train": train.run(spark, cfg, run_dir / "model", lake=lake),
        "score": score.run(spark, cfg, run_dir / "model", lake=lake),
    }
    return data, lake, summaries


def test_every_line_is_an_event_or_quarantined(built) -> None:  # type: ignore[no-untyped-def]
    data, lake, summaries = built
    events, quarantined = lake.read("events").count(), lake.read("quarantine").count()
    assert events + quarantined == data.n_lines
    assert summaries["ingest"].events == events
    ledger = lake.read("ingested_files").collect()
    assert len(ledger) == len(data.files)
    assert all(r.lines == r.events + r.quarantined for r in ledger)
    for name in ("events", "quarantine", "ingested_files", "sequences", "scores", "anomalies"):
        assert os.path.isdir(os.path.join(lake.root, name, "_delta_log")), name


def test_ingest_again_adds_nothing(spark, cfg, built, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    _, lake, _ = built
    before = (lake.version("events"), lake.read("events").count())
    again = ingest.run(spark, cfg, [str(run_dir / "raw")], lake=lake)
    assert again.files_loaded == 0
    assert (lake.version("events"), lake.read("events").count()) == before


def test_score_rerun_gives_the_same_rows(spark, cfg, built, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    _, lake, _ = built

    def snapshot():  # type: ignore[no-untyped-def]
        rows = lake.read("scores").select("entity", "window_start", "score", "is_anomaly").collect()
        return sorted((r.entity, r.window_start, round(r.score, 6), r.is_anomaly) for r in rows)

    def anomalies():  # type: ignore[no-untyped-def]
        rows = lake.read("anomalies").select("entity", "window_start", "score", "explanation").collect()
        return sorted((r.entity, r.window_start, round(r.score, 6), r.explanation) for r in rows)

    first, flagged = snapshot(), anomalies()
    assert flagged and len(flagged) == sum(1 for r in first if r[3])
    # only flagged windows are explained; the anomalies table holds them with their explanations
    rows = lake.read("scores").select("is_anomaly", "explanation", "top_features").collect()
    assert all((r.explanation != "" and bool(r.top_features)) == r.is_anomaly for r in rows)
    score.run(spark, cfg, run_dir / "model", lake=lake)
    assert snapshot() == first
    assert anomalies() == flagged
    # one date alone can be re-scored without touching the others
    day = first[-1][1].date().isoformat()
    score.run(spark, cfg, run_dir / "model", date=day, lake=lake)
    assert snapshot() == first
    # since the last run: only the last scored date (it may have been partial) is scored again
    again = score.run(spark, cfg, run_dir / "model", since_last_run=True, lake=lake)
    last = max(r[1] for r in first).date().isoformat()
    assert again.dates == [last]
    assert snapshot() == first
    assert anomalies() == flagged


def test_a_score_killed_between_its_two_commits_is_repaired_by_the_next_run(spark, cfg, built, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The first commit alone (``scores`` of a day from another model, flags changed), then a real
    ``score`` of another day: ``anomalies`` of the first day is repaired from ``scores``."""
    from pyspark.sql import functions as F

    _, lake, _ = built

    def flagged(name: str):  # type: ignore[no-untyped-def]
        df = lake.read(name)
        df = df.where(F.col("is_anomaly")) if name == "scores" else df
        return sorted((r.entity, r.window_start, r.run_id, r.model_version) for r in df.collect())

    days = sorted({r.date for r in lake.read("scores").select("date").collect()})
    first, last = days[0], days[-1]
    crashed = (
        lake.read("scores").where(F.col("date") == F.lit(first))
        .withColumn("is_anomaly", ~F.col("is_anomaly"))
        .withColumn("model_version", F.lit("another-model")).withColumn("run_id", F.lit("score-killed"))
        .localCheckpoint()
    )  # fmt: skip
    lake.write("scores", crashed, mode="overwrite", partition_by=["date"], replace_where={"date": [first.isoformat()]})
    assert flagged("scores") != flagged("anomalies")  # the state between the two commits
    score.run(spark, cfg, run_dir / "model", date=last.isoformat(), lake=lake)
    assert flagged("scores") == flagged("anomalies")
    assert {r[2] for r in flagged("anomalies") if r[1].date() == first} == {"score-killed"}
    score.run(spark, cfg, run_dir / "model", date=first.isoformat(), lake=lake)  # the real model again
    assert flagged("scores") == flagged("anomalies")


def test_injected_anomalies_rank_above_normal_windows(built) -> None:  # type: ignore[no-untyped-def]
    data, lake, summaries = built
    with open(data.labels_path, newline="") as fh:
        labels = [
            (
                r["entity"],
                dt.datetime.fromisoformat(r["start"].replace("Z", "+00:00")),
                dt.datetime.fromisoformat(r["end"].replace("Z", "+00:00")),
                r["kind"],
            )
            for r in csv.DictReader(fh)
        ]
    assert labels
    rows = lake.read("scores").collect()

    def overlapping(row, label):  # type: ignore[no-untyped-def]
        entity, start, end, _ = label
        ws = (
            row.window_start.replace(tzinfo=dt.timezone.utc)
            if row.window_start.tzinfo is None
            else row.window_start
        )
        we = (
            row.window_end.replace(tzinfo=dt.timezone.utc)
            if row.window_end.tzinfo is None
            else row.window_end
        )
        return row.entity == entity and ws < end and we > start

    normal = np.array([r.score for r in rows if not any(overlapping(r, lab) for lab in labels)])
    assert len(normal) > 100
    high = np.quantile(normal, 0.99)
    for label in labels:
        best = max(r.score for r in rows if overlapping(r, label))
        assert best > high, f"{label[3]} on {label[0]} scored {best:.4f} <= normal p99 {high:.4f}"
        assert any(r.is_anomaly for r in rows if overlapping(r, label)), f"{label[3]} not flagged"
    # the threshold keeps false alarms on normal windows rare
    threshold = summaries["train"].threshold
    assert (normal > threshold).mean() < 0.05


def test_sql_command_reads_the_tables(built, capsys) -> None:  # type: ignore[no-untyped-def]
    _, lake, _ = built
    code = main(
        [
            "sql",
            "--lake",
            lake.root,
            "--conf-dir",
            str(CONF),
            "--profile",
            "test",
            "SELECT entity, count(*) AS n FROM anomalies GROUP BY entity ORDER BY n DESC",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "entity" in out and "host-" in out


def test_local_sql_reads_the_same_snapshots_as_spark(spark, cfg, built) -> None:  # type: ignore[no-untyped-def]
    from loganomaly.errors import LogAnomalyError
    from loganomaly.lake import sql

    _, lake, _ = built
    query = "SELECT entity, count(*) AS n FROM scores GROUP BY entity ORDER BY entity"
    local = sql.run_local(cfg.lake.root, query).to_pylist()
    remote = [r.asDict() for r in sql.run(spark, cfg, query, lake=lake).collect()]
    assert local == remote and sum(r["n"] for r in local) == lake.read("scores").count()
    assert "events" in sql.local_tables(cfg.lake.root)
    with pytest.raises(LogAnomalyError, match="DataFusion"):
        sql.run_local(cfg.lake.root, "SELECT * FROM no_such_table")
    with pytest.raises(LogAnomalyError, match="SELEC is not a read-only statement"):
        sql.run_local(cfg.lake.root, "SELEC 1")  # refused by the read-only check before DataFusion
