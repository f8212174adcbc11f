"""Spark-free tests of :mod:`loganomaly.ingest.formats.timestamps`: epoch, ISO and strptime-subset times."""

from __future__ import annotations

import datetime as dt
import random
import re
from typing import Any

import pyarrow as pa
import pytest

from loganomaly.errors import ConfigError, ParseError
from loganomaly.ingest.formats import (
    FormatOptions,
    TimeFormat,
    parse_epoch,
    parse_timestamp,
)
from loganomaly.ingest.formats.timestamps import _Clock, iso_utc_micros
from tests.ingest.formats.helpers import UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (1_700_000_000.5, dt.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)),
        (1_700_000_000_123, dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        (1_700_000_000_123_456, dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),
        (1_700_000_000_123_456_789, dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),
        ("1700000000123", dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        ("1700000000.25", dt.datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)),
        ("2023-11-14T22:13:20Z", dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-15T00:13:20+02:00", dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-15T00:13:20+0200", dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-14T17:13:20.000123-05:00", dt.datetime(2023, 11, 14, 22, 13, 20, 123, tzinfo=UTC)),
        ("2023-11-14 22:13:20,5", dt.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)),
        ("2023-11-14T22:13:20", dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_normalises_to_utc(value: Any, expected: dt.datetime) -> None:
    got = parse_timestamp(value)
    assert got == expected
    assert got.tzinfo is UTC or got.utcoffset() == dt.timedelta(0)


def test_zone_less_iso_time_is_read_in_the_given_timezone() -> None:
    paris = FormatOptions(timezone="Europe/Paris").tz
    assert parse_timestamp("2023-07-01T12:00:00", paris) == dt.datetime(2023, 7, 1, 10, tzinfo=UTC)
    assert parse_timestamp("2023-01-01T12:00:00", paris) == dt.datetime(2023, 1, 1, 11, tzinfo=UTC)
    # An explicit zone wins over the default zone.
    assert parse_timestamp("2023-07-01T12:00:00Z", paris) == dt.datetime(2023, 7, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2023-13-01T00:00:00Z", "impossible date/time"),
        ("2023-02-30T00:00:00", "impossible date/time"),
        ("99999-01-01T00:00:00Z", "unparseable timestamp"),
        (-5, "negative epoch"),
        ("-1700000000", "negative epoch"),
        (10**25, "out of range"),
        ("2150-01-01T00:00:00Z", "out of range"),
        (True, "not a time"),
        (float("nan"), "not a time"),
        ("yesterday", "unparseable timestamp"),
        ("", "empty timestamp"),
    ],
)
def test_impossible_timestamps_raise_specific_reasons(value: Any, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse_timestamp(value)


def test_epoch_integers_are_exact() -> None:
    assert parse_epoch(1_700_000_000_000_001).microsecond == 1
    assert parse_epoch("1700000000000001") == parse_epoch(1_700_000_000_000_001)


def test_time_format_subset_and_year_rollover() -> None:
    clock = _Clock(None, 2022)
    fmt = TimeFormat.compile("%b %d %H:%M:%S")
    assert fmt.parse("Dec 31 23:59:59", clock) == dt.datetime(2022, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert fmt.parse("Jan  1 00:00:01", clock) == dt.datetime(2023, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert TimeFormat.compile("%d/%b/%Y:%H:%M:%S %z").parse(
        "10/Oct/2000:13:55:36 -0700", clock
    ) == dt.datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC)
    assert TimeFormat.compile("%Y-%m-%d %I:%M:%S %p").parse("2020-01-02 01:02:03 PM", clock).hour == 13
    with pytest.raises(ParseError, match="impossible date/time"):
        TimeFormat.compile("%y%m%d %H%M%S").parse("081310 101502", clock)
    with pytest.raises(ParseError, match="does not match format"):
        fmt.parse("not a time", clock)
    with pytest.raises(ConfigError, match="unsupported strptime directive"):
        TimeFormat.compile("%Q")


MS_1E11 = dt.datetime(1973, 3, 3, 9, 46, 40, tzinfo=UTC)  # 1e8 seconds after the epoch


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (10**11 - 1, "s"),  # seconds: year 5138, refused
        (10**11, MS_1E11),  # the first value read as ms
        (10**14 - 1, "ms"),  # ms: year 5138, refused
        (10**14, MS_1E11),  # the first value read as us
        (10**17 - 1, "us"),
        (10**17, MS_1E11),  # the first value read as ns
        (10**20, "ns"),  # ns: year 5138
        (1e11, MS_1E11),  # floats follow the same rule
        (float(10**11 - 1), "s"),
        (4_102_444_799, dt.datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC)),  # the last accepted second
        (4_102_444_800, "s"),  # 2100-01-01: refused
        (4_102_444_800_000, "ms"),
        (4_102_444_799_999, dt.datetime(2099, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        (0, dt.datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_the_epoch_magnitude_rule_and_its_accepted_range(value: Any, expected: Any) -> None:
    if isinstance(expected, dt.datetime):
        assert parse_epoch(value) == expected
        assert parse_epoch(str(value)) == expected
    else:
        with pytest.raises(ParseError, match=f"out of range: .* read as epoch {expected} .* not in 1970..2099"):
            parse_epoch(value)


def test_an_out_of_range_epoch_quarantines_its_line_with_the_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from loganomaly.ingest.formats import parse_file

    path = tmp_path / "conn.jsonl"
    lines = [
        '{"ts": 1709510400, "host": "h"}',
        '{"ts": 99999999999, "host": "h"}',
        '{"ts": 1709510400000, "host": "h"}',
        '{"ts": 5000000000000000000000, "host": "h"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    records = list(parse_file(str(path), max_raw_chars=200))
    assert [r.kind for r in records] == ["event", "quarantine", "event", "quarantine"]
    assert "read as epoch s" in records[1].data["reason"] and "read as epoch ns" in records[3].data["reason"]
    assert records[0].data["ts"] == records[2].data["ts"]


_ISO_PLAIN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z?")
_ISO_PIECES = ["2024", "-", "03", "04", "T", " ", "00", ":", "59", "60", "24", "13", "02-29", "02-30", "1969",
               "2099", "2100", ".", "5", "123456", "1234567", "Z", "z", "+01:00", "٣", "é", ""]  # fmt: skip


def _iso_expected(text: str | None, require_z: bool) -> int | None:
    """The reference's reading of a cell the block path may take: micros, or None (left per line)."""
    if text is None or not _ISO_PLAIN.fullmatch(text) or (require_z and not text.endswith("Z")):
        return None
    try:
        when = parse_timestamp(text, None)
    except ParseError:
        return None
    return (when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)


@pytest.mark.parametrize("require_z", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_iso_utc_micros_reads_exactly_what_parse_timestamp_reads_plainly(seed: int, require_z: bool) -> None:
    """Fuzzed cells (dates, fractions, zones, odd digits, nulls; equal and mixed lengths, a sliced
    array): a cell is taken exactly when the plain ISO form holds and parse_timestamp accepts it,
    at parse_timestamp's microsecond."""
    rng = random.Random(seed)
    plain = [
        f"{rng.randint(1968, 2101):04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}{rng.choice('T T')}"
        f"{rng.randint(0, 24):02d}:{rng.randint(0, 60):02d}:{rng.randint(0, 61):02d}"
        f"{rng.choice(['', '', '.' + str(rng.randint(0, 10**6 - 1)).zfill(rng.randint(1, 7))])}"
        f"{rng.choice(['Z', 'Z', '', 'z', '+00:00'])}"
        for _ in range(3000)
    ]  # fmt: skip
    glued = ["".join(rng.choice(_ISO_PIECES) for _ in range(rng.randint(0, 9))) for _ in range(1000)]
    same_length = [f"2024-03-{d:02d}T12:34:{s:02d}Z" for d in range(0, 33) for s in (0, 59, 60)]
    for cells in (plain + glued + [None], same_length, [c[:19] for c in same_length], plain[:7]):
        values = pa.array(cells, pa.string())
        for arr in (values, values.slice(3)):
            micros, ok = iso_utc_micros(arr, require_z)
            expected = [_iso_expected(c, require_z) for c in arr.to_pylist()]
            assert ok.tolist() == [e is not None for e in expected]
            assert [int(m) if k else None for m, k in zip(micros, ok, strict=True)] == expected
    assert sum(_iso_expected(c, require_z) is not None for c in plain) > 300
