"""Loghub pattern lines -> event columns a block at a time, in Arrow (RE2), for :mod:`.loghub`.

Why: per line, the pattern match, the time parse and the event dict with its conversion back to
Arrow columns cost tens of microseconds in Python; Arrow runs the same pattern (RE2, through
``extract_regex``) and the conversions over a whole block in C++.

The per-line parser (:meth:`LoghubParser.parse`) stays the reference: a block plan exists only
for patterns and options whose rows this module reproduces exactly, and within a block it takes
only the lines it reads for sure, leaving every other line to the reference one by one (its row
or its quarantine reason). What it takes: printable-ASCII lines (with tabs), where RE2's ``\\d``,
``\\s``, ``\\S`` and ``.`` match what Python's do (Python's are Unicode-aware, RE2's are not); RE2
is leftmost-first like Python's engine, so the groups are the same. Times without a year take it
from the parser's clock, line after line; such blocks go column-wise all or none (:func:`_yearless`).
What has no plan: patterns RE2 cannot compile (look-arounds), directives other than ``%Y %y %m
%b %d %H %M %S %f`` and the name-only ones, a ``timezone`` option, and level or component fields that sit in an
optional part of the pattern (Python gives None there, Arrow an empty string).
``tests/ingest/formats/test_loghub_columns.py`` checks the equality.
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loganomaly.ingest.formats.base import EventColumns
from loganomaly.ingest.formats.json_columns import attributes_map, complete, constant, true_mask, true_rows
from loganomaly.ingest.formats.timestamps import (
    _EPOCH,
    _MAX_EPOCH_S,
    _MONTHS,
    EPOCH_UNITS,
    TimeFormat,
    utc_micros,
)
from loganomaly.ingest.formats.values import normalize_level

_sre_parser: Any = importlib.import_module("re._parser")
_sre_constants: Any = importlib.import_module("re._constants")

#: Fewer matching lines than this in a block are left to the per-line parser (fixed costs).
MIN_ROWS = 8
#: Lines the block path reads: printable ASCII and tabs.
_PLAIN = r"^[\t -~]*$"
#: Time directives whose values this module converts (the others have no plan).
_KEYS = frozenset("YymbdHMSf")
#: Epoch times the block path converts: ASCII digits that fit an int64 (``parse_epoch``'s exact
#: integer reading; signs, fractions and longer numbers stay per line).
_EPOCH_DIGITS = r"^(?P<t0>[0-9]{1,18})$"
#: A leading field the split path reads (:func:`_split_plan`): a named group of atoms that match
#: no whitespace (``\\d``, ``\\S``, ``\\w``, escaped or plain punctuation, letters and digits,
#: classes of those), each once or more, then ``\\s+``: the field is the line's next token.
_ATOM = r"(?:\\[dSw]|\\[.:/,@|\-]|\[[A-Za-z0-9_.:/,@|\-]+\]|[A-Za-z0-9_:,/@\-])"
_QUANT = r"(?:\+|\{[1-9][0-9]*(?:,[0-9]*)?\})\??"
_LEAD_FIELD = re.compile(r"\(\?P<(\w+)>((?:" + _ATOM + "(?:" + _QUANT + r")?)+)\)\\s\+")
#: The tails the split path reads after the leading fields: the content alone, or a token
#: ending in ``:`` (``<Component>: <Content>``, logpai's usual end) and the content.
_TAIL_CONTENT = "(?P<Content>.*)$"
_TAIL_COLON = re.compile(r"\(\?P<(\w+)>\\S\+\??\):\\s\+\(\?P<Content>\.\*\)\$")


@dataclass(frozen=True)
class BlockPlan:
    """How one parser's lines map to columns (see :func:`plan`)."""

    line_regex: str
    time_fields: tuple[str, ...]
    time_regex: str
    time_keys: tuple[str, ...]
    entity_regex: str | None
    entity_fields: tuple[str, ...]
    default_entity: str | None
    level_field: str | None
    component_field: str | None
    label_field: str | None
    attr_fields: tuple[str, ...]
    epoch: bool
    frac_field: str | None
    #: The time has no year: the parser's clock gives it, line after line (see :func:`_yearless`).
    yearless: bool
    #: The leading fields (name, class) and the tail's token field of :func:`_split_plan`; None:
    #: every line through ``line_regex``.
    split: tuple[tuple[tuple[str, str], ...], str | None] | None = None


