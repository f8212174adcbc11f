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

Which entities: those whose peer group (the ``entities`` table, written by ``featurize``) is one
of ``score.baseline_groups``, ``internal`` by default. An external address keeps the model's
threshold alone, even with history: a scanner or a command-and-control peer that repeats itself
for hours must not become its own normal (an attacker could train it), and a transient address
has no identity worth a baseline. An entity with fewer than ``min_windows`` earlier scored
windows (a new host) is judged by the model's threshold alone, as its peers are: the cold start.

History is this model version's ``scores`` of the entity from ``baseline_days`` before the first
date scored up to it, then the run's own earlier windows, in time order, so a nightly run and one
run over the same dates give the same flags, and a rerun of a date the same flags again. The
rule only removes flags: ROC-AUC and PR-AUC, which rank the raw scores, do not change; the
stored-threshold figures of ``evaluate`` read ``is_anomaly``.

The rule is one pandas function (:func:`judge_entity`), applied per entity by Spark
(``groupBy(entity).applyInPandas``) or by the driver's path (:func:`judge_table`), so both paths
flag alike; it is Spark-free and unit-tested without a JVM.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from loganomaly.config import Config
from loganomaly.lake.schemas import TABLES
from loganomaly.lake.tables import Lake

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

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
class BaselineRule:
    """``score.*`` settings of the rule (see :class:`loganomaly.config.ScoreConfig`)."""

    groups: tuple[str, ...]
    min_windows: int
    windows: int
    k: float
    days: int

    @classmethod
    def from_config(cls, cfg: Config) -> BaselineRule | None:
        """The rule, or None when ``score.entity_baseline`` is off."""
        s = cfg.score
        if not s.entity_baseline:
            return None
        return cls(tuple(s.baseline_groups), s.baseline_min_windows, s.baseline_windows, s.baseline_k, s.baseline_days)


