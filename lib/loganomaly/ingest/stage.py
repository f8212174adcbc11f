"""``ingest``: raw log files -> ``events`` + ``quarantine``, recorded in ``ingested_files``.

Parsing is Spark-free (:mod:`loganomaly.ingest.formats`); here Spark spreads the files over tasks with
``mapInArrow`` (each task streams its files and never holds one whole in memory), and the
results land in Delta. An uncompressed file larger than ``ingest.split_bytes`` is read by several
tasks, one byte range each, when its format allows (:func:`plan_tasks`), so one large file uses
every core; its lines keep the numbers and event ids a whole-file read gives them. A small load
(``ingest.local_max_bytes``, :func:`driver_path`) is parsed and written by the driver with the same
functions, without a Spark job. Guarantees:

* nothing lost: every line of every file becomes exactly one ``events`` row or one
  ``quarantine`` row with its reason, and ``ingested_files`` records both counts per file;
* incremental and idempotent: whether a file changed is decided on its content (a hash of its
  first 64 KiB and its size, :mod:`loganomaly.ingest.ledger`): an unchanged file is skipped, an
  appended one re-read and its rows of that generation replaced;
* rotation keeps rows: a known file now smaller than recorded (copytruncate) or starting with
  other bytes (renamed away and recreated) is a new *generation* of the file: earlier
  generations' rows stay, the new content loads as generation N+1 with its own ledger row and
  event ids;
* a file deleted between listing and parsing gets a ledger row with status ``vanished``, its
  reason and counts 0 (it loads if it comes back); the run's other files load;
* crash-safe: the ledger row is written last, and rows of a file that a crashed run wrote
  without its ledger row are deleted before the file is loaded again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fnmatch
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loganomaly.config import Config
from loganomaly.errors import ConfigError, ParseError
from loganomaly.ingest.formats import (
    EventColumns,
    FormatOptions,
    LogFormat,
    count_line_starts,
    iter_input_files,
    make_parser,
    parse_file,
    parse_file_blocks,
    read_whole,
    registered_formats,
)
from loganomaly.ingest.formats.json_columns import constant
from loganomaly.ingest.ids import CURRENT, IdKey
from loganomaly.ingest.ledger import (
    Load,
    ledger_row,
    list_files,
    next_generation,
    plan_loads,
    read_ledger,
    record,
    vanished_row,
)
from loganomaly.ingest.native import (
    LINES_DDL,
    cut_lines,
    json_events,
    native_format,
    native_session,
    python_records,
)
from loganomaly.ingest.templates.miner import Templates
from loganomaly.ingest.templates.store import load_state, save_state, template_config
from loganomaly.lake.deltars import DeltaRsCommitMessage, DeltaRsWriter, WrittenFile
from loganomaly.lake.lock import writer_lock
from loganomaly.lake.schemas import EVENT_COLUMNS, QUARANTINE_COLUMNS, TABLES
from loganomaly.lake.tables import Lake
from loganomaly.runtime.gc_tuning import relaxed_gc
from loganomaly.runtime.runs import new_run_id

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

#: Rows per Arrow batch emitted by a parsing task.
BATCH_ROWS = 8192
KIND = "_kind"




def event_id(path: str, line_no: int, generation: int = 0, scheme: int = CURRENT) -> str:
    """Stable id of the event at ``path:line_no`` of the file's ``generation``, named by ``scheme``
    (:mod:`loganomaly.ingest.ids`); the same line always gets the same id."""
    return IdKey(path, generation, scheme).one(line_no)


def event_ids(
    path: str, lines: Sequence[int], is_event: Sequence[bool], generation: int = 0, scheme: int = CURRENT
) -> list[str | None]:
    """:func:`event_id` of each line that is an event (None for the others)."""
    return IdKey(path, generation, scheme).batch(lines, is_event).to_pylist()  # type: ignore[no-any-return]


def _spark_type_to_arrow(tp: str) -> pa.DataType:
    return {
        "string": pa.string(),
        "timestamp": pa.timestamp("us", "UTC"),
        "date": pa.date32(),
        "bigint": pa.int64(),
        "int": pa.int32(),
        "double": pa.float64(),
        "boolean": pa.bool_(),
        "array<string>": pa.list_(pa.string()),
        "map<string,string>": pa.map_(pa.string(), pa.string()),
    }[tp]


#: One wide schema for the parsing output: event columns, quarantine-only columns, and the kind.
PARSED_COLUMNS: dict[str, str] = {
    **EVENT_COLUMNS,
    **{k: v for k, v in QUARANTINE_COLUMNS.items() if k not in EVENT_COLUMNS},
    KIND: "string",
}
PARSED_ARROW = pa.schema([pa.field(n, _spark_type_to_arrow(t)) for n, t in PARSED_COLUMNS.items()])
PARSED_DDL = ", ".join(f"`{n}` {t}" for n, t in PARSED_COLUMNS.items())


#: Worker-local cache of template matchers by state version (lives as long as the Python worker).
_MATCHERS: dict[str, Templates] = {}


def matcher(version: str, state: str | bytes) -> Templates:
    """The matcher of a template state, built once per Python worker and reused by later tasks."""
    if version not in _MATCHERS:
        _MATCHERS.clear()  # one state at a time: an old one would only hold memory
        _MATCHERS[version] = Templates.from_json(state)
    return _MATCHERS[version]


def _template_columns(
    is_event: list[bool], messages: list[Any] | pa.Array, templates: Templates
) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Template id, text and parameters per row: events matched, quarantine rows null."""
    return templates.match_columns(messages, is_event)


#: Columns a parser fills; the rest are set per file or computed per batch.
_PARSER_COLUMNS = [
    name
    for name in PARSED_COLUMNS
    if name not in {"event_id", "date", "source", "file", "line_no", "run_id", KIND, "template_id", "template", "params"}
]
#: The parser's columns as one struct type, for :func:`_build`'s one-pass conversion.
_PARSER_STRUCT = pa.struct([PARSED_ARROW.field(name) for name in _PARSER_COLUMNS])


def records_batch(
    path: str,
    source: str,
    rows: list[dict[str, Any]] | list[dict[str, Any] | None],
    lines: list[int],
    kinds: list[str],
    run_id: str,
    templates: Templates | None,
    ids: IdKey | int,
    columns: EventColumns | None = None,
) -> pa.RecordBatch:
    """One Arrow batch of :data:`PARSED_ARROW` rows from one file's parsed records.

    ``ids``: how the file's lines are named (:class:`.ids.IdKey`; a number: that generation with
    the current scheme). ``columns``: events the parser built column-wise; ``rows`` is None at
    their positions.

    An event Arrow cannot store (a parser bug, a value of the wrong type) does not fail the
    batch: the batch is rebuilt event by event and those that fail become quarantine rows in
    place (``kinds`` too, which the caller counts), so the file still loads line for line.
    """
    try:
        return _build(path, source, rows, lines, kinds, run_id, templates, ids, by_struct=True, columns=columns)
    except Exception as exc:  # noqa: BLE001 - one unstorable event must not fail the file
        log.warning("%s: a batch did not convert (%r); finding its unstorable events", path, exc)
    if columns is not None:
        # The reference conversion works on row dicts: the column-wise events become dicts too
        # (they are storable by construction; this is for the other rows' sake).
        names = list(columns.arrays)
        values = [columns.arrays[name].to_pylist() for name in names]
        for j, i in enumerate(columns.positions):
            rows[i] = {name: col[j] for name, col in zip(names, values, strict=True)}
    # Column by column from here: the reference conversion, whose error texts the reasons quote.
    for i, kind in enumerate(kinds):
        if kind != "event":
            continue
        try:
            _build(path, source, rows[i : i + 1], lines[i : i + 1], kinds[i : i + 1], run_id, templates, ids)
        except Exception as exc:  # noqa: BLE001
            rows[i] = {
                "format": rows[i].get("format"),  # type: ignore[union-attr]
                "reason": f"event not storable: {type(exc).__name__}: {str(exc)[:200]}",
                "raw": None,
                "raw_length": None,
            }
            kinds[i] = "quarantine"
    return _build(path, source, rows, lines, kinds, run_id, templates, ids)


