"""Spark-free tests of :mod:`loganomaly.ingest.formats.base`: options, and reading bad input line by line.

The invariant checked throughout: one record per physical line (events + quarantine), with a
specific reason for every quarantined line."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loganomaly.errors import ConfigError
from loganomaly.ingest.formats import (
    MAX_LINE_BYTES,
    FormatOptions,
    open_lines,
    parse_file,
)
from tests.ingest.formats.helpers import GOOD_JSON, LOGS, events, parse, physical_lines


def test_formats_import_without_pyspark() -> None:
    # The package and every registered format module (the registry imports them all).
    code = (
        "import sys; sys.modules['pyspark'] = None; import loganomaly.ingest.formats; "
        "from loganomaly.registry import LOG_FORMATS; assert len(list(LOG_FORMATS.items())) == 6"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": "lib"}, cwd=LOGS.parents[2]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "xml"}, "unknown log format 'xml'; valid: json, zeek, syslog, access, loghub, csv"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"year": 1900}, "year must be an integer in 1970..2099"),
        ({"pattern": "NotASystem"}, "valid names: Android, Apache"),
        ({"pattern": "<Date> (<Content>"}, "not a valid regex"),
        ({"timestamp_format": "%Y-%Q"}, "unsupported strptime directive"),
        ({"columns": ["a", "a"]}, "duplicate"),
        ({"columns": "kdd99"}, "unknown column preset 'kdd99'; valid: nsl_kdd"),
        ({"synthetic_time_step_seconds": 0}, "must be > 0"),
        ({"synthetic_time_start": "soon"}, "not an ISO time"),
        ({"delimiter": ";;"}, "one character"),
    ],
)
def test_format_options_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        FormatOptions(**kwargs)


def corpus(tmp_path: Path) -> dict[str, tuple[Path, list[str | None]]]:
    """Bad files and, per line, the expected reason prefix (None = an event)."""
    out: dict[str, tuple[Path, list[str | None]]] = {}

    def add(name: str, data: bytes, expected: list[str | None]) -> None:
        path = tmp_path / name
        path.write_bytes(data)
        out[name] = (path, expected)

    garbage = random.Random(7).randbytes(8192).replace(b"\x1f\x8b", b"xx").replace(b"BZh", b"xxx")
    add("garbage.bin", garbage, ["binary or non-UTF-8 file"] * physical_lines(garbage))
    add("truncated.jsonl", f'{GOOD_JSON}\n{{"ts": 1700000000, "a": [1, 2\n'.encode(), [None, "invalid JSON"])
    long_line = '{"ts": 1700000000, "pad": "' + "x" * (MAX_LINE_BYTES + 10) + '"}'
    add("long.jsonl", f"{GOOD_JSON}\n{long_line}\n{GOOD_JSON}\n".encode(), [None, "line too long", None])
    latin = f"{GOOD_JSON}\n".encode() + '{"ts": 1700000000, "message": "café"}\n'.encode("latin-1")
    add("latin1.jsonl", latin, [None, "invalid UTF-8"])
    impossible = "\n".join(
        [
            GOOD_JSON,
            '{"ts": "2023-13-01T00:00:00Z"}',
            '{"ts": "99999-01-01T00:00:00Z"}',
            '{"ts": -1700000000}',
        ]
    )
    add(
        "impossible.jsonl",
        impossible.encode(),
        [None, "impossible date/time", "unparseable timestamp", "negative epoch"],
    )
    add(
        "empty_lines.jsonl",
        f"\n{GOOD_JSON}\n   \n\n{GOOD_JSON}\n".encode(),
        ["empty line", None, "empty line", "empty line", None],
    )
    add("crlf.jsonl", f"{GOOD_JSON}\r\n{GOOD_JSON}\r\n\r\n".encode(), [None, None, "empty line"])
    text = f"{GOOD_JSON}\n{{broken\n{GOOD_JSON}\n".encode()
    add("c.jsonl.gz", gzip.compress(text), [None, "invalid JSON", None])
    add("c.jsonl.bz2", bz2.compress(text), [None, "invalid JSON", None])
    add("gzip_named_plain.log", gzip.compress(text), [None, "invalid JSON", None])
    add("nul.log", b"\x00\x00\x00\n\x00\x01\x02\n", ["binary or non-UTF-8 file"] * 2)
    add("empty.log", b"", [])
    return out


def test_bad_input_corpus_one_specific_record_per_line(tmp_path: Path) -> None:
    for name, (path, expected) in corpus(tmp_path).items():
        records = parse(path)
        assert len(records) == len(expected), name
        for record, want in zip(records, expected, strict=True):
            if want is None:
                assert record.kind == "event", (name, record)
            elif name == "garbage.bin":
                assert record.kind == "quarantine", (name, record)
                assert record.data["reason"] == "invalid UTF-8" or record.data["reason"].startswith(want), (
                    name,
                    record,
                )
            else:
                assert record.kind == "quarantine" and record.data["reason"].startswith(want), (
                    name,
                    record,
                    want,
                )


def test_long_line_keeps_its_length_and_only_a_head(tmp_path: Path) -> None:
    path, _ = corpus(tmp_path)["long.jsonl"]
    record = parse(path, max_raw_chars=100)[1]
    length = MAX_LINE_BYTES + 10 + len('{"ts": 1700000000, "pad": ""}')
    assert record.data["reason"] == f"line too long ({length} bytes)" and record.data["raw_length"] == length
    assert len(record.data["raw"]) == 100


def test_truncated_gzip_records_what_it_read_then_the_damage(tmp_path: Path) -> None:
    lines = [
        json.dumps({"ts": 1700000000 + i, "host": f"h{i % 3}", "message": "x" * 50 + str(i)})
        for i in range(2000)
    ]
    full = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    records = list(parse_file(path))
    assert len(records) == sum(1 for _ in open_lines(path))
    assert records[-1].kind == "quarantine"
    assert records[-1].data["reason"].startswith("truncated or corrupt compressed stream")
    assert 0 < len(events(records)) < 2000
    assert [r.line_no for r in records] == list(range(1, len(records) + 1))


def test_chunked_reading_equals_line_by_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncompressed files are read a chunk at a time (``_read_chunks``); ``_read_lines``, one
    ``readline`` per line, is the reference. Random files of CRLF, lone and doubled CR, invalid
    and split UTF-8, empty lines, lines just under, at and over the length limit (made small
    here), with and without a last newline, read whole and in random byte ranges, with chunks
    from 1 byte to more than the file: the same numbers, texts and problems."""
    from loganomaly.ingest.formats import base

    monkeypatch.setattr(base, "MAX_LINE_BYTES", 24)
    rng = random.Random(3)
    pieces = [b"abc", b"", b"\r", b"\r\r", "\u00e9".encode(), b"\xff\xfe", b"x" * 20, "\u65e5".encode(), b"\xe6\x97", b" \t"]
    compared = 0
    for trial in range(600):
        monkeypatch.setattr(base, "_CHUNK_BYTES", rng.choice([1, 2, 3, 7, 23, 24, 25, 64, 1 << 20]))
        parts = []
        for _ in range(rng.randint(0, 30)):
            parts.append(b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 4))))
            if rng.random() < 0.08:
                parts.append(b"y" * rng.choice([23, 24, 25, 26, 80]) + rng.choice([b"", b"\r"]))
        data = b"\n".join(parts) + (b"\n" if rng.random() < 0.5 else b"")
        path = tmp_path / f"f{trial}.log"
        path.write_bytes(data)
        ranges = [(0, None)] + [(rng.randint(0, len(data)), rng.choice([None, rng.randint(0, len(data) + 3)]))
                                for _ in range(3)]
        for start, budget in ranges:
            with open(path, "rb") as a, open(path, "rb") as b:
                a.seek(start)
                b.seek(start)
                want = list(base._read_lines(a, 5, budget))
                assert list(base._read_chunks(b, 5, budget)) == want, (data, start, budget, base._CHUNK_BYTES)
            compared += bool(want)
    assert compared > 1000
    # A range ending where the file's last line (no newline) starts, reached after draining a long line.
    monkeypatch.setattr(base, "_CHUNK_BYTES", 30)
    path = tmp_path / "end.log"
    path.write_bytes(b"y" * 40 + b"\nab\ncd")
    for budget in (None, 43, 44, 45):
        with open(path, "rb") as a, open(path, "rb") as b:
            assert list(base._read_chunks(b, 1, budget)) == list(base._read_lines(a, 1, budget)), budget


