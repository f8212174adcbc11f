"""Spark-free reading and parsing of log files into event dicts.

Spark calls :func:`parse_file` from its tasks (see :mod:`loganomaly.ingest.stage`); everything here
unit-tests without a JVM. The contract that makes ingestion loss-free: :func:`parse_file` yields
exactly one record per physical line of the file, either an event or a quarantine record with
its reason, whatever the bytes are (binary garbage, invalid UTF-8, a 1 MB line, a truncated
compressed file). Header lines of formats that have them (Zeek ``#...`` lines, a CSV header row)
are physical lines too: they come back as quarantine records with reason
:data:`HEADER_REASON`, so ``lines == events + quarantined`` always holds and nothing is hidden.

Formats (:data:`FORMATS`), detected per file from its first lines and its name
(:func:`detect_format`), or forced through :class:`FormatOptions`:

``json``    JSON lines, nested and varying schemas; Zeek JSON logs of any type map to columns.
``zeek``    Zeek tab-separated logs (``#separator``/``#fields``/``#types`` headers), any log type.
``syslog``  RFC 5424, and RFC 3164 with or without ``<PRI>`` (``/var/log/messages`` style).
``access``  Apache/Nginx common and combined access logs.
``loghub``  Application logs through logpai-style line patterns (:data:`LOGHUB_PATTERNS`).
``csv``     Tables: metric time series with a header, or headerless rows with given columns.

Event dicts carry a subset of :data:`loganomaly.lake.schemas.EVENT_COLUMNS`; ingest adds the rest
(event id, date, file, line number, run id, source) and templates are mined later.

Speed matters (tens of thousands of lines per second per core end to end), hence: patterns are
compiled once per file (and cached across files), timestamps go through a small compiled subset
of strptime (:class:`TimeFormat`) with a one-entry cache of the last timestamp text, and constant
tables are module-level.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import datetime as dt
import functools
import gzip
import json
import logging
import math
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from loganomaly.errors import ConfigError, ParseError, StageInputError

log = logging.getLogger(__name__)

#: Lines longer than this are quarantined without parsing (their head is kept as raw text).
MAX_LINE_BYTES = 1024 * 1024
FORMATS = ("json", "zeek", "syslog", "access", "loghub", "csv")
#: Quarantine reason of header lines (Zeek ``#`` lines, CSV header rows): counted, never lost.
HEADER_REASON = "header line (not an event)"
#: Timestamp keys tried, in order, in JSON records and CSV headers (override: FormatOptions).
TIMESTAMP_FIELDS = (
    "ts",
    "timestamp",
    "@timestamp",
    "time",
    "date",
    "datetime",
    "eventTime",
    "event_time",
    "EventTime",
    "TimeCreated",
    "time_stamp",
    "Timestamp",
)
_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_MIN_TS = _EPOCH
_MAX_TS = dt.datetime(2100, 1, 1, tzinfo=_UTC)
_MAX_EPOCH_S = int(_MAX_TS.timestamp())
_SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_MONTHS_FULL = {
    name: i
    for i, name in enumerate(
        (
            "january", "february", "march", "april", "may", "june",
            "july", "august", "september", "october", "november", "december",
        ),
        1,
    )
}  # fmt: skip

# ------------------------------------------------------------------------------ options


@dataclass
class FormatOptions:
    """How to read one file (or a set of files of one kind); every field is optional.

    ``format``: one of :data:`FORMATS`, None = detect per file. ``pattern``: a name of
    :data:`LOGHUB_PATTERNS` or a custom logpai-style pattern (``<Date> <Time> <Level>: <Content>``;
    literal text is a regex fragment, runs of spaces match any whitespace; ``<Name:regex>``
    constrains a field). ``columns``: column names of a headerless CSV (a list, or a name of
    :data:`COLUMN_PRESETS` such as ``"nsl_kdd"``) or of a header-less Zeek TSV.
    ``has_header``/``delimiter``: CSV (None = detect). ``timestamp_fields``: keys/columns/pattern fields holding the time (joined
    by a space when several). ``timestamp_format``: a strptime-style format (subset, see
    :class:`TimeFormat`; ``"epoch"`` for epoch numbers). ``timezone``: IANA name applied to
    times that carry no zone (else UTC). ``year``: for formats without a year (RFC 3164, several
    Loghub systems); default the file's mtime year. ``entity_field``/``label_field``/
    ``level_field``/``message_field``: which field fills that column. ``default_entity``: the
    entity of events whose format has none. ``synthetic_time_start`` (ISO time) and
    ``synthetic_time_step_seconds``: for tables without a time column (NSL-KDD), each row gets
    ``start + line_no * step`` — deterministic and ordered, but not a real time.
    ``sample_lines``: lines read to detect format, pattern, CSV header and delimiter.
    """

    format: str | None = None
    pattern: str | None = None
    columns: Sequence[str] | None = None
    has_header: bool | None = None
    delimiter: str | None = None
    timestamp_fields: Sequence[str] | None = None
    timestamp_format: str | None = None
    timezone: str | None = None
    year: int | None = None
    entity_field: str | None = None
    label_field: str | None = None
    level_field: str | None = None
    message_field: str | None = None
    default_entity: str | None = None
    synthetic_time_start: str | dt.datetime | None = None
    synthetic_time_step_seconds: float = 1.0
    sample_lines: int = 50

    def __post_init__(self) -> None:
        # Derived values are plain attributes, not dataclass fields, so that
        # ``dataclasses.fields(FormatOptions)`` lists exactly the settings a user may give.
        self.tz: dt.tzinfo | None = None
        self.synthetic_start: dt.datetime | None = None
        if self.format is not None and self.format not in FORMATS:
            raise ConfigError(f"unknown log format {self.format!r}; valid: {', '.join(FORMATS)}")
        if self.pattern is not None:
            if not isinstance(self.pattern, str) or not self.pattern.strip():
                raise ConfigError("pattern must be a non-empty string")
            if self.pattern not in LOGHUB_PATTERNS:
                if "<" not in self.pattern:
                    raise ConfigError(
                        f"unknown loghub pattern {self.pattern!r}; "
                        f"valid names: {', '.join(LOGHUB_PATTERNS)}, "
                        "or a custom pattern such as '<Date> <Time> <Level> <Component>: <Content>'"
                    )
                compile_pattern(self.pattern)
        if isinstance(self.columns, str):
            # Named column lists, so YAML configs can ask for them by name.
            if self.columns not in COLUMN_PRESETS:
                raise ConfigError(
                    f"unknown column preset {self.columns!r}; "
                    f"valid: {', '.join(COLUMN_PRESETS)}, or a list of names"
                )
            self.columns = COLUMN_PRESETS[self.columns]
        if self.columns is not None:
            cols = list(self.columns)
            if not cols or not all(isinstance(c, str) and c for c in cols):
                raise ConfigError("columns must be a non-empty list of non-empty names")
            if len(set(cols)) != len(cols):
                raise ConfigError(
                    f"columns has duplicate names: {sorted({c for c in cols if cols.count(c) > 1})}"
                )
            self.columns = tuple(cols)
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ConfigError(f"delimiter must be one character, got {self.delimiter!r}")
        if self.timestamp_fields is not None:
            if isinstance(self.timestamp_fields, str):
                self.timestamp_fields = (self.timestamp_fields,)
            if not self.timestamp_fields or not all(isinstance(f, str) and f for f in self.timestamp_fields):
                raise ConfigError("timestamp_fields must be a non-empty list of names")
            self.timestamp_fields = tuple(self.timestamp_fields)
        if self.timestamp_format is not None:
            TimeFormat.compile(self.timestamp_format)
        if self.timezone is not None:
            try:
                self.tz = ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(
                    f"unknown timezone {self.timezone!r}; use an IANA name such as 'Europe/Paris'"
                ) from None
        if self.year is not None and (
            isinstance(self.year, bool) or not isinstance(self.year, int) or not 1970 <= self.year <= 2099
        ):
            raise ConfigError(f"year must be an integer in 1970..2099, got {self.year!r}")
        if (
            isinstance(self.synthetic_time_step_seconds, bool)
            or not isinstance(self.synthetic_time_step_seconds, (int, float))
            or not (math.isfinite(self.synthetic_time_step_seconds) and self.synthetic_time_step_seconds > 0)
        ):
            raise ConfigError(
                f"synthetic_time_step_seconds must be > 0, got {self.synthetic_time_step_seconds!r}"
            )
        if self.synthetic_time_start is not None:
            start = self.synthetic_time_start
            if isinstance(start, str):
                try:
                    start = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
                except ValueError:
                    raise ConfigError(f"synthetic_time_start is not an ISO time: {start!r}") from None
            if not isinstance(start, dt.datetime):
                raise ConfigError(f"synthetic_time_start must be an ISO string or datetime, got {start!r}")
            if start.tzinfo is None:
                start = start.replace(tzinfo=self.tz or _UTC)
            self.synthetic_start = start.astimezone(_UTC)
        if (
            isinstance(self.sample_lines, bool)
            or not isinstance(self.sample_lines, int)
            or self.sample_lines < 1
        ):
            raise ConfigError(f"sample_lines must be a positive integer, got {self.sample_lines!r}")


_DEFAULT_OPTIONS: FormatOptions | None = None


def _default_options() -> FormatOptions:
    global _DEFAULT_OPTIONS
    if _DEFAULT_OPTIONS is None:
        _DEFAULT_OPTIONS = FormatOptions()
    return _DEFAULT_OPTIONS


# ------------------------------------------------------------------------------ reading


def _open_binary(path: Path) -> IO[bytes]:
    """Open by content (gzip/bz2 magic bytes), not only by name: a ``.log`` may be compressed."""
    with open(path, "rb") as fh:
        magic = fh.read(3)
    if magic[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if magic == b"BZh":
        return cast(IO[bytes], bz2.open(path, "rb"))
    return open(path, "rb")


def open_lines(path: str | Path) -> Iterator[tuple[int, str, str | None]]:
    """Stream ``(line_no, text, problem)`` for every line of a plain, gzip or bz2 file.

    ``text`` has no line ending (``\\n`` or ``\\r\\n``). ``problem`` is None for a clean line,
    ``"invalid UTF-8"`` when bytes had to be replaced, ``"line too long (N bytes)"`` past
    :data:`MAX_LINE_BYTES` (then ``text`` is only the head of the line). A compressed file that
    ends early yields what it could read, then one last line with problem
    ``"truncated or corrupt compressed stream: ..."`` so the damage is recorded, not hidden.
    """
    path = Path(path)
    line_no = 0
    with _open_binary(path) as fh:
        try:
            while True:
                raw = fh.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                line_no += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    # Drain the rest of the long line without holding it in memory.
                    total = len(raw)
                    while True:
                        more = fh.readline(MAX_LINE_BYTES)
                        total += len(more)
                        if not more or more.endswith(b"\n"):
                            break
                    length = total - (1 if more.endswith(b"\n") else 0)
                    yield (
                        line_no,
                        raw[:4096].decode("utf-8", errors="replace"),
                        f"line too long ({length} bytes)",
                    )
                    continue
                raw = raw.rstrip(b"\n").rstrip(b"\r")
                try:
                    yield line_no, raw.decode("utf-8"), None
                except UnicodeDecodeError:
                    yield line_no, raw.decode("utf-8", errors="replace"), "invalid UTF-8"
        except (EOFError, OSError, zlib.error) as exc:
            line_no += 1
            yield line_no, "", f"truncated or corrupt compressed stream: {exc}"


def _sample(path: str | Path, n: int) -> tuple[list[str], int]:
    """First ``n`` clean non-empty lines, and how many lines were unreadable (binary, bad UTF-8)."""
    lines: list[str] = []
    bad = 0
    for _, text, problem in open_lines(path):
        if problem is not None or "\x00" in text:
            bad += 1
            if bad >= n:
                break
            continue
        if not text or text.isspace():
            continue
        lines.append(text)
        if len(lines) >= n:
            break
    return lines, bad


def iter_input_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (recursively, sorted; hidden files and labels.csv skipped)."""
    found: list[Path] = []
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise StageInputError(f"input path does not exist: {p}")
        if p.is_file():
            found.append(p)
            continue
        for child in sorted(p.rglob("*")):
            rel = child.relative_to(p).parts
            if (
                child.is_file()
                and not any(part.startswith(".") for part in rel)
                and child.name != "labels.csv"
            ):
                found.append(child)
    if not found:
        raise StageInputError(f"no input files under {', '.join(map(str, paths))}")
    return found


