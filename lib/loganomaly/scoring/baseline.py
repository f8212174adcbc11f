"""Per-entity score baselines: an internal host is also judged against its own recent scores.

Why: the model's threshold is calibrated on the training hosts' validation windows, and a host
whose normal differs from theirs (a busier server, a machine with other software) scores above it
window after window. Held out of training, the monitored host of a Zeek capture (README, "Leave
one capture out") had 98 % of its benign windows flagged while the internet hosts scanning it
scored higher still. Elastic's anomaly jobs model each partition against its own history; here a
window of an entity with enough history is flagged only when it is abnormal for the model *and*
for the entity: ``score > threshold`` and ``log1p(score) > median + k x spread`` of the entity's
previous ``windows`` scores (spread: the interquartile range / 1.349, at least
:data:`SPREAD_FLOOR`, so a host scoring the same every window still needs a clear rise).

A day has hours of its own (``score.baseline_daily``, on by default). A workstation quiet all night
and busy from 07:30 has 48 quiet windows behind its first busy one, every morning: held out of
training, the monitored host of a Zeek capture had its first busy hour (9 windows, scores 4-8
after a night of 0.1-0.9) flagged against its own recent scores. So the same limit is also taken
over the entity's windows of the same UTC hour on earlier days (within ``baseline_days``; today's
windows of that hour are the recent baseline's), and a window is judged against the higher of the
two limits: abnormal for its last hours *and* for this hour of its earlier days. Without an earlier
day holding ``min_windows`` windows of that hour, the recent limit alone judges, as before.

Which entities: those whose peer group (the ``entities`` table, written by ``featurize``) is one
of ``score.baseline_groups``, ``internal`` by default. An external address keeps the model's
threshold alone, even with history: a scanner or a command-and-control peer that repeats itself
for hours must not become its own normal (an attacker could train it), and a transient address
has no identity worth a baseline. An entity with fewer than ``min_windows`` earlier scored
windows (a new host) is judged by the model's threshold alone, as its peers are: the cold start.
A window a network indicator flagged (``model.network_indicators``: it names the indicator in
``top_features``) keeps its flag too: the rule excuses a host's usual volume, and a bot calling its
controller from its first window on would otherwise become its own normal after six.

History is this model's ``scores`` of the entity from ``baseline_days`` before the first date
scored up to it, then the run's own earlier windows, in time order, so a nightly run and one run
over the same dates give the same flags, and a rerun of a date the same flags again. "This model"
takes in the models it replaced (the bundle's ``metrics.lineage``: same kind, features and window,
written when a retrain finds the previous bundle), their scores rescaled by the ratio of the
thresholds (``score x threshold / their threshold``: "times its alert level" is the scale both
share). Why: with a model retrained every night, this version's own history is always empty, so
every host would start cold each morning and no earlier day would be there for the daily limit. The
rule only removes flags: ROC-AUC and PR-AUC, which rank the raw scores, do not change; the
stored-threshold figures of ``evaluate`` read ``is_anomaly``.

The rule is Spark column expressions over a window per entity (:func:`judge_columns`: a trailing
exact ``percentile`` and ``count``, no Python worker), applied to the Spark path's scored rows and,
through a small SQL-only job, to the driver path's Arrow rows, so both paths flag alike.
:func:`entity_limits` is the same limit in numpy: the reference the tests hold the expressions to.
A first version ran the rule as a pandas function per entity (``groupBy(entity).applyInPandas``):
on 200,000 windows of 4,096 entities the stage went from 18,732 to 2,987 windows/s
(``bench/score.py --entity-baseline``); the window expressions cost about 3 s per 200,000 rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from loganomaly.config import Config
from loganomaly.features.windows import INDICATOR_FEATURES
from loganomaly.lake.schemas import TABLES
from loganomaly.lake.tables import Lake

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession, WindowSpec

log = logging.getLogger(__name__)

#: Least spread (log1p units, about a 10 % rise) of an entity's baseline.
SPREAD_FLOOR = 0.1
#: Interquartile range of a normal distribution in standard deviations.
_IQR_SIGMAS = 1.349
#: The column that marks history rows (read from ``scores``, not written again).
HISTORY = "_history"
#: The column carrying each row's peer group (null: not in ``entities``).
GROUP = "_group"


@dataclass(frozen=True)
class Scorer:
    """The model judging a run, as the rule needs it: its version and threshold, and the versions it
    replaced (newest first) whose scores count as its history."""

    version: str
    threshold: float
    lineage: tuple[str, ...] = ()

    @classmethod
    def of(cls, bundle: Any) -> Scorer:
        """A bundle's: ``metrics.lineage`` where it has one (only window-model bundles do)."""
        lineage = (getattr(bundle, "metrics", None) or {}).get("lineage") or []
        return cls(str(bundle.version), float(bundle.threshold),
                   tuple(str(v) for v in lineage if str(v) != str(bundle.version)))


