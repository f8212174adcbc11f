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

import datetime as dt
import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from loganomaly.config import Config
from loganomaly.parsing import iter_input_files, parse_file
from loganomaly.schemas import EVENT_COLUMNS, QUARANTINE_COLUMNS, TABLES
from loganomaly.tables import Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

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


def parse_files_to_batches(
    paths: Sequence[str], run_id: str, max_raw_chars: int, sources: dict[str, str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Parse files into Arrow batches of :data:`PARSED_ARROW` rows (Spark-free; one task's work)."""
    buffer: dict[str, list[Any]] = {name: [] for name in PARSED_COLUMNS}

    def flush() -> pa.RecordBatch:
        batch = pa.record_batch([pa.array(buffer[f.name], f.type) for f in PARSED_ARROW], schema=PARSED_ARROW)
        for values in buffer.values():
            values.clear()
        return batch

    for path in paths:
        source = (sources or {}).get(path) or os.path.basename(os.path.dirname(path)) or "default"
        n_events = n_quarantined = 0
        for record in parse_file(path, max_raw_chars=max_raw_chars):
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


@dataclass
class IngestSummary:
    run_id: str
    files_seen: int
    files_loaded: int
    events: int
    quarantined: int

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

    # Rows of these paths from an earlier, changed version of a file or from a run that crashed
    # before its ledger row: remove them so the load below cannot duplicate anything.
    for table in ("events", "quarantine"):
        if lake.exists(table):
            lake.delete(table, "file", paths)

    per_task = max(1, cfg.ingest.files_per_task)
    n_tasks = max(1, (len(paths) + per_task - 1) // per_task)
    files_df = spark.createDataFrame([(p,) for p in paths], "path string").repartition(n_tasks, "path")
    max_raw = cfg.ingest.max_raw_chars

    def parse_partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from parse_files_to_batches(batch.column("path").to_pylist(), run_id, max_raw)

    parsed = files_df.mapInArrow(parse_partition, PARSED_DDL).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts: dict[tuple[str, str], int] = {}
        formats: dict[str, str] = {}
        for r in parsed.groupBy("file", KIND, "format").count().collect():
            counts[(r.file, r[KIND])] = counts.get((r.file, r[KIND]), 0) + r["count"]
            if r.format and (r[KIND] == "event" or r.file not in formats):
                formats[r.file] = r.format
        events_df = parsed.filter(F.col(KIND) == "event").select(*EVENT_COLUMNS)
        quarantine_df = parsed.filter(F.col(KIND) == "quarantine").select(*QUARANTINE_COLUMNS)
        lake.write("events", events_df, partition_by=TABLES["events"].partition_by, run_id=run_id)
        lake.write("quarantine", quarantine_df, run_id=run_id)
    finally:
        parsed.unpersist()

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
    )
    log.info(
        "ingest %s done: %d files, %d events, %d quarantined",
        run_id,
        summary.files_loaded,
        summary.events,
        summary.quarantined,
    )
    return summary