# ------------------------------------------------------------------------------ time


class _Clock:
    """Turns local date/time parts into aware UTC datetimes for one file.

    Holds what a file-level reader knows and a line does not: the zone of zone-less times
    (``FormatOptions.timezone``, else UTC) and the year of year-less formats, which moves on by
    one when the month steps back by more than six (a December -> January rollover in a file).
    """

    __slots__ = ("tz", "year", "_last_month")

    def __init__(self, tz: dt.tzinfo | None, year: int) -> None:
        self.tz = tz
        self.year = year
        self._last_month = 0

    def year_for(self, month: int) -> int:
        if month < self._last_month - 6:
            self.year += 1
        self._last_month = month
        return self.year

    def make(
        self,
        year: int,
        month: int,
        day: int,
        hour: int,
        minute: int,
        second: int,
        micro: int,
        offset: int | None,
    ) -> dt.datetime:
        try:
            if offset is not None:
                zone: dt.tzinfo = _UTC if offset == 0 else dt.timezone(dt.timedelta(seconds=offset))
                value = dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
            elif self.tz is not None:
                value = dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=self.tz)
            else:
                value = dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=_UTC)
        except (ValueError, OverflowError) as exc:
            raise ParseError(
                f"impossible date/time {year:04d}-{month:02d}-{day:02d} "
                f"{hour:02d}:{minute:02d}:{second:02d} ({exc})"
            ) from None
        if value.tzinfo is not _UTC:
            value = value.astimezone(_UTC)
        if not _MIN_TS <= value < _MAX_TS:
            raise ParseError(f"timestamp out of range: {value.isoformat()}")
        return value


_STRPTIME_PARTS: dict[str, tuple[str, str | None]] = {
    "Y": (r"(\d{4})", "Y"),
    "y": (r"(\d{2})", "y"),
    "m": (r"(\d{1,2})", "m"),
    "d": (r" ?(\d{1,2})", "d"),
    "e": (r" ?(\d{1,2})", "d"),
    "H": (r"(\d{1,2})", "H"),
    "I": (r"(\d{1,2})", "I"),
    "M": (r"(\d{1,2})", "M"),
    "S": (r"(\d{1,2})", "S"),
    "f": (r"(\d{1,9})", "f"),
    "b": (r"([A-Za-z]{3})", "b"),
    "h": (r"([A-Za-z]{3})", "b"),
    "B": (r"([A-Za-z]{3,9})", "B"),
    "a": (r"[A-Za-z]{3}", None),
    "A": (r"[A-Za-z]{6,9}", None),
    "p": (r"([AaPp][Mm])", "p"),
    "z": (r"(Z|[+-]\d{2}:?\d{2})", "z"),
    "%": ("%", None),
}


class TimeFormat:
    """A compiled subset of ``strptime`` that is several times faster than ``datetime.strptime``.

    Directives: ``%Y %y %m %d %e %H %I %p %M %S %f %b %h %B %a %A %z %%``; a space matches any
    run of whitespace (``Jul  1`` and ``Jul 1`` both parse), other characters are literal.
    ``"epoch"`` means epoch seconds/ms/us/ns by magnitude. A format without ``%Y``/``%y`` needs a
    year from the caller (``FormatOptions.year``). Compiled formats are cached.
    """

    __slots__ = ("text", "regex", "keys", "has_year", "is_epoch")

    def __init__(self, text: str) -> None:
        self.text = text
        self.is_epoch = text == "epoch"
        self.keys: list[str] = []
        parts: list[str] = []
        i = 0
        while i < len(text) and not self.is_epoch:
            ch = text[i]
            if ch == "%":
                if i + 1 >= len(text) or text[i + 1] not in _STRPTIME_PARTS:
                    bad = text[i : i + 2]
                    raise ConfigError(
                        f"unsupported strptime directive {bad!r} in {text!r}; supported: "
                        + " ".join("%" + k for k in _STRPTIME_PARTS)
                        + ", or 'epoch'"
                    )
                regex, key = _STRPTIME_PARTS[text[i + 1]]
                parts.append(regex)
                if key is not None:
                    self.keys.append(key)
                i += 2
            elif ch.isspace():
                parts.append(r"\s+")
                while i < len(text) and text[i].isspace():
                    i += 1
            else:
                parts.append(re.escape(ch))
                i += 1
        self.regex = re.compile("".join(parts))
        self.has_year = self.is_epoch or "Y" in self.keys or "y" in self.keys
        if not self.is_epoch and "m" not in self.keys and "b" not in self.keys and "B" not in self.keys:
            raise ConfigError(f"timestamp format {text!r} has no month (%m, %b or %B)")

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def compile(text: str) -> TimeFormat:
        return TimeFormat(text)

    def parse(self, value: str, clock: _Clock) -> dt.datetime:
        if self.is_epoch:
            return parse_epoch(value)
        match = self.regex.fullmatch(value.strip())
        if match is None:
            raise ParseError(f"timestamp {value[:64]!r} does not match format {self.text!r}")
        year = month = None
        day, hour, minute, second, micro = 1, 0, 0, 0, 0
        offset: int | None = None
        pm: bool | None = None
        for key, got in zip(self.keys, match.groups(), strict=True):
            if key == "Y":
                year = int(got)
            elif key == "y":
                year = 2000 + int(got) if int(got) < 69 else 1900 + int(got)
            elif key == "m":
                month = int(got)
            elif key == "d":
                day = int(got)
            elif key == "H" or key == "I":
                hour = int(got)
            elif key == "M":
                minute = int(got)
            elif key == "S":
                second = int(got)
            elif key == "f":
                micro = int(got[:6].ljust(6, "0"))
            elif key == "b":
                month = _MONTHS.get(got.lower())
                if month is None:
                    raise ParseError(f"unknown month name {got!r}")
            elif key == "B":
                month = _MONTHS_FULL.get(got.lower()) or _MONTHS.get(got[:3].lower())
                if month is None:
                    raise ParseError(f"unknown month name {got!r}")
            elif key == "p":
                pm = got.lower() == "pm"
            elif key == "z":
                offset = _zone_offset(got)
        if pm is not None:
            if hour > 12:
                raise ParseError(f"impossible 12-hour clock time in {value[:64]!r}")
            hour = hour % 12 + (12 if pm else 0)
        assert month is not None
        if year is None:
            year = clock.year_for(month)
        return clock.make(year, month, day, hour, minute, second, micro, offset)


def _zone_offset(text: str) -> int:
    """``Z``, ``+02:00`` or ``-0700`` -> offset seconds."""
    if text in ("Z", "z"):
        return 0
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        raise ParseError(f"impossible UTC offset {text!r}")
    return sign * (hours * 3600 + minutes * 60)


