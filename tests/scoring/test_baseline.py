"""Per-entity score baselines (``score.entity_baseline``): the rule without a JVM, then both paths."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loganomaly.config import load_config
from loganomaly.errors import ConfigError
from loganomaly.scoring import stage
from loganomaly.scoring.baseline import (
    GROUP,
    HISTORY,
    SPREAD_FLOOR,
    BaselineRule,
    Scorer,
    daily_limits,
    entity_limits,
    judge_columns,
)

RULE = BaselineRule(groups=("internal",), min_windows=3, windows=4, k=3.0, days=7)
T0 = dt.datetime(2024, 3, 5, tzinfo=dt.timezone.utc)


def _frame(scores: list[float], threshold: float, group: str | None, history: int = 0,
           entity: str = "h", tops: list[list[str]] | None = None) -> pd.DataFrame:
    n = len(scores)
    return pd.DataFrame({
        "entity": [entity] * n,
        "window_start": [T0 + dt.timedelta(minutes=10 * i) for i in range(n)],
        "score": scores,
        "threshold": [threshold] * n,
        "is_anomaly": [s > threshold or math.isnan(s) for s in scores],
        "explanation": ["error" if s > threshold or math.isnan(s) else "" for s in scores],
        "top_features": tops if tops is not None else [["events"] if s > threshold else [] for s in scores],
        HISTORY: [i < history for i in range(n)],
        GROUP: [group] * n,
    })


def _judge(spark, frame: pd.DataFrame, rule: BaselineRule = RULE) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    ddl = ("entity string, window_start timestamp, score double, threshold double, is_anomaly boolean, "
           f"explanation string, top_features array<string>, {HISTORY} boolean, {GROUP} string")
    from pyspark.sql import functions as F

    rows = spark.createDataFrame(frame.sample(frac=1.0, random_state=0), ddl)  # any order in
    rows = rows.withColumn("score", F.coalesce("score", F.lit(float("nan"))))  # pandas' NaN arrives as null
    return judge_columns(rows, rule).toPandas().sort_values(["entity", "window_start"]).reset_index(drop=True)


def test_the_limit_is_the_median_plus_k_spreads_of_the_previous_windows() -> None:
    scores = np.array([1.0, 3.0, 1.0, 1.0, 100.0, 1.0, np.nan, 1.0])
    limits, counts = entity_limits(scores, min_windows=3, windows=4, k=2.0)
    assert counts.tolist() == [0, 1, 2, 3, 4, 4, 4, 3]  # the NaN is not history
    assert np.isnan(limits[:3]).all()
    # row 3: log1p of [1, 3, 1]: median log 2, quartiles log 2 .. (log 2 + log 4) / 2
    logs = np.log1p([1.0, 3.0, 1.0])
    spread = max((np.quantile(logs, 0.75) - np.quantile(logs, 0.25)) / 1.349, SPREAD_FLOOR)
    assert limits[3] == pytest.approx(math.expm1(np.log(2.0) + 2.0 * spread))
    # row 5 sees rows 1-4 only (the horizon): the 100 is in it and the 1.0 before it is not
    window = np.log1p([3.0, 1.0, 1.0, 100.0])
    q25, med, q75 = np.quantile(window, [0.25, 0.5, 0.75])
    assert limits[5] == pytest.approx(math.expm1(med + 2.0 * max((q75 - q25) / 1.349, SPREAD_FLOOR)))
    # a host scoring the same every window still needs the floor's rise
    flat, _ = entity_limits(np.full(5, 4.0), 3, 10, 3.0)
    assert flat[4] == pytest.approx(math.expm1(math.log1p(4.0) + 3 * SPREAD_FLOOR))


@pytest.mark.spark
def test_a_busy_internal_host_is_flagged_only_where_it_leaves_its_own_normal(spark) -> None:  # type: ignore[no-untyped-def]
    # every window above the model's threshold (1.0): the host's normal is busier than training's
    scores = [10.0, 12.0, 11.0, 10.0, 13.0, 11.0, 90.0, 12.0]
    out = _judge(spark, _frame(scores, 1.0, "internal"))
    assert out["is_anomaly"].tolist() == [True, True, True, False, False, False, True, False]
    assert list(out.columns) == ["entity", "window_start", "score", "threshold", "is_anomaly", "explanation",
                                 "top_features"]
    notes = out["explanation"].tolist()
    assert notes[0] == "error; peer group internal: judged by the model's threshold alone (0 earlier windows, " \
                       "a baseline needs 3)"
    assert notes[3].startswith("error; peer group internal: within its own baseline (limit ") and \
        notes[3].endswith("from its last 3 windows), so not flagged")
    assert "peer group internal: above its own baseline (limit" in notes[6] and "last 4 windows" in notes[6]


@pytest.mark.spark
def test_a_window_a_network_indicator_flagged_keeps_its_flag(spark) -> None:  # type: ignore[no-untyped-def]
    """A bot calling its controller every window: its scores are its own normal after three
    windows, but the indicator's flags stay; a window the error alone flagged is still judged."""
    scores = [30.0, 31.0, 30.0, 30.5, 31.0, 30.0]
    tops = [["repeated_failures", "events"]] * 5 + [["events", "connections"]]
    out = _judge(spark, _frame(scores, 1.0, "internal", tops=tops))
    assert out["is_anomaly"].tolist() == [True] * 5 + [False]
    assert out["explanation"][4] == ("error; peer group internal: a network indicator flagged it, which its own "
                                     "baseline does not excuse")
    assert "within its own baseline" in out["explanation"][5]


