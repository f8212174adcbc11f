"""``syslog``: RFC 5424, and RFC 3164 with or without ``<PRI>`` (``/var/log/messages`` style)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loganomaly.errors import ParseError
from loganomaly.ingest.formats.base import (
    LIKELY,
    POSSIBLE,
    FormatOptions,
    LineParser,
    LogFormat,
    _file_clock,
    _majority,
)
from loganomaly.ingest.formats.timestamps import _EPOCH, _MONTHS, _Clock, parse_timestamp

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