def parse_epoch(value: int | float | str) -> dt.datetime:
    """Epoch seconds, ms, us or ns (told apart by magnitude) -> aware UTC datetime.

    Integers (and digit strings) are converted exactly; a value below 1e11 is seconds (up to
    year 5138), below 1e14 ms, below 1e17 us, else ns. Negative values are refused: no log we
    read predates 1970, so a negative epoch is corruption, not history.
    """
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 40:
            raise ParseError(f"unparseable timestamp: {text[:64]!r}")
        if text.isascii() and text.isdigit():
            value = int(text)
        else:
            try:
                value = float(text)
            except ValueError:
                raise ParseError(f"unparseable timestamp: {text[:64]!r}") from None
    if isinstance(value, bool):
        raise ParseError(f"timestamp is not a time: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ParseError(f"negative epoch timestamp: {value}")
        if value >= 10**17:
            seconds, micro = divmod(value // 1000, 1_000_000)
        elif value >= 10**14:
            seconds, micro = divmod(value, 1_000_000)
        elif value >= 10**11:
            seconds, millis = divmod(value, 1000)
            micro = millis * 1000
        else:
            seconds, micro = value, 0
        if seconds >= _MAX_EPOCH_S:
            raise ParseError(f"timestamp out of range: {value}")
        return _EPOCH + dt.timedelta(seconds=seconds, microseconds=micro)
    if not isinstance(value, float) or not math.isfinite(value):
        raise ParseError(f"timestamp is not a time: {value!r}")
    if value < 0:
        raise ParseError(f"negative epoch timestamp: {value}")
    seconds_f = value
    if seconds_f >= 1e17:
        seconds_f /= 1e9
    elif seconds_f >= 1e14:
        seconds_f /= 1e6
    elif seconds_f >= 1e11:
        seconds_f /= 1e3
    if seconds_f >= _MAX_EPOCH_S:
        raise ParseError(f"timestamp out of range: {value}")
    return dt.datetime.fromtimestamp(seconds_f, _UTC)


_ISO_FALLBACK = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


def parse_timestamp(value: Any, tz: dt.tzinfo | None = None) -> dt.datetime:
    """Epoch seconds/ms/us/ns (by magnitude, numbers or digit strings) or ISO-8601 -> aware UTC.

    ISO strings may carry ``Z``, ``+02:00`` or ``+0200``; one without a zone is read in ``tz``
    (default UTC). Everything is normalised to UTC and must fall in 1970..2099.
    """
    if isinstance(value, bool) or value is None:
        raise ParseError(f"timestamp is not a time: {value!r}")
    if isinstance(value, (int, float)):
        return parse_epoch(value)
    if not isinstance(value, str):
        raise ParseError(f"timestamp is not a time: {str(value)[:64]!r}")
    text = value.strip()
    if not text:
        raise ParseError("empty timestamp")
    first = text[0]
    if first.isdigit() and (len(text) < 5 or text[4] != "-"):
        return parse_epoch(text)
    if first == "-" and text[1:2].isdigit():
        return parse_epoch(text)
    try:
        parsed = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
    except ValueError:
        parsed = _iso_fallback(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz or _UTC)
    result = parsed.astimezone(_UTC)
    if not _MIN_TS <= result < _MAX_TS:
        raise ParseError(f"timestamp out of range: {text[:64]}")
    return result


def _iso_fallback(text: str) -> dt.datetime:
    """ISO forms older Pythons' ``fromisoformat`` refuses (``+0200``, ``,123``, nanoseconds)."""
    match = _ISO_FALLBACK.fullmatch(text)
    if match is None:
        raise ParseError(f"unparseable timestamp: {text[:64]!r}")
    y, mo, d, h, mi, s, frac, zone = match.groups()
    try:
        return dt.datetime(
            int(y),
            int(mo),
            int(d),
            int(h or 0),
            int(mi or 0),
            int(s or 0),
            int((frac or "0")[:6].ljust(6, "0")),
            tzinfo=None if zone is None else dt.timezone(dt.timedelta(seconds=_zone_offset(zone))),
        )
    except ValueError as exc:
        raise ParseError(f"impossible date/time {text[:64]!r} ({exc})") from None


# ------------------------------------------------------------------------------ values

_INT_RE = re.compile(r"[+-]?\d+")
#: Values meaning "no value" in the formats we read (Zeek unset/empty markers, CSV blanks).
_MISSING = frozenset({"-", "", "(empty)"})


def _as_str(name: str, value: Any) -> str | None:
    if value.__class__ is str:
        return None if value in _MISSING else value
    return None if value is None else json.dumps(value)


def _as_int(name: str, value: Any) -> int | None:
    """An int column's value: ints, integral floats and integer text; bools and ``1.5`` refused."""
    cls = value.__class__
    if cls is int:
        return value  # type: ignore[no-any-return]
    if cls is str:
        if value.isascii() and value.isdigit() and len(value) < 40:
            return int(value)
        if value in _MISSING:
            return None
        text = value.strip()
        if len(text) < 40 and _INT_RE.fullmatch(text):
            return int(text)
    elif value is None:
        return None
    elif cls is float and value.is_integer():
        return int(value)
    raise ParseError(f"field {name} is not an integer: {str(value)[:40]!r}")


def _as_float(name: str, value: Any) -> float | None:
    """A float column's value: numbers and numeric text, finite; bools refused."""
    cls = value.__class__
    if cls is float:
        number = value
    elif cls is int:
        return float(value)
    elif cls is str:
        if value in _MISSING:
            return None
        try:
            number = float(value)
        except ValueError:
            raise ParseError(f"field {name} is not a number: {value[:40]!r}") from None
    elif value is None:
        return None
    else:
        raise ParseError(f"field {name} is not a number: {str(value)[:40]!r}")
    if not math.isfinite(number):
        raise ParseError(f"field {name} is not a finite number: {value!r}")
    return number  # type: ignore[no-any-return]


_CONVERTERS: dict[type, Callable[[str, Any], Any]] = {str: _as_str, int: _as_int, float: _as_float}


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects -> dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); flat input as is."""
    if not prefix:
        for value in obj.values():
            if value.__class__ is dict:
                break
        else:
            return obj
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


_LEVELS = {
    "v": "debug",
    "verbose": "debug",
    "trace": "debug",
    "d": "debug",
    "dbg": "debug",
    "debug": "debug",
    "i": "info",
    "info": "info",
    "information": "info",
    "informational": "info",
    "notice": "notice",
    "n": "notice",
    "w": "warning",
    "warn": "warning",
    "warning": "warning",
    "e": "error",
    "err": "error",
    "error": "error",
    "severe": "error",
    "failure": "error",
    "f": "fatal",
    "fatal": "fatal",
    "a": "fatal",
    "assert": "fatal",
    "crit": "critical",
    "critical": "critical",
    "alert": "alert",
    "emerg": "emerg",
    "emergency": "emerg",
    "panic": "emerg",
}


def normalize_level(value: Any) -> str | None:
    """Map level spellings of many formats (``W``, ``WARN``, ``Warning``, ``SEVERE``) to one set.

    The result is lower case: debug, info, notice, warning, error, fatal, critical, alert,
    emerg (the names :mod:`loganomaly.features.stage` counts), or the lower-cased input if unknown.
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if not text or text == "-":
        return None
    return _LEVELS.get(text, text)


def _attr(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ------------------------------------------------------------------------------ network records (JSON, Zeek)

# Zeek-style fields -> event columns, with the converter enforcing each column's Python type.
_NET_FIELDS: tuple[tuple[str, str, Callable[[str, Any], Any]], ...] = (
    ("id.orig_h", "src_addr", _as_str),
    ("id.orig_p", "src_port", _as_int),
    ("id.resp_h", "dst_addr", _as_str),
    ("id.resp_p", "dst_port", _as_int),
    ("proto", "proto", _as_str),
    ("duration", "duration", _as_float),
    ("orig_bytes", "bytes_out", _as_int),
    ("resp_bytes", "bytes_in", _as_int),
    ("orig_pkts", "packets_out", _as_int),
    ("resp_pkts", "packets_in", _as_int),
)
_COUNT_COLUMNS = ("bytes_out", "bytes_in", "packets_out", "packets_in")
_STATUS_KEYS = ("conn_state", "status_code", "status")
_COMPONENT_KEYS = ("service", "service.name", "component", "logger", "logger_name", "app", "program", "_path")
_LEVEL_KEYS = ("level", "severity", "log.level", "loglevel", "lvl")
_MESSAGE_KEYS = ("message", "msg", "log", "@message")
_LABEL_KEYS = ("label", "Label")
_DETAILED_LABEL_KEYS = ("detailed-label", "detailedlabel", "detailed_label", "detailed_Label")
_ENTITY_KEYS = (
    "host",
    "hostname",
    "host.name",
    "id.orig_h",
    "src_ip",
    "src_addr",
    "source.ip",
    "client_ip",
    "entity",
)
_WARNING_ZEEK_PATHS = frozenset({"notice", "weird", "intel", "signatures"})


class _RecordMapper:
    """Maps flat records (JSON, Zeek TSV) to event dicts; key lists resolved once per file."""

    __slots__ = ("opts", "level_keys", "label_keys", "message_keys", "entity_field")

    def __init__(self, opts: FormatOptions) -> None:
        self.opts = opts
        self.level_keys = (opts.level_field,) if opts.level_field else _LEVEL_KEYS
        self.label_keys = (opts.label_field,) if opts.label_field else _LABEL_KEYS
        self.message_keys = (opts.message_field,) if opts.message_field else _MESSAGE_KEYS
        self.entity_field = opts.entity_field

    def net_fields(self, event: dict[str, Any], flat: dict[str, Any]) -> None:
        """Move the Zeek connection fields of ``flat`` into typed ``event`` columns."""
        for key, column, conv in _NET_FIELDS:
            if key in flat:
                value = flat.pop(key)
                # Exact ints need no conversion (bool is its own class, so it still goes to _as_int).
                event[column] = value if value.__class__ is int and conv is _as_int else conv(key, value)

    def finish(self, event: dict[str, Any], flat: dict[str, Any], zeek_path: str | None) -> dict[str, Any]:
        """Fill status, component, level, label, entity, message and attributes. Consumes ``flat``."""
        for column in _COUNT_COLUMNS:
            value = event.get(column)
            if value is not None and value < 0:
                raise ParseError(f"field {column} is negative: {value}")
        # Missing markers ("-", "(empty)", null) under these keys carry nothing: dropped, not kept.
        for key in _STATUS_KEYS:
            if key in flat:
                value = flat.pop(key)
                if value is not None and not (value.__class__ is str and value in _MISSING):
                    event["status"] = _as_str(key, value)
                    break
        if zeek_path is None:
            path_value = flat.get("_path")
            zeek_path = path_value if isinstance(path_value, str) else None
        component = None
        for key in _COMPONENT_KEYS:
            if key in flat:
                value = flat.pop(key)
                if value is not None and not (value.__class__ is str and value in _MISSING):
                    component = _as_str(key, value)
                    break
        event["component"] = component or zeek_path

        level = None
        for key in self.level_keys:
            if flat.get(key) is not None:
                level = normalize_level(flat.pop(key))
                break
        if level is None:
            level = "warning" if (zeek_path in _WARNING_ZEEK_PATHS or "note" in flat) else "info"
        event["level"] = level

        label = None
        for key in self.label_keys:
            if key in flat:
                label = _as_str(key, flat.pop(key))
                break
        event["label"] = label
        for key in _DETAILED_LABEL_KEYS:
            if key in flat:
                detailed = _as_str(key, flat.pop(key))
                if detailed is not None:
                    flat["detailed_label"] = detailed
                break

        entity: Any = None
        field_name = self.entity_field
        if field_name:
            entity = flat.get(field_name, event.get(field_name))
            if field_name in flat and field_name != "id.orig_h":
                flat.pop(field_name)
        else:
            # HTTP records carry the request's Host header under "host": the server, not the actor.
            http = "uri" in flat or "method" in flat
            for key in _ENTITY_KEYS:
                if http and key == "host":
                    continue
                value = event.get("src_addr") if key == "id.orig_h" else flat.get(key)
                if value is not None and value != "" and value != "-":
                    entity = value
                    if key != "id.orig_h":
                        flat.pop(key)
                    break
        event["entity"] = (
            (entity if entity.__class__ is str else str(entity))
            if entity is not None
            else self.opts.default_entity
        )

        message = None
        for key in self.message_keys:
            value = flat.get(key)
            if value is not None:
                message = _attr(flat.pop(key))
                break
        attributes = {
            k: (v if v.__class__ is str else json.dumps(v)) for k, v in flat.items() if v is not None
        }
        event["attributes"] = attributes
        if message is None and zeek_path == "weird" and isinstance(flat.get("name"), str):
            message = f"weird {flat['name']}"
        if message is None:
            if "src_addr" in event or "dst_addr" in event:
                src = f"{event.get('src_addr') or '?'}:{event.get('src_port') or '?'}"
                dst = f"{event.get('dst_addr') or '?'}:{event.get('dst_port') or '?'}"
                message = " ".join(
                    str(p)
                    for p in (event.get("proto"), event["component"], src, "->", dst, event.get("status"))
                    if p
                )
            else:
                message = " ".join(f"{k}={v}" for k, v in list(attributes.items())[:8])
        event["message"] = message
        return event


# ------------------------------------------------------------------------------ line parsers


class LineParser:
    """Parses the lines of one file. ``parse(text, line_no)`` returns an event dict, or None for
    a header line (quarantined with :data:`HEADER_REASON`), or raises ParseError whose text is
    the reason. ``line_no`` is the physical line number (synthetic CSV times use it).

    Parsers are stateful per file (Zeek and CSV headers, the year of year-less formats), so
    :func:`make_parser` builds a fresh one for every file.
    """

    format: str = ""

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any] | None:
        raise NotImplementedError


class JsonParser(LineParser):
    """JSON lines with nested, varying schemas; Zeek JSON logs of any type map to columns."""

    format = "json"

    def __init__(self, opts: FormatOptions, clock: _Clock) -> None:
        self.opts = opts
        self.clock = clock
        self.ts_keys = tuple(opts.timestamp_fields or TIMESTAMP_FIELDS)
        self.time_format = TimeFormat.compile(opts.timestamp_format) if opts.timestamp_format else None
        self.mapper = _RecordMapper(opts)

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any]:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParseError(f"invalid JSON: {exc.msg} at char {exc.pos}") from None
        except RecursionError:
            raise ParseError("invalid JSON: nested too deeply") from None
        except ValueError as exc:  # e.g. an integer literal past Python's 4300-digit limit
            raise ParseError(f"invalid JSON: {str(exc)[:80]}") from None
        if not isinstance(obj, dict):
            raise ParseError("JSON line is not an object")
        flat = _flatten(obj)
        raw_ts = None
        for key in self.ts_keys:
            raw_ts = flat.pop(key, None)
            if raw_ts is not None:
                break
        if raw_ts is None:
            raise ParseError(f"no timestamp field (tried {', '.join(self.ts_keys)})")
        if self.time_format is not None and isinstance(raw_ts, str):
            ts = self.time_format.parse(raw_ts, self.clock)
        else:
            ts = parse_timestamp(raw_ts, self.clock.tz)
        event: dict[str, Any] = {"ts": ts, "format": "json"}
        self.mapper.net_fields(event, flat)
        return self.mapper.finish(event, flat, None)


