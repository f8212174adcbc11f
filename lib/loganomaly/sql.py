"""``sql``: Spark SQL over every table of the lake, each exposed as a view of its own name."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from loganomaly.config import Config
from loganomaly.tables import Lake

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

TOP_ANOMALIES = """
SELECT entity, window_start, window_end, round(score, 3) AS score, round(threshold, 3) AS threshold, explanation
FROM anomalies
ORDER BY score DESC
LIMIT {limit}
"""


def run(spark: SparkSession, cfg: Config, query: str, lake: Lake | None = None) -> DataFrame:
    """Register every table as a view and run ``query``.

    Example:
        >>> run(spark, cfg, "SELECT entity, count(*) FROM anomalies GROUP BY entity").show()
    """
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    lake.register_views()
    return spark.sql(query)
