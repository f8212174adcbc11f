"""Spark-free reading and parsing of log files into event dicts.

Spark calls :func:`parse_file` from its tasks (see :mod:`loganomaly.ingest`); everything here
unit-tests without a JVM. The contract that makes ingestion loss-free: :func:`parse_file` yields
exactly one record per physical line of the file, either an event or a quarantine record with
its reason, whatever the bytes are (binary garbage, invalid UTF-8, a 1 MB line, a truncated
compressed file).
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import json
import logging
import math
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from loganomaly.errors import ParseError, StageInputError

log = logging.getLogger(__name__)

#: Lines longer than this are quarantined without parsing (their head is kept as raw text).
MAX_LINE_BYTES = 1024 * 1024
FORMATS = ("json", "syslog")
TIMESTAMP_FIELDS = ("ts", "timestamp", "@timestamp", "time")
_MIN_TS = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MAX_TS = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
_SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>(?P<version>\d{1,2}) (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) "
    r"(?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|(?:\[.*?\])+)(?: (?P<msg>.*))?$",
    re.DOTALL,
)
_SYSLOG_HEAD = re.compile(r"^<\d{1,3}>\d{1,2} ")
# Zeek-conn-style JSON fields -> event columns, with the Python type each must have.
_JSON_FIELDS: dict[str, tuple[str, type]] = {
    "id.orig_h": ("src_addr", str),
    "id.orig_p": ("src_port", int),
    "id.resp_h": ("dst_addr", str),
    "id.resp_p": ("dst_port", int),
    "proto": ("proto", str),
    "conn_state": ("status", str),
    "duration": ("duration", float),
    "orig_bytes": ("bytes_out", int),
    "resp_bytes": ("bytes_in", int),
    "orig_pkts": ("packets_out", int),
    "resp_pkts": ("packets_in", int),
    "service": ("component", str),
    "label": ("label", str),
}
_ENTITY_FIELDS = ("host", "hostname", "id.orig_h")


# ------------------------------------------------------------------------------ reading


def _open_binary(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
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
                    yield line_no, raw[:4096].decode("utf-8", errors="replace"), f"line too long ({length} bytes)"
                    continue
                raw = raw.rstrip(b"\n").rstrip(b"\r")
                try:
                    yield line_no, raw.decode("utf-8"), None
                except UnicodeDecodeError:
                    yield line_no, raw.decode("utf-8", errors="replace"), "invalid UTF-8"
        except (EOFError, OSError, zlib.error) as exc:
            line_no += 1
            yield line_no, "", f"truncated or corrupt compressed stream: {exc}"


def detect_format(path: str | Path, sample_lines: int = 20) -> str:
    """``"json"`` or ``"syslog"`` from the first non-empty lines; ParseError when neither fits."""
    seen = 0
    for _, text, problem in open_lines(path):
        if problem or not text.strip():
            continue
        stripped = text.lstrip()
        if stripped.startswith("{"):
            return "json"
        if _SYSLOG_HEAD.match(stripped):
            return "syslog"
        seen += 1
        if seen >= sample_lines:
            break
    raise ParseError(f"unrecognised log format (supported: {', '.join(FORMATS)})")


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
            if child.is_file() and not any(part.startswith(".") for part in rel) and child.name != "labels.csv":
                found.append(child)
    if not found:
        raise StageInputError(f"no input files under {', '.join(map(str, paths))}")
    return found


# ------------------------------------------------------------------------------ values


def parse_timestamp(value: Any) -> dt.datetime:
    """Epoch seconds/ms/us (by magnitude) or ISO-8601 (no zone = UTC) -> aware UTC datetime."""
    if isinstance(value, bool) or value is None:
        raise ParseError(f"timestamp is not a time: {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise ParseError(f"unparseable timestamp: {text[:64]!r}") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.timezone.utc)
            result = parsed.astimezone(dt.timezone.utc)
            if not _MIN_TS <= result < _MAX_TS:
                raise ParseError(f"timestamp out of range: {text[:64]}")
            return result
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParseError(f"timestamp is not a time: {value!r}")
    seconds = float(value)
    if abs(seconds) > 1e14:
        seconds /= 1e6
    elif abs(seconds) > 1e11:
        seconds /= 1e3
    if not 0 <= seconds < _MAX_TS.timestamp():
        raise ParseError(f"timestamp out of range: {value}")
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def _typed(name: str, value: Any, tp: type) -> Any:
    if value is None or value == "-" or value == "":
        return None
    if tp is str:
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, bool):
        raise ParseError(f"field {name} is not a number: {value!r}")
    if tp is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise ParseError(f"field {name} is not an integer: {str(value)[:40]!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParseError(f"field {name} is not a number: {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise ParseError(f"field {name} is not a finite number: {value!r}")
    return number


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


# ------------------------------------------------------------------------------ formats


def parse_json_event(text: str) -> dict[str, Any]:
    """One JSON-lines record (Zeek conn and similar) -> event dict; ParseError with the reason."""
    if not text.strip():
        raise ParseError("empty line")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(obj, dict):
        raise ParseError("JSON line is not an object")
    flat = _flatten(obj)
    ts_key = next((k for k in TIMESTAMP_FIELDS if k in flat), None)
    if ts_key is None:
        raise ParseError(f"no timestamp field (tried {', '.join(TIMESTAMP_FIELDS)})")
    event: dict[str, Any] = {"ts": parse_timestamp(flat.pop(ts_key)), "format": "json", "level": "info"}
    for key, (column, tp) in _JSON_FIELDS.items():
        if key in flat:
            event[column] = _typed(key, flat[key], tp)
    entity = next((flat[k] for k in _ENTITY_FIELDS if flat.get(k) not in (None, "", "-")), None)
    event["entity"] = None if entity is None else str(entity)
    for key in ("orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts"):
        if event.get(_JSON_FIELDS[key][0]) is not None and event[_JSON_FIELDS[key][0]] < 0:
            raise ParseError(f"field {key} is negative: {event[_JSON_FIELDS[key][0]]}")
    used = set(_JSON_FIELDS) | {"host", "hostname"}
    event["attributes"] = {
        k: (v if isinstance(v, str) else json.dumps(v)) for k, v in flat.items() if k not in used and v is not None
    }
    src = f"{event.get('src_addr') or '?'}:{event.get('src_port') or '?'}"
    dst = f"{event.get('dst_addr') or '?'}:{event.get('dst_port') or '?'}"
    event["message"] = " ".join(
        str(p) for p in (event.get("proto"), event.get("component"), src, "->", dst, event.get("status")) if p
    )
    return event


def parse_syslog_event(text: str) -> dict[str, Any]:
    """One RFC 5424 syslog line -> event dict; ParseError with the reason."""
    if not text.strip():
        raise ParseError("empty line")
    match = _RFC5424.match(text)
    if not match:
        raise ParseError("not RFC 5424 syslog")
    pri = int(match["pri"])
    if pri > 191:
        raise ParseError(f"syslog PRI out of range: {pri}")
    attributes = {"facility": str(pri // 8)}
    for key in ("procid", "msgid"):
        if match[key] != "-":
            attributes[key] = match[key]
    if match["sd"] != "-":
        attributes["structured_data"] = match["sd"]
    return {
        "ts": parse_timestamp(match["ts"]),
        "format": "syslog",
        "entity": None if match["host"] == "-" else match["host"],
        "component": None if match["app"] == "-" else match["app"],
        "level": _SEVERITIES[pri % 8],
        "message": (match["msg"] or "").lstrip("\ufeff"),
        "attributes": attributes,
    }


def _original_length(text: str, problem: str | None) -> int:
    """Bytes of the original line; for an over-long line ``text`` is only its head."""
    match = re.match(r"line too long \((\d+) bytes\)", problem or "")
    return int(match.group(1)) if match else len(text.encode("utf-8", errors="replace"))


PARSERS = {"json": parse_json_event, "syslog": parse_syslog_event}


@dataclass
class ParsedRecord:
    """One line's outcome: an event, or a quarantine record with the reason."""

    kind: Literal["event", "quarantine"]
    line_no: int
    data: dict[str, Any]


def parse_file(path: str | Path, fmt: str | None = None, max_raw_chars: int = 2048) -> Iterator[ParsedRecord]:
    """Parse every line of ``path``; exactly one record per line (see the module docstring)."""
    reason_all: str | None = None
    if fmt is None:
        try:
            fmt = detect_format(path)
        except ParseError as exc:
            reason_all = str(exc)
    elif fmt not in PARSERS:
        raise ParseError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}")
    parser = PARSERS.get(fmt or "")
    for line_no, text, problem in open_lines(path):
        reason = problem or reason_all
        if reason is None:
            assert parser is not None
            try:
                yield ParsedRecord("event", line_no, parser(text))
                continue
            except ParseError as exc:
                reason = str(exc)
        yield ParsedRecord(
            "quarantine",
            line_no,
            {
                "format": fmt,
                "reason": reason,
                "raw": text[:max_raw_chars],
                "raw_length": _original_length(text, problem),
            },
        )
