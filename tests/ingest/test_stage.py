"""Ingest on real Spark and Delta: nothing lost, nothing doubled, templates fitted once then matched."""

from __future__ import annotations

import bz2
import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from loganomaly.config import Config, SourceConfig
from loganomaly.errors import ConfigError
from loganomaly.ingest import stage as ingest
from loganomaly.ingest.ledger import identities
from loganomaly.ingest.templates.miner import UNKNOWN_TEMPLATE_ID
from loganomaly.ingest.templates.store import current_version, load_state
from tests.ingest.formats import toy

pytestmark = pytest.mark.spark

HDFS_LINES = [
    "081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-1608999687919862906 src: /10.250.19.102:54106 dest: /10.250.19.102:50010",
    "081109 203518 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: /mnt/hadoop/mapred/system/job_200811092030_0001/job.jar. blk_-1608999687919862906",
    "081109 203519 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-1608999687919862906 src: /10.250.10.6:40524 dest: /10.250.10.6:50010",
    "081109 203519 145 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_-1608999687919862906 terminating",
    "081109 203520 142 INFO dfs.DataNode$DataXceiver: Receiving block blk_7503483334202473044 src: /10.251.215.16:55695 dest: /10.251.215.16:50010",
    "081109 203521 145 INFO dfs.DataNode$PacketResponder: PacketResponder 2 for block blk_7503483334202473044 terminating",
]


def json_line(i: int) -> str:
    return json.dumps(
        {"ts": 1709510400 + i * 7, "host": f"h{i % 3}", "id": {"orig_h": "10.0.0.1", "resp_p": 443 + i % 2},
         "proto": "tcp", "conn_state": "SF", "orig_bytes": 100 + i, "resp_bytes": 2000}
    )