class ZeekParser(LineParser):
    """Zeek TSV logs of any type, driven by their own header lines.

    ``#separator`` (written as ``\\x09``), ``#set_separator``, ``#empty_field``,
    ``#unset_field``, ``#path``, ``#fields`` and ``#types`` are honoured and may change midway
    (concatenated logs); ``#open``/``#close`` and other ``#`` lines are header lines. Typed
    values: ``time`` -> ts, ``count/int/port`` and ``interval/double`` are checked when they
    fill a numeric column, ``bool`` -> "true"/"false", ``set[..]``/``vector[..]`` -> a JSON list
    string in attributes. IoT-23 files join the last columns by spaces in one tab field
    (``tunnel_parents   label   detailed-label``); such a field is split on whitespace.
    """

    format = "zeek"

    def __init__(self, opts: FormatOptions) -> None:
        self.opts = opts
        self.sep = "\t"
        self.set_sep = ","
        self.empty = "(empty)"
        self.unset = "-"
        self.path: str | None = None
        self.fields: list[str] | None = list(opts.columns) if opts.columns else None
        self.types: list[str] | None = None
        self.columns: list[tuple[str, str]] = []
        self.split_last: int = 0
        self.mapper = _RecordMapper(opts)
        self.ts_index: int | None = None
        self.net: list[tuple[int, str, str, Callable[[str, Any], Any]]] = []
        self.plain: list[tuple[int, str]] = []
        self.special: list[tuple[int, str, bool]] = []
        if self.fields:
            self._build()

    def _header(self, text: str) -> None:
        if text.startswith("#separator"):
            value = text[len("#separator") :].strip()
            try:
                self.sep = value.encode("ascii").decode("unicode_escape") if value else "\t"
            except (UnicodeError, ValueError):
                raise ParseError(f"bad zeek #separator {value!r}") from None
            if not self.sep:
                raise ParseError("empty zeek #separator")
            return
        name, _, rest = text.partition(self.sep)
        if name == "#set_separator":
            self.set_sep = rest
        elif name == "#empty_field":
            self.empty = rest
        elif name == "#unset_field":
            self.unset = rest
        elif name == "#path":
            self.path = rest
        elif name == "#fields":
            self.fields = rest.split(self.sep)
            self._build()
        elif name == "#types":
            self.types = rest.split(self.sep)
            if self.fields is not None:
                self._build()

    def _build(self) -> None:
        assert self.fields is not None
        fields = list(self.fields)
        types = list(self.types) if self.types else []
        self.split_last = 0
        if fields and len(fields[-1].split()) > 1:
            # IoT-23: "tunnel_parents   label   detailed-label" in one tab-separated field.
            joined = fields.pop().split()
            self.split_last = len(joined)
            fields.extend(joined)
            if types and len(types[-1].split()) > 1:
                types.extend(types.pop().split())
        if len(types) != len(fields):
            types = (
                ["time" if name == "ts" else "string" for name in fields]
                if not types
                else types + ["string"] * (len(fields) - len(types))
            )
        self.columns = list(zip(fields, types, strict=False))
        # Per-column actions, resolved once per header instead of once per value.
        net = {key: (column, conv) for key, column, conv in _NET_FIELDS}
        self.ts_index = fields.index("ts") if "ts" in fields else None
        self.net, self.plain, self.special = [], [], []
        for i, (name, kind) in enumerate(self.columns):
            if i == self.ts_index:
                continue
            if name in net:
                self.net.append((i, name, *net[name]))
            elif kind.startswith(("set[", "vector[")):
                self.special.append((i, name, True))
            elif kind == "bool":
                self.special.append((i, name, False))
            else:
                self.plain.append((i, name))

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any] | None:
        if text[:1] == "#":
            self._header(text)
            return None
        if not self.columns:
            raise ParseError("zeek data line before its #fields header")
        values = text.split(self.sep)
        n = len(self.columns)
        if self.split_last:
            head = n - self.split_last
            if len(values) == head + 1:
                values = values[:head] + values[head].split(None, self.split_last - 1)
        if len(values) != n:
            raise ParseError(f"zeek line has {len(values)} fields, header has {n}")
        unset, empty = self.unset, self.empty
        if self.ts_index is None or values[self.ts_index] in (unset, empty):
            raise ParseError("zeek line has no ts value")
        event: dict[str, Any] = {"ts": parse_epoch(values[self.ts_index]), "format": "zeek"}
        for i, key, column, conv in self.net:
            value = values[i]
            if value != unset and value != empty:
                event[column] = conv(key, value)
        flat: dict[str, Any] = {}
        for i, name in self.plain:
            value = values[i]
            if value != unset:
                flat[name] = "" if value == empty else value
        for i, name, is_list in self.special:
            value = values[i]
            if value == unset:
                continue
            if is_list:
                items = value.split(self.set_sep) if self.set_sep else [value]
                flat[name] = "[]" if value == empty else json.dumps(items)
            elif value == "T" or value == "F":
                flat[name] = "true" if value == "T" else "false"
            else:
                raise ParseError(f"field {name} is not a zeek bool: {value[:20]!r}")
        return self.mapper.finish(event, flat, self.path)


_RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>(?P<version>\d{1,2}) (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) "
    r"(?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|(?:\[.*?\])+)(?: (?P<msg>.*))?$",
    re.DOTALL,
)
_RFC3164 = re.compile(
    r"^(?:<(?P<pri>\d{1,3})>)?(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) "
    r"(?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})"
    r"(?:\.(?P<frac>\d{1,6}))? (?P<host>\S+)(?: (?P<rest>.*))?$",
    re.DOTALL,
)
_TAG = re.compile(r"(?P<tag>[^\s:\[]+)(?:\[(?P<pid>[^\]]*)\])?: ?(?P<msg>.*)", re.DOTALL)
_SYSLOG_HEAD = re.compile(r"^<\d{1,3}>\d{1,2} ")
_SYSLOG_3164_HEAD = re.compile(r"^(?:<\d{1,3}>)?[A-Z][a-z]{2} {1,2}\d{1,2} \d{2}:\d{2}:\d{2} \S+")


