"""The native ingest path: JSON lines parsed by Spark SQL in the JVM, Python only where it must.

Why: parsing every line in a Python worker ran at a quarter of what ``spark.read.json`` does on
the same files. Here a Python task only cuts each file into lines (C code: a strict UTF-8 decode
of a 32 MiB chunk and Arrow's ``split_pattern``; gzip/bz2 through :func:`open_lines`) and gives
every line its number and event id; column expressions then parse the lines and map them into
``events`` in the JVM.

Line numbers: Spark's text and JSON readers give none, and ``event_id`` is derived from
``(path, generation, line_no)`` (reruns and appends rely on it; :mod:`loganomaly.ingest.ids`),
so the cutting stays in our task (option (a) of issue 14) instead of switching ids to byte
offsets, which would have split old lakes from new ones.

Each line is parsed once, by ``from_json(text, 'map<string,variant>')`` with every leniency of
Spark's JSON reader off: the map keeps the keys in the line's order (Python's dict order) and
every duplicate, and each variant value its JSON type, so the rules read typed values instead of
matching regular expressions over the raw text (the first version of this module did that, a
hundred-odd regexes per line, and ran 5-10x slower than the Python parser).

The Python parser (:class:`loganomaly.ingest.formats.json.JsonParser`) stays the reference: the
expressions cover the lines whose result they reproduce exactly and flag the others (``_ok``
false), which go back to Python one by one through
:func:`loganomaly.ingest.formats.detect.parse_line` and come out as the same event or the same
quarantine row with its reason (Spark cannot give Python's reason texts, so even a line Spark
finds corrupt goes back). Those lines are:

* lines with a byte problem (invalid UTF-8, over :data:`MAX_LINE_BYTES`), empty lines, lines
  ``from_json`` refuses or that carry text after the object (Spark ignores it, Python refuses it);
* arrays, objects nested more than one level, duplicate keys (also ``a.b`` against a flattened
  ``{"a": {"b": ..}}``), a flattened object leaving two or more keys among the attributes (the
  variant orders an object's keys by name, Python by the line), ``\\uD800``-style escapes;
* numbers whose Python rendering the variant does not give: exponents and more than 38 digits
  (``DOUBLE``), decimals of more than 15 significant digits or below 1e-4 (``repr`` switches to
  exponents), integers past int64, a zero float on a line holding ``-0``; level text outside
  printable ASCII;
* whatever the Python parser refuses (the quarantine reasons are its own): no timestamp, a
  timestamp not in the plain forms (epoch integers of up to 20 digits, epoch seconds with up to
  6 decimals, ``YYYY-MM-DD[T ]hh:mm:ss[.ffffff][Z|±hh:mm]``) or out of 1970..2099, negative
  counts, integers out of their column's range, non-integral numbers in integer columns;
* whole files with options the expressions do not model (``timestamp_format``, ``timezone``,
  ``entity_field``, ``level_field``, ``label_field``, ``message_field``); ``timestamp_fields``
  and ``default_entity`` are modelled.

Measured choice of the cutting: the lines cross from the Python task to the JVM as Arrow once
(the text and the event id), and only the lines left to Python cross back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from loganomaly.errors import ParseError
from loganomaly.ingest.formats import (
    MAX_LINE_BYTES,
    TIMESTAMP_FIELDS,
    FormatOptions,
    LogFormat,
    detect,
    make_parser,
    open_lines,
)
from loganomaly.ingest.formats.base import decode_lines, long_line, read_whole, skip_bom
from loganomaly.ingest.formats.detect import Detection, parse_line
from loganomaly.ingest.formats.json import JsonFormat
from loganomaly.ingest.formats.records import (
    _COMPONENT_KEYS,
    _COUNT_COLUMNS,
    _DETAILED_LABEL_KEYS,
    _ENTITY_KEYS,
    _LABEL_KEYS,
    _LEVEL_KEYS,
    _MESSAGE_KEYS,
    _NET_FIELDS,
    _NOTICE_ENTITY_KEYS,
    _STATUS_KEYS,
    _WARNING_ZEEK_PATHS,
)
from loganomaly.ingest.formats.timestamps import _MAX_EPOCH_S
from loganomaly.ingest.formats.values import _LEVELS
from loganomaly.ingest.ids import IdKey

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

#: Formats with a native path.
NATIVE_FORMATS = frozenset({"json"})
#: Bytes decoded and split at a time by a cutting task.
CHUNK_BYTES = 32 * 1024 * 1024
#: Rows per Arrow batch a cutting task emits.
LINE_BATCH = 65536

LINES_DDL = "file string, line_no bigint, text string, problem string, event_id string"
_LINES_ARROW = pa.schema(
    [("file", pa.string()), ("line_no", pa.int64()), ("text", pa.string()), ("problem", pa.string()),
     ("event_id", pa.string())]
)
#: Options the native JSON expressions do not model: a file with any of them set parses in Python.
_UNMODELLED = ("timestamp_format", "timezone", "entity_field", "level_field", "label_field", "message_field")


def native_format(path: str, options: FormatOptions, formats: Mapping[str, LogFormat]) -> Detection | None:
    """The format of ``path`` and its variant (a Zeek log by the file's name) if the native path
    can read it, else None (driver side, from a sample).

    Only the registry's own ``json`` format qualifies: a format registered under that name by
    user code is parsed by its own Python parser.
    """
    if any(getattr(options, name) is not None for name in _UNMODELLED):
        return None
    try:
        found = detect(path, options, formats=formats)
    except (ParseError, OSError):
        return None
    if found.format in NATIVE_FORMATS and type(formats.get(found.format)) is JsonFormat:
        return found
    return None


#: Session settings while a native job plans and runs (see :func:`native_session`).
NATIVE_CONF = {"spark.sql.codegen.wholeStage": "false"}


@contextlib.contextmanager
def native_session(spark: SparkSession) -> Iterator[None]:
    """Run the native expressions without whole-stage code generation, then restore the settings.

    Why: whole-stage codegen fuses the dozen projection steps into one generated method per
    stage. With some 200 expressions that method is far over HotSpot's 8,000-byte limit for JIT
    compilation (``-XX:-DontCompileHugeMethods`` is off by default), so the JVM *interprets* the
    bytecode: measured on 100k flat Zeek JSON lines, 60 key lookups in one projection took 26 s
    with it and 3.7 s without (per-expression code generation splits the code into small methods
    that compile). Spark reads the setting when it plans and executes a query, so it only has to
    hold while this stage's actions run; the previous values come back afterwards.
    """
    before: dict[str, str | None] = {key: spark.conf.get(key, None) for key in NATIVE_CONF}
    for key, setting in NATIVE_CONF.items():
        spark.conf.set(key, setting)
    try:
        yield
    finally:
        for key, old in before.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


# ------------------------------------------------------------------------------ cutting lines


def _slow_lines(chunk: bytes) -> tuple[list[str], list[str | None]]:
    """Per-line decoding of a chunk holding invalid UTF-8 or an over-long line (rare): :func:`open_lines`' rules."""
    lines = decode_lines(chunk)
    return (lines, [None] * len(lines)) if type(lines) is list else lines  # type: ignore[return-value]


def _fast_lines(chunk: bytes) -> tuple[pa.Array, pa.Array] | None:
    """Lines of a chunk of whole lines without ``\\n`` (C code only), or None if not valid UTF-8."""
    import pyarrow.compute as pc

    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), "\n"))
    lengths = pc.binary_length(lines)
    problems = pa.nulls(len(lines), pa.string())
    if len(lines) and pc.max(lengths).as_py() > MAX_LINE_BYTES:
        long = pc.greater(lengths, MAX_LINE_BYTES).to_pylist()
        texts = lines.to_pylist()
        plist: list[str | None] = [None] * len(texts)
        for i, is_long in enumerate(long):
            if is_long:
                texts[i], plist[i] = long_line(texts[i].encode("utf-8"))
        lines = pa.array(texts, pa.large_string())
        problems = pa.array(plist, pa.string())
        trimmed = pc.if_else(pc.is_null(problems), pc.utf8_rtrim(lines, characters="\r"), lines)
        return trimmed.cast(pa.string()), problems
    return pc.utf8_rtrim(lines, characters="\r").cast(pa.string()), problems