@pytest.mark.spark
def test_other_groups_history_nan_and_quiet_windows(spark) -> None:  # type: ignore[no-untyped-def]
    busy = [10.0, 12.0, 11.0, 10.0, 13.0, 11.0]
    frame = pd.concat([_frame(busy, 1.0, "external", entity="x"), _frame(busy, 1.0, None, entity="u"),
                       _frame([10.0, 11.0, 10.0, 10.5, 40.0], 1.0, "internal", history=3, entity="i"),
                       _frame([10.0, 11.0, 10.0, float("nan")], 1.0, "internal", entity="n"),
                       _frame([0.01, 0.01, 0.01, 0.9], 1.0, "internal", entity="q")])
    out = _judge(spark, frame).set_index("entity")
    for other in ("x", "u"):  # other groups, and entities not in the table, keep the model's flags
        assert out.loc[other, "is_anomaly"].tolist() == [True] * 6
        assert out.loc[other, "explanation"].tolist() == ["error"] * 6
    # history rows count but do not come back
    assert out.loc["i", "score"].tolist() == [10.5, 40.0] and out.loc["i", "is_anomaly"].tolist() == [False, True]
    assert out.loc["n", "is_anomaly"].tolist()[-1]  # a NaN score stays flagged
    assert not out.loc["q", "is_anomaly"].any()  # below the model's threshold nothing is flagged
    assert out.loc["q", "explanation"].tolist() == [""] * 4


@pytest.mark.spark
def test_the_expressions_give_the_numpy_limits(spark) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    rule = BaselineRule(groups=("internal",), min_windows=4, windows=9, k=1.0, days=7)
    parts = []
    for e in range(6):
        scores = np.exp(rng.normal(1.0, 0.8, 40)).tolist()
        scores[7] = float("nan")
        parts.append(_frame(scores, 0.5, "internal", history=5, entity=f"e{e}"))
    frame = pd.concat(parts, ignore_index=True)
    out = _judge(spark, frame, rule)
    expected = []
    for e in range(6):
        rows = frame[frame["entity"] == f"e{e}"]
        limits, _ = entity_limits(rows["score"].to_numpy(), 4, 9, 1.0)
        s = rows["score"].to_numpy()
        keep = np.isnan(s) | np.isnan(limits) | (s > np.nan_to_num(limits, nan=0.0))
        expected += list((rows["is_anomaly"].to_numpy() & keep)[5:])
    assert out["is_anomaly"].tolist() == expected
    assert 0 < sum(expected) < len(expected)


