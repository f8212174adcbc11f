"""``access``: Apache/Nginx common and combined access logs."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loganomaly.errors import ConfigError, ParseError
from loganomaly.ingest.formats.base import LIKELY, FormatOptions, LineParser, LogFormat, _majority
from loganomaly.ingest.formats.timestamps import _EPOCH, _MONTHS, _Clock, _zone_offset
from loganomaly.ingest.formats.values import _as_int

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
    splittable = True  # every line carries its full date and zone

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


class AccessFormat(LogFormat):
    """Most sampled lines start like ``host ident user [dd/Mon/yyyy:``."""

    name = "access"

    def detect(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> float:
        return LIKELY if _majority(lines, _ACCESS_HEAD.match) else 0.0

    def make_parser(
        self, path: Path, opts: FormatOptions, sample: Sequence[str], variant: str | None = None
    ) -> LineParser:
        return AccessParser(opts)


FORMAT = AccessFormat()
