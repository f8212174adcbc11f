"""``loganomaly sql`` is read-only on both engines: writes are refused and leave the lake as it was."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from loganomaly.config import Config
from loganomaly.errors import QueryError
from loganomaly.lake import sql
from loganomaly.lake.readonly import check_datafusion_query

pytestmark = pytest.mark.spark


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def filled(spark, lake):  # type: ignore[no-untyped-def]
    lake.write("events", spark.createDataFrame([(1, "a"), (2, "b")], "id bigint, v string"))
    return lake


def test_spark_refuses_writes_and_the_lake_is_unchanged(spark, filled, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # where CREATE TABLE would put spark-warehouse/
    cfg = Config()
    root = Path(filled.root)
    before = snapshot(root)
    attacks = {
        f"INSERT OVERWRITE DIRECTORY '{root}/events' USING parquet SELECT 3 AS id, 'x' AS v": "InsertIntoDir",
        "CREATE TABLE t AS SELECT * FROM events": "CreateTableAsSelect",
        "CREATE TABLE t2 (a int)": "CreateTable",
        "WITH a AS (SELECT 1) INSERT INTO events SELECT * FROM a": "InsertIntoStatement",
        "EXPLAIN INSERT INTO events SELECT 1, 'x'": "InsertIntoStatement",
        "DROP TABLE events": "DropTable",
        "SET spark.sql.ansi.enabled=false": "SetCommand",
    }
    for query, refused in attacks.items():
        with pytest.raises(QueryError, match=f"read-only: {refused} refused"):
            sql.run(spark, cfg, query, lake=filled)
    assert snapshot(root) == before
    assert not (tmp_path / "spark-warehouse").exists()
    assert spark.conf.get("spark.sql.ansi.enabled") == "true"
    # reads still work
    assert [r.n for r in sql.run(spark, cfg, "SELECT count(*) AS n FROM events", lake=filled).collect()] == [2]
    assert sql.run(spark, cfg, "WITH e AS (SELECT * FROM events) SELECT max(id) AS m FROM e", lake=filled).first().m == 2
    assert "Physical Plan" in sql.run(spark, cfg, "EXPLAIN SELECT * FROM events", lake=filled).first()[0]


def test_spark_syntax_and_analysis_errors_are_query_errors_with_sparks_message(spark, filled, capfd) -> None:  # type: ignore[no-untyped-def]
    capfd.readouterr()
    with pytest.raises(QueryError, match="SQL syntax error: .*PARSE_SYNTAX_ERROR.*SELEC"):
        sql.run(spark, Config(), "SELEC * FROM events", lake=filled)
    with pytest.raises(QueryError, match="TABLE_OR_VIEW_NOT_FOUND.*nope"):
        sql.run(spark, Config(), "SELECT * FROM nope", lake=filled)
    with pytest.raises(QueryError, match="UNRESOLVED_COLUMN.*nope"):
        sql.run(spark, Config(), "SELECT nope FROM events", lake=filled)
    # the error is the QueryError's: pyspark's own JSON record of it (the JVM stack trace) stays off stderr
    err = capfd.readouterr().err
    assert "QueryContextLogger" not in err and "stacktrace" not in err


def test_datafusion_refuses_writes_and_the_lake_is_unchanged(filled) -> None:  # type: ignore[no-untyped-def]
    root = Path(filled.root)
    before = snapshot(root)
    commit = f"{root}/events/_delta_log/00000000000000000000.json"
    for query, refused in {
        f"COPY (SELECT 1) TO '{commit}' STORED AS JSON": "COPY is not a read-only statement",
        "CREATE TABLE t AS SELECT * FROM events": "CREATE is not a read-only statement",
        "INSERT INTO events VALUES (3, 'x')": "INSERT is not a read-only statement",
        "SELECT 1; COPY (SELECT 1) TO '/tmp/x.json'": "one statement",
        "WITH a AS (SELECT 1) INSERT INTO events SELECT * FROM a": "INSERT, INTO refused",
        "SET datafusion.execution.batch_size = 1": "SET is not a read-only statement",
    }.items():
        with pytest.raises(QueryError, match=refused):
            sql.run_local(root, query)
    assert snapshot(root) == before
    assert sql.run_local(root, "SELECT count(*) AS n FROM events").column("n").to_pylist() == [2]
    assert sql.run_local(root, "WITH e AS (SELECT id FROM events) SELECT max(id) AS m FROM e;").num_rows == 1
    assert sql.run_local(root, "EXPLAIN SELECT * FROM events").num_rows >= 1


def test_datafusion_check_ignores_keywords_in_quotes_and_comments() -> None:
    check_datafusion_query("SELECT 'insert into x' AS s, \"copy\" FROM events -- drop table\n/* delete */")
    with pytest.raises(QueryError, match="unterminated"):
        check_datafusion_query("SELECT 'x FROM events")


def test_spark_runs_a_write_only_with_allow_write_and_warns(spark, filled, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "export"
    query = f"INSERT OVERWRITE DIRECTORY '{out}' USING parquet SELECT id FROM events"
    with pytest.raises(QueryError, match="read-only: InsertIntoDir refused"):
        sql.run(spark, Config(), query, lake=filled)
    assert not out.exists()
    with caplog.at_level("WARNING", logger="loganomaly.lake.sql"):
        sql.run(spark, Config(), query, lake=filled, allow_write=True)
    assert "--allow-write" in caplog.text and "without the read-only check" in caplog.text
    assert sorted(r.id for r in spark.read.parquet(str(out)).collect()) == [1, 2]
    with pytest.raises(QueryError, match="SELEC"):  # a syntax error is still a clear error
        sql.run(spark, Config(), "SELEC 1", lake=filled, allow_write=True)


def test_datafusion_runs_a_write_only_with_allow_write_and_warns(filled, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "export.json"
    query = f"COPY (SELECT id FROM events) TO '{out}' STORED AS JSON"
    with pytest.raises(QueryError, match="COPY is not a read-only statement"):
        sql.run_local(filled.root, query)
    assert not out.exists()
    with caplog.at_level("WARNING", logger="loganomaly.lake.sql"):
        sql.run_local(filled.root, query, allow_write=True)
    assert "--allow-write" in caplog.text
    assert out.exists() and out.read_text().count('"id"') == 2


def test_the_cli_passes_allow_write(filled, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from loganomaly.cli import main

    out = tmp_path / "cli.json"
    query = f"COPY (SELECT id FROM events) TO '{out}' STORED AS JSON"
    assert main(["sql", "--local", "--lake", str(filled.root), query]) == 2 and not out.exists()
    assert main(["sql", "--local", "--allow-write", "--lake", str(filled.root), query]) == 0 and out.exists()


def test_allow_write_takes_the_writer_lock(spark, filled, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A writing statement takes the lake's writer lock: with a stage holding it, nothing runs."""
    from loganomaly.errors import LakeBusyError
    from loganomaly.lake.lock import writer_lock

    spark_out, local_out = tmp_path / "spark", tmp_path / "local.json"
    with writer_lock(filled.root, "ingest-test", "ingest"):
        with pytest.raises(LakeBusyError, match="ingest-test"):
            sql.run(spark, Config(), f"INSERT OVERWRITE DIRECTORY '{spark_out}' USING parquet SELECT id FROM events",
                    lake=filled, allow_write=True)
        with pytest.raises(LakeBusyError, match="ingest-test"):
            sql.run_local(filled.root, f"COPY (SELECT id FROM events) TO '{local_out}' STORED AS JSON",
                          allow_write=True)
        assert sql.run_local(filled.root, "SELECT count(*) AS n FROM events").column("n").to_pylist() == [2]
    assert not spark_out.exists() and not local_out.exists()
    sql.run_local(filled.root, f"COPY (SELECT id FROM events) TO '{local_out}' STORED AS JSON", allow_write=True)
    assert local_out.exists()
