"""``csv``: tables, i.e. metric time series with a header, or headerless rows with given columns.

Presets of column lists (:data:`COLUMN_PRESETS`: NSL-KDD) live here too. The module is named after
its format; inside it, ``import csv`` is still the standard library (absolute imports).
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loganomaly.errors import ConfigError, ParseError
from loganomaly.ingest.formats.base import (
    POSSIBLE,
    TIMESTAMP_FIELDS,
    EventColumns,
    FormatOptions,
    LineParser,
    LogFormat,
    _file_clock,
)
from loganomaly.ingest.formats.json_columns import (
    COLUMN_TYPES,
    ascii_digits,
    attributes_map,
    complete,
    constant,
)
from loganomaly.ingest.formats.records import _COUNT_COLUMNS
from loganomaly.ingest.formats.timestamps import _MAX_TS, TimeFormat, _Clock, iso_utc_micros, parse_timestamp
from loganomaly.ingest.formats.values import _CONVERTERS, _as_float, _as_int, normalize_level

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


def series_name(path_name: str) -> str:
    """The series a file without an entity column holds: its name without folders and the
    compression and table suffixes (``cpu_util.csv.gz`` -> ``cpu_util``), so a series split into a
    training and a scoring file of the same name is one entity in both lakes."""
    name = path_name.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".gz", ".bz2"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    for suffix in (".csv", ".tsv", ".tab", ".txt"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name or path_name


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
        # A table with no entity column is one series: its rows are the file's (default_entity
        # first), so a single-metric file (timestamp,value) is windowed as one entity rather than
        # dropped by featurize for having none. An empty cell of an entity column stays as before.
        self.table_entity = opts.default_entity if opts.default_entity is not None else series_name(path_name)
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

    def parse_block(self, texts: Sequence[str]) -> EventColumns | None:
        """Event columns for the rows whose events :meth:`parse` gives exactly (see
        :func:`_map_rows`); the header row and every other line are left to :meth:`parse`.

        A header still pending is read first on a copy of the parser, as :meth:`parse` will read
        it on this one afterwards. Tables with synthetic times (they need each line's number),
        a ``timestamp_format`` or several time columns stay per line.
        """
        state = copy.copy(self)
        start = 0
        while state.header_pending and start < len(texts):
            try:
                state.parse(texts[start])
            except ParseError:
                pass  # parse() quarantines that line; the next one is the header
            except Exception:  # noqa: BLE001 - a header parse() leaves half-set: all per line
                return None
            start += 1
        if (
            state.header_pending
            or not state.columns
            or getattr(state, "attr_idx", None) is None  # a header whose columns did not fit the options
            or state.no_time_reason is not None
            or state.time_format is not None
            or len(state.ts_idx) != 1
            or len(texts) - start < _MIN_ROWS
        ):
            return None
        mapped = _map_rows(state, texts[start:])
        if mapped is None:
            return None
        positions, arrays = mapped
        return EventColumns([start + p for p in positions], arrays)

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any] | None:
        cells = _split_csv(text, self.delimiter)
        if self.header_pending:
            self.header_pending = False
            if not self.columns:
                self._set_columns([c.strip() for c in cells])
            return None
        if len(cells) != len(self.columns):
            n = len(cells)
            raise ParseError(f"csv row has {n} column{'' if n == 1 else 's'}, expected {len(self.columns)}")
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
        if self.entity_idx is None:
            event["entity"] = self.table_entity
        else:
            event["entity"] = cells[self.entity_idx].strip() or opts.default_entity
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


#: Fewer rows than this are left to the per-line parser (the column-wise path's fixed costs).
_MIN_ROWS = 8
#: Floats the block path converts: ASCII digits with an optional fraction.
_DECIMAL = r"^[0-9]{1,20}(\.[0-9]{1,20})?$"
#: A cell starting or ending with a character ``str.strip`` removes: per line.
_EDGE_SPACE = r"^[\t-\r\x1c-\x20\x85\p{Z}]|[\t-\r\x1c-\x20\x85\p{Z}]$"
_MARKERS = pa.array(["", "-", "(empty)"], pa.string())
_INT32_MAX = 2**31 - 1


def _map_rows(state: CsvParser, texts: Sequence[str]) -> tuple[list[int], dict[str, pa.Array]] | None:
    """The events of data rows, column by column in Arrow, for the rows :meth:`CsvParser.parse`
    maps the plain way; every other row (a quote, another width, a value converted by a rule not
    reproduced here or refused) is left out, for the per-line parser to give its row or reason.

    Plain: ISO times that :func:`.timestamps.iso_utc_micros` reads (valid dates, in range; zone-less ones only without
    a ``timezone`` option), counts and ports of ASCII digits in range, decimals for floats, text
    cells without edge spaces where :meth:`parse` strips them.
    """
    width = len(state.columns)
    names = [name for _, name in state.attr_idx]
    if len(set(names)) != len(names):
        return None  # parse() keeps the last value of a repeated name at the first one's place
    arr = pa.array(texts, pa.string())
    parts = pc.split_pattern(arr, state.delimiter)
    good = pc.equal(pc.list_value_length(parts), width)
    # A quoted cell is csv.reader's to read, per line; most blocks hold no quote at all, which one
    # scan of the block's bytes tells (a per-row substring search cost 0.1 us a row).
    data = arr.buffers()[2]
    if data is not None and (np.frombuffer(data, np.uint8) == ord('"')).any():
        good = pc.and_(good, pc.invert(pc.match_substring(arr, '"')))
    ok = np.asarray(good.to_numpy(zero_copy_only=False), dtype=bool)
    rows = np.flatnonzero(ok)
    m = len(rows)
    if m < _MIN_ROWS:
        return None
    flat = pc.list_flatten(parts.filter(good))
    cache: dict[int, pa.Array] = {}

    def cell(i: int) -> pa.Array:
        if i not in cache:
            cache[i] = flat.take(pa.array(np.arange(i, m * width, width, dtype=np.int64)))
        return cache[i]

    bad = np.zeros(m, dtype=bool)

    def mark(mask: pa.Array) -> None:
        nonlocal bad
        bad |= np.asarray(pc.fill_null(mask, True).to_numpy(zero_copy_only=False), dtype=bool)

    def stripped(i: int) -> pa.Array:
        values = cell(i)
        mark(pc.match_substring_regex(values, _EDGE_SPACE))
        return values

    # ts: parse_timestamp's ISO reading of the cells that read plainly (iso_utc_micros).
    micros, iso = iso_utc_micros(cell(state.ts_idx[0]), require_z=state.clock.tz is not None)
    bad |= ~iso

    out: dict[str, pa.Array] = {"ts": pa.array(micros, pa.int64()).view(pa.timestamp("us", "UTC"))}
    for i, _name, column, conv in state.known:
        values = stripped(i)
        missing = pc.is_in(values, value_set=_MARKERS)
        if conv is _as_int:
            digits = ascii_digits(values)
            mark(pc.invert(pc.or_(missing, digits)))
            number = pc.cast(pc.if_else(digits, values, None), pa.int64())
            if COLUMN_TYPES[column] == pa.int32():
                mark(pc.greater(pc.fill_null(number, 0), _INT32_MAX))
            out[column] = number
        elif conv is _as_float:
            decimal = pc.match_substring_regex(values, _DECIMAL)
            mark(pc.invert(pc.or_(missing, decimal)))
            out[column] = pc.cast(pc.if_else(decimal, values, None), pa.float64())
        else:
            out[column] = pc.if_else(missing, None, values)
    entity_default = state.opts.default_entity
    if state.entity_idx is not None:
        values = stripped(state.entity_idx)
        out["entity"] = pc.if_else(pc.equal(values, ""), entity_default, values)
    else:
        out["entity"] = constant(state.table_entity, m)
    if state.label_idx is not None:
        values = stripped(state.label_idx)
        out["label"] = pc.if_else(pc.equal(values, ""), None, values)
    if state.level_idx is not None:
        coded = pc.dictionary_encode(cell(state.level_idx))
        levels = pa.array([normalize_level(v) or "info" for v in coded.dictionary.to_pylist()], pa.string())
        out["level"] = levels.take(coded.indices)
    else:
        out["level"] = constant("info", m)
    if state.message_idx is not None:
        out["message"] = cell(state.message_idx)
    else:
        out["message"] = _join_present([out[c] for c in ("proto", "component", "status") if c in out], m)
    out["attributes"] = attributes_map(names, [cell(i) for i, _ in state.attr_idx], m, absent="")
    out["format"] = constant("csv", m)

    done = complete(rows, out, bad)
    return None if done is None else (done[0].tolist(), done[1])


def _join_present(columns: list[pa.Array], n: int) -> pa.Array:
    """``" ".join(p for p in parts if p)`` of each row's cells of ``columns`` (string; null and
    empty cells left out), as :meth:`CsvParser.parse` builds a message without a message column.

    In Arrow, one join per pattern of present cells (at most seven), each row taking its
    pattern's: ``binary_join_element_wise`` cannot skip empty cells itself, and its null-skipping
    mode dropped rows whose cells were all null (pyarrow 26).
    """
    out = constant("", n)
    if not columns:
        return out
    filled = [pc.fill_null(c, "") for c in columns]
    present = [np.asarray(pc.not_equal(c, "").to_numpy(zero_copy_only=False), dtype=bool) for c in filled]
    pattern = np.zeros(n, np.int64)
    for i, p in enumerate(present):
        pattern |= p.astype(np.int64) << i
    for code in np.unique(pattern).tolist():
        if code == 0:
            continue
        parts = [c for i, c in enumerate(filled) if code >> i & 1]
        joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, " ")
        out = pc.if_else(pa.array(pattern == code), joined, out)
    return out


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
