"""``train``: ``sequences`` -> chronological split -> LSTM autoencoder -> model bundle.

The split is by time, never random: windows before the cut are the training period (its
chronological tail held out as validation for early stopping and the threshold), later windows
are what scoring judges. Normalisation statistics are fitted on the training windows only. The
bundle records the ``sequences`` version it was trained on, so a model can always be traced to
its data, and the feature names stored with those windows (``sequences.feature_names``, chosen
by featurize), so scoring can refuse windows whose columns mean something else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loganomaly.bundle import META, WEIGHTS, ModelBundle, load_bundle, save_bundle
from loganomaly.config import Config
from loganomaly.distributed import train_backend
from loganomaly.errors import ConfigError, StageInputError
from loganomaly.ingest import new_run_id
from loganomaly.loop import mlflow_params, mlflow_run
from loganomaly.model import LSTMAutoencoder, LSTMAutoencoderConfig, pick_device, window_errors
from loganomaly.reader import (
    VALIDATION_BLOCKS,
    Selection,
    ShardReader,
    Snapshot,
    plan_shards,
    time_range,
    validation_block_mask,
    window_shape,
)
from loganomaly.sequence_models import ClassifierConfig, LSTMClassifier, classifier_probabilities
from loganomaly.tables import Lake
from loganomaly.template_store import load_state
from loganomaly.training import calibrate_probability_threshold, calibrate_threshold, window_labels
from loganomaly.windows import FEATURE_NAMES, stored_feature_names

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from loganomaly.session_model import SessionTrainSummary

log = logging.getLogger(__name__)

MIN_TRAIN_WINDOWS = 8

__all__ = ["VALIDATION_BLOCKS", "Split", "TrainSummary", "chronological_split", "feature_names_of", "load_windows",
           "run", "snapshot_split", "training_templates"]


@dataclass
class Split:
    """Chronological split of window times (epoch seconds)."""

    train_from: float
    train_until: float  # windows ending at or before this are the training period

    def as_dict(self) -> dict[str, str]:
        def iso(t: float) -> str:
            return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()

        return {"train_from": iso(self.train_from), "train_until": iso(self.train_until)}

    def validation_mask(self, starts: np.ndarray, fraction: float) -> np.ndarray:
        """Windows of the training period that start in a validation block (rule in :mod:`loganomaly.reader`)."""
        return validation_block_mask(starts, self.train_from, self.train_until, fraction)


def chronological_split(starts: np.ndarray, ends: np.ndarray, cfg: Config) -> Split:
    """Where the training period ends: ``train.train_until`` or a fraction of the time range."""
    if cfg.train.train_until:
        until = dt.datetime.fromisoformat(cfg.train.train_until)
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.timezone.utc)
        cut = until.timestamp()
    else:
        lo, hi = float(starts.min()), float(ends.max())
        cut = lo + (hi - lo) * cfg.train.train_fraction
    in_train = starts[ends <= cut]
    if len(in_train) == 0:
        raise StageInputError(
            f"no windows end before the training cut {dt.datetime.fromtimestamp(cut, dt.timezone.utc)}"
        )
    return Split(float(in_train.min()), cut)


def feature_names_of(stored: list[str] | None, n_features: int) -> list[str]:
    """The feature names of a ``sequences`` snapshot: its ``feature_names``, else the fixed list.

    Tables written without the column (:func:`loganomaly.reader.write_windows`, benchmarks) are
    taken to hold :data:`loganomaly.windows.FEATURE_NAMES` when the count matches.
    """
    if stored is not None:
        return [str(n) for n in stored]
    if n_features != len(FEATURE_NAMES):
        raise StageInputError(
            f"sequences has {n_features} features and no feature_names column; re-run featurize"
        )
    return list(FEATURE_NAMES)


def load_windows(lake: Lake, version: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """All windows of a ``sequences`` snapshot as arrays (start, end, x[N,T,F]) plus its version.

    For notebooks and small tables only: it collects the whole snapshot on the driver. Training
    streams shards with :mod:`loganomaly.reader` instead.
    """
    version = version if version is not None else lake.version("sequences")
    if version is None:
        raise StageInputError(f"no sequences table under {lake.root}; run `loganomaly featurize` first")
    df = lake.read("sequences", version=version)
    has_names = "feature_names" in df.columns
    df = df.select(
        "window_start", "window_end", "n_steps", "n_features", "features",
        *(["feature_names"] if has_names else []),
    )
    table = df.toArrow()
    if table.num_rows == 0:
        raise StageInputError("sequences is empty")
    n_steps = int(table.column("n_steps")[0].as_py())
    n_features = int(table.column("n_features")[0].as_py())
    if has_names:
        if len({tuple(v or ()) for v in table.column("feature_names").to_pylist()}) > 1:
            raise StageInputError("sequences mixes windows of different feature names; re-run featurize")
    names = feature_names_of(table.column("feature_names")[0].as_py() if has_names else None, n_features)
    if len(names) != n_features:
        raise StageInputError(f"sequences has {n_features} features but {len(names)} feature names")
    starts = table.column("window_start").cast("int64").to_numpy() / 1e6
    ends = table.column("window_end").cast("int64").to_numpy() / 1e6
    flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    x = flat.astype(np.float32).reshape(-1, n_steps, n_features)
    order = np.argsort(starts, kind="stable")
    return starts[order], ends[order], x[order], version


@dataclass
class TrainSummary:
    run_id: str
    model_dir: str
    model_version: str
    sequences_version: int
    train_windows: int
    validation_windows: int
    threshold: float
    best_val_loss: float
    epochs: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def snapshot_split(snapshot: Snapshot, cfg: Config) -> Split:
    """:func:`chronological_split` computed by streaming the snapshot's time columns, never collecting them."""
    if cfg.train.train_until:
        until = dt.datetime.fromisoformat(cfg.train.train_until)
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.timezone.utc)
        cut = until.timestamp()
    else:
        whole = time_range(snapshot)
        if whole is None:
            raise StageInputError("sequences is empty")
        lo, hi = whole
        cut = lo + (hi - lo) * cfg.train.train_fraction
    period = time_range(snapshot, until=cut)
    if period is None:
        raise StageInputError(
            f"no windows end before the training cut {dt.datetime.fromtimestamp(cut, dt.timezone.utc)}"
        )
    return Split(period[0], cut)


