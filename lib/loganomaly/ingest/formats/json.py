"""``json``: JSON lines with nested, varying schemas; Zeek JSON logs of any type map to columns.

A Zeek JSON log says which log it is in ``_path`` only when a shipper adds it; Zeek's own JSON
writer (``LogAscii::use_json``) leaves it out and names the file instead (``weird.log``,
``ssl.2024-01-01-00-00-00.log.gz``). The file's name stands in for a missing ``_path``
(:func:`zeek_log_name`), so a plain ``weird.log`` still gives warnings and ``ssl.log`` its
component.

The module is named after its format; inside it, ``import json`` is still the standard library
(absolute imports): the reference decoder. Lines are first given to ``orjson`` (several times
faster), and any line it refuses or might read differently goes to the standard library, so every
row and every quarantine reason is the standard library's (see :func:`loads`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from loganomaly.errors import ParseError
from loganomaly.ingest.formats.base import (
    STRONG,
    TIMESTAMP_FIELDS,
    EventColumns,
    FormatOptions,
    LineParser,
    LogFormat,
    _file_clock,
    _majority,
)
from loganomaly.ingest.formats.json_columns import JsonBlockMapper
from loganomaly.ingest.formats.records import _RecordMapper
from loganomaly.ingest.formats.timestamps import TimeFormat, _Clock, parse_timestamp
from loganomaly.ingest.formats.values import _flatten

_fast_loads: Callable[[str], Any] | None
try:  # a dependency; an environment installed before it was added still parses, more slowly
    from orjson import loads as _orjson_loads

    _fast_loads = _orjson_loads
except ImportError:  # pragma: no cover - exercised only without orjson
    _fast_loads = None

#: orjson reads an integer literal past uint64 or below int64 as a float (the standard library
#: as an int): a decoded float this large may be such a literal, so its line is decoded again.
_INT64_SPAN = 2**63
#: Nesting deeper than this is decoded again: orjson nests up to 1024 deep, the standard library
#: only as deep as Python's recursion limit allows, and one must not accept what the other refuses.
_MAX_DEPTH = 100

#: Zeek's log streams (base and policy scripts, Zeek 6-7): a JSON file named after one of them
#: (the name up to its first dot), whose sampled records carry Zeek's ``ts``, is that log.
ZEEK_LOGS = frozenset({
    "analyzer", "broker", "capture_loss", "cluster", "config", "conn", "conn_long", "dce_rpc",
    "dhcp", "dnp3", "dns", "dpd", "files", "ftp", "http", "intel", "irc", "kerberos", "known_certs",
    "known_hosts", "known_modbus", "known_services", "loaded_scripts", "modbus", "mqtt_connect",
    "mqtt_publish", "mqtt_subscribe", "mysql", "netcontrol", "netcontrol_drop", "netcontrol_shunt",
    "notice", "notice_alarm", "ntlm", "ntp", "ocsp", "openflow", "packet_filter", "pe", "print",
    "quic", "radius", "rdp", "reporter", "rfb", "signatures", "sip", "smb_files", "smb_mapping",
    "smtp", "snmp", "socks", "software", "ssh", "ssl", "stats", "syslog", "traceroute", "tunnel",
    "unified2", "weird", "weird_stats", "websocket", "x509",
})


def zeek_log_name(path: Path, lines: Sequence[str]) -> str | None:
    """The Zeek log ``path`` is by its name (``weird.log``, ``conn.00:00:00-01:00:00.log.gz``,
    ``dns.log.labeled``), when that name is one of :data:`ZEEK_LOGS` and a sampled line is a JSON
    object with Zeek's ``ts`` key; else None. Records that carry ``_path`` keep their own."""
    name = path.name.split(".", 1)[0].lower()
    if name not in ZEEK_LOGS:
        return None
    for line in lines:
        try:
            obj = loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict) and "ts" in obj:
            return name
    return None