def entity_limits(scores: np.ndarray, min_windows: int, windows: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row of one entity's time-ordered scores: (own limit, earlier scores it rests on).

    The limit of row ``j`` is ``expm1(median + k x spread)`` of ``log1p`` of the finite scores among
    rows ``j - windows .. j - 1``; NaN where fewer than ``min_windows`` of them are finite.

    Example:
        >>> limits, n = entity_limits(np.array([1.0, 1.0, 1.0, 5.0]), 3, 10, 3.0)
        >>> np.isnan(limits[:3]).all(), round(float(limits[3]), 3), n.tolist()
        (True, 1.685, [0, 1, 2, 3])
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
        q25, median, q75 = np.quantile(prev, [0.25, 0.5, 0.75])
        spread = max((q75 - q25) / _IQR_SIGMAS, SPREAD_FLOOR)
        limits[j] = math.expm1(median + k * spread)
    return limits, counts


def judge_entity(rows: pd.DataFrame, rule: BaselineRule) -> pd.DataFrame:
    """One entity's rows (history and new, any order) -> its new rows with ``is_anomaly`` judged.

    A new row of a baseline group with enough history keeps its flag only above its own limit
    (a NaN score stays flagged); its explanation says what it was judged against, in score units.
    Rows of other groups come back unchanged.
    """
    rows = rows.sort_values("window_start", kind="stable").reset_index(drop=True)
    group = rows[GROUP].iloc[0] if len(rows) else None
    new = ~rows[HISTORY].to_numpy(dtype=bool)
    if group is None or group not in rule.groups or not new.any():
        return rows.loc[new].drop(columns=[HISTORY, GROUP])
    scores = rows["score"].to_numpy(dtype=np.float64)
    limits, counts = entity_limits(scores, rule.min_windows, rule.windows, rule.k)
    judged = np.isfinite(limits)
    flags = rows["is_anomaly"].to_numpy(dtype=bool).copy()
    keep = np.isnan(scores) | ~judged | (scores > np.where(judged, limits, 0.0))
    flags &= keep
    texts = rows["explanation"].astype(object).to_numpy().copy()
    model_flags = rows["is_anomaly"].to_numpy(dtype=bool)
    # Only windows the model flagged carry an explanation (as without baselines): say what decided.
    for j in np.flatnonzero(new & model_flags):
        texts[j] = _with_baseline(texts[j], group, bool(judged[j]), float(limits[j]), int(counts[j]),
                                  bool(flags[j]), rule)
    rows["is_anomaly"] = flags
    rows["explanation"] = texts
    return rows.loc[new].drop(columns=[HISTORY, GROUP])


def _with_baseline(text: Any, group: str, judged: bool, limit: float, count: int, flag: bool,
                   rule: BaselineRule) -> str:
    """The explanation with what the window was judged against (peer group and baseline)."""
    base = "" if text is None else str(text)
    if not judged:
        note = (f"peer group {group}: judged by the model's threshold alone ({count} earlier windows, "
                f"a baseline needs {rule.min_windows})")
    else:
        where = f"its own baseline (limit {limit:.4g} from its last {count} windows)"
        if flag:
            note = f"peer group {group}: above {where}"
        else:
            note = f"peer group {group}: within {where}, so not flagged"
    return f"{base}; {note}" if base else note


def judge_table(table: pa.Table, groups: dict[str, str], history: pa.Table | None, rule: BaselineRule) -> pa.Table:
    """The driver path: :func:`judge_entity` over the scored rows of a small run, same columns out."""
    if table.num_rows == 0:
        return table
    frame = table.to_pandas()
    frame[HISTORY] = False
    if history is not None and history.num_rows:
        # The scores columns; the rows' own extras (the checks' flags) stay on the new rows only.
        past = history.select([c for c in table.column_names if c in history.column_names]).to_pandas()
        past[HISTORY] = True
        frame = pd.concat([frame, past], ignore_index=True)
    frame[GROUP] = frame["entity"].map(groups)
    parts = [judge_entity(rows, rule) for _, rows in frame.groupby("entity", sort=False)]
    out = pd.concat(parts, ignore_index=True)[table.column_names]
    return pa.Table.from_pandas(out, schema=table.schema, preserve_index=False)


def baseline_groups(lake: Lake, rule: BaselineRule) -> DataFrame | None:
    """``entity, _group`` of the ``entities`` rows in the rule's groups; None without the table."""
    from pyspark.sql import functions as F

    if not lake.exists("entities"):
        log.warning("score: score.entity_baseline is on but the lake has no entities table (featurize writes it "
                    "when the setting is on): every window is judged by the model's threshold alone")
        return None
    return (lake.read("entities").where(F.col("group").isin(list(rule.groups)))
            .select("entity", F.col("group").alias(GROUP)))


def history_rows(lake: Lake, model_version: str, dates: Sequence[str], rule: BaselineRule) -> DataFrame | None:
    """This model's ``scores`` rows of the ``rule.days`` days before the first of ``dates``."""
    from pyspark.sql import functions as F

    if not dates or not lake.exists("scores"):
        return None
    first = dt.date.fromisoformat(min(dates))
    return lake.read("scores").where(
        (F.col("model_version") == F.lit(model_version))
        & (F.col("date") >= F.lit(first - dt.timedelta(days=rule.days)))
        & (F.col("date") < F.lit(first))
    ).select(*TABLES["scores"].columns)


def judge_dataframe(scored: DataFrame, lake: Lake, model_version: str, dates: Sequence[str],
                    rule: BaselineRule) -> DataFrame:
    """The Spark path: ``scored`` (the ``scores`` columns) with ``is_anomaly`` judged per entity.

    One shuffle by entity: the new rows and their history meet in one pandas call per entity.
    """
    from pyspark.sql import functions as F

    columns = list(TABLES["scores"].columns)
    groups = baseline_groups(lake, rule)
    if groups is None:
        return scored
    new = scored.select(*columns).withColumn(HISTORY, F.lit(False))
    past = history_rows(lake, model_version, dates, rule)
    rows = new if past is None else new.unionByName(past.withColumn(HISTORY, F.lit(True)))
    rows = rows.join(F.broadcast(groups), "entity", "left")
    schema = scored.select(*columns).schema

    def judge(frame: pd.DataFrame) -> pd.DataFrame:
        return judge_entity(frame, rule)[columns]

    return rows.groupBy("entity").applyInPandas(judge, schema)


def driver_inputs(lake: Lake, model_version: str, dates: Sequence[str],
                  rule: BaselineRule) -> tuple[dict[str, str], pa.Table | None]:
    """(entity -> group of the baseline groups, history rows) for :func:`judge_table`."""
    groups = baseline_groups(lake, rule)
    mapping = {} if groups is None else {r["entity"]: r[GROUP] for r in groups.collect()}
    past = history_rows(lake, model_version, dates, rule) if mapping else None
    return mapping, None if past is None else past.toArrow()