def _build(
    path: str,
    source: str,
    rows: list[dict[str, Any]] | list[dict[str, Any] | None],
    lines: list[int],
    kinds: list[str],
    run_id: str,
    templates: Templates | None,
    ids: IdKey | int,
    by_struct: bool = False,
    columns: EventColumns | None = None,
) -> pa.RecordBatch:
    """The batch of :func:`records_batch`.

    ``by_struct``: convert the parser's columns in one pass of Arrow's converter over the row
    dicts (a struct array, split into its fields) instead of one Python list per column; the
    same converter per field, so the same arrays or the same error, about 4x faster.
    ``columns`` (with ``by_struct``): the column-wise events, merged with the rows' arrays in
    line order.
    """
    import pyarrow.compute as pc

    n = len(rows)
    if by_struct and columns is not None:
        built = _merge_columns(rows, columns)
        messages: list[Any] | pa.Array = built["message"]  # matched in Arrow (Templates.match_columns)
    elif by_struct:
        parsed = pa.array(rows, _PARSER_STRUCT)
        built = dict(zip(_PARSER_COLUMNS, parsed.flatten(), strict=True))
        messages = [r.get("message") for r in rows] if templates is not None else []  # type: ignore[union-attr]
    else:
        built = {name: [r.get(name) for r in rows] for name in _PARSER_COLUMNS}  # type: ignore[union-attr]
        messages = built["message"]
    all_events = kinds.count("event") == n
    is_event = [True] * n if all_events else [k == "event" for k in kinds]
    built["event_id"] = IdKey.of(path, ids).batch(lines, None if all_events else is_event)
    # Columns of one value: repeated by Arrow (a Python list of n references converted row by row
    # cost about 40 ns a row and column).
    built["source"] = constant(source, n) if all_events else [source if ev else None for ev in is_event]
    built["file"] = constant(path, n)
    built["line_no"] = lines
    built["run_id"] = constant(run_id, n)
    built[KIND] = constant("event", n) if all_events else kinds
    if templates is not None:
        built["template_id"], built["template"], built["params"] = _template_columns(is_event, messages, templates)
    arrays = {}
    for f in PARSED_ARROW:
        if f.name == "date":
            continue
        values = built.get(f.name)
        if values is None:
            arrays[f.name] = pa.nulls(n, f.type)
        elif isinstance(values, pa.Array):
            arrays[f.name] = values
        else:
            arrays[f.name] = pa.array(values, f.type)
    # UTC date of the event time, computed in Arrow rather than per row in Python.
    arrays["date"] = pc.cast(arrays["ts"], pa.date32())
    return pa.record_batch([arrays[f.name] for f in PARSED_ARROW], schema=PARSED_ARROW)


def _merge_columns(rows: Sequence[dict[str, Any] | None], columns: EventColumns) -> dict[str, pa.Array]:
    """The parser columns of a batch whose events are partly column-wise: the row dicts
    converted as :func:`_build` converts them, then both sets of arrays put in line order."""
    import numpy as np

    # The common block: every line column-wise, in order; its arrays are the batch's as they are.
    listed = [] if rows.count(None) == len(rows) else [i for i, r in enumerate(rows) if r is not None]
    order = listed + columns.positions  # row of the concatenation -> its line's position
    take = None if order == list(range(len(rows))) else pa.array(np.argsort(np.asarray(order, dtype=np.int64)))
    from_rows: dict[str, pa.Array] | None = None
    if listed:
        parsed = pa.array([rows[i] for i in listed], _PARSER_STRUCT)
        from_rows = dict(zip(_PARSER_COLUMNS, parsed.flatten(), strict=True))
    merged: dict[str, pa.Array] = {}
    for name, typ in zip(_PARSER_COLUMNS, _PARSER_STRUCT, strict=True):
        extra = columns.arrays.get(name)
        if extra is None:
            extra = pa.nulls(len(columns.positions), typ.type)
        elif extra.type != typ.type:
            raise TypeError(f"column-wise {name} is {extra.type}, the table's is {typ.type}")
        both = extra if from_rows is None else pa.concat_arrays([from_rows[name], extra])
        merged[name] = both if take is None else both.take(take)
    return merged


def parse_files_to_batches(
    paths: Sequence[str],
    run_id: str,
    max_raw_chars: int,
    sources: dict[str, tuple[str, FormatOptions]] | None = None,
    templates: Templates | None = None,
    formats: Mapping[str, LogFormat] | None = None,
    id_keys: Mapping[str, IdKey] | None = None,
    byte_range: tuple[int, int | None, int] | None = None,
    columnar: bool = True,
) -> Iterator[pa.RecordBatch]:
    """Parse files into Arrow batches of :data:`PARSED_ARROW` rows (Spark-free; one task's work).

    A batch never spans two files, so per-file counts need no grouping.

    Args:
        paths: files to read, in order.
        run_id: recorded on every row.
        max_raw_chars: raw text kept per quarantined line.
        sources: path -> (source name, FormatOptions); a path not in it is detected and named
            after its folder.
        templates: when given, events get their template id, text and parameters here, in the
            same pass (no second trip through Python).
        formats: the log formats to detect and parse with, in detection order; default the
            registry's (see :class:`_ParseJob` for why a task gets the driver's).
        id_keys: path -> how the lines of the file's generation being loaded are named
            (:class:`.ids.IdKey`: generation and id scheme); default generation 0, current scheme.
        byte_range: ``(start, end, first line number)``: read only the lines starting in that
            byte range (a task's share of a large file, see :func:`plan_tasks`); for one path.
        columnar: let parsers that can build their events a block of lines at a time
            (:func:`parse_file_blocks`: JSON lines); False parses every line alone, the reference
            those blocks are tested against. The batches are the same either way.
    """
    if columnar:
        yield from _parse_blocks_to_batches(
            paths, run_id, max_raw_chars, sources, templates, formats, id_keys, byte_range
        )
        return
    id_of = id_keys or {}
    for path in paths:
        source, options = (sources or {}).get(path) or (_default_source(path), None)
        n_events = n_quarantined = 0
        rows: list[dict[str, Any]] = []
        lines: list[int] = []
        kinds: list[str] = []
        try:
            for record in parse_file(
                path, max_raw_chars=max_raw_chars, options=options, formats=formats, byte_range=byte_range
            ):
                rows.append(record.data)
                lines.append(record.line_no)
                kinds.append(record.kind)
                if len(rows) >= BATCH_ROWS:
                    yield records_batch(
                        path, source, rows, lines, kinds, run_id, templates, id_of.get(path, 0)
                    )
                    n_events += kinds.count("event")
                    n_quarantined += len(kinds) - kinds.count("event")
                    rows, lines, kinds = [], [], []
        except FileNotFoundError:
            if n_events or n_quarantined or rows:
                raise  # an open file cannot vanish on POSIX; this is something else
            # Deleted since it was listed: no rows; the driver writes no ledger row for it.
            log.warning("%s vanished before it was read: skipped", path)
            continue
        if rows:
            yield records_batch(path, source, rows, lines, kinds, run_id, templates, id_of.get(path, 0))
            n_events += kinds.count("event")
            n_quarantined += len(kinds) - kinds.count("event")
        part = "" if byte_range is None else f" bytes {byte_range[0]}..{byte_range[1] or 'end'}"
        log.info("parsed %s%s: %d events, %d quarantined", path, part, n_events, n_quarantined)