def loads(text: str) -> Any:
    """Decode one JSON line exactly as :func:`json.loads` does, faster for the common line.

    orjson and the standard library agree on every document orjson accepts except integers past
    64 bits (orjson turns them into floats) and very deep nesting: a result holding either is
    decoded again (:func:`_needs_reference`). Whatever orjson refuses (NaN/Infinity, numbers
    past the float range, lone surrogates, bad syntax) is decoded again too, by the standard
    library, which accepts it or raises its own error: the parsed row or the quarantine reason
    is the standard library's either way.
    """
    if _fast_loads is not None:
        try:
            obj: Any = _fast_loads(text)
        except ValueError:  # orjson.JSONDecodeError; the standard library decides
            pass
        else:
            cls = obj.__class__
            if cls is dict or cls is list:
                if not _needs_reference(obj, 0):
                    return obj
            elif cls is not float or -_INT64_SPAN < obj < _INT64_SPAN:
                return obj
    return json.loads(text)


def _needs_reference(value: dict[str, Any] | list[Any], depth: int) -> bool:
    """Whether orjson's ``value`` might not be the standard library's: a float of int64
    magnitude or more (maybe a wide integer literal), or nesting past :data:`_MAX_DEPTH`.

    A walk of the decoded values: a few tens of nanoseconds per value, several times cheaper
    than scanning the text for long digit runs.
    """
    if depth >= _MAX_DEPTH:
        return True
    items: Iterable[Any] = value.values() if isinstance(value, dict) else value
    for item in items:
        cls = item.__class__
        if cls is float:
            if not -_INT64_SPAN < item < _INT64_SPAN:
                return True
        elif (cls is dict or cls is list) and _needs_reference(item, depth + 1):
            return True
    return False


class JsonParser(LineParser):
    """JSON lines with nested, varying schemas; Zeek JSON logs of any type map to columns."""

    format = "json"

    def __init__(self, opts: FormatOptions, clock: _Clock, zeek_log: str | None = None) -> None:
        self.opts = opts
        self.clock = clock
        #: the Zeek log the file is by its name (:func:`zeek_log_name`), for records without ``_path``
        self.zeek_log = zeek_log
        self.ts_keys = tuple(opts.timestamp_fields or TIMESTAMP_FIELDS)
        self.time_format = TimeFormat.compile(opts.timestamp_format) if opts.timestamp_format else None
        self.mapper = _RecordMapper(opts)
        # A year-less time format carries the year from line to line (see LineParser.splittable).
        self.splittable = self.time_format is None or self.time_format.has_year
        # Blocks of lines map column-wise (json_columns) for the options that mapping reproduces:
        # no time format (the clock's state), no *_field overrides (the default key lists).
        self.columnar = (
            self.time_format is None
            and not (opts.entity_field or opts.level_field or opts.label_field or opts.message_field)
        )

    def parse_block(self, texts: Sequence[str]) -> EventColumns | None:
        """Columns for the lines :class:`JsonBlockMapper` maps exactly; None without orjson (the
        block path reads orjson's values and leaves to :func:`loads` only what it would decode again)."""
        if not self.columnar or _fast_loads is None:
            return None
        mapper = JsonBlockMapper(
            _fast_loads, _needs_reference, self.ts_keys, self.clock.tz, self.opts.default_entity, self.zeek_log
        )
        return mapper.map_block(texts)

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any]:
        try:
            obj = loads(text)
        except json.JSONDecodeError as exc:
            # Python ends one message with its own "at" ("Unterminated string starting at").
            where = "char" if exc.msg.endswith(" at") else "at char"
            raise ParseError(f"invalid JSON: {exc.msg} {where} {exc.pos}") from None
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
        own = flat.get("_path")
        return self.mapper.finish(event, flat, own if isinstance(own, str) else self.zeek_log)


class JsonFormat(LogFormat):
    """Most sampled lines are JSON objects (a strong sign: little else starts with ``{``)."""

    name = "json"

    def detect(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> float:
        return STRONG if _majority(lines, lambda s: s.lstrip().startswith("{")) else 0.0

    def variant(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> str | None:
        """The Zeek log the file is by its name (:func:`zeek_log_name`), or None."""
        return zeek_log_name(path, lines)

    def make_parser(
        self, path: Path, opts: FormatOptions, sample: Sequence[str], variant: str | None = None
    ) -> LineParser:
        return JsonParser(opts, _file_clock(path, opts), variant)  # variant: zeek_log_name's answer


FORMAT = JsonFormat()
