"""Log rotation (issue 16): whether a file changed is decided on its content (head hash + size).

copytruncate and rename-and-recreate make a new generation and keep every ingested row; an
append re-reads the generation; an unchanged file (even touched) loads nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loganomaly.config import Config
from loganomaly.ingest import stage as ingest
from loganomaly.lake.tables import Lake
from tests.conftest import ENGINES, require_engine
from tests.ingest.test_stage import json_line

pytestmark = pytest.mark.spark

BAD = '{"ts": 1709510400, "host": "h1", "proto": "tc'


def write(path: Path, lines: list[str], mtime: int) -> None:
    path.write_text("\n".join(lines) + "\n")
    os.utime(path, (mtime, mtime))


def check_ledger(lake: Lake) -> dict[tuple[str, int], int]:
    """lines = events + quarantined per (file, generation); returns the events per generation."""
    ledger = lake.read("ingested_files").collect()
    events = lake.read("events").collect()
    quarantine = lake.read("quarantine").collect()
    by_gen: dict[tuple[str, int], int] = {}
    for row in ledger:
        ev = [e for e in events if e.file == row.path and e.run_id == row.run_id]
        q = [e for e in quarantine if e.file == row.path and e.run_id == row.run_id]
        assert (row.events, row.quarantined) == (len(ev), len(q))
        assert row.lines == row.events + row.quarantined
        by_gen[(Path(row.path).name, row.generation)] = len(ev)
    assert sum(r.lines for r in ledger) == len(events) + len(quarantine)
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids))
    return by_gen


@pytest.mark.parametrize("engine", [*ENGINES, "deltars-dataframe"])
def test_a_truncated_file_keeps_its_old_rows_and_loads_as_the_next_generation(spark, tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    require_engine(spark, engine.split("-")[0])
    lake = Lake(spark, tmp_path / "lake", engine=engine.split("-")[0])
    cfg = Config()
    cfg.ingest.direct_write = engine == "deltars"
    raw = tmp_path / "raw"
    raw.mkdir()
    log = raw / "app.jsonl"
    write(log, [json_line(i) for i in range(10)] + [BAD], 1_000)
    first = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert (first.events, first.quarantined) == (10, 1)
    gen0_ids = {r.event_id for r in lake.read("events").collect()}
    assert gen0_ids == {ingest.event_id(str(log.resolve()), n) for n in range(1, 11)}  # ids as before

    # copytruncate: the old content went elsewhere; the file restarts with fewer new lines
    write(log, [json_line(100 + i) for i in range(3)] + [BAD], 2_000)
    second = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert (second.files_loaded, second.events, second.quarantined) == (1, 3, 1)
    events = lake.read("events").collect()
    assert gen0_ids <= {r.event_id for r in events} and len(events) == 13
    assert lake.read("quarantine").count() == 2
    assert check_ledger(lake) == {("app.jsonl", 0): 10, ("app.jsonl", 1): 3}

    # nothing new: nothing loads, nothing moves
    versions = {t: lake.version(t) for t in ("events", "quarantine", "ingested_files")}
    third = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert (third.files_loaded, third.events, third.quarantined) == (0, 0, 0)
    assert {t: lake.version(t) for t in versions} == versions

    # the new generation grows (appended to): its rows are replaced, generation 0 stays
    write(log, [json_line(100 + i) for i in range(3)] + [BAD] + [json_line(200 + i) for i in range(5)], 3_000)
    fourth = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert (fourth.events, fourth.quarantined) == (8, 1)
    assert check_ledger(lake) == {("app.jsonl", 0): 10, ("app.jsonl", 1): 8}
    assert gen0_ids <= {r.event_id for r in lake.read("events").collect()}


def test_a_file_rewritten_at_the_same_size_with_other_content_is_a_new_generation(spark, lake, tmp_path) -> None:  # type: ignore[no-untyped-def]
    raw = tmp_path / "raw"
    raw.mkdir()
    log = raw / "app.jsonl"
    write(log, [json_line(i) for i in range(5)], 1_000)
    ingest.run(spark, Config(), [str(raw)], lake=lake)
    # same size, other content (json_line(i) and json_line(i + 1) differ only in digits of equal width)
    write(log, [json_line(i + 1) for i in range(5)], 2_000)
    assert log.stat().st_size == lake.read("ingested_files").first().size
    again = ingest.run(spark, Config(), [str(raw)], lake=lake)
    assert again.events == 5
    assert check_ledger(lake) == {("app.jsonl", 0): 5, ("app.jsonl", 1): 5}
    assert lake.read("events").count() == 10


def test_copytruncate_then_more_lines_than_before_is_a_new_generation(spark, lake, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The size rule missed this one: truncated, then refilled past the old size before the next run."""
    raw = tmp_path / "raw"
    raw.mkdir()
    log = raw / "app.jsonl"
    write(log, [json_line(i) for i in range(4)], 1_000)
    ingest.run(spark, Config(), [str(raw)], lake=lake)
    old_ids = {r.event_id for r in lake.read("events").collect()}
    with open(log, "r+") as fh:  # copytruncate: the same inode, emptied in place
        fh.truncate(0)
    with open(log, "a") as fh:
        fh.write("\n".join(json_line(500 + i) for i in range(9)) + "\n")
    assert log.stat().st_size > lake.read("ingested_files").first().size
    summary = ingest.run(spark, Config(), [str(raw)], lake=lake)
    assert (summary.files_loaded, summary.events) == (1, 9)
    assert old_ids <= {r.event_id for r in lake.read("events").collect()}
    assert check_ledger(lake) == {("app.jsonl", 0): 4, ("app.jsonl", 1): 9}


