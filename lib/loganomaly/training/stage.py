"""``train``: a kind's input table -> the shared rank-aware loop on a backend -> a model bundle.

The stage is the same for every model kind (:data:`loganomaly.registry.MODEL_KINDS`, chosen by
``model.kind``): the kind pins and splits its input on the driver (:meth:`ModelKind.plan`), the
backend (``train.backend``) runs one rank per process, each training the kind's task on the shared
loop, and the kind calibrates its threshold on the validation part and assembles the bundle
(:meth:`ModelKind.finish`), which is saved under ``model_dir``. Splits are by time, never random
(:mod:`loganomaly.features.split`); the bundle records the input version it was trained on.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loganomaly.config import Config
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import BUNDLE_FILES, save_bundle
from loganomaly.models.kind import ModelKind
from loganomaly.registry import MODEL_KINDS
from loganomaly.runtime.runs import new_run_id
from loganomaly.training.backends import run_backend
from loganomaly.training.tracking import mlflow_params, mlflow_run

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

__all__ = ["TrainSummary", "run"]


@dataclass
class TrainSummary:
    """What :func:`run` did; the kind's own figures (``threshold``, ``top_g``, row counts, ...) are in
    ``details`` and readable as attributes (``summary.top_g``)."""

    run_id: str
    model_dir: str
    model_kind: str
    model_version: str
    best_val_loss: float
    epochs: int
    details: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        details = self.__dict__.get("details") or {}
        if name in details:
            return details[name]
        raise AttributeError(f"{type(self).__name__} of a {self.__dict__.get('model_kind')} model has no {name!r}")

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "details"}
        out.update(self.details)
        return out


def run(spark: SparkSession, cfg: Config, model_dir: str | Path, lake: Lake | None = None) -> TrainSummary:
    """Train the kind ``model.kind`` names on its input table and save the bundle under ``model_dir``.

    Example:
        >>> summary = run(spark, cfg, "model")  # doctest: +SKIP
        >>> summary.model_version, summary.threshold  # doctest: +SKIP

    The input version is pinned first; every rank of every backend reads that version, so a
    featurize run that appends meanwhile changes nothing. Rank 0 checkpoints to
    ``<model_dir>/checkpoints`` every epoch (``train.resume`` continues from there).

    With ``train.mlflow`` on, the training is an MLflow run (:mod:`loganomaly.training.tracking`):
    the model and train settings as params, every epoch's losses from rank 0 (step = epoch), then
    the saved bundle's files as artifacts under ``bundle/`` and the summary's numbers as metrics.

    Raises:
        StageInputError: no or too little input.
        ConfigError: settings the kind, reader or backend cannot run with.
        ModelError: training diverged.
    """
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    kind: ModelKind = MODEL_KINDS.get(cfg.model.kind)
    params = mlflow_params({"model": cfg.to_dict()["model"], "train": cfg.to_dict()["train"]})
    with mlflow_run(cfg.train, params) as tracking:
        if tracking is not None:
            cfg = dataclasses.replace(cfg, train=tracking.train_config(cfg.train))
        summary = _train(spark, cfg, kind, Path(model_dir), lake)
        if tracking is not None:
            metrics, tags = _tracked_outcome(summary)
            tracking.log_outcome([Path(model_dir) / name for name in BUNDLE_FILES], metrics, tags, name=summary.run_id)
    return summary


def _tracked_outcome(summary: TrainSummary) -> tuple[dict[str, float], dict[str, str]]:
    """A summary's numbers as MLflow metrics; its names, paths and versions as ``loganomaly.*`` tags."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for key, value in summary.as_dict().items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not key.endswith("_version"):
            metrics[key] = float(value)
        else:
            tags[f"loganomaly.{key}"] = str(value)
    return metrics, tags


def _train(spark: SparkSession, cfg: Config, kind: ModelKind, model_dir: Path, lake: Lake) -> TrainSummary:
    """Plan on the driver, train on the backend, calibrate and save (the body of :func:`run`)."""
    run_id = new_run_id("train")
    plan = kind.plan(spark, cfg, lake, model_dir)
    log.info("train %s: %s on %s (backend %s, reader %s)", run_id, kind.name, plan.describe, cfg.train.backend,
             cfg.train.reader)
    result = run_backend(
        spark, cfg.train.backend, plan.work, cfg.train, checkpoint_dir=model_dir / "checkpoints",
        resume=cfg.train.resume, init_state=plan.init_state,
    )
    bundle = kind.finish(plan, result, cfg, lake, run_id)
    save_bundle(model_dir, bundle)
    summary = TrainSummary(
        run_id=run_id,
        model_dir=str(model_dir),
        model_kind=kind.name,
        model_version=bundle.version,
        best_val_loss=float(result.best_val_loss),
        epochs=len(result.history),
        details=kind.summary(bundle),
    )
    log.info("train %s: %s %s (threshold %.5g) saved to %s", run_id, kind.name, bundle.version, bundle.threshold,
             model_dir)
    return summary
