"""Shared fixtures: one real local Spark session for the whole run (``local[2]``, UI off, UTC, ANSI on)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = Path(__file__).resolve().parent / "resources"

# Spark's Python workers must run this interpreter.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# pyspark.testing imports pandas-on-Spark, which wants this set before the JVM starts.
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from loganomaly.config import SparkConfig
    from loganomaly.runtime.spark import get_spark

    session = get_spark(
        SparkConfig(master="local[2]", shuffle_partitions=2, ansi=True, log_level="ERROR", driver_memory="1g")
    )
    yield session
    session.stop()


@pytest.fixture
def lake(spark, tmp_path):  # type: ignore[no-untyped-def]
    from loganomaly.lake.tables import Lake

    return Lake(spark, tmp_path / "lake", engine="deltars")


#: Both table engines; tests parametrized over them run on one session that has the Delta jars.
ENGINES = ("deltars", "delta")


def require_engine(spark, engine: str) -> None:  # type: ignore[no-untyped-def]
    """Fail (not skip) when the delta engine cannot run: `make setup` caches its jars.

    ``LOGANOMALY_SKIP_DELTA=1`` (what ``make test DELTA=0`` sets) turns that into a skip.
    """
    from loganomaly.lake.tables import delta_spark_status

    if engine != "delta":
        return
    available, why = delta_spark_status(spark)
    if available:
        return
    message = f"engine 'delta' cannot run on the test session: {why}"
    if os.environ.get("LOGANOMALY_SKIP_DELTA") == "1":
        pytest.skip(message + " (LOGANOMALY_SKIP_DELTA=1)")
    pytest.fail(message + "; run `make setup` (or `.venv/bin/python -m loganomaly.runtime.delta_jars`)")


@pytest.fixture
def resources() -> Path:
    return RESOURCES