def write_corpus(root: Path) -> dict[str, int]:
    """Good and bad files; returns physical line counts by file name."""
    root.mkdir(parents=True, exist_ok=True)
    lines: dict[str, int] = {}

    good = [json_line(i) for i in range(40)]
    (root / "conn.jsonl").write_text("\n".join(good) + "\n")
    lines["conn.jsonl"] = 40

    mixed = [json_line(100), '{"ts": 1709510400, "host": "h1", "proto": "tc', "", '{"ts": "2024-13-45T99:00:00Z"}',
             "\x00\x01\x02 binary", json_line(101), '{"ts": -5, "host": "x"}']
    (root / "mixed.jsonl").write_text("\r\n".join(mixed) + "\r\n")
    lines["mixed.jsonl"] = len(mixed)

    with (root / "latin1.jsonl").open("wb") as fh:
        fh.write(json_line(200).encode() + b"\n")
        fh.write(b'{"ts": 1709510400, "host": "caf\xe9"}\n')
    lines["latin1.jsonl"] = 2

    with (root / "long.jsonl").open("wb") as fh:
        fh.write(json_line(300).encode() + b"\n")
        fh.write(b'{"pad": "' + b"x" * (1024 * 1024 + 100) + b'"}\n')
        fh.write(json_line(301).encode() + b"\n")
    lines["long.jsonl"] = 3

    noise = os.urandom(3500).replace(b"\n", b"\x00")
    (root / "garbage.bin").write_bytes(b"\x00" + noise[:3000] + b"\n" + noise[3000:])
    lines["garbage.bin"] = 2

    with gzip.open(root / "conn2.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json_line(400 + i) for i in range(10)) + "\n")
    lines["conn2.jsonl.gz"] = 10

    with bz2.open(root / "hdfs.log.bz2", "wt") as fh:
        fh.write("\n".join(HDFS_LINES) + "\n")
    lines["hdfs.log.bz2"] = len(HDFS_LINES)
    return lines


#: ``ingest.local_max_bytes`` of the two paths: the driver's (the default, which the small inputs
#: of these tests take) and the Spark tasks' (0).
PATHS = pytest.mark.parametrize("local_max_bytes", [Config().ingest.local_max_bytes, 0], ids=["driver", "spark"])


@PATHS
@pytest.mark.parametrize("direct_write", [True, False], ids=["direct", "dataframe"])
def test_every_line_is_an_event_or_a_quarantine_row_and_reruns_add_nothing(spark, lake, tmp_path, direct_write, local_max_bytes) -> None:  # type: ignore[no-untyped-def]
    raw = tmp_path / "raw"
    expected = write_corpus(raw)
    cfg = Config()
    cfg.ingest.direct_write = direct_write
    cfg.ingest.local_max_bytes = local_max_bytes
    cfg.ingest.sources = [
        SourceConfig(name="hdfs", paths=["*/hdfs.log*"], options={"format": "loghub", "pattern": "HDFS"})
    ]
    first = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert first.files_loaded == len(expected)
    assert first.events + first.quarantined == sum(expected.values())

    ledger = {Path(r.path).name: r for r in lake.read("ingested_files").collect()}
    events = {Path(r.file).name: r["count"] for r in lake.read("events").groupBy("file").count().collect()}
    quarantine = {Path(r.file).name: r["count"] for r in lake.read("quarantine").groupBy("file").count().collect()}
    for name, n_lines in expected.items():
        assert ledger[name].lines == n_lines, name
        assert events.get(name, 0) + quarantine.get(name, 0) == n_lines, name
        assert ledger[name].events == events.get(name, 0) and ledger[name].quarantined == quarantine.get(name, 0)
    assert events["conn.jsonl"] == 40 and events["hdfs.log.bz2"] == len(HDFS_LINES)
    assert quarantine["garbage.bin"] == 2

    reasons = {(Path(r.file).name, r.line_no): r for r in lake.read("quarantine").collect()}
    assert "JSON" in reasons[("mixed.jsonl", 2)].reason
    assert "empty" in reasons[("mixed.jsonl", 3)].reason
    assert "UTF-8" in reasons[("latin1.jsonl", 2)].reason
    long_row = reasons[("long.jsonl", 2)]
    assert "too long" in long_row.reason and long_row.raw_length > 1024 * 1024
    assert len(long_row.raw) <= cfg.ingest.max_raw_chars
    assert all(r.run_id == first.run_id for r in reasons.values())

    hdfs = lake.read("events").where("source = 'hdfs'").collect()
    assert {r.format for r in hdfs} == {"loghub"} and all(r.level.lower() == "info" for r in hdfs)
    assert all(r.ts.year == 2008 for r in hdfs)

    # the same files again: nothing new, the tables do not move
    versions = {t: lake.version(t) for t in ("events", "quarantine", "ingested_files")}
    again = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert (again.files_loaded, again.events, again.quarantined) == (0, 0, 0)
    assert {t: lake.version(t) for t in versions} == versions

    # a new file is picked up, a changed file replaces its rows (no duplicates)
    (raw / "conn3.jsonl").write_text(json_line(500) + "\n")
    (raw / "conn.jsonl").write_text("\n".join(json_line(i) for i in range(45)) + "\n")
    os.utime(raw / "conn.jsonl", (1, 1))
    third = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert third.files_loaded == 2 and third.events == 46
    counts = {Path(r.file).name: r["count"] for r in lake.read("events").groupBy("file").count().collect()}
    assert counts["conn.jsonl"] == 45 and counts["conn3.jsonl"] == 1
    ids = lake.read("events").select("event_id")
    assert ids.count() == ids.distinct().count()


def test_templates_fitted_on_the_training_window_then_matched_without_learning(spark, lake, tmp_path) -> None:  # type: ignore[no-untyped-def]
    raw = tmp_path / "day1"
    raw.mkdir()
    (raw / "hdfs.log").write_text("\n".join(HDFS_LINES) + "\n")
    cfg = Config()
    cfg.templates.preset = "HDFS"
    cfg.ingest.sources = [SourceConfig(name="hdfs", paths=["*/hdfs.log"], options={"format": "loghub", "pattern": "HDFS"})]
    first = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert first.template_state is not None and first.templates == 3
    version = current_version(lake)
    assert version == first.template_state
    state = load_state(lake)
    assert state is not None and state.version == version
    rows = lake.read("events").collect()
    assert all(r.template_id and r.template_id != UNKNOWN_TEMPLATE_ID for r in rows)
    receiving = [r for r in rows if "Receiving" in r.message]
    assert len({r.template_id for r in receiving}) == 1
    assert any("blk_-1608999687919862906" in r.params for r in receiving)
    # the templates table is queryable and matches the state
    table = lake.read("templates").where(f"state_version = '{version}'").collect()
    assert {r.template_id for r in table} == {t.template_id for t in state.templates}

    # later data: matched with the saved state, nothing learned, unseen messages are unknown
    raw2 = tmp_path / "day2"
    raw2.mkdir()
    new_lines = [
        "081110 103518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_42 src: /10.0.0.1:1 dest: /10.0.0.2:2",
        "081110 103519 77 WARN dfs.DataNode: Disk failure on volume /data7 reported by node 10.0.0.3",
    ]
    (raw2 / "hdfs.log").write_text("\n".join(new_lines) + "\n")
    second = ingest.run(spark, cfg, [str(raw2)], lake=lake)
    assert second.template_state == version and current_version(lake) == version
    later = {r.line_no: r for r in lake.read("events").where("file like '%day2%'").collect()}
    assert later[1].template_id == receiving[0].template_id
    assert later[2].template_id == UNKNOWN_TEMPLATE_ID and later[2].template is None
    assert lake.read("templates").select("state_version").distinct().count() == 1


@PATHS
def test_the_miner_sees_each_distinct_message_once_in_order_of_first_appearance(spark, lake, tmp_path, local_max_bytes) -> None:  # type: ignore[no-untyped-def]
    from loganomaly.ingest.templates.miner import Templates
    from loganomaly.ingest.templates.store import template_config

    # three files whose lines interleave in time, repeats across files, and messages whose
    # clustering depends on the order Drain meets them
    # (Drain learns other templates from these nine messages reversed)
    texts = ["get gamma get beta", "get beta put beta", "put alpha get beta", "get beta put gamma",
             "get gamma put beta", "get alpha get gamma", "get beta get beta", "put gamma get beta",
             "put alpha put gamma"]
    lines: dict[str, list[tuple[int, str]]] = {"a": [], "b": [], "c": []}
    for i in range(45):
        # file c holds the earliest times, and each file repeats messages another saw first
        lines["cab"[i % 3]].append((1709510400 + (i if i % 3 == 0 else 100 - i), texts[(i * 4) % 9]))
    for rows in lines.values():
        rows.sort()
    for name, rows in lines.items():
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"ts": t, "host": "h", "message": m}) + "\n" for t, m in rows)
        )
    cfg = Config()
    cfg.ingest.local_max_bytes = local_max_bytes
    summary = ingest.run(spark, cfg, [str(tmp_path / f"{n}.jsonl") for n in "abc"], lake=lake)
    state = load_state(lake)
    assert state is not None and summary.template_state == state.version
    first: dict[str, tuple[int, str, int]] = {}
    for name, rows in lines.items():
        for line_no, (t, m) in enumerate(rows, start=1):
            key = (t, str(tmp_path / f"{name}.jsonl"), line_no)
            first[m] = min(first.get(m, key), key)
    reference = Templates(template_config(cfg.templates)).fit(sorted(first, key=lambda m: first[m]))
    assert state.to_json() == reference.to_json()