def _parse_blocks_to_batches(
    paths: Sequence[str],
    run_id: str,
    max_raw_chars: int,
    sources: dict[str, tuple[str, FormatOptions]] | None,
    templates: Templates | None,
    formats: Mapping[str, LogFormat] | None,
    id_keys: Mapping[str, IdKey] | None,
    byte_range: tuple[int, int | None, int] | None,
) -> Iterator[pa.RecordBatch]:
    """:func:`parse_files_to_batches` through :func:`parse_file_blocks`: one block of
    :data:`BATCH_ROWS` lines per batch, so the batches are those of the per-line loop."""
    id_of = id_keys or {}
    for path in paths:
        source, options = (sources or {}).get(path) or (_default_source(path), None)
        n_events = n_quarantined = 0
        try:
            for block in parse_file_blocks(
                path, max_raw_chars, options=options, formats=formats, byte_range=byte_range, block_lines=BATCH_ROWS
            ):
                kinds = block.kinds
                yield records_batch(
                    path, source, block.rows, block.line_nos, kinds, run_id, templates, id_of.get(path, 0),
                    block.columns,
                )  # fmt: skip
                n_events += kinds.count("event")
                n_quarantined += len(kinds) - kinds.count("event")
        except FileNotFoundError:
            if n_events or n_quarantined:
                raise  # an open file cannot vanish on POSIX; this is something else
            log.warning("%s vanished before it was read: skipped", path)
            continue
        part = "" if byte_range is None else f" bytes {byte_range[0]}..{byte_range[1] or 'end'}"
        log.info("parsed %s%s: %d events, %d quarantined", path, part, n_events, n_quarantined)


def _default_source(path: str) -> str:
    return os.path.basename(os.path.dirname(path)) or "default"


def resolve_sources(cfg: Config, paths: Sequence[str]) -> dict[str, tuple[str, FormatOptions]]:
    """Source name and parse options of each path: the first ``ingest.sources`` entry whose glob
    matches, else detection (no options) under the name of the file's folder.

    Options are validated here, on the driver, so a typo fails the run before any task starts; the
    tasks get the validated objects (a format registered on the driver only validates there).

    Raises:
        ConfigError: a source's options are not valid ``FormatOptions`` fields or values.
    """
    options: list[FormatOptions] = []
    for src in cfg.ingest.sources:
        try:
            options.append(FormatOptions(**src.options))
        except TypeError as exc:
            valid = ", ".join(f.name for f in dataclasses.fields(FormatOptions))
            raise ConfigError(f"ingest.sources[{src.name}].options: {exc}; valid keys: {valid}") from None
        except ConfigError as exc:
            raise ConfigError(f"ingest.sources[{src.name}].options: {exc}") from None
    by_detection = FormatOptions()
    resolved: dict[str, tuple[str, FormatOptions]] = {}
    for path in paths:
        for src, opts in zip(cfg.ingest.sources, options, strict=True):
            if any(fnmatch.fnmatch(path, pattern) for pattern in src.paths):
                resolved[path] = (src.name, opts)
                break
        else:
            resolved[path] = (_default_source(path), by_detection)
    return resolved


@dataclass(frozen=True)
class Unit:
    """What one parsing task reads of one file: all of it, or the lines starting in the byte range
    ``[start, end)`` (``end`` None: to the end), numbered from ``first_line``."""

    path: str
    start: int = 0
    end: int | None = None
    first_line: int = 1

    @property
    def byte_range(self) -> tuple[int, int | None, int] | None:
        return None if self.start == 0 and self.end is None else (self.start, self.end, self.first_line)


#: Columns of the task-planning DataFrame: one row per :class:`Unit` (``range_end`` -1: to the end).
UNITS_DDL = "path string, range_start bigint, range_end bigint, first_line bigint"


def _units(batch: pa.RecordBatch) -> Iterator[Unit]:
    columns = (batch.column(c).to_pylist() for c in ("path", "range_start", "range_end", "first_line"))
    for path, start, end, first in zip(*columns, strict=True):
        yield Unit(path, start, None if end < 0 else end, first)


def splittable(path: str, options: FormatOptions | None, formats: Mapping[str, LogFormat]) -> bool:
    """Whether ``path`` may be read in byte ranges: uncompressed UTF-8, and a parser whose lines do not
    depend on the lines before them (:attr:`LineParser.splittable`). A file whose format cannot
    be detected is splittable (every line gets the same reason); one whose options do not fit
    it, or that is gone, is not (read whole, the task reports it as before)."""
    try:
        if read_whole(path):
            return False
        return bool(make_parser(path, options, formats=formats).splittable)
    except ParseError:
        return True
    except (ConfigError, OSError):
        return False


#: Up to this many bytes to count, the driver counts the newlines of the split files itself; past
#: it a Spark job does, one task per range. ``bytes.count`` runs at memory speed (0.01 s for 10 MiB
#: here, against 3.4 s for the smallest Spark job on a busy 2-core machine, ``bench/ingest.py``), so
#: the job only pays once a file is large enough that reading it serially from storage costs more.
DRIVER_COUNT_BYTES = 4 << 30


#: What opening a file is taken to cost, in bytes read, when whole files are packed into tasks:
#: Spark's own ``spark.sql.files.openCostInBytes`` default, so a task of small files gets about as
#: many as a task of Spark's file sources would.
OPEN_COST_BYTES = 4 << 20


