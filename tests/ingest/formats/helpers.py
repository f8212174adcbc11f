"""Shared by the format tests: the fixture logs and checks of the one-record-per-line invariant.

Fixtures under ``tests/resources/logs`` were written for these tests (modelled on real Zeek,
Loghub, NSL-KDD and web server formats, not copied).
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
from pathlib import Path
from typing import Any

from loganomaly.ingest.formats import ParsedRecord, parse_file
from loganomaly.lake.schemas import EVENT_COLUMNS, EVENT_NUMERIC_FIELDS
from loganomaly.registry import LOG_FORMATS

LOGS = Path(__file__).resolve().parents[2] / "resources" / "logs"
UTC = dt.timezone.utc
INT_COLUMNS = {k for k, v in EVENT_NUMERIC_FIELDS.items() if v in ("int", "bigint")}
#: Columns ingest fills; a parser must leave them alone.
INGEST_COLUMNS = {
    "event_id",
    "date",
    "file",
    "line_no",
    "run_id",
    "source",
    "template_id",
    "template",
    "params",
}
GOOD_JSON = '{"ts": 1700000000, "host": "h1", "message": "ok"}'


def physical_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def parse(path: Path, **kwargs: Any) -> list[ParsedRecord]:
    records = list(parse_file(path, **kwargs))
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    elif raw[:3] == b"BZh":
        raw = bz2.decompress(raw)
    assert len(records) == physical_lines(raw), "one record per physical line"
    assert [r.line_no for r in records] == list(range(1, len(records) + 1))
    for r in records:
        check_record(r)
    return records


def check_record(record: ParsedRecord) -> None:
    """Shape and types of one record, whatever its format."""
    if record.kind == "quarantine":
        assert set(record.data) == {"format", "reason", "raw", "raw_length"}
        assert isinstance(record.data["reason"], str) and record.data["reason"]
        return
    assert record.kind == "event"
    event = record.data
    assert set(event) <= set(EVENT_COLUMNS) - INGEST_COLUMNS, set(event) - set(EVENT_COLUMNS)
    assert isinstance(event["ts"], dt.datetime) and event["ts"].utcoffset() == dt.timedelta(0)
    assert event["format"] in LOG_FORMATS
    for name in INT_COLUMNS:
        assert event.get(name) is None or type(event[name]) is int, (name, event[name])
    assert event.get("duration") is None or type(event["duration"]) is float
    for name in (
        "entity",
        "level",
        "component",
        "message",
        "status",
        "proto",
        "src_addr",
        "dst_addr",
        "label",
    ):
        assert event.get(name) is None or isinstance(event[name], str), (name, event[name])
    attributes = event.get("attributes") or {}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items())


def events(records: list[ParsedRecord]) -> list[dict[str, Any]]:
    return [r.data for r in records if r.kind == "event"]


def reasons(records: list[ParsedRecord]) -> list[str]:
    return [r.data["reason"] for r in records if r.kind == "quarantine"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def batches_text(path: Path, columnar: bool, options: Any) -> list[str]:
    """The ingest task's batches of ``path`` (block by block, or line by line with ``columnar``
    False: the reference), each as text: its schema and every value (repr: exact floats)."""
    from loganomaly.ingest import stage

    return [
        f"{batch.schema}\n{batch.to_pydict()!r}"
        for batch in stage.parse_files_to_batches(
            [str(path)], "run", 300, sources={str(path): ("src", options)}, columnar=columnar
        )
    ]


def lines_taken(path: Path, options: Any) -> int:
    """How many lines of ``path`` the block path built column-wise (so that an equality is not
    the per-line path compared with itself)."""
    from loganomaly.ingest.formats import parse_file_blocks

    return sum(len(b.columns.positions) for b in parse_file_blocks(path, 300, options=options) if b.columns)


def assert_same_batches(path: Path, options: Any) -> None:
    """The column-wise batches of ``path`` equal the per-line path's, batch for batch."""
    columnar = batches_text(path, True, options)
    reference = batches_text(path, False, options)
    assert len(columnar) == len(reference)
    for got, want in zip(columnar, reference, strict=True):
        assert got == want


def month_walk(rng: Any, n: int) -> list[int]:
    """Months for ``n`` lines of a year-less log (RFC 3164, Loghub's Linux): mostly moving
    forward, with December -> January steps, small steps back (late lines) and steps back of 6
    (no new year) and 7 (a new year), two of those on a 150-line block's first line (lines 300
    and 1050), where the clock's state crosses from one block to the next."""
    month, out = rng.randrange(1, 13), []
    for i in range(n):
        r = rng.random()
        if i in (300, 1050):
            month = (month - (6 if i == 300 else 7) - 1) % 12 + 1
        elif r < 0.02:
            month = month % 12 + 1
        elif r < 0.03:
            month = max(1, month - 1)
        elif r < 0.034:
            month = (month - rng.choice([6, 7]) - 1) % 12 + 1
        out.append(month)
    return out
