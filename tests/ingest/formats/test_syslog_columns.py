"""The column-wise syslog path (``SyslogParser.parse_block``, RFC 5424 lines) gives exactly the
per-line path's batches.

Each test writes a file and runs it through the ingest task's parsing twice: block by block (the
default) and line by line (the reference), then compares every column of every row, quarantine
reasons included, and checks that the block path took lines (so the equality is not the
per-line path compared with itself).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from loganomaly.ingest import stage
from loganomaly.ingest.formats import FormatOptions
from tests.ingest.formats.helpers import assert_same_batches, lines_taken

SYSLOG = FormatOptions(format="syslog")
T0 = 1709510400

_ODD: dict[str, list[str]] = {
    "pri": ["191", "192", "999", "0", "007", "1", "", "x", "٣"],
    "version": ["1", "2", "12", "123", ""],
    "time": ["-", "2024-03-04T00:00:01+01:00", "2024-03-04T00:00:01-07:30", "2024-02-30T00:00:00Z",
             "1969-12-31T23:59:59Z", "1970-01-01T00:30:00+01:00", "2099-12-31T23:59:59.999999Z",
             "2099-12-31T23:30:00-01:00", "2100-01-01T00:00:00Z", "1709510400", "2024-03-04T00:00:00.5Z",
             "2024-03-04T00:00:00.1234567Z", "2024-03-04T00:00:00", "2024-03-04T00:00:00z",
             "2024-03-04T24:00:00Z", "2024-03-04T23:59:60Z", "2024-03-04T00:00:00+24:00",
             "2024-03-04T00:00:00+0130", "2024-03-04", "2024-03-04T00:00Z", "now", "٢٠٢٤-03-04T00:00:00Z"],
    "host": ["-", "host-ü", "h\x1fx", "10.0.0.1"],
    "app": ["-", "cron", "app\u00a0x"],
    "procid": ["-", "1234", "[x]"],
    "msgid": ["-", "ID47", "a:b"],
    "sd": ["-", '[exampleSDID@32473 iut="3" eventSource="App"]', "[a][b c=\"d\"]", '[x y="]"] z', "[]", "[unclosed"],
    "msg": ["", " ", "\ufeffBOM message", "tab\there", "two  spaces", "café", "ends with space ", "[bracket] - x",
            None],
}  # fmt: skip


def _line(rng: random.Random, i: int) -> str:
    ms = f".{i % 1000:03d}Z" if i % 3 else "Z"
    cells = {
        "pri": str(rng.choice([38, 86, 30, 131, 13])), "version": "1",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(T0 + i)) + ms,
        "host": f"host-{i % 7}", "app": rng.choice(["sshd", "kernel", "-"]), "procid": str(rng.randint(1, 9999)),
        "msgid": rng.choice(["-", "ID47"]), "sd": "-",
        "msg": f"Accepted password for user{rng.randint(1, 9)} from 10.0.0.{rng.randint(1, 9)} port {rng.randint(1024, 65535)}",
    }  # fmt: skip
    for key in cells:
        if rng.random() < 0.05:
            cells[key] = rng.choice(_ODD[key])  # type: ignore[assignment]
    head = f"<{cells['pri']}>{cells['version']} {cells['time']} {cells['host']} {cells['app']} {cells['procid']} " \
           f"{cells['msgid']} {cells['sd']}"  # fmt: skip
    return head if cells["msg"] is None else f"{head} {cells['msg']}"


def _corpus(rng: random.Random, n: int) -> list[str]:
    lines = []
    for i in range(n):
        r = rng.random()
        if r < 0.02:
            lines.append(rng.choice(["garbage", "", "   ", "<34>1", "<34>1 - - - - - -", "<13>Oct 11 22:14:15 mymachine su: ok"]))
        else:
            lines.append(_line(rng, i))
    return lines


def _write(path: Path, lines: list[str], crlf: bool) -> None:
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode() + b"\n<34>1 2024-03-04T00:00:00Z h a - - - \xff\xfe\n")


@pytest.mark.parametrize("seed", range(4))
def test_generated_corpus_gives_the_per_line_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(stage, "BATCH_ROWS", 700)
    path = tmp_path / "messages.log"
    _write(path, _corpus(random.Random(seed), 3000), crlf=seed % 2 == 1)
    assert_same_batches(path, SYSLOG)
    assert lines_taken(path, SYSLOG) > 1000


def test_a_timezone_keeps_zone_less_times_per_line(tmp_path: Path) -> None:
    """With a ``timezone`` option a time without a zone is local: those lines stay per line, and
    the rest (with ``Z`` or an offset) still go column-wise; the rows are the same either way."""
    options = FormatOptions(format="syslog", timezone="Europe/Paris")
    rng = random.Random(11)
    lines = [_line(rng, i) for i in range(600)]
    lines += [line.replace("Z ", " ", 1) for line in lines[:300]]  # zone-less copies
    path = tmp_path / "tz.log"
    _write(path, lines, crlf=False)
    assert_same_batches(path, options)
    taken = lines_taken(path, options)
    assert 450 < taken < 900  # the Z lines, not the zone-less ones


def test_rfc3164_and_mixed_files_give_the_per_line_batches(tmp_path: Path) -> None:
    """RFC 3164 lines have no block path (their year follows the lines before them); a file
    mixing both forms gives the reference's rows, the 5424 lines column-wise."""
    rng = random.Random(3)
    lines = []
    for i in range(800):
        if i % 2:
            lines.append(_line(rng, i))
        else:
            lines.append(time.strftime("<13>%b %d %H:%M:%S", time.gmtime(T0 + i)) + f" host-{i % 5} sshd[{i}]: session {i}")
    path = tmp_path / "mixed.log"
    _write(path, lines, crlf=False)
    assert_same_batches(path, SYSLOG)
    assert 300 < lines_taken(path, SYSLOG) <= 400