def test_a_byte_order_mark_before_the_first_line_is_dropped(tmp_path: Path) -> None:
    """Windows tools (PowerShell's ``Out-File``, a spreadsheet's "CSV UTF-8") start a file with a
    UTF-8 byte-order mark. Left in, it hid a JSON file's ``{`` from detection (every line then
    quarantined as an unrecognised format) and renamed a CSV's first column (no time column). Only
    the file's own mark goes: one later in the file is part of its line, which its parser judges."""
    bom = b"\xef\xbb\xbf"
    json_lines = [GOOD_JSON.encode(), GOOD_JSON.replace("ok", "again").encode()]
    (tmp_path / "a.jsonl").write_bytes(bom + b"\n".join(json_lines) + b"\n")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(bom + b"\n".join(json_lines) + b"\n"))
    (tmp_path / "c.csv").write_bytes(bom + b"timestamp,entity,cpu\n2024-03-04T00:00:00Z,h1,0.5\n")
    (tmp_path / "d.jsonl").write_bytes(b"\n".join([*json_lines, json_lines[0], bom + json_lines[1]]) + b"\n")
    for name in ("a.jsonl", "b.jsonl.gz"):
        records = parse(tmp_path / name)
        assert [r["message"] for r in events(records)] == ["ok", "again"], name
    (row,) = events(parse(tmp_path / "c.csv"))
    assert row["entity"] == "h1" and row["ts"].year == 2024
    mid = parse(tmp_path / "d.jsonl")
    assert [r.kind for r in mid] == ["event"] * 3 + ["quarantine"] and "BOM" in mid[3].data["reason"]
    # looking for the mark must not turn a compressed stream that breaks at once into an error
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b\x08" + b"not deflate data")
    (record,) = parse_file(broken)
    assert record.kind == "quarantine" and record.data["reason"].startswith("truncated or corrupt compressed stream")