class SyslogParser(LineParser):
    """RFC 5424, and RFC 3164 (``<PRI>Mmm dd hh:mm:ss host tag[pid]: msg``, PRI optional).

    RFC 3164 carries neither year nor zone: the year comes from ``FormatOptions.year`` (else
    the file's mtime year, rolling over at December -> January) and the zone from
    ``FormatOptions.timezone`` (else UTC). Lines without PRI have no severity: level "info".
    """

    format = "syslog"

    def __init__(self, opts: FormatOptions, clock: _Clock) -> None:
        self.opts = opts
        self.clock = clock
        self._last_head: tuple[str, str, str, str, str, str | None] | None = None
        self._last_ts = _EPOCH

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any]:
        if text.startswith("<") and _SYSLOG_HEAD.match(text):
            return self._rfc5424(text)
        match = _RFC3164.match(text)
        if match is None:
            raise ParseError("not RFC 5424 or RFC 3164 syslog")
        pri_text = match["pri"]
        attributes: dict[str, str] = {}
        level = "info"
        if pri_text is not None:
            pri = int(pri_text)
            if pri > 191:
                raise ParseError(f"syslog PRI out of range: {pri}")
            level = _SEVERITIES[pri % 8]
            attributes["facility"] = str(pri // 8)
        head = (match["mon"], match["day"], match["h"], match["m"], match["s"], match["frac"])
        if head == self._last_head:
            ts = self._last_ts
        else:
            month = _MONTHS.get(head[0].lower())
            if month is None:
                raise ParseError(f"unknown month name {head[0]!r}")
            year = self.clock.year_for(month)
            frac = head[5]
            ts = self.clock.make(
                year, month, int(head[1]), int(head[2]), int(head[3]), int(head[4]),
                int(frac.ljust(6, "0")) if frac else 0, None,
            )  # fmt: skip
            self._last_head, self._last_ts = head, ts
        rest = match["rest"] or ""
        component = None
        tag = _TAG.match(rest)
        if tag is not None:
            component = tag["tag"]
            if tag["pid"]:
                attributes["procid"] = tag["pid"]
            message = tag["msg"]
        else:
            message = rest
        host = match["host"]
        return {
            "ts": ts,
            "format": "syslog",
            "entity": host if host != "-" else self.opts.default_entity,
            "component": component,
            "level": level,
            "message": message,
            "attributes": attributes,
        }

    def _rfc5424(self, text: str) -> dict[str, Any]:
        match = _RFC5424.match(text)
        if not match:
            raise ParseError("not RFC 5424 syslog")
        pri = int(match["pri"])
        if pri > 191:
            raise ParseError(f"syslog PRI out of range: {pri}")
        if match["ts"] == "-":
            raise ParseError("syslog timestamp is NILVALUE")
        attributes = {"facility": str(pri // 8)}
        for key in ("procid", "msgid"):
            if match[key] != "-":
                attributes[key] = match[key]
        if match["sd"] != "-":
            attributes["structured_data"] = match["sd"]
        return {
            "ts": parse_timestamp(match["ts"], self.clock.tz),
            "format": "syslog",
            "entity": None if match["host"] == "-" else match["host"],
            "component": None if match["app"] == "-" else match["app"],
            "level": _SEVERITIES[pri % 8],
            "message": (match["msg"] or "").lstrip("\ufeff"),
            "attributes": attributes,
        }


_ACCESS = re.compile(
    r'^(?P<host>\S+) (?P<ident>\S+) (?P<user>"[^"]*"|\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}|-) (?P<size>\d+|-)'
    r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?(?P<rest>.*)$'
)
_ACCESS_HEAD = re.compile(r"^\S+ \S+ \S+ \[\d{2}/[A-Z][a-z]{2}/\d{4}:")


class AccessParser(LineParser):
    """Apache/Nginx common and combined access logs.

    ``status`` keeps the HTTP code as text, ``bytes_out`` the response size (``-`` -> None),
    ``src_addr`` and the entity the client (or ``FormatOptions.entity_field``: ident, user,
    referer, agent). Level follows the status: 5xx error, 4xx warning, else info. The message is
    ``METHOD path status`` with the query string cut off (its values are parameters, not
    structure; the full target stays in attributes).
    """

    format = "access"

    def __init__(self, opts: FormatOptions) -> None:
        self.opts = opts
        self.entity_group = opts.entity_field or "host"
        if self.entity_group not in _ACCESS.groupindex:
            raise ConfigError(
                f"entity_field {opts.entity_field!r} is not an access log field; "
                "valid: host, ident, user, referer, agent"
            )
        self._last_time = ""
        self._last_ts = _EPOCH

    def _time(self, text: str) -> dt.datetime:
        # "10/Oct/2000:13:55:36 -0700" by fixed positions: much faster than strptime.
        if len(text) != 26 or text[2] != "/" or text[6] != "/" or text[11] != ":" or text[20] != " ":
            raise ParseError(f"unparseable access log time {text[:40]!r}")
        month = _MONTHS.get(text[3:6].lower())
        if month is None:
            raise ParseError(f"unknown month name {text[3:6]!r}")
        try:
            day, year = int(text[0:2]), int(text[7:11])
            hour, minute, second = int(text[12:14]), int(text[15:17]), int(text[18:20])
        except ValueError:
            raise ParseError(f"unparseable access log time {text[:40]!r}") from None
        zone = text[21:]
        if zone[0] not in "+-" or not zone[1:].isdigit():
            raise ParseError(f"bad UTC offset in access log time {text[:40]!r}")
        return _Clock.make(_ACCESS_CLOCK, year, month, day, hour, minute, second, 0, _zone_offset(zone))

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any]:
        match = _ACCESS.match(text)
        if match is None:
            raise ParseError("not a common/combined access log line")
        time_text = match["time"]
        if time_text == self._last_time:
            ts = self._last_ts
        else:
            ts = self._time(time_text)
            self._last_time, self._last_ts = time_text, ts
        request = match["request"]
        parts = request.split(" ")
        attributes: dict[str, str] = {"request": request} if len(parts) != 3 else {}
        method = path = None
        if len(parts) == 3:
            method, path, protocol = parts
            attributes["method"] = method
            attributes["path"] = path
            attributes["protocol"] = protocol
        status = match["status"]
        if status == "-":
            status = None
        size = match["size"]
        for key in ("ident", "user", "referer", "agent"):
            value = match[key]
            if value is not None and value != "-" and value != '"-"':
                attributes[key] = value
        if match["rest"].strip():
            attributes["extra"] = match["rest"].strip()
        level = "info"
        if status is not None and status[0] == "5":
            level = "error"
        elif status is not None and status[0] == "4":
            level = "warning"
        short_path = path.split("?", 1)[0] if path is not None else None
        message = (
            f"{method} {short_path} {status or '-'}"
            if method is not None
            else f"{request[:200]} {status or '-'}"
        )
        entity = match[self.entity_group]
        return {
            "ts": ts,
            "format": "access",
            "entity": entity if entity not in (None, "-") else self.opts.default_entity,
            "src_addr": match["host"],
            "status": status,
            "bytes_out": None if size == "-" else _as_int("response size", size),
            "proto": "http",
            "level": level,
            "message": message,
            "attributes": attributes,
        }


_ACCESS_CLOCK = _Clock(None, 1970)


# ------------------------------------------------------------------------------ loghub


@dataclass(frozen=True)
class LoghubPattern:
    """A named application log format: a logpai-style line pattern and how to read its fields.

    ``time_fields`` are joined by a space and parsed with ``time_format`` (a :class:`TimeFormat`;
    ``"epoch"`` for epoch seconds); ``frac_field`` adds the microseconds found after the last
    ``.`` of that field (BGL: exact epoch seconds in UTC, sub-seconds from its local-time
    column). ``entity`` lists fields tried in order; ``entity_regex`` first looks for an id in
    the content (HDFS block ids, the unit its anomalies are labelled on). ``label_field``: ``-``
    means normal (label None), anything else is the alert category.
    """

    name: str
    pattern: str
    time_fields: tuple[str, ...]
    time_format: str
    entity: tuple[str, ...] = ()
    level_field: str | None = None
    component_field: str | None = None
    label_field: str | None = None
    entity_regex: str | None = None
    frac_field: str | None = None


LOGHUB_PATTERNS: dict[str, LoghubPattern] = {
    p.name: p
    for p in (
        LoghubPattern(
            "Android",
            r"<Date:\d{2}-\d{2}> <Time:\d{2}:\d{2}:\d{2}\.\d{3}> <Pid:\d+> <Tid:\d+> <Level:[VDIWEFA]> <Component:.*?>: <Content>",
            ("Date", "Time"), "%m-%d %H:%M:%S.%f", ("Pid",), "Level", "Component",
        ),
        LoghubPattern(
            "Apache",
            r"\[<Time:[A-Z][a-z]{2} [A-Z][a-z]{2} \d{2} \d{2}:\d{2}:\d{2} \d{4}>\] \[<Level:[a-z]+>\] <Content>",
            ("Time",), "%a %b %d %H:%M:%S %Y", (), "Level", None,
        ),
        LoghubPattern(
            "BGL",
            r"<Label:\S+> <Timestamp:\d+> <Date:\d{4}\.\d{2}\.\d{2}> <Node:\S+> "
            r"<Time:\d{4}-\d{2}-\d{2}-\d{2}\.\d{2}\.\d{2}\.\d+> <NodeRepeat:\S+> <Type:\S+> <Component:\S+> <Level:\S+> <Content>",
            ("Timestamp",), "epoch", ("Node",), "Level", "Component", "Label", frac_field="Time",
        ),
        LoghubPattern(
            "HDFS",
            r"<Date:\d{6}> <Time:\d{6}> <Pid:\d+> <Level:[A-Z]+> <Component:\S+?>: <Content>",
            ("Date", "Time"), "%y%m%d %H%M%S", ("Pid",), "Level", "Component", entity_regex=r"blk_-?\d+",
        ),
        LoghubPattern(
            "HPC",
            r"<LogId:\d+> <Node:\S+> <Component:\S+> <State:\S+> <Time:\d{9,10}> <Flag:-?\d+> <Content>",
            ("Time",), "epoch", ("Node",), None, "Component",
        ),
        LoghubPattern(
            "Hadoop",
            r"<Date:\d{4}-\d{2}-\d{2}> <Time:\d{2}:\d{2}:\d{2},\d{3}> <Level:[A-Z]+> \[<Process:.*?>\] <Component:\S+?>: <Content>",
            ("Date", "Time"), "%Y-%m-%d %H:%M:%S,%f", ("Component",), "Level", "Component",
        ),
        LoghubPattern(
            "HealthApp",
            r"<Time:\d{8}-\d{1,2}:\d{1,2}:\d{1,2}:\d{1,3}>\|<Component:[^|]*>\|<Pid:\d+>\|<Content>",
            ("Time",), "%Y%m%d-%H:%M:%S:%f", ("Component",), None, "Component",
        ),
        LoghubPattern(
            "Linux",
            r"<Month:[A-Z][a-z]{2}> <Date:\d{1,2}> <Time:\d{2}:\d{2}:\d{2}> <Host:\S+> <Component:[^\[:]*?>(\[<PID:\d+>\])?: <Content>",
            ("Month", "Date", "Time"), "%b %d %H:%M:%S", ("Host",), None, "Component",
        ),
        LoghubPattern(
            "Mac",
            r"<Month:[A-Z][a-z]{2}> <Date:\d{1,2}> <Time:\d{2}:\d{2}:\d{2}> <User:\S+> <Component:.*?>\[<PID:\d+>\]"
            r"( \(<Address:[^)]*>\))?: <Content>",
            ("Month", "Date", "Time"), "%b %d %H:%M:%S", ("User",), None, "Component",
        ),
        LoghubPattern(
            "OpenSSH",
            r"<Date:[A-Z][a-z]{2}> <Day:\d{1,2}> <Time:\d{2}:\d{2}:\d{2}> <Host:\S+> <Component:sshd>\[<Pid:\d+>\]: <Content>",
            ("Date", "Day", "Time"), "%b %d %H:%M:%S", ("Host",), None, "Component",
        ),
        LoghubPattern(
            "OpenStack",
            r"<Logrecord:\S+> <Date:\d{4}-\d{2}-\d{2}> <Time:\d{2}:\d{2}:\d{2}\.\d{3}> <Pid:\d+> <Level:[A-Z]+> "
            r"<Component:\S+> \[<ADDR:[^\]]*>\] <Content>",
            ("Date", "Time"), "%Y-%m-%d %H:%M:%S.%f", ("Component",), "Level", "Component",
            entity_regex=r"(?<=\[instance: )[0-9a-f-]{36}",
        ),
        LoghubPattern(
            "Proxifier",
            r"\[<Time:\d{2}\.\d{2} \d{2}:\d{2}:\d{2}>\] <Program:.*?> - <Content>",
            ("Time",), "%m.%d %H:%M:%S", ("Program",), None, "Program",
        ),
        LoghubPattern(
            "Spark",
            r"<Date:\d{2}/\d{2}/\d{2}> <Time:\d{2}:\d{2}:\d{2}> <Level:[A-Z]+> <Component:\S+?>: <Content>",
            ("Date", "Time"), "%y/%m/%d %H:%M:%S", ("Component",), "Level", "Component",
        ),
        LoghubPattern(
            "Thunderbird",
            r"<Label:\S+> <Timestamp:\d+> <Date:\d{4}\.\d{2}\.\d{2}> <User:\S+> <Month:[A-Z][a-z]{2}> <Day:\d{1,2}> "
            r"<Time:\d{2}:\d{2}:\d{2}> <Location:\S+> <Component:.*?>(\[<PID:\d+>\])?: <Content>",
            ("Timestamp",), "epoch", ("User",), None, "Component", "Label",
        ),
        LoghubPattern(
            "Windows",
            r"<Date:\d{4}-\d{2}-\d{2}> <Time:\d{2}:\d{2}:\d{2}>, <Level:[A-Za-z]+> <Component:\S+> <Content>",
            ("Date", "Time"), "%Y-%m-%d %H:%M:%S", ("Component",), "Level", "Component",
        ),
        LoghubPattern(
            "Zookeeper",
            r"<Date:\d{4}-\d{2}-\d{2}> <Time:\d{2}:\d{2}:\d{2},\d{3}> - <Level:[A-Z]+> \[<Node:.*?>:"
            r"<Component:[^:@\s]*>@<Id:\d+>\] - <Content>",
            ("Date", "Time"), "%Y-%m-%d %H:%M:%S,%f", ("Component",), "Level", "Component",
        ),
    )
}  # fmt: skip

_FIELD_TOKEN = re.compile(r"(<[A-Za-z_][A-Za-z0-9_]*(?::[^<>]+)?>)")


class CompiledPattern(NamedTuple):
    """A line pattern compiled to one regex; ``fields`` are its named fields in order."""

    regex: re.Pattern[str]
    fields: tuple[str, ...]
    specificity: int


@functools.lru_cache(maxsize=128)
def compile_pattern(pattern: str) -> CompiledPattern:
    """logpai-style ``<Field>`` pattern -> one anchored regex (cached).

    As in logpai's ``generate_logformat_regex``: literal text between fields is a regex fragment
    whose runs of spaces match any whitespace, ``<Content>`` takes the rest of the line and other
    fields match lazily. ``<Field:regex>`` constrains a field (faster and more specific, which
    is what lets detection tell formats apart). Specificity (for tie-breaking in detection)
    counts constrained fields and literal characters.
    """
    parts = _FIELD_TOKEN.split(pattern)
    regex_parts: list[str] = []
    names: list[str] = []
    specificity = 0
    for i, part in enumerate(parts):
        if i % 2 == 0:
            specificity += len(part.replace(" ", ""))
            regex_parts.append(re.sub(" +", r"\\s+", part))
            continue
        name, _, constraint = part[1:-1].partition(":")
        if name in names:
            raise ConfigError(f"pattern field <{name}> appears twice in {pattern!r}")
        names.append(name)
        if name == "Content":
            regex_parts.append(f"(?P<{name}>.*)")
        elif constraint:
            specificity += 3
            regex_parts.append(f"(?P<{name}>{constraint})")
        else:
            regex_parts.append(f"(?P<{name}>.*?)")
    if not names:
        raise ConfigError(f"pattern {pattern!r} has no <Field>; e.g. '<Date> <Time> <Level>: <Content>'")
    try:
        regex = re.compile("^" + "".join(regex_parts) + "$", re.DOTALL)
    except re.error as exc:
        raise ConfigError(f"pattern {pattern!r} is not a valid regex: {exc}") from None
    return CompiledPattern(regex, tuple(names), specificity)


_DEFAULT_ENTITY_FIELDS = ("Node", "Host", "host", "User", "Pid", "PID", "Program", "Component")


class LoghubParser(LineParser):
    """Application log lines through a named (:data:`LOGHUB_PATTERNS`) or custom line pattern.

    Content -> message; the pattern's time fields -> ts (zone-less times are read in
    ``FormatOptions.timezone`` or UTC, year-less ones get ``FormatOptions.year`` or the file's
    mtime year); entity, level, component and label fields as the pattern says (options override
    entity, label, level and the time recipe); every other field -> attributes.
    """

    format = "loghub"

    def __init__(self, opts: FormatOptions, clock: _Clock, pattern: str) -> None:
        self.opts = opts
        self.clock = clock
        spec = LOGHUB_PATTERNS.get(pattern)
        compiled = compile_pattern(spec.pattern if spec else pattern)
        self.regex = compiled.regex
        fields = compiled.fields
        self.name = spec.name if spec else "custom"
        if opts.timestamp_fields:
            time_fields: tuple[str, ...] = tuple(opts.timestamp_fields)
        elif spec:
            time_fields = spec.time_fields
        else:
            time_fields = tuple(f for f in ("Date", "Day", "Time", "Timestamp") if f in fields)
        missing = [f for f in time_fields if f not in fields]
        if missing or not time_fields:
            raise ConfigError(
                f"pattern {pattern!r} has no time field {missing or ''}; "
                f"set timestamp_fields to some of {list(fields)}"
            )
        self.time_fields = time_fields
        self.time_format: TimeFormat | None = None
        if opts.timestamp_format:
            self.time_format = TimeFormat.compile(opts.timestamp_format)
        elif spec and not opts.timestamp_fields:
            self.time_format = TimeFormat.compile(spec.time_format)
        self.frac_field = spec.frac_field if spec and not opts.timestamp_fields else None
        if opts.entity_field:
            if opts.entity_field not in fields:
                raise ConfigError(
                    f"entity_field {opts.entity_field!r} is not a field of the pattern; valid: {list(fields)}"
                )
            self.entity_fields: tuple[str, ...] = (opts.entity_field,)
        elif spec:
            self.entity_fields = spec.entity
        else:
            self.entity_fields = tuple(f for f in _DEFAULT_ENTITY_FIELDS if f in fields)[:1]
        self.entity_regex = (
            re.compile(spec.entity_regex) if spec and spec.entity_regex and not opts.entity_field else None
        )
        self.level_field = opts.level_field or (
            spec.level_field if spec else ("Level" if "Level" in fields else None)
        )
        self.component_field = (
            spec.component_field if spec else ("Component" if "Component" in fields else None)
        )
        self.label_field = opts.label_field or (
            spec.label_field if spec else ("Label" if "Label" in fields else None)
        )
        for what, name in (("level_field", self.level_field), ("label_field", self.label_field)):
            if name is not None and name not in fields:
                raise ConfigError(f"{what} {name!r} is not a field of the pattern; valid: {list(fields)}")
        used = {*time_fields, "Content", self.level_field, self.component_field, self.label_field}
        self.attr_fields = tuple(f for f in fields if f not in used)
        self._last_time: str | None = None
        self._last_ts = _EPOCH

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any]:
        match = self.regex.match(text)
        if match is None:
            raise ParseError(f"line does not match the {self.name} pattern")
        groups = match.groupdict()
        tf = self.time_fields
        time_text = groups[tf[0]] if len(tf) == 1 else " ".join(groups[f] or "" for f in tf)
        if time_text is None:
            raise ParseError("empty time field")
        if time_text == self._last_time:
            ts = self._last_ts
        else:
            ts = (
                self.time_format.parse(time_text, self.clock)
                if self.time_format
                else parse_timestamp(time_text, self.clock.tz)
            )
            self._last_time, self._last_ts = time_text, ts
        if self.frac_field is not None:
            frac = groups[self.frac_field].rpartition(".")[2]
            if frac.isdigit():
                ts = ts.replace(microsecond=int(frac[:6].ljust(6, "0")))
        content = groups["Content"] or ""
        entity = None
        entity_from = None
        if self.entity_regex is not None:
            found = self.entity_regex.search(content)
            if found is not None:
                entity = found.group(0)
        if entity is None:
            for name in self.entity_fields:
                value = groups[name]
                if value:
                    entity, entity_from = value, name
                    break
        label = None
        if self.label_field is not None:
            value = groups[self.label_field]
            label = None if value in (None, "-", "") else value
        attributes = {
            f: v for f in self.attr_fields if f != entity_from and (v := groups[f]) is not None and v != ""
        }
        return {
            "ts": ts,
            "format": "loghub",
            "entity": entity if entity is not None else self.opts.default_entity,
            "level": normalize_level(groups[self.level_field]) if self.level_field else "info",
            "component": groups[self.component_field] if self.component_field else None,
            "message": content,
            "attributes": attributes,
            "label": label,
        }


# ------------------------------------------------------------------------------ csv

#: NSL-KDD: 41 features, the class (``normal`` or an attack name) and the difficulty level.
NSL_KDD_COLUMNS: tuple[str, ...] = (
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land", "wrong_fragment",
    "urgent", "hot", "num_failed_logins", "logged_in", "num_compromised", "root_shell", "su_attempted",
    "num_root", "num_file_creations", "num_shells", "num_access_files", "num_outbound_cmds",
    "is_host_login", "is_guest_login", "count", "srv_count", "serror_rate", "srv_serror_rate",
    "rerror_rate", "srv_rerror_rate", "same_srv_rate", "diff_srv_rate", "srv_diff_host_rate",
    "dst_host_count", "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate", "label", "difficulty",
)  # fmt: skip

#: Column lists that :class:`FormatOptions` accepts by name (``columns: nsl_kdd`` in a config).
COLUMN_PRESETS: dict[str, tuple[str, ...]] = {"nsl_kdd": NSL_KDD_COLUMNS}


def nsl_kdd_options(
    start: str = "2000-01-01T00:00:00Z", step_seconds: float = 1.0, entity_field: str = "service"
) -> FormatOptions:
    """Options for NSL-KDD files (headerless CSV, no time column).

    Rows get synthetic times ``start + line_no * step_seconds`` (ordered, deterministic, not
    real); the entity defaults to the service column because the records name no hosts.
    """
    return FormatOptions(
        format="csv",
        columns=NSL_KDD_COLUMNS,
        has_header=False,
        synthetic_time_start=start,
        synthetic_time_step_seconds=step_seconds,
        entity_field=entity_field,
        label_field="label",
    )


# Known CSV column names (lower case) -> event columns and their types.
_CSV_KNOWN: dict[str, tuple[str, type]] = {
    "bytes_in": ("bytes_in", int),
    "bytes_out": ("bytes_out", int),
    "packets_in": ("packets_in", int),
    "packets_out": ("packets_out", int),
    "duration": ("duration", float),
    "src_port": ("src_port", int),
    "dst_port": ("dst_port", int),
    "src_bytes": ("bytes_out", int),
    "dst_bytes": ("bytes_in", int),
    "orig_bytes": ("bytes_out", int),
    "resp_bytes": ("bytes_in", int),
    "orig_pkts": ("packets_out", int),
    "resp_pkts": ("packets_in", int),
    "proto": ("proto", str),
    "protocol": ("proto", str),
    "protocol_type": ("proto", str),
    "service": ("component", str),
    "component": ("component", str),
    "flag": ("status", str),
    "status": ("status", str),
    "conn_state": ("status", str),
    "src_addr": ("src_addr", str),
    "src_ip": ("src_addr", str),
    "dst_addr": ("dst_addr", str),
    "dst_ip": ("dst_addr", str),
}
_CSV_ENTITY = ("entity", "host", "hostname", "node", "device", "server", "instance", "src_addr", "src_ip")
_CSV_LABEL = ("label", "Label", "class", "is_anomaly", "anomaly")
_CSV_LEVEL = ("level", "severity")
_CSV_MESSAGE = ("message", "msg")
_TS_NAME_HINT = re.compile(r"(?i)^(ts|@?timestamp|time|date|datetime|event_?time|time_?stamp)$")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _split_csv(text: str, delimiter: str) -> list[str]:
    if '"' not in text:
        return text.split(delimiter)
    try:
        return next(csv.reader((text,), delimiter=delimiter))
    except csv.Error as exc:
        raise ParseError(f"malformed CSV line: {exc}") from None


def _split_sample(text: str, delimiter: str) -> list[str]:
    """:func:`_split_csv` for detection: a malformed sample line counts as one column."""
    try:
        return _split_csv(text, delimiter)
    except ParseError:
        return [text]


def _sniff_delimiter(lines: Sequence[str]) -> str:
    """The candidate splitting most sample lines into the same number (> 1) of columns.

    Ties go to more columns; a few ragged lines (which will be quarantined) do not defeat it.
    """
    best, best_score = ",", (0, 0)
    for cand in (",", "\t", ";", "|"):
        counts = Counter(len(_split_sample(line, cand)) for line in lines if cand in line)
        if not counts:
            continue
        width, freq = counts.most_common(1)[0]
        if width > 1 and (freq, width) > best_score:
            best, best_score = cand, (freq, width)
    return best


def _looks_like_header(cells: Sequence[str], next_cells: Sequence[str] | None) -> bool:
    if any(_NUMBER.fullmatch(c.strip()) for c in cells):
        return False
    if any(_TS_NAME_HINT.match(c.strip()) for c in cells):
        return True
    return next_cells is not None and any(_NUMBER.fullmatch(c.strip()) for c in next_cells)


class CsvParser(LineParser):
    """CSV tables: metric time series with a header (``timestamp,entity,cpu,...``) or headerless
    rows with ``FormatOptions.columns`` (e.g. :data:`NSL_KDD_COLUMNS`).

    Every column except time, entity and label goes to attributes as text; known names
    (:data:`_CSV_KNOWN`: bytes, packets, ports, duration, proto, flag...) also fill their typed
    columns, so a non-integer ``src_bytes`` quarantines the row. Tables without a time column
    (NSL-KDD) need ``FormatOptions.synthetic_time_start``: row ``n`` (physical line number) then
    gets ``start + n * step`` seconds, a deterministic, ordered but artificial time; without it
    every row is quarantined with a reason saying so. One record per physical line: a quoted
    field spanning lines is not joined.
    """

    format = "csv"

    def __init__(self, opts: FormatOptions, clock: _Clock, sample: Sequence[str], path_name: str) -> None:
        self.opts = opts
        self.clock = clock
        if opts.delimiter:
            self.delimiter = opts.delimiter
        elif path_name.lower().endswith((".tsv", ".tsv.gz", ".tab")):
            self.delimiter = "\t"
        else:
            self.delimiter = _sniff_delimiter(sample[:20] or [""])
        first = _split_sample(sample[0], self.delimiter) if sample else []
        second = _split_sample(sample[1], self.delimiter) if len(sample) > 1 else None
        if opts.has_header is not None:
            self.header_pending = opts.has_header
        elif opts.columns:
            self.header_pending = [c.strip() for c in first] == list(opts.columns)
        else:
            self.header_pending = _looks_like_header(first, second)
        self.time_format = TimeFormat.compile(opts.timestamp_format) if opts.timestamp_format else None
        self.columns: list[str] = []
        if opts.columns:
            self._set_columns(list(opts.columns))
        elif not self.header_pending:
            self._set_columns([f"c{i}" for i in range(len(first))])

    def _set_columns(self, columns: list[str]) -> None:
        self.columns = columns
        opts = self.opts
        lower = {c.lower(): i for i, c in enumerate(columns)}
        index = {c: i for i, c in enumerate(columns)}

        def find(explicit: str | None, candidates: Sequence[str], what: str) -> int | None:
            if explicit:
                if explicit not in index:
                    raise ConfigError(f"{what} {explicit!r} is not a column; valid: {columns}")
                return index[explicit]
            return next((lower[c.lower()] for c in candidates if c.lower() in lower), None)

        self.no_time_reason: str | None = None
        self.ts_idx: tuple[int, ...] = ()
        if opts.timestamp_fields:
            missing = [f for f in opts.timestamp_fields if f not in index]
            if missing:
                raise ConfigError(f"timestamp_fields {missing} are not columns; valid: {columns}")
            self.ts_idx = tuple(index[f] for f in opts.timestamp_fields)
        else:
            found = find(None, TIMESTAMP_FIELDS, "timestamp field")
            self.ts_idx = () if found is None else (found,)
        if not self.ts_idx and opts.synthetic_start is None:
            self.no_time_reason = (
                "csv table has no time column (set FormatOptions.timestamp_fields, or synthetic_time_start "
                "for tables without time)"
            )
        self.entity_idx = find(opts.entity_field, _CSV_ENTITY, "entity_field")
        self.label_idx = find(opts.label_field, _CSV_LABEL, "label_field")
        self.level_idx = find(opts.level_field, _CSV_LEVEL, "level_field")
        self.message_idx = find(opts.message_field, _CSV_MESSAGE, "message_field")
        skip = {*self.ts_idx, self.entity_idx, self.label_idx, self.level_idx, self.message_idx}
        self.known = tuple(
            (i, name, _CSV_KNOWN[name.lower()][0], _CONVERTERS[_CSV_KNOWN[name.lower()][1]])
            for i, name in enumerate(columns)
            if name.lower() in _CSV_KNOWN
        )
        self.attr_idx = tuple((i, name) for i, name in enumerate(columns) if i not in skip)

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any] | None:
        cells = _split_csv(text, self.delimiter)
        if self.header_pending:
            self.header_pending = False
            if not self.columns:
                self._set_columns([c.strip() for c in cells])
            return None
        if len(cells) != len(self.columns):
            raise ParseError(f"csv row has {len(cells)} columns, expected {len(self.columns)}")
        if self.no_time_reason:
            raise ParseError(self.no_time_reason)
        opts = self.opts
        if self.ts_idx:
            raw = cells[self.ts_idx[0]] if len(self.ts_idx) == 1 else " ".join(cells[i] for i in self.ts_idx)
            ts = (
                self.time_format.parse(raw, self.clock)
                if self.time_format
                else parse_timestamp(raw, self.clock.tz)
            )
        else:
            assert opts.synthetic_start is not None
            ts = opts.synthetic_start + dt.timedelta(seconds=line_no * opts.synthetic_time_step_seconds)
            if ts >= _MAX_TS:
                raise ParseError(f"synthetic timestamp out of range: {ts.isoformat()}")
        event: dict[str, Any] = {"ts": ts, "format": "csv"}
        for i, name, column, conv in self.known:
            event[column] = conv(name, cells[i].strip())
        for column in _COUNT_COLUMNS:
            value = event.get(column)
            if value is not None and value < 0:
                raise ParseError(f"field {column} is negative: {value}")
        entity = cells[self.entity_idx].strip() if self.entity_idx is not None else ""
        event["entity"] = entity or opts.default_entity
        label = cells[self.label_idx].strip() if self.label_idx is not None else ""
        event["label"] = label or None
        level = normalize_level(cells[self.level_idx]) if self.level_idx is not None else None
        event["level"] = level or "info"
        if self.message_idx is not None:
            event["message"] = cells[self.message_idx]
        else:
            event["message"] = " ".join(
                str(p) for p in (event.get("proto"), event.get("component"), event.get("status")) if p
            )
        event["attributes"] = {name: cells[i] for i, name in self.attr_idx if cells[i] != ""}
        return event