def cut_lines(path: str, ids: IdKey | int = 0) -> Iterator[pa.RecordBatch]:
    """Batches of ``(file, line_no, text, problem, event_id)`` for every line of ``path``, as
    :func:`open_lines` numbers and decodes them (compressed and UTF-16 files go through it line by line).
    ``ids``: how the lines are named (:class:`.ids.IdKey`; a number: that generation, current scheme).

    A file deleted before it is opened yields nothing (the caller writes no ledger row for it).
    """
    try:
        whole = read_whole(path)
    except FileNotFoundError:
        log.warning("%s vanished before it was read: skipped", path)
        return
    line_no = 0
    key = IdKey.of(path, ids)

    def batch(texts: pa.Array | list[str], problems: pa.Array | list[str | None]) -> pa.RecordBatch:
        nonlocal line_no
        n = len(texts)
        first = line_no + 1
        line_no += n
        return pa.record_batch(
            [
                pa.array([path] * n, pa.string()),
                pa.array(range(first, first + n), pa.int64()),
                texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string()),
                problems if isinstance(problems, pa.Array) else pa.array(problems, pa.string()),
                key.batch(np.arange(first, first + n, dtype=np.int64)),
            ],
            schema=_LINES_ARROW,
        )

    if whole:
        texts: list[str] = []
        problems: list[str | None] = []
        for _, text, problem in open_lines(path):
            texts.append(text)
            problems.append(problem)
            if len(texts) >= LINE_BATCH:
                yield batch(texts, problems)
                texts, problems = [], []
        if texts:
            yield batch(texts, problems)
        return

    with open(path, "rb") as fh:
        skip_bom(fh)  # as open_lines does: a byte-order mark at the start is no part of line 1
        carry = b""
        while True:
            data = fh.read(CHUNK_BYTES)
            if not data:
                if carry:
                    yield from _chunk_batches(carry, batch)
                return
            data = carry + data
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1 :]
            yield from _chunk_batches(data[:cut], batch)


