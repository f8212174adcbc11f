"""The one Spark session factory.

Local by default (``local[*]``); under spark-submit (or on Databricks) the master and the
cluster settings come from the launcher and are never overridden here. The session always runs in
UTC, with Arrow on and ANSI mode set explicitly (Spark 4 defaults it on; parsers use
``try_*`` functions and quarantine instead of relying on NULL-on-error casts).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from loganomaly.config import SparkConfig
from loganomaly.runtime.java import ensure_java

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def launched_by_spark_submit() -> bool:
    """True when a JVM gateway already exists (spark-submit, pyspark shell, Databricks)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ or "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(cfg: SparkConfig | None = None) -> SparkSession:
    """Return the active session or build one from ``cfg``.

    Example:
        >>> spark = get_spark(SparkConfig(master="local[2]"))
        >>> spark.conf.get("spark.sql.session.timeZone")
        'UTC'
    """
    from pyspark.sql import SparkSession

    cfg = cfg or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        _apply_runtime_conf(active, cfg)
        return active

    submitted = launched_by_spark_submit()
    if not submitted:
        ensure_java()
        # Python workers must run this interpreter, which has the project's packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    builder = SparkSession.builder.appName(cfg.app_name)
    if not submitted:
        builder = (
            builder.master(cfg.master)
            .config("spark.driver.memory", cfg.driver_memory)
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.warehouse.dir", os.path.join(os.getcwd(), "spark-warehouse"))
            .config("spark.driver.extraJavaOptions", "-Dderby.system.home=" + os.getcwd())
        )
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    _apply_runtime_conf(spark, cfg)
    log.info("spark session %s master=%s version=%s", cfg.app_name, spark.sparkContext.master, spark.version)
    return spark


def _apply_runtime_conf(spark: SparkSession, cfg: SparkConfig) -> None:
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.ansi.enabled", str(cfg.ansi).lower())
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_max_records_per_batch))
    spark.conf.set("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