# ------------------------------------------------------------------------------ detection


class Detection(NamedTuple):
    """What :func:`detect` found: the format and, for ``loghub``, the best built-in pattern."""

    format: str
    pattern: str | None = None


def _majority(lines: Sequence[str], test: Callable[[str], Any]) -> bool:
    return bool(lines) and sum(1 for line in lines if test(line)) * 2 > len(lines)


def _name_hint(path: Path) -> str | None:
    """A Loghub system named by the file (``HDFS_2k.log``, ``openssh.log.gz``), if any."""
    stem = path.name.lower()
    for name in sorted(LOGHUB_PATTERNS, key=len, reverse=True):
        if stem.startswith(name.lower()):
            return name
    return None


def best_loghub_pattern(lines: Sequence[str], prefer: str | None = None) -> tuple[str | None, int]:
    """The built-in pattern matching most ``lines`` (ties -> more specific), and its match count.

    A line counts only if its time fields also parse, so a pattern that happens to fit the
    shape of a foreign line does not win.
    """
    best: tuple[int, int, int] = (0, 0, 0)
    best_name: str | None = None
    for name, spec in LOGHUB_PATTERNS.items():
        compiled = compile_pattern(spec.pattern)
        fmt = TimeFormat.compile(spec.time_format)
        clock = _Clock(None, 2000)
        hits = 0
        for line in lines:
            match = compiled.regex.match(line)
            if match is None:
                continue
            try:
                fmt.parse(" ".join(match[f] for f in spec.time_fields), clock)
            except ParseError:
                continue
            hits += 1
        score = (hits, 1 if name == prefer else 0, compiled.specificity)
        if hits and score > best:
            best, best_name = score, name
    return best_name, best[0]


