"""Time parsing shared by the log formats: epoch numbers, ISO-8601 and a fast strptime subset.

Every result is an aware UTC datetime in 1970..2099. Speed matters (tens of thousands of lines per
second per core end to end), hence :class:`TimeFormat`: a small compiled subset of strptime,
several times faster than ``datetime.strptime``, with compiled formats cached.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from typing import Any

import numpy as np
import pyarrow as pa

from loganomaly.errors import ConfigError, ParseError

_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_MIN_TS = _EPOCH
_MAX_TS = dt.datetime(2100, 1, 1, tzinfo=_UTC)
_MAX_EPOCH_S = int(_MAX_TS.timestamp())
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

    def years_for(self, months: np.ndarray) -> np.ndarray:
        """:meth:`year_for` of each month in turn, as that many calls would give, without moving
        the clock (the block parsers check the dates first, then :meth:`advance` it)."""
        previous = np.concatenate(([self._last_month], months[:-1]))
        return self.year + np.cumsum(months < previous - 6)

    def advance(self, year: int, month: int) -> None:
        """The state :meth:`year_for` leaves after its last call gave ``year`` for ``month``."""
        self.year, self._last_month = year, month

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


#: The magnitude rule of epoch numbers: (lowest value, unit name, units per second), largest first.
#: A value is read in the first unit whose lower bound it reaches, then the result must fall in the
#: accepted range [1970-01-01, 2100-01-01): so 1e11 - 1 is seconds (year 5138: refused), 1e11 is
#: ms (1973-03-03), 1e14 us and 1e17 ns (both 1973-03-03 again), and nothing is ever re-read in
#: another unit to make it fit.
EPOCH_UNITS: tuple[tuple[int, str, int], ...] = (
    (10**17, "ns", 10**9),
    (10**14, "us", 10**6),
    (10**11, "ms", 10**3),
    (0, "s", 1),
)


def _epoch_unit(value: float) -> tuple[str, int]:
    for lowest, name, per_second in EPOCH_UNITS:
        if value >= lowest:
            return name, per_second
    raise AssertionError("negative values are refused before")  # pragma: no cover


def _out_of_range(value: object, unit: str) -> ParseError:
    return ParseError(
        f"timestamp out of range: {str(value)[:40]} read as epoch {unit} (by magnitude) is not in "
        f"{_MIN_TS.year}..{_MAX_TS.year - 1}"
    )


def parse_epoch(value: int | float | str) -> dt.datetime:
    """Epoch seconds, ms, us or ns (told apart by magnitude, :data:`EPOCH_UNITS`) -> aware UTC datetime.

    Integers (and digit strings) are converted exactly. The result must fall in 1970..2099 (a
    ParseError otherwise, which quarantines the line with its reason): a 12-digit number is never
    taken as seconds of a far future, nor a 20-digit one as a date at all. Negative values are
    refused: no log we read predates 1970, so a negative epoch is corruption, not history.
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
        unit, per_second = _epoch_unit(value)
        seconds, fraction = divmod(value, per_second)
        if seconds >= _MAX_EPOCH_S:
            raise _out_of_range(value, unit)
        return _EPOCH + dt.timedelta(seconds=seconds, microseconds=fraction * 1_000_000 // per_second)
    if not isinstance(value, float) or not math.isfinite(value):
        raise ParseError(f"timestamp is not a time: {value!r}")
    if value < 0:
        raise ParseError(f"negative epoch timestamp: {value}")
    unit, per_second = _epoch_unit(value)
    seconds_f = value / per_second
    if seconds_f >= _MAX_EPOCH_S:
        raise _out_of_range(value, unit)
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


def utc_micros(
    year: np.ndarray, month: np.ndarray, day: np.ndarray, hour: np.ndarray, minute: np.ndarray,
    second: np.ndarray, micro: np.ndarray, offset: np.ndarray | int = 0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Date and time parts (``offset`` seconds east of UTC) -> microseconds since the epoch, and
    which rows ``datetime`` would refuse (Feb 30, hour 24, second 60) or fall outside 1970-2099,
    as the per-line parsers refuse them. The block parsers' one calendar."""
    impossible = (month < 1) | (month > 12) | (day < 1) | (day > 31) | (hour > 23) | (minute > 59) | (second > 59)
    months = ((np.clip(year, 1970, 2200) - 1970) * 12 + np.clip(month, 1, 12) - 1).astype("datetime64[M]")
    days = months.astype("datetime64[D]") + (np.clip(day, 1, 31) - 1)
    impossible |= days.astype("datetime64[M]") != months  # a day past the month's end
    seconds = days.astype(np.int64) * 86400 + hour * 3600 + minute * 60 + second - offset
    micros = seconds * 1_000_000 + micro
    impossible |= (year < 1970) | (micros < 0) | (micros >= _MAX_EPOCH_S * 1_000_000)
    return micros, impossible


#: Positions of the digits, and of the separators, of ``YYYY-MM-DDTHH:MM:SS``.
_ISO_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_ISO_SEPARATORS = ((4, b"-"), (7, b"-"), (13, b":"), (16, b":"))
#: The longest text :func:`iso_utc_micros` reads: date, time, ``.`` and six digits, ``Z``.
_ISO_LONGEST = 27
_FRACTION_WEIGHTS = 10 ** np.arange(5, -1, -1, dtype=np.int64)


def iso_utc_micros(values: pa.Array, require_z: bool) -> tuple[np.ndarray, np.ndarray]:
    """Epoch microseconds of the cells of an Arrow string array that read
    ``YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}][Z]`` (ASCII digits, a real date and time in 1970-2099, a
    ``Z`` when ``require_z``), and which cells those are; the others get 0 and are left to
    :func:`parse_timestamp`, one by one.

    Why: a block parser used to check each cell with a regular expression, convert the date and
    time with Arrow's ``strptime`` and compare the parsed day and second with the text (``strptime``
    rolls Feb 30 over to Mar 1); those kernels cost about half of a CSV block's mapping. Here each
    cell's bytes are read once, as a matrix (one row a cell, zero-copy when all cells are equally
    long, as a column of times written by one program is), and checked and converted with numpy;
    the calendar is :func:`utc_micros`, the block parsers' one.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    if values.type != pa.string():
        values = values.cast(pa.string())
    _, offsets_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32, n + 1, values.offset * 4).astype(np.int64)
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    ok = (lengths >= 19) & (lengths <= _ISO_LONGEST)
    if values.null_count:
        ok &= np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if not ok.any():
        return np.zeros(n, np.int64), ok
    width = min(int(lengths.max()), _ISO_LONGEST)
    if bool((lengths == width).all()):
        mat = data[int(offsets[0]):int(offsets[-1])].reshape(n, width)
    else:  # a cell of 19 bytes or more exists, so the data buffer is not empty
        idx = np.minimum(starts[:, None] + np.arange(width)[None, :], data.size - 1)
        mat = np.where(np.arange(width)[None, :] < lengths[:, None], data[idx], 0).astype(np.uint8)
    digits = mat.astype(np.int16) - 48
    is_digit = (digits >= 0) & (digits <= 9)
    ok &= is_digit[:, _ISO_DIGITS].all(axis=1)
    for pos, char in _ISO_SEPARATORS:
        ok &= mat[:, pos] == char[0]
    ok &= (mat[:, 10] == ord("T")) | (mat[:, 10] == ord(" "))
    last = mat[np.arange(n), np.clip(lengths - 1, 0, width - 1)]
    has_z = (lengths >= 20) & (last == ord("Z"))
    if require_z:
        ok &= has_z
    # After the seconds: nothing, "Z", or "." with 1-6 digits and an optional "Z".
    fraction_digits = lengths - 20 - has_z
    has_fraction = lengths - has_z > 19
    micro = np.zeros(n, np.int64)
    if has_fraction.any():  # some cell is 20 bytes or more: the matrix has column 19
        ok &= ~has_fraction | ((mat[:, 19] == ord(".")) & (fraction_digits >= 1) & (fraction_digits <= 6))
        span = min(width - 20, 6)
        within = has_fraction[:, None] & (np.arange(span)[None, :] < fraction_digits[:, None])
        ok &= (~within | is_digit[:, 20:20 + span]).all(axis=1)
        micro = (np.where(within, digits[:, 20:20 + span], 0) * _FRACTION_WEIGHTS[:span]).sum(axis=1)
    d = np.where(ok[:, None], digits[:, :19], 0).astype(np.int64)
    micros, impossible = utc_micros(
        d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3], d[:, 5] * 10 + d[:, 6], d[:, 8] * 10 + d[:, 9],
        d[:, 11] * 10 + d[:, 12], d[:, 14] * 10 + d[:, 15], d[:, 17] * 10 + d[:, 18], micro,
    )  # fmt: skip
    ok &= ~impossible
    return np.where(ok, micros, 0), ok