def _chunk_batches(chunk: bytes, batch: Any) -> Iterator[pa.RecordBatch]:
    fast = _fast_lines(chunk)
    if fast is None:
        texts, problems = _slow_lines(chunk)
        for i in range(0, len(texts), LINE_BATCH):
            yield batch(texts[i : i + LINE_BATCH], problems[i : i + LINE_BATCH])
        return
    lines, probs = fast
    for i in range(0, len(lines), LINE_BATCH):
        yield batch(lines.slice(i, LINE_BATCH), probs.slice(i, LINE_BATCH))


# ------------------------------------------------------------------------------ JSON in the JVM

#: ``from_json`` options: Spark's JSON reader is lenient by default where Python's ``json`` is not
#: (single quotes, ``NaN``); every leniency is off, so a line Python refuses is refused here too
#: and goes back to Python for its reason.
_JSON_OPTIONS = ", ".join(
    f"'{k}', 'false'"
    for k in ("allowSingleQuotes", "allowNonNumericNumbers", "allowComments", "allowUnquotedFieldNames",
              "allowNumericLeadingZeros", "allowBackslashEscapingAnyCharacter", "allowUnquotedControlChars")
)
#: Variant types whose value the expressions render as Python does. Integers that fit int64 are
#: ``BIGINT`` (or narrower); a number with a fraction is ``DECIMAL(p,s)`` with its trailing zeros
#: dropped (``12.50`` -> ``12.5``, which is Python's ``repr`` too while it has at most 15
#: significant digits and is not below 1e-4); an integral float (``2.0``) is ``DECIMAL(p,0)``;
#: exponents and more than 38 digits are ``DOUBLE``, sent back to Python.
_PLAIN_TYPES = ("VOID", "STRING", "BOOLEAN", "BIGINT", "INT", "SMALLINT", "TINYINT")
#: Text of a JSON document with its strings removed (``"``, then runs of plain characters or
#: escape pairs, possessive: linear, no backtracking, no deep recursion on long strings).
_STRINGS = r'"(?:[^"\\]++|\\.)*+"'
#: What is left of a line once its strings are removed, for an object of depth at most 2 that
#: ends the line: ``{`` ... ``}`` with no text after it (Spark's parsers stop after the first
#: value and ignore the rest; Python's refuses it: ``Extra data``).
_ONE_OBJECT = r"^[ \t\r]*\{[^{}]*+(?:\{[^{}]*+\}[^{}]*+)*+\}[ \t\r]*$"
#: Integer columns of the Zeek fields and their widths.
_INT_BITS = {"src_port": 32, "dst_port": 32, "bytes_out": 64, "bytes_in": 64, "packets_out": 64, "packets_in": 64}


def _q(text: str) -> str:
    """A Spark SQL string literal (raw: the backslashes of regexes stay as they are)."""
    assert "'" not in text, text
    return f"R'{text}'"


def _tok(key: str) -> str:
    return f"get(_v, cast(array_position(_k, {_q(key)}) AS int) - 1)"


def _is_value(t: str) -> str:
    """Python's ``value is not None``: present and not JSON null."""
    return f"({t} IS NOT NULL AND {t} != 'null')"


def _is_str(t: str) -> str:
    return f"(left({t}, 1) = '\"')"


def _sval(t: str) -> str:
    return f"substring({t}, 2, length({t}) - 2)"