def plan(parser: Any) -> BlockPlan | None:
    """The block plan of a :class:`LoghubParser`, or None where its rows are per line only."""
    fmt: TimeFormat | None = parser.time_format
    if fmt is None or not set(fmt.keys) <= _KEYS or parser.clock.tz is not None:
        return None
    if "Content" not in parser.regex.groupindex:
        return None
    optional = _optional_groups(parser.regex.pattern)
    if optional is None or parser.level_field in optional or parser.component_field in optional:
        return None
    line_regex = "(?s)" + _re2(parser.regex.pattern)
    time_regex = _EPOCH_DIGITS if fmt.is_epoch else "^" + _re2(fmt.regex.pattern, name="t") + "$"
    entity_regex = None
    if parser.entity_regex is not None:
        entity_regex = "(?P<e>" + _re2(parser.entity_regex.pattern) + ")"
    for regex in (line_regex, time_regex, entity_regex):
        if regex is not None and not _compiles(regex):
            return None
    return BlockPlan(
        line_regex, tuple(parser.time_fields), time_regex, tuple(fmt.keys), entity_regex,
        tuple(parser.entity_fields), parser.opts.default_entity, parser.level_field, parser.component_field,
        parser.label_field, tuple(parser.attr_fields), fmt.is_epoch, parser.frac_field, not fmt.has_year,
        _split_plan(parser.regex.pattern),
    )  # fmt: skip


def _split_plan(pattern: str) -> tuple[tuple[tuple[str, str], ...], str | None] | None:
    """The leading fields and tail of a pattern the split path reads (HDFS, Spark and most
    logpai formats: ``<Date> <Time> <Pid> <Level> <Component>: <Content>``), or None.

    Why: Arrow's ``extract_regex`` runs RE2's submatch engine over the whole line, half of a
    Loghub block's time; splitting at spaces is a tenth of that. Where the split path reads a
    line it gives the regex's groups exactly: each leading field is a class without whitespace
    followed by ``\\s+``, so it is the line's next token when one space follows it and the
    next token does not start with whitespace (greedy ``\\s+`` would take more); a lazy
    ``\\S+?`` before ``:\\s+`` is the next token less its final ``:`` (the only ``:``
    followed by whitespace in it); ``.*`` is the rest. Other lines go through the regex.
    """
    if not pattern.startswith("^"):
        return None
    at, lead = 1, []
    while (m := _LEAD_FIELD.match(pattern, at)) is not None:
        lead.append((m.group(1), m.group(2)))
        at = m.end()
    tail = pattern[at:]
    if not lead:
        return None
    if tail == _TAIL_CONTENT:
        return tuple(lead), None
    m = _TAIL_COLON.fullmatch(tail)
    return (tuple(lead), m.group(1)) if m is not None else None


def _match_lines(p: BlockPlan, lines: pa.Array) -> pa.StructArray:
    """``extract_regex(lines, p.line_regex)``: the split path's groups for the lines it reads
    (:func:`_split_plan`), the regex's for the others."""
    if p.split is None:
        return pc.extract_regex(lines, p.line_regex)
    lead, token_field = p.split
    k = len(lead)
    parts = pc.split_pattern(lines, " ", max_splits=k)
    rows = true_rows(pc.equal(pc.list_value_length(parts), k + 1))
    flat = pc.list_flatten(parts.take(pa.array(rows)))
    m = len(rows)
    pieces = [flat.take(pa.array(np.arange(i, m * (k + 1), k + 1, dtype=np.int64))) for i in range(k + 1)]
    good = np.ones(m, dtype=bool)
    for (_, cls), piece in zip(lead, pieces, strict=False):
        good &= true_mask(pc.match_substring_regex(piece, f"^(?:{cls})$"))
    rest = pieces[k]
    good &= ~true_mask(pc.or_(pc.starts_with(rest, " "), pc.starts_with(rest, "\t")))
    names = [name for name, _ in lead]
    values = pieces[:k]
    if token_field is None:
        names.append("Content")
        values.append(rest)
    else:
        two = pc.split_pattern(rest, " ", max_splits=1)
        good &= true_mask(pc.equal(pc.list_value_length(two), 2))
        keep = pa.array(good)
        rows, values, two = rows[good], [v.filter(keep) for v in values], two.filter(keep)
        token, content = pc.list_element(two, 0), pc.list_element(two, 1)
        good = true_mask(pc.match_substring_regex(token, r"^\S+:$"))
        good &= ~true_mask(pc.or_(pc.starts_with(content, " "), pc.starts_with(content, "\t")))
        names += [token_field, "Content"]
        values += [pc.utf8_slice_codeunits(token, 0, -1), content]
    keep = pa.array(good)
    fast_rows = rows[good]
    fast = pa.StructArray.from_arrays([v.filter(keep) for v in values], names=names)
    slow_rows = np.setdiff1d(np.arange(len(lines)), fast_rows, assume_unique=True)
    if len(slow_rows) == 0:
        return fast
    slow = pc.extract_regex(lines.take(pa.array(slow_rows)), p.line_regex)
    if len(fast_rows) == 0:
        return slow
    order = np.argsort(np.concatenate([fast_rows, slow_rows]), kind="stable")
    return pa.concat_arrays([fast, slow.cast(fast.type)]).take(pa.array(order))


