"""``featurize``: ``events`` -> per-entity time-step features -> sliding windows in ``sequences``.

Spark aggregates events into (entity, step) rows; each entity's steps are then cut into windows
by the Spark-free :func:`loganomaly.windows.build_windows` inside ``applyInPandas``. Features are
stored raw (log1p counts); normalisation is fitted on the training split only and travels with
the model, so the same ``sequences`` serve training and scoring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from loganomaly.config import Config
from loganomaly.errors import StageInputError
from loganomaly.ingest import new_run_id
from loganomaly.schemas import TABLES
from loganomaly.tables import Lake
from loganomaly.windows import FEATURE_NAMES, WindowSpec, build_windows

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

#: Connection states that mean the connection did not complete normally (Zeek ``conn_state``).
FAILED_CONN_STATES = ["S0", "REJ", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"]
ERROR_LEVELS = ["emerg", "alert", "crit", "err", "error", "fatal", "critical"]
WARNING_LEVELS = ["warning", "warn"]


def step_features(events: DataFrame, step_seconds: int) -> DataFrame:
    """Aggregate events into one row per (entity, step) with every column of FEATURE_NAMES."""
    from pyspark.sql import functions as F

    is_conn = F.col("format") == "json"
    level = F.lower(F.col("level"))
    step = (F.floor(F.unix_timestamp("ts") / step_seconds) * step_seconds).cast("long")
    agg = (
        events.where(F.col("entity").isNotNull() & F.col("ts").isNotNull())
        .groupBy("entity", step.alias("step"))
        .agg(
            F.count(F.lit(1)).alias("n_events"),
            F.sum(is_conn.cast("long")).alias("connections"),
            F.sum((~is_conn).cast("long")).alias("log_lines"),
            F.coalesce(F.sum("bytes_out"), F.lit(0)).alias("bytes_out"),
            F.coalesce(F.sum("bytes_in"), F.lit(0)).alias("bytes_in"),
            F.count_distinct("dst_port").alias("distinct_dst_ports"),
            F.count_distinct("dst_addr").alias("distinct_dst_addrs"),
            F.sum(F.col("status").isin(FAILED_CONN_STATES).cast("long")).alias("failed_connections"),
            F.sum(level.isin(ERROR_LEVELS).cast("long")).alias("errors"),
            F.sum(level.isin(WARNING_LEVELS).cast("long")).alias("warnings"),
            F.coalesce(F.avg("duration"), F.lit(0.0)).alias("mean_duration"),
        )
    )
    return agg.select(
        "entity",
        "step",
        "n_events",
        *[
            F.log1p(F.coalesce(F.col(c).cast("double"), F.lit(0.0))).alias(c)
            for c in FEATURE_NAMES
            if c != "events"
        ],
        F.log1p(F.col("n_events").cast("double")).alias("events"),
    ).select("entity", "step", "n_events", *FEATURE_NAMES)


def windows_frame(steps: DataFrame, spec: WindowSpec, run_id: str) -> DataFrame:
    """Cut each entity's steps into windows (``applyInPandas`` per entity) with the ``sequences`` schema."""
    n_features = len(FEATURE_NAMES)

    def per_entity(pdf: pd.DataFrame) -> pd.DataFrame:
        out = build_windows(pdf.sort_values("step"), spec)
        start = pd.to_datetime(out["window_start"].astype(np.int64), unit="s", utc=True)
        return pd.DataFrame(
            {
                "entity": pdf["entity"].iloc[0],
                "window_start": start,
                "window_end": pd.to_datetime(out["window_end"].astype(np.int64), unit="s", utc=True),
                "date": start.dt.date,
                "n_steps": np.int32(spec.window_steps),
                "n_features": np.int32(n_features),
                "features": out["features"],
                "n_events": out["n_events"].astype(np.int64),
                "run_id": run_id,
            }
        )

    return steps.groupBy("entity").applyInPandas(per_entity, TABLES["sequences"].ddl)


@dataclass
class FeaturizeSummary:
    run_id: str
    events_version: int
    windows: int
    entities: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def run(spark: SparkSession, cfg: Config, lake: Lake | None = None) -> FeaturizeSummary:
    """Rebuild ``sequences`` from the current ``events`` snapshot (one atomic overwrite)."""
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    if not lake.exists("events"):
        raise StageInputError(f"no events table under {lake.root}; run `loganomaly ingest` first")
    run_id = new_run_id("featurize")
    events_version = lake.version("events")
    assert events_version is not None
    events = lake.read("events", version=events_version)
    spec = WindowSpec(cfg.features.step_seconds, cfg.features.window_steps, cfg.features.stride_steps)
    windows = windows_frame(step_features(events, spec.step_seconds), spec, run_id)
    lake.write(
        "sequences", windows, mode="overwrite", partition_by=TABLES["sequences"].partition_by, run_id=run_id
    )
    stats = lake.read("sequences").selectExpr("count(*) AS n", "count(DISTINCT entity) AS e").collect()[0]
    summary = FeaturizeSummary(run_id, events_version, int(stats["n"]), int(stats["e"]))
    log.info(
        "featurize %s: %d windows for %d entities from events version %d",
        run_id,
        summary.windows,
        summary.entities,
        events_version,
    )
    return summary
