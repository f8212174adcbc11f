"""JSON lines -> event columns a block at a time: the per-line mapping of :mod:`.records`, by column.

Why: parsing a JSON line is cheap (orjson); what costs is mapping each record into an event dict
(dozens of dict lookups per line) and turning those dicts back into Arrow columns. A block of a
file's lines mostly holds a few record *shapes* (the same keys in the same order: Zeek writes every
record of a log that way), so the mapping is decided once per shape (which key feeds which column,
which keys stay attributes) and each column is then computed over the shape's records at once.

The per-line path (:meth:`JsonParser.parse` then :meth:`_RecordMapper.finish`) stays the
reference: this module reproduces its rows exactly for the records it takes and leaves every
other line to it. It leaves: lines orjson refuses or that :func:`.json.loads` would decode again
(a float of int64 magnitude, deep nesting), non-objects, shapes without a time key or with more
than one detailed-label key, small groups, and any record with a value it does not map the
reference's way for sure (a time that is not an epoch number in seconds or that the reference
refuses, a non-integer count or port, a negative count, a value past its column's range, a non-text
address). Those records go through the reference one by one, so their rows and quarantine
reasons are the reference's. ``tests/ingest/formats/test_json_columns.py`` checks the equality.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import compress
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loganomaly.errors import ParseError
from loganomaly.ingest.formats.base import EventColumns
from loganomaly.ingest.formats.records import (
    _COMPONENT_KEYS,
    _DETAILED_LABEL_KEYS,
    _ENTITY_KEYS,
    _LABEL_KEYS,
    _LEVEL_KEYS,
    _MESSAGE_KEYS,
    _NOTICE_ENTITY_KEYS,
    _STATUS_KEYS,
    _WARNING_ZEEK_PATHS,
)
from loganomaly.ingest.formats.timestamps import _EPOCH, _MAX_EPOCH_S, parse_timestamp
from loganomaly.ingest.formats.values import _MISSING, _flatten, normalize_level

#: Groups smaller than this go to the per-line path: deciding a shape's plan and building its
#: columns has a fixed cost that a handful of records does not repay.
MIN_GROUP = 8
#: orjson gives floats for integer literals past 64 bits; such floats need the reference decoder.
_INT64_SPAN = 2**63
_US = dt.timedelta(microseconds=1)
_TEXT_OR_NONE = frozenset({str, type(None)})
_FLOAT = {float}
_STR = pa.string()
_TS = pa.timestamp("us", "UTC")
_MAP = pa.map_(pa.string(), pa.string())
#: Zeek connection keys -> (event column, kind, lowest, highest); "str" columns have no range.
_NET: dict[str, tuple[str, str, int, int]] = {
    "id.orig_h": ("src_addr", "str", 0, 0),
    "id.orig_p": ("src_port", "int", -(2**31), 2**31 - 1),
    "id.resp_h": ("dst_addr", "str", 0, 0),
    "id.resp_p": ("dst_port", "int", -(2**31), 2**31 - 1),
    "proto": ("proto", "str", 0, 0),
    "duration": ("duration", "float", 0, 0),
    # Counts: negative ones are the reference's error (finish), so the range starts at 0.
    "orig_bytes": ("bytes_out", "int", 0, 2**63 - 1),
    "resp_bytes": ("bytes_in", "int", 0, 2**63 - 1),
    "orig_pkts": ("packets_out", "int", 0, 2**63 - 1),
    "resp_pkts": ("packets_in", "int", 0, 2**63 - 1),
}
_ARROW_TYPES: dict[str, pa.DataType] = {
    "src_addr": _STR,
    "dst_addr": _STR,
    "proto": _STR,
    "src_port": pa.int32(),
    "dst_port": pa.int32(),
    "duration": pa.float64(),
    "bytes_out": pa.int64(),
    "bytes_in": pa.int64(),
    "packets_out": pa.int64(),
    "packets_in": pa.int64(),
}
#: Keys the record mapping reads (besides the time key): a time key among them is left per line.
_MAPPED_KEYS = frozenset(
    (*_NET, *_STATUS_KEYS, *_COMPONENT_KEYS, *_LEVEL_KEYS, *_MESSAGE_KEYS, *_LABEL_KEYS, *_DETAILED_LABEL_KEYS,
     *_NOTICE_ENTITY_KEYS, "uri", "method", "name", "note")
)  # fmt: skip
#: The columns :func:`map_block` fills, with their Arrow types (the ``events`` table's).
COLUMN_TYPES: dict[str, pa.DataType] = {
    "ts": _TS,
    "format": _STR,
    "entity": _STR,
    "level": _STR,
    "component": _STR,
    "message": _STR,
    "status": _STR,
    "label": _STR,
    "attributes": _MAP,
    **_ARROW_TYPES,
}


def constant(value: str | None, n: int) -> pa.Array:
    """A string column of ``n`` copies of ``value`` (null when None), built by Arrow: a Python list
    of ``n`` references converted one by one cost about 40 ns a row (0.3 ms an 8,192-row block)."""
    return pa.repeat(pa.scalar(value, _STR), n)


def tiled(names: Sequence[str], n: int) -> pa.Array:
    """``names`` repeated ``n`` times (the keys of a map column with ``len(names)`` entries a row),
    taken from one small array rather than converted from a list of ``n * len(names)`` strings."""
    return pa.array(list(names), _STR).take(pa.array(np.tile(np.arange(len(names), dtype=np.int32), n)))


def ascii_digits(values: pa.Array) -> pa.Array:
    """Whether each value is 1 to 18 ASCII digits (``^[0-9]{1,18}$``), by two byte-wise
    kernels: a fifth of the regular expression's time, and there are many count columns."""
    return pc.and_(pc.ascii_is_decimal(values), pc.less_equal(pc.binary_length(values), 18))