def test_the_daily_limit_reads_the_same_hour_of_earlier_days_only() -> None:
    hour, day = 3600, 86400
    # row: (start, score); the judged row is the last one, day 3 at 07:40
    rows = [
        (0 * day + 7 * hour + 0, 1.0),      # day 0, 07:00: outside 2 days + 1 hour
        (1 * day + 6 * hour + 3000, 50.0),  # day 1, 06:50: another hour
        (1 * day + 7 * hour + 600, 3.0),    # day 1, 07:10
        (1 * day + 7 * hour + 3000, 5.0),   # day 1, 07:50
        (2 * day + 7 * hour + 300, np.nan),  # day 2, 07:05: no score, no history
        (2 * day + 7 * hour + 1200, 4.0),   # day 2, 07:20
        (3 * day + 7 * hour + 60, 80.0),    # day 3, 07:01: the same day, the recent baseline's
        (3 * day + 7 * hour + 2400, 6.0),   # day 3, 07:40
    ]
    starts = np.array([r[0] for r in rows], dtype=np.int64)
    scores = np.array([r[1] for r in rows])
    limits, counts = daily_limits(scores, starts, min_windows=3, k=2.0, days=2)
    # the last row: 07:10, 07:50 of day 1 and 07:20 of day 2; day 2's NaN and day 3's 07:01 are not
    # history, nor is day 0 (beyond 2 days and an hour) or day 1's 06:50 (another hour)
    assert counts.tolist() == [0, 0, 1, 1, 3, 3, 3, 3]
    logs = np.log1p([3.0, 5.0, 4.0])
    q25, med, q75 = np.quantile(logs, [0.25, 0.5, 0.75])
    assert limits[-1] == pytest.approx(math.expm1(med + 2.0 * max((q75 - q25) / 1.349, SPREAD_FLOOR)))
    assert np.isnan(limits[:4]).all() and np.isfinite(limits[4:]).all()
    # with a horizon of 3 days the 07:00 of day 0 counts too
    assert daily_limits(scores, starts, 3, 2.0, 3)[1][-1] == 4


def _days_frame(entity: str, scores: list[float], starts: list[dt.datetime], threshold: float) -> pd.DataFrame:
    frame = _frame(scores, threshold, "internal", entity=entity)
    frame["window_start"] = starts
    return frame


@pytest.mark.spark
def test_a_workstations_busy_mornings_are_its_normal_from_its_second_day_on(spark) -> None:  # type: ignore[no-untyped-def]
    """Quiet nights, busy days from 07:30, for three days; every busy window is above the
    model's threshold (1.0). The first morning is new to the host's history and stays flagged;
    the next mornings are what its earlier mornings were; a window far above both baselines at
    noon of the third day is flagged still. Without ``daily`` every morning is flagged."""
    rng = np.random.default_rng(5)
    starts, scores = [], []
    for day in range(3):
        for minute in range(0, 24 * 60, 5):
            t = T0 + dt.timedelta(days=day, minutes=minute)
            busy = 7 * 60 + 30 <= minute < 18 * 60
            starts.append(t)
            scores.append(float(np.exp(rng.normal(1.8 if busy else -2.0, 0.15))))
    attack = starts.index(T0 + dt.timedelta(days=2, hours=12))
    scores[attack] = 400.0
    frame = _days_frame("w", scores, starts, 1.0)
    rule = BaselineRule(groups=("internal",), min_windows=6, windows=48, k=3.0, days=7)
    daily = _judge(spark, frame, rule)
    recent = _judge(spark, frame, BaselineRule(("internal",), 6, 48, 3.0, 7, daily=False))
    mornings = [(T0 + dt.timedelta(days=d, hours=7, minutes=30), T0 + dt.timedelta(days=d, hours=9))
                for d in range(3)]

    def flagged(out: pd.DataFrame, span: tuple[dt.datetime, dt.datetime]) -> int:
        starts = out["window_start"].dt.tz_localize("UTC") if out["window_start"].dt.tz is None else out["window_start"]
        return int(out["is_anomaly"][(starts >= span[0]) & (starts < span[1])].sum())

    assert [flagged(recent, m) for m in mornings] == [flagged(recent, mornings[0])] * 3
    assert flagged(recent, mornings[0]) >= 3  # the ramp outruns the recent baseline every day
    assert flagged(daily, mornings[0]) == flagged(recent, mornings[0])  # no earlier day yet
    assert flagged(daily, mornings[1]) == 0 and flagged(daily, mornings[2]) == 0
    assert daily["is_anomaly"][attack] and recent["is_anomaly"][attack]
    assert int(daily["is_anomaly"].sum()) == flagged(daily, mornings[0]) + 1
    note = daily["explanation"][attack]
    assert "from its last 48 windows and 24 of this hour on earlier days" in note and "above its own" in note
    assert "earlier days" not in recent["explanation"][attack]


