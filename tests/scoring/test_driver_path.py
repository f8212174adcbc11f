"""A small input is scored by the driver (``score.local_max_bytes``): the same rows as the Spark path."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pytest

from loganomaly.lake.tables import Lake
from loganomaly.scoring import stage
from tests.conftest import ENGINES, require_engine
from tests.scoring.test_run import DAYS, _table, make_scored_lake

pytestmark = pytest.mark.spark

DRIVER = "scored by the driver"


@pytest.mark.parametrize("engine", ENGINES)
def test_the_driver_path_writes_what_the_spark_path_writes(spark, tmp_path: Path, engine: str, caplog) -> None:  # type: ignore[no-untyped-def]
    require_engine(spark, engine)
    lake, cfg, model_dir, x = make_scored_lake(spark, Lake(spark, tmp_path / "lake", engine=engine), tmp_path)
    caplog.set_level(logging.INFO, logger="loganomaly.scoring.stage")
    cfg.score.local_max_bytes = 0
    on_spark = stage.run(spark, cfg, model_dir, lake=lake)
    assert DRIVER not in caplog.text
    scores, anomalies = _table(lake, "scores"), _table(lake, "anomalies")
    assert len(scores) == len(x) and 0 < len(anomalies) < len(x)
    versions = (lake.version("scores"), lake.version("anomalies"))

    caplog.clear()
    cfg.score.local_max_bytes = 1 << 20
    on_driver = stage.run(spark, cfg, model_dir, lake=lake)
    assert DRIVER in caplog.text
    assert (on_driver.windows, on_driver.anomalies, on_driver.dates) == (
        on_spark.windows, on_spark.anomalies, on_spark.dates)
    # every column of every row but the run id: scores to the bit, flags, explanations, versions
    assert _table(lake, "scores") == scores and _table(lake, "anomalies") == anomalies
    # two new commits (one per table) that replaced the dates: nothing duplicated
    assert (lake.version("scores"), lake.version("anomalies")) == (versions[0] + 1, versions[1] + 1)
    assert {r.run_id for r in lake.read("scores").select("run_id").distinct().collect()} == {on_driver.run_id}
    assert stage.last_run_finished(lake)


def test_a_first_run_on_the_driver_creates_both_tables(spark, lake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lake, cfg, model_dir, x = make_scored_lake(spark, lake, tmp_path)
    summary = stage.run(spark, cfg, model_dir, lake=lake)
    assert summary.windows == len(x)
    assert lake.read("scores").count() == len(x)
    assert lake.read("anomalies").count() == summary.anomalies > 0


def test_an_input_over_the_limit_takes_the_spark_path(spark, lake, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    lake, cfg, model_dir, x = make_scored_lake(spark, lake, tmp_path)
    caplog.set_level(logging.INFO, logger="loganomaly.scoring.stage")
    cfg.score.local_max_bytes = 20 * x[0].size * 4  # room for 20 of the 60 windows
    summary = stage.run(spark, cfg, model_dir, lake=lake)
    assert DRIVER not in caplog.text and "the Spark path" in caplog.text
    assert summary.windows == len(x) and lake.read("scores").count() == len(x)


def test_input_bytes_are_those_of_the_scored_dates(spark, lake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lake, _, _, _ = make_scored_lake(spark, lake, tmp_path)
    first, second = DAYS
    every = stage.input_bytes(lake, "sequences", None, None, None)
    one, two = (stage.input_bytes(lake, "sequences", d, None, None) for d in DAYS)
    assert every and one and two and one + two == every
    assert stage.input_bytes(lake, "sequences", None, (first, first), None) == one
    assert stage.input_bytes(lake, "sequences", None, None, second) == two
    assert stage.input_bytes(lake, "sequences", dt.date(2030, 1, 1), None, None) == 0
    assert stage.input_bytes(lake, "no_such_table", None, None, None) is None
    lake.write("plain", spark.createDataFrame([(1,)], "x int"))  # not partitioned by date: no hint
    assert stage.input_bytes(lake, "plain", None, None, None) is None


def test_the_probe_stops_at_the_limit_and_is_skipped_for_big_files(spark, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="loganomaly.scoring.stage")
    rows = spark.range(101).selectExpr("id", "cast(id as float) as x")
    assert stage.driver_input(rows, 100 * 4, 1) is None  # 101 rows of one float: over a 100-row cap
    assert "more than 100 rows" in caplog.text
    table = stage.driver_input(rows.limit(100), 100 * 4 + 2000, 1)
    assert table is not None and table.num_rows == 100
    caplog.clear()
    group = "probe-skipped"
    spark.sparkContext.setJobGroup(group, group)
    try:
        assert stage.driver_input(rows, 1 << 20, 1, on_disk=3 << 20) is None
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert "on disk" in caplog.text
    assert spark.sparkContext.statusTracker().getJobIdsForGroup(group) == []  # no probe job ran


def test_flags_compare_like_spark_sql(spark) -> None:  # type: ignore[no-untyped-def]
    """NaN is greater than every number in Spark SQL; the driver path flags as the Spark path does."""
    scores = [float("nan"), -1.0, 1.5, 2.0, float("inf"), float("-inf")]
    for threshold in (1.5, float("nan"), float("inf"), -float("inf")):
        df = spark.createDataFrame([(i, s) for i, s in enumerate(scores)], "i int, s double")
        rows = df.selectExpr("i", f"s > CAST('{threshold}' AS DOUBLE) AS f").orderBy("i").collect()
        assert [r.f for r in rows] == stage.flagged(np.array(scores), threshold).tolist(), threshold


def test_local_max_bytes_is_validated() -> None:
    from loganomaly.config import Config, validate
    from loganomaly.errors import ConfigError

    cfg = Config()
    cfg.score.local_max_bytes = 0
    validate(cfg)
    cfg.score.local_max_bytes = -1
    with pytest.raises(ConfigError, match="score.local_max_bytes must be >= 0"):
        validate(cfg)