def training_templates(cfg: Config, lake: Lake) -> dict[str, Any] | None:
    """The template-miner state the training data were mined with, for the bundle; None when disabled.

    The current state of the lake is the one featurize used (a refit makes a new current state,
    and its template ids differ), so a bundle that carries it can always be matched to its inputs.
    """
    if not cfg.templates.enabled:
        return None
    state = load_state(lake)
    if state is None:
        log.info("no template-miner state in %s; the bundle carries none", lake.root)
        return None
    return state.to_dict()


def run(
    spark: SparkSession, cfg: Config, model_dir: str | Path, lake: Lake | None = None
) -> TrainSummary | SessionTrainSummary:
    """Train on the training period of ``sequences`` and save the bundle under ``model_dir``.

    With ``model.kind=deeplog`` the DeepLog model is trained on ``sessions`` instead
    (:func:`loganomaly.session_model.train_run`, which returns its own summary).

    With ``train.mlflow`` on, the training is an MLflow run (:func:`loganomaly.loop.mlflow_run`):
    the model and train settings as params, every epoch's losses from rank 0 (step = epoch), then
    the saved bundle's files as artifacts under ``bundle/`` and the summary's numbers as metrics.
    """
    params = mlflow_params({"model": cfg.to_dict()["model"], "train": cfg.to_dict()["train"]})
    with mlflow_run(cfg.train, params) as tracking:
        if tracking is not None:
            cfg = dataclasses.replace(cfg, train=tracking.train_config(cfg.train))
        summary: TrainSummary | SessionTrainSummary
        if cfg.model.kind == "deeplog":
            from loganomaly import session_model

            summary = session_model.train_run(spark, cfg, model_dir, lake=lake)
        else:
            summary = _train_window_model(spark, cfg, model_dir, lake)
        if tracking is not None:
            metrics, tags = _tracked_outcome(summary)
            tracking.log_outcome([Path(model_dir) / WEIGHTS, Path(model_dir) / META], metrics, tags,
                                 name=summary.run_id)
    return summary