def _is_int(t: str) -> str:
    """An integer token. Tokens come from :func:`_token`: on a line the expressions keep, a token
    that is no string, no bool, no null and has no ``.`` is an integer (no regex needed)."""
    return f"(left({t}, 1) != '\"' AND {t} NOT IN ('true', 'false', 'null') AND NOT contains({t}, '.'))"


def _is_float(t: str) -> str:
    """A float token (a decimal of the variant, or an integral float written ``N.0``)."""
    return f"(left({t}, 1) != '\"' AND contains({t}, '.'))"


def _token(x: str, ty: str) -> str:
    """The text of variant ``x`` of type ``ty`` as the rules read it: a string quoted (its text
    decoded, escapes and all), ``null``, ``true``/``false``, an integer's digits, a decimal's
    digits without trailing zeros (Python's ``repr`` of that float, checked by :func:`_repr_ok`),
    an integral float with ``.0`` (``repr(2.0)``)."""
    return (
        f"CASE WHEN {ty} = 'VOID' THEN 'null' WHEN {ty} = 'STRING' THEN concat('\"', cast({x} AS string), '\"') "
        f"WHEN startswith({ty}, 'DECIMAL(') AND endswith({ty}, ',0)') THEN concat(cast({x} AS string), '.0') "
        f"ELSE cast({x} AS string) END"
    )


def _type_ok(ty: str) -> str:
    """Whether the rules render a value of variant type ``ty`` as Python does (see
    :data:`_PLAIN_TYPES`); an integral float only up to 15 digits (an integer past int64 is
    ``DECIMAL(p,0)`` too, but has at least 19)."""
    plain = ", ".join(f"'{t}'" for t in _PLAIN_TYPES)
    return (
        f"({ty} IN ({plain}) OR (startswith({ty}, 'DECIMAL(') AND (NOT endswith({ty}, ',0)') "
        rf"OR {ty} RLIKE R'^DECIMAL\((1[0-5]|[1-9]),0\)$')))"
    )


def _is_missing(t: str) -> str:
    return f"({_is_str(t)} AND {_sval(t)} IN ('-', '', '(empty)'))"


def _qualifies(t: str) -> str:
    return f"({_is_value(t)} AND NOT coalesce({_is_missing(t)}, false))"


def _repr_ok(t: str) -> str:
    """A float token whose Python ``repr`` is the token less trailing zeros (no exponent form):
    at most 15 significant digits (decimals that short map to distinct doubles) and not below 1e-4."""
    digits = f"regexp_replace(regexp_replace({t}, R'[-.]', ''), R'^0+', '')"
    return f"(length({digits}) <= 15 AND NOT ({t} RLIKE R'^-?0\\.0000' AND {t} RLIKE R'[1-9]'))"


def _dumps(t: str) -> str:
    """``json.dumps`` of a non-string token, the text of a string one (``_attr``): a token is
    already in Python's form (:func:`_token`)."""
    return f"CASE WHEN {_is_str(t)} THEN {_sval(t)} ELSE {t} END"


def _as_str(t: str) -> str:
    """``_as_str``: null, JSON null and missing markers -> null, others as text."""
    return f"CASE WHEN {_qualifies(t)} THEN {_dumps(t)} END"


def _pystr(t: str) -> str:
    """Python ``str(value)`` of a token (bools are ``True``/``False``)."""
    return f"CASE WHEN {t} = 'true' THEN 'True' WHEN {t} = 'false' THEN 'False' ELSE {_dumps(t)} END"


