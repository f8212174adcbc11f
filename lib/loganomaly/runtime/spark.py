"""The one Spark session factory.

Local by default (``local[*]``); under spark-submit (or on Databricks) the master and the
cluster settings come from the launcher and are never overridden here. The session always runs in
UTC, with Arrow on and ANSI mode set explicitly (Spark 4 defaults it on; parsers use
``try_*`` functions and quarantine instead of relying on NULL-on-error casts). A local session
also gets the delta-spark jars that ``make setup`` cached (:mod:`loganomaly.runtime.delta_jars`) with
Delta's SQL extension and catalog, so one session serves both table engines, and maps the JVM
class archive that ``make setup`` built (:mod:`loganomaly.runtime.class_archive`), which cuts its
start-up by a quarter to a third.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from loganomaly.config import SparkConfig
from loganomaly.runtime import class_archive, delta_jars
from loganomaly.runtime.java import ensure_java

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


#: The Python daemon of our sessions' workers (``spark.lean_worker_path``; see its module).
WORKER_DAEMON = "loganomaly.runtime.pyworker"


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
    conf = dict(cfg.conf) if submitted else local_session_conf(cfg)
    if not submitted:
        java_options = [conf.pop("spark.driver.extraJavaOptions", "-Dderby.system.home=" + os.getcwd())]
        if cfg.class_archive:
            archive = class_archive.usable(archive_key(conf))
            if archive is not None:
                java_options += class_archive.use_options(archive)
                log.info("JVM class archive %s on this session", archive)
        builder = (
            builder.master(cfg.master)
            .config("spark.driver.memory", cfg.driver_memory)
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.warehouse.dir", os.path.join(os.getcwd(), "spark-warehouse"))
            .config("spark.driver.extraJavaOptions", " ".join(java_options))
        )
        if cfg.lean_worker_path and "spark.python.daemon.module" not in conf:
            # Local sessions only: under spark-submit the executors may get the package from
            # --py-files, which reach a worker's path per task, after its daemon started.
            builder = builder.config("spark.python.daemon.module", WORKER_DAEMON)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    quiet_query_context_loggers()
    _apply_runtime_conf(spark, cfg)
    log.info("spark session %s master=%s version=%s", cfg.app_name, spark.sparkContext.master, spark.version)
    return spark


#: PySpark's loggers that write every captured SQL or DataFrame error as a JSON record with the
#: JVM stack trace, at ERROR, the moment the exception object is built (before anyone catches it).
QUERY_CONTEXT_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")


def quiet_query_context_loggers() -> None:
    """Drop PySpark's per-exception JSON error records (:data:`QUERY_CONTEXT_LOGGERS`).

    Why: pyspark 4 logs every analysis or parse error with its query context as soon as the Python
    exception is created, several kilobytes of JVM stack trace on stderr, even where the caller
    expects the error and handles it (``loganomaly sql`` turns it into a one-line ``QueryError``;
    a probe for a missing table moves on). The exception itself still carries Spark's message and
    is raised as before. The loggers are made through ``PySparkLogger.getLogger`` because pyspark
    calls them with keyword fields a plain ``logging.Logger`` would refuse.
    """
    from pyspark.logger import PySparkLogger

    for name in QUERY_CONTEXT_LOGGERS:
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)


def local_session_conf(cfg: SparkConfig) -> dict[str, str]:
    """The Spark settings of a local session built from ``cfg``: its ``conf`` plus the cached
    delta-spark jars (when ``delta_jars`` is on and the cache holds them)."""
    conf = dict(cfg.conf)
    return _with_delta(conf, cfg) if cfg.delta_jars else conf


def archive_install(conf: dict[str, str]) -> dict[str, Any]:
    """What the class archive of a local session with settings ``conf`` depends on, the arguments
    of :func:`loganomaly.runtime.class_archive.fingerprint` (after
    :func:`loganomaly.runtime.java.ensure_java`, which sets ``JAVA_HOME``)."""
    return {
        "java_home": os.environ.get("JAVA_HOME", ""),
        "spark_jars": str(delta_jars.spark_jars_dir() or ""),
        "extra_jars": [j for j in conf.get("spark.jars", "").split(",") if j],
    }


def archive_key(conf: dict[str, str]) -> str:
    """The class-archive fingerprint of a local session with settings ``conf``."""
    return class_archive.fingerprint(**archive_install(conf))


def _with_delta(conf: dict[str, str], cfg: SparkConfig) -> dict[str, str]:
    """``conf`` plus the cached delta-spark jars, extension and catalog (when cached; see delta_jars)."""
    if delta_jars.DELTA_EXTENSION in conf.get("spark.sql.extensions", "") and "spark.jars.packages" in conf:
        return conf  # the caller brings Delta its own way
    jars = delta_jars.cached_jars()
    if jars is None:
        log.info(
            "delta-spark jars %s are not in the cache %s (make setup fetches them): "
            "this session has no Delta extension, tables use the deltars engine",
            delta_jars.coordinate(),
            delta_jars.cache_dir(),
        )
        return conf
    out = dict(conf)
    for key, value in delta_jars.session_conf(delta_jars.not_shipped_by_spark(jars)).items():
        if key in ("spark.jars", "spark.sql.extensions") and out.get(key):
            if value not in out[key].split(","):
                out[key] = f"{out[key]},{value}"
        else:
            out.setdefault(key, value)
    # Delta's SQL parser drops Spark 4.1's parser-level parameter binding, so spark.sql(q, args=...)
    # fails with UNBOUND_SQL_PARAMETER (delta-io/delta#7640); binding constants in the analyzer works.
    out.setdefault("spark.sql.legacy.parameterSubstitution.constantsOnly", "true")
    # VACUUM lists a table's files with this many tasks (default 10000: minutes on a laptop).
    out.setdefault("spark.sql.sources.parallelPartitionDiscovery.parallelism", str(max(1, cfg.shuffle_partitions)))
    # Delta rebuilds a table's state (log replay) before each write with shuffles of this many
    # partitions (default 50): on a nightly table's small log that is about 150 tasks of nothing
    # per commit. Measured on `local[2]` (2 busy cores): a 1,000-row replaceWhere write of `scores`
    # ran 159 tasks in 24.6 s at 50 partitions, 19 tasks in 4.5 s at 2 (median of 3, alternating).
    out.setdefault("spark.databricks.delta.snapshotPartitions", str(max(1, cfg.shuffle_partitions)))
    log.info("delta-spark %s on this session (%d of %d cached jars; the rest Spark ships)",
             delta_jars.coordinate(), len(delta_jars.not_shipped_by_spark(jars)), len(jars))
    return out


def _apply_runtime_conf(spark: SparkSession, cfg: SparkConfig) -> None:
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.ansi.enabled", str(cfg.ansi).lower())
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_max_records_per_batch))
    spark.conf.set("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
