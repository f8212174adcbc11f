"""``evaluate``: a model's ``scores`` against ground truth -> the ``evaluations`` table.

Ground truth comes from one of three places, all turned into one 0/1 label per scored window:

* an **interval** file (``entity,start,end[,kind]``, what :mod:`loganomaly.ingest.synthetic` writes as
  ``labels.csv``): a window is anomalous when ``[window_start, window_end)`` overlaps a labelled
  interval of its entity. Every other window of the scored period is normal.
* a **key** file (``key,label``, e.g. Loghub's HDFS ``anomaly_label.csv`` ``BlockId,Label``) for
  session-keyed data where the scored entity is the session key: a window takes its key's label.
  Windows whose key the file does not list are *left out* (unknown is not normal).
* the ``label`` column of ``events`` (Loghub BGL, IoT-23, KDD): a window is anomalous when any
  event of its entity with ``window_start <= ts < window_end`` has a label outside the normal set.

The joins run in Spark; only one (score, label) pair per window reaches the driver, where
:func:`loganomaly.models.baselines.evaluate` computes the metrics, so the LSTM is judged by exactly the
code that judges the baselines.

Write rule. One row per (model_version, label_source, threshold_kind) is *merged* into
``evaluations``: re-evaluating the same model against the same labels replaces its rows instead
of piling up duplicates that every "how good is model X" query would have to de-duplicate.
The row keeps ``run_id``, ``evaluated_at`` and ``scores_version`` (the ``scores`` snapshot it
read), so the evaluation it describes can be reproduced with time travel; earlier evaluations of
the same key remain in the table's Delta history.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loganomaly.config import Config
from loganomaly.errors import StageInputError
from loganomaly.evaluation.metrics import evaluate as evaluate_arrays
from loganomaly.features.labels import NORMAL_LABELS, is_abnormal_label
from loganomaly.lake.schemas import TABLES
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import load_bundle
from loganomaly.runtime.runs import new_run_id

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

#: Labels that mean "normal" (the one list training uses too).
DEFAULT_NORMAL_LABELS = NORMAL_LABELS
#: ``label_source`` of evaluations against the events' own labels.
EVENTS_SOURCE = "events.label"
THRESHOLD_KINDS = ("stored", "best_f1")
#: Merge keys of ``evaluations``: one row per model, label source and threshold kind.
EVALUATION_KEYS = ("model_version", "label_source", "threshold_kind")

EVALUATION_DDL = TABLES["evaluations"].ddl
WINDOW_KEYS = ("entity", "window_start", "window_end")


@dataclass
class LabelledWindows:
    """One model's scored windows with a 0/1 label each, collected on the driver (small)."""

    scores: np.ndarray
    labels: np.ndarray
    threshold: float
    model_version: str
    label_source: str
    scores_version: int
    n_unlabelled: int = 0
    #: ``(entity, UTC date of window_start)`` per window: the unit of "alerts per entity-day".
    entity_days: np.ndarray | None = None
    #: The stored ``is_anomaly`` per window (None: ``score > threshold``, as before it was read).
    flags: np.ndarray | None = None