def test_utf16_files_are_decoded_as_utf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows PowerShell 5's ``>`` and ``Out-File`` write UTF-16LE with a byte-order mark. Read as
    UTF-8, every line was NUL-riddled and the whole file quarantined as binary; decoded as UTF-16
    it gives the events its UTF-8 twin gives, line for line."""
    from loganomaly.ingest.formats import base

    text = "\r\n".join([GOOD_JSON, GOOD_JSON.replace("ok", "d\u00e9j\u00e0 \u65e5"), "", GOOD_JSON]) + "\r\n"
    twin = tmp_path / "twin.jsonl"
    twin.write_bytes(text.encode("utf-8"))
    want = [(r.line_no, r.kind, r.data) for r in parse_file(twin)]
    for name, data in [
        ("le.jsonl", text.encode("utf-16")),  # the platform's order after its mark (LE here)
        ("be.jsonl", b"\xfe\xff" + text.encode("utf-16-be")),
        ("le.jsonl.gz", gzip.compress(text.encode("utf-16"))),
    ]:
        (tmp_path / name).write_bytes(data)
        assert base.is_utf16(tmp_path / name)
        assert [(r.line_no, r.kind, r.data) for r in parse_file(tmp_path / name)] == want, name
    assert not base.is_utf16(twin)
    with pytest.raises(Exception, match="read whole"):
        list(open_lines(tmp_path / "le.jsonl", 0, 10))
    # a broken code unit (a lone surrogate) is that line's problem; a long line counts UTF-8 bytes
    monkeypatch.setattr(base, "MAX_LINE_BYTES", 40)
    odd = tmp_path / "odd.log"
    odd.write_bytes(b"\xff\xfe" + "ok\n".encode("utf-16-le") + b"\x00\xd8" + "x\n".encode("utf-16-le")
                    + ("\u00e9" * 30 + "\n").encode("utf-16-le") + "end".encode("utf-16-le"))
    assert list(open_lines(odd)) == [
        (1, "ok", None), (2, "\ufffdx", "invalid UTF-16"),
        (3, base._head(("\u00e9" * 30).encode("utf-8")), "line too long (60 bytes)"), (4, "end", None),
    ]  # fmt: skip  (the head as a UTF-8 file's: its first bytes)