def test_bad_source_options_fail_before_reading(spark, lake, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.jsonl").write_text(json_line(1) + "\n")
    cfg = Config()
    cfg.ingest.sources = [SourceConfig(name="x", paths=["*"], options={"fromat": "json"})]
    with pytest.raises(ConfigError, match="ingest.sources\\[x\\].options.*valid keys"):
        ingest.run(spark, cfg, [str(tmp_path / "a.jsonl")], lake=lake)
    assert not lake.exists("events")


@pytest.mark.parametrize("direct_write", [True, False], ids=["direct", "dataframe"])
def test_a_log_format_registered_on_the_driver_is_parsed_in_the_tasks(spark, lake, tmp_path, direct_write) -> None:  # type: ignore[no-untyped-def]
    # Spark's Python workers are other processes, where "toy" is not registered: the job ships the
    # driver's formats. By value, because a worker's sys.path has the driver's working directory,
    # which need not be the repository root (where ``tests`` is importable).
    from pyspark import cloudpickle

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "app.log").write_text("\n".join(toy.LINES) + "\n")  # detected
    (raw / "forced.txt").write_text("hello\n" + toy.LINES[1] + "\n")  # format: toy, through a source
    cfg = Config()
    cfg.ingest.direct_write = direct_write
    cfg.ingest.local_max_bytes = 0  # in Spark's tasks, not on the driver (where "toy" is registered)
    cfg.ingest.sources = [SourceConfig(name="forced", paths=["*/forced.txt"], options={"format": "toy"})]
    cloudpickle.register_pickle_by_value(toy)
    try:
        with toy.registered(before="csv"):
            summary = ingest.run(spark, cfg, [str(raw)], lake=lake)
    finally:
        cloudpickle.unregister_pickle_by_value(toy)
    assert (summary.events, summary.quarantined) == (4, 2)
    ledger = {Path(r.path).name: (r.format, r.lines, r.events, r.quarantined) for r in lake.read("ingested_files").collect()}
    assert ledger == {"app.log": ("toy", 4, 3, 1), "forced.txt": ("toy", 2, 1, 1)}
    events = lake.read("events").collect()
    assert {r.format for r in events} == {"toy"}
    assert sorted((r.source, r.entity, r.message) for r in events) == [
        ("forced", "web-2", "user bob logged in"),
        ("raw", "web-1", "user alice logged in"),
        ("raw", "web-1", "user alice logged out"),
        ("raw", "web-2", "user bob logged in"),
    ]
    quarantined = sorted((Path(r.file).name, r.line_no, r.reason) for r in lake.read("quarantine").collect())
    assert quarantined == [("app.log", 3, "unparseable timestamp: 'yesterday'"), ("forced.txt", 1, "not a toy line")]