@pytest.mark.spark
def test_the_daily_expressions_give_the_numpy_limits(spark) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(8)
    rule = BaselineRule(groups=("internal",), min_windows=3, windows=6, k=1.0, days=2)
    parts, expected_parts = [], []
    for e in range(5):
        minutes = np.sort(rng.choice(4 * 24 * 60, size=90, replace=False))
        starts = [T0 + dt.timedelta(minutes=int(m)) for m in minutes]
        scores = np.exp(rng.normal(1.0, 0.9, len(starts))).tolist()
        scores[11] = float("nan")
        frame = _days_frame(f"e{e}", scores, starts, 0.5)
        frame[HISTORY] = [i < 20 for i in range(len(frame))]
        parts.append(frame)
        s = frame["score"].to_numpy()
        recent, _ = entity_limits(s, 3, 6, 1.0)
        seconds = np.array([int(t.timestamp()) for t in starts], dtype=np.int64)
        daily, _ = daily_limits(s, seconds, 3, 1.0, 2)
        limit = np.fmax(recent, daily)
        keep = np.isnan(s) | np.isnan(limit) | (s > np.nan_to_num(limit, nan=0.0))
        expected_parts += list((frame["is_anomaly"].to_numpy() & keep)[20:])
        assert np.isfinite(daily).sum() > 5 and (daily > np.nan_to_num(recent, nan=0.0)).any()
    out = _judge(spark, pd.concat(parts, ignore_index=True), rule)
    assert out["is_anomaly"].tolist() == expected_parts
    assert 0 < sum(expected_parts) < len(expected_parts)


