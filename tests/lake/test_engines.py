"""The two table engines together: each reads, merges and time-travels what the other wrote;
``auto`` picks delta-spark when the session has it and falls back to ``deltars`` otherwise;
``loganomaly sql`` time-travels; the whole pipeline runs on each engine.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from loganomaly.errors import DeltaJarsError
from loganomaly.lake.tables import Lake
from loganomaly.runtime import delta_jars
from tests.conftest import ENGINES, ROOT, require_engine

pytestmark = pytest.mark.spark

CONF = ROOT / "conf"
SCHEMA = "id bigint, ts timestamp, date date, host string, tags array<string>, attrs map<string,string>"


def rows(ids, day=1, host=None):  # type: ignore[no-untyped-def]
    return [
        (
            i,
            dt.datetime(2024, 3, day, 10, 0, i % 60),
            dt.date(2024, 3, day),
            host or f"h{i % 3}",
            ["a", str(i)],
            {"k": str(i)},
        )
        for i in ids
    ]


def commit_engine(table: str, version: int) -> str:
    """Who wrote a commit, from its commitInfo (delta-spark: engineInfo; delta-rs: clientVersion)."""
    log_file = Path(table) / "_delta_log" / f"{version:020d}.json"
    for line in log_file.read_text().splitlines():
        info = json.loads(line).get("commitInfo")
        if info is not None:
            return str(info.get("engineInfo") or info.get("clientVersion") or info)
    raise AssertionError(f"no commitInfo in {log_file}")


@pytest.mark.parametrize(("writer", "reader"), [("deltars", "delta"), ("delta", "deltars")])
def test_each_engine_reads_merges_and_time_travels_the_others_table(spark, tmp_path, writer, reader):
    require_engine(spark, "delta")
    first, second = Lake(spark, tmp_path, engine=writer), Lake(spark, tmp_path, engine=reader)
    v0 = spark.createDataFrame(rows(range(4), 1) + rows(range(4, 6), 2), SCHEMA)
    first.write("events", v0, partition_by=["date"], run_id="w0")
    first.write(
        "events", spark.createDataFrame(rows([40], 2), SCHEMA), mode="overwrite", replace_where={"date": ["2024-03-02"]}
    )
    assert ("Delta-Lake" in commit_engine(first.path("events"), 1)) == (writer == "delta")

    # the other engine reads the latest snapshot and time-travels to the first one
    assertDataFrameEqual(second.read("events"), first.read("events"))
    assert sorted(r.id for r in second.read("events").collect()) == [0, 1, 2, 3, 40]
    assertDataFrameEqual(second.read("events", version=0), v0)
    assert [h["version"] for h in second.history("events")] == [1, 0]
    assert second.history("events")[1]["runId"] == "w0"

    # ... merges into it (one update, one insert) ...
    upsert = spark.createDataFrame(rows([3, 50], 1), SCHEMA).withColumn("host", F.lit("merged"))
    assert second.merge("events", upsert, keys=["id"]) == 2
    assert ("Delta-Lake" in commit_engine(first.path("events"), 2)) == (reader == "delta")
    hosts = {r.id: r.host for r in first.read("events").collect()}
    assert hosts == {0: "h0", 1: "h1", 2: "h2", 3: "merged", 40: "h1", 50: "merged"}

    # ... and the first engine still reads every version, including the other's merge
    assert first.read("events", version=1).count() == 5
    assert first.version("events") == second.version("events") == 2
    assert {r.id for r in first.read("events", version=2).collect()} == {0, 1, 2, 3, 40, 50}
    # appends keep going from either side on the same log
    first.write("events", spark.createDataFrame(rows([60], 2), SCHEMA))
    assert second.read("events").count() == 7


def test_auto_prefers_delta_spark_when_the_session_has_it(spark, tmp_path, caplog):
    require_engine(spark, "delta")
    with caplog.at_level(logging.INFO, logger="loganomaly.lake.tables"):
        lake = Lake(spark, tmp_path, engine="auto")
    assert lake.engine == "delta"
    assert any("auto -> delta" in r.getMessage() and "DeltaSparkSessionExtension" in r.getMessage()
               for r in caplog.records)
    # the session is path-based: Delta's catalog is on, and nothing is registered in a metastore
    assert spark.conf.get("spark.sql.catalog.spark_catalog") == delta_jars.DELTA_CATALOG
    assert Path(spark.conf.get("spark.jars").split(",")[0].removeprefix("file:")).name.startswith("io.delta_")
    # parameterized SQL still binds with Delta's parser on the session (delta-io/delta#7640)
    assert spark.sql("SELECT :x + 1 AS y", args={"x": 41}).first().y == 42
    assert spark.sql("SELECT ? AS y", args=[7]).first().y == 7


def test_a_delta_spark_write_rebuilds_the_table_state_in_few_tasks(spark, tmp_path):
    """Delta's log replay shuffles as wide as the session's shuffles, not its default 50 partitions."""
    require_engine(spark, "delta")
    assert spark.conf.get("spark.databricks.delta.snapshotPartitions") == spark.conf.get("spark.sql.shuffle.partitions")
    lake = Lake(spark, tmp_path, engine="delta")
    df = spark.createDataFrame(rows(range(10)), SCHEMA)
    lake.write("events", df, partition_by=["date"])
    tracker = spark.sparkContext.statusTracker()
    before = set(tracker.getJobIdsForGroup(None))
    lake.write("events", df, mode="overwrite", replace_where={"date": ["2024-03-01"]})
    stages = [tracker.getStageInfo(s) for j in set(tracker.getJobIdsForGroup(None)) - before
              for s in tracker.getJobInfo(j).stageIds]
    # 159 tasks with Delta's default of 50 (three shuffle stages of 50 plus the write)
    assert 0 < sum(s.numTasks for s in stages if s is not None) < 50


FALLBACK = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
    from loganomaly.config import SparkConfig
    from loganomaly.errors import EngineUnavailableError
    from loganomaly.runtime.spark import get_spark
    from loganomaly.lake.tables import Lake

    spark = get_spark(SparkConfig(master="local[1]", log_level="ERROR", delta_jars=False))
    lake = Lake(spark, sys.argv[1], engine="auto")
    df = spark.createDataFrame([(1, "a")], "id bigint, s string")
    lake.write("t", df)
    print("ENGINE", lake.engine, lake.read("t").count())
    try:
        Lake(spark, sys.argv[1], engine="delta")
    except EngineUnavailableError as exc:
        print("REFUSED", exc)
    """
)