def _re2(pattern: str, name: str | None = None) -> str:
    """``pattern`` with its unnamed groups made non-capturing (``name`` None) or named
    ``<name>0``, ``<name>1``... in order (Arrow's ``extract_regex`` takes named groups only)."""
    out: list[str] = []
    i, n, in_class, count = 0, len(pattern), False, 0
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]" or (pattern[i - 1] == "[" or pattern[i - 2 : i] == "[^")
        elif ch == "[":
            in_class = True
        elif ch == "(" and pattern[i + 1 : i + 2] != "?":
            out.append("(?:" if name is None else f"(?P<{name}{count}>")
            count += 1
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _compiles(regex: str) -> bool:
    try:
        pc.extract_regex(pa.array([""], pa.string()), regex)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _optional_groups(pattern: str) -> set[str] | None:
    """Names of the named groups that may not take part in a match (inside a repeat that may run
    zero times or an alternation); None when the pattern is not understood."""
    c = _sre_constants
    try:
        parsed = _sre_parser.parse(pattern)
    except Exception:  # noqa: BLE001 - private module of the standard library: no plan
        return None
    names = {index: name for name, index in parsed.state.groupdict.items()}
    found: set[str] = set()
    repeats = {c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", c.MAX_REPEAT)}

    def walk(items: Any, optional: bool) -> None:
        for op, av in items:
            if op == c.SUBPATTERN:
                if optional and av[0] in names:
                    found.add(names[av[0]])
                walk(av[-1], optional)
            elif op in repeats:
                walk(av[2], optional or av[0] == 0)
            elif op == c.BRANCH:
                for branch in av[1]:
                    walk(branch, True)
            elif op in (c.ASSERT, c.ASSERT_NOT):
                walk(av[1], True)
            elif op == getattr(c, "ATOMIC_GROUP", None):
                walk(av, optional)

    walk(parsed, False)
    return found


def _ints(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.cast(pc.fill_null(values, "0"), pa.int64()).to_numpy(zero_copy_only=False))


def block(p: BlockPlan, texts: Sequence[str], parser: Any) -> EventColumns | None:
    """The events of the block's lines that the plan reads exactly (see the module docstring);
    ``parser`` is the file's :class:`LoghubParser`, whose clock year-less times move on."""
    arr = pa.array(texts, pa.string())
    plain = true_rows(pc.match_substring_regex(arr, _PLAIN))
    if len(plain) < MIN_ROWS:
        return None
    matched = _match_lines(p, arr.take(pa.array(plain)))
    found = true_rows(pc.is_valid(matched))
    if len(found) < MIN_ROWS:
        return None
    rows = plain[found]
    matched = matched.take(pa.array(found))
    m = len(rows)
    field = {name: pc.struct_field(matched, [i]) for i, name in enumerate(matched.type.names)}
    bad = np.zeros(m, dtype=bool)

    # Time: TimeFormat.parse's reading (fullmatch of the stripped text; the edges must be clean).
    tf = p.time_fields
    time_text = field[tf[0]] if len(tf) == 1 else pc.binary_join_element_wise(*[field[f] for f in tf], " ")
    bad |= np.asarray(pc.match_substring_regex(time_text, r"^\s|\s$").to_numpy(zero_copy_only=False), dtype=bool)
    parts = pc.extract_regex(time_text, p.time_regex)
    bad |= ~np.asarray(pc.is_valid(parts).to_numpy(zero_copy_only=False), dtype=bool)
    if p.epoch:
        micros, out_of_range = _epoch_micros(_ints(pc.struct_field(parts, [0])))
        bad |= out_of_range
    elif p.yearless:
        dated = _yearless(p, parser, texts, plain, rows, parts, time_text, bad)
        if dated is None:
            return None
        micros = dated
    else:
        micros = _clock_micros(p, parts, bad, m)
    if p.frac_field is not None:
        # BGL: the sub-seconds after the last "." of another field replace the microseconds.
        last = pc.struct_field(pc.extract_regex(field[p.frac_field], r"(?P<f>[^.]*)$"), [0])
        has = np.asarray(pc.fill_null(pc.match_substring_regex(last, r"^[0-9]+$"), False)
                         .to_numpy(zero_copy_only=False), dtype=bool)  # fmt: skip
        frac = _ints(pc.if_else(pa.array(has), pc.utf8_rpad(pc.utf8_slice_codeunits(last, 0, 6), 6, "0"), "0"))
        micros = np.where(has, micros - micros % 1_000_000 + frac, micros)

    content = field["Content"]
    out: dict[str, pa.Array] = {
        "ts": pa.array(np.where(bad, 0, micros), pa.int64()).view(pa.timestamp("us", "UTC")),
        "format": constant("loghub", m),
        "message": content,
    }
    entity, entity_from = _entity(p, field, content, m)
    out["entity"] = entity
    if p.level_field is not None:
        coded = pc.dictionary_encode(field[p.level_field])
        levels = pa.array([normalize_level(v) for v in coded.dictionary.to_pylist()], pa.string())
        out["level"] = levels.take(coded.indices)
    else:
        out["level"] = constant("info", m)
    if p.component_field is not None:
        out["component"] = field[p.component_field]
    if p.label_field is not None:
        value = field[p.label_field]
        out["label"] = pc.if_else(pc.is_in(value, value_set=pa.array(["-", ""])), None, value)
    keep = np.ones((m, len(p.attr_fields)), dtype=bool)
    with_entity = np.flatnonzero(entity_from >= 0)
    keep[with_entity, entity_from[with_entity]] = False  # the field the entity came from
    fields = [field[name] for name in p.attr_fields]
    out["attributes"] = attributes_map(p.attr_fields, fields, m, absent="", keep=keep)

    done = complete(rows, out, bad)
    return None if done is None else EventColumns(done[0].tolist(), done[1])


def _epoch_micros(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``parse_epoch`` of non-negative integers: the unit by magnitude (:data:`EPOCH_UNITS`),
    then microseconds since the epoch, and which values fall past the accepted range."""
    per_second = np.ones_like(value)
    for lowest, _, units in EPOCH_UNITS[:-1][::-1]:
        per_second = np.where(value >= lowest, units, per_second)
    seconds, fraction = np.divmod(value, per_second)
    out_of_range = seconds >= _MAX_EPOCH_S
    return np.where(out_of_range, 0, seconds) * 1_000_000 + fraction * 1_000_000 // per_second, out_of_range


def _time_parts(p: BlockPlan, parts: pa.Array, m: int) -> dict[str, np.ndarray]:
    """The time directives' values as integers (month 0 for an unknown month name; defaults as
    ``TimeFormat.parse`` has them: day 1, the rest 0, year 0 when the format has none)."""
    got = {key: pc.struct_field(parts, [i]) for i, key in enumerate(p.time_keys)}
    zeros = np.zeros(m, dtype=np.int64)
    year = zeros
    if "Y" in got:
        year = _ints(got["Y"])
    elif "y" in got:
        short = _ints(got["y"])
        year = np.where(short < 69, 2000 + short, 1900 + short)
    if "b" in got:
        names = pc.dictionary_encode(pc.utf8_lower(pc.fill_null(got["b"], "")))
        known = [_MONTHS.get(v, 0) for v in names.dictionary.to_pylist()]
        month = np.asarray(known, dtype=np.int64)[np.asarray(names.indices.to_numpy(zero_copy_only=False))]
    else:
        month = _ints(got["m"])
    micro = zeros
    if "f" in got:
        micro = _ints(pc.utf8_rpad(pc.utf8_slice_codeunits(got["f"], 0, 6), 6, "0"))
    return {
        "year": year, "month": month, "day": _ints(got["d"]) if "d" in got else np.ones(m, dtype=np.int64),
        "hour": _ints(got["H"]) if "H" in got else zeros, "minute": _ints(got["M"]) if "M" in got else zeros,
        "second": _ints(got["S"]) if "S" in got else zeros, "micro": micro,
    }  # fmt: skip


def _make(t: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``_Clock.make`` in UTC of :func:`_time_parts`' values (see :func:`utc_micros`)."""
    return utc_micros(t["year"], t["month"], t["day"], t["hour"], t["minute"], t["second"], t["micro"])


def _clock_micros(p: BlockPlan, parts: pa.Array, bad: np.ndarray, m: int) -> np.ndarray:
    """``TimeFormat.parse`` of the time parts (UTC, a year in the format), marking in ``bad``
    (in place) the rows whose date or time is impossible or out of range."""
    micros, impossible = _make(_time_parts(p, parts, m))
    bad |= impossible
    return micros


def _yearless(
    p: BlockPlan, parser: Any, texts: Sequence[str], plain: np.ndarray, rows: np.ndarray, parts: pa.Array,
    time_text: pa.Array, bad: np.ndarray,
) -> np.ndarray | None:
    """Times of a year-less format for the block's matched ``rows``, or None: the whole block
    per line.

    The reference dates line after line with the parser's clock (``_Clock.year_for``: the year
    moves on when the month steps back by more than six), so the block is taken all or none:
    every line the reference would date (its time reads and its month name is known, which
    :func:`_would_date` decides in Python for the few lines the block cannot read) must be one
    the block reads, with a possible date. Then the months' steps give the years at once and the
    clock and the parser's last time are left as the per-line parse leaves them. The rows the
    reference does not date (an unknown month name) are marked in ``bad`` (per line).
    """
    m = len(rows)
    readable = ~bad & np.asarray(pc.is_valid(parts).to_numpy(zero_copy_only=False), dtype=bool)
    t = _time_parts(p, parts, m)
    dated = readable & (t["month"] > 0) if "b" in p.time_keys else readable
    unread = np.ones(len(texts), dtype=bool)
    unread[rows[readable]] = False
    unread[np.setdiff1d(plain, rows)] = False  # printable lines the pattern refuses: so does Python's
    if any(_would_date(parser, texts[int(i)]) for i in np.flatnonzero(unread)):
        return None
    if not dated.any():
        bad |= ~dated
        return np.zeros(m, dtype=np.int64)
    idx = np.flatnonzero(dated)
    month = t["month"][idx]
    clock = parser.clock
    first_time = time_text[int(idx[0])].as_py()
    if first_time == parser._last_time and clock._last_month != month[0]:
        return None  # the reference reuses the last time without moving the clock (see syslog)
    t["year"] = np.zeros(m, dtype=np.int64)
    t["year"][idx] = clock.years_for(month)
    micros, impossible = _make(t)
    if impossible[idx].any():
        return None  # the reference moved the clock before refusing the date: per line
    last = int(idx[-1])
    clock.advance(int(t["year"][last]), int(month[-1]))
    parser._last_time = time_text[last].as_py()
    parser._last_ts = _EPOCH + dt.timedelta(microseconds=int(micros[last]))
    bad |= ~dated
    return micros


def _would_date(parser: Any, text: str) -> bool:
    """Whether :meth:`LoghubParser.parse` reaches its clock's ``year_for`` for ``text``: the
    pattern matches, the time reads and its month name is known (the plan's directives)."""
    match = parser.regex.match(text)
    if match is None:
        return False
    fields = parser.time_fields
    time_text = match[fields[0]] if len(fields) == 1 else " ".join(match[f] or "" for f in fields)
    if time_text is None:
        return False
    got = parser.time_format.regex.fullmatch(time_text.strip())
    if got is None:
        return False
    return all(_MONTHS.get(v.lower()) is not None for k, v in zip(parser.time_format.keys, got.groups(), strict=True)
               if k == "b")  # fmt: skip


def _entity(p: BlockPlan, field: dict[str, pa.Array], content: pa.Array, m: int) -> tuple[pa.Array, np.ndarray]:
    """The entity column and, per row, the index into ``p.attr_fields`` of the field it came
    from (-1: from the content's id, the default, or a field that is no attribute)."""
    entity = pa.nulls(m, pa.string())
    from_field = np.full(m, -1, dtype=np.int64)
    decided = np.zeros(m, dtype=bool)
    if p.entity_regex is not None:
        found = pc.struct_field(pc.extract_regex(content, p.entity_regex), [0])
        entity = found
        decided = np.asarray(pc.is_valid(found).to_numpy(zero_copy_only=False), dtype=bool)
    for name in p.entity_fields:
        value = field[name]
        take = ~decided & np.asarray(
            pc.fill_null(pc.not_equal(value, ""), False).to_numpy(zero_copy_only=False), dtype=bool
        )
        if take.any():
            entity = pc.if_else(pa.array(take), value, entity)
            if name in p.attr_fields:
                from_field[take] = p.attr_fields.index(name)
            decided |= take
    if not decided.all():
        entity = pc.if_else(pa.array(decided), entity, pa.scalar(p.default_entity, pa.string()))
    return entity, from_field