def _tracked_outcome(summary: TrainSummary | SessionTrainSummary) -> tuple[dict[str, float], dict[str, str]]:
    """A summary's numbers as MLflow metrics; its names, paths and versions as ``loganomaly.*`` tags."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for key, value in summary.as_dict().items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not key.endswith("_version"):
            metrics[key] = float(value)
        else:
            tags[f"loganomaly.{key}"] = str(value)
    return metrics, tags


def _train_window_model(spark: SparkSession, cfg: Config, model_dir: str | Path, lake: Lake | None) -> TrainSummary:
    """The autoencoder or the classifier on the training period of ``sequences``.

    The ``sequences`` version is pinned first; every rank of every backend (``train.backend``)
    streams its shard of that version, so a featurize run that appends meanwhile changes nothing.
    The driver only scans the two time columns (split and shard plan) and, after training, reads
    the validation windows to calibrate the threshold.
    """
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    run_id = new_run_id("train")
    version = lake.version("sequences")
    if version is None:
        raise StageInputError(f"no sequences table under {lake.root}; run `loganomaly featurize` first")
    snapshot = Snapshot(lake.path("sequences"), version)
    shape = window_shape(snapshot)
    if shape is None:
        raise StageInputError("sequences is empty")
    # featurize writes one name list per table version (one commit), so the first row speaks for all.
    feature_names = feature_names_of(stored_feature_names(snapshot.path, version), shape[1])
    if len(feature_names) != shape[1]:
        raise StageInputError(f"sequences has {shape[1]} features but {len(feature_names)} feature names")
    split = snapshot_split(snapshot, cfg)
    fraction = cfg.train.validation_fraction
    train_plan, val_plan = plan_shards(
        snapshot,
        [Selection(split.train_from, split.train_until, fraction, "train", cfg.train.normal_only),
         Selection(split.train_from, split.train_until, fraction, "validation", cfg.train.normal_only)],
        seed=cfg.train.seed,
    )
    n_train, n_val = train_plan.total, val_plan.total
    if n_train < MIN_TRAIN_WINDOWS or n_val < 2:
        raise StageInputError(
            f"too few windows to train: {n_train} training, {n_val} validation "
            f"(need >= {MIN_TRAIN_WINDOWS} and >= 2); widen the data or change train.train_until"
        )
    classifier = cfg.model.kind == "classifier"
    model_cfg: LSTMAutoencoderConfig | ClassifierConfig
    if classifier:
        model_cfg = ClassifierConfig(n_features=shape[1], n_classes=2, hidden_size=cfg.model.hidden_size,
                                     num_layers=cfg.model.num_layers, dropout=cfg.model.dropout)
    else:
        model_cfg = LSTMAutoencoderConfig(
            n_features=shape[1],
            window_steps=shape[0],
            hidden_size=cfg.model.hidden_size,
            num_layers=cfg.model.num_layers,
            dropout=cfg.model.dropout,
        )
    log.info(
        "train %s: %s on %d training and %d validation windows from sequences version %d (split %s, "
        "backend %s, reader %s)",
        run_id,
        cfg.model.kind,
        n_train,
        n_val,
        version,
        split.as_dict(),
        cfg.train.backend,
        cfg.train.reader,
    )
    init_state, init_normaliser = None, None
    if cfg.train.init_from:
        base = load_bundle(cfg.train.init_from)
        if base.model_cfg != model_cfg or base.feature_names != feature_names:
            raise ConfigError(
                f"train.init_from={cfg.train.init_from} holds a {base.kind} of {base.model_cfg.to_dict()} over "
                f"{len(base.feature_names)} features; this run needs {model_cfg.to_dict()} over {feature_names}"
            )
        init_state, init_normaliser = base.state_dict, base.normaliser
        log.info("train %s: continuing model %s from %s", run_id, base.version, cfg.train.init_from)
    result = train_backend(
        spark, cfg.train.backend, train_plan, val_plan, model_cfg, cfg.train,
        checkpoint_dir=Path(model_dir) / "checkpoints", resume=cfg.train.resume, init_state=init_state,
        normaliser=init_normaliser, balanced=cfg.model.class_weights == "balanced",
    )
    normaliser = result.normaliser
    assert normaliser is not None  # the snapshot trainers always return one
    val_shard = ShardReader(val_plan, 0, 1, equal=False).load()
    val_x = normaliser.transform(val_shard.x)

    device = pick_device(cfg.train.device)
    metrics: dict[str, Any] = {"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch}
    if isinstance(model_cfg, ClassifierConfig):
        clf = LSTMClassifier(model_cfg)
        clf.load_state_dict(result.state_dict)
        clf.to(device).eval()
        val_scores = classifier_probabilities(clf, val_x, device=device)[:, 1]
        val_y = window_labels(val_shard)
        threshold = calibrate_probability_threshold(val_scores, val_y)
        flagged = val_scores > threshold
        metrics.update({
            "val_anomalous_windows": int(val_y.sum()),
            "val_precision": float((flagged & (val_y == 1)).sum() / max(int(flagged.sum()), 1)),
            "val_recall": float((flagged & (val_y == 1)).sum() / max(int(val_y.sum()), 1)),
        })
    else:
        model = LSTMAutoencoder(model_cfg)
        model.load_state_dict(result.state_dict)
        model.to(device).eval()
        val_scores, val_feature_errors = window_errors(model, val_x, device=device)
        threshold = calibrate_threshold(val_scores, cfg.train.threshold_quantile)
        # Typical per-feature error on normal windows: scoring explains a window by how many
        # times its error exceeds this.
        metrics["val_feature_error"] = [float(v) for v in val_feature_errors.mean(axis=0)]
    metrics["val_score_quantiles"] = {str(q): float(np.quantile(val_scores, q)) for q in (0.5, 0.9, 0.99)}
    bundle = ModelBundle(
        model_cfg=model_cfg,
        state_dict=result.state_dict,
        normaliser=normaliser,
        threshold=threshold,
        feature_names=feature_names,
        features={
            "step_seconds": cfg.features.step_seconds,
            "window_steps": cfg.features.window_steps,
            "stride_steps": cfg.features.stride_steps,
            # featurize stores counts and sums as log1p; explanations undo it for display.
            "transform": "log1p",
        },
        metrics=metrics,
        training={
            "run_id": run_id,
            "sequences_version": version,
            "split": split.as_dict(),
            "train_windows": n_train,
            "validation_windows": n_val,
            "backend": cfg.train.backend,
            "reader": cfg.train.reader,
            "init_from": cfg.train.init_from or None,
            "history": result.history,
            "config": {"train": cfg.to_dict()["train"], "model": cfg.to_dict()["model"]},
        },
        version="",
        templates=training_templates(cfg, lake),
    )
    save_bundle(model_dir, bundle)
    saved_version = bundle.version
    summary = TrainSummary(
        run_id=run_id,
        model_dir=str(model_dir),
        model_version=saved_version,
        sequences_version=version,
        train_windows=n_train,
        validation_windows=n_val,
        threshold=float(threshold),
        best_val_loss=float(result.best_val_loss),
        epochs=len(result.history),
    )
    log.info("train %s: model %s threshold %.4f saved to %s", run_id, saved_version, threshold, model_dir)
    return summary
