"""``score``: windows in ``sequences`` -> ``scores`` (every window) and ``anomalies`` (flagged ones).

The model is shipped to executors as bytes in a broadcast (no shared file system needed) and an
iterator pandas UDF loads it once per Python worker: the first batch of a task materialises the
bundle into a worker-local cache keyed by the model version, later batches and later tasks on the
same (reused) worker use it directly. Writes replace exactly the scored dates (``replace_where``),
so a rerun for the same dates gives the same rows, never duplicates, and a failed run leaves the
previous rows in place.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from loganomaly.config import Config
from loganomaly.errors import ModelError, StageInputError
from loganomaly.features.windows import signed_expm1, to_tensor
from loganomaly.lake.schemas import TABLES
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import ModelBundle, load_bundle, worker_model
from loganomaly.runtime.runs import new_run_id, resolve_date

if TYPE_CHECKING:
    import torch
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

BUNDLE_FILES = ("model.json", "model.safetensors")
TYPICAL_ERROR_FLOOR = 0.05
RESULT_DDL = "score double, top_features array<string>, explanation string"
#: Flagged windows explained per batch of occlusion passes (memory: this x F x T x F floats).
OCCLUSION_CHUNK = 128



def _load_cached(version: str, files: dict[str, bytes]) -> tuple[Any, Any, Any]:
    return worker_model(version, files, load_bundle)


def explain(
    x: np.ndarray,
    per_step_error: np.ndarray,
    typical: np.ndarray,
    mean: np.ndarray,
    names: list[str],
    top_k: int,
    log1p: bool = True,
) -> tuple[list[list[str]], list[str]]:
    """Name the features whose error most exceeds their typical (validation) error, in user units.

    Ranking is by ``error / typical error``; the text shows what a person can check against the
    raw lines: the feature's value at the step where it was worst next to its training mean, both
    undone from log1p (``failed_connections=240 at 08:35 step (normal ~0.2)``).

    Args:
        x: raw windows ``[N, T, F]`` (as stored in ``sequences``).
        per_step_error: squared reconstruction error ``[N, T, F]``.
        typical: per-feature mean error on validation windows ``[F]``.
        mean: per-feature training mean (raw units of ``x``) ``[F]``.
        names: feature names.
        top_k: features named per window.
        log1p: whether features are stored as log1p (then values are shown as expm1).
    """
    per_feature = per_step_error.mean(axis=1)
    # Floor: a feature that never varied in training (errors on a quiet day) has ~0 typical
    # error; the ratio would be astronomic and say nothing more than "unusual".
    ratio = per_feature / np.maximum(typical, TYPICAL_ERROR_FLOOR)
    order = np.argsort(-ratio, axis=1)[:, :top_k]
    worst_step = per_step_error.argmax(axis=1)  # [N, F]
    undo = signed_expm1 if log1p else (lambda v: v)
    tops, texts = [], []
    for i, idx in enumerate(order):
        tops.append([names[f] for f in idx])
        parts = []
        for f in idx:
            observed = float(undo(x[i, worst_step[i, f], f]))
            normal = float(undo(mean[f]))
            parts.append(f"{names[f]}={observed:.3g} at step {int(worst_step[i, f]) + 1} (normal ~{normal:.3g})")
        texts.append("; ".join(parts))
    return tops, texts


def explain_classifier(
    model: torch.nn.Module,
    device: torch.device,
    x: np.ndarray,
    normalised: np.ndarray,
    probability: np.ndarray,
    mean: np.ndarray,
    names: list[str],
    top_k: int,
    log1p: bool = True,
) -> tuple[list[list[str]], list[str]]:
    """Name the features without which the classifier would find a window least anomalous.

    Occlusion: each feature in turn is set to its training mean at every step (0 once normalised)
    and the window is classified again; the features whose removal lowers the probability of the
    anomalous class most explain it. It costs one forward pass per feature and window, so callers
    pass only the windows they flag.

    Args:
        x: raw windows ``[N, T, F]``; normalised: the same, normalised.
        probability: the anomalous-class probability of each window ``[N]``.
        mean: per-feature training mean (raw units of ``x``) ``[F]``.
    """
    from loganomaly.models.sequence import LSTMClassifier, classifier_probabilities

    assert isinstance(model, LSTMClassifier)
    n, steps, n_feat = normalised.shape
    if n == 0:
        return [], []
    drop = np.empty((n, n_feat), dtype=np.float64)
    idx = np.arange(n_feat)
    # A bounded number of windows at a time: the occluded copies are F times the windows.
    for lo in range(0, n, OCCLUSION_CHUNK):
        part = normalised[lo : lo + OCCLUSION_CHUNK]
        occluded = np.repeat(part[:, None], n_feat, axis=1)  # [n, F(occluded), T, F]
        occluded[:, idx, :, idx] = 0.0
        flat = occluded.reshape(len(part) * n_feat, steps, n_feat)
        without = classifier_probabilities(model, flat, device=device)[:, 1].reshape(len(part), n_feat)
        drop[lo : lo + len(part)] = probability[lo : lo + len(part), None] - without
    order = np.argsort(-drop, axis=1)[:, :top_k]
    worst_step = np.abs(normalised).argmax(axis=1)  # [N, F]
    undo = signed_expm1 if log1p else (lambda v: v)
    tops, texts = [], []
    for i, chosen in enumerate(order):
        tops.append([names[f] for f in chosen])
        parts = []
        for f in chosen:
            step = int(worst_step[i, f])
            parts.append(f"{names[f]}={float(undo(x[i, step, f])):.3g} at step {step + 1} "
                         f"(normal ~{float(undo(mean[f])):.3g}; P(anomalous) {probability[i]:.2f} -> "
                         f"{probability[i] - drop[i, f]:.2f} without it)")
        texts.append("; ".join(parts))
    return tops, texts


def score_arrays(
    bundle: ModelBundle, model: torch.nn.Module, device: torch.device, x: np.ndarray, top_k: int
) -> pd.DataFrame:
    """Scores and explanations of raw windows ``x[N,T,F]`` (Spark-free; the UDF body).

    The autoencoder's score is the mean squared reconstruction error, every window explained by
    its worst-reconstructed features. The classifier's score is the probability of the anomalous
    class; only windows above the threshold are explained (:func:`explain_classifier`).
    """
    from loganomaly.models.autoencoder import window_step_errors
    from loganomaly.models.sequence import ClassifierConfig, LSTMClassifier, classifier_probabilities

    normalised = bundle.normaliser.transform(x)
    mean = np.asarray(bundle.normaliser.mean, dtype=np.float64)
    log1p = bundle.features.get("transform", "log1p") == "log1p"
    if isinstance(bundle.model_cfg, ClassifierConfig):
        assert isinstance(model, LSTMClassifier)
        probability = classifier_probabilities(model, normalised, device=device)[:, 1]
        flagged = np.flatnonzero(probability > bundle.threshold)
        tops: list[list[str]] = [[] for _ in range(len(x))]
        texts = [""] * len(x)
        for i, top, text in zip(flagged, *explain_classifier(
                model, device, x[flagged], normalised[flagged], probability[flagged], mean,
                bundle.feature_names, top_k, log1p), strict=True):
            tops[i], texts[i] = top, text
        return pd.DataFrame({"score": probability, "top_features": tops, "explanation": texts})
    per_step = window_step_errors(model, normalised, device=device)
    scores = per_step.mean(axis=(1, 2))
    typical = np.asarray(bundle.metrics.get("val_feature_error") or np.ones(x.shape[2]), dtype=np.float64)
    tops, texts = explain(x, per_step, typical, mean, bundle.feature_names, top_k, log1p)
    return pd.DataFrame({"score": scores.astype(np.float64), "top_features": tops, "explanation": texts})


def score_udf(version: str, broadcast: Any, n_steps: int, n_features: int, top_k: int) -> Any:
    """The iterator pandas UDF ``features -> struct<score, top_features, explanation>``."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(RESULT_DDL)  # type: ignore[call-overload]
    def score_windows(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        bundle, model, device = _load_cached(version, broadcast.value)
        for features in batches:
            x = to_tensor(list(features), n_steps, n_features)
            yield score_arrays(bundle, model, device, x, top_k)

    return score_windows


@dataclass
class ScoreSummary:
    run_id: str
    model_version: str
    dates: list[str]
    windows: int
    anomalies: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def last_scored_date(lake: Lake, model_version: str) -> str | None:
    """The latest date in ``scores`` scored by this model version, or None."""
    if not lake.exists("scores"):
        return None
    from pyspark.sql import functions as F

    row = lake.read("scores").where(F.col("model_version") == model_version).agg(F.max("date")).collect()[0]
    return None if row[0] is None else row[0].isoformat()


def write_scores(lake: Lake, scored: DataFrame, dates: list[str], run_id: str) -> tuple[int, int]:
    """Replace ``dates`` in ``scores``, then in ``anomalies`` from the written version; (rows, flagged).

    ``anomalies`` is derived from the committed ``scores`` version, so the two never disagree, and
    both writes replace exactly the scored dates: a rerun gives the same rows, never duplicates.
    """
    from pyspark.sql import functions as F

    partition_by = TABLES["scores"].partition_by
    version = lake.write(
        "scores", scored, mode="overwrite", partition_by=partition_by, replace_where={"date": dates}, run_id=run_id
    )
    written = lake.read("scores", version=version).where(
        F.col("date").isin([dt.date.fromisoformat(d) for d in dates])
    )
    lake.write(
        "anomalies",
        written.where(F.col("is_anomaly")),
        mode="overwrite",
        partition_by=partition_by,
        replace_where={"date": dates},
        run_id=run_id,
    )
    counts = written.agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.col("is_anomaly").cast("long")).alias("a")
    ).collect()[0]
    return int(counts["n"]), int(counts["a"] or 0)