def test_out_of_range_numbers_are_quarantined_and_the_file_loads(spark, lake, tmp_path, resources) -> None:  # type: ignore[no-untyped-def]
    import shutil

    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("out_of_range.jsonl", "zeek_out_of_range.log"):
        shutil.copy(resources / "logs" / name, raw / name)
    summary = ingest.run(spark, Config(), [str(raw)], lake=lake)
    assert (summary.events, summary.quarantined) == (2 + 1, 2 + 6)  # zeek: 4 header lines + 2 bad
    reasons = {(Path(r.file).name, r.line_no): r.reason for r in lake.read("quarantine").collect()}
    assert reasons[("out_of_range.jsonl", 2)] == "bytes_out 1e+29 out of int64 range"
    assert reasons[("zeek_out_of_range.log", 6)] == "src_port 99999999999 out of int32 range"
    assert {r.bytes_out for r in lake.read("events").where("file like '%jsonl'").collect()} == {100, 2**63 - 1}
    again = ingest.run(spark, Config(), [str(raw)], lake=lake)
    assert again.files_loaded == 0


class _WrongTypeParser(toy.ToyParser):
    """Returns text in an integer column for one line: a plug-in bug that Arrow cannot store."""

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any]:
        event = super().parse(text, line_no)
        return {**event, "bytes_out": "lots"} if line_no == 2 else event


class _WrongTypeFormat(toy.ToyFormat):
    def make_parser(self, path, opts, sample, variant=None):  # type: ignore[no-untyped-def]
        return _WrongTypeParser()


