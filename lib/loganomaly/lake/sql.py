"""``sql``: SQL over every table of the lake, each exposed as a view of its own name.

Two paths: Spark SQL (:func:`run`, the full engine, for any size) and, for quick questions from a
laptop or a cron job, DataFusion through delta-rs (:func:`run_local`): no JVM, starts in well under
a second, reads the same Delta snapshots. DataFusion's SQL dialect differs from Spark's in places
(e.g. ``date_trunc`` arguments, no ``LATERAL VIEW``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from loganomaly.config import Config
from loganomaly.errors import LogAnomalyError, TableNotFoundError
from loganomaly.lake.guard import check_root
from loganomaly.lake.readonly import check_datafusion_query, check_spark_query, run_checked
from loganomaly.lake.tables import Lake

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


def run(spark: SparkSession, cfg: Config, query: str, lake: Lake | None = None) -> DataFrame:
    """Register every table as a view and run ``query``, which must be a read.

    Raises:
        QueryError: a syntax error, an unknown table or column, or a statement that writes
            (:mod:`loganomaly.lake.readonly`); nothing has run.

    Example:
        >>> run(spark, cfg, "SELECT entity, count(*) FROM anomalies GROUP BY entity").show()
    """
    check_spark_query(spark, query)
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    lake.register_views()
    return run_checked(spark, query)


def local_tables(root: str | os.PathLike[str]) -> list[str]:
    """Names of the Delta tables (folders with a ``_delta_log``) directly under ``root``."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "_delta_log").is_dir())


def run_local(root: str | os.PathLike[str], query: str) -> pa.Table:
    """Run ``query`` with DataFusion (delta-rs ``QueryBuilder``) over every table under ``root``.

    Raises:
        TableNotFoundError: no Delta table under ``root``.
        QueryError: the query is not one read-only statement.
        LogAnomalyError: DataFusion refused the query (its message says why).
    """
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder

    check_root(root)
    check_datafusion_query(query)
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
