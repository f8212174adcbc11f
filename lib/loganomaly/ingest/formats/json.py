"""``json``: JSON lines with nested, varying schemas; Zeek JSON logs of any type map to columns.

The module is named after its format; inside it, ``import json`` is still the standard library
(absolute imports), which is what the parser uses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loganomaly.errors import ParseError
from loganomaly.ingest.formats.base import (
    STRONG,
    TIMESTAMP_FIELDS,
    FormatOptions,
    LineParser,
    LogFormat,
    _file_clock,
    _majority,
)
from loganomaly.ingest.formats.records import _RecordMapper
from loganomaly.ingest.formats.timestamps import TimeFormat, _Clock, parse_timestamp
from loganomaly.ingest.formats.values import _flatten


class JsonParser(LineParser):
    """JSON lines with nested, varying schemas; Zeek JSON logs of any type map to columns."""

    format = "json"

    def __init__(self, opts: FormatOptions, clock: _Clock) -> None:
        self.opts = opts
        self.clock = clock
        self.ts_keys = tuple(opts.timestamp_fields or TIMESTAMP_FIELDS)
        self.time_format = TimeFormat.compile(opts.timestamp_format) if opts.timestamp_format else None
        self.mapper = _RecordMapper(opts)
        # A year-less time format carries the year from line to line (see LineParser.splittable).
        self.splittable = self.time_format is None or self.time_format.has_year

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


class JsonFormat(LogFormat):
    """Most sampled lines are JSON objects (a strong sign: little else starts with ``{``)."""

    name = "json"

    def detect(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> float:
        return STRONG if _majority(lines, lambda s: s.lstrip().startswith("{")) else 0.0

    def make_parser(
        self, path: Path, opts: FormatOptions, sample: Sequence[str], variant: str | None = None
    ) -> LineParser:
        return JsonParser(opts, _file_clock(path, opts))


FORMAT = JsonFormat()
