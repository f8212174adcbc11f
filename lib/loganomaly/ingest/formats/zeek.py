"""``zeek``: Zeek tab-separated logs of any type, driven by their own header lines."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from loganomaly.errors import ParseError
from loganomaly.ingest.formats.base import CERTAIN, EventColumns, FormatOptions, LineParser, LogFormat
from loganomaly.ingest.formats.json_columns import COLUMN_TYPES, JsonBlockMapper
from loganomaly.ingest.formats.records import (
    _COMPONENT_KEYS,
    _DETAILED_LABEL_KEYS,
    _LABEL_KEYS,
    _NET_FIELDS,
    _WARNING_ZEEK_PATHS,
    _RecordMapper,
)
from loganomaly.ingest.formats.timestamps import parse_epoch
from loganomaly.ingest.formats.values import _MISSING, _as_float, _as_int

#: Zeek times the block path converts: plain decimals with a point (``parse_epoch`` reads them as
#: floats); digit-only times (ints there) and anything else are converted value by value.
_DECIMAL_TIME = re.compile(r"[0-9]{1,12}\.[0-9]{1,9}")
#: Numbers the block path converts itself: ASCII digits, an optional point and fraction.
_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")
#: A segment of a block smaller than this is left to the per-line parser (fixed costs).
MIN_SEGMENT = 8


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

    def parse_block(self, texts: Sequence[str]) -> EventColumns | None:
        """Event columns for the data lines whose rows :meth:`parse` gives exactly (see
        :func:`_map_segment`); header lines and every other line are left to :meth:`parse`.

        Header lines inside the block change the parser's state for the lines after them, so a
        copy of the state follows them (``_header`` applied to the copy, as :meth:`parse` will
        apply it to this parser afterwards) and each run of data lines between headers is mapped
        under the state it will be parsed under.
        """
        if self.opts.entity_field or self.opts.level_field or self.opts.label_field or self.opts.message_field:
            return None  # the column-wise mapping reproduces the default key lists only
        shadow = copy.copy(self)
        segments: list[tuple[ZeekParser, list[int]]] = []
        current: list[int] | None = None
        for i, text in enumerate(texts):
            if text[:1] == "#":
                try:
                    shadow._header(text)
                except ParseError:
                    pass  # parse() quarantines it; the state is left as it was
                except Exception:  # noqa: BLE001 - a state parse() would leave half-set: all per line
                    return None
                current = None
                continue
            if current is None:
                current = []
                segments.append((copy.copy(shadow), current))
            current.append(i)
        positions: list[int] = []
        parts: list[dict[str, pa.Array]] = []
        for state, indices in segments:
            if len(indices) < MIN_SEGMENT:
                continue
            mapped = _map_segment(state, [texts[i] for i in indices])
            if mapped is not None and mapped[0]:
                positions.extend(indices[p] for p in mapped[0])
                parts.append(mapped[1])
        if not parts:
            return None
        if len(parts) == 1:
            return EventColumns(positions, parts[0])
        return EventColumns(positions, {name: pa.concat_arrays([p[name] for p in parts]) for name in COLUMN_TYPES})


def _map_segment(state: ZeekParser, texts: list[str]) -> tuple[list[int], dict[str, pa.Array]] | None:
    """Columns of consecutive data lines under one header state, through the JSON block path's
    per-shape mapping (:meth:`JsonBlockMapper.map_shape`): every row of a Zeek log has one
    shape, its ``#fields``.

    The values are first converted as :meth:`ZeekParser.parse` converts them (unset -> absent,
    empty -> ``""``, typed connection fields, bools, sets). Where the JSON mapping would read a
    row differently from :meth:`_RecordMapper.finish` (a key absent there is a null value here,
    and the zeek path comes from ``#path``, not a ``_path`` key) the row, or the whole segment,
    is left to the per-line parser: two keys of one list, ``_path`` or ``note`` columns, warning
    paths, a row whose label list, HTTP test or connection test depends on an unset value. Values
    converted otherwise than by the plain rules below leave their row to it too.
    """
    columns = state.columns
    if not columns or state.ts_index is None or state.split_last:
        return None
    names = [name for name, _ in columns]
    path = state.path
    if (
        len(set(names)) != len(names)
        or names[state.ts_index] != "ts"
        or "_path" in names
        or "note" in names
        or path in _WARNING_ZEEK_PATHS
        or (path is not None and path in _MISSING)
        or sum(k in names for k in _LABEL_KEYS) > 1
        or sum(k in names for k in _DETAILED_LABEL_KEYS) > 1
    ):
        return None
    component_keys = [k for k in _COMPONENT_KEYS if k in names]
    if len(component_keys) > 1:
        return None
    sep, unset, empty, width = state.sep, state.unset, state.empty, len(columns)
    rows = [t.split(sep) for t in texts]
    local = [r for r, cells in enumerate(rows) if len(cells) == width]
    if len(local) < MIN_SEGMENT:
        return None
    if len(local) != len(rows):
        rows = [rows[r] for r in local]
    raw = list(zip(*rows, strict=True))
    n = len(rows)
    bad = [False] * n
    markers = {unset, empty}

    keys: list[str] = ["ts"]
    values: list[Sequence[Any]] = [_times(raw[state.ts_index], markers, bad)]
    for i, key, _, conv in state.net:
        keys.append(key)
        values.append(_net_column(raw[i], conv, markers, bad))
    plain_keys = [name for _, name in state.plain]
    for i, _ in state.plain:
        col = raw[i]
        if unset in col or empty in col:
            col = tuple(None if v == unset else ("" if v == empty else v) for v in col)
        values.append(col)
    keys.extend(plain_keys)
    for i, name, is_list in state.special:
        keys.append(name)
        values.append(_special_column(raw[i], name, is_list, state, bad))

    by_key = dict(zip(keys, values, strict=True))
    if "host" in by_key and ("uri" in by_key or "method" in by_key):
        # parse() sees an HTTP record only where uri or method is set; the block mapping, always.
        http = [by_key[k] for k in ("uri", "method") if k in by_key]
        if all(None in col for col in http):  # else some column is set in every row
            for r in range(n):
                if all(col[r] is None for col in http):
                    bad[r] = True
    addrs = [by_key[k] for k in ("id.orig_h", "id.resp_h") if k in by_key]
    if addrs:
        # parse() builds a connection message only where an address is set (not unset nor empty).
        if all(None in col for col in addrs):  # else some address is set in every row
            for r in range(n):
                if all(col[r] is None for col in addrs):
                    bad[r] = True
    if path is not None:
        # finish() falls back to the #path for the component; the mapping takes the first valid
        # component key: the path stands in, in the one component column, where it has none.
        if component_keys:
            j = keys.index(component_keys[0])
            values[j] = [v if v is not None and v not in _MISSING else path for v in values[j]]
        else:
            keys.append("service")  # popped as the component, never an attribute
            values.append([path] * n)
    if True in bad:
        good = [not b for b in bad]
        local = [p for p, g in zip(local, good, strict=True) if g]
        values = [[v for v, g in zip(col, good, strict=True) if g] for col in values]
        if len(local) < MIN_SEGMENT:
            return None
    mapper = JsonBlockMapper(json.loads, lambda _obj, _depth: False, ("ts",), None, state.opts.default_entity)
    mapped = mapper.map_shape(tuple(keys), local, values)
    if mapped is None or not mapped[0]:
        return None
    positions, arrays = mapped
    arrays["format"] = pa.array(["zeek"] * len(positions), pa.string())
    return positions, arrays


def _times(col: Sequence[str], markers: set[str], bad: list[bool]) -> list[Any]:
    """The ``ts`` column as :func:`parse_epoch` reads text (floats, or ints for digit strings);
    a value it would refuse or that is not plain marks its row."""
    if all(map(_DECIMAL_TIME.fullmatch, col)):
        return list(map(float, col))
    out: list[Any] = []
    for r, v in enumerate(col):
        if _DECIMAL_TIME.fullmatch(v):
            out.append(float(v))
        elif v.isascii() and v.isdigit() and len(v) < 19:
            out.append(int(v))
        else:
            bad[r] = True  # unset, empty, signed, odd: parse() gives the row or the reason
            out.append(0.0)
    return out


def _net_column(col: Sequence[str], conv: Callable[[str, Any], Any], markers: set[str], bad: list[bool]) -> list[Any]:
    """A connection field as :meth:`ZeekParser.parse` converts it: unset and empty -> absent
    (None), text kept (the mapping drops ``-``/``(empty)``/``""`` as ``_as_str`` does), counts
    and ports from ASCII digits, durations from plain decimals. Anything else marks its row."""
    plain = all(m not in col for m in markers)  # equality scans: cheaper than hashing every value
    if conv is _as_int:
        if plain:
            # The common column: every value set; one C-speed pass each for ASCII, digits and width.
            if "".join(col).isascii() and all(map(str.isdigit, col)) and max(map(len, col), default=0) < 19:
                return list(map(int, col))
        else:
            present = [v for v in col if v not in markers]
            if "".join(present).isascii() and all(map(str.isdigit, present)) and max(map(len, present), default=0) < 19:
                return [None if v in markers else int(v) for v in col]
        out: list[Any] = []
        for r, v in enumerate(col):
            if v in markers or v == "":
                out.append(None)
            elif v.isascii() and v.isdigit() and len(v) < 19:
                out.append(int(v))
            else:
                bad[r] = True
                out.append(None)
        return out
    if conv is _as_float:
        if plain and all(map(_DECIMAL.fullmatch, col)):
            return list(map(float, col))
        result: list[Any] = []
        for r, v in enumerate(col):
            if v in markers or v == "":
                result.append(None)
            elif _DECIMAL.fullmatch(v):
                result.append(float(v))
            else:
                bad[r] = True
                result.append(None)
        return result
    return list(col) if plain else [None if v in markers else v for v in col]


def _special_column(col: Sequence[str], name: str, is_list: bool, state: ZeekParser, bad: list[bool]) -> list[Any]:
    """Set, vector and bool columns as :meth:`ZeekParser.parse` writes them into the attributes."""
    out: list[Any] = []
    unset, empty, set_sep = state.unset, state.empty, state.set_sep
    for r, v in enumerate(col):
        if v == unset:
            out.append(None)
        elif is_list:
            out.append("[]" if v == empty else json.dumps(v.split(set_sep) if set_sep else [v]))
        elif v == "T" or v == "F":
            out.append("true" if v == "T" else "false")
        else:
            bad[r] = True  # parse() refuses it with its reason
            out.append(None)
    return out


class ZeekFormat(LogFormat):
    """A file whose first line is Zeek's ``#separator`` or ``#fields`` header says what it is."""

    name = "zeek"

    def detect(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> float:
        first = lines[0]
        return CERTAIN if first.startswith("#separator") or first.startswith("#fields") else 0.0

    def make_parser(
        self, path: Path, opts: FormatOptions, sample: Sequence[str], variant: str | None = None
    ) -> LineParser:
        return ZeekParser(opts)


FORMAT = ZeekFormat()