def test_without_delta_jars_auto_falls_back_to_deltars_and_delta_is_refused(tmp_path):
    """A session started without the jars (what a machine without `make setup` gets)."""
    out = subprocess.run(
        [sys.executable, "-c", FALLBACK, str(tmp_path / "lake")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ENGINE deltars 1" in out.stdout
    assert "auto -> deltars: io.delta.sql.DeltaSparkSessionExtension is not in spark.sql.extensions" in out.stdout
    refused = next(line for line in out.stdout.splitlines() if line.startswith("REFUSED"))
    assert "make setup" in refused and delta_jars.coordinate() in refused


def test_unreachable_repository_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGANOMALY_JARS_DIR", str(tmp_path / "jars"))
    # a loopback port nothing listens on: refused at once
    with pytest.raises(DeltaJarsError) as err:
        delta_jars.fetch(repo="http://127.0.0.1:9/maven2/")
    message = str(err.value)
    assert delta_jars.coordinate() in message and "http://127.0.0.1:9/maven2/" in message
    assert "Connection refused" in message or "not found" in message
    assert (tmp_path / "jars" / "fetch.log").is_file()
    assert delta_jars.cached_jars(tmp_path / "jars") is None


def test_cached_jars_need_every_file(tmp_path):
    coord = delta_jars.coordinate()
    jar = tmp_path / "a.jar"
    jar.write_bytes(b"x")
    manifest = delta_jars.manifest_path(tmp_path, coord)
    manifest.write_text(json.dumps({"coordinate": coord, "jars": [str(jar)]}))
    assert delta_jars.cached_jars(tmp_path, coord) == [str(jar)]
    manifest.write_text(json.dumps({"coordinate": coord, "jars": [str(jar), str(tmp_path / "gone.jar")]}))
    assert delta_jars.cached_jars(tmp_path, coord) is None
    assert delta_jars.coordinate("4.1.4") == f"io.delta:delta-spark_4.1_2.13:{delta_jars.DELTA_VERSION}"


def test_sessions_get_only_the_jars_spark_does_not_ship(tmp_path):
    shipped = tmp_path / "spark-jars"
    shipped.mkdir()
    for name in ("jackson-core-2.21.2.jar", "hadoop-client-runtime-3.4.2.jar", "commons-pool-1.5.4.jar",
                 "jackson-module-scala_2.13-2.21.2.jar"):
        (shipped / name).write_bytes(b"x")
    cached = [f"/c/{n}" for n in ("io.delta_delta-spark_4.1_2.13-4.4.0.jar", "io.delta_delta-storage-4.4.0.jar",
                                  "com.fasterxml.jackson.core_jackson-core-2.13.5.jar",
                                  "org.apache.hadoop_hadoop-client-runtime-3.4.2.jar",
                                  "commons-pool_commons-pool-1.6.jar",
                                  "com.fasterxml.jackson.datatype_jackson-datatype-jdk8-2.13.5.jar")]
    assert delta_jars.not_shipped_by_spark(cached, shipped) == [
        "/c/io.delta_delta-spark_4.1_2.13-4.4.0.jar", "/c/io.delta_delta-storage-4.4.0.jar",
        "/c/com.fasterxml.jackson.datatype_jackson-datatype-jdk8-2.13.5.jar"]
    assert delta_jars.artifact_of("jackson-module-scala_2.13-2.21.2.jar", ivy=False) == "jackson-module-scala_2.13"


def test_the_test_session_left_out_what_spark_ships(spark):
    jars = spark.sparkContext.getConf().get("spark.jars", "")
    if "delta-spark" not in jars:
        pytest.skip("this session has no delta-spark jars")
    assert "hadoop-client-runtime" not in jars and "parquet-hadoop" not in jars


@pytest.mark.parametrize("engine", ENGINES)
def test_sql_time_travel_reads_by_path(spark, tmp_path, engine):
    from loganomaly.config import load_config
    from loganomaly.lake import sql

    require_engine(spark, engine)
    lake = Lake(spark, tmp_path / "lake", engine=engine)
    cfg = load_config(profile="test", overrides=[f"lake.root={lake.root}", f"lake.engine={engine}"], conf_dir=CONF)
    lake.write("scores", spark.createDataFrame(rows(range(3)), SCHEMA), partition_by=["date"])
    lake.write("scores", spark.createDataFrame(rows(range(3, 8), 2), SCHEMA))
    v0_time = lake.history("scores")[-1]["timestamp"]
    if not isinstance(v0_time, dt.datetime):  # delta-rs: milliseconds since the epoch
        v0_time = dt.datetime.fromtimestamp(v0_time / 1000, dt.timezone.utc)
    stamp = v0_time.strftime("%Y-%m-%d %H:%M:%S.%f")
    warehouse = Path(spark.conf.get("spark.sql.warehouse.dir").removeprefix("file:"))
    had_warehouse = warehouse.exists()

    def count(query: str) -> int:
        return int(sql.run(spark, cfg, query, lake=lake).first()[0])

    assert count("SELECT count(*) FROM scores") == 8
    assert count("SELECT count(*) FROM scores VERSION AS OF 0") == 3
    assert count(f"SELECT count(*) FROM scores TIMESTAMP AS OF '{stamp}'") == 3
    assert count("SELECT count(*) FROM `scores` version as of 1 WHERE host <> 'scores VERSION AS OF 0'") == 8
    # both versions in one query
    assert count(
        "SELECT count(*) FROM scores VERSION AS OF 1 s JOIN scores VERSION AS OF 0 o ON s.id = o.id"
    ) == 3
    if engine == "delta":
        assert "delta.`" in sql.expand_time_travel("SELECT * FROM scores VERSION AS OF 0", lake)
    # views only: nothing went into a metastore and no warehouse folder was made
    assert all(t.isTemporary for t in spark.catalog.listTables())
    assert warehouse.exists() == had_warehouse


def test_maintain_command_compacts_and_vacuums_every_table(spark, tmp_path, capsys):
    from loganomaly.cli import main

    require_engine(spark, "delta")
    lake = Lake(spark, tmp_path / "lake", engine="delta")
    for start in (0, 3, 6):
        lake.write("events", spark.createDataFrame(rows(range(start, start + 3)), SCHEMA), partition_by=["date"])
    lake.write("scores", spark.createDataFrame(rows(range(2)), SCHEMA))
    small = {os.path.join(dirpath, f) for dirpath, _, files in os.walk(lake.path("events"))
             for f in files if f.endswith(".parquet") and "_delta_log" not in dirpath}
    code = main(["maintain", "--lake", lake.root, "--conf-dir", str(CONF), "--profile", "test",
                 "--retain-hours", "0", "--log-level", "WARNING"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["engine"] == "delta" and set(summary["tables"]) == {"events", "scores"}
    assert summary["tables"]["events"]["files_removed"] == len(small) >= 3
    assert summary["tables"]["events"]["files_vacuumed"] == len(small)
    assert not any(os.path.exists(f) for f in small)
    assert sorted(r.id for r in lake.read("events").collect()) == list(range(9))
    assert "OPTIMIZE" in [h["operation"] for h in lake.history("events")]


# ------------------------------------------------------------------ the whole pipeline per engine


@pytest.mark.parametrize("engine", ENGINES)
def test_pipeline_end_to_end_on_each_engine(spark, tmp_path, engine, capsys):
    """generate -> ingest -> featurize -> train -> score -> evaluate -> sql, small, on one engine."""
    from loganomaly.cli import main
    from loganomaly.config import load_config
    from loganomaly.evaluation import stage as evaluate
    from loganomaly.features import stage as featurize
    from loganomaly.ingest import stage as ingest
    from loganomaly.ingest import synthetic
    from loganomaly.scoring import stage as score
    from loganomaly.training import stage as train

    require_engine(spark, engine)
    cfg = load_config(
        profile="test",
        overrides=[f"lake.root={tmp_path / 'lake'}", f"lake.engine={engine}", "generate.hosts=2",
                   "generate.days=2", "train.epochs=2"],
        conf_dir=CONF,
    )
    data = synthetic.generate(tmp_path / "raw", cfg.generate)
    lake = Lake(spark, cfg.lake.root, engine)
    model = tmp_path / "model"
    ingested = ingest.run(spark, cfg, [str(tmp_path / "raw")], lake=lake)
    assert ingested.events + ingested.quarantined == data.n_lines
    assert lake.read("events").count() + lake.read("quarantine").count() == data.n_lines
    featurized = featurize.run(spark, cfg, lake=lake)
    assert featurized.windows == lake.read("sequences").count() > 0
    train.run(spark, cfg, model, lake=lake)
    scored = score.run(spark, cfg, model, lake=lake)
    n_scores = lake.read("scores").count()
    assert n_scores == scored.windows > 0
    assert lake.read("anomalies").count() == scored.anomalies
    # a rerun replaces, never duplicates
    score.run(spark, cfg, model, lake=lake)
    assert lake.read("scores").count() == n_scores
    again = ingest.run(spark, cfg, [str(tmp_path / "raw")], lake=lake)
    assert again.files_loaded == 0
    evaluated = evaluate.run(spark, cfg, model, labels=str(data.labels_path), lake=lake)
    assert evaluated.n_windows == n_scores and evaluated.n_positive > 0
    assert lake.read("evaluations").count() >= 1

    # every table was committed by the engine under test
    expect = "Delta-Lake" if engine == "delta" else "delta-rs"
    for name in ("events", "sequences", "scores", "anomalies", "evaluations"):
        assert expect in commit_engine(lake.path(name), lake.version(name) or 0), name

    # sql: the CLI over the same lake (engine auto picks delta on this session), with time travel
    code = main(["sql", "--lake", lake.root, "--conf-dir", str(CONF), "--profile", "test", "--log-level", "WARNING",
                 "SELECT count(*) AS n FROM scores VERSION AS OF 0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(n_scores) in printed.split()
    from loganomaly.lake import sql

    by_entity = sql.run(spark, cfg, "SELECT entity, count(*) AS n FROM scores GROUP BY entity", lake=lake)
    assert sum(r.n for r in by_entity.collect()) == n_scores
    assert os.path.isdir(os.path.join(lake.root, "evaluations", "_delta_log"))