def detect(
    path: str | Path, options: FormatOptions | None = None, sampled: tuple[list[str], int] | None = None
) -> Detection:
    """Detect the format of ``path`` from its first lines and its name; ParseError if none fits.

    Order matters where formats overlap: Zeek headers, JSON objects, a Loghub system named by the
    file, syslog with PRI, access logs, RFC 3164 syslog without PRI, CSV (consistent columns or a
    time-named header), then the built-in Loghub patterns. ``options.format`` skips detection
    (for ``loghub`` without ``options.pattern`` the pattern is still detected).
    """
    opts = options or _default_options()
    path = Path(path)
    lines, bad = sampled if sampled is not None else _sample(path, opts.sample_lines)
    if opts.format is not None and opts.format != "loghub":
        return Detection(opts.format)
    if opts.format == "loghub":
        if opts.pattern:
            return Detection("loghub", opts.pattern)
        name, hits = best_loghub_pattern(lines, _name_hint(path))
        if name is None:
            raise ParseError(f"no built-in loghub pattern matches (known: {', '.join(LOGHUB_PATTERNS)})")
        return Detection("loghub", name)
    if not lines:
        if bad:
            raise ParseError("binary or non-UTF-8 file: no readable text line to detect its format")
        raise ParseError("empty file: nothing to detect a format from")
    first = lines[0]
    if first.startswith("#separator") or first.startswith("#fields"):
        return Detection("zeek")
    if _majority(lines, lambda s: s.lstrip().startswith("{")):
        return Detection("json")
    hint = _name_hint(path)
    if opts.pattern and opts.pattern not in LOGHUB_PATTERNS:
        if _majority(lines, compile_pattern(opts.pattern).regex.match):
            return Detection("loghub", opts.pattern)
    if hint is not None:
        name, hits = best_loghub_pattern(lines, hint)
        # The file's name is evidence too: half the sample suffices.
        if name is not None and hits * 2 >= len(lines):
            return Detection("loghub", name)
    if _majority(
        lines, lambda s: s.startswith("<") and (_SYSLOG_HEAD.match(s) or _SYSLOG_3164_HEAD.match(s))
    ):
        return Detection("syslog")
    if _majority(lines, _ACCESS_HEAD.match):
        return Detection("access")
    if _majority(lines, _SYSLOG_3164_HEAD.match):
        return Detection("syslog")
    # Loghub before CSV: HealthApp's "|"-separated lines look like a table but are a log format.
    name, hits = best_loghub_pattern(lines)
    if name is not None and hits * 2 > len(lines):
        return Detection("loghub", name)
    if _looks_like_csv(path, lines, opts):
        return Detection("csv")
    if bad > len(lines):
        raise ParseError("binary or non-UTF-8 file: most sampled lines are not text")
    raise ParseError(f"unrecognised log format (supported: {', '.join(FORMATS)})")


