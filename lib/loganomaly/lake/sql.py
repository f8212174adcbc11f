"""``sql``: SQL over every table of the lake, each exposed as a view of its own name.

Two paths: Spark SQL (:func:`run`, the full engine, for any size) and, for quick questions from a
laptop or a cron job, DataFusion through delta-rs (:func:`run_local`): no JVM, starts in well under
a second, reads the same Delta snapshots. DataFusion's SQL dialect differs from Spark's in places
(e.g. ``date_trunc`` arguments, no ``LATERAL VIEW``).

Spark SQL reads every table by its path (temporary views over the lake's reader, never a metastore
table, so no ``spark-warehouse`` or Derby files appear). Time travel is written as in Delta SQL,
``<table> VERSION AS OF 3`` or ``<table> TIMESTAMP AS OF '2024-03-05 10:00:00'``: a view cannot
time-travel, so :func:`run` rewrites such a reference of a lake table to Delta's path form
(``delta.`<root>/<table>` VERSION AS OF 3``) with the ``delta`` engine, or, with ``deltars``, to a
temporary view of that snapshot.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from loganomaly.config import Config
from loganomaly.errors import LogAnomalyError, TableNotFoundError
from loganomaly.lake.guard import check_root
from loganomaly.lake.lock import writer_lock
from loganomaly.lake.readonly import check_datafusion_query, check_spark_query, run_checked
from loganomaly.lake.tables import Lake
from loganomaly.runtime.runs import new_run_id

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

TOP_ANOMALIES = """
SELECT entity, window_start, window_end, round(score, 3) AS score, round(threshold, 3) AS threshold, explanation
FROM anomalies
ORDER BY score DESC
LIMIT {limit}
"""


#: Logged when a statement runs without the read-only check.
_UNCHECKED = "sql --allow-write: running %r without the read-only check; it may change or destroy tables"


def run(
    spark: SparkSession, cfg: Config, query: str, lake: Lake | None = None, allow_write: bool = False
) -> DataFrame:
    """Register every table as a view and run ``query``, which must be a read unless ``allow_write``.

    ``allow_write`` (the CLI's ``--allow-write``) is the operator's explicit choice to run a
    statement that writes (a repair, an export): it runs as given, with a warning in the log,
    while holding the lake's writer lock (:func:`loganomaly.lake.lock.writer_lock`), so it never
    interleaves with a stage's writes: with a stage running it fails with ``LakeBusyError`` and
    nothing has run. It bypasses the ledger. Spark runs a writing statement when it is submitted,
    so the lock covers the write; the rows a read returns are computed later, without the lock.

    Raises:
        QueryError: a syntax error, an unknown table or column, or a statement that writes
            (:mod:`loganomaly.lake.readonly`) without ``allow_write``; nothing has run.
        LakeBusyError: ``allow_write`` while another run holds the writer lock; nothing has run.

    Example:
        >>> run(spark, cfg, "SELECT entity, count(*) FROM anomalies GROUP BY entity").show()
    """
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    if not allow_write:
        check_spark_query(spark, query)
        lake.register_views()
        return run_checked(spark, expand_time_travel(query, lake))
    with writer_lock(lake.root, new_run_id("sql"), "sql --allow-write"):
        log.warning(_UNCHECKED, query[:200])
        lake.register_views()
        return run_checked(spark, expand_time_travel(query, lake))


# A quoted string or identifier (left alone), or a table name followed by a time-travel clause.
_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_TIME_TRAVEL = re.compile(
    rf"(?P<quoted>{_QUOTED})"
    r"|(?<![\w.`])`?(?P<name>[A-Za-z_][A-Za-z0-9_]*)`?\s+(?P<kind>VERSION|TIMESTAMP)\s+AS\s+OF\s+"
    rf"(?P<arg>\d+|{_QUOTED})",
    re.IGNORECASE,
)


def expand_time_travel(query: str, lake: Lake) -> str:
    """Rewrite ``<table> VERSION|TIMESTAMP AS OF x`` for the lake's tables (see the module docstring).

    Example:
        >>> expand_time_travel("SELECT count(*) FROM scores VERSION AS OF 2", lake)
        "SELECT count(*) FROM delta.`/data/lake/scores` VERSION AS OF 2"
    """
    tables = set(lake.tables())

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is None or name.lower() not in tables:
            return match.group(0)
        name, kind, arg = name.lower(), match.group("kind").upper(), match.group("arg")
        if lake.engine == "delta":
            return f"delta.`{lake.path(name).replace('`', '``')}` {kind} AS OF {arg}"
        version = int(arg) if kind == "VERSION" else _version_at(lake.path(name), arg[1:-1])
        view = f"{name}__version_{version}"
        lake.read(name, version=version).createOrReplaceTempView(view)
        log.info("time travel: %s %s AS OF %s is version %d (view %s)", name, kind, arg, version, view)
        return view

    return _TIME_TRAVEL.sub(replace, query)


def _version_at(path: str, timestamp: str) -> int:
    """The table version current at ``timestamp`` (ISO, UTC unless it says otherwise), via delta-rs."""
    from deltalake import DeltaTable

    try:
        when = dt.datetime.fromisoformat(timestamp)
    except ValueError:
        raise LogAnomalyError(f"TIMESTAMP AS OF needs an ISO date-time, got {timestamp!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    table = DeltaTable(path)
    try:
        table.load_as_version(when)
    except Exception as exc:  # delta-rs: no version that early
        raise LogAnomalyError(f"no version of {path} at {timestamp}: {exc}") from None
    return int(table.version())


def local_tables(root: str | os.PathLike[str]) -> list[str]:
    """Names of the Delta tables (folders with a ``_delta_log``) directly under ``root``."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "_delta_log").is_dir())


def run_local(root: str | os.PathLike[str], query: str, allow_write: bool = False) -> pa.Table:
    """Run ``query`` with DataFusion (delta-rs ``QueryBuilder``) over every table under ``root``.

    ``allow_write`` lets a statement that writes (``COPY ... TO``) run, with a warning, under the
    lake's writer lock (see :func:`run`).

    Raises:
        TableNotFoundError: no Delta table under ``root``.
        QueryError: the query is not one read-only statement (without ``allow_write``).
        LakeBusyError: ``allow_write`` while another run holds the writer lock.
        LogAnomalyError: DataFusion refused the query (its message says why).
    """
    check_root(root)
    if not allow_write:
        check_datafusion_query(query)
        return _run_datafusion(root, query)
    with writer_lock(root, new_run_id("sql"), "sql --allow-write"):
        log.warning(_UNCHECKED, query[:200])
        return _run_datafusion(root, query)


def _run_datafusion(root: str | os.PathLike[str], query: str) -> pa.Table:
    """Register every table under ``root`` with DataFusion and run ``query`` (checks done by the caller)."""
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder

    names = local_tables(root)
    if not names:
        raise TableNotFoundError(f"no Delta tables under {root}")
    builder = QueryBuilder()
    for name in names:
        builder.register(name, DeltaTable(str(Path(root) / name)))
    try:
        # delta-rs hands back an arro3 reader; the Arrow C stream interface makes it pyarrow.
        table = pa.RecordBatchReader.from_stream(builder.execute(query)).read_all()
    except Exception as exc:  # DataFusion raises its own exception types for planning errors
        raise LogAnomalyError(f"query failed in DataFusion: {exc}") from None
    log.info("local sql over %d tables: %d rows", len(names), table.num_rows)
    return table
