"""The driver path (``ingest.local_max_bytes``): a small load parsed, fitted and written by the
driver gives exactly the rows of the Spark path, keeps its guarantees, and starts no Spark job."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loganomaly.config import Config, SourceConfig, validate
from loganomaly.errors import ConfigError
from loganomaly.ingest import stage as ingest
from loganomaly.ingest.ledger import Load
from loganomaly.lake.deltars import snapshot_files
from loganomaly.lake.tables import Lake
from tests.conftest import ENGINES, RESOURCES, require_engine
from tests.ingest.test_rotation import check_ledger
from tests.ingest.test_stage import HDFS_LINES, json_line, write_corpus

pytestmark = pytest.mark.spark

#: Columns that differ between two runs of the same load (which run, when).
RUN_COLUMNS = {"run_id", "ingested_at", "created_at"}
TABLES = ("events", "quarantine", "ingested_files", "templates")
#: Fixture logs of other formats, copied beside the JSON corpus (detected, no source needed).
OTHER_FORMATS = ("access.log", "messages.log", "syslog_pri.log", "zeek_dns.log", "zeek_json.log", "metrics.csv")


def rows(lake: Lake, table: str) -> list[dict[str, Any]]:
    """A table's rows without the run columns, in a stable order."""
    out = [{k: v for k, v in r.asDict().items() if k not in RUN_COLUMNS} for r in lake.read(table).collect()]
    return sorted(out, key=repr)


def corpus(raw: Path) -> None:
    write_corpus(raw)
    for name in OTHER_FORMATS:
        shutil.copy(RESOURCES / "logs" / name, raw / name)
    # Beside the logs, as in a capture's folder: prose no format recognises, and an empty file.
    (raw / "NOTES.md").write_text("# Capture notes\n\nTaken on the lab network.\n")
    (raw / "nothing.log").write_text("")


def config(engine: str, local: bool) -> Config:
    cfg = Config()
    cfg.ingest.direct_write = engine == "deltars"
    cfg.ingest.local_max_bytes = Config().ingest.local_max_bytes if local else 0
    cfg.ingest.sources = [
        SourceConfig(name="hdfs", paths=["*/hdfs.log*"], options={"format": "loghub", "pattern": "HDFS"})
    ]
    return cfg


def spark_jobs(spark, group: str) -> int:  # type: ignore[no-untyped-def]
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))


# The delta engine's run and the DataFrame-input run are the longest of the main suite (about 80 s
# and 30 s on 2 cores): `make test-slow` (and CI) runs them, `make test` keeps the deltars one.
@pytest.mark.parametrize("engine", ["deltars", pytest.param("delta", marks=pytest.mark.slow),
                                    pytest.param("deltars-dataframe", marks=pytest.mark.slow)])
