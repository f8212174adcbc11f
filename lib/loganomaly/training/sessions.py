"""DeepLog as pipeline stages: ``sessions`` -> deeplog bundle (:func:`train_run`) -> ``scores``/``anomalies`` (:func:`score_run`).

``train`` and ``score`` dispatch here when ``model.kind=deeplog``.

Training. The ``sessions`` version is pinned first and its training period is collected on the
driver: DeepLog's vocabulary is fitted there, and a session is a short list of template ids, so even
millions of sessions fit. The encoded sessions then go to every rank of ``train.backend``
(:func:`loganomaly.training.backends.train_deeplog_backend`), each training on its shard of the events
on the shared loop (checkpoints in ``<model-dir>/checkpoints``, ``train.resume``,
``train.init_from``). The split is chronological on the
session start, with the rule of :func:`loganomaly.training.stage.chronological_split` (``train.train_until``
or ``train.train_fraction``; a session belongs to the training period when it *ends* before the
cut), and validation is the same evenly spread time blocks the autoencoder holds out
(:func:`loganomaly.training.readers.arrow.validation_block_mask`), so ``top_g`` is calibrated on the whole daily
cycle. DeepLog learns normal behaviour only: sessions with a non-null ``label`` are left out of
training and validation. The :class:`~loganomaly.models.sequence.Vocabulary` is fitted on the
training sessions alone, so a template first seen later is *unknown* and always unexpected.
``top_g`` is ``model.top_g`` when set, else the smallest g whose false-positive rate on the
validation normal sessions is at most ``model.target_fpr``.

Scoring. The bundle travels to executors as bytes in a broadcast and an iterator pandas UDF loads
it once per Python worker (as :mod:`loganomaly.scoring.stage`). Each session becomes one ``scores`` row:

* ``entity`` = ``session_key``, ``window_start``/``window_end`` = session ``start``/``end``;
* ``score`` = the number of unexpected events (events outside the top-g next-template candidates,
  or of a template unseen in training), ``threshold`` = 0.0, and ``is_anomaly`` = ``score >
  threshold``, which is exactly the DeepLog rule "any unexpected event". A count rather than the
  max NLL keeps ``score > threshold`` and ``is_anomaly`` the same statement, and an unseen
  template raises it by one per occurrence; the max NLL is in the explanation;
* ``explanation`` lists the unexpected events (0-based position in the session, template id, and
  either ``unknown template`` or its rank with the templates the model expected there);
* ``top_features`` = the unexpected template ids, distinct, in session order.

Writes replace exactly the scored dates (``replace_where``), so reruns replace rather than add.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from loganomaly.config import Config
from loganomaly.errors import ConfigError, StageInputError
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import (
    META,
    WEIGHTS,
    DeepLogBundle,
    load_deeplog_bundle,
    save_bundle,
    worker_model,
)
from loganomaly.models.sequence import (
    END_TOKEN,
    DeepLog,
    DeepLogConfig,
    SessionRows,
    SessionScore,
    Vocabulary,
    calibrate_nll_threshold,
    calibrate_top_g,
    score_sessions,
    with_end,
)
from loganomaly.runtime.device import pick_device
from loganomaly.runtime.runs import new_run_id
from loganomaly.scoring.stage import RESULT_DDL, ScoreSummary, write_scores
from loganomaly.training.backends import train_deeplog_backend
from loganomaly.training.readers.arrow import validation_block_mask
from loganomaly.training.stage import chronological_split, training_templates

if TYPE_CHECKING:
    import torch
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

__all__ = ["SessionTrainSummary", "explain_sessions", "score_run", "score_template_sessions", "train_run"]

#: Fewest normal sessions in the training and validation parts.
MIN_TRAIN_SESSIONS = 8
MIN_VALIDATION_SESSIONS = 2
#: Unexpected events named in one explanation; the rest are counted.
EXPLAIN_MAX_EVENTS = 10
#: Expected templates shown per unexpected event.
EXPLAIN_EXPECTED = 3
#: ``scores.threshold`` of DeepLog rows: ``score`` (unexpected events) above it is the DeepLog rule.
SCORE_THRESHOLD = 0.0
_BUNDLE_FILES = (META, WEIGHTS)

# Worker-local cache: model version -> (bundle, model, device). Lives as long as the Python worker.


@dataclass
class SessionTrainSummary:
    """What :func:`train_run` did (the DeepLog counterpart of :class:`loganomaly.training.stage.TrainSummary`)."""

    run_id: str
    model_dir: str
    model_version: str
    sessions_version: int
    train_sessions: int
    validation_sessions: int
    excluded_labelled: int
    vocabulary_size: int
    top_g: int
    validation_fpr: float
    nll_threshold: float
    best_val_loss: float
    epochs: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _load_sessions(lake: Lake, version: int) -> pd.DataFrame:
    """The sessions of one table version, ordered by start (driver memory: keys and template ids only)."""
    df = lake.read("sessions", version=version).select("session_key", "start", "end", "label", "template_ids")
    table = df.toArrow()
    if table.num_rows == 0:
        raise StageInputError("sessions is empty")
    frame = pd.DataFrame({
        "session_key": table.column("session_key").to_pylist(),
        "start": table.column("start").cast("int64").to_numpy() / 1e6,
        "end": table.column("end").cast("int64").to_numpy() / 1e6,
        "label": table.column("label").to_pylist(),
        "template_ids": [list(v or []) for v in table.column("template_ids").to_pylist()],
    })
    return frame.sort_values(["start", "session_key"], kind="stable").reset_index(drop=True)


def order_validation_mask(starts: np.ndarray, eligible: np.ndarray, fraction: float) -> np.ndarray:
    """Every ``round(1 / fraction)``-th eligible session in start order (ties by position) validates."""
    every = max(2, round(1 / fraction))
    idx = np.flatnonzero(eligible)
    ordered = idx[np.argsort(starts[idx], kind="stable")]
    mask = np.zeros(len(starts), dtype=bool)
    mask[ordered[every - 1 :: every]] = True
    return mask


def _fpr(scores: Sequence[SessionScore], g: int) -> float:
    flagged = [s.n_unknown > 0 or s.max_rank >= g for s in scores]
    return float(np.mean(flagged)) if flagged else 0.0


def train_run(spark: SparkSession, cfg: Config, model_dir: str | Path, lake: Lake | None = None) -> SessionTrainSummary:
    """Train DeepLog on the normal sessions of the training period and save a deeplog bundle.

    Example:
        >>> cfg.model.kind = "deeplog"  # doctest: +SKIP
        >>> train_run(spark, cfg, "model").top_g  # doctest: +SKIP
        2

    Raises:
        StageInputError: no (or an empty) ``sessions`` table, or too few normal sessions in the
            training or validation part.
        ModelError: training diverged.
    """
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    run_id = new_run_id("train")
    version = lake.version("sessions")
    if version is None:
        raise StageInputError(
            f"no sessions table under {lake.root}; run `loganomaly featurize` with features.session_key set"
        )
    sessions = _load_sessions(lake, version)
    starts, ends = sessions["start"].to_numpy(), sessions["end"].to_numpy()
    split = chronological_split(starts, ends, cfg)
    in_period = (ends <= split.train_until) & (starts >= split.train_from)
    normal = sessions["label"].isna().to_numpy()
    excluded = int((in_period & ~normal).sum())
    is_val = validation_block_mask(starts, split.train_from, split.train_until, cfg.train.validation_fraction)
    if int((in_period & normal & is_val).sum()) < MIN_VALIDATION_SESSIONS:
        # Sessions that all start in a burst (HDFS jobs allocate their blocks within minutes) fall
        # into one or two time blocks; spread validation over the sessions' start order instead.
        is_val = order_validation_mask(starts, in_period & normal, cfg.train.validation_fraction)
        log.info("train: sessions start too close together for time-block validation; every %d-th "
                 "session in start order validates instead", round(1 / cfg.train.validation_fraction))
    train_rows = sessions[in_period & normal & ~is_val]
    val_rows = sessions[in_period & normal & is_val]
    if len(train_rows) < MIN_TRAIN_SESSIONS or len(val_rows) < MIN_VALIDATION_SESSIONS:
        raise StageInputError(
            f"too few normal sessions to train DeepLog: {len(train_rows)} training, {len(val_rows)} validation "
            f"(need >= {MIN_TRAIN_SESSIONS} and >= {MIN_VALIDATION_SESSIONS}); widen the data or change "
            "train.train_until"
        )
    log.info(
        "train %s: %d training and %d validation normal sessions from sessions version %d (split %s; "
        "%d labelled sessions of the period left out)",
        run_id, len(train_rows), len(val_rows), version, split.as_dict(), excluded,
    )
    train_sessions, val_sessions = list(train_rows["template_ids"]), list(val_rows["template_ids"])
    if cfg.model.session_end:
        train_sessions, val_sessions = with_end(train_sessions), with_end(val_sessions)
    base = load_deeplog_bundle(cfg.train.init_from) if cfg.train.init_from else None
    # Continuing a model keeps its vocabulary: its output layer is indexed by it. Templates first
    # seen in the new data stay unknown (always unexpected) until a model is trained afresh.
    vocab = base.vocabulary if base is not None else \
        Vocabulary.fit(train_sessions, min_support=cfg.model.min_template_support)
    train_ids = vocab.encode_many(train_sessions)
    val_ids = vocab.encode_many(val_sessions)
    model_cfg = DeepLogConfig(
        vocab_size=vocab.size,
        window=cfg.model.history,
        embedding_dim=cfg.model.embedding_dim,
        hidden_size=cfg.model.hidden_size,
        num_layers=cfg.model.num_layers,
        # Placeholder until calibrated below; top_g plays no part in training.
        top_g=cfg.model.top_g if cfg.model.top_g > 0 else 1,
        dropout=cfg.model.dropout,
    )
    if base is not None and dataclasses.replace(base.model_cfg, top_g=model_cfg.top_g) != model_cfg:
        raise ConfigError(f"train.init_from={cfg.train.init_from} holds DeepLog {base.model_cfg.to_dict()}; "
                          f"this run's model config is {model_cfg.to_dict()}")
    result = train_deeplog_backend(
        spark, cfg.train.backend,
        SessionRows.build(train_ids, model_cfg.window, model_cfg.vocab_size, "training"),
        SessionRows.build(val_ids, model_cfg.window, model_cfg.vocab_size, "validation"),
        model_cfg, cfg.train, checkpoint_dir=Path(model_dir) / "checkpoints", resume=cfg.train.resume,
        init_state=None if base is None else base.state_dict,
    )
    model = DeepLog(model_cfg)
    model.load_state_dict(result.state_dict)
    model.to(pick_device(cfg.train.device)).eval()
    val_scores = score_sessions(model, val_ids, top_g=1)
    if cfg.model.top_g > 0:
        top_g = cfg.model.top_g
    else:
        top_g = calibrate_top_g(val_scores, cfg.model.target_fpr, max_g=model_cfg.n_templates)
    model_cfg = dataclasses.replace(model_cfg, top_g=top_g)
    nll_threshold = calibrate_nll_threshold(val_scores, cfg.train.threshold_quantile)
    val_fpr = _fpr(val_scores, top_g)
    templates = training_templates(cfg, lake)
    nll = np.array([s.max_nll for s in val_scores])
    bundle = DeepLogBundle(
        model_cfg=model_cfg,
        state_dict=result.state_dict,
        vocabulary=vocab,
        nll_threshold=nll_threshold,
        metrics={
            "best_val_loss": result.best_val_loss,
            "best_epoch": result.best_epoch,
            "validation_fpr": val_fpr,
            "target_fpr": cfg.model.target_fpr,
            "top_g_calibrated": cfg.model.top_g <= 0,
            "val_unknown_sessions": int(sum(s.n_unknown > 0 for s in val_scores)),
            "val_max_nll_quantiles": {str(q): float(np.quantile(nll, q)) for q in (0.5, 0.9, 0.99)},
        },
        training={
            "run_id": run_id,
            "sessions_version": version,
            "split": split.as_dict(),
            "train_sessions": len(train_rows),
            "validation_sessions": len(val_rows),
            "excluded_labelled_sessions": excluded,
            "templates_version": None if templates is None else _templates_version(templates),
            "history": result.history,
            "backend": cfg.train.backend,
            "init_from": cfg.train.init_from or None,
            "config": {"train": cfg.to_dict()["train"], "model": cfg.to_dict()["model"],
                       "session_key": cfg.features.session_key},
        },
        templates=templates,
    )
    save_bundle(model_dir, bundle)
    summary = SessionTrainSummary(
        run_id=run_id,
        model_dir=str(model_dir),
        model_version=bundle.version,
        sessions_version=version,
        train_sessions=len(train_rows),
        validation_sessions=len(val_rows),
        excluded_labelled=excluded,
        vocabulary_size=vocab.size,
        top_g=top_g,
        validation_fpr=val_fpr,
        nll_threshold=float(nll_threshold),
        best_val_loss=float(result.best_val_loss),
        epochs=len(result.history),
    )
    log.info("train %s: deeplog %s (top_g %d, validation FPR %.4f) saved to %s",
             run_id, bundle.version, top_g, val_fpr, model_dir)
    return summary


def _templates_version(state: dict[str, Any]) -> str:
    from loganomaly.ingest.templates.miner import Templates

    return Templates.from_dict(state).version


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def explain_sessions(
    bundle: DeepLogBundle, sessions: Sequence[Sequence[str]], scores: Sequence[SessionScore]
) -> pd.DataFrame:
    """``score``, ``top_features`` and ``explanation`` of scored sessions (Spark-free).

    Template ids are taken from the session itself, not decoded from model ids, so an unknown
    template is named as it appears in the data (``T0 (unknown template)``).
    """
    out_scores, tops, texts = [], [], []
    for session, s in zip(sessions, scores, strict=True):
        out_scores.append(float(s.n_misses))
        seen: dict[str, None] = {}
        parts: list[str] = []
        for ev in s.unexpected:
            template = str(session[ev.position])
            seen.setdefault(template, None)
            if len(parts) >= EXPLAIN_MAX_EVENTS:
                continue
            if ev.rank is None:
                parts.append(f"pos {ev.position}: {template} (unknown template)")
            else:
                expected = ", ".join(bundle.vocabulary.decode(ev.expected[:EXPLAIN_EXPECTED]))
                parts.append(f"pos {ev.position}: {template} (rank {ev.rank + 1} > top_g {bundle.top_g}; "
                             f"expected {expected})")
        tops.append(list(seen))
        if not s.unexpected:
            texts.append("")
            continue
        more = s.n_misses - len(parts)
        head = (f"{s.n_misses} of {s.n_events} events unexpected"
                + (f" ({s.n_unknown} with unknown templates)" if s.n_unknown else "")
                + f", max NLL {s.max_nll:.2f}: ")
        texts.append(head + "; ".join(parts) + (f"; and {more} more" if more > 0 else ""))
    return pd.DataFrame({"score": np.asarray(out_scores, dtype=np.float64), "top_features": tops,
                         "explanation": texts})


def score_template_sessions(
    bundle: DeepLogBundle, model: DeepLog, device: torch.device, sessions: Sequence[Sequence[str]]
) -> pd.DataFrame:
    """Score sessions of template id strings with DeepLog: the UDF body, Spark-free.

    A model trained with session ends (its vocabulary holds :data:`END_TOKEN`) scores them too.
    """
    if END_TOKEN in bundle.vocabulary.templates:
        sessions = with_end(sessions)
    encoded = [bundle.vocabulary.encode(s) for s in sessions]
    scores = score_sessions(model, encoded, top_g=bundle.top_g, device=device)
    return explain_sessions(bundle, sessions, scores)


def _load_cached(version: str, files: dict[str, bytes]) -> tuple[Any, Any, Any]:
    return worker_model(version, files, load_deeplog_bundle)


def session_udf(version: str, broadcast: Any) -> Any:
    """The iterator pandas UDF ``template_ids -> struct<score, top_features, explanation>``."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(RESULT_DDL)  # type: ignore[call-overload]
    def score_batches(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        bundle, model, device = _load_cached(version, broadcast.value)
        for template_ids in batches:
            sessions = [[str(t) for t in (ids if ids is not None else [])] for ids in template_ids]
            yield score_template_sessions(bundle, model, device, sessions)

    return score_batches


def score_run(
    spark: SparkSession,
    cfg: Config,
    model_dir: str | Path,
    date: str | None = None,
    lake: Lake | None = None,
) -> ScoreSummary:
    """Score the sessions of one date (``date``) or of every date, replacing those dates' results.

    Example:
        >>> score_run(spark, cfg, "model", date="2024-03-06")  # doctest: +SKIP
        ScoreSummary(run_id='score-...', model_version='...', dates=['2024-03-06'], windows=412, anomalies=7)

    ``ScoreSummary.windows`` counts sessions here.

    Raises:
        StageInputError: no ``sessions`` table, or no sessions on the dates asked for.
        ModelError: ``model_dir`` holds no valid deeplog bundle.
    """
    from pyspark.sql import functions as F

    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    if not lake.exists("sessions"):
        raise StageInputError(
            f"no sessions table under {lake.root}; run `loganomaly featurize` with features.session_key set"
        )
    bundle = load_deeplog_bundle(model_dir)
    _warn_on_template_drift(bundle, lake)
    run_id = new_run_id("score")
    sessions: DataFrame = lake.read("sessions")
    if date:
        day = dt.date.fromisoformat(date)
        sessions = sessions.where(F.col("date") == F.lit(day))
        dates = [day.isoformat()]
    else:
        dates = sorted(r.date.isoformat() for r in sessions.select("date").distinct().collect())
    if not dates:
        raise StageInputError("sessions has no rows to score")

    files = {name: Path(model_dir, name).read_bytes() for name in _BUNDLE_FILES}
    broadcast = spark.sparkContext.broadcast(files)
    udf = session_udf(bundle.version, broadcast)
    scored = sessions.withColumn("_r", udf(F.col("template_ids"))).select(
        F.col("session_key").alias("entity"),
        F.col("start").alias("window_start"),
        F.col("end").alias("window_end"),
        "date",
        F.col("_r.score").alias("score"),
        F.lit(SCORE_THRESHOLD).alias("threshold"),
        (F.col("_r.score") > F.lit(SCORE_THRESHOLD)).alias("is_anomaly"),
        F.col("_r.explanation").alias("explanation"),
        F.col("_r.top_features").alias("top_features"),
        F.lit(bundle.version).alias("model_version"),
        F.lit(run_id).alias("run_id"),
    )
    n_sessions, n_anomalous = write_scores(lake, scored, dates, run_id)
    broadcast.unpersist()
    summary = ScoreSummary(run_id, bundle.version, dates, n_sessions, n_anomalous)
    log.info("score %s: %d sessions over %d dates, %d anomalous (deeplog %s, top_g %d)",
             run_id, summary.windows, len(dates), summary.anomalies, bundle.version, bundle.top_g)
    return summary


def _warn_on_template_drift(bundle: DeepLogBundle, lake: Lake) -> None:
    """Template ids mean something else after a refit: say so, since every event would look unknown."""
    trained = bundle.training.get("templates_version")
    if not trained:
        return
    from loganomaly.ingest.templates.store import current_version

    current = current_version(lake)
    if current is not None and current != trained:
        log.warning("deeplog %s was trained with template state %s but the lake's current state is %s; "
                    "template ids may differ (many unknown templates): retrain", bundle.version, trained, current)