@dataclass(frozen=True)
class BaselineRule:
    """``score.*`` settings of the rule (see :class:`loganomaly.config.ScoreConfig`)."""

    groups: tuple[str, ...]
    min_windows: int
    windows: int
    k: float
    days: int
    daily: bool = True

    @classmethod
    def from_config(cls, cfg: Config) -> BaselineRule | None:
        """The rule, or None when ``score.entity_baseline`` is off."""
        s = cfg.score
        if not s.entity_baseline:
            return None
        return cls(tuple(s.baseline_groups), s.baseline_min_windows, s.baseline_windows, s.baseline_k, s.baseline_days,
                   s.baseline_daily)


def entity_limits(scores: np.ndarray, min_windows: int, windows: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row of one entity's time-ordered scores: (own limit, earlier scores it rests on).

    The limit of row ``j`` is ``expm1(median + k x spread)`` of ``log1p`` of the finite scores among
    rows ``j - windows .. j - 1``; NaN where fewer than ``min_windows`` of them are finite.

    Example:
        >>> limits, n = entity_limits(np.array([1.0, 1.0, 1.0, 5.0]), 3, 10, 3.0)
        >>> bool(np.isnan(limits[:3]).all()), round(float(limits[3]), 3), n.tolist()
        (True, 1.7, [0, 1, 2, 3])
    """
    logs = np.log1p(np.maximum(np.asarray(scores, dtype=np.float64), 0.0))
    limits = np.full(len(logs), np.nan)
    counts = np.zeros(len(logs), dtype=np.int64)
    for j in range(len(logs)):
        prev = logs[max(0, j - windows):j]
        prev = prev[np.isfinite(prev)]
        counts[j] = len(prev)
        if len(prev) < min_windows:
            continue
        limits[j] = _limit(prev, k)
    return limits, counts


def _limit(logs: np.ndarray, k: float) -> float:
    q25, median, q75 = np.quantile(logs, [0.25, 0.5, 0.75])
    return math.expm1(median + k * max((q75 - q25) / _IQR_SIGMAS, SPREAD_FLOOR))


#: Seconds of an hour and a day; earlier days' windows of an hour are at least this far back.
_HOUR, _DAY, _EARLIER_DAY = 3600, 86400, 43200
#: The daily window's sort key: hour of day x this + epoch seconds (see :func:`judge_columns`).
_HOUR_KEY = 1 << 40


def daily_limits(scores: np.ndarray, starts: np.ndarray, min_windows: int, k: float,
                 days: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of one entity's scores: (limit over the same UTC hour of earlier days, rows it rests on).

    ``starts`` are the windows' starts in epoch seconds. Row ``j``'s history is the rows with a
    finite score whose start falls in the same UTC hour of day, at least 12 hours and at most
    ``days`` days and an hour before it (so every window of that hour on the ``days`` earlier
    days, none of the same day); its limit is :func:`entity_limits`'s formula over them, NaN with
    fewer than ``min_windows``.

    Example:
        >>> day = 86400
        >>> limits, n = daily_limits(np.array([2.0, 2.0, 9.0]), np.array([7 * 3600, day + 7 * 3600, 2 * day + 7 * 3600]),
        ...                          2, 3.0, 7)
        >>> n.tolist(), bool(np.isnan(limits[:2]).all()), round(float(limits[2]), 3)
        ([0, 1, 2], True, 3.05)
    """
    x = np.asarray(scores, dtype=np.float64)
    logs = np.log1p(np.maximum(x, 0.0))
    t = np.asarray(starts, dtype=np.int64)
    hours = (t // _HOUR) % 24
    limits = np.full(len(logs), np.nan)
    counts = np.zeros(len(logs), dtype=np.int64)
    for j in range(len(logs)):
        earlier = ((hours == hours[j]) & (t >= t[j] - days * _DAY - _HOUR) & (t <= t[j] - _EARLIER_DAY)
                   & np.isfinite(logs))
        counts[j] = int(earlier.sum())
        if counts[j] >= min_windows:
            limits[j] = _limit(logs[earlier], k)
    return limits, counts


def judge_columns(rows: DataFrame, rule: BaselineRule) -> DataFrame:
    """``rows`` (the ``scores`` columns, :data:`HISTORY` and :data:`GROUP`) -> the new rows judged.

    Spark column expressions over one window per entity (no Python worker): the trailing
    ``percentile`` (exact, interpolated as numpy's default) and ``count`` of the previous
    ``rule.windows`` finite scores' ``log1p``, the limit of :func:`entity_limits`, then
    ``is_anomaly`` kept only above it (a NaN score stays flagged) for rows of a baseline group
    with enough history; with ``rule.daily`` the limit is the higher of that and the same over a
    second window, per entity and UTC hour of day, ranging over the earlier days
    (:func:`daily_limits`). The explanation of a row the model flagged says what decided. Rows of
    other groups (or a null :data:`GROUP`) come out unchanged; history rows are dropped.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    score = F.col("score")
    value = F.when(F.isnan(score), F.lit(None)).otherwise(F.log1p(F.greatest(score, F.lit(0.0))))

    def quartiles_and_count(frame: WindowSpec, name: str) -> list[Column]:
        """``_<name>q`` (the quartiles of ``value`` over ``frame``) and ``_<name>n`` (its count)."""
        quartiles = F.percentile(value, F.array(F.lit(0.25), F.lit(0.5), F.lit(0.75))).over(frame)
        return [quartiles.alias(f"_{name}q"), F.count(value).over(frame).alias(f"_{name}n")]

    enough = F.lit(rule.min_windows)

    def limit_of(name: str) -> Column:
        """The limit over the ``name`` frame; null without ``min_windows`` rows in it."""
        q = F.col(f"_{name}q")
        spread = F.greatest((q[2] - q[0]) / F.lit(_IQR_SIGMAS), F.lit(SPREAD_FLOOR))
        return F.when(F.col(f"_{name}n") >= enough, F.expm1(q[1] + F.lit(rule.k) * spread))

    past = Window.partitionBy("entity").orderBy("window_start").rowsBetween(-rule.windows, -1)
    stats = quartiles_and_count(past, "")
    if rule.daily:
        # Per entity, ordered by (UTC hour of day, time) folded into one long so that a range frame
        # can reach back days within one hour: the hour times 2^40 s (35,000 years) keeps every other
        # hour's rows out of reach. Partitioned by entity alone, as the recent window is, Spark
        # shuffles the rows once and sorts them twice (a partition by entity and hour was a second
        # shuffle: the stage with the rule took 1.5x as long as with the recent limit alone).
        seconds = F.col("window_start").cast("long")
        key = F.pmod(F.floor(seconds / _HOUR), F.lit(24)) * F.lit(_HOUR_KEY) + seconds
        earlier_days = (Window.partitionBy("entity").orderBy(key)
                        .rangeBetween(-(rule.days * _DAY + _HOUR), -_EARLIER_DAY))
        stats += quartiles_and_count(earlier_days, "d")
    rows = rows.select("*", *stats)
    n, group = F.col("_n"), F.col(GROUP)
    recent = limit_of("")
    daily = limit_of("d") if rule.daily else F.lit(None).cast("double")
    limit = F.greatest(recent, daily)  # null only when neither has enough history
    in_group = F.coalesce(group.isin(list(rule.groups)), F.lit(False))
    habit = F.coalesce(F.arrays_overlap(F.col("top_features"), F.array(*map(F.lit, INDICATOR_FEATURES))),
                       F.lit(False))
    judged = in_group & limit.isNotNull() & ~habit
    flag = F.col("is_anomaly") & (F.isnan(score) | score.isNull() | ~judged | (score > limit))
    days_note = (F.when(daily.isNotNull(), F.format_string(" and %d of this hour on earlier days", F.col("_dn")))
                 .otherwise(F.lit("")) if rule.daily else F.lit(""))
    where = F.concat(F.format_string("its own baseline (limit %.4g from its last %d windows", limit, n),
                     days_note, F.lit(")"))
    note = (
        F.when(~in_group | ~F.col("is_anomaly"), F.lit(None))
        .when(habit, F.concat(F.lit("peer group "), group,
                              F.lit(": a network indicator flagged it, which its own baseline does not excuse")))
        .when(~judged, F.format_string("peer group %s: judged by the model's threshold alone (%d earlier "
                                       "windows, a baseline needs %d)", group, n, F.lit(rule.min_windows)))
        .when(flag, F.concat(F.lit("peer group "), group, F.lit(": above "), where))
        .otherwise(F.concat(F.lit("peer group "), group, F.lit(": within "), where, F.lit(", so not flagged")))
    )
    text = F.col("explanation")
    explanation = (F.when(note.isNull(), text)
                   .when(text.isNull() | (text == F.lit("")), note)
                   .otherwise(F.concat(text, F.lit("; "), note)))
    out = [c for c in rows.columns if c not in (HISTORY, GROUP, "_q", "_n", "_dq", "_dn")]
    chosen = {"is_anomaly": flag, "explanation": explanation}
    return rows.where(~F.col(HISTORY)).select(*[chosen[c].alias(c) if c in chosen else F.col(c) for c in out])


def baseline_groups(lake: Lake, rule: BaselineRule) -> DataFrame | None:
    """``entity, _group`` of the ``entities`` rows in the rule's groups; None without the table."""
    from pyspark.sql import functions as F

    if not lake.exists("entities"):
        log.warning("score: score.entity_baseline is on but the lake has no entities table (featurize writes it "
                    "when the setting is on): every window is judged by the model's threshold alone")
        return None
    return (lake.read("entities").where(F.col("group").isin(list(rule.groups)))
            .select("entity", F.col("group").alias(GROUP)))


def history_rows(lake: Lake, scorer: Scorer, dates: Sequence[str], rule: BaselineRule) -> DataFrame | None:
    """The ``scores`` rows of this model and its lineage of the ``rule.days`` days before the first
    of ``dates``, the lineage's scores rescaled to this model's threshold (a row with no positive
    threshold keeps its score)."""
    from pyspark.sql import functions as F

    if not dates or not lake.exists("scores"):
        return None
    first = dt.date.fromisoformat(min(dates))
    rows = lake.read("scores").where(
        F.col("model_version").isin([scorer.version, *scorer.lineage])
        & (F.col("date") >= F.lit(first - dt.timedelta(days=rule.days)))
        & (F.col("date") < F.lit(first))
    ).select(*TABLES["scores"].columns)
    if not scorer.lineage:
        return rows
    theirs = F.col("threshold")
    ratio = F.when((F.col("model_version") != F.lit(scorer.version)) & (theirs > 0),
                   F.lit(scorer.threshold) / theirs).otherwise(F.lit(1.0))
    return rows.withColumn("score", F.col("score") * ratio)


def judge_dataframe(scored: DataFrame, lake: Lake, scorer: Scorer, dates: Sequence[str],
                    rule: BaselineRule) -> DataFrame:
    """``scored`` (the ``scores`` columns, maybe more) with ``is_anomaly`` judged per entity.

    The Spark path applies it to the scoring pass's output (one shuffle by entity, column
    expressions in the JVM); the driver's path to its Arrow rows (:func:`judge_table`).
    """
    from pyspark.sql import functions as F

    groups = baseline_groups(lake, rule)
    if groups is None:
        return scored
    rows = scored.withColumn(HISTORY, F.lit(False))
    past = history_rows(lake, scorer, dates, rule)
    if past is not None:
        rows = rows.unionByName(past.withColumn(HISTORY, F.lit(True)), allowMissingColumns=True)
    return judge_columns(rows.join(F.broadcast(groups), "entity", "left"), rule)


def judge_table(spark: SparkSession, table: pa.Table, lake: Lake, scorer: Scorer, dates: Sequence[str],
                rule: BaselineRule) -> pa.Table:
    """The driver path: its scored Arrow rows through :func:`judge_dataframe`, same columns out.

    One small Spark job (SQL only, no Python worker), so both paths judge with the same expressions.
    """
    if table.num_rows == 0:
        return table
    judged = judge_dataframe(spark.createDataFrame(table), lake, scorer, dates, rule)
    return judged.select(*table.column_names).toArrow().cast(table.schema)
