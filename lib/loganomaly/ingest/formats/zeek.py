"""``zeek``: Zeek tab-separated logs of any type, driven by their own header lines."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from loganomaly.errors import ParseError
from loganomaly.ingest.formats.base import CERTAIN, EventColumns, FormatOptions, LineParser, LogFormat
from loganomaly.ingest.formats.json_columns import COLUMN_TYPES, true_rows
from loganomaly.ingest.formats.records import _NET_FIELDS, _RecordMapper
from loganomaly.ingest.formats.timestamps import parse_epoch
from loganomaly.ingest.formats.zeek_columns import map_segment

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
        :func:`.zeek_columns.map_segment`); header lines and every other line are left to
        :meth:`parse`.

        Header lines inside the block change the parser's state for the lines after them, so a
        copy of the state follows them (``_header`` applied to the copy, as :meth:`parse` will
        apply it to this parser afterwards) and each run of data lines between headers is mapped
        under the state it will be parsed under.
        """
        if self.opts.entity_field or self.opts.level_field or self.opts.label_field or self.opts.message_field:
            return None  # the column-wise mapping reproduces the default key lists only
        lines = pa.array(texts, pa.string())
        headers = true_rows(pc.starts_with(lines, "#")).tolist()
        shadow = copy.copy(self)
        segments: list[tuple[ZeekParser, int, int]] = []
        start = 0
        for h in [*headers, len(texts)]:
            if h - start >= MIN_SEGMENT:
                segments.append((copy.copy(shadow), start, h))
            if h < len(texts):
                try:
                    shadow._header(texts[h])
                except ParseError:
                    pass  # parse() quarantines it; the state is left as it was
                except Exception:  # noqa: BLE001 - a state parse() would leave half-set: all per line
                    return None
            start = h + 1
        positions: list[int] = []
        parts: list[dict[str, pa.Array]] = []
        for state, first, stop in segments:
            mapped = map_segment(state, lines.slice(first, stop - first), MIN_SEGMENT)
            if mapped is not None:
                positions.extend((mapped[0] + first).tolist())
                parts.append(mapped[1])
        if not parts:
            return None
        if len(parts) == 1:
            return EventColumns(positions, parts[0])
        return EventColumns(positions, {name: pa.concat_arrays([p[name] for p in parts]) for name in COLUMN_TYPES})


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