def test_an_event_arrow_cannot_store_becomes_its_lines_quarantine_row(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    path = tmp_path / "app.log"
    path.write_text("\n".join(toy.LINES) + "\n")
    table = pa.Table.from_batches(
        list(ingest.parse_files_to_batches([str(path)], "r1", 100, formats={"toy": _WrongTypeFormat()}))
    )
    rows = {r["line_no"]: r for r in table.to_pylist()}
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[2][ingest.KIND] == "quarantine" and rows[2]["event_id"] is None
    assert rows[2]["reason"].startswith("event not storable: ")
    assert [rows[i][ingest.KIND] for i in (1, 3, 4)] == ["event", "quarantine", "event"]


@PATHS
@pytest.mark.parametrize("direct_write", [True, False], ids=["direct", "dataframe"])
def test_a_file_deleted_between_listing_and_parsing_is_recorded_as_vanished_and_the_others_load(
    spark, lake, tmp_path, monkeypatch, direct_write, local_max_bytes
) -> None:  # type: ignore[no-untyped-def]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text("\n".join(json_line(i) for i in range(3)) + "\n")
    (raw / "gone.jsonl").write_text(json_line(9) + "\n")
    resolve = ingest.resolve_sources

    def delete_then_resolve(cfg, paths):  # type: ignore[no-untyped-def]
        # runs after the files were listed and stat'ed, before any task opens them
        (raw / "gone.jsonl").unlink()
        return resolve(cfg, paths)

    monkeypatch.setattr(ingest, "resolve_sources", delete_then_resolve)
    cfg = Config()
    cfg.ingest.direct_write = direct_write
    cfg.ingest.local_max_bytes = local_max_bytes
    summary = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert (summary.files_seen, summary.files_loaded, summary.events, summary.quarantined) == (2, 1, 3, 0)
    rows = {Path(r.path).name: r for r in lake.read("ingested_files").collect()}
    assert sorted(rows) == ["a.jsonl", "gone.jsonl"]
    assert (rows["a.jsonl"].status, rows["a.jsonl"].lines, rows["a.jsonl"].reason) == ("loaded", 3, None)
    gone = rows["gone.jsonl"]
    assert (gone.status, gone.lines, gone.events, gone.quarantined) == ("vanished", 0, 0, 0)
    assert gone.reason == "vanished before it was read"
    assert lake.read("events").count() == 3

    monkeypatch.setattr(ingest, "resolve_sources", resolve)
    (raw / "gone.jsonl").write_text(json_line(9) + "\n")  # it comes back: it loads
    back = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert (back.files_loaded, back.events) == (1, 1)
    gone = next(r for r in lake.read("ingested_files").collect() if r.path.endswith("gone.jsonl"))
    assert (gone.status, gone.events, gone.reason) == ("loaded", 1, None)
    assert ingest.run(spark, cfg, [str(raw)], lake=lake).files_loaded == 0


def test_a_file_gone_before_its_head_is_read_is_recorded_without_touching_its_rows(
    spark, lake, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text("\n".join(json_line(i) for i in range(3)) + "\n")
    (raw / "b.jsonl").write_text(json_line(7) + "\n")
    assert ingest.run(spark, Config(), [str(raw)], lake=lake).events == 4
    (raw / "b.jsonl").write_text(json_line(7) + "\n" + json_line(8) + "\n")  # appended to
    (raw / "c.jsonl").write_text(json_line(9) + "\n")  # new
    listed = ingest.iter_input_files

    def list_then_delete(paths):  # type: ignore[no-untyped-def]
        found = listed(paths)
        (raw / "b.jsonl").unlink()  # listed, gone before its size or head is read
        return found

    monkeypatch.setattr(ingest, "iter_input_files", list_then_delete)
    summary = ingest.run(spark, Config(), [str(raw)], lake=lake)
    assert (summary.files_loaded, summary.events) == (1, 1)  # c.jsonl
    rows = sorted((Path(r.path).name, r.generation, r.status, r.lines) for r in lake.read("ingested_files").collect())
    # b's loaded generation 0 stays as it was, and so do its rows; the vanishing has a row of its own
    assert rows == [("a.jsonl", 0, "loaded", 3), ("b.jsonl", 0, "loaded", 1), ("b.jsonl", 1, "vanished", 0),
                    ("c.jsonl", 0, "loaded", 1)]
    assert lake.read("events").count() == 5

    def list_then_delete_c(paths):  # type: ignore[no-untyped-def]
        found = listed(paths)
        (raw / "c.jsonl").unlink()
        return found

    monkeypatch.setattr(ingest, "iter_input_files", list_then_delete_c)  # nothing left to load
    assert ingest.run(spark, Config(), [str(raw)], lake=lake).files_loaded == 0
    gone = [(r.generation, r.status, r.reason) for r in lake.read("ingested_files").collect() if r.path.endswith("c.jsonl")]
    assert sorted(gone) == [(0, "loaded", None), (1, "vanished", "vanished after it was listed, before it was read")]
    assert lake.read("events").count() == 5


def test_a_file_gone_before_it_is_stat_ed_is_left_out(tmp_path) -> None:  # type: ignore[no-untyped-def]
    present = tmp_path / "a.log"
    present.write_text("x\n")
    assert [Path(p).name for p, _, _ in identities([present, tmp_path / "gone.log"])] == ["a.log"]
    assert list(ingest.parse_files_to_batches([str(tmp_path / "gone.log")], "r1", 100)) == []


def test_an_ingest_is_refused_while_another_run_writes_the_lake(spark, lake, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from loganomaly.errors import LakeBusyError
    from tests.lake.test_lock import start_holder

    (tmp_path / "a.jsonl").write_text(json_line(1) + "\n")
    holder = start_holder(Path(lake.root), tmp_path / "flags")
    try:
        with pytest.raises(LakeBusyError, match="being written by run run-A"):
            ingest.run(spark, Config(), [str(tmp_path / "a.jsonl")], lake=lake)
        assert not lake.exists("events") and not lake.exists("ingested_files")
    finally:
        (tmp_path / "flags" / "release").touch()
        holder.wait(30)
    assert ingest.run(spark, Config(), [str(tmp_path / "a.jsonl")], lake=lake).events == 1
