"""Byte-range splits of large files: each line read once, with the numbers, ids and rows of a whole-file read."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest

from loganomaly.config import Config, SourceConfig, validate
from loganomaly.errors import ConfigError, StageInputError
from loganomaly.ingest import stage as ingest
from loganomaly.ingest.formats import MAX_LINE_BYTES, count_line_starts, open_lines, registered_formats
from loganomaly.lake.tables import Lake


def json_line(i: int) -> str:
    return json.dumps({"ts": 1709510400 + i, "host": f"h{i % 5}", "msg": f"request {i % 7} served", "n": i})


def tricky_bytes(n: int) -> bytes:
    """JSON lines with what a byte boundary can cut badly: CRLF, empty lines, bad JSON and UTF-8,
    a line over MAX_LINE_BYTES, and a last line without its newline."""
    out = bytearray()
    for i in range(n):
        line = json_line(i).encode()
        if i % 11 == 3:
            out += line + b"\r\n"
        elif i % 13 == 5:
            out += b"\n"
        elif i % 17 == 7:
            out += b'{"ts": 1709510400, "broken' + b"\n"
        elif i % 19 == 9:
            out += b'{"ts": 1709510400, "host": "caf\xe9"}\n'
        else:
            out += line + b"\n"
        if i == n // 2:
            out += b'{"pad": "' + b"x" * (MAX_LINE_BYTES + 300) + b'"}\n'
    return bytes(out) + json_line(n).encode()  # no final newline


def read_in_ranges(path: Path, cuts: list[int]) -> list[tuple[int, str, str | None]]:
    bounds = [0, *cuts]
    got: list[tuple[int, str, str | None]] = []
    first = 1
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else None
        got += open_lines(path, start, end, first)
        if end is not None:
            first += count_line_starts(path, start, end)
    return got


def test_ranges_that_tile_a_file_yield_its_lines_once_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    data = tricky_bytes(3000)
    path.write_bytes(data)
    whole = list(open_lines(path))
    assert whole[-1][1] == json_line(3000)
    long_start = data.index(b'{"pad"')
    rng = random.Random(3)
    cut_sets = [
        [long_start, long_start + 1, long_start + 10],  # at, just after and inside the long line's start
        [long_start + MAX_LINE_BYTES // 2, long_start + MAX_LINE_BYTES + 200],  # inside the long line
        [data.index(b"\r\n") + 1, data.index(b"\r\n") + 2],  # between \r and \n, then right after
        [data.index(b"\n\n") + 1, data.index(b"\n\n") + 2],  # at an empty line
        [len(data) - 3, len(data) - 1],  # inside the last line, which has no newline
        sorted(rng.sample(range(1, len(data)), 12)),
        list(range(65536, len(data), 65536)),
    ]
    for cuts in cut_sets:
        assert read_in_ranges(path, cuts) == whole, cuts
    # a small file cut at every byte of its first lines
    small = tmp_path / "s.log"
    small.write_bytes(b"a\r\n\nbc\n\xff\xfe\nlast")
    for cut in range(1, 14):
        assert read_in_ranges(small, [cut]) == list(open_lines(small)), cut
    # a byte-order mark before line 1: not in its text, and line 1 still starts at 0 (cuts inside the mark)
    marked = tmp_path / "bom.log"
    marked.write_bytes(b"\xef\xbb\xbf" + b"a\r\n\nbc\n\xef\xbb\xbflast")
    lines = list(open_lines(marked))
    assert [text for _, text, _ in lines] == ["a", "", "bc", "\ufefflast"]  # only the file's own mark goes
    for cut in range(1, 16):
        assert read_in_ranges(marked, [cut]) == lines, cut
    for first, second in [(1, 2), (2, 3), (3, 4), (1, 5)]:
        assert read_in_ranges(marked, [first, second]) == lines, (first, second)


def test_a_compressed_file_is_never_read_by_range(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(json_line(i) for i in range(100)) + "\n")
    with pytest.raises(StageInputError, match="compressed"):
        list(open_lines(path, 10, 100))


def test_only_uncompressed_files_of_line_independent_formats_are_split(tmp_path: Path) -> None:
    formats = registered_formats()
    (tmp_path / "a.jsonl").write_text("\n".join(json_line(i) for i in range(400)) + "\n")
    (tmp_path / "b.log").write_text("".join(f"Mar  4 10:{i % 60:02d}:00 h1 sshd[1]: ok {i}\n" for i in range(400)))
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json_line(i) for i in range(4000)) + "\n")
    zeek = "#separator \\x09\n#fields\tts\tuid\n#types\ttime\tstring\n" + "".join(
        f"{1709510400 + i}.0\tC{i}\n" for i in range(800)
    )
    (tmp_path / "d.log").write_text(zeek)
    assert ingest.splittable(str(tmp_path / "a.jsonl"), None, formats)
    assert not ingest.splittable(str(tmp_path / "b.log"), None, formats)  # RFC 3164: the year runs on
    assert not ingest.splittable(str(tmp_path / "c.jsonl.gz"), None, formats)
    assert not ingest.splittable(str(tmp_path / "d.log"), None, formats)  # its #fields header
    (tmp_path / "e.jsonl").write_bytes(("\n".join(json_line(i) for i in range(400)) + "\n").encode("utf-16"))
    assert not ingest.splittable(str(tmp_path / "e.jsonl"), None, formats)  # UTF-16: newline bytes are not lines
    files = [(str(tmp_path / n), (tmp_path / n).stat().st_size) for n in ("a.jsonl", "b.log", "c.jsonl.gz", "d.log")]
    tasks = ingest.plan_tasks(None, files, 1, 4096, lambda p: ingest.splittable(p, None, formats))
    a = [units[0] for units in tasks if units[0].path.endswith("a.jsonl")]
    size = files[0][1]
    assert len(a) == -(-size // 4096) and all(len(units) == 1 for units in tasks)
    by_start = sorted(a, key=lambda u: u.start)
    assert [u.start for u in by_start] == list(range(0, size, 4096))
    assert by_start[-1].end is None and all(u.end == u.start + 4096 for u in by_start[:-1])
    numbered = [line for u in by_start for line in open_lines(u.path, u.start, u.end, u.first_line)]
    assert numbered == list(open_lines(tmp_path / "a.jsonl"))
    assert sum(1 for units in tasks if units[0].byte_range is None) == 3  # the others whole


MB = 1 << 20


def test_whole_files_are_packed_into_tasks_by_size_as_spark_packs_them() -> None:
    # Four 40 MB files on two cores: two tasks of two (one file a task ran in two waves).
    four = [(f"f{i}", 40 * MB) for i in range(4)]
    assert [len(g) for g in ingest.pack_files(four, 128 * MB, 2)] == [2, 2]
    # The same files on eight cores: one a task, every core busy.
    assert [len(g) for g in ingest.pack_files(four, 128 * MB, 8)] == [1, 1, 1, 1]
    # Many small files: each counts 4 MiB more (opening it), so 1,000 files of 1 KiB on two cores
    # are not one task, nor a thousand: 128 MiB of limit, 32 files a task.
    small = [(f"s{i:04d}", 1024) for i in range(1000)]
    groups = ingest.pack_files(small, 128 * MB, 2)
    assert len(groups) == 32 and max(len(g) for g in groups) == 32
    # Mixed: each file once, largest first within the packing, none past the limit unless alone.
    mixed = [("big", 300 * MB), ("a", 60 * MB), ("b", 50 * MB), ("c", 10 * MB), ("d", 5 * MB)]
    groups = ingest.pack_files(mixed, 128 * MB, 2)
    assert sorted(p for g in groups for p, _ in g) == sorted(p for p, _ in mixed)
    assert groups[0] == [("big", 300 * MB)]
    for g in groups[1:]:
        assert sum(size for _, size in g) + ingest.OPEN_COST_BYTES * (len(g) - 1) <= 128 * MB
    assert ingest.pack_files([], 128 * MB, 2) == []


def test_plan_tasks_packs_whole_files_and_keeps_one_range_a_task(tmp_path: Path) -> None:
    formats = registered_formats()
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        (tmp_path / name).write_text("\n".join(json_line(i) for i in range(100)) + "\n")
    (tmp_path / "big.jsonl").write_bytes(tricky_bytes(3000))
    files = [(str(p), p.stat().st_size) for p in sorted(tmp_path.iterdir())]
    big = (tmp_path / "big.jsonl").stat().st_size
    # An opening cost below the split size here (4 MiB, the default, is above it).
    tasks = ingest.plan_tasks(None, files, 0, 65536, lambda p: ingest.splittable(p, None, formats), parallelism=2,
                              open_cost=1024)
    ranges = [units for units in tasks if units[0].byte_range is not None]
    assert len(ranges) == -(-big // 65536) and all(len(units) == 1 for units in ranges)
    whole = [units for units in tasks if units[0].byte_range is None]
    assert len(whole) == 1 and sorted(Path(u.path).name for u in whole[0]) == ["a.jsonl", "b.jsonl", "c.jsonl"]
    # files_per_task = 1: one task a file, as before.
    one = ingest.plan_tasks(None, files, 1, 65536, lambda p: ingest.splittable(p, None, formats), parallelism=2)
    assert sum(1 for units in one if units[0].byte_range is None) == 3


def test_files_per_task_is_validated() -> None:
    cfg = Config()
    cfg.ingest.files_per_task = -1
    with pytest.raises(ConfigError, match="files_per_task"):
        validate(cfg)


def test_split_bytes_is_validated() -> None:
    cfg = Config()
    cfg.ingest.split_bytes = 10
    with pytest.raises(ConfigError, match="split_bytes"):
        validate(cfg)


# ------------------------------------------------------------------------------------------ on Spark


def _rows(lake: Lake, table: str) -> list[tuple[Any, ...]]:
    df = lake.read(table)
    skip = {"run_id", "ingested_at"}
    return sorted(tuple(map(repr, r)) for r in df.select(*[c for c in df.columns if c not in skip]).collect())


@pytest.mark.spark
@pytest.mark.parametrize("direct_write", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["direct", "dataframe"])
def test_a_split_load_gives_the_rows_of_a_whole_file_load_and_appends_keep_working(  # type: ignore[no-untyped-def]
    spark, tmp_path, direct_write
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    big = raw / "big.jsonl"
    big.write_bytes(tricky_bytes(6000))
    (raw / "small.jsonl").write_text(json_line(1) + "\n" + json_line(2) + "\n")
    lakes = {name: Lake(spark, tmp_path / name, engine="deltars") for name in ("whole", "split")}

    def load(name: str) -> ingest.IngestSummary:
        cfg = Config()
        cfg.ingest.direct_write = direct_write
        cfg.ingest.sources = [SourceConfig(name="app", paths=["*.jsonl"], options={"format": "json"})]
        if name == "split":
            cfg.ingest.split_bytes = 256 * 1024  # the 1.5 MB file in 7 ranges, one inside its long line
        return ingest.run(spark, cfg, [str(raw)], lake=lakes[name])

    def same_rows() -> None:
        for table in ("events", "quarantine", "ingested_files"):
            assert _rows(lakes["split"], table) == _rows(lakes["whole"], table), table

    whole, split = load("whole"), load("split")
    assert (whole.files_split, split.files_split, split.split_tasks) == (0, 1, -(-big.stat().st_size // (256 * 1024)))
    assert (split.events, split.quarantined) == (whole.events, whole.quarantined)
    lines = len(list(open_lines(big))) + 2
    assert split.events + split.quarantined == lines
    same_rows()
    ledger = {Path(r.path).name: r for r in lakes["split"].read("ingested_files").collect()}
    assert ledger["big.jsonl"].lines == ledger["big.jsonl"].events + ledger["big.jsonl"].quarantined == lines - 2
    # templates matched in the tasks: one lookup per event message, most answered by the cache
    assert split.template_cache_hits + split.template_cache_misses == split.events
    assert split.template_cache_hit_rate is not None and split.template_cache_hit_rate > 0.9

    # an append after a split load: the generation is read again (in ranges), ids kept, nothing doubled
    with big.open("ab") as fh:
        fh.write(b"\n" + "\n".join(json_line(9000 + i) for i in range(3000)).encode() + b"\n")
    ids_before = {r.event_id for r in lakes["split"].read("events").select("event_id").collect()}
    whole, split = load("whole"), load("split")
    assert split.files_loaded == whole.files_loaded == 1 and split.files_split == 1
    same_rows()
    events = lakes["split"].read("events")
    assert events.count() == events.select("event_id").distinct().count()
    assert ids_before <= {r.event_id for r in events.select("event_id").collect()}
    # and rerunning adds nothing
    assert load("split").files_loaded == 0


@pytest.mark.spark
def test_range_line_numbers_counted_by_a_spark_job_equal_the_drivers(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "a.jsonl"
    path.write_bytes(tricky_bytes(800))
    files = [(str(path), path.stat().st_size)]
    by_driver = ingest.plan_tasks(None, files, 1, 65536, lambda p: True)
    by_job = ingest.plan_tasks(spark, files, 1, 65536, lambda p: True, driver_count_bytes=0)
    assert by_job == by_driver and len(by_job) > 16  # the long line spans many ranges
    assert [line for units in sorted(by_job, key=lambda t: t[0].start) for u in units
            for line in open_lines(u.path, u.start, u.end, u.first_line)] == list(open_lines(path))


@pytest.mark.spark
def test_small_files_share_tasks_and_load_the_same_rows(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from deltalake import DeltaTable

    raw = tmp_path / "raw"
    raw.mkdir()
    for f in range(6):
        (raw / f"app{f}.jsonl").write_text("".join(json_line(f * 100 + i) + "\n" for i in range(50)))
    lakes = {n: Lake(spark, tmp_path / f"lake{n}", engine="deltars") for n in (0, 1)}

    def load(per_task: int) -> ingest.IngestSummary:
        cfg = Config()
        cfg.ingest.local_max_bytes = 0  # through Spark tasks, as a large load would go
        cfg.ingest.files_per_task = per_task
        cfg.ingest.sources = [SourceConfig(name="app", paths=["*.jsonl"], options={"format": "json"})]
        return ingest.run(spark, cfg, [str(raw)], lake=lakes[per_task])

    packed, one_each = load(0), load(1)
    assert packed.events == one_each.events == 300
    # One events file per task (all rows of one date): six tasks one file a task, two when packed
    # over local[2]'s two cores (each file counted with 4 MiB of opening cost).
    files = {n: len(DeltaTable(str(tmp_path / f"lake{n}" / "events")).file_uris()) for n in (0, 1)}
    assert files == {0: 2, 1: 6}
    for table in ("events", "quarantine", "ingested_files"):
        assert _rows(lakes[0], table) == _rows(lakes[1], table), table
