"""Zeek TSV lines -> event columns a segment at a time, in Arrow, for :mod:`.zeek`.

Why: a Zeek log is one record shape per header (its ``#fields``), so its mapping into events
can be decided once per header. The earlier block path did decide it once, but still touched
every value in Python (splitting, marker and number checks, conversions, the record mapping
shared with JSON): two thirds of a parsing task's time. Here the cells are split by Arrow
(``split_pattern``), the checks are RE2 matches, numbers are Arrow casts (correctly rounded, as
Python's ``float`` and ``int`` are), and the record mapping (status, component, level, label,
entity, message, attributes) runs as column kernels. Python touches only the distinct values of
set, vector and bool columns and of the chosen level.

The per-line parser (:meth:`.zeek.ZeekParser.parse` and :meth:`.records._RecordMapper.finish`)
stays the reference: a segment is taken only under a header whose mapping this module
reproduces (see :func:`map_segment`), and within it every row whose values are not read the
plain way (a time that is not a plain epoch decimal or integer, a count or port that is not
ASCII digits in range, a duration that is not a plain decimal, a bool that is not ``T``/``F``,
rows the reference maps by another rule) is left to the reference, which gives its row or its
quarantine reason. ``tests/ingest/formats/test_zeek_columns.py`` checks the equality.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loganomaly.ingest.formats.base import FormatOptions
from loganomaly.ingest.formats.json_columns import (
    _NET,
    MISSING_ARRAY,
    ascii_digits,
    attributes_map,
    complete,
    conn_messages,
    constant,
    null_missing,
    true_mask,
    true_rows,
)
from loganomaly.ingest.formats.records import (
    _COMPONENT_KEYS,
    _DETAILED_LABEL_KEYS,
    _ENTITY_KEYS,
    _LABEL_KEYS,
    _LEVEL_KEYS,
    _MESSAGE_KEYS,
    _STATUS_KEYS,
    _WARNING_ZEEK_PATHS,
)
from loganomaly.ingest.formats.timestamps import _MAX_EPOCH_S
from loganomaly.ingest.formats.values import _MISSING, _as_float, _as_int, normalize_level

#: Times read here: plain decimals with a point (``parse_epoch`` reads them as floats) or ASCII
#: digits (ints there); anything else (a sign, an exponent, other digits) is read per line.
_DECIMAL_TIME = r"^[0-9]{1,12}\.[0-9]{1,9}$"
#: Durations read here: ASCII digits, an optional point and fraction.
_DECIMAL = r"^[0-9]{1,20}(\.[0-9]{1,20})?$"
_STR = pa.string()
_MAX_ATTRIBUTES_IN_MESSAGE = 8

Valid = Callable[[pa.Array], np.ndarray]


class ZeekHeader(Protocol):
    """What this module reads of a :class:`.zeek.ZeekParser`: the state its header lines set."""

    opts: FormatOptions
    sep: str
    set_sep: str
    empty: str
    unset: str
    path: str | None
    columns: list[tuple[str, str]]
    split_last: int
    ts_index: int | None
    net: list[tuple[int, str, str, Callable[[str, Any], Any]]]
    plain: list[tuple[int, str]]
    special: list[tuple[int, str, bool]]


def _not_missing(col: pa.Array) -> np.ndarray:
    """Set and not a missing marker (``-``, ``""``, ``(empty)``): the status and component rule."""
    return true_mask(pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=MISSING_ARRAY))))


def _not_none(col: pa.Array) -> np.ndarray:
    """Set at all: the level and message rule."""
    return true_mask(pc.is_valid(col))


def _entity_ok(col: pa.Array) -> np.ndarray:
    """Set, not empty and not ``-``: the entity rule."""
    return true_mask(pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=pa.array(["", "-"], _STR)))))


def _first_valid(columns: list[pa.Array], valid: Valid, m: int) -> tuple[pa.Array, np.ndarray]:
    """Per row, the value of the first column whose value is ``valid`` and that column's index
    (``len(columns)`` where none is): the reference's loop over a key list."""
    chosen = np.full(m, len(columns), dtype=np.int64)
    picked: list[pa.Array] = []
    for j, col in enumerate(columns):
        ok = valid(col)
        chosen[(chosen == len(columns)) & ok] = j
        picked.append(pc.if_else(pa.array(ok), col, None))
    found = picked[0] if len(picked) == 1 else pc.coalesce(*picked)
    return found, chosen