def _looks_like_csv(path: Path, lines: Sequence[str], opts: FormatOptions) -> bool:
    """Most sample lines split into the same number of columns (all of them, and at least three,
    unless the name says CSV or the header names a time column)."""
    sample = lines[:20]
    delimiter = opts.delimiter or _sniff_delimiter(sample)
    counts = Counter(len(_split_sample(line, delimiter)) for line in sample)
    width, freq = counts.most_common(1)[0]
    if width < 2 or freq * 2 <= len(sample):
        return False
    if opts.columns:
        return width == len(opts.columns)
    if path.name.lower().endswith((".csv", ".csv.gz", ".csv.bz2", ".tsv", ".tsv.gz", ".tsv.bz2")):
        return True
    if any(_TS_NAME_HINT.match(c.strip()) for c in _split_sample(sample[0], delimiter)):
        return True
    return freq == len(sample) and width >= 3


def detect_format(path: str | Path, sample_lines: int = 50) -> str:
    """The format name of ``path`` (see :func:`detect`; use it to also get the Loghub pattern)."""
    return detect(path, FormatOptions(sample_lines=sample_lines)).format


# ------------------------------------------------------------------------------ files


def _file_year(path: Path) -> int:
    try:
        return dt.datetime.fromtimestamp(os.stat(path).st_mtime, _UTC).year
    except (OSError, ValueError, OverflowError):
        return dt.datetime.now(_UTC).year


def make_parser(
    path: str | Path, options: FormatOptions | None = None, detection: Detection | None = None
) -> LineParser:
    """A fresh parser for ``path`` (detecting its format unless ``detection`` is given).

    Raises ParseError when the format cannot be detected, ConfigError when options do not fit.
    """
    opts = options or _default_options()
    path = Path(path)
    sample, bad = _sample(path, opts.sample_lines)
    if detection is None:
        detection = detect(path, opts, (sample, bad))
    clock = _Clock(opts.tz, opts.year or _file_year(path))
    fmt = detection.format
    if fmt == "json":
        return JsonParser(opts, clock)
    if fmt == "zeek":
        return ZeekParser(opts)
    if fmt == "syslog":
        return SyslogParser(opts, clock)
    if fmt == "access":
        return AccessParser(opts)
    if fmt == "loghub":
        pattern = detection.pattern or opts.pattern
        if pattern is None:
            pattern, _ = best_loghub_pattern(sample, _name_hint(path))
            if pattern is None:
                raise ParseError(f"no built-in loghub pattern matches (known: {', '.join(LOGHUB_PATTERNS)})")
        return LoghubParser(opts, clock, pattern)
    if fmt == "csv":
        return CsvParser(opts, clock, sample, path.name)
    raise ConfigError(f"unknown log format {fmt!r}; valid: {', '.join(FORMATS)}")


def _original_length(text: str, problem: str | None) -> int:
    """Bytes of the original line; for an over-long line ``text`` is only its head."""
    if problem is not None and problem.startswith("line too long ("):
        return int(problem[len("line too long (") :].split(" ", 1)[0])
    return len(text.encode("utf-8", errors="replace"))


@dataclass(slots=True)
class ParsedRecord:
    """One line's outcome: an event, or a quarantine record with the reason."""

    kind: Literal["event", "quarantine"]
    line_no: int
    data: dict[str, Any]


def parse_file(
    path: str | Path,
    fmt: str | None = None,
    max_raw_chars: int = 2048,
    *,
    options: FormatOptions | None = None,
) -> Iterator[ParsedRecord]:
    """Parse every line of ``path``; exactly one record per physical line (see the module docstring).

    ``fmt`` (or ``options.format``) forces a format, else it is detected per file. A file whose
    format cannot be detected yields every line as quarantine with the detection's reason. An
    unknown ``fmt`` or options that contradict the file's columns raise ConfigError (a setting
    to fix, not a property of the data).
    """
    opts = options or _default_options()
    if fmt is not None and fmt != opts.format:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown log format {fmt!r}; valid: {', '.join(FORMATS)}")
        opts = dataclasses.replace(opts, format=fmt)
    reason_all: str | None = None
    parser: LineParser | None = None
    try:
        parser = make_parser(path, opts)
    except ParseError as exc:
        reason_all = str(exc)
    fmt_name = parser.format if parser is not None else opts.format
    parse = parser.parse if parser is not None else None
    for line_no, text, problem in open_lines(path):
        reason = problem or reason_all
        if reason is None:
            if not text or text.isspace():
                reason = "empty line"
            else:
                assert parse is not None
                try:
                    event = parse(text, line_no)
                except ParseError as exc:
                    reason = str(exc)
                except Exception as exc:  # a parser bug must lose neither the line nor the file
                    log.warning("%s line %d: parser error %r", path, line_no, exc)
                    reason = f"parser error: {type(exc).__name__}: {str(exc)[:200]}"
                else:
                    if event is not None:
                        yield ParsedRecord("event", line_no, event)
                        continue
                    reason = HEADER_REASON
        yield ParsedRecord(
            "quarantine",
            line_no,
            {
                "format": fmt_name,
                "reason": reason,
                "raw": text[:max_raw_chars],
                "raw_length": _original_length(text, problem),
            },
        )