def run(
    spark: SparkSession,
    cfg: Config,
    model_dir: str | Path,
    date: str | None = None,
    lake: Lake | None = None,
    since_last_run: bool = False,
) -> ScoreSummary:
    """Score the windows of one date, of the dates new since the last run, or of every date.

    ``date`` is ``YYYY-MM-DD``, ``today`` or ``yesterday`` (UTC; what a scheduler that cannot
    compute dates passes). ``since_last_run`` scores the dates of ``sequences`` from the last date
    this model already scored onwards: that date again (it may have been partial when it was
    scored) and every later one, so a nightly run picks up whatever arrived. Each scored date's
    earlier rows are replaced.

    With ``model.kind=deeplog`` the sessions are scored instead
    (:func:`loganomaly.training.sessions.score_run`; ``windows`` then counts sessions).
    """
    date = resolve_date(date)
    if cfg.model.kind == "deeplog":
        from loganomaly.training import sessions as session_model

        if since_last_run:
            log.warning("score: --since-last-run is not supported for deeplog yet; scoring every date")
        return session_model.score_run(spark, cfg, model_dir, date=date, lake=lake)
    from pyspark.sql import functions as F

    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    if not lake.exists("sequences"):
        raise StageInputError(f"no sequences table under {lake.root}; run `loganomaly featurize` first")
    bundle = load_bundle(model_dir)
    n_steps, n_features = bundle.window_steps, bundle.model_cfg.n_features
    run_id = new_run_id("score")

    windows: DataFrame = lake.read("sequences")
    if date:
        day = dt.date.fromisoformat(date)
        windows = windows.where(F.col("date") == F.lit(day))
        dates = [day.isoformat()]
    else:
        dates = sorted(r.date.isoformat() for r in windows.select("date").distinct().collect())
        if since_last_run:
            last = last_scored_date(lake, bundle.version)
            if last is not None:
                dates = [d for d in dates if d >= last]
                windows = windows.where(F.col("date").isin([dt.date.fromisoformat(d) for d in dates]))
            log.info("score: last date scored by model %s: %s; scoring %s", bundle.version, last, dates)
            if not dates:
                return ScoreSummary(run_id, bundle.version, [], 0, 0)
    if not dates:
        raise StageInputError("sequences has no windows to score")
    mismatched = (
        windows.where((F.col("n_steps") != n_steps) | (F.col("n_features") != n_features)).limit(1).count()
    )
    if mismatched:
        raise ModelError(
            f"sequences windows do not match the model ({n_steps} steps x {n_features} features); re-run featurize or train"
        )
    # Same shape is not enough: the frequent-template columns must be the model's, in its order.
    if "feature_names" not in windows.columns:
        raise ModelError("sequences has no feature_names column (written before feature names were stored); "
                         "re-run featurize")
    expected = F.array(*[F.lit(n) for n in bundle.feature_names]).cast("array<string>")
    other = windows.where(~F.col("feature_names").eqNullSafe(expected)).select("feature_names").limit(1).collect()
    if other:
        got = list(other[0]["feature_names"] or [])
        diff = [f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(got, bundle.feature_names, strict=False))
                if a != b][:5]
        raise ModelError(
            f"sequences feature names differ from model {bundle.version}'s ({diff or 'missing names'}); "
            "featurize chose other templates (refit_templates?): retrain, or featurize without refitting"
        )

    files = {name: Path(model_dir, name).read_bytes() for name in BUNDLE_FILES}
    broadcast = spark.sparkContext.broadcast(files)
    udf = score_udf(bundle.version, broadcast, n_steps, n_features, cfg.score.explain_top_k)
    scored = windows.withColumn("_r", udf(F.col("features"))).select(
        "entity",
        "window_start",
        "window_end",
        "date",
        F.col("_r.score").alias("score"),
        F.lit(float(bundle.threshold)).alias("threshold"),
        (F.col("_r.score") > F.lit(float(bundle.threshold))).alias("is_anomaly"),
        F.col("_r.explanation").alias("explanation"),
        F.col("_r.top_features").alias("top_features"),
        F.lit(bundle.version).alias("model_version"),
        F.lit(run_id).alias("run_id"),
    )
    n_windows, n_anomalies = write_scores(lake, scored, dates, run_id)
    broadcast.unpersist()
    summary = ScoreSummary(run_id, bundle.version, dates, n_windows, n_anomalies)
    log.info(
        "score %s: %d windows over %d dates, %d anomalies (model %s)",
        run_id,
        summary.windows,
        len(dates),
        summary.anomalies,
        bundle.version,
    )
    return summary
