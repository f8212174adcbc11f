"""``syslog``: RFC 5424, and RFC 3164 with or without ``<PRI>`` (``/var/log/messages`` style)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loganomaly.errors import ParseError
from loganomaly.ingest.formats.base import (
    LIKELY,
    POSSIBLE,
    EventColumns,
    FormatOptions,
    LineParser,
    LogFormat,
    _file_clock,
    _majority,
)
from loganomaly.ingest.formats.json_columns import COLUMN_TYPES, attributes_map, complete, constant, true_rows
from loganomaly.ingest.formats.timestamps import _EPOCH, _MONTHS, _Clock, parse_timestamp, utc_micros

_SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
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

    def parse_block(self, texts: Sequence[str]) -> EventColumns | None:
        """RFC 5424 lines (:func:`_rfc5424_groups`) and RFC 3164 lines (:func:`_rfc3164_group`)
        column by column; every other line is left to :meth:`parse`."""
        arr = pa.array(texts, pa.string())
        groups = _rfc5424_groups(arr, self.clock.tz is None)
        if self.clock.tz is None:
            old = _rfc3164_group(self, arr, texts)
            if old is not None:
                groups.append(old)
        if sum(len(rows) for rows, _ in groups) < _MIN_ROWS:
            return None
        positions = np.concatenate([rows for rows, _ in groups])
        arrays = {name: pa.concat_arrays([out[name] for _, out in groups]) for name in COLUMN_TYPES}
        return EventColumns(positions.tolist(), arrays)

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


#: Fewer RFC 5424 lines than this in a block are left to the per-line parser (fixed costs).
_MIN_ROWS = 8
#: RFC 5424 lines without structured data that the block path reads by splitting at spaces:
#: printable ASCII, the six head fields non-empty and free of blanks, ``-``, then the message.
#: On such lines :data:`_RFC5424` can only match one way (its fields are ``\S+`` between single
#: spaces), and RE2's classes match what Python's do (on other characters Python's ``\d``,
#: ``\S`` are Unicode-aware and RE2's are not).
_PLAIN_NO_SD = r"^<[0-9]{1,3}>[0-9]{1,2}(?: [!-~]+){5} -(?: [\t -~]*)?$"
#: Lines with structured data: the same head, ``[``, printable ASCII and tabs after it.
_PLAIN_SD = r"^<[0-9]{1,3}>[0-9]{1,2}(?: [!-~]+){5} \[[\t -~]*$"
#: :data:`_RFC5424` for RE2 (Arrow's ``extract_regex``), for the structured-data lines: RE2 is
#: leftmost-first like Python's engine, so the groups are the same; ``(?s)`` is ``re.DOTALL``.
_RFC5424_RE2 = (
    r"(?s)^<(?P<pri>[0-9]{1,3})>(?P<version>[0-9]{1,2}) (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) "
    r"(?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|(?:\[.*?\])+)(?P<rest>(?: .*)?)$"
)
#: RFC 5424 times the block path converts (what ``datetime.fromisoformat`` reads the same way):
#: date, ``T``, time, a 1-6 digit fraction, then ``Z``, ``+hh:mm``/``-hh:mm`` or no zone.
_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?$"
_TAIL = r"^(?:\.(?P<f>[0-9]{1,6}))?(?P<z>.*)$"
_ATTRIBUTE_KEYS = ("facility", "procid", "msgid", "structured_data")
_FIELDS = ("pri", "ts", "host", "app", "procid", "msgid", "sd", "msg")


def _rfc5424_groups(arr: pa.Array, zone_less_is_utc: bool) -> list[tuple[np.ndarray, dict[str, pa.Array]]]:
    """The events of the RFC 5424 lines of a block whose rows :meth:`SyslogParser.parse` gives
    exactly, in Arrow, as (positions, columns) groups; every other line (RFC 3164, a line :data:`_RFC5424` refuses, PRI over 191,
    a time not in :data:`_TIME` or out of range, non-ASCII text) is left to the per-line parser,
    which gives its row or its reason.

    Why: per line, the regex match, the time parse, the event dict and its conversion back to
    Arrow columns cost about 20 us in Python; here each is a pass of C++ over the block. Lines
    without structured data (most) are cut at their first seven spaces; lines with it go through
    the regex, whose lazy brackets cost several times more.
    ``zone_less_is_utc``: the file has no ``timezone`` option, so a time without a zone is UTC
    (with one, such lines stay per line).
    """
    groups: list[tuple[np.ndarray, dict[str, pa.Array]]] = []
    no_sd = true_rows(pc.match_substring_regex(arr, _PLAIN_NO_SD))
    if len(no_sd):
        parts = pc.split_pattern(arr.take(pa.array(no_sd)), " ", max_splits=6)
        fields = {name: pc.list_element(parts, i) for i, name in enumerate(_FIELDS[1:6], start=1)}
        head = pc.list_element(pc.split_pattern(pc.list_element(parts, 0), ">", max_splits=1), 0)
        fields["pri"] = pc.utf8_slice_codeunits(head, 1)  # "<pri" of "<pri>version"
        fields["sd"] = constant("-", len(no_sd))
        fields["msg"] = pc.utf8_slice_codeunits(pc.list_element(parts, 6), 2)  # "- msg", "- " or "-"
        groups.append((no_sd, fields))
    with_sd = true_rows(pc.match_substring_regex(arr, _PLAIN_SD))
    if len(with_sd):
        matched = pc.extract_regex(arr.take(pa.array(with_sd)), _RFC5424_RE2)
        found = true_rows(pc.is_valid(matched))
        matched = matched.take(pa.array(found))
        fields = {name: pc.struct_field(matched, [matched.type.get_field_index(name)]) for name in _FIELDS[:7]}
        fields["msg"] = pc.utf8_slice_codeunits(pc.struct_field(matched, [matched.type.get_field_index("rest")]), 1)
        groups.append((with_sd[found], fields))
    return [b for rows, fields in groups if (b := _events(rows, fields, zone_less_is_utc)) is not None]


#: :data:`_RFC3164` then :data:`_TAG` for RE2, on printable-ASCII lines (see :data:`_PLAIN_NO_SD`).
_RFC3164_RE2 = (
    r"(?s)^(?:<(?P<pri>[0-9]{1,3})>)?(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>[0-9]{1,2}) "
    r"(?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})(?:\.(?P<frac>[0-9]{1,6}))? (?P<host>\S+)(?P<rest>(?: .*)?)$"
)
_TAG_RE2 = r"(?s)^(?P<tag>[^\s:\[]+)(?:\[(?P<pid>[^\]]*)\])?: ?(?P<msg>.*)$"


def _rfc3164_group(
    parser: SyslogParser, arr: pa.Array, texts: Sequence[str]
) -> tuple[np.ndarray, dict[str, pa.Array]] | None:
    """The events of the block's RFC 3164 lines, in Arrow, when the block's year sequence can be
    followed exactly; else None (all of them per line).

    The year of a 3164 line is the parser's clock's (``_Clock.year_for``: it moves on when the
    month steps back by more than six), advanced by every line that reaches it, in file order.
    So the lines are taken all or none: every line that would call ``year_for`` (it matches
    :data:`_RFC3164`, its PRI is at most 191, its month name is known) must be taken, with a
    possible date; then the months' steps give each line's year at once and the clock (and the
    parser's last head) are left as the per-line parse would leave them. A block where such a
    line is not printable ASCII, or holds an impossible date (the reference calls ``year_for``
    before refusing it), is parsed line by line. Only without a ``timezone`` option (UTC).
    """
    head5424 = np.asarray(pc.fill_null(pc.match_substring_regex(arr, r"^<[0-9]{1,3}>[0-9]{1,2} "), False)
                          .to_numpy(zero_copy_only=False), dtype=bool)  # fmt: skip
    others = np.flatnonzero(~head5424)  # RFC 5424 lines never reach the clock
    if len(others) == 0:
        return None
    plain = np.asarray(pc.fill_null(pc.match_substring_regex(arr.take(pa.array(others)), r"^[\t -~]*$"), False)
                       .to_numpy(zero_copy_only=False), dtype=bool)  # fmt: skip
    # A line the block cannot read that the reference would still date (non-ASCII text): all per line.
    for i in others[~plain]:
        text = texts[int(i)]
        if text.startswith("<") and _SYSLOG_HEAD.match(text):
            continue  # Python's digits: the RFC 5424 path after all
        match = _RFC3164.match(text)
        if match is not None and (match["pri"] is None or int(match["pri"]) <= 191) and match["mon"].lower() in _MONTHS:
            return None
    candidates = others[plain]
    if len(candidates) == 0:
        return None
    fields = pc.extract_regex(arr.take(pa.array(candidates)), _RFC3164_RE2)
    found = true_rows(pc.is_valid(fields))
    rows = candidates[found]
    if len(rows) == 0:
        return None
    fields = fields.take(pa.array(found))
    part = {name: pc.struct_field(fields, [i]) for i, name in enumerate(fields.type.names)}
    pri_text = part["pri"]
    has_pri = np.asarray(pc.not_equal(pri_text, "").to_numpy(zero_copy_only=False), dtype=bool)
    pri = np.asarray(pc.cast(pc.if_else(pa.array(has_pri), pri_text, "0"), pa.int64()).to_numpy(zero_copy_only=False))
    names = pc.dictionary_encode(pc.utf8_lower(part["mon"]))
    month = np.asarray([_MONTHS.get(v, 0) for v in names.dictionary.to_pylist()],
                       dtype=np.int64)[np.asarray(names.indices.to_numpy(zero_copy_only=False))]  # fmt: skip
    dated = (pri <= 191) & (month > 0)  # the lines that reach year_for; the others are per line
    rows, month, pri, has_pri = rows[dated], month[dated], pri[dated], has_pri[dated]
    if len(rows) == 0:
        return None
    keep = pa.array(dated)
    part = {name: values.filter(keep) for name, values in part.items()}
    m = len(rows)

    def ints(values: pa.Array) -> np.ndarray:
        return np.asarray(pc.cast(pc.if_else(pc.equal(values, ""), "0", values), pa.int64()).to_numpy(zero_copy_only=False))

    clock = parser.clock
    first = tuple(part[name][0].as_py() for name in ("mon", "day", "h", "m", "s", "frac"))
    if first[:5] + (first[5] or None,) == parser._last_head and clock._last_month != month[0]:
        # The reference reuses the last head's time without moving the clock, which a line
        # that failed after moving it (an impossible date) left at another month: per line.
        return None
    year = clock.years_for(month)
    micros, impossible = utc_micros(
        year, month, ints(part["day"]), ints(part["h"]), ints(part["m"]), ints(part["s"]),
        ints(pc.utf8_rpad(part["frac"], 6, "0")),
    )  # fmt: skip
    if impossible.any():
        return None
    # The state the per-line parse leaves: the clock after the last dated line, its head and time.
    clock.advance(int(year[-1]), int(month[-1]))
    last = {name: part[name][m - 1].as_py() for name in ("mon", "day", "h", "m", "s", "frac")}
    parser._last_head = (last["mon"], last["day"], last["h"], last["m"], last["s"], last["frac"] or None)
    parser._last_ts = _EPOCH + dt.timedelta(microseconds=int(micros[-1]))

    tag = pc.extract_regex(pc.utf8_slice_codeunits(part["rest"], 1), _TAG_RE2)
    tagged = pc.is_valid(tag)
    rest = pc.utf8_slice_codeunits(part["rest"], 1)
    tag_name = pc.struct_field(tag, [0])
    pid = pc.struct_field(tag, [1])
    host = part["host"]
    facility = pc.if_else(pa.array(has_pri), pc.cast(pa.array(pri // 8), pa.string()), "")
    procid = pc.if_else(tagged, pid, "")
    out = {
        "ts": pa.array(micros, pa.int64()).view(pa.timestamp("us", "UTC")),
        "format": constant("syslog", m),
        "entity": pc.if_else(pc.equal(host, "-"), pa.scalar(parser.opts.default_entity, pa.string()), host),
        "component": pc.if_else(tagged, tag_name, pa.scalar(None, pa.string())),
        "level": pc.if_else(pa.array(has_pri), pa.array(_SEVERITIES, pa.string()).take(pa.array(pri % 8)), "info"),
        "message": pc.if_else(tagged, pc.struct_field(tag, [2]), rest),
        "attributes": attributes_map(("facility", "procid"), [facility, procid], m, absent=""),
    }
    return complete(rows, out)


def _events(
    rows: np.ndarray, part: dict[str, pa.Array], zone_less_is_utc: bool
) -> tuple[np.ndarray, dict[str, pa.Array]] | None:
    """The event columns of one group's fields, less the rows the reference parses otherwise."""
    m = len(rows)
    bad = np.zeros(m, dtype=bool)

    def mark(mask: pa.Array) -> None:
        nonlocal bad
        bad |= np.asarray(pc.fill_null(mask, True).to_numpy(zero_copy_only=False), dtype=bool)

    pri = pc.cast(part["pri"], pa.int64())
    mark(pc.greater(pri, 191))

    # Time: what parse_timestamp's fromisoformat reads, the date and time checked in numbers.
    raw_ts = part["ts"]
    plain_time = pc.match_substring_regex(raw_ts, _TIME)
    tail = pc.extract_regex(pc.utf8_slice_codeunits(raw_ts, 19), _TAIL)
    zone = pc.struct_field(tail, [1])
    if not zone_less_is_utc:
        plain_time = pc.and_(plain_time, pc.not_equal(zone, ""))
    mark(pc.invert(plain_time))

    def number(start: int, stop: int) -> np.ndarray:
        digits = pc.if_else(plain_time, pc.utf8_slice_codeunits(raw_ts, start, stop), "0")
        return np.asarray(pc.cast(pc.fill_null(digits, "0"), pa.int64()).to_numpy(zero_copy_only=False))

    fraction = pc.struct_field(tail, [0])
    micros_part = np.asarray(
        pc.cast(pc.fill_null(pc.if_else(pc.equal(fraction, ""), "0", pc.utf8_rpad(fraction, 6, "0")), "0"),
                pa.int64()).to_numpy(zero_copy_only=False)
    )  # fmt: skip
    micros, impossible = utc_micros(
        number(0, 4), number(5, 7), number(8, 10), number(11, 13), number(14, 16), number(17, 19), micros_part,
        _offsets(zone),
    )  # fmt: skip
    bad |= impossible

    def unless_nil(values: pa.Array) -> pa.Array:
        return pc.if_else(pc.equal(values, "-"), None, values)

    out: dict[str, pa.Array] = {
        "ts": pa.array(np.where(bad, 0, micros), pa.int64()).view(pa.timestamp("us", "UTC")),
        "format": constant("syslog", m),
        "entity": unless_nil(part["host"]),
        "component": unless_nil(part["app"]),
        "level": pa.array(_SEVERITIES, pa.string()).take(pc.bit_wise_and(pri, 7)),
        "message": part["msg"],
        "attributes": attributes_map(
            _ATTRIBUTE_KEYS,
            [pc.cast(pc.divide(pri, 8), pa.string()), part["procid"], part["msgid"], part["sd"]],
            m,
            absent="-",
        ),
    }
    return complete(rows, out, bad)


def _offsets(zone: pa.Array) -> np.ndarray:
    """Seconds east of UTC of ``+hh:mm``/``-hh:mm`` zone texts; 0 for ``Z`` and none."""
    has = pc.greater_equal(pc.utf8_length(zone), 6)
    hours = pc.cast(pc.if_else(has, pc.utf8_slice_codeunits(zone, 1, 3), "0"), pa.int64())
    minutes = pc.cast(pc.if_else(has, pc.utf8_slice_codeunits(zone, 4, 6), "0"), pa.int64())
    total = np.asarray(pc.add(pc.multiply(hours, 3600), pc.multiply(minutes, 60)).to_numpy(zero_copy_only=False))
    west = np.asarray(pc.starts_with(zone, "-").to_numpy(zero_copy_only=False), dtype=bool)
    return np.where(west, -total, total).astype(np.int64)


class SyslogFormat(LogFormat):
    """Lines with a ``<PRI>`` head are distinctive; RFC 3164 without it is a weaker sign (after access logs)."""

    name = "syslog"

    def detect(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> float:
        if _majority(
            lines, lambda s: s.startswith("<") and (_SYSLOG_HEAD.match(s) or _SYSLOG_3164_HEAD.match(s))
        ):
            return LIKELY
        return POSSIBLE if _majority(lines, _SYSLOG_3164_HEAD.match) else 0.0

    def make_parser(
        self, path: Path, opts: FormatOptions, sample: Sequence[str], variant: str | None = None
    ) -> LineParser:
        return SyslogParser(opts, _file_clock(path, opts))


FORMAT = SyslogFormat()