def test_rename_and_recreate_loads_both_files_once_and_deletes_nothing(spark, lake, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """logrotate's default: app.jsonl -> app.jsonl.1, and a new app.jsonl. The moved file is a new
    path: its lines load again under that name (the documented cost of a glob that matches
    rotated names); the new file is a new generation of the old path; no row is deleted."""
    raw = tmp_path / "raw"
    raw.mkdir()
    log = raw / "app.jsonl"
    write(log, [json_line(i) for i in range(6)], 1_000)
    ingest.run(spark, Config(), [str(raw)], lake=lake)
    old_ids = {r.event_id for r in lake.read("events").collect()}
    log.rename(raw / "app.jsonl.1")
    write(log, [json_line(300 + i) for i in range(8)], 2_000)  # larger than the old file
    summary = ingest.run(spark, Config(), [str(raw)], lake=lake)
    assert (summary.files_loaded, summary.events) == (2, 14)
    assert old_ids <= {r.event_id for r in lake.read("events").collect()}
    assert check_ledger(lake) == {("app.jsonl", 0): 6, ("app.jsonl", 1): 8, ("app.jsonl.1", 0): 6}
    assert ingest.run(spark, Config(), [str(raw)], lake=lake).files_loaded == 0
    assert lake.read("events").count() == 20

    # an input that names only live files (what an operator's rotation glob should do) sees no copy
    write(raw / "app.jsonl.2", [json_line(i) for i in range(2)], 3_000)
    only_live = ingest.run(spark, Config(), [str(log)], lake=lake)
    assert only_live.files_loaded == 0 and lake.read("events").count() == 20


def test_an_append_rereads_the_generation_and_a_touch_loads_nothing(spark, lake, tmp_path) -> None:  # type: ignore[no-untyped-def]
    raw = tmp_path / "raw"
    raw.mkdir()
    log = raw / "app.jsonl"
    write(log, [json_line(i) for i in range(5)], 1_000)
    ingest.run(spark, Config(), [str(raw)], lake=lake)
    first_ids = {r.event_id for r in lake.read("events").collect()}
    with open(log, "a") as fh:
        fh.write(json_line(5) + "\n" + BAD + "\n")
    appended = ingest.run(spark, Config(), [str(raw)], lake=lake)
    assert (appended.events, appended.quarantined) == (6, 1)
    events = lake.read("events").collect()
    assert first_ids < {r.event_id for r in events} and len(events) == 6  # same ids for the same lines
    assert check_ledger(lake) == {("app.jsonl", 0): 6}

    os.utime(log, (9_000, 9_000))  # touched, not changed: the content rule skips it
    versions = {t: lake.version(t) for t in ("events", "quarantine", "ingested_files")}
    assert ingest.run(spark, Config(), [str(raw)], lake=lake).files_loaded == 0
    assert {t: lake.version(t) for t in versions} == versions


@pytest.mark.parametrize("engine", ENGINES)
def test_a_ledger_without_generation_is_read_as_generation_0_and_migrated(spark, tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    require_engine(spark, engine)
    lake = Lake(spark, tmp_path / "lake", engine=engine)
    raw = tmp_path / "raw"
    raw.mkdir()
    log = raw / "app.jsonl"
    write(log, [json_line(i) for i in range(6)], 1_000)
    ingest.run(spark, Config(), [str(raw)], lake=lake)
    # a lake from before generations and head hashes: the ledger has none of the later columns
    old = lake.read("ingested_files").drop("generation", "head_hash", "status", "reason")
    lake.write("ingested_files", old.localCheckpoint(), mode="overwrite")
    assert "generation" not in lake.read("ingested_files").columns
    assert ingest.run(spark, Config(), [str(raw)], lake=lake).files_loaded == 0

    write(log, [json_line(50)], 2_000)
    rotated = ingest.run(spark, Config(), [str(raw)], lake=lake)
    assert rotated.events == 1
    assert check_ledger(lake) == {("app.jsonl", 0): 6, ("app.jsonl", 1): 1}
    rows = sorted(lake.read("ingested_files").collect(), key=lambda r: r.generation)
    assert [(r.status, r.head_hash is None) for r in rows] == [("loaded", True), ("loaded", False)]
    with open(log, "a") as fh:  # the new generation has a hash: the content rule applies to it
        fh.write(json_line(51) + "\n")
    assert ingest.run(spark, Config(), [str(raw)], lake=lake).events == 2
    assert check_ledger(lake) == {("app.jsonl", 0): 6, ("app.jsonl", 1): 2}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_generation_keeps_its_id_scheme_and_a_new_one_takes_the_current(spark, tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    """A lake from before ``id_scheme``: its events hold legacy ids. An append re-reads the
    generation with the same (legacy) ids, so no line's id changes; the next generation of the
    file is named by the current scheme; the ledger records both."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    from loganomaly.ingest.ids import CURRENT, LEGACY, IdKey, legacy_id

    require_engine(spark, engine)
    lake = Lake(spark, tmp_path / "lake", engine=engine)
    raw = tmp_path / "raw"
    raw.mkdir()
    log = raw / "app.jsonl"
    path = str(log.resolve())
    write(log, [json_line(i) for i in range(4)], 1_000)
    ingest.run(spark, Config(), [str(raw)], lake=lake)
    assert {r.event_id for r in lake.read("events").collect()} == {IdKey(path).one(n) for n in range(1, 5)}
    # make it a lake of the version before: legacy ids in events, no id_scheme in the ledger
    legacy = F.udf(lambda f, n: legacy_id(f, n), StringType())
    events = lake.read("events").withColumn("event_id", legacy("file", "line_no")).localCheckpoint()
    lake.write("events", events, mode="overwrite")
    lake.write("ingested_files", lake.read("ingested_files").drop("id_scheme").localCheckpoint(), mode="overwrite")
    old_ids = {r.event_id for r in lake.read("events").collect()}
    assert old_ids == {legacy_id(path, n) for n in range(1, 5)}

    with open(log, "a") as fh:
        fh.write(json_line(4) + "\n")
    assert ingest.run(spark, Config(), [str(raw)], lake=lake).events == 5
    assert {r.event_id for r in lake.read("events").collect()} == {legacy_id(path, n) for n in range(1, 6)}

    write(log, [json_line(100 + i) for i in range(2)], 2_000)  # copytruncate: generation 1
    assert ingest.run(spark, Config(), [str(raw)], lake=lake).events == 2
    ids = {r.event_id for r in lake.read("events").collect()}
    assert ids == {legacy_id(path, n) for n in range(1, 6)} | {IdKey(path, 1).one(n) for n in (1, 2)}
    rows = sorted(lake.read("ingested_files").collect(), key=lambda r: r.generation)
    assert [(r.generation, r.id_scheme) for r in rows] == [(0, LEGACY), (1, CURRENT)]
    assert check_ledger(lake) == {("app.jsonl", 0): 5, ("app.jsonl", 1): 2}