class _Json:
    """Spark SQL over one line's keys ``_k`` and value tokens ``_v`` (arrays of strings, see
    :func:`_token`), from one ``from_json`` per line.

    Expressions are SQL text, one ``selectExpr`` per step: built as Column objects they cost a
    py4j call per operator (seconds per job), and each step names its results so that later
    rules refer to them instead of nesting them (the plan stays linear in size).
    """

    def __init__(self, opts: FormatOptions) -> None:
        self.opts = opts

    def events(self, lines: DataFrame) -> DataFrame:
        """``lines`` plus the event columns a parser fills and ``_ok``: whether the row is this
        line's event exactly as the Python parser makes it."""
        opts = self.opts
        ts_keys = tuple(opts.timestamp_fields or TIMESTAMP_FIELDS)
        empty = "cast(array() AS array<string>)"

        def step(df: DataFrame, exprs: dict[str, str]) -> DataFrame:
            return df.selectExpr("*", *[f"{sql} AS `{name}`" for name, sql in exprs.items()])

        # 0. one parse per line: from_json into a map of variants keeps the keys in the line's
        # order (Python's dict order), every duplicate key, and each value's JSON type.
        df = step(
            lines,
            {"_m": f"CASE WHEN problem IS NULL THEN from_json(text, 'map<string,variant>', map({_JSON_OPTIONS})) END"},
        )
        ws = "concat(' ', chr(9), chr(13))"
        braces = "length(text) - length(replace(text, '{', '')) = 1 AND length(text) - length(replace(text, '}', '')) = 1"
        df = step(
            df,
            {
                # The object must end the line (Spark stops after the first value): with one
                # brace of each kind, the closing one is that object's, else strings are cut out
                # and what is left must be one object; lone surrogates (``\ud800``) decode to
                # "?" in the JVM and stay Python's.
                "_shape": (
                    f"_m IS NOT NULL AND endswith(trim(TRAILING {ws} FROM text), '}}') "
                    f"AND CASE WHEN {braces} THEN true "
                    f"ELSE regexp_replace(text, {_q(_STRINGS)}, '') RLIKE {_q(_ONE_OBJECT)} END "
                    r"AND NOT (contains(text, R'\u') AND text RLIKE R'\\u[dD][89a-fA-F]')"
                ),
            },
        )
        # Nested objects flatten one level into dotted keys (Python's ``_flatten``); ``g`` names
        # the object an entry came from (its keys come in name order, not the line's: see _ok).
        entry = "named_struct('k', {k}, 'x', {x}, 'ty', schema_of_variant({x}), 'g', {g})"
        df = step(
            df,
            {
                "_e0": (
                    "CASE WHEN _shape THEN transform(map_entries(_m), e -> "
                    + entry.format(k="e.key", x="e.value", g="CAST(NULL AS string)")
                    + ") END"
                )
            },
        )
        df = step(
            df,
            {
                "_e": (
                    "flatten(transform(_e0, e -> CASE WHEN startswith(e.ty, 'OBJECT<') THEN "
                    "transform(map_entries(try_cast(e.x AS map<string,variant>)), s -> "
                    + entry.format(k="concat(e.k, '.', s.key)", x="s.value", g="e.k")
                    + ") ELSE array(e) END))"
                )
            },
        )
        df = step(
            df,
            {
                "_k": f"coalesce(transform(_e, e -> e.k), {empty})",
                "_v": f"coalesce(transform(_e, e -> {_token('e.x', 'e.ty')}), {empty})",
                "_g": f"coalesce(transform(_e, e -> e.g), {empty})",
                "_types_ok": f"coalesce(forall(_e, e -> {_type_ok('e.ty')}), false)",
            },
        )
        # 1. the token of every key a rule looks at, one column each
        keys = list(
            dict.fromkeys(
                [*ts_keys, *(k for k, _, _ in _NET_FIELDS), *_STATUS_KEYS, "_path", *_COMPONENT_KEYS,
                 *_LEVEL_KEYS, *_LABEL_KEYS, *_DETAILED_LABEL_KEYS, *_NOTICE_ENTITY_KEYS, *_MESSAGE_KEYS, "name",
                 "note", "uri", "method"]
            )
        )
        names = {k: f"_t{i}" for i, k in enumerate(keys)}
        df = step(df, {names[k]: _tok(k) for k in keys})

        def t(key: str) -> str:
            return names[key]

        def present(key: str) -> str:
            return f"({t(key)} IS NOT NULL)"

        def first(keys: Sequence[str], test: Any, token: bool) -> str:
            whens = " ".join(f"WHEN {test(t(k))} THEN {t(k) if token else _q(k)}" for k in keys)
            return f"CASE {whens} END"

        def popped_until(keys: Sequence[str], test: Any) -> list[str]:
            """Python pops each key it tries, up to and including the first that passes ``test``."""
            popped = []
            earlier: list[str] = []
            for k in keys:
                before = " OR ".join(f"coalesce({e}, false)" for e in earlier) or "false"
                popped.append(f"CASE WHEN {present(k)} AND NOT ({before}) THEN {_q(k)} END")
                earlier.append(test(t(k)))
            return popped

        def is_present(tok: str) -> str:
            return f"({tok} IS NOT NULL)"

        # 2. which key each rule takes, and its token
        df = step(
            df,
            {
                "_ts_key": first(ts_keys, _is_value, False),
                "_ts_tok": first(ts_keys, _is_value, True),
                "_status_tok": first(_STATUS_KEYS, _qualifies, True),
                "_component_tok": first(_COMPONENT_KEYS, _qualifies, True),
                "_level_key": first(_LEVEL_KEYS, _is_value, False),
                "_level_tok": first(_LEVEL_KEYS, _is_value, True),
                "_label_key": first(_LABEL_KEYS, is_present, False),
                "_label_tok": first(_LABEL_KEYS, is_present, True),
                "_detailed_key": first(_DETAILED_LABEL_KEYS, is_present, False),
                "_detailed_tok": first(_DETAILED_LABEL_KEYS, is_present, True),
                "_message_key": first(_MESSAGE_KEYS, _is_value, False),
                "_message_tok": first(_MESSAGE_KEYS, _is_value, True),
                # A record's own string ``_path``, else the file's Zeek log by its name.
                "_zeek_path": f"CASE WHEN {_is_str(t('_path'))} THEN {_sval(t('_path'))} ELSE _file_log END",
                "_http": f"{present('uri')} OR {present('method')}",
            },
        )
        # 3. numbers and times as exact decimals first, then typed columns
        tt = "_ts_tok"
        df = step(
            df,
            {
                "_ts_text": f"CASE WHEN {_is_str(tt)} THEN {_sval(tt)} ELSE {tt} END",
                "_ts_is_text": f"coalesce({_is_str(tt)}, false)",
                **{
                    f"_n_{column}": (
                        f"CASE WHEN ({_is_int(t(key))} AND length({t(key)}) <= 19) "
                        f"OR ({_is_str(t(key))} AND {_sval(t(key))} RLIKE R'^[0-9]{{1,18}}$') "
                        f"THEN try_cast(CASE WHEN {_is_str(t(key))} THEN {_sval(t(key))} ELSE {t(key)} END "
                        "AS decimal(20,0)) END"
                    )
                    for key, column, _ in _NET_FIELDS
                    if column in _INT_BITS
                },
            },
        )
        df = step(
            df,
            {
                "_ts_int": (
                    f"CASE WHEN ({_is_int(tt)} OR (_ts_is_text AND _ts_text RLIKE R'^[0-9]+$')) "
                    "AND length(_ts_text) <= 20 AND NOT startswith(_ts_text, '-') "
                    "THEN try_cast(_ts_text AS decimal(20,0)) END"
                ),
                "_ts_float": (
                    f"CASE WHEN ({_is_float(tt)} OR _ts_is_text) AND _ts_text RLIKE R'^[0-9]+\\.[0-9]{{1,6}}$' "
                    "THEN try_cast(_ts_text AS decimal(26,6)) END"
                ),
                "_ts_iso": (
                    "try_cast(CASE WHEN _ts_is_text AND _ts_text RLIKE "
                    "R'^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?"
                    "(Z|[+-][0-9]{2}:[0-9]{2})?$' THEN CASE WHEN _ts_text RLIKE R'(Z|[+-][0-9]{2}:[0-9]{2})$' "
                    "THEN _ts_text ELSE concat(_ts_text, 'Z') END END AS timestamp)"
                ),
            },
        )
        df = step(
            df,
            {
                "_ts_micros": (
                    "coalesce(CASE WHEN _ts_int >= 100000000000000000 THEN floor(_ts_int / 1000) "
                    "WHEN _ts_int >= 100000000000000 THEN _ts_int WHEN _ts_int >= 100000000000 THEN _ts_int * 1000 "
                    "ELSE _ts_int * 1000000 END, "
                    "CASE WHEN _ts_float < 100000000000 THEN _ts_float * 1000000 END, "
                    "cast(unix_micros(_ts_iso) AS decimal(26,6)))"
                )
            },
        )
        cols: dict[str, str] = {}
        oks: dict[str, str] = {}
        oks["_ok_ts"] = f"_ts_micros >= 0 AND _ts_micros < {_MAX_EPOCH_S * 1_000_000}"
        cols["ts"] = f"CASE WHEN {oks['_ok_ts']} THEN timestamp_micros(cast(_ts_micros AS bigint)) END"
        for key, column, _ in _NET_FIELDS:
            tok = t(key)
            absent = f"(NOT {_is_value(tok)} OR coalesce({_is_missing(tok)}, false))"
            if column in _INT_BITS:
                limit = 2 ** (_INT_BITS[column] - 1)
                fits = f"_n_{column} BETWEEN {-limit} AND {limit - 1}"
                kind = "bigint" if _INT_BITS[column] == 64 else "int"
                cols[column] = f"CASE WHEN {fits} THEN cast(_n_{column} AS {kind}) END"
                oks[f"_ok_{column}"] = f"{absent} OR ({fits}" + (
                    f" AND _n_{column} >= 0)" if column in _COUNT_COLUMNS else ")"
                )
            elif column == "duration":
                num = f"(({_is_int(tok)} AND length({tok}) <= 15) OR {_is_float(tok)})"
                text_num = f"({_is_str(tok)} AND {_sval(tok)} RLIKE R'^-?[0-9]{{1,15}}(\\.[0-9]{{1,15}})?$')"
                cols[column] = (
                    f"try_cast(CASE WHEN {num} THEN {tok} WHEN {text_num} THEN {_sval(tok)} END AS double)"
                )
                oks[f"_ok_{column}"] = f"{absent} OR {num} OR {text_num}"
            else:
                cols[column] = _as_str(tok)
        cols["status"] = _as_str("_status_tok")
        cols["component"] = f"coalesce({_as_str('_component_tok')}, _zeek_path)"
        levels = ", ".join(f"{_q(k)}, {_q(v)}" for k, v in _LEVELS.items())
        cols["_level_text"] = f"lower(trim({_pystr('_level_tok')}))"
        cols["label"] = _as_str("_label_tok")
        cols["_detailed"] = _as_str("_detailed_tok")
        cols["_message"] = f"CASE WHEN _message_tok IS NOT NULL THEN {_dumps('_message_tok')} END"
        oks["_ok_level"] = f"_level_key IS NULL OR NOT {_is_str('_level_tok')} OR {_sval('_level_tok')} RLIKE R'^[ -~]*$'"
        oks["_ok_detailed"] = " + ".join(f"cast({present(k)} AS int)" for k in _DETAILED_LABEL_KEYS) + " <= 1"
        # Duplicate keys (also a dotted key against a flattened one) are Python's: its dict keeps
        # the last value at the first key's place. A zero read as ``0.0`` may have been ``-0.0``
        # (the variant's decimal has no sign of zero; ``repr`` has).
        oks["_ok_shape"] = (
            "_shape AND _types_ok AND size(array_distinct(_k)) = size(_k) "
            f"AND NOT exists(_v, x -> {_is_float('x')} AND NOT {_repr_ok('x')}) "
            "AND NOT (array_contains(_v, '0.0') AND contains(text, '-0'))"
        )
        consumed = [
            *popped_until(ts_keys, _is_value),
            *(_q(k) for k, _, _ in _NET_FIELDS),
            *popped_until(_STATUS_KEYS, _qualifies),
            *popped_until(_COMPONENT_KEYS, _qualifies),
            "_level_key",
            "_label_key",
            "_detailed_key",
            "_message_key",
        ]
        cols["_gone"] = f"array({', '.join(consumed)})"
        df = step(df, {**cols, **{name: f"coalesce({sql}, false)" for name, sql in oks.items()}})

        # 4. level, and entity: the first key that fits ("host" of an HTTP record is the server)
        whens: list[str] = []
        key_whens: list[str] = []
        for key in _NOTICE_ENTITY_KEYS:
            if key == "id.orig_h":
                fits = "(src_addr IS NOT NULL AND src_addr != '' AND src_addr != '-')"
                whens.append(f"WHEN {fits} THEN src_addr")
                key_whens.append(f"WHEN {fits} THEN NULL")
                continue
            tok = t(key)
            fits = f"({_is_value(tok)} AND NOT coalesce({_is_str(tok)} AND {_sval(tok)} IN ('', '-'), false))"
            if key == "host":
                fits = f"({fits} AND NOT _http)"
            if key not in _ENTITY_KEYS:  # "src": a notice record's only
                fits = f"({fits} AND {present('note')})"
            whens.append(f"WHEN {fits} THEN {_pystr(tok)}")
            key_whens.append(f"WHEN {fits} THEN {_q(key)}")
        default_entity = "NULL" if opts.default_entity is None else _q(opts.default_entity)
        warning_paths = ", ".join(_q(p) for p in sorted(_WARNING_ZEEK_PATHS))
        df = step(
            df,
            {
                "level": (
                    "CASE WHEN _level_key IS NOT NULL AND _level_text != '' AND _level_text != '-' "
                    f"THEN coalesce(try_element_at(map({levels}), _level_text), _level_text) "
                    f"WHEN coalesce(_zeek_path IN ({warning_paths}), false) OR {present('note')} THEN 'warning' "
                    "ELSE 'info' END"
                ),
                "entity": f"coalesce(CASE {' '.join(whens)} END, {default_entity})",
                "_entity_key": f"CASE {' '.join(key_whens)} END",
            },
        )
        # 5. attributes: what no rule popped, in the line's order, nulls dropped
        df = step(
            df,
            {
                "_kept": (
                    "filter(arrays_zip(_k, _v, _g), kv -> NOT (coalesce(array_contains(_gone, kv._k), false) "
                    "OR coalesce(kv._k = _entity_key, false)) AND kv._v != 'null')"
                )
            },
        )
        df = step(
            df,
            {
                "_ak": (
                    "concat(transform(_kept, kv -> kv._k), "
                    f"CASE WHEN _detailed IS NOT NULL THEN array('detailed_label') ELSE {empty} END)"
                ),
                "_av": (
                    f"concat(transform(_kept, kv -> {_dumps('kv._v')}), "
                    f"CASE WHEN _detailed IS NOT NULL THEN array(_detailed) ELSE {empty} END)"
                ),
            },
        )
        # 6. message: its field, a weird record's name, the connection, or the first attributes
        name = t("name")
        src = "coalesce(src_addr, '?')"  # no source port, as the Python parser's message
        dst = (
            "concat(CASE WHEN instr(dst_addr, ':') > 0 THEN concat('[', dst_addr, ']') ELSE coalesce(dst_addr, '?') END, "
            "':', coalesce(CASE WHEN dst_port != 0 THEN cast(dst_port AS string) END, '?'))"
        )
        conn = (
            "concat_ws(' ', CASE WHEN proto != '' THEN proto END, CASE WHEN component != '' THEN component END, "
            f"{src}, '->', {dst}, CASE WHEN status != '' THEN status END)"
        )
        pairs = "array_join(transform(slice(arrays_zip(_ak, _av), 1, 8), kv -> concat(kv._ak, '=', kv._av)), ' ')"
        message = (
            "coalesce(_message, "
            f"CASE WHEN coalesce(_zeek_path = 'weird', false) AND coalesce({_is_str(name)}, false) "
            f"THEN concat('weird ', {_sval(name)}) END, "
            f"CASE WHEN {present('id.orig_h')} OR {present('id.resp_h')} THEN {conn} ELSE {pairs} END)"
        )
        # A nested object's keys come in name order: exact only while at most one of them stays
        # among the attributes (the others are taken by rules, or the line goes to Python).
        kept_groups = "filter(transform(_kept, kv -> kv._g), g -> g IS NOT NULL)"
        nested_ok = f"coalesce(size({kept_groups}) = size(array_distinct({kept_groups})), false)"
        df = step(df, {"_ok": " AND ".join(["_ts_key IS NOT NULL", *oks, nested_ok])})
        # Only rows kept: a line with a duplicate key would fail the map (and goes to Python anyway).
        return step(
            df,
            {"attributes": "CASE WHEN _ok THEN map_from_arrays(_ak, _av) END", "message": message, "format": "'json'"},
        )