def _attribute_messages(attributes: pa.MapArray) -> pa.Array:
    """``key=value`` of each row's first eight attributes, joined by spaces: the reference's
    message for a record with neither a message nor an address."""
    pairs = pc.binary_join_element_wise(attributes.keys, attributes.items, "=")
    lists = pa.ListArray.from_arrays(attributes.offsets, pairs)
    return pc.binary_join(pc.list_slice(lists, 0, _MAX_ATTRIBUTES_IN_MESSAGE), " ")


def _special(values: pa.Array, is_list: bool, state: ZeekHeader) -> tuple[pa.Array, np.ndarray]:
    """A set, vector or bool column as :meth:`.zeek.ZeekParser.parse` writes it into the
    attributes (a JSON list, ``"true"``/``"false"``), converted once per distinct value; and the
    rows whose value it refuses (a bool that is not ``T`` or ``F``: the reference's reason)."""
    coded = pc.dictionary_encode(values)
    unset, empty, set_sep = state.unset, state.empty, state.set_sep
    converted: list[str | None] = []
    refused: list[bool] = []
    for v in coded.dictionary.to_pylist():
        refuse = False
        if v == unset:
            text = None
        elif is_list:
            text = "[]" if v == empty else json.dumps(v.split(set_sep) if set_sep else [v])
        elif v == "T" or v == "F":
            text = "true" if v == "T" else "false"
        else:
            text, refuse = None, True
        converted.append(text)
        refused.append(refuse)
    codes = np.asarray(coded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    return pa.array(converted, _STR).take(coded.indices), np.asarray(refused, dtype=bool)[codes]


def shape_is_plain(state: ZeekHeader) -> bool:
    """Whether this module reproduces the mapping of the parser's current header: default
    options (checked by the caller), one time column ``ts``, no IoT-23 joined last column, no
    repeated names, no ``_path`` or ``note`` column, no warning path (notice, weird, ...), at
    most one key of each of the label, detailed-label and component lists."""
    columns = state.columns
    if not columns or state.ts_index is None or state.split_last:
        return False
    names = [name for name, _ in columns]
    path = state.path
    return not (
        len(set(names)) != len(names)
        or names[state.ts_index] != "ts"
        or "_path" in names
        or "note" in names
        or path in _WARNING_ZEEK_PATHS
        or (path is not None and path in _MISSING)
        or sum(k in names for k in _LABEL_KEYS) > 1
        or sum(k in names for k in _DETAILED_LABEL_KEYS) > 1
        or sum(k in names for k in _COMPONENT_KEYS) > 1
    )


def map_segment(
    state: ZeekHeader, texts: pa.Array, min_rows: int
) -> tuple[np.ndarray, dict[str, pa.Array]] | None:
    """Event columns of consecutive data lines under one header (``texts``, a string array),
    for the rows the reference maps the plain way: their indices into ``texts`` and their
    columns. None when the header's mapping is not reproduced here (:func:`shape_is_plain`) or
    fewer than ``min_rows`` rows are taken; the rows left out are the reference's."""
    if not shape_is_plain(state):
        return None
    names = [name for name, _ in state.columns]
    sep, unset, empty, width = state.sep, state.unset, state.empty, len(state.columns)
    parts = pc.split_pattern(texts, sep)
    fits = pc.equal(pc.list_value_length(parts), width)
    rows = true_rows(fits)
    m = len(rows)
    if m < min_rows:
        return None
    flat = pc.list_flatten(parts if m == len(texts) else parts.filter(fits))

    def cell(i: int) -> pa.Array:
        return flat.take(pa.array(np.arange(i, m * width, width, dtype=np.int64)))

    bad = np.zeros(m, dtype=bool)
    markers = pa.array(sorted({unset, empty}), _STR)
    absent_set = pa.array(sorted({unset, empty} | _MISSING), _STR)

    # ts: parse_epoch's reading of a plain decimal (a float) or of digits (an int), as the JSON
    # mapping converts either (datetime.fromtimestamp's rounding: half to even, as np.rint).
    raw_ts = cell(state.ts_index)  # type: ignore[arg-type]
    decimal_ts = true_mask(pc.match_substring_regex(raw_ts, _DECIMAL_TIME))
    integer_ts = true_mask(ascii_digits(raw_ts))
    seconds = np.asarray(
        pc.fill_null(pc.cast(pc.if_else(pa.array(decimal_ts), raw_ts, None), pa.float64()), 0.0),
        dtype=np.float64,
    )
    whole_seconds = np.asarray(
        pc.fill_null(pc.cast(pc.if_else(pa.array(integer_ts), raw_ts, None), pa.int64()), 0), dtype=np.int64
    )
    bad |= ~(decimal_ts | integer_ts) | (seconds >= _MAX_EPOCH_S) | (whole_seconds >= _MAX_EPOCH_S)
    whole_seconds = np.where(whole_seconds >= _MAX_EPOCH_S, 0, whole_seconds)
    seconds = np.where(seconds >= _MAX_EPOCH_S, 0.0, seconds)
    fraction, whole = np.modf(seconds)
    micros = np.where(
        decimal_ts,
        whole.astype(np.int64) * 1_000_000 + np.rint(fraction * 1e6).astype(np.int64),
        whole_seconds * 1_000_000,
    )
    out: dict[str, pa.Array] = {"ts": pa.array(micros, pa.int64()).view(pa.timestamp("us", "UTC"))}

    # The connection columns; an address unset in the file (not merely "-") is kept apart: the
    # reference builds a connection message only for a record with an address present.
    marker_null: dict[str, pa.Array] = {}
    for i, key, column, conv in state.net:
        values = cell(i)
        absent = pc.is_in(values, value_set=absent_set)
        if conv is _as_int:
            digits = ascii_digits(values)
            bad |= ~true_mask(pc.or_(absent, digits))
            number = pc.cast(pc.if_else(digits, values, None), pa.int64())
            bad |= true_mask(pc.greater(number, _NET[key][3]))  # digits: never below the range
            out[column] = number
        elif conv is _as_float:
            decimal = pc.match_substring_regex(values, _DECIMAL)
            bad |= ~true_mask(pc.or_(absent, decimal))
            number = pc.cast(pc.if_else(decimal, values, None), pa.float64())
            out[column] = number
        else:
            marker_null[key] = pc.if_else(pc.is_in(values, value_set=markers), None, values)
            out[column] = pc.if_else(absent, None, values)

    # Plain columns (unset -> no value, empty -> ""), then sets, vectors and bools: the
    # reference's record holds them in this order, and so do the attributes.
    by_key: dict[str, pa.Array] = {}
    for i, name in state.plain:
        values = cell(i)
        is_unset = pc.equal(values, unset)
        converted = values
        if empty != unset:
            is_empty = pc.equal(values, empty)
            if pc.any(is_empty).as_py():
                converted = pc.if_else(is_empty, "", converted)
        if pc.any(is_unset).as_py():
            converted = pc.if_else(is_unset, None, converted)
        by_key[name] = converted
    for i, name, is_list in state.special:
        converted, refused = _special(cell(i), is_list, state)
        bad |= refused
        by_key[name] = converted

    if "host" in names and ("uri" in names or "method" in names):
        # The reference sees an HTTP record (host is the server, not the entity) only where uri
        # or method is set; this mapping, always: rows with neither are the reference's.
        http = [_not_none(by_key[k]) for k in ("uri", "method") if k in by_key]
        bad |= ~np.logical_or.reduce(http)
    addresses = [_not_none(marker_null[k]) for k in ("id.orig_h", "id.resp_h") if k in marker_null]
    if addresses:
        bad |= ~np.logical_or.reduce(addresses)
    if int(m - bad.sum()) < min_rows:
        return None

    # The record mapping (_RecordMapper.finish), decided for the header's names.
    dropped = {"ts", *(key for _, key, _, _ in state.net)}
    kept: dict[str, np.ndarray] = {}  # per-row masks: False where the key was popped

    def pop_through(keys: list[str], chosen: np.ndarray) -> None:
        # The reference pops every key it tries, up to the one chosen.
        if len(keys) == 1:
            dropped.add(keys[0])
            return
        for j, key in enumerate(keys):
            kept[key] = kept.get(key, np.ones(m, dtype=bool)) & (chosen < j)

    def pop_one(keys: list[str], chosen: np.ndarray) -> None:
        for j, key in enumerate(keys):
            kept[key] = kept.get(key, np.ones(m, dtype=bool)) & (chosen != j)

    status_keys = [k for k in _STATUS_KEYS if k in by_key]
    if status_keys:
        out["status"], chosen = _first_valid([by_key[k] for k in status_keys], _not_missing, m)
        pop_through(status_keys, chosen)

    component_keys = [k for k in _COMPONENT_KEYS if k in by_key]
    path = state.path
    if component_keys:
        key = component_keys[0]
        dropped.add(key)
        values = by_key[key]
        ok = pa.array(_not_missing(values))
        component = pc.if_else(ok, values, None if path is None else path)
    else:
        component = constant(path, m)
    out["component"] = component

    level_keys = [k for k in _LEVEL_KEYS if k in by_key]
    if level_keys:
        found, chosen = _first_valid([by_key[k] for k in level_keys], _not_none, m)
        coded = pc.dictionary_encode(found)
        normal = pa.array([normalize_level(v) for v in coded.dictionary.to_pylist()], _STR)
        out["level"] = pc.fill_null(normal.take(coded.indices), "info")
        pop_one(level_keys, chosen)
    else:
        out["level"] = constant("info", m)

    label_key = next((k for k in _LABEL_KEYS if k in by_key), None)
    if label_key is not None:
        dropped.add(label_key)
        out["label"] = null_missing(by_key[label_key])
    detailed_key = next((k for k in _DETAILED_LABEL_KEYS if k in by_key), None)
    if detailed_key is not None:
        dropped.add(detailed_key)

    http_record = "uri" in by_key or "method" in by_key
    entity_keys = [
        k for k in _ENTITY_KEYS if (k in by_key or k in marker_null) and not (http_record and k == "host")
    ]
    if entity_keys:
        sources = [out["src_addr"] if k == "id.orig_h" else by_key[k] for k in entity_keys]
        found, chosen = _first_valid(sources, _entity_ok, m)
        default = state.opts.default_entity
        out["entity"] = found if default is None else pc.fill_null(found, default)
        pop_one(entity_keys, chosen)
    else:
        out["entity"] = constant(state.opts.default_entity, m)

    message_keys = [k for k in _MESSAGE_KEYS if k in by_key]
    message: pa.Array = pa.nulls(m, _STR)
    if message_keys:
        message, chosen = _first_valid([by_key[k] for k in message_keys], _not_none, m)
        pop_one(message_keys, chosen)

    attr_names = [k for k in by_key if k not in dropped]
    attr_columns = [
        by_key[k] if k not in kept else pc.if_else(pa.array(kept[k]), by_key[k], None) for k in attr_names
    ]
    if detailed_key is not None:
        attr_names.append("detailed_label")
        attr_columns.append(null_missing(by_key[detailed_key]))
    attributes = attributes_map(attr_names, attr_columns, m)
    out["attributes"] = attributes

    if message.null_count:
        if "id.orig_h" in names or "id.resp_h" in names:
            message = pc.coalesce(message, conn_messages(out, component, m))
        else:
            message = pc.coalesce(message, _attribute_messages(attributes))
    out["message"] = message
    out["format"] = constant("zeek", m)
    done = complete(rows, out, bad)
    return done