def test_the_driver_path_writes_the_rows_of_the_spark_path(spark, tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    require_engine(spark, engine.split("-")[0])
    raw = tmp_path / "raw"
    corpus(raw)
    assert sum(p.stat().st_size for p in raw.iterdir()) <= Config().ingest.local_max_bytes
    lakes = {
        local: Lake(spark, tmp_path / f"lake-{'driver' if local else 'spark'}", engine=engine.split("-")[0])
        for local in (True, False)
    }

    def load(step: str) -> dict[bool, ingest.IngestSummary]:
        out = {}
        for local, lake in lakes.items():
            group = f"{tmp_path.name}-{step}-{local}"
            spark.sparkContext.setJobGroup(group, group)
            try:
                out[local] = ingest.run(spark, config(engine, local), [str(raw)], lake=lake)
            finally:
                spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
            if step == "first":
                # A first load on deltars runs no Spark job at all on the driver path.
                assert (spark_jobs(spark, group) == 0) == (local and engine.startswith("deltars")), (local, engine)
        return out

    def same_rows() -> None:
        for table in TABLES:
            assert rows(lakes[True], table) == rows(lakes[False], table), table
        for lake in lakes.values():
            check_ledger(lake)

    first = load("first")
    assert first[True].files_loaded == first[False].files_loaded == 9 + len(OTHER_FORMATS)
    assert first[True].events == first[False].events and first[True].quarantined == first[False].quarantined
    assert first[True].templates == first[False].templates > 0
    assert first[True].template_cache_hits + first[True].template_cache_misses == first[True].events
    same_rows()
    for lake in lakes.values():
        ledger = {Path(r["path"]).name: r for r in rows(lake, "ingested_files")}
        assert (ledger["NOTES.md"]["format"], ledger["NOTES.md"]["lines"], ledger["NOTES.md"]["quarantined"]) == (
            "unrecognised", 3, 3)
        assert (ledger["nothing.log"]["format"], ledger["nothing.log"]["lines"]) == ("empty", 0)

    # An append (same head, more lines: generation 0 read again), a copytruncate (smaller: a new
    # generation, old rows kept), a new file; matched with the saved templates, not fitted.
    with (raw / "conn.jsonl").open("a") as fh:
        fh.write("".join(json_line(50 + i) + "\n" for i in range(5)))
    (raw / "mixed.jsonl").write_text(json_line(102) + "\n" + '{"ts": 1709510400, "host": "h1", "proto": "tc\n')
    (raw / "more.log").write_text("\n".join(HDFS_LINES[:2]) + "\n")
    second = load("second")
    assert second[True].files_loaded == second[False].files_loaded == 3
    assert second[True].template_state == first[True].template_state
    same_rows()
    gens = {(Path(r["path"]).name, r["generation"]) for r in rows(lakes[True], "ingested_files")}
    assert {("mixed.jsonl", 0), ("mixed.jsonl", 1), ("conn.jsonl", 0)} <= gens

    versions = {local: {t: lake.version(t) for t in TABLES} for local, lake in lakes.items()}
    third = load("third")
    assert third[True].files_loaded == third[False].files_loaded == 0
    assert {local: {t: lake.version(t) for t in TABLES} for local, lake in lakes.items()} == versions

    # A load with no bad line commits no empty quarantine version, on every engine and path.
    (raw / "clean.jsonl").write_text("".join(json_line(200 + i) + "\n" for i in range(3)))
    fourth = load("fourth")
    assert fourth[True].quarantined == fourth[False].quarantined == 0 and fourth[True].events == 3
    for local, lake in lakes.items():
        assert lake.version("quarantine") == versions[local]["quarantine"], local
        assert lake.version("events") == versions[local]["events"] + 1, local
    same_rows()


@pytest.mark.parametrize("engine", [*ENGINES, "deltars-dataframe"])
def test_a_run_failing_midway_on_the_driver_path_leaves_no_version_and_no_file(  # type: ignore[no-untyped-def]
    spark, tmp_path, monkeypatch, engine
) -> None:
    require_engine(spark, engine.split("-")[0])
    lake = Lake(spark, tmp_path / "lake", engine=engine.split("-")[0])
    cfg = config(engine, local=True)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text("".join(json_line(i) + "\n" for i in range(5)))
    assert ingest.run(spark, cfg, [str(raw)], lake=lake).events == 5
    (raw / "b.jsonl").write_text("".join(json_line(10 + i) + "\n" for i in range(3)) + "not json\n")
    (raw / "c.jsonl").write_text("".join(json_line(20 + i) + "\n" for i in range(4)))
    versions = {t: lake.version(t) for t in TABLES}
    files = {t: sorted(str(p) for p in Path(lake.path(t)).rglob("*.parquet")) for t in TABLES}
    parse = ingest.parse_files_to_batches

    def failing(paths, *args, **kwargs) -> Iterator[Any]:  # type: ignore[no-untyped-def]
        # c.jsonl (the larger, parsed first) fails after its lines were parsed and, on the direct
        # path, written to Parquet; b.jsonl is never reached.
        yield from parse(paths, *args, **kwargs)
        if paths[0].endswith("c.jsonl"):
            raise RuntimeError("boom in the parse")

    monkeypatch.setattr(ingest, "parse_files_to_batches", failing)
    with pytest.raises(RuntimeError, match="boom in the parse"):
        ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert {t: lake.version(t) for t in TABLES} == versions
    assert {t: sorted(str(p) for p in Path(lake.path(t)).rglob("*.parquet")) for t in TABLES} == files
    monkeypatch.setattr(ingest, "parse_files_to_batches", parse)

    again = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert (again.files_loaded, again.events, again.quarantined) == (2, 7, 1)
    check_ledger(lake)
    assert lake.read("events").count() == 12
    if lake.engine == "deltars":  # every Parquet file of a table is in its snapshot: no orphan
        for table in ("events", "quarantine"):
            listed = {os.path.normpath(p) for p, _, _ in snapshot_files(lake.path(table), None)}
            assert {os.path.normpath(str(p)) for p in Path(lake.path(table)).rglob("*.parquet")} == listed


def load_of(size: int, path: str = "/x/a.log") -> Load:
    return Load(path, size, 0, 0, ())


def test_which_loads_the_driver_takes() -> None:
    cfg = Config()
    limit = cfg.ingest.local_max_bytes
    assert limit > 0
    local, why = ingest.driver_path(cfg, [load_of(limit // 2), load_of(limit // 2, "/x/b.log")], [], [])
    assert local and "2 files" in why
    local, why = ingest.driver_path(cfg, [load_of(limit // 2), load_of(limit // 2 + 1, "/x/b.log")], [], [])
    assert not local and "> ingest.local_max_bytes" in why
    assert ingest.driver_path(cfg, [load_of(10)], ["/x/a.log"], []) == (False, "1 files read in byte ranges")
    assert not ingest.driver_path(cfg, [load_of(10)], [], ["/x/a.log"])[0]
    cfg.ingest.local_max_bytes = 0
    assert ingest.driver_path(cfg, [load_of(10)], [], []) == (False, "ingest.local_max_bytes is 0")


def test_local_max_bytes_is_validated() -> None:
    cfg = Config()
    cfg.ingest.local_max_bytes = 0
    validate(cfg)
    cfg.ingest.local_max_bytes = -1
    with pytest.raises(ConfigError, match="ingest.local_max_bytes must be >= 0"):
        validate(cfg)