def json_events(lines: DataFrame, options: FormatOptions, zeek_logs: Mapping[str, str] | None = None) -> DataFrame:
    """See :class:`_Json`: ``lines`` (:data:`LINES_DDL`) with the event columns and ``_ok``.

    ``zeek_logs``: file -> the Zeek log it is by its name (the variant :func:`native_format`
    found), for records without ``_path`` (as :class:`loganomaly.ingest.formats.json.JsonParser`).
    """
    from pyspark.sql import functions as F

    if zeek_logs:
        by_file = F.create_map(*[F.lit(x) for item in sorted(zeek_logs.items()) for x in item])
        lines = lines.withColumn("_file_log", F.try_element_at(by_file, F.col("file")))
    else:
        lines = lines.withColumn("_file_log", F.lit(None).cast("string"))
    return _Json(options).events(lines)


def python_records(
    rows: Iterable[tuple[str, int, str, str | None]],
    options: Mapping[str, FormatOptions],
    formats: Mapping[str, LogFormat],
    max_raw_chars: int,
) -> Iterator[tuple[str, int, Any]]:
    """``(file, line_no, ParsedRecord)`` of lines the native expressions left to Python.

    Each file's parser is built once per task (from the file's own sample, as in
    :func:`loganomaly.ingest.formats.parse_file`); a file that cannot get one quarantines its lines
    with the same reason.
    """
    parsers: dict[str, tuple[Any, str | None, str | None]] = {}
    for path, line_no, text, problem in rows:
        if path not in parsers:
            opts = options.get(path) or FormatOptions()
            try:
                parser = make_parser(path, opts, formats=formats)
                parsers[path] = (parser.parse, parser.format, None)
            except ParseError as exc:
                parsers[path] = (None, opts.format, str(exc))
        parse, fmt, reason_all = parsers[path]
        yield path, line_no, parse_line(parse, fmt, reason_all, line_no, text, problem, max_raw_chars, Path(path))
