"""Value converters shared by the log formats: typed event columns, levels, flattened records."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from loganomaly.errors import ParseError
from loganomaly.lake.schemas import EVENT_NUMERIC_FIELDS

_INT_RE = re.compile(r"[+-]?\d+")
#: Values meaning "no value" in the formats we read (Zeek unset/empty markers, CSV blanks).
_MISSING = frozenset({"-", "", "(empty)"})


def _as_str(name: str, value: Any) -> str | None:
    if value.__class__ is str:
        return None if value in _MISSING else value
    return None if value is None else json.dumps(value)


def _as_int(name: str, value: Any) -> int | None:
    """An int column's value: ints, integral floats and integer text; bools and ``1.5`` refused."""
    cls = value.__class__
    if cls is int:
        return value  # type: ignore[no-any-return]
    if cls is str:
        if value.isascii() and value.isdigit() and len(value) < 40:
            return int(value)
        if value in _MISSING:
            return None
        text = value.strip()
        if len(text) < 40 and _INT_RE.fullmatch(text):
            return int(text)
    elif value is None:
        return None
    elif cls is float and value.is_integer():
        return int(value)
    raise ParseError(f"field {name} is not an integer: {str(value)[:40]!r}")


def _as_float(name: str, value: Any) -> float | None:
    """A float column's value: numbers and numeric text, finite; bools refused."""
    cls = value.__class__
    if cls is float:
        number = value
    elif cls is int:
        return float(value)
    elif cls is str:
        if value in _MISSING:
            return None
        try:
            number = float(value)
        except ValueError:
            raise ParseError(f"field {name} is not a number: {value[:40]!r}") from None
    elif value is None:
        return None
    else:
        raise ParseError(f"field {name} is not a number: {str(value)[:40]!r}")
    if not math.isfinite(number):
        raise ParseError(f"field {name} is not a finite number: {value!r}")
    return number  # type: ignore[no-any-return]


#: (column, Arrow type name, lowest, highest) of every integer column of ``events``.
INT_COLUMN_RANGES: tuple[tuple[str, str, int, int], ...] = tuple(
    (name, *{"bigint": ("int64", -(2**63), 2**63 - 1), "int": ("int32", -(2**31), 2**31 - 1)}[tp])
    for name, tp in EVENT_NUMERIC_FIELDS.items()
    if tp in ("bigint", "int")
)


def check_int_ranges(event: Mapping[str, Any]) -> None:
    """Refuse an event whose integer column cannot be stored (e.g. ``bytes_out`` past int64).

    Python ints are unbounded; the table's are not, and one such value would fail the whole
    Arrow batch (and with it every rerun of the file), so it is this line's problem instead.

    Raises:
        ParseError: naming the column, the value and the type's range.
    """
    for name, kind, low, high in INT_COLUMN_RANGES:
        value = event.get(name)
        if value.__class__ is int and not low <= value <= high:
            shown = str(value) if len(str(value)) <= 20 else f"{value:.3g}"
            raise ParseError(f"{name} {shown} out of {kind} range")


_CONVERTERS: dict[type, Callable[[str, Any], Any]] = {str: _as_str, int: _as_int, float: _as_float}


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects -> dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); flat input as is.

    Keys land in the order they are first met and the last value of a repeated key wins
    (``{"a.b": 1, "a": {"b": 2}}`` -> ``{"a.b": 2}``); one output dict is filled in place
    rather than one per nested object merged upwards, which gives the same dict, faster.
    """
    if not prefix:
        for value in obj.values():
            if value.__class__ is dict:
                break
        else:
            return obj
    out: dict[str, Any] = {}
    _flatten_into(out, obj, prefix)
    return out


def _flatten_into(out: dict[str, Any], obj: dict[str, Any], prefix: str) -> None:
    for key, value in obj.items():
        if isinstance(value, dict):
            _flatten_into(out, value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value


_LEVELS = {
    "v": "debug",
    "verbose": "debug",
    "trace": "debug",
    "d": "debug",
    "dbg": "debug",
    "debug": "debug",
    "i": "info",
    "info": "info",
    "information": "info",
    "informational": "info",
    "notice": "notice",
    "n": "notice",
    "w": "warning",
    "warn": "warning",
    "warning": "warning",
    "e": "error",
    "err": "error",
    "error": "error",
    "severe": "error",
    "failure": "error",
    "f": "fatal",
    "fatal": "fatal",
    "a": "fatal",
    "assert": "fatal",
    "crit": "critical",
    "critical": "critical",
    "alert": "alert",
    "emerg": "emerg",
    "emergency": "emerg",
    "panic": "emerg",
}


def normalize_level(value: Any) -> str | None:
    """Map level spellings of many formats (``W``, ``WARN``, ``Warning``, ``SEVERE``) to one set.

    The result is lower case: debug, info, notice, warning, error, fatal, critical, alert,
    emerg (the names :mod:`loganomaly.features.stage` counts), or the lower-cased input if unknown.
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if not text or text == "-":
        return None
    return _LEVELS.get(text, text)


def _attr(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
