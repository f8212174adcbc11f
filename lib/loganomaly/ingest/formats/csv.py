"""``csv``: tables, i.e. metric time series with a header, or headerless rows with given columns.

Presets of column lists (:data:`COLUMN_PRESETS`: NSL-KDD) live here too. The module is named after
its format; inside it, ``import csv`` is still the standard library (absolute imports).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loganomaly.errors import ConfigError, ParseError
from loganomaly.ingest.formats.base import (
    POSSIBLE,
    TIMESTAMP_FIELDS,
    FormatOptions,
    LineParser,
    LogFormat,
    _file_clock,
)
from loganomaly.ingest.formats.records import _COUNT_COLUMNS
from loganomaly.ingest.formats.timestamps import _MAX_TS, TimeFormat, _Clock, parse_timestamp
from loganomaly.ingest.formats.values import _CONVERTERS, normalize_level

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

    The first line (the header, or the first row) has the first say: only candidates that split
    it into more than one column compete, on how many lines share its width, so bad lines further
    down, however many, cannot change how the good ones split. When no candidate splits the first
    line, the majority width decides. Ties go to more columns; a few ragged lines (which will be
    quarantined) do not defeat it.
    """
    first = next((line for line in lines if line.strip()), "")
    best, best_score = ",", (0, 0)
    for cand in (",", "\t", ";", "|"):
        width = len(_split_sample(first, cand)) if cand in first else 1
        if width > 1:
            freq = sum(1 for line in lines if cand in line and len(_split_sample(line, cand)) == width)
            if (freq, width) > best_score:
                best, best_score = cand, (freq, width)
    if best_score != (0, 0):
        return best
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


class CsvFormat(LogFormat):
    """Tables: consistent columns in the sample. Only a possible match, and listed last in
    ``LOG_FORMATS`` so that any other format scoring the same wins: many log lines split into
    columns by accident."""

    name = "csv"

    def check_options(self, opts: FormatOptions) -> None:
        if isinstance(opts.columns, str):
            # Named column lists, so YAML configs can ask for them by name.
            if opts.columns not in COLUMN_PRESETS:
                raise ConfigError(
                    f"unknown column preset {opts.columns!r}; "
                    f"valid: {', '.join(COLUMN_PRESETS)}, or a list of names"
                )
            opts.columns = COLUMN_PRESETS[opts.columns]

    def detect(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> float:
        return POSSIBLE if _looks_like_csv(path, lines, opts) else 0.0

    def make_parser(
        self, path: Path, opts: FormatOptions, sample: Sequence[str], variant: str | None = None
    ) -> LineParser:
        return CsvParser(opts, _file_clock(path, opts), sample, path.name)


FORMAT = CsvFormat()
