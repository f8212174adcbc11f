"""Delta tables through both engines (``deltars`` and delta-spark) on one real local Spark session.

The ``lake`` fixture of this module is parametrized over the engines; tests of one engine's own
machinery (the delta-rs data source, its concurrent writers) use ``rs_lake``.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os

import pyarrow as pa
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from loganomaly.errors import SchemaMismatchError, TableError, TableNotFoundError
from loganomaly.lake.tables import Lake
from tests.conftest import ENGINES, require_engine

pytestmark = pytest.mark.spark

SCHEMA = "id bigint, ts timestamp, date date, host string, tags array<string>, attrs map<string,string>"


def rows(ids, day=1):  # type: ignore[no-untyped-def]
    return [
        (
            i,
            dt.datetime(2024, 3, day, 10, 0, i % 60),
            dt.date(2024, 3, day),
            f"h{i % 3}",
            ["a", "b"],
            {"k": str(i)},
        )
        for i in ids
    ]


@pytest.fixture(params=ENGINES)
def lake(request, spark, tmp_path):  # type: ignore[no-untyped-def]
    require_engine(spark, request.param)
    return Lake(spark, tmp_path / "lake", engine=request.param)


@pytest.fixture
def rs_lake(spark, tmp_path):  # type: ignore[no-untyped-def]
    return Lake(spark, tmp_path / "lake", engine="deltars")


def data_files(path: str) -> set[str]:
    """Data files of a table (relative paths), without the log and hidden files (Hadoop's .crc)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d != "_delta_log"]
        out.update(os.path.relpath(os.path.join(dirpath, f), path) for f in filenames if not f.startswith("."))
    return out


def test_create_append_read_roundtrip(spark, lake):
    df = spark.createDataFrame(rows(range(5)), SCHEMA)
    assert lake.write("events", df, partition_by=["date"]) == 0
    assert os.path.isdir(os.path.join(lake.path("events"), "_delta_log"))
    assertDataFrameEqual(lake.read("events"), df)
    assert lake.write("events", spark.createDataFrame(rows(range(5, 8), day=2), SCHEMA)) == 1
    assert lake.read("events").count() == 8
    # partition directories are Hive style, as every Delta reader expects
    assert any(p.startswith("date=2024-03-02/") for p in data_files(lake.path("events")))


def test_overwrite_time_travel_and_history(spark, lake):
    lake.write("scores", spark.createDataFrame(rows(range(4)), SCHEMA), partition_by=["date"])
    lake.write("scores", spark.createDataFrame(rows(range(10, 12)), SCHEMA), mode="overwrite", run_id="r2")
    assert sorted(r.id for r in lake.read("scores").collect()) == [10, 11]
    assert sorted(r.id for r in lake.read("scores", version=0).collect()) == [0, 1, 2, 3]
    history = lake.history("scores")
    assert [h["version"] for h in history] == [1, 0]
    assert history[0]["operation"] == "WRITE"
    assert history[0]["runId"] == "r2"


def test_version_and_last_commit_come_from_the_log_and_agree_with_history(spark, lake):
    assert lake.version("scores") is None and lake.last_commit("scores") is None
    df = spark.createDataFrame(rows(range(2)), SCHEMA)
    for i in range(11):  # past version 10, where delta-spark writes its first checkpoint beside the commits
        assert lake.write("scores", df, mode="append" if i else "overwrite", run_id=f"r{i}") == i
    newest = lake.history("scores", limit=1)[0]
    assert lake.version("scores") == newest["version"] == 10
    last = lake.last_commit("scores")
    assert last is not None and last["version"] == 10 and last["runId"] == newest["runId"] == "r10"
    lake.write("scores", df, mode="append")  # no run id: none in the newest commit
    last = lake.last_commit("scores")
    assert lake.version("scores") == 11 and last is not None and last["runId"] is None


def test_replace_one_date_partition(spark, lake):
    lake.write(
        "scores",
        spark.createDataFrame(rows(range(3), 1) + rows(range(3, 6), 2), SCHEMA),
        partition_by=["date"],
    )
    replacement = spark.createDataFrame(rows([100, 101], 2), SCHEMA)
    lake.write("scores", replacement, mode="overwrite", replace_where={"date": ["2024-03-02"]})
    got = {(r.date.day, r.id) for r in lake.read("scores").collect()}
    assert got == {(1, 0), (1, 1), (1, 2), (2, 100), (2, 101)}
    # rows outside the replaced partitions are refused and the table is unchanged
    version = lake.version("scores")
    with pytest.raises(Exception, match="outside replaceWhere"):
        lake.write(
            "scores",
            spark.createDataFrame(rows([7], 3), SCHEMA),
            mode="overwrite",
            replace_where={"date": ["2024-03-02"]},
        )
    assert lake.version("scores") == version


def test_replace_with_empty_frame_clears_partition(spark, lake):
    lake.write(
        "scores",
        spark.createDataFrame(rows(range(3), 1) + rows(range(3, 6), 2), SCHEMA),
        partition_by=["date"],
    )
    empty = spark.createDataFrame([], SCHEMA)
    lake.write("scores", empty, mode="overwrite", replace_where={"date": ["2024-03-01"]})
    assert sorted(r.id for r in lake.read("scores").collect()) == [3, 4, 5]


def test_arrow_rows_a_filter_emptied_clear_their_partition(spark, lake):
    """A scoring night that flags nothing: its ``anomalies`` rows are an Arrow filter that kept no
    row (columns of no chunks), which must still replace the date like any other write."""
    struct = spark.createDataFrame([], SCHEMA).schema
    lake.write("scores", spark.createDataFrame(rows(range(3), 1) + rows(range(3, 6), 2), SCHEMA), partition_by=["date"])
    table = pa.table({"id": pa.array([7], pa.int64()), "ts": pa.array([dt.datetime(2024, 3, 1, 11)], pa.timestamp("us")),
                      "date": pa.array([dt.date(2024, 3, 1)]), "host": ["h1"], "tags": [["a"]],
                      "attrs": pa.array([[("k", "7")]], pa.map_(pa.string(), pa.string()))})
    kept = table.filter(pa.array([False]))
    assert kept.num_rows == 0 and kept.column("ts").num_chunks == 0  # the shape that failed
    lake.write_arrow("scores", kept, struct, mode="overwrite", partition_by=["date"],
                     replace_where={"date": ["2024-03-01"]})
    assert sorted(r.id for r in lake.read("scores").collect()) == [3, 4, 5]


def test_merge_upserts_on_keys(spark, lake):
    lake.write("ingested_files", spark.createDataFrame(rows(range(3)), SCHEMA))
    update = spark.createDataFrame(rows([1, 2, 3]), SCHEMA).withColumn("host", F.lit("changed"))
    lake.merge("ingested_files", update, keys=["id"])
    got = {r.id: r.host for r in lake.read("ingested_files").collect()}
    assert got == {0: "h0", 1: "changed", 2: "changed", 3: "changed"}
    assert lake.history("ingested_files")[0]["operation"] == "MERGE"


def test_schema_mismatch_is_rejected_with_clear_error(spark, lake):
    lake.write("events", spark.createDataFrame(rows(range(2)), SCHEMA), partition_by=["date"])
    bad = spark.createDataFrame([(1, "x")], "id string, extra string")
    with pytest.raises(SchemaMismatchError) as err:
        lake.write("events", bad)
    message = str(err.value)
    assert "column 'id' is string, table has int64" in message
    assert "unexpected column 'extra'" in message
    assert "missing column 'host'" in message
    assert lake.version("events") == 0


def test_failed_write_leaves_no_version_and_no_orphan_files(spark, lake):
    lake.write("events", spark.createDataFrame(rows(range(3)), SCHEMA), partition_by=["date"])
    before = data_files(lake.path("events"))
    good = spark.createDataFrame(rows(range(200)), SCHEMA).repartition(4)
    # one row fails inside a task, after other tasks have already written their files
    failing = good.withColumn(
        "id", F.when(F.col("id") == 199, F.raise_error(F.lit("boom"))).otherwise(F.col("id"))
    )
    with pytest.raises(Exception, match="boom"):
        lake.write("events", failing)
    assert lake.version("events") == 0
    assert lake.read("events").count() == 3
    if lake.engine == "delta":
        # Delta commits nothing, but its tasks' files stay until VACUUM deletes them as
        # files no snapshot references.
        lake.vacuum("events", retention_hours=0)
    assert data_files(lake.path("events")) == before
    assert lake.read("events").count() == 3


def test_read_missing_table_and_bad_names(lake):
    with pytest.raises(TableNotFoundError):
        lake.read("nothing_here")
    with pytest.raises(TableError, match="invalid table name"):
        lake.path("../escape")


def test_views_and_vacuum(spark, lake):
    lake.write("events", spark.createDataFrame(rows(range(3)), SCHEMA), partition_by=["date"])
    first_files = data_files(lake.path("events"))
    lake.write("events", spark.createDataFrame(rows(range(3, 5)), SCHEMA), mode="overwrite")
    lake.write("scores", spark.createDataFrame(rows(range(2)), SCHEMA))
    assert lake.register_views() == ["events", "scores"]
    assert spark.sql("SELECT count(*) AS n FROM events").first().n == 2
    assert lake.vacuum("events", retention_hours=0, dry_run=True)
    removed = lake.vacuum("events", retention_hours=0)
    assert {os.path.normpath(p) for p in removed} == first_files
    assert not first_files & data_files(lake.path("events"))
    assert lake.read("events").count() == 2


def _append_many(path: str, worker: int, n: int) -> None:
    """Append ``n`` one-row commits through the data source writer's own write/commit path."""
    import pyarrow as pa
    from pyspark.sql.types import LongType, StructField, StructType

    from loganomaly.lake.deltars import DeltaRsWriter

    schema = StructType([StructField("worker", LongType()), StructField("seq", LongType())])
    for seq in range(n):
        writer = DeltaRsWriter({"path": path}, schema, overwrite=False)
        batch = pa.RecordBatch.from_pydict({"worker": [worker], "seq": [seq]})
        writer.commit([writer.write(iter([batch]))])


def test_two_processes_appending_concurrently_lose_no_commit(spark, rs_lake):
    lake = rs_lake
    seed = spark.createDataFrame([(-1, -1)], "worker bigint, seq bigint")
    lake.write("runs", seed)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(lake.path("runs"), w, 15)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    got = {(r.worker, r.seq) for r in lake.read("runs").collect()}
    assert got == {(-1, -1)} | {(w, s) for w in range(2) for s in range(15)}
    assert lake.version("runs") == 30


def test_python_data_source_reader_matches_native_read(spark, rs_lake):
    lake = rs_lake
    lake.write("events", spark.createDataFrame(rows(range(6), 1) + rows(range(6, 9), 2), SCHEMA), partition_by=["date"])
    lake.write("events", spark.createDataFrame(rows([50], 2), SCHEMA))
    via_source = spark.read.format("deltars").option("path", lake.path("events")).load()
    assertDataFrameEqual(via_source, lake.read("events"))
    old = spark.read.format("deltars").option("path", lake.path("events")).option("versionAsOf", "0").load()
    assertDataFrameEqual(old, lake.read("events", version=0))


def test_optimize_compacts_small_files_and_vacuum_removes_them(spark, lake):
    for start in range(0, 12, 3):
        lake.write("events", spark.createDataFrame(rows(range(start, start + 3)), SCHEMA), partition_by=["date"])
    version, small = lake.version("events"), data_files(lake.path("events"))
    assert len(small) >= 4
    metrics = lake.optimize("events", where={"date": ["2024-03-01"]})
    assert metrics["files_removed"] == len(small) and metrics["files_added"] == 1
    assert lake.version("events") == version + 1
    assert sorted(r.id for r in lake.read("events").collect()) == list(range(12))
    assert lake.history("events", limit=1)[0]["operation"] == "OPTIMIZE"
    # the compacted files stay for time travel until vacuum retires them
    assert lake.read("events", version=version).count() == 12
    assert {os.path.normpath(p) for p in lake.vacuum("events", retention_hours=0)} == small
    assert len(data_files(lake.path("events"))) == 1
    assert sorted(r.id for r in lake.read("events").collect()) == list(range(12))


def test_delete_and_delete_keeping_match_values_with_quotes_and_backticks(spark, lake):
    """Values are SQL literals on both engines: a host (or file path) holding ``'``, ``"`` or a
    backtick is deleted like any other, and ``delete_keeping`` keeps the listed run's rows."""
    odd = ["it's", 'say "x"', "back`tick"]
    data = [(i, dt.datetime(2024, 3, 1, 10), dt.date(2024, 3, 1), host, [], {"run": run})
            for i, (host, run) in enumerate([(h, r) for h in [*odd, "plain"] for r in ("r1", "r2")])]
    lake.write("events", spark.createDataFrame(data, SCHEMA))
    lake.delete("events", "host", ["back`tick", "plain"])
    assert sorted({r.host for r in lake.read("events").collect()}) == sorted(odd[:2])
    # keep "it's" rows whose id is 0 (its first), drop the rest of "it's"; 'say "x"' goes whole
    lake.delete_keeping("events", "host", {"it's": [0], 'say "x"': []}, "id")
    assert [(r.id, r.host) for r in lake.read("events").collect()] == [(0, "it's")]


@pytest.mark.parametrize(("group_rows", "row_groups"), [(65_536, 1), (650, 2), (100, 3)])
def test_written_files_dictionary_encode_only_repeating_columns(tmp_path, monkeypatch, group_rows, row_groups):
    """A unique column is written plain, a repeating one and map keys with a dictionary, and
    every value reads back (the encoding choice changes the bytes, never the rows); batches are
    gathered into row groups of at least ``ROW_GROUP_ROWS`` rows (the rest at close)."""
    import pyarrow.parquet as pq

    from loganomaly.lake import deltars
    from loganomaly.lake.deltars import PartitionedFileWriter

    monkeypatch.setattr(deltars, "ROW_GROUP_ROWS", group_rows)

    n = 1000
    schema = pa.schema(
        [("id", pa.string()), ("host", pa.string()), ("n", pa.int64()),
         ("attrs", pa.map_(pa.string(), pa.string())), ("codes", pa.map_(pa.string(), pa.string())),
         ("params", pa.list_(pa.string())), ("peers", pa.list_(pa.string())), ("date", pa.date32())]
    )  # fmt: skip
    table = pa.table(
        {
            "id": [f"e{i:05d}" for i in range(n)],
            "host": [f"h{i % 7}" for i in range(n)],
            "n": list(range(n)),
            "attrs": [[("uid", f"C{i}"), ("state", "SF")] for i in range(n)],  # values: 1001 distinct of 2000
            "codes": [[("state", "SF"), ("proto", f"p{i % 3}")] for i in range(n)],  # 4 of 2000
            "params": [[f"x{i}", f"y{i}"] for i in range(n)],  # every element distinct
            "peers": [[f"10.0.0.{i % 9}", "53"] for i in range(n)],  # 10 of 2000
            "date": [dt.date(2024, 3, 4)] * n,
        },
        schema=schema,
    )
    writer = PartitionedFileWriter(str(tmp_path), schema, ["date"], "w1")
    writer.write_batch(table.slice(0, 600))
    writer.write_batch(table.slice(600, 100))
    writer.write_batch(table.slice(700))
    (written,) = writer.close()
    path = tmp_path / written.path
    assert pq.ParquetFile(path).metadata.num_row_groups == row_groups
    meta = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    dictionary = {name for name, enc in encodings.items() if any("DICTIONARY" in e for e in enc)}
    # Columns, map values and list elements with at most one distinct value per two entries.
    assert dictionary == {
        "host", "attrs.key_value.key", "codes.key_value.key", "codes.key_value.value", "peers.list.element"
    }  # fmt: skip
    # Statistics (row-group pruning) for the plain columns only, none for map or list leaves.
    with_stats = {meta.column(i).path_in_schema for i in range(meta.num_columns) if meta.column(i).is_stats_set}
    assert with_stats == {"id", "host", "n"}
    assert meta.column(2).statistics.min == 0 and meta.column(2).statistics.max == meta.num_rows - 1
    back = pq.read_table(path)
    assert back.column("id").to_pylist() == table.column("id").to_pylist()
    assert back.column("host").to_pylist() == table.column("host").to_pylist()
    assert back.column("attrs").to_pylist() == table.column("attrs").to_pylist()
    assert back.column("peers").to_pylist() == table.column("peers").to_pylist()
    assert written.num_records == n
