"""The stage's one aggregate: dates and counts of the rows to score, and the kind's row checks over exactly them."""

from __future__ import annotations

import datetime as dt

import pytest

from loganomaly.errors import ModelError
from loganomaly.models.kind import RowCheck, ScoringInput
from loganomaly.scoring.stage import checked_dates

pytestmark = pytest.mark.spark


def test_checks_run_over_the_rows_scored_only(spark) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    d1, d2 = dt.date(2024, 3, 4), dt.date(2024, 3, 5)
    rows = spark.createDataFrame([(d1, 12), (d1, 12), (d2, 11)], "date date, n_steps int")
    check = RowCheck(F.col("n_steps") != 12, F.col("n_steps"), lambda got: f"windows of {got} steps")
    source = ScoringInput(rows, "n_steps", [check])
    assert checked_dates(source, rows.where(F.col("date") == F.lit(d1))) == {"2024-03-04": 2}
    with pytest.raises(ModelError, match="windows of 11 steps"):
        checked_dates(source, rows)
    assert checked_dates(ScoringInput(rows, "n_steps"), rows) == {"2024-03-04": 2, "2024-03-05": 1}