@dataclass
class EvaluationSummary:
    """What ``loganomaly evaluate`` prints: counts and one metrics dict per threshold kind."""

    run_id: str
    model_version: str
    label_source: str
    scores_version: int
    n_windows: int
    n_positive: int
    n_unlabelled: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as null, so ``json.dumps`` output is strict JSON)."""
        return _json_safe(self.__dict__.copy())


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------- label files
def _parse_time(text: str, where: str) -> dt.datetime:
    """ISO-8601 instant; a time without offset is UTC (as every time in the lake)."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise StageInputError(f"{where}: {text!r} is not an ISO-8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def read_label_file(path: str | Path) -> tuple[str, list[tuple[Any, ...]]]:
    """Parse a labels CSV into ``("intervals", [(entity, start, end, kind)])`` or ``("keys", [(key, label)])``.

    The format is told by the header: ``entity,start,end[,kind]`` (any column order, more columns
    ignored) is an interval file; exactly two columns, one named ``label`` (any case), is a key file
    whose other column is the key.

    Raises:
        StageInputError: missing or empty file, an unknown header, an unparsable time or an
            interval that ends before it starts.
    """
    source = Path(path)
    if not source.is_file():
        raise StageInputError(f"labels file {source} does not exist")
    with open(source, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise StageInputError(f"labels file {source} is empty")
        names = [h.strip().lower() for h in header]
        rows = [r for r in reader if any(cell.strip() for cell in r)]
    if {"entity", "start", "end"} <= set(names):
        e, s, t = names.index("entity"), names.index("start"), names.index("end")
        k = names.index("kind") if "kind" in names else None
        intervals: list[tuple[Any, ...]] = []
        for n, r in enumerate(rows, start=2):
            where = f"{source}:{n}"
            start, end = _parse_time(r[s], where), _parse_time(r[t], where)
            if end < start:
                raise StageInputError(f"{where}: interval ends ({end}) before it starts ({start})")
            intervals.append((r[e].strip(), start, end, r[k].strip() if k is not None and k < len(r) else None))
        return "intervals", intervals
    if len(names) == 2 and "label" in names:
        li = names.index("label")
        ki = 1 - li
        return "keys", [(r[ki].strip(), r[li].strip()) for r in rows if len(r) >= 2]
    raise StageInputError(
        f"labels file {source}: header {header} is neither entity,start,end[,kind] (time intervals) "
        "nor key,label (one label per session or entity)"
    )


# ---------------------------------------------------------------- labelling in Spark
def label_windows_by_intervals(spark: SparkSession, windows: DataFrame, intervals: list[tuple[Any, ...]]) -> DataFrame:
    """``windows`` plus ``label`` (0/1): 1 when the window overlaps an interval of its entity.

    Overlap is ``window_start < end and window_end > start``: windows are half-open and a window
    that merely touches an interval's edge holds none of it.
    """
    from pyspark.sql import functions as F

    labels = spark.createDataFrame(
        [(e, s, t) for e, s, t, _ in intervals], "l_entity string, l_start timestamp, l_end timestamp"
    )
    hits = (
        windows.select(*WINDOW_KEYS)
        .join(
            F.broadcast(labels),
            (F.col("entity") == F.col("l_entity"))
            & (F.col("window_start") < F.col("l_end"))
            & (F.col("window_end") > F.col("l_start")),
        )
        .select(*WINDOW_KEYS)
        .distinct()
        .withColumn("label", F.lit(1))
    )
    return windows.join(hits, list(WINDOW_KEYS), "left").withColumn("label", F.coalesce("label", F.lit(0)))


def label_windows_by_keys(
    spark: SparkSession, windows: DataFrame, keys: list[tuple[Any, ...]], normal_labels: Iterable[str]
) -> DataFrame:
    """``windows`` plus ``label``: its entity's (session key's) label; entities not listed get null."""
    from pyspark.sql import functions as F

    labels = spark.createDataFrame(keys, "entity string, raw_label string").groupBy("entity").agg(
        F.max(is_abnormal_label(F.col("raw_label"), normal_labels).cast("int")).alias("label")
    )
    return windows.join(F.broadcast(labels), "entity", "left")


def label_windows_by_events(windows: DataFrame, events: DataFrame, normal_labels: Iterable[str]) -> DataFrame:
    """``windows`` plus ``label``: 1 when an event of its entity inside the window has an abnormal label.

    Only abnormal events take part in the range join, so its size is the number of labelled
    anomalous events times the windows overlapping them, not the whole events table.
    """
    from pyspark.sql import functions as F

    bad = events.where(is_abnormal_label(F.col("label"), normal_labels)).select(
        F.col("entity").alias("e_entity"), F.col("ts").alias("e_ts")
    )
    hits = (
        windows.select(*WINDOW_KEYS)
        .join(
            bad,
            (F.col("entity") == F.col("e_entity"))
            & (F.col("e_ts") >= F.col("window_start"))
            & (F.col("e_ts") < F.col("window_end")),
        )
        .select(*WINDOW_KEYS)
        .distinct()
        .withColumn("label", F.lit(1))
    )
    return windows.join(hits, list(WINDOW_KEYS), "left").withColumn("label", F.coalesce("label", F.lit(0)))


def labelled_windows(
    spark: SparkSession,
    lake: Lake,
    model_version: str,
    labels: str | Path | None = None,
    normal_labels: Iterable[str] = DEFAULT_NORMAL_LABELS,
) -> LabelledWindows:
    """Label the windows ``model_version`` scored and collect (score, label) per window.

    Also used by :mod:`loganomaly.evaluation.report` for its PR and ROC curves.

    Raises:
        StageInputError: no ``scores`` (or ``events``) table, no window scored by this model, or no
            window left with a label.
    """
    from pyspark.sql import functions as F

    scores_version = lake.version("scores")
    if scores_version is None:
        raise StageInputError(f"no scores table under {lake.root}; run `loganomaly score` first")
    windows = (
        lake.read("scores", version=scores_version)
        .where(F.col("model_version") == F.lit(model_version))
        .select(*WINDOW_KEYS, "score", "threshold", "is_anomaly")
    )
    if labels is not None:
        kind, rows = read_label_file(labels)
        source = f"file:{Path(labels).resolve()}"
        if kind == "intervals":
            labelled = label_windows_by_intervals(spark, windows, rows)
        else:
            labelled = label_windows_by_keys(spark, windows, rows, normal_labels)
    else:
        if not lake.exists("events"):
            raise StageInputError(f"no labels file given and no events table under {lake.root}")
        source = EVENTS_SOURCE
        labelled = label_windows_by_events(windows, lake.read("events"), normal_labels)
    table = labelled.select(
        "score", "threshold", "is_anomaly", "label", "entity", F.to_date(F.col("window_start")).cast("string").alias("day")
    ).toArrow()
    if table.num_rows == 0:
        raise StageInputError(
            f"scores (version {scores_version}) holds no window of model {model_version}; "
            "run `loganomaly score` with this model first"
        )
    label = table.column("label").to_numpy(zero_copy_only=False)
    known = ~np.isnan(label.astype(np.float64))
    n_unlabelled = int((~known).sum())
    if n_unlabelled:
        log.warning("%d of %d windows have no label in %s and are left out", n_unlabelled, len(label), source)
    if not known.any():
        raise StageInputError(f"no scored window of model {model_version} has a label in {source}")
    thresholds = np.unique(table.column("threshold").to_numpy(zero_copy_only=False))
    if len(thresholds) > 1:
        # One model version has one threshold; two mean the bundle was edited and re-hashed wrongly.
        raise StageInputError(f"scores of model {model_version} carry {len(thresholds)} thresholds")
    entity_days = np.empty(int(known.sum()), dtype=object)
    entity_days[:] = list(zip(np.asarray(table.column("entity").to_pylist(), dtype=object)[known],
                              np.asarray(table.column("day").to_pylist(), dtype=object)[known], strict=True))
    return LabelledWindows(
        scores=table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)[known],
        labels=label[known].astype(np.int64),
        threshold=float(thresholds[0]),
        model_version=model_version,
        label_source=source,
        scores_version=int(scores_version),
        n_unlabelled=n_unlabelled,
        entity_days=entity_days,
        flags=table.column("is_anomaly").to_numpy(zero_copy_only=False).astype(bool)[known],
    )