def pack_files(files: Sequence[tuple[str, int]], max_bytes: int, parallelism: int,
               open_cost: int = OPEN_COST_BYTES, total: int | None = None) -> list[list[tuple[str, int]]]:
    """Whole files ``(path, size)`` grouped into tasks the way Spark's file sources pack files
    into partitions (``FilePartition.getFilePartitions``): largest first, each file counted with
    ``open_cost`` more bytes, a task closed when the next file would take it past
    ``min(max_bytes, max(open_cost, total / parallelism))``; ``total`` is the load's bytes with the
    opening costs (by default of ``files``; with files read in byte ranges, of those too).

    Why: a task costs a Python worker a fixed share of a second whatever it reads (measured: 0.25 s
    of CPU and 0.2 s of wall time per ingest task before :mod:`loganomaly.runtime.pyworker`, which
    took most of it away; 0.05-0.09 s from a task's start to its function after), so one task per
    file made a load of many files pay that per file and in as many waves as files per core: 10,000
    small files were 10,000 tasks. The limit falls below ``max_bytes`` when the load is small for
    the cluster, so the files still spread over every core (four files of 40 MB on two cores: two
    tasks of two files, where one file a task ran two waves).
    """
    if not files:
        return []
    if total is None:
        total = sum(size + open_cost for _, size in files)
    limit = min(max_bytes, max(open_cost, total // max(1, parallelism)))
    groups: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    current_bytes = 0
    for path, size in sorted(files, key=lambda f: -f[1]):
        if current and current_bytes + size > limit:
            groups.append(current)
            current, current_bytes = [], 0
        current.append((path, size))
        current_bytes += size + open_cost
    groups.append(current)
    return groups


def plan_tasks(
    spark: SparkSession | None,
    files: Sequence[tuple[str, int]],
    per_task: int,
    split_bytes: int,
    can_split: Callable[[str], bool],
    driver_count_bytes: int = DRIVER_COUNT_BYTES,
    parallelism: int = 1,
    open_cost: int = OPEN_COST_BYTES,
) -> list[list[Unit]]:
    """The parsing tasks, largest first: a file over ``split_bytes`` that ``can_split`` is cut
    into ranges of that size, one task each; other files go ``per_task`` to a task, or with
    ``per_task`` 0 are packed by size over ``parallelism`` cores (:func:`pack_files`).

    A range's first line number is one more than the lines starting in the ranges before it,
    counted from newline bytes (:func:`count_line_starts`) before any parsing, so that every line
    keeps the number, and so the event id, the whole-file read gives it: on the driver up to
    ``driver_count_bytes`` (or when ``spark`` is None), else by a light Spark job, one task per
    range. The last range reads to the end of the file: lines appended since the listing are
    read, as by a whole-file task.
    """
    ranges: dict[str, list[tuple[int, int]]] = {}
    whole: list[tuple[str, int]] = []
    for path, size in files:
        if size > split_bytes and can_split(path):
            ranges[path] = [(s, min(s + split_bytes, size)) for s in range(0, size, split_bytes)]
        else:
            whole.append((path, size))
    counted = [(p, s, e) for p, rs in ranges.items() for s, e in rs[:-1]]
    if spark is None or not counted or sum(e - s for _, s, e in counted) <= driver_count_bytes:
        counts = [count_line_starts(*r) for r in counted]
    else:
        counts = spark.sparkContext.parallelize(counted, len(counted)).map(lambda r: count_line_starts(*r)).collect()
    starts = dict(zip(counted, counts, strict=True))
    tasks: list[tuple[int, list[Unit]]] = []
    for path, rs in ranges.items():
        first = 1
        for i, (s, e) in enumerate(rs):
            last = i == len(rs) - 1
            tasks.append((e - s, [Unit(path, s, None if last else e, first)]))
            if not last:
                first += starts[(path, s, e)]
        log.info("%s: %d bytes read by %d tasks of %d bytes", path, rs[-1][1], len(rs), split_bytes)
    whole.sort(key=lambda f: -f[1])
    if per_task < 1:  # the ranges' bytes count in the load that sets the packing limit
        groups = pack_files(whole, split_bytes, parallelism, open_cost, sum(size + open_cost for _, size in files))
    else:
        groups = [whole[i : i + per_task] for i in range(0, len(whole), per_task)]
    for group in groups:
        tasks.append((sum(size for _, size in group), [Unit(path) for path, _ in group]))
    tasks.sort(key=lambda t: -t[0])  # biggest first: the last task to start is a small one
    return [units for _, units in tasks]


def _units_df(spark: SparkSession, tasks: Sequence[Sequence[Unit]]) -> DataFrame:
    """One row per unit, one partition per task (``parallelize`` slices a list of tasks exactly)."""
    rows = [[(u.path, u.start, -1 if u.end is None else u.end, u.first_line) for u in units] for units in tasks]
    rdd = spark.sparkContext.parallelize(rows, max(1, len(rows))).flatMap(lambda units: units)
    return spark.createDataFrame(rdd, UNITS_DDL)


def driver_path(
    cfg: Config, todo: Sequence[Load], split: Iterable[str], native_paths: Sequence[str]
) -> tuple[bool, str]:
    """Whether the driver parses and writes this run's files itself, and why (or why not).

    A small load (the first one of a new lake, a nightly trickle) is dominated by fixed costs a
    plain Spark job does not pay: the Spark jobs of the template pass and the parsing pass, where a
    fresh JVM starts its first Python worker, for a few kilobytes of lines. Up to
    ``ingest.local_max_bytes`` of input the driver runs the same Spark-free functions the tasks run
    (:func:`parse_files_to_batches` with the same :class:`_ParseJob`, the same template fit on the
    same distinct messages in the same order) and writes the same rows. Files read in byte ranges
    and files parsed in the JVM (``ingest.native``) take the Spark path: both exist for inputs
    worth spreading over cores.
    """
    limit = cfg.ingest.local_max_bytes
    total = sum(f.size for f in todo)
    if limit <= 0:
        return False, "ingest.local_max_bytes is 0"
    if total > limit:
        return False, f"{len(todo)} files, {total} bytes > ingest.local_max_bytes {limit}"
    if native_paths:
        return False, f"{len(native_paths)} files parsed natively (ingest.native)"
    n_split = len(set(split))
    if n_split:
        return False, f"{n_split} files read in byte ranges"
    return True, f"{len(todo)} files, {total} bytes <= ingest.local_max_bytes {limit}"


class _Tally:
    """A counter with an accumulator's ``add``/``value``, for work the driver does itself."""

    def __init__(self) -> None:
        self.value = 0

    def add(self, amount: int) -> None:
        self.value += amount


@dataclass
class IngestSummary:
    run_id: str
    files_seen: int
    files_loaded: int
    events: int
    quarantined: int
    template_state: str | None = None
    templates: int = 0
    #: Files read by several tasks (byte ranges), and how many tasks read them.
    files_split: int = 0
    split_tasks: int = 0
    #: Template matches in the parsing tasks answered from the matcher's caches (the message seen
    #: before, or its masked form) and those that needed a Drain search (misses,
    #: :meth:`Templates.cache_counts`); hit rate = hits / (hits + misses), None when nothing was matched.
    template_cache_hits: int = 0
    template_cache_misses: int = 0
    template_cache_hit_rate: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def run(spark: SparkSession, cfg: Config, inputs: Sequence[str], lake: Lake | None = None) -> IngestSummary:
    """Ingest every file under ``inputs`` that is new or changed since the last run.

    With templates enabled, the saved template state is broadcast and matched inside the parsing
    tasks. On the first run (or with ``templates.refit``) a first pass streams the distinct
    messages of the training window (``templates.train_until``) to the miner, and the fitted state
    is saved as a new version before the main pass.

    With the ``deltars`` engine the parsing tasks write their Parquet files themselves and the
    driver commits them (one Delta transaction per table), so rows cross from Python to the JVM
    never; with ``delta`` they go through a DataFrame and delta-spark.

    The run holds the lake's writer lock (:mod:`loganomaly.lake.lock`): a second writer on the
    same lake is refused with ``LakeBusyError`` instead of duplicating events.

    Example:
        >>> summary = run(spark, cfg, ["data/raw"])
        >>> summary.events, summary.quarantined
    """
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    run_id = new_run_id("ingest")
    with writer_lock(lake.root, run_id, "ingest"):
        return _run(spark, cfg, inputs, lake, run_id)


def _run(spark: SparkSession, cfg: Config, inputs: Sequence[str], lake: Lake, run_id: str) -> IngestSummary:
    listing = list_files(iter_input_files(inputs))
    known = read_ledger(lake)
    gone = list(listing.vanished)
    todo = plan_loads(listing.files, known, gone)
    files = listing.files
    # Gone before anything of theirs was deleted: a row of their own, their loaded rows untouched.
    vanished = [(p, next_generation(known, p), "vanished after it was listed, before it was read") for p in gone]
    log.info(
        "ingest %s: %d files found, %d already ingested, %d to load",
        run_id,
        len(files),
        len(files) - len(todo),
        len(todo),
    )
    for f in [f for f in todo if not os.path.exists(f.path)]:
        # Checked again just before this run deletes any rows of the file.
        vanished.append((f.path, next_generation(known, f.path), "vanished after it was listed, before it was read"))
        todo.remove(f)
    if not todo:
        if vanished:
            now = dt.datetime.now(dt.timezone.utc)
            record(spark, lake, [vanished_row(p, g, run_id, now, why) for p, g, why in vanished], run_id)
            log.warning("ingest %s: %d listed files vanished before they were read (ledger status 'vanished')",
                        run_id, len(vanished))
        return IngestSummary(run_id, len(files), 0, 0, 0)
    paths = [f.path for f in todo]
    sources = resolve_sources(cfg, paths)
    templates: Templates | None = None
    if cfg.templates.enabled:
        template_config(cfg.templates)  # fail on bad settings before reading anything
        templates = None if cfg.templates.refit else load_state(lake)

    # Rows of these paths from an earlier, changed version of the generation being loaded or from a
    # run that crashed before its ledger row: remove them so the load below cannot duplicate
    # anything. Rows of earlier generations (written by the runs in their ledger rows) stay.
    for table in ("events", "quarantine"):
        if lake.exists(table):
            lake.delete_keeping(table, "file", {f.path: f.keep_runs for f in todo}, "run_id")

    per_task = cfg.ingest.files_per_task
    # Biggest files first, so the last task to start is a small one (less idle time at the end).
    by_size = [f.path for f in sorted(todo, key=lambda f: -f.size)]
    formats = registered_formats()
    job = _ParseJob(run_id, cfg.ingest.max_raw_chars, sources, formats, {f.path: f.id_key for f in todo})
    natives = {p: native_format(p, sources[p][1], formats) for p in by_size} if cfg.ingest.native else {}
    native_paths = [p for p in by_size if natives.get(p) is not None]
    # Zeek JSON logs without ``_path`` are the log their file's name says (the JSON format's variant).
    zeek_logs = {p: d.pattern for p, d in natives.items() if d is not None and d.pattern is not None}
    python_paths = [p for p in by_size if p not in set(native_paths)]
    log.info("ingest %s: %d files parsed natively, %d in Python", run_id, len(native_paths), len(python_paths))
    size_of = {f.path: f.size for f in todo}
    tasks = plan_tasks(
        spark, [(p, size_of[p]) for p in python_paths], per_task, cfg.ingest.split_bytes,
        lambda p: splittable(p, sources[p][1], formats), parallelism=spark.sparkContext.defaultParallelism,
    )  # fmt: skip
    split = {u.path for units in tasks for u in units if u.byte_range is not None}
    n_split_tasks = sum(1 for units in tasks if units[0].path in split)
    if split:
        log.info("ingest %s: %d files read in %d byte ranges", run_id, len(split), n_split_tasks)
    local, why = driver_path(cfg, todo, split, native_paths)
    log.info("ingest %s: %s path (%s)", run_id, "driver" if local else "Spark", why)
    units = [u for task_units in tasks for u in task_units]
    if cfg.templates.enabled and templates is None:
        if local and not (cfg.templates.refit and lake.exists("events")):
            templates = _fit_templates_local(spark, cfg, lake, units, job)
        else:
            templates = _fit_templates(
                spark, cfg, lake, _units_df(spark, tasks + [[Unit(p)] for p in native_paths]), job
            )
    if templates is not None:
        job.state_version = templates.version
        if local:
            # The JSON the tasks would get: they match with a matcher rebuilt from it, not with
            # the fitted miner, and so does the driver (the same matches by construction).
            job.state = templates.to_json()
            job.cache = (_Tally(), _Tally())
        else:
            job.state = spark.sparkContext.broadcast(templates.to_json())
            job.cache = (spark.sparkContext.accumulator(0), spark.sparkContext.accumulator(0))
    per_file: dict[str, tuple[int, int, str | None]] = {}
    try:
        if native_paths:
            with native_session(spark):
                per_file.update(_ingest_native(spark, lake, native_paths, max(1, per_task), job, zeek_logs))
        if python_paths and local:
            if lake.engine == "deltars" and cfg.ingest.direct_write:
                per_file.update(_ingest_direct_local(lake, units, job))
            else:
                per_file.update(_ingest_local_dataframe(lake, units, job))
        elif python_paths:
            files_df = _units_df(spark, tasks)
            if lake.engine == "deltars" and cfg.ingest.direct_write:
                per_file.update(_ingest_direct(spark, lake, files_df, job))
            else:
                per_file.update(_ingest_dataframe(lake, files_df, job))
    finally:
        if job.state is not None and not isinstance(job.state, str):
            job.state.unpersist()

    now = dt.datetime.now(dt.timezone.utc)
    ledger = []
    for f in todo:
        counts = per_file.get(f.path, (0, 0, None))
        if counts[0] + counts[1] == 0 and not os.path.exists(f.path):
            # Deleted between the check above and parsing: this generation's earlier rows (if it
            # was being re-read) were deleted above, so its row now says 0 with the reason.
            log.warning("ingest %s: %s vanished before it was read; recorded as vanished", run_id, f.path)
            vanished.append((f.path, f.generation, "vanished before it was read"))
            continue
        ledger.append(ledger_row(f, counts, run_id, now))
    record(spark, lake, ledger + [vanished_row(p, g, run_id, now, why) for p, g, why in vanished], run_id)
    if vanished:
        log.warning("ingest %s: %d listed files vanished before they were read (ledger status 'vanished')",
                    run_id, len(vanished))
    hits, misses = (job.cache[0].value, job.cache[1].value) if job.cache is not None else (0, 0)
    summary = IngestSummary(
        run_id,
        len(files),
        len(ledger),
        sum(r[5] for r in ledger),
        sum(r[6] for r in ledger),
        templates.version if templates is not None else None,
        len(templates) if templates is not None else 0,
        len(split),
        n_split_tasks,
        hits,
        misses,
        round(hits / (hits + misses), 4) if hits + misses else None,
    )
    log.info(
        "ingest %s done: %d files (%d in %d byte ranges), %d events, %d quarantined, template state %s, "
        "template cache %d hits / %d misses (hit rate %s)",
        run_id,
        summary.files_loaded,
        summary.files_split,
        summary.split_tasks,
        summary.events,
        summary.quarantined,
        summary.template_state,
        hits,
        misses,
        summary.template_cache_hit_rate,
    )
    return summary


@dataclass
class _ParseJob:
    """What every parsing task needs; shipped to executors with the task closure.

    ``formats`` are the log formats resolved from the registry on the driver: Spark's Python
    workers are other processes, where a format registered at run time (``LOG_FORMATS.register``
    from user code) does not exist, so tasks detect and parse with these (cloudpickle sends each
    by reference to its class, which a worker imports, or by value where so registered).
    """

    run_id: str
    max_raw_chars: int
    sources: dict[str, tuple[str, FormatOptions]]
    formats: dict[str, LogFormat]
    id_keys: dict[str, IdKey] = dataclasses.field(default_factory=dict)
    state: Any = None  # Broadcast of the template state JSON (the JSON itself on the driver path)
    state_version: str = ""
    cache: Any = None  # Accumulators of template cache (hits, misses) in the parsing tasks

    def templates(self) -> Templates | None:
        if self.state is None:
            return None
        return matcher(self.state_version, self.state if isinstance(self.state, str) else self.state.value)

    def batches(self, path: str, templates: Templates | None, unit: Unit | None = None) -> Iterator[pa.RecordBatch]:
        return parse_files_to_batches(
            [path], self.run_id, self.max_raw_chars, self.sources, templates, self.formats, self.id_keys,
            unit.byte_range if unit is not None else None,
        )  # fmt: skip

    @contextlib.contextmanager
    def counting(self, templates: Templates | None) -> Iterator[None]:
        """Add the template cache hits and misses of the enclosed work to :attr:`cache`.

        The matcher lives as long as its Python worker and its cache with it, so a task counts
        the change of the cache's counters over its own work. An accumulator, so a retried task
        counts twice: a measurement, not a guarantee.
        """
        before = templates.cache_counts() if templates is not None else None
        try:
            yield
        finally:
            if templates is not None and before is not None and self.cache is not None:
                after = templates.cache_counts()
                self.cache[0].add(after[0] - before[0])
                self.cache[1].add(after[1] - before[1])



#: One row per written file (``table`` set) or per input file (``file`` set) of a direct-write task.
REPORT_DDL = (
    "table string, path string, size bigint, partition_values string, mtime bigint, num_records bigint, "
    "file string, events bigint, quarantined bigint, format string"
)
_REPORT_ARROW = pa.schema(
    [
        ("table", pa.string()), ("path", pa.string()), ("size", pa.int64()), ("partition_values", pa.string()),
        ("mtime", pa.int64()), ("num_records", pa.int64()), ("file", pa.string()), ("events", pa.int64()),
        ("quarantined", pa.int64()), ("format", pa.string()),
    ]
)


def _direct_writers(lake: Lake, job: _ParseJob) -> dict[str, DeltaRsWriter]:
    """The ``events`` and ``quarantine`` writers of a direct write (one write id each)."""
    return {
        name: DeltaRsWriter(
            {"path": lake.path(name), "partitionBy": ",".join(TABLES[name].partition_by), "runId": job.run_id},
            _struct(TABLES[name].ddl),
            overwrite=False,
        )
        for name in ("events", "quarantine")
    }


def _parse_and_write(
    units: Iterable[Unit], job: _ParseJob, writers: Mapping[str, DeltaRsWriter], templates: Templates | None
) -> list[dict[str, Any]]:
    """One task's work in a direct write: parse ``units`` into Parquet files of ``writers``' tables.

    Returns the report rows (:data:`REPORT_DDL`): one per input unit (its counts and format) and
    one per written file. On any failure this task's files are deleted before the error goes on.
    Run by a Spark task (:func:`_ingest_direct`) or by the driver (:func:`_ingest_direct_local`).
    """
    import pyarrow.compute as pc

    event_names, quarantine_names = list(EVENT_COLUMNS), list(QUARANTINE_COLUMNS)
    outputs = {name: writer.file_writer() for name, writer in writers.items()}
    report: list[dict[str, Any]] = []
    try:
        for unit in units:
            path = unit.path
            n_ev = n_q = 0
            fmt: str | None = None
            for parsed in job.batches(path, templates, unit):
                is_event = pc.equal(parsed.column(KIND), "event")
                events = parsed.filter(is_event)
                quarantined = parsed.filter(pc.invert(is_event))
                if events.num_rows:
                    outputs["events"].write_batch(events.select(event_names))
                    fmt = fmt or events.column("format")[0].as_py()
                if quarantined.num_rows:
                    outputs["quarantine"].write_batch(quarantined.select(quarantine_names))
                    fmt = fmt or quarantined.column("format")[0].as_py()
                n_ev += events.num_rows
                n_q += quarantined.num_rows
            report.append({"file": path, "events": n_ev, "quarantined": n_q, "format": fmt})
        for name, output in outputs.items():
            for f in output.close():
                report.append(
                    {"table": name, "path": f.path, "size": f.size, "mtime": f.modification_time,
                     "partition_values": json.dumps(f.partition_values), "num_records": f.num_records}
                )  # fmt: skip
    except BaseException:
        for output in outputs.values():
            output.discard()
        raise
    return report


def _commit_direct(
    lake: Lake, writers: Mapping[str, DeltaRsWriter], report: Iterable[Mapping[str, Any]]
) -> dict[str, tuple[int, int, str | None]]:
    """Commit the files of a direct write's report, one transaction per table; per-file counts.

    A table gets a commit when files were written to it, or to create it (empty) on a first load.
    On a failure before the commits, every file of the write is deleted (``abort``).
    """
    try:
        written: dict[str, list[WrittenFile]] = {name: [] for name in writers}
        per_file: dict[str, tuple[int, int, str | None]] = {}
        for r in report:
            if r.get("table"):
                written[r["table"]].append(
                    WrittenFile(r["path"], r["size"], json.loads(r["partition_values"]), r["mtime"], r["num_records"])
                )
            else:  # a file read in byte ranges has a row per range
                n_ev, n_q, fmt = per_file.get(r["file"], (0, 0, None))
                per_file[r["file"]] = (n_ev + int(r["events"]), n_q + int(r["quarantined"]), fmt or r["format"])
    except BaseException:
        for writer in writers.values():
            writer.abort([])
        raise
    for name, writer in writers.items():
        if written[name] or not lake.exists(name):
            writer.commit([DeltaRsCommitMessage(files=written[name])])
            log.info("wrote table %s version %s: %d files", name, lake.version(name), len(written[name]))
    return per_file


def _ingest_direct(
    spark: SparkSession, lake: Lake, files_df: DataFrame, job: _ParseJob
) -> dict[str, tuple[int, int, str | None]]:
    """Parse and write Parquet in the same task; commit each table once on the driver.

    A task that fails deletes its own files; when the job fails, ``abort`` deletes every file of
    this write (found by the write id in their names) and the tables are unchanged. Events are
    committed before quarantine rows and both before the ledger row, so a crash between commits
    leaves rows without a ledger entry, which the next run deletes before it reloads the file.
    """
    writers = _direct_writers(lake, job)

    def task(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        templates = job.templates()
        with job.counting(templates), relaxed_gc():
            report = _parse_and_write((u for b in batches for u in _units(b)), job, writers, templates)
        yield pa.RecordBatch.from_pylist(report, schema=_REPORT_ARROW)

    try:
        rows = [r.asDict() for r in files_df.mapInArrow(task, REPORT_DDL).collect()]
    except BaseException:
        for writer in writers.values():
            writer.abort([])
        raise
    return _commit_direct(lake, writers, rows)


def _ingest_direct_local(lake: Lake, units: Sequence[Unit], job: _ParseJob) -> dict[str, tuple[int, int, str | None]]:
    """:func:`_ingest_direct` done by the driver (:func:`driver_path`): the same task function
    over every unit, then the same commits; no Spark job."""
    writers = _direct_writers(lake, job)
    templates = job.templates()
    try:
        with job.counting(templates), relaxed_gc():
            report = _parse_and_write(units, job, writers, templates)
    except BaseException:
        for writer in writers.values():
            writer.abort([])
        raise
    return _commit_direct(lake, writers, report)


def _struct(ddl: str) -> StructType:
    from pyspark.sql.types import StructType

    schema = StructType.fromDDL(ddl)
    assert isinstance(schema, StructType)
    return schema


def _files_df(spark: SparkSession, paths: Sequence[str], per_task: int) -> DataFrame:
    """One row per path, ``per_task`` paths per partition (in the given order)."""
    n_tasks = max(1, (len(paths) + per_task - 1) // per_task)
    return spark.createDataFrame([(p,) for p in paths], "path string").repartition(n_tasks)


def _ingest_dataframe(lake: Lake, files_df: DataFrame, job: _ParseJob) -> dict[str, tuple[int, int, str | None]]:
    """Parse into a persisted DataFrame and write it with the lake's engine (delta-spark)."""

    def parse_partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        templates = job.templates()
        with job.counting(templates), relaxed_gc():
            for batch in batches:
                for unit in _units(batch):
                    yield from job.batches(unit.path, templates, unit)

    return _write_parsed(lake, files_df.mapInArrow(parse_partition, PARSED_DDL), job)


def _ingest_native(
    spark: SparkSession,
    lake: Lake,
    paths: Sequence[str],
    per_task: int,
    job: _ParseJob,
    zeek_logs: Mapping[str, str] | None = None,
) -> dict[str, tuple[int, int, str | None]]:
    """Cut the files into numbered lines in Python, parse them with Spark SQL (:mod:`.native`),
    send the lines those expressions leave to the Python parser, and write both."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    def cut(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for path in batch.column("path").to_pylist():
                yield from cut_lines(path, job.id_keys.get(path, 0))

    lines = _files_df(spark, paths, per_task).mapInArrow(cut, LINES_DDL)
    # Files whose options differ get their own expressions (time keys, default entity).
    groups: dict[str, list[str]] = {}
    for path in paths:
        opts = job.sources[path][1]
        groups.setdefault(repr((opts.timestamp_fields, opts.default_entity)), []).append(path)
    staged: DataFrame | None = None
    for members in groups.values():
        part = lines if len(groups) == 1 else lines.where(F.col("file").isin(members))
        part = json_events(part, job.sources[members[0]][1], zeek_logs)
        staged = part if staged is None else staged.unionByName(part)
    assert staged is not None
    # Cache what the two branches read, not the hundred-odd working columns of the expressions
    # (a columnar cache of every one of them, built and compressed for nothing); the text only
    # for the lines going back to Python.
    kept = [c for c in staged.columns if c in PARSED_COLUMNS and c != "text"]
    staged = staged.select(*kept, "_ok", "problem", F.when(~F.col("_ok"), F.col("text")).alias("text"))
    staged = staged.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        sources = F.create_map(*[F.lit(x) for p in paths for x in (p, job.sources[p][0])])
        micros_per_day = 86_400_000_000
        native_cols = {
            "date": F.date_from_unix_date(F.floor(F.unix_micros("ts") / micros_per_day).cast("int")),
            "source": F.element_at(sources, F.col("file")),
            "run_id": F.lit(job.run_id),
            KIND: F.lit("event"),
        }
        good = staged.where(F.col("_ok")).select(
            *[
                (native_cols[name] if name in native_cols else F.col(name) if name in staged.columns
                 else F.lit(None)).cast(tp).alias(name)
                for name, tp in PARSED_COLUMNS.items()
            ]
        )
        if job.state is not None:
            good = good.mapInArrow(_match_templates(job), PARSED_DDL)
        bad = (
            staged.where(~F.col("_ok"))
            .select("file", "line_no", "text", "problem")
            .mapInArrow(_python_lines(job), PARSED_DDL)
        )
        return _write_parsed(lake, good.unionByName(bad), job)
    finally:
        staged.unpersist()


def _match_templates(job: _ParseJob) -> Any:
    """A ``mapInArrow`` function filling the template columns of natively parsed events."""

    def task(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        templates = job.templates()
        assert templates is not None
        with job.counting(templates), relaxed_gc():
            for batch in batches:
                columns = {f.name: batch.column(f.name) for f in PARSED_ARROW}
                columns["template_id"], columns["template"], columns["params"] = templates.match_columns(
                    batch.column("message"), [True] * batch.num_rows
                )
                yield pa.record_batch([columns[f.name] for f in PARSED_ARROW], schema=PARSED_ARROW)

    return task


def _python_lines(job: _ParseJob) -> Any:
    """A ``mapInArrow`` function parsing, with the Python parsers, the lines the native
    expressions could not reproduce exactly (see :mod:`loganomaly.ingest.native`)."""

    def task(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        templates = job.templates()
        options = {path: opts for path, (_, opts) in job.sources.items()}
        with job.counting(templates), relaxed_gc():
            for batch in batches:
                rows = zip(*(batch.column(c).to_pylist() for c in ("file", "line_no", "text", "problem")), strict=True)
                by_file: dict[str, tuple[list[dict[str, Any]], list[int], list[str]]] = {}
                for path, line_no, parsed_line in python_records(rows, options, job.formats, job.max_raw_chars):
                    data, numbers, kinds = by_file.setdefault(path, ([], [], []))
                    data.append(parsed_line.data)
                    numbers.append(line_no)
                    kinds.append(parsed_line.kind)
                for path, (data, numbers, kinds) in by_file.items():
                    source = job.sources[path][0] if path in job.sources else _default_source(path)
                    yield records_batch(
                        path, source, data, numbers, kinds, job.run_id, templates, job.id_keys.get(path, 0)
                    )

    return task


def _write_parsed(lake: Lake, parsed_df: DataFrame, job: _ParseJob) -> dict[str, tuple[int, int, str | None]]:
    """Persist parsed rows, count them per file and write ``events`` and ``quarantine``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    parsed = parsed_df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        per_file = _count_per_file(
            (r.file, r[KIND], r.format, r["count"]) for r in parsed.groupBy("file", KIND, "format").count().collect()
        )
        events_df = parsed.filter(F.col(KIND) == "event").select(*EVENT_COLUMNS)
        quarantine_df = parsed.filter(F.col(KIND) == "quarantine").select(*QUARANTINE_COLUMNS)
        write_events, write_quarantine = _tables_to_write(lake, per_file)
        if write_events:
            lake.write("events", events_df, partition_by=TABLES["events"].partition_by, run_id=job.run_id)
        if write_quarantine:
            lake.write("quarantine", quarantine_df, run_id=job.run_id)
    finally:
        parsed.unpersist()
    return per_file


def _tables_to_write(lake: Lake, per_file: Mapping[str, tuple[int, int, str | None]]) -> tuple[bool, bool]:
    """Whether ``events`` and ``quarantine`` get a commit: when rows go to them, or to create them.

    An empty append would still be a Delta commit (with delta-spark, seconds of a small night's
    run: its state and planning jobs) and a version that changes nothing; the direct write of
    ``deltars`` skips it too (:func:`_commit_direct`), so both engines leave the same versions.
    """
    n_events = sum(c[0] for c in per_file.values())
    n_quarantined = sum(c[1] for c in per_file.values())
    return bool(n_events) or not lake.exists("events"), bool(n_quarantined) or not lake.exists("quarantine")


def _count_per_file(groups: Iterable[tuple[str, str, str | None, int]]) -> dict[str, tuple[int, int, str | None]]:
    """(events, quarantined, format) per file from (file, kind, format, count) groups."""
    per_file: dict[str, tuple[int, int, str | None]] = {}
    for file, kind, fmt_of_group, count in groups:
        n_ev, n_q, fmt = per_file.get(file, (0, 0, None))
        if kind == "event":
            n_ev += count
        else:
            n_q += count
        # The format of a file is its events' format; a file of only bad lines keeps the guess.
        per_file[file] = (n_ev, n_q, fmt_of_group if kind == "event" or fmt is None else fmt)
    return per_file


def _ingest_local_dataframe(lake: Lake, units: Sequence[Unit], job: _ParseJob) -> dict[str, tuple[int, int, str | None]]:
    """:func:`_ingest_dataframe` done by the driver (:func:`driver_path`): the same batches,
    counted and split in Arrow, written with :meth:`Lake.write_arrow` (with delta-spark, a
    DataFrame the JVM reads from Arrow: the write is a Spark job, but no Python worker starts)."""
    import pyarrow.compute as pc

    templates = job.templates()
    with job.counting(templates), relaxed_gc():
        batches = [batch for unit in units for batch in job.batches(unit.path, templates, unit)]
    parsed = pa.Table.from_batches(batches, schema=PARSED_ARROW)
    groups = parsed.group_by(["file", KIND, "format"], use_threads=False).aggregate([([], "count_all")])
    per_file = _count_per_file(
        zip(*(groups.column(c).to_pylist() for c in ("file", KIND, "format", "count_all")), strict=True)
    )
    events = parsed.filter(pc.equal(parsed.column(KIND), "event")).select(list(EVENT_COLUMNS))
    quarantine = parsed.filter(pc.equal(parsed.column(KIND), "quarantine")).select(list(QUARANTINE_COLUMNS))
    write_events, write_quarantine = _tables_to_write(lake, per_file)
    if write_events:
        lake.write_arrow(
            "events", events, TABLES["events"].ddl, partition_by=TABLES["events"].partition_by, run_id=job.run_id
        )
    if write_quarantine:
        lake.write_arrow("quarantine", quarantine, TABLES["quarantine"].ddl, run_id=job.run_id)
    return per_file


#: Columns of the template training pass: one row per distinct message and task.
_MESSAGES_ARROW = pa.schema(
    [("message", pa.string()), ("ts", pa.timestamp("us", "UTC")), ("file", pa.string()), ("line_no", pa.int64())]
)


def _train_limit(cfg: Config) -> dt.datetime | None:
    """``templates.train_until`` as an aware time (UTC when it names no zone), or None."""
    until = cfg.templates.train_until
    if not until:
        return None
    limit = dt.datetime.fromisoformat(until.replace("Z", "+00:00"))
    return limit.replace(tzinfo=dt.timezone.utc) if limit.tzinfo is None else limit


def _first_messages(job: _ParseJob, unit: Unit, limit: dt.datetime | None) -> list[tuple[str, Any, str, int]]:
    """(message, ts, file, line) of each distinct event message of ``unit`` in the training window,
    at its first line: what one task of the template pass sends on (Spark-free)."""
    seen: dict[str, tuple[Any, int]] = {}
    for parsed in job.batches(unit.path, None, unit):
        kinds = parsed.column(KIND).to_pylist()
        texts = parsed.column("message").to_pylist()
        times = parsed.column("ts").to_pylist()
        lines = parsed.column("line_no").to_pylist()
        for kind, text, ts, line in zip(kinds, texts, times, lines, strict=True):
            if kind == "event" and text is not None and text not in seen and (limit is None or ts < limit):
                seen[text] = (ts, line)
    return [(t, ts, unit.path, line) for t, (ts, line) in seen.items()]


def _fit_templates(
    spark: SparkSession, cfg: Config, lake: Lake, files_df: DataFrame, job: _ParseJob
) -> Templates:
    """Fit the miner on the training window's distinct messages, in order of first appearance.

    Drain's result depends on the order it sees messages but not on repeats of a message it has
    already placed, so streaming each distinct message once (ordered by its first timestamp)
    learns the same templates as the full stream at a fraction of the cost. Tasks drop repeats
    before anything leaves them, and messages reach the driver one partition at a time
    (``toLocalIterator``), never all at once. With ``templates.refit``, messages already in
    ``events`` join this run's.
    """
    from pyspark.sql import functions as F

    limit = _train_limit(cfg)

    def messages(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for unit in _units(batch):
                with relaxed_gc():
                    rows = _first_messages(job, unit, limit)
                yield pa.RecordBatch.from_arrays(
                    [pa.array(col, f.type) for col, f in zip(zip(*rows, strict=True), _MESSAGES_ARROW, strict=True)]
                    if rows else [pa.array([], f.type) for f in _MESSAGES_ARROW],
                    schema=_MESSAGES_ARROW,
                )

    ddl = "message string, ts timestamp, file string, line_no bigint"
    found = files_df.mapInArrow(messages, ddl)
    if cfg.templates.refit and lake.exists("events"):
        old = lake.read("events").select("message", "ts", "file", "line_no").where(F.col("message").isNotNull())
        if limit is not None:
            old = old.where(F.col("ts") < F.lit(limit))
        found = found.unionByName(old)
    # One sorted partition, not a global orderBy: the driver reads the messages in one stream
    # anyway, and a global sort costs a sampling job for its range bounds plus one job per
    # partition in toLocalIterator (4 Spark jobs on a one-file first load, 1 this way); the
    # aggregation before the single-partition shuffle stays parallel.
    distinct = (
        found.groupBy("message")
        .agg(F.min(F.struct("ts", "file", "line_no")).alias("first"))
        .repartition(1)
        .sortWithinPartitions("first")
        .select("message")
    )
    return _fit_and_save(spark, cfg, lake, (row.message for row in distinct.toLocalIterator()), job)


def _fit_templates_local(
    spark: SparkSession, cfg: Config, lake: Lake, units: Sequence[Unit], job: _ParseJob
) -> Templates:
    """:func:`_fit_templates` done by the driver (:func:`driver_path`; not with ``templates.refit``
    over existing events): the same distinct messages, each at the minimum of (ts, file, line)
    over the units, fed to the miner in that order, which is Spark's order of the struct
    ``first`` (a null sorts first, as in Spark's ascending order)."""
    limit = _train_limit(cfg)
    first: dict[str, tuple[Any, ...]] = {}
    with relaxed_gc():
        for unit in units:
            for text, ts, path, line in _first_messages(job, unit, limit):
                key = (ts is not None, ts, path, line)
                if text not in first or key < first[text]:
                    first[text] = key
    ordered = sorted(first, key=first.__getitem__)
    log.info("ingest %s: template pass on the driver, %d distinct messages", job.run_id, len(ordered))
    return _fit_and_save(spark, cfg, lake, iter(ordered), job)


def _fit_and_save(
    spark: SparkSession, cfg: Config, lake: Lake, messages: Iterator[str], job: _ParseJob
) -> Templates:
    """Fit a new miner on ``messages`` (in order) and save its state as the current one."""
    templates = Templates(template_config(cfg.templates))
    with relaxed_gc():
        templates.fit(messages)
    if len(templates) == 0:
        log.warning(
            "ingest %s: no messages in the template training window (train_until=%r)",
            job.run_id, cfg.templates.train_until,
        )  # fmt: skip
    save_state(spark, lake, templates, job.run_id, cfg.templates.train_until)
    return templates