@pytest.mark.spark
def test_history_reads_the_replaced_models_scores_on_this_models_scale(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A model retrained every night has no scores of its own before today: its lineage's count,
    rescaled by the thresholds' ratio; a model outside the lineage does not, nor does a date
    beyond ``days`` or the first date scored."""
    from loganomaly.lake.schemas import TABLES
    from loganomaly.lake.tables import Lake
    from loganomaly.scoring.baseline import history_rows

    lake = Lake(spark, tmp_path / "lake", engine="deltars")
    day = dt.date(2024, 3, 10)
    rows = [  # (days before ``day``, model version, score, threshold)
        (1, "v2", 3.0, 2.0), (2, "v1", 1.0, 0.5), (2, "other", 7.0, 1.0), (9, "v1", 5.0, 0.5),
        (0, "v2", 6.0, 2.0), (1, "v3", 8.0, 4.0), (3, "v1", 2.0, 0.0),
    ]
    frame = pd.DataFrame([{
        "entity": "h", "window_start": dt.datetime.combine(day - dt.timedelta(days=back), dt.time(9), dt.timezone.utc),
        "window_end": dt.datetime.combine(day - dt.timedelta(days=back), dt.time(10), dt.timezone.utc),
        "date": day - dt.timedelta(days=back), "score": score, "threshold": thr, "is_anomaly": False,
        "explanation": "", "top_features": [], "model_version": version, "run_id": "r"}
        for back, version, score, thr in rows])
    schema = ", ".join(f"{c} {t}" for c, t in TABLES["scores"].columns.items())
    lake.write("scores", spark.createDataFrame(frame, schema), mode="overwrite", partition_by=("date",))
    rule = BaselineRule(("internal",), 3, 48, 3.0, 7)
    scorer = Scorer("v3", 4.0, ("v2", "v1"))

    def got(scorer: Scorer) -> list[tuple[str, float]]:
        past = history_rows(lake, scorer, [day.isoformat(), (day + dt.timedelta(days=1)).isoformat()], rule)
        assert past is not None and past.columns == list(TABLES["scores"].columns)
        return sorted((r.model_version, r.score) for r in past.collect())

    # v2's 3.0 at threshold 2 is 6.0 at 4; v1's 1.0 at 0.5 is 8.0; v1 with no threshold keeps 2.0;
    # v3's own row keeps its score; 9 days back, today, and "other" are not read
    assert got(scorer) == [("v1", 2.0), ("v1", 8.0), ("v2", 6.0), ("v3", 8.0)]
    assert got(Scorer("v3", 4.0)) == [("v3", 8.0)]


def test_a_scorer_is_read_off_the_bundle() -> None:
    class Bundle:
        version, threshold = "v3", 2.5
        metrics = {"lineage": ["v2", "v3", "v1"]}

    assert Scorer.of(Bundle()) == Scorer("v3", 2.5, ("v2", "v1"))
    Bundle.metrics = {}
    assert Scorer.of(Bundle()) == Scorer("v3", 2.5, ())
    del Bundle.metrics
    assert Scorer.of(Bundle()).lineage == ()


def test_the_settings_are_validated() -> None:
    cfg = load_config(overrides=["score.entity_baseline=true"])
    assert BaselineRule.from_config(cfg) == BaselineRule(("internal",), 6, 48, 3.0, 7)
    assert BaselineRule.from_config(load_config()) is None
    for bad in ("score.baseline_min_windows=1", "score.baseline_windows=3", "score.baseline_k=0",
                "score.baseline_days=0", "score.baseline_groups=[]"):
        with pytest.raises(ConfigError, match="score.baseline"):
            load_config(overrides=["score.entity_baseline=true", bad])


# ---------------------------------------------------------------- through the stage, both paths
@pytest.mark.spark
@pytest.mark.slow
def test_both_paths_judge_alike_and_a_later_night_reads_the_earlier_scores(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # One engine, the default one: the rule reads and writes through the Lake, as every stage does.
    from loganomaly.lake.tables import Lake
    from tests.conftest import require_engine
    from tests.scoring.test_run import DAYS, _table, make_scored_lake

    require_engine(spark, "delta")
    lake, cfg, model_dir, x = make_scored_lake(spark, Lake(spark, tmp_path / "lake", engine="delta"), tmp_path)
    lake.write("entities", spark.createDataFrame(
        [("host-0", "internal", "local_networks"), ("host-1", "external", "not_local")],
        "entity string, group string, group_rule string").selectExpr(
        "entity", "group", "group_rule", "timestamp'2024-01-01 00:00:00' AS first_seen",
        "timestamp'2024-01-01 00:00:00' AS last_seen", "1L AS events", "1L AS windows", "'test' AS run_id"))
    cfg.score.local_max_bytes = 0
    plain = stage.run(spark, cfg, model_dir, lake=lake)
    before = {(r[0], r[1]): r for r in _table(lake, "scores")}

    cfg.score.entity_baseline, cfg.score.baseline_min_windows, cfg.score.baseline_windows = True, 3, 6
    cfg.score.baseline_k = 0.5  # a tight baseline, so the small fixture suppresses some flags
    on_spark = stage.run(spark, cfg, model_dir, lake=lake)
    scores, anomalies = _table(lake, "scores"), _table(lake, "anomalies")
    assert [r for r in scores if r[6]] == anomalies and on_spark.anomalies == len(anomalies)
    host0 = sorted((r for r in scores if r[0] == "host-0"), key=lambda r: r[1])
    limits, _ = entity_limits(np.array([r[4] for r in host0]), 3, 6, 0.5)
    expected = [r[4] > r[5] and (math.isnan(lim) or r[4] > lim) for r, lim in zip(host0, limits, strict=True)]
    assert [r[6] for r in host0] == expected
    assert sum(before[(r[0], r[1])][6] for r in host0) > sum(expected) > 0  # some flags cleared, some kept
    for r in scores:  # other hosts (an external one, one not in entities) keep the model's flags
        if r[0] != "host-0":
            assert r[6] == before[(r[0], r[1])][6] and r[7] == before[(r[0], r[1])][7]
    assert all("peer group internal" in r[7] for r in host0 if before[(r[0], r[1])][6])

    cfg.score.local_max_bytes = 1 << 20  # the driver's path: the same rows
    stage.run(spark, cfg, model_dir, lake=lake)
    assert _table(lake, "scores") == scores and _table(lake, "anomalies") == anomalies

    # the second date alone: its host-0 windows read the first date's scores as history
    for local in (0, 1 << 20):
        cfg.score.local_max_bytes = local
        stage.run(spark, cfg, model_dir, date=DAYS[1].isoformat(), lake=lake)
        assert _table(lake, "scores") == scores and _table(lake, "anomalies") == anomalies
    assert plain.windows == on_spark.windows == len(x)
