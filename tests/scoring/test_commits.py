"""``scores`` and ``anomalies`` are two commits; the next run repairs a run stopped between them."""

from __future__ import annotations

import datetime as dt

import pytest

from loganomaly.lake.schemas import TABLES
from loganomaly.lake.tables import Lake
from loganomaly.scoring.stage import repair_anomalies
from tests.conftest import ENGINES, require_engine

pytestmark = pytest.mark.spark

DAYS = [dt.date(2024, 3, 5), dt.date(2024, 3, 6), dt.date(2024, 3, 7)]


def rows(run_id: str, flagged: set[int], days: list[dt.date] = DAYS) -> list[tuple]:  # type: ignore[type-arg]
    out = []
    for day in days:
        for i in range(4):
            start = dt.datetime.combine(day, dt.time(i), tzinfo=dt.timezone.utc)
            out.append((f"h{i}", start, start + dt.timedelta(hours=1), day, float(i), 1.5, i in flagged,
                        "x" if i in flagged else "", ["f"] if i in flagged else [], f"model-{run_id}", run_id))
    return out


def write_both(spark, lake: Lake, run_id: str, flagged: set[int], days: list[dt.date]) -> None:  # type: ignore[no-untyped-def]
    """What ``write_scores`` commits: ``scores`` of the days, then ``anomalies`` (its flagged rows)."""
    write_scores_only(spark, lake, run_id, flagged, days)
    df = spark.createDataFrame([r for r in rows(run_id, flagged, days) if r[6]], TABLES["anomalies"].ddl)
    mode = "overwrite" if lake.exists("anomalies") else "append"
    lake.write("anomalies", df, mode=mode, partition_by=["date"],
               replace_where={"date": [d.isoformat() for d in days]} if mode == "overwrite" else None)


def write_scores_only(spark, lake: Lake, run_id: str, flagged: set[int], days: list[dt.date]) -> None:  # type: ignore[no-untyped-def]
    """The first of the two commits alone: a run killed before its ``anomalies`` commit."""
    df = spark.createDataFrame(rows(run_id, flagged, days), TABLES["scores"].ddl)
    mode = "overwrite" if lake.exists("scores") else "append"
    lake.write("scores", df, mode=mode, partition_by=["date"],
               replace_where={"date": [d.isoformat() for d in days]} if mode == "overwrite" else None)


def consistent(lake: Lake) -> bool:
    def key(r):  # type: ignore[no-untyped-def]
        return (r.entity, r.window_start, r.run_id, r.model_version, r.score)

    flagged = sorted(key(r) for r in lake.read("scores").collect() if r.is_anomaly)
    return flagged == sorted(key(r) for r in lake.read("anomalies").collect())


@pytest.mark.parametrize("engine", ENGINES)
def test_a_score_stopped_between_its_commits_is_repaired_by_the_next_run(spark, tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    require_engine(spark, engine)
    lake = Lake(spark, tmp_path / "lake", engine=engine)
    write_both(spark, lake, "r1", {3}, DAYS)
    assert consistent(lake) and repair_anomalies(lake, "r2") == []
    versions = (lake.version("scores"), lake.version("anomalies"))
    assert (lake.version("scores"), lake.version("anomalies")) == versions  # nothing to repair: no commit

    # a new model scores the first two days: it flags other windows on one, none on the other
    write_scores_only(spark, lake, "r2", {1, 2}, DAYS[:1])
    write_scores_only(spark, lake, "r2", set(), DAYS[1:2])
    assert not consistent(lake)  # the state in between: anomalies of those days are r1's
    assert repair_anomalies(lake, "r3") == ["2024-03-05", "2024-03-06"]
    assert consistent(lake)
    held = {(r.date, r.run_id) for r in lake.read("anomalies").collect()}
    assert held == {(DAYS[0], "r2"), (DAYS[2], "r1")}  # the untouched day keeps its rows
    assert repair_anomalies(lake, "r4") == []


def test_a_first_run_stopped_before_anomalies_existed_creates_it(spark, lake) -> None:  # type: ignore[no-untyped-def]
    write_scores_only(spark, lake, "r1", {0}, DAYS[:1])
    assert not lake.exists("anomalies")
    assert repair_anomalies(lake, "r2") == ["2024-03-05"]
    assert consistent(lake)
