"""``ingest``: raw log files -> ``events`` + ``quarantine``, recorded in ``ingested_files``.

Parsing is Spark-free (:mod:`loganomaly.parsing`); here Spark spreads the files over tasks with
``mapInArrow`` (each task streams its files and never holds one whole in memory), and the
results land in Delta. Guarantees:

* nothing lost: every line of every file becomes exactly one ``events`` row or one
  ``quarantine`` row with its reason, and ``ingested_files`` records both counts per file;
* incremental and idempotent: a file whose path, size and mtime are already in
  ``ingested_files`` is skipped; a changed file is re-read and its old rows are replaced;
* crash-safe: the ledger row is written last, and rows of a file that a crashed run wrote
  without its ledger row are deleted before the file is loaded again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loganomaly.config import Config
from loganomaly.errors import ConfigError
from loganomaly.parsing import FormatOptions, iter_input_files, parse_file
from loganomaly.schemas import EVENT_COLUMNS, QUARANTINE_COLUMNS, TABLES
from loganomaly.tables import Lake
from loganomaly.templates import Templates

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

#: Rows per Arrow batch emitted by a parsing task.
BATCH_ROWS = 8192
KIND = "_kind"


def new_run_id(stage: str) -> str:
    """A sortable, unique id for one run of a stage (UTC time + random suffix)."""
    return f"{stage}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def event_id(path: str, line_no: int) -> str:
    """Stable id of the event at ``path:line_no``; the same line always gets the same id."""
    return hashlib.blake2b(f"{path}\x00{line_no}".encode(), digest_size=12).hexdigest()


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


def _fill_templates(buffer: dict[str, list[Any]], templates: Templates) -> None:
    """Template id, text and parameters of every event row in ``buffer`` (quarantine rows stay null)."""
    kinds, messages = buffer[KIND], buffer["message"]
    events = [i for i, kind in enumerate(kinds) if kind == "event"]
    matches = templates.match_many([messages[i] for i in events])
    ids, texts, params = buffer["template_id"], buffer["template"], buffer["params"]
    for i, match in zip(events, matches, strict=True):
        ids[i], texts[i], params[i] = match.template_id, match.template, list(match.params)


def parse_files_to_batches(
    paths: Sequence[str],
    run_id: str,
    max_raw_chars: int,
    sources: dict[str, tuple[str, dict[str, Any]]] | None = None,
    templates: Templates | None = None,
) -> Iterator[pa.RecordBatch]:
    """Parse files into Arrow batches of :data:`PARSED_ARROW` rows (Spark-free; one task's work).

    Args:
        paths: files to read, in order.
        run_id: recorded on every row.
        max_raw_chars: raw text kept per quarantined line.
        sources: path -> (source name, FormatOptions fields); a path not in it is detected and
            named after its folder.
        templates: when given, events get their template id, text and parameters here, in the
            same pass (no second trip through Python).
    """
    buffer: dict[str, list[Any]] = {name: [] for name in PARSED_COLUMNS}

    def flush() -> pa.RecordBatch:
        if templates is not None:
            _fill_templates(buffer, templates)
        batch = pa.record_batch([pa.array(buffer[f.name], f.type) for f in PARSED_ARROW], schema=PARSED_ARROW)
        for values in buffer.values():
            values.clear()
        return batch

    for path in paths:
        source, options = (sources or {}).get(path) or (_default_source(path), {})
        n_events = n_quarantined = 0
        records = parse_file(path, max_raw_chars=max_raw_chars, options=FormatOptions(**options))
        for record in records:
            row: dict[str, Any] = dict(record.data)
            row["file"] = path
            row["line_no"] = record.line_no
            row["run_id"] = run_id
            row[KIND] = record.kind
            if record.kind == "event":
                row["event_id"] = event_id(path, record.line_no)
                row["source"] = source
                row["date"] = row["ts"].date()
                n_events += 1
            else:
                n_quarantined += 1
            for name in PARSED_COLUMNS:
                buffer[name].append(row.get(name))
            if len(buffer[KIND]) >= BATCH_ROWS:
                yield flush()
        log.info("parsed %s: %d events, %d quarantined", path, n_events, n_quarantined)
    if buffer[KIND]:
        yield flush()


def _default_source(path: str) -> str:
    return os.path.basename(os.path.dirname(path)) or "default"


def resolve_sources(cfg: Config, paths: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Source name and parse options of each path: the first ``ingest.sources`` entry whose glob
    matches, else detection (no options) under the name of the file's folder.

    Options are validated here, on the driver, so a typo fails the run before any task starts.

    Raises:
        ConfigError: a source's options are not valid ``FormatOptions`` fields or values.
    """
    for src in cfg.ingest.sources:
        try:
            FormatOptions(**src.options)
        except TypeError as exc:
            valid = ", ".join(f.name for f in dataclasses.fields(FormatOptions))
            raise ConfigError(f"ingest.sources[{src.name}].options: {exc}; valid keys: {valid}") from None
        except ConfigError as exc:
            raise ConfigError(f"ingest.sources[{src.name}].options: {exc}") from None
    resolved: dict[str, tuple[str, dict[str, Any]]] = {}
    for path in paths:
        for src in cfg.ingest.sources:
            if any(fnmatch.fnmatch(path, pattern) for pattern in src.paths):
                resolved[path] = (src.name, dict(src.options))
                break
        else:
            resolved[path] = (_default_source(path), {})
    return resolved


@dataclass
class IngestSummary:
    run_id: str
    files_seen: int
    files_loaded: int
    events: int
    quarantined: int
    template_state: str | None = None
    templates: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _file_identity(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return path, int(st.st_size), int(st.st_mtime_ns // 1_000_000)


def _already_ingested(lake: Lake) -> set[tuple[str, int, int]]:
    if not lake.exists("ingested_files"):
        return set()
    rows = lake.read("ingested_files").select("path", "size", "mtime").collect()
    return {(r.path, r.size, r.mtime) for r in rows}


def run(spark: SparkSession, cfg: Config, inputs: Sequence[str], lake: Lake | None = None) -> IngestSummary:
    """Ingest every file under ``inputs`` that is new or changed since the last run.

    With templates enabled, the saved template state (if any) is broadcast and matched in the
    parsing tasks; on the first run (or with ``templates.refit``) the miner is first fitted on the
    messages of the training window (``templates.train_until``), saved as a new state version,
    and then matched over this run's events.

    Example:
        >>> summary = run(spark, cfg, ["data/raw"])
        >>> summary.events, summary.quarantined
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    run_id = new_run_id("ingest")
    files = [_file_identity(str(p.resolve())) for p in iter_input_files(inputs)]
    done = _already_ingested(lake)
    todo = [f for f in files if f not in done]
    log.info(
        "ingest %s: %d files found, %d already ingested, %d to load",
        run_id,
        len(files),
        len(files) - len(todo),
        len(todo),
    )
    if not todo:
        return IngestSummary(run_id, len(files), 0, 0, 0)
    paths = [f[0] for f in todo]
    sources = resolve_sources(cfg, paths)
    templates: Templates | None = None
    if cfg.templates.enabled:
        from loganomaly.template_store import load_state, template_config

        template_config(cfg.templates)  # fail on bad settings before reading anything
        templates = None if cfg.templates.refit else load_state(lake)

    # Rows of these paths from an earlier, changed version of a file or from a run that crashed
    # before its ledger row: remove them so the load below cannot duplicate anything.
    for table in ("events", "quarantine"):
        if lake.exists(table):
            lake.delete(table, "file", paths)

    per_task = max(1, cfg.ingest.files_per_task)
    n_tasks = max(1, (len(paths) + per_task - 1) // per_task)
    files_df = spark.createDataFrame([(p,) for p in paths], "path string").repartition(n_tasks, "path")
    max_raw = cfg.ingest.max_raw_chars
    state = spark.sparkContext.broadcast(templates.to_json()) if templates is not None else None
    state_version = templates.version if templates is not None else ""

    def parse_partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        tpl = matcher(state_version, state.value) if state is not None else None
        for batch in batches:
            yield from parse_files_to_batches(batch.column("path").to_pylist(), run_id, max_raw, sources, tpl)

    parsed = files_df.mapInArrow(parse_partition, PARSED_DDL).persist(StorageLevel.MEMORY_AND_DISK)
    fitted: DataFrame | None = None
    try:
        if cfg.templates.enabled and templates is None:
            templates = _fit_templates(spark, cfg, lake, parsed, run_id)
            fitted = _apply_templates(spark, parsed, templates).persist(StorageLevel.MEMORY_AND_DISK)
        result = fitted if fitted is not None else parsed
        counts: dict[tuple[str, str], int] = {}
        formats: dict[str, str] = {}
        for r in result.groupBy("file", KIND, "format").count().collect():
            counts[(r.file, r[KIND])] = counts.get((r.file, r[KIND]), 0) + r["count"]
            if r.format and (r[KIND] == "event" or r.file not in formats):
                formats[r.file] = r.format
        events_df = result.filter(F.col(KIND) == "event").select(*EVENT_COLUMNS)
        quarantine_df = result.filter(F.col(KIND) == "quarantine").select(*QUARANTINE_COLUMNS)
        lake.write("events", events_df, partition_by=TABLES["events"].partition_by, run_id=run_id)
        lake.write("quarantine", quarantine_df, run_id=run_id)
    finally:
        if fitted is not None:
            fitted.unpersist()
        parsed.unpersist()
        if state is not None:
            state.unpersist()

    now = dt.datetime.now(dt.timezone.utc)
    ledger = []
    for path, size, mtime in todo:
        n_ev = int(counts.get((path, "event"), 0))
        n_q = int(counts.get((path, "quarantine"), 0))
        ledger.append((path, size, mtime, formats.get(path, "empty"), n_ev + n_q, n_ev, n_q, run_id, now))
    ledger_df = spark.createDataFrame(ledger, TABLES["ingested_files"].ddl)
    lake.merge("ingested_files", ledger_df, keys=["path"])
    summary = IngestSummary(
        run_id,
        len(files),
        len(todo),
        sum(r[5] for r in ledger),
        sum(r[6] for r in ledger),
        templates.version if templates is not None else None,
        len(templates) if templates is not None else 0,
    )
    log.info(
        "ingest %s done: %d files, %d events, %d quarantined, template state %s",
        run_id,
        summary.files_loaded,
        summary.events,
        summary.quarantined,
        summary.template_state,
    )
    return summary


def _fit_templates(spark: SparkSession, cfg: Config, lake: Lake, parsed: DataFrame, run_id: str) -> Templates:
    """Fit the miner on the training window's distinct messages, in order of first appearance.

    Drain's result depends on the order it sees messages but not on repeats of a message it has
    already placed, so streaming each distinct message once (ordered by its first timestamp)
    learns the same templates as the full stream at a fraction of the cost. Messages come to the
    driver one partition at a time (``toLocalIterator``), never all at once. With
    ``templates.refit``, messages already in ``events`` join this run's.
    """
    from pyspark.sql import functions as F

    from loganomaly.template_store import save_state, template_config

    events = parsed.where(F.col(KIND) == "event").select("ts", "file", "line_no", "message")
    if cfg.templates.refit and lake.exists("events"):
        events = events.unionByName(lake.read("events").select("ts", "file", "line_no", "message"))
    events = events.where(F.col("message").isNotNull())
    until = cfg.templates.train_until
    if until:
        limit = dt.datetime.fromisoformat(until.replace("Z", "+00:00"))
        if limit.tzinfo is None:
            limit = limit.replace(tzinfo=dt.timezone.utc)
        events = events.where(F.col("ts") < F.lit(limit))
    distinct = (
        events.groupBy("message")
        .agg(F.min(F.struct("ts", "file", "line_no")).alias("first"))
        .orderBy("first")
        .select("message")
    )
    templates = Templates(template_config(cfg.templates))
    templates.fit(row.message for row in distinct.toLocalIterator())
    if len(templates) == 0:
        log.warning("ingest %s: no messages in the template training window (train_until=%r)", run_id, until)
    save_state(spark, lake, templates, run_id, until)
    return templates


def _apply_templates(spark: SparkSession, parsed: DataFrame, templates: Templates) -> DataFrame:
    """Fill template id, text and parameters of parsed rows with a freshly fitted state."""
    state = spark.sparkContext.broadcast(templates.to_json())
    version = templates.version
    columns = [f.name for f in PARSED_ARROW]

    def apply(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        tpl = matcher(version, state.value)
        for batch in batches:
            buffer = {name: batch.column(name).to_pylist() for name in ("message", KIND)}
            n = batch.num_rows
            buffer.update({"template_id": [None] * n, "template": [None] * n, "params": [None] * n})
            _fill_templates(buffer, tpl)
            arrays = [
                pa.array(buffer[name], PARSED_ARROW.field(name).type) if name in buffer and name != KIND
                and name != "message" else batch.column(name)
                for name in columns
            ]
            yield pa.record_batch(arrays, schema=PARSED_ARROW)

    return parsed.mapInArrow(apply, PARSED_DDL)