def true_mask(mask: pa.Array) -> np.ndarray:
    """An Arrow boolean array as a numpy one, null as false."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def attributes_map(
    names: Sequence[str],
    columns: Sequence[pa.Array],
    n: int,
    *,
    absent: str | None = None,
    keep: np.ndarray | None = None,
) -> pa.Array:
    """A ``map<string,string>`` column from per-name columns of ``n`` rows, entries in ``names``
    order. A cell leaves no entry when it is null, equal to ``absent`` (a format's mark of a
    missing value: ``""`` for CSV and Loghub fields, syslog's NILVALUE ``-``) or false in
    ``keep`` (``n x len(names)``: Loghub leaves out the field its entity came from).

    Why one builder: every block parser ends with this map, and the reference parsers differ
    only in which cells they leave out. The cells are taken row-major from the concatenated
    columns, so the keys are one tiled array whatever is left out.
    """
    k = len(names)
    if k == 0:
        empty = pa.array([], _STR)
        return pa.MapArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), empty, empty)
    order = (np.arange(k, dtype=np.int64)[None, :] * n + np.arange(n, dtype=np.int64)[:, None]).ravel()
    items = pa.concat_arrays([c.cast(_STR) for c in columns]).take(pa.array(order))
    keys = tiled(names, n)
    present = true_mask(pc.is_valid(items) if absent is None else pc.not_equal(items, absent))
    if keep is not None:
        present &= keep.reshape(-1)
    if present.all():
        offsets = np.arange(0, n * k + 1, k, dtype=np.int32)
    else:
        offsets = np.concatenate(([0], np.cumsum(present.reshape(n, k).sum(axis=1)))).astype(np.int32)
        mask = pa.array(present)
        keys, items = keys.filter(mask), items.filter(mask)
    return pa.MapArray.from_arrays(pa.array(offsets), keys, items)


def true_rows(mask: pa.Array) -> np.ndarray:
    """Indices where an Arrow boolean array is true (null as false)."""
    return np.flatnonzero(true_mask(mask))


def complete(
    rows: np.ndarray, out: dict[str, pa.Array], bad: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, pa.Array]] | None:
    """A column-wise block's rows less the ``bad`` ones, with every event column of
    :data:`COLUMN_TYPES` (the ones not in ``out`` as nulls), cast to the ``events`` table's
    types; None when no row is left. The block parsers of every format end here."""
    if bad is not None and bad.any():
        keep = pa.array(~bad)
        rows = rows[~bad]
        out = {name: values.filter(keep) for name, values in out.items()}
    if len(rows) == 0:
        return None
    n = len(rows)
    arrays = {name: out[name] if name in out else pa.nulls(n, typ) for name, typ in COLUMN_TYPES.items()}
    for name, typ in COLUMN_TYPES.items():
        if arrays[name].type != typ:
            arrays[name] = arrays[name].cast(typ)
    return rows, arrays


#: The missing markers (``-``, ``""``, ``(empty)``) as an Arrow value set.
MISSING_ARRAY = pa.array(sorted(_MISSING), _STR)


def null_missing(column: pa.Array) -> pa.Array:
    """A text column with its missing markers as null (:func:`.values._as_str` of text; for
    one column, :func:`_first_valid` with :func:`_not_missing`); unchanged when it holds none."""
    missing = pc.is_in(column, value_set=MISSING_ARRAY)
    return pc.if_else(missing, None, column) if pc.any(missing).as_py() else column


def _text(value: Any) -> str:
    """``json.dumps`` of a non-text value (an attribute's or a status's), faster for ints."""
    return int.__repr__(value) if value.__class__ is int else json.dumps(value)


def _as_str_column(values: Sequence[Any]) -> list[str | None]:
    """:func:`.values._as_str` over a column: text (missing markers -> None), others as JSON."""
    return [
        (None if v in _MISSING else v) if v.__class__ is str else (None if v is None else _text(v)) for v in values
    ]


def _micros(values: Sequence[Any], tz: dt.tzinfo | None, bad: list[bool]) -> np.ndarray:
    """Epoch microseconds of the time column, exactly as the reference's datetimes; a value the
    reference refuses marks its row ``bad`` (the reference gives the reason)."""
    if set(map(type, values)) == _FLOAT:
        arr = np.asarray(values, dtype=np.float64)
        if bool(np.all((arr >= 0) & (arr < _MAX_EPOCH_S))):
            # datetime.fromtimestamp: whole seconds plus the fraction's microseconds rounded half
            # to even (CPython's _PyTime_ObjectToTimeval); np.rint rounds half to even too.
            frac, whole = np.modf(arr)
            micros: np.ndarray = whole.astype(np.int64) * 1_000_000 + np.rint(frac * 1e6).astype(np.int64)
            return micros
    out: list[int] = []
    for i, v in enumerate(values):
        cls = v.__class__
        if cls is int and 0 <= v < _MAX_EPOCH_S:
            out.append(v * 1_000_000)
            continue
        if cls is float and 0 <= v < _MAX_EPOCH_S:
            fraction, seconds = math.modf(v)
            out.append(int(seconds) * 1_000_000 + round(fraction * 1e6))
            continue
        try:
            when = parse_timestamp(v, tz)
        except (ParseError, ValueError, OverflowError):
            bad[i] = True
            out.append(0)
        else:
            out.append((when - _EPOCH) // _US)
    return np.asarray(out, dtype=np.int64)


def _first_valid(
    columns: Sequence[Sequence[Any]], n: int, valid: Callable[[Any], bool]
) -> tuple[list[Any], list[int]]:
    """Per row, the value of the first of ``columns`` whose value is ``valid`` and its index
    (``len(columns)`` when none is): the reference's loop over a key list, column-wise."""
    if len(columns) == 1:
        only = columns[0]
        if _all_valid(only, valid):
            return list(only), [0] * n
        refused = _REFUSED.get(valid)
        if refused is not None:
            # The same test as a set lookup, no call per value (a third of the time); an
            # unhashable value (a list) raises and takes the general loop.
            try:
                found = [None if v in refused else v for v in only]
            except TypeError:
                pass
            else:
                return found, [1 if v is None else 0 for v in found]
        chosen = [0 if valid(v) else 1 for v in only]
        return [v if c == 0 else None for v, c in zip(only, chosen, strict=True)], chosen
    values: list[Any] = [None] * n
    chosen = [len(columns)] * n
    for r in range(n):
        for j, col in enumerate(columns):
            v = col[r]
            if valid(v):
                values[r] = v
                chosen[r] = j
                break
    return values, chosen


def _all_valid(values: Sequence[Any], valid: Callable[[Any], bool]) -> bool:
    """Whether every value is ``valid``, by C-speed membership tests (the common column)."""
    if None in values:
        return False
    if valid is _not_none:
        return True
    if valid is _entity_ok:
        return "" not in values and "-" not in values
    try:
        return _MISSING.isdisjoint(values)  # _not_missing
    except TypeError:  # an unhashable value (a list): value by value
        return all(valid(v) for v in values)


def _not_missing(v: Any) -> bool:
    return v is not None and not (v.__class__ is str and v in _MISSING)


def _not_none(v: Any) -> bool:
    return v is not None


def _entity_ok(v: Any) -> bool:
    return v is not None and v != "" and v != "-"


#: The values each test above refuses, as a set: ``v in set`` is the test for any hashable
#: ``v`` (strings are never equal to numbers or bools, and None is in every set).
_REFUSED: dict[Callable[[Any], bool], frozenset[Any]] = {
    _not_missing: frozenset({None, *_MISSING}),
    _not_none: frozenset({None}),
    _entity_ok: frozenset({None, "", "-"}),
}


class JsonBlockMapper:
    """Maps blocks of one file's JSON lines to event columns (see the module docstring).

    Made per file by :class:`loganomaly.ingest.formats.json.JsonParser`, for the options it can
    reproduce: no ``timestamp_format`` and no ``*_field`` options (those stay per line).
    """

    def __init__(
        self,
        decode: Callable[[str], Any],
        needs_reference: Callable[[Any, int], bool],
        ts_keys: Sequence[str],
        tz: dt.tzinfo | None,
        default_entity: str | None,
        zeek_log: str | None = None,
    ) -> None:
        self.decode = decode
        self.needs_reference = needs_reference
        self.ts_keys = tuple(ts_keys)
        self.tz = tz
        self.default_entity = default_entity
        self.zeek_log = zeek_log  # the file's Zeek log by name, for records without a string _path

    def map_block(self, texts: Sequence[str]) -> EventColumns | None:
        """Event columns for the lines of ``texts`` this mapper reproduces exactly; the positions
        (indices into ``texts``) of those lines are :attr:`EventColumns.positions`, the others are
        the caller's to parse one by one. None when it takes no line."""
        groups = self._group(texts)
        parts: list[tuple[list[int], dict[str, pa.Array]]] = []
        nested: dict[tuple[str, ...], tuple[list[int], list[dict[str, Any]]]] = {}
        for keys, (positions, records) in groups.items():
            if len(positions) < MIN_GROUP:
                continue
            columns: list[Sequence[Any]] = list(zip(*map(dict.values, records), strict=True))
            classes = [set(map(type, col)) for col in columns]
            expanded = _expand(keys, columns, 0, classes)
            if expanded is not None:
                keys, columns, classes = expanded
            else:
                # Nested objects of varying shapes: each record checked whole as loads does
                # (depth, wide integers), flattened, and grouped again by its flat keys.
                for i, obj in zip(positions, records, strict=True):
                    if not self.needs_reference(obj, 0):
                        flat = _flatten(obj)
                        group = nested.setdefault(tuple(flat), ([], []))
                        group[0].append(i)
                        group[1].append(flat)
                continue
            mapped = self.map_shape(keys, positions, columns, classes)
            if mapped is not None and mapped[0]:
                parts.append(mapped)
        for keys, (positions, records) in nested.items():
            if len(positions) < MIN_GROUP:
                continue
            columns = list(zip(*[r.values() for r in records], strict=True))
            mapped = self.map_shape(keys, positions, columns)
            if mapped is not None and mapped[0]:
                parts.append(mapped)
        if not parts:
            return None
        if len(parts) == 1:
            return EventColumns(parts[0][0], parts[0][1])
        all_positions = [p for pos, _ in parts for p in pos]
        arrays = {name: pa.concat_arrays([cols[name] for _, cols in parts]) for name in COLUMN_TYPES}
        return EventColumns(all_positions, arrays)

    def _group(self, texts: Sequence[str]) -> dict[tuple[str, ...], tuple[list[int], list[dict[str, Any]]]]:
        """The block's lines decoded and grouped by their keys (in order): positions and records
        per key tuple; lines orjson refuses and non-objects are left out (the reference's).

        The common block, objects of one shape that all decode, takes C-level passes (``map``,
        one set of types, one set of key tuples) instead of a Python loop over its lines.
        """
        decode = self.decode
        try:
            objs = list(map(decode, texts))
        except ValueError:
            objs = None  # a line orjson refuses: the loop below leaves it out
        if objs is not None and set(map(type, objs)) == {dict}:
            shapes = set(map(tuple, objs))
            if len(shapes) == 1:
                return {shapes.pop(): (list(range(len(objs))), objs)}
        groups: dict[tuple[str, ...], tuple[list[int], list[dict[str, Any]]]] = {}
        for i, obj in enumerate(objs) if objs is not None else self._decoded(texts):
            if obj.__class__ is not dict:
                continue
            key = tuple(obj)
            group = groups.get(key)
            if group is None:
                groups[key] = ([i], [obj])
            else:
                group[0].append(i)
                group[1].append(obj)
        return groups

    def _decoded(self, texts: Sequence[str]) -> Iterator[tuple[int, Any]]:
        """Position and value of each line orjson decodes (a refused line: the reference decides
        between an error and the standard library's value)."""
        decode = self.decode
        for i, text in enumerate(texts):
            try:
                yield i, decode(text)
            except ValueError:
                continue

    def map_shape(
        self,
        keys: tuple[str, ...],
        positions: list[int],
        columns: list[Sequence[Any]],
        column_classes: list[set[type]] | None = None,
    ) -> tuple[list[int], dict[str, pa.Array]] | None:
        """The columns of one shape's records (``columns``: one value sequence per key): the
        reference's ``JsonParser.parse`` and ``_RecordMapper.net_fields``/``finish``, decided
        once for ``keys`` and run per column. Public because the Zeek TSV parser maps its typed
        columns through it too (a Zeek log is one shape), so both formats share one mapping.
        Returns the positions mapped and their columns; positions left out, and the whole shape
        when ``None``, are parsed line by line by the reference."""
        index = {k: j for j, k in enumerate(keys)}
        ts_key = next((k for k in self.ts_keys if k in index), None)
        detailed_keys = [k for k in _DETAILED_LABEL_KEYS if k in index]
        if ts_key is None or len(detailed_keys) > 1 or ts_key in _MAPPED_KEYS:
            # No time (the reference's reason), detailed-label keys overwriting each other, or a
            # time key (timestamp_fields) that the mapping would read again once popped.
            return None
        n = len(positions)
        bad = [False] * n
        if column_classes is None:
            column_classes = [set(map(type, col)) for col in columns]
        for col, classes in zip(columns, column_classes, strict=True):
            # Values orjson may have read differently from the standard library (see json.loads).
            if float in classes:
                if classes == {float} and -_INT64_SPAN < min(col) and max(col) < _INT64_SPAN:
                    pass
                else:
                    for r, v in enumerate(col):
                        if v.__class__ is float and not -_INT64_SPAN < v < _INT64_SPAN:
                            bad[r] = True
            if list in classes:
                for r, v in enumerate(col):
                    if v.__class__ is list and self.needs_reference(v, 1 + _MAX_EXPAND):  # as deep as it may sit
                        bad[r] = True
        ts_col = columns[index[ts_key]]
        if None in ts_col:
            for r, v in enumerate(ts_col):
                if v is None:
                    bad[r] = True  # the reference moves on to the next time key
        # The connection columns: only the values whose conversion is plain (see _NET's kinds).
        net_classes: dict[str, set[type]] = {}
        # Columns of one plain number type, read by numpy (a third of a Python list's conversion
        # to Arrow, and the range check is numpy's too).
        numbers: dict[str, np.ndarray] = {}
        for key, (_, kind, low, high) in _NET.items():
            j = index.get(key)
            if j is None:
                continue
            values = columns[j]
            classes = column_classes[j]
            net_classes[key] = classes
            if kind == "str" and classes <= {str, type(None)}:
                continue
            if kind == "float" and classes <= {float, int, type(None)}:
                if classes == _FLOAT:
                    numbers[key] = np.fromiter(values, np.float64, len(values))
                continue  # orjson gives finite floats only
            if kind == "int" and classes == {int}:
                try:
                    ints = np.fromiter(values, np.int64, len(values))
                except OverflowError:  # past int64: the loop below marks those rows
                    pass
                else:
                    if low <= ints.min() and ints.max() <= high:
                        numbers[key] = ints
                        continue
            for r, v in enumerate(values):
                cls = v.__class__
                if v is None or (cls is str and v in _MISSING):
                    continue
                if kind == "str":
                    ok = cls is str
                elif kind == "int":
                    ok = cls is int and low <= v <= high
                else:
                    ok = (cls is float and math.isfinite(v)) or cls is int
                if not ok:
                    bad[r] = True
        ts_values = [v if not b else 0.0 for v, b in zip(ts_col, bad, strict=True)] if True in bad else ts_col
        micros = _micros(ts_values, self.tz, bad)
        keep: np.ndarray | None = None  # the rows kept, where some are left to the reference
        if True in bad:
            good = [not b for b in bad]
            keep = np.asarray(good, dtype=bool)
            positions = list(compress(positions, good))
            columns = [list(compress(col, good)) for col in columns]
            micros = micros[keep]
            n = len(positions)
            if n == 0:
                return positions, {}
        by_key = {k: columns[j] for k, j in index.items()}
        out: dict[str, Any] = {"ts": pa.array(micros, pa.int64()).view(_TS), "format": constant("json", n)}
        # Keys whose value never reaches the attributes, and keys dropped per row (mask: True = kept).
        dropped = {ts_key, *detailed_keys}
        masks: dict[str, list[bool]] = {}

        event_net: dict[str, list[Any]] = {}
        for key, (column, kind, _, _) in _NET.items():
            if key not in by_key:
                continue
            dropped.add(key)
            values = by_key[key]
            # What is left after the checks above: the plain type, None, or a missing marker.
            classes = net_classes[key]
            if key in numbers:
                plain_numbers = numbers[key] if keep is None else numbers[key][keep]
                out[column] = pa.array(plain_numbers.astype(_ARROW_TYPES[column].to_pandas_dtype(), copy=False))
                continue
            if kind == "str":
                plain = classes == {str} and _MISSING.isdisjoint(values)
                converted = list(values) if plain else [None if v is None or v in _MISSING else v for v in values]
            elif kind == "int":
                converted = list(values) if classes == {int} else [v if v.__class__ is int else None for v in values]
            elif classes == {float}:
                converted = list(values)
            else:
                converted = [None if v is None or v.__class__ is str else float(v) for v in values]
            event_net[column] = converted
        for column, typ in _ARROW_TYPES.items():
            if column in event_net:
                out[column] = pa.array(event_net[column], typ)

        # status, then component: the first key of the list with a value; every key before it popped.
        status_keys = [k for k in _STATUS_KEYS if k in by_key]
        status: list[Any] | pa.Array = [None] * n
        single = _single_text(status_keys, by_key, column_classes, index, dropped)
        if single is not None:
            status = single
        elif status_keys:
            found, chosen = _first_valid([by_key[k] for k in status_keys], n, _not_missing)
            if set(map(type, found)) <= _TEXT_OR_NONE:
                status = found
            else:
                status = [v if v is None or v.__class__ is str else _text(v) for v in found]
            _pop_through(masks, dropped, status_keys, chosen)
        out["status"] = status if isinstance(status, pa.Array) else pa.array(status, _STR)
        paths = by_key.get("_path")
        own = self.zeek_log
        zeek_path: list[str | None] = (
            [v if v.__class__ is str else own for v in paths] if paths is not None else [own] * n
        )
        component_keys = [k for k in _COMPONENT_KEYS if k in by_key]
        component: list[Any] | pa.Array = list(zeek_path)
        single = _single_text(component_keys, by_key, column_classes, index, dropped) if paths is None else None
        if single is not None:
            component = single
        elif component_keys:
            found, chosen = _first_valid([by_key[k] for k in component_keys], n, _not_missing)
            if paths is None and set(map(type, found)) <= _TEXT_OR_NONE:
                component = pa.array(found, _STR)
            else:
                component = [
                    (v if v.__class__ is str else _text(v)) if v is not None else zp
                    for v, zp in zip(found, zeek_path, strict=True)
                ]
            _pop_through(masks, dropped, component_keys, chosen)
        if isinstance(component, pa.Array):
            # Text of one Zeek log for every row (paths is None): the log fills the gaps.
            if own is not None and component.null_count:
                component = pc.fill_null(component, own)
        else:
            component = pa.array(component, _STR)
        out["component"] = component

        # level: the first key with a non-null value, normalised; only that key popped.
        level_keys = [k for k in _LEVEL_KEYS if k in by_key]
        levels: list[Any] = [None] * n
        if level_keys:
            found, chosen = _first_valid([by_key[k] for k in level_keys], n, _not_none)
            cache: dict[str, str | None] = {}
            levels = [
                (cache[v] if v in cache else cache.setdefault(v, normalize_level(v)))
                if v.__class__ is str
                else normalize_level(v)
                for v in found
            ]
            _pop_one(masks, level_keys, chosen)
        warn_note = "note" in by_key
        if paths is None:
            # One Zeek log for every row: one default level.
            default = "warning" if warn_note or own in _WARNING_ZEEK_PATHS else "info"
            out["level"] = pc.fill_null(pa.array(levels, _STR), default) if level_keys else constant(default, n)
        else:
            out["level"] = pa.array(
                [
                    lv if lv is not None else ("warning" if warn_note or zp in _WARNING_ZEEK_PATHS else "info")
                    for lv, zp in zip(levels, zeek_path, strict=True)
                ],
                _STR,
            )

        label_key = next((k for k in _LABEL_KEYS if k in by_key), None)
        if label_key is not None:
            dropped.add(label_key)
            out["label"] = pa.array(_as_str_column(by_key[label_key]), _STR)
        else:
            out["label"] = pa.nulls(n, _STR)
        detailed = _as_str_column(by_key[detailed_keys[0]]) if detailed_keys else None

        # entity: HTTP records' "host" is the server, skipped; id.orig_h counts as the event's src_addr.
        http = "uri" in by_key or "method" in by_key
        entity_keys = [
            k
            for k in (_NOTICE_ENTITY_KEYS if "note" in by_key else _ENTITY_KEYS)
            if (k in by_key and not (http and k == "host"))
        ]
        if entity_keys:
            sources = [event_net["src_addr"] if k == "id.orig_h" else by_key[k] for k in entity_keys]
            found, chosen = _first_valid(sources, n, _entity_ok)
            if set(map(type, found)) <= _TEXT_OR_NONE:
                entity = pa.array(found, _STR)
                if self.default_entity is not None and entity.null_count:
                    entity = pc.fill_null(entity, self.default_entity)
            else:
                entity = pa.array(
                    [(v if v.__class__ is str else str(v)) if v is not None else self.default_entity for v in found],
                    _STR,
                )
            # Keys already dropped (id.orig_h, the event's src_addr) need no mask: no attribute.
            _pop_one(masks, entity_keys, chosen, skip=dropped)
        else:
            entity = constant(self.default_entity, n)
        out["entity"] = entity

        message_keys = [k for k in _MESSAGE_KEYS if k in by_key]
        message: list[Any] = [None] * n
        if message_keys:
            found, chosen = _first_valid([by_key[k] for k in message_keys], n, _not_none)
            message = [v if v is None or v.__class__ is str else json.dumps(v) for v in found]
            _pop_one(masks, message_keys, chosen)

        # attributes: every key left, in the record's order, nulls dropped, values as text.
        attr_keys = [k for k in keys if k not in dropped]
        attr_values: list[Sequence[Any]] = []
        for k in attr_keys:
            values = by_key[k]
            mask = masks.get(k)
            if mask is not None:
                values = [v if keep else None for v, keep in zip(values, mask, strict=True)]
            # The column's types before rows were left out or masked (to None): a superset.
            if not column_classes[index[k]] <= _TEXT_OR_NONE:
                values = [v if v is None or v.__class__ is str else _text(v) for v in values]
            attr_values.append(values)
        if detailed is not None:
            attr_keys.append("detailed_label")
            attr_values.append(detailed)
        out["attributes"] = attributes_map(attr_keys, [pa.array(v, _STR) for v in attr_values], n)

        # The message a record without one gets (the reference's order of rules): Zeek weird
        # records', then connection records' (built in Arrow), then the first attributes.
        conn = "id.orig_h" in by_key or "id.resp_h" in by_key
        names = by_key.get("name")
        # Rows without a message get one here only as weird records (named, of the weird log)
        # or as records without addresses: for connection rows of one other log, nothing to do.
        weird_possible = names is not None and (paths is not None or own == "weird")
        if None in message and (weird_possible or not conn):
            for r in range(n):
                if message[r] is not None:
                    continue
                if zeek_path[r] == "weird" and names is not None and names[r].__class__ is str:
                    message[r] = f"weird {names[r]}"
                elif not conn:
                    pairs = [(k, vals[r]) for k, vals in zip(attr_keys, attr_values, strict=True) if vals[r] is not None]
                    message[r] = " ".join(f"{k}={v}" for k, v in pairs[:8])
        messages = pa.array(message, _STR)
        if conn and messages.null_count:
            messages = pc.coalesce(messages, conn_messages(out, component, n))
        out["message"] = messages
        for column, typ in COLUMN_TYPES.items():
            if column not in out:
                out[column] = pa.nulls(n, typ)
        return positions, out


#: Nesting deeper than this is left to the per-record flattening (and its whole-record check).
_MAX_EXPAND = 8


def _expand(
    keys: tuple[str, ...], columns: list[Sequence[Any]], depth: int, classes: list[set[type]] | None = None
) -> tuple[tuple[str, ...], list[Sequence[Any]], list[set[type]]] | None:
    """The flat keys and columns of a shape whose nested objects have one shape per key: what
    ``_flatten`` gives each record (dotted keys in order of appearance), column by column, with
    each flat column's set of value types (``classes``: those of ``columns``, when known).

    None when a key holds objects in some records only, objects of several shapes, nesting past
    :data:`_MAX_EXPAND`, or when flattening would repeat a key (``"a.b"`` beside ``{"a": {"b"}}``):
    those records are flattened one by one. A shape without nested objects comes back as is.
    """
    if classes is None:
        classes = [set(map(type, col)) for col in columns]
    if not any(dict in c for c in classes):
        return keys, columns, classes
    if depth >= _MAX_EXPAND:
        return None
    out_keys: list[str] = []
    out_columns: list[Sequence[Any]] = []
    out_classes: list[set[type]] = []
    for key, col, col_classes in zip(keys, columns, classes, strict=True):
        if dict not in col_classes:
            out_keys.append(key)
            out_columns.append(col)
            out_classes.append(col_classes)
            continue
        if col_classes != {dict}:
            return None
        shapes = set(map(tuple, col))
        if len(shapes) != 1:
            return None
        sub_keys = shapes.pop()
        sub_columns: list[Sequence[Any]] = list(zip(*map(dict.values, col), strict=True)) if sub_keys else []
        sub = _expand(sub_keys, sub_columns, depth + 1)
        if sub is None:
            return None
        out_keys.extend(f"{key}.{k}" for k in sub[0])
        out_columns.extend(sub[1])
        out_classes.extend(sub[2])
    if len(set(out_keys)) != len(out_keys):
        return None
    return tuple(out_keys), out_columns, out_classes


def conn_messages(out: dict[str, pa.Array], component: list[Any] | pa.Array, n: int) -> pa.Array:
    """``proto component src -> dst:port status`` for every row, in Arrow: the reference's
    ``" ".join(str(p) for p in parts if p)`` (parts null or empty are left out; an address or
    port null, or a port 0, reads ``?``; the source's port is left out and an IPv6 destination
    goes in brackets, see :meth:`.records._RecordMapper.finish`)."""
    # Each rule's kernel runs only where some row needs it (a pass fewer per rule a block does
    # not use: most blocks have no null address, no port 0, no IPv6 address).
    def address(name: str) -> pa.Array:
        a = out.get(name)
        if a is None:
            return constant("?", n)
        return pc.fill_null(a, "?") if a.null_count else a

    def end(addr: str, port: str) -> pa.Array:
        a = address(addr)
        v6 = pc.match_substring(a, ":")
        if pc.any(v6).as_py():
            a = pc.if_else(v6, pc.binary_join_element_wise("[", a, "]", ""), a)
        p = out.get(port)
        if p is None:
            text = constant("?", n)
        else:
            zero = pc.equal(p, 0)
            if pc.any(zero).as_py():
                p = pc.if_else(zero, None, p)
            text = pc.cast(p, _STR)
            if text.null_count:
                text = pc.fill_null(text, "?")
        return pc.binary_join_element_wise(a, text, ":")

    def part(name: str) -> pa.Array:
        values = out.get(name)
        return pa.nulls(n, _STR) if values is None else values

    # "" (a "_path" of "") is left out too
    if isinstance(component, pa.Array):
        blank = pc.equal(component, "")
        comp = pc.if_else(blank, None, component) if pc.any(blank).as_py() else component
    else:
        comp = pa.array([c or None for c in component], _STR)
    arrow = constant("->", n)
    return pc.binary_join_element_wise(
        part("proto"), comp, address("src_addr"), arrow, end("dst_addr", "dst_port"), part("status"), " ",
        null_handling="skip",
    )


def _single_text(
    keys: list[str],
    by_key: Mapping[str, Sequence[Any]],
    classes: Sequence[set[type]],
    index: Mapping[str, int],
    dropped: set[str],
) -> pa.Array | None:
    """The status or component column when one key of the rule's list is present and every value
    it holds is text or null: its values with the missing markers as null, in Arrow, and the key
    added to ``dropped`` (the reference pops it either way). None otherwise: the caller takes the
    per-row rule (:func:`_first_valid`, :func:`_pop_through`)."""
    if len(keys) != 1 or not classes[index[keys[0]]] <= _TEXT_OR_NONE:
        return None
    dropped.add(keys[0])
    return null_missing(pa.array(by_key[keys[0]], _STR))


def _pop_through(masks: dict[str, list[bool]], dropped: set[str], keys: list[str], chosen: list[int]) -> None:
    """Keys ``keys[:chosen + 1]`` of each row are popped (the reference pops every key it tries)."""
    if len(keys) == 1:
        dropped.add(keys[0])
        return
    for j, key in enumerate(keys):
        masks[key] = _and(masks.get(key), [j > c for c in chosen])


def _pop_one(
    masks: dict[str, list[bool]], keys: list[str], chosen: list[int], skip: set[str] | frozenset[str] = frozenset()
) -> None:
    """Only the chosen key of each row is popped (the reference's level, entity, message loops);
    keys in ``skip`` are left without a mask."""
    for j, key in enumerate(keys):
        if key in skip:
            continue
        masks[key] = _and(masks.get(key), [c != j for c in chosen])


def _and(mask: list[bool] | None, other: list[bool]) -> list[bool]:
    return other if mask is None else [a and b for a, b in zip(mask, other, strict=True)]
