"""``scores`` and ``anomalies`` are two commits; the next run repairs a run stopped between them."""

from __future__ import annotations

import datetime as dt

import pytest

from loganomaly.lake.schemas import TABLES
from loganomaly.lake.tables import Lake
from loganomaly.scoring.stage import REPAIR_SUFFIX, last_run_finished, repair_anomalies
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


def write_both(spark, lake: Lake, run_id: str, flagged: set[int], days: list[dt.date],  # type: ignore[no-untyped-def]
               commit_run_id: str = "") -> None:
    """What ``write_scores`` commits: ``scores`` of the days, then ``anomalies`` (its flagged rows).

    ``commit_run_id`` goes into both commits' metadata, as the stage writes them; the tests that
    leave it empty exercise the full comparison (commits without run ids are never trusted).
    """
    write_scores_only(spark, lake, run_id, flagged, days, commit_run_id)
    df = spark.createDataFrame([r for r in rows(run_id, flagged, days) if r[6]], TABLES["anomalies"].ddl)
    mode = "overwrite" if lake.exists("anomalies") else "append"
    lake.write("anomalies", df, mode=mode, partition_by=["date"],
               replace_where={"date": [d.isoformat() for d in days]} if mode == "overwrite" else None,
               run_id=commit_run_id)


def write_scores_only(spark, lake: Lake, run_id: str, flagged: set[int], days: list[dt.date],  # type: ignore[no-untyped-def]
                      commit_run_id: str = "") -> None:
    """The first of the two commits alone: a run killed before its ``anomalies`` commit."""
    df = spark.createDataFrame(rows(run_id, flagged, days), TABLES["scores"].ddl)
    mode = "overwrite" if lake.exists("scores") else "append"
    lake.write("scores", df, mode=mode, partition_by=["date"],
               replace_where={"date": [d.isoformat() for d in days]} if mode == "overwrite" else None,
               run_id=commit_run_id)


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


@pytest.mark.parametrize("engine", ENGINES)
def test_the_comparison_is_skipped_only_when_one_run_made_both_newest_commits(spark, tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    require_engine(spark, engine)
    lake = Lake(spark, tmp_path / "lake", engine=engine)
    write_both(spark, lake, "r1", {3}, DAYS, commit_run_id="r1")
    assert last_run_finished(lake) and repair_anomalies(lake, "r2") == []

    # r2 stops after its scores commit: the newest commits are r2's and r1's, so the tables are compared
    write_scores_only(spark, lake, "r2", {1}, DAYS[:1], commit_run_id="r2")
    assert not last_run_finished(lake)
    # r3 repairs, then stops after its own scores commit: its repair commit must not pass for its
    # anomalies commit (the newest commits would otherwise both carry r3)
    assert repair_anomalies(lake, "r3") == ["2024-03-05"]
    assert lake.last_commit("anomalies")["runId"] == "r3" + REPAIR_SUFFIX  # type: ignore[index]
    write_scores_only(spark, lake, "r3", {2}, DAYS[1:2], commit_run_id="r3")
    assert not last_run_finished(lake)
    assert repair_anomalies(lake, "r4") == ["2024-03-06"]
    assert consistent(lake)

    # a run that finishes both commits makes the next check free again
    write_both(spark, lake, "r4", {0}, DAYS[2:], commit_run_id="r4")
    assert last_run_finished(lake) and consistent(lake)
    versions = (lake.version("scores"), lake.version("anomalies"))
    assert repair_anomalies(lake, "r5") == [] and (lake.version("scores"), lake.version("anomalies")) == versions


@pytest.mark.parametrize("engine", ENGINES)
def test_maintenance_commits_do_not_force_the_comparison(spark, tmp_path, engine) -> None:  # type: ignore[no-untyped-def]
    require_engine(spark, engine)
    lake = Lake(spark, tmp_path / "lake", engine=engine)
    write_both(spark, lake, "r1", {1, 3}, DAYS, commit_run_id="r1")
    write_both(spark, lake, "r2", {0, 2}, DAYS[:2], commit_run_id="r2")
    # r2 appends more rows to one date of both tables: two files in that partition to compact
    for name in ("scores", "anomalies"):
        extra = [r for r in rows("r2", {0, 2}, DAYS[:1]) if name == "scores" or r[6]]
        lake.write(name, spark.createDataFrame(extra, TABLES[name].ddl), mode="append", run_id="r2")
    for name in ("scores", "anomalies"):
        before = lake.version(name)
        assert lake.optimize(name)["files_removed"] > 0
        assert lake.version(name) == before + 1  # type: ignore[operator]
        assert lake.last_commit(name)["operation"] == "OPTIMIZE"  # type: ignore[index]
        assert lake.last_data_commit(name)["runId"] == "r2"  # type: ignore[index]
    assert last_run_finished(lake)
    versions = (lake.version("scores"), lake.version("anomalies"))
    assert repair_anomalies(lake, "r3") == [] and (lake.version("scores"), lake.version("anomalies")) == versions

    # a run stopped between its commits, then compacted: the comparison still runs and repairs
    write_scores_only(spark, lake, "r3", {3}, DAYS[2:], commit_run_id="r3")
    lake.optimize("scores")
    assert not last_run_finished(lake)
    assert repair_anomalies(lake, "r4") == ["2024-03-07"]
    assert consistent(lake)