# ---------------------------------------------------------------- the stage
def _metric(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def run(
    spark: SparkSession,
    cfg: Config,
    model_dir: str | Path,
    labels: str | None = None,
    lake: Lake | None = None,
    normal_labels: Iterable[str] = DEFAULT_NORMAL_LABELS,
) -> EvaluationSummary:
    """Evaluate the bundle in ``model_dir`` on its scores at the stored and the best-F1 threshold.

    Example:
        >>> s = run(spark, cfg, "model", labels="raw/labels.csv")  # doctest: +SKIP
        >>> s.results["stored"]["f1"], s.results["best_f1"]["threshold"]  # doctest: +SKIP
        >>> spark.sql("SELECT * FROM evaluations ORDER BY evaluated_at DESC")  # doctest: +SKIP

    Args:
        labels: a labels CSV (intervals or key,label); ``None`` uses the ``label`` column of events.
        normal_labels: label values (case-insensitive) that mean normal.

    Raises:
        StageInputError: see :func:`labelled_windows`.
        ModelError: no loadable bundle in ``model_dir``.
    """
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    bundle = load_bundle(model_dir)
    run_id = new_run_id("evaluate")
    data = labelled_windows(spark, lake, bundle.version, labels, normal_labels)
    bundle_threshold = bundle.threshold
    if not math.isclose(data.threshold, bundle_threshold, rel_tol=1e-9, abs_tol=1e-12):
        log.warning("scores carry threshold %.6g, bundle %.6g; evaluating the scores' threshold",
                    data.threshold, bundle_threshold)
    stored = evaluate_arrays(data.scores, data.labels, data.threshold, data.entity_days, data.flags)
    results = {"stored": stored}
    if math.isfinite(stored["best_f1_threshold"]):
        results["best_f1"] = evaluate_arrays(data.scores, data.labels, stored["best_f1_threshold"], data.entity_days)
    else:
        log.warning("evaluate %s: %s; only the stored threshold is evaluated", run_id, stored["note"])
    evaluated_at = dt.datetime.now(dt.timezone.utc)
    rows = [
        (
            run_id, evaluated_at, bundle.version, data.label_source, data.scores_version,
            int(r["n"]), int(r["n_positive"]), kind, float(r["threshold"]),
            float(r["precision"]), float(r["recall"]), float(r["f1"]), _metric(r["roc_auc"]), _metric(r["pr_auc"]),
            int(r["tp"]), int(r["fp"]), int(r["tn"]), int(r["fn"]),
        )
        for kind, r in results.items()
    ]
    version = lake.merge("evaluations", spark.createDataFrame(rows, EVALUATION_DDL), keys=EVALUATION_KEYS)
    summary = EvaluationSummary(
        run_id=run_id,
        model_version=bundle.version,
        label_source=data.label_source,
        scores_version=data.scores_version,
        n_windows=int(stored["n"]),
        n_positive=int(stored["n_positive"]),
        n_unlabelled=data.n_unlabelled,
        results={
            kind: {k: r[k] for k in ("threshold", "precision", "recall", "f1", "roc_auc", "pr_auc",
                                     "tp", "fp", "tn", "fn", "fpr", "flag_all_f1", "n_entity_days",
                                     "alerts_per_entity_day", "false_alerts_per_entity_day")}
            for kind, r in results.items()
        },
        note=stored["note"],
    )
    log.info(
        "evaluate %s: model %s on %d windows (%d positive) from %s: F1 %.3f at the stored threshold "
        "(flagging all: %.3f), FPR on benign windows %.3f, %.2f alerts per entity-day, ROC-AUC %.3f; "
        "evaluations version %d",
        run_id, bundle.version, summary.n_windows, summary.n_positive, data.label_source,
        stored["f1"], stored["flag_all_f1"], stored["fpr"], stored["alerts_per_entity_day"], stored["roc_auc"],
        version,
    )
    return summary
