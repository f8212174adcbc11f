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
from loganomaly.ingest.formats import FormatOptions, parse_file_blocks
from tests.ingest.formats.helpers import assert_same_batches, lines_taken, month_walk

SYSLOG = FormatOptions(format="syslog")
T0 = 1709510400

_ODD: dict[str, list[str]] = {
    "pri": ["191", "192", "999", "0", "007", "1", "", "x", "٣"],
    "version": ["1", "2", "12", "123", ""],
    "time": ["-", "2024-03-04T00:00:01+01:00", "2024-03-04T00:00:01-07:30", "2024-02-30T00:00:00Z", "2024-01-32T00:00:00Z",
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
            lines.append(
                rng.choice(
                    [
                        "garbage",
                        "",
                        "   ",
                        "<34>1",
                        "<34>1 - - - - - -",
                        "<13>Oct 11 22:14:15 mymachine su: ok",
                    ]
                )
            )
        else:
            lines.append(_line(rng, i))
    return lines


def _write(path: Path, lines: list[str], crlf: bool) -> None:
    path.write_bytes(
        ("\r\n" if crlf else "\n").join(lines).encode() + b"\n<34>1 2024-03-04T00:00:00Z h a - - - \xff\xfe\n"
    )


@pytest.mark.parametrize("seed", range(4))
def test_generated_corpus_gives_the_per_line_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
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


_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _line_3164(rng: random.Random, month: int, odd: float) -> str:
    day = rng.randrange(1, 29)
    pri = rng.choice(["<13>", "<86>", "", "<38>"])
    frac = rng.choice(["", "", ".5", ".123456"])
    tag = rng.choice(["sshd[1234]: ", "kernel: ", "CRON[77]:", "su: ", "app[]: ", "x", ""])
    mon = _MONTHS[month - 1]
    if rng.random() < odd:
        which = rng.randrange(6)
        if which == 0:
            pri = rng.choice(["<192>", "<999>"])
        elif which == 1:
            mon = "Foo"
        elif which == 2:
            day = rng.choice([30, 31]) if month == 2 else 31 if month in (4, 6, 9, 11) else day
        elif which == 3:
            frac = ".1234567"
        elif which == 4:
            tag = "café: "
        else:
            tag = "tab\there: "
    text = f"session {rng.randrange(100)} for user{rng.randrange(9)} from 10.0.0.{rng.randrange(9)}"
    host = rng.choice(["host-1", "host-2", "-"])
    return f"{pri}{mon} {day:2d} {rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}{frac} {host} {tag}{text}"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("odd", [0.0, 0.002, 0.05])
def test_rfc3164_lines_give_the_per_line_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, odd: float
) -> None:
    """RFC 3164 lines: the years over December -> January steps, the clock's state across blocks,
    and blocks with a line the block cannot date (non-ASCII, an impossible date: all per line)
    give the reference's rows; blocks without one go column-wise."""
    monkeypatch.setattr(stage, "BATCH_ROWS", 150)
    rng = random.Random(seed)
    lines = [_line_3164(rng, month, odd) for month in month_walk(rng, 3000)]
    path = tmp_path / "messages"
    _write(path, lines, crlf=seed % 2 == 1)
    options = FormatOptions(format="syslog", year=2021, default_entity="dflt") if seed == 3 else SYSLOG
    assert_same_batches(path, options)
    taken = sum(len(b.columns.positions) for b in parse_file_blocks(path, 300, options=options, block_lines=150)
                if b.columns)  # fmt: skip
    assert taken > (2500 if odd == 0.0 else 1000 if odd < 0.01 else 100)


def test_rfc3164_with_a_timezone_stays_per_line(tmp_path: Path) -> None:
    rng = random.Random(1)
    path = tmp_path / "messages"
    _write(path, [_line_3164(rng, m, 0.0) for m in month_walk(rng, 500)], crlf=False)
    options = FormatOptions(format="syslog", timezone="Europe/Paris")
    assert_same_batches(path, options)
    assert lines_taken(path, options) == 0


def test_mixed_rfc5424_and_rfc3164_files_give_the_per_line_batches(tmp_path: Path) -> None:
    rng = random.Random(3)
    lines = []
    for i in range(800):
        if i % 2:
            lines.append(_line(rng, i))
        else:
            lines.append(
                time.strftime("<13>%b %d %H:%M:%S", time.gmtime(T0 + i))
                + f" host-{i % 5} sshd[{i}]: session {i}"
            )
    path = tmp_path / "mixed.log"
    _write(path, lines, crlf=False)
    assert_same_batches(path, SYSLOG)
    assert lines_taken(path, SYSLOG) > 600


def test_a_block_starting_on_the_last_dated_head_keeps_the_reference_year(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference reuses the last head's time without moving the clock; when the block before
    went per line and its last dated line was an impossible date (it moved the clock to its
    month, February, without becoming the last head), a block starting on the last head again
    must not move the clock to December: January after it is still the same year."""
    monkeypatch.setattr(stage, "BATCH_ROWS", 21)
    head = "<13>Dec 31 23:59:59 host-1 app: x"
    lines = [head] * 20 + ["<13>Feb 30 00:00:00 host-1 app: impossible"]
    lines += [head] + [f"<13>Jan  1 00:00:{i:02d} host-1 app: y {i}" for i in range(20)]
    path = tmp_path / "messages"
    _write(path, lines, crlf=False)
    options = FormatOptions(format="syslog", year=2020)
    assert_same_batches(path, options)
