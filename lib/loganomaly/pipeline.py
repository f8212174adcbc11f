"""``pipeline``: generate (when no input is given) -> ingest -> featurize -> train -> score -> evaluate.

What ``make demo`` runs. Each stage is the same ``run()`` its own command and job call, so the
pipeline adds ordering, not behaviour.

With separate training and scoring inputs (:func:`run_split`, ``--train-input``/``--score-input``)
a model trained on some captures is judged on others. The training inputs go to their own lake,
``<lake>/_training``, where the whole time range is the training period (validation is carved out
of it as usual); the scoring inputs go to ``<lake>`` itself, parsed with the training lake's
template-miner state and windowed with the model's feature list, so the scores, their events and
``evaluate`` all live in the lake the user named. Two lakes rather than one with a marker column:
the inputs may overlap in time (or have none, like NSL-KDD), and a time split could not separate them.
Where entity features are on, the scoring lake's windows still read each entity's training events
from before its first scored step as history (trailing baselines, earlier-step count, first-seen
values): a series trained on its first part and scored on the rest continues instead of starting
cold (:func:`loganomaly.features.stage.steps_after_history`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loganomaly.config import Config
from loganomaly.errors import StageInputError
from loganomaly.evaluation import stage as evaluate
from loganomaly.features import stage as featurize
from loganomaly.ingest import stage as ingest
from loganomaly.ingest import synthetic
from loganomaly.ingest.templates.store import load_state, save_state
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import load_bundle
from loganomaly.runtime.runs import new_run_id
from loganomaly.scoring import stage as score
from loganomaly.training import stage as train

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass
class PipelineSummary:
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)


def run(
    spark: SparkSession,
    cfg: Config,
    model_dir: str | Path,
    inputs: Sequence[str] = (),
    generate_dir: str | Path | None = None,
) -> PipelineSummary:
    """Run every stage in order on ``inputs`` (or on freshly generated synthetic data)."""
    summary = PipelineSummary()
    lake = Lake(spark, cfg.lake.root, cfg.lake.engine)
    labels: str | None = None
    if not inputs:
        out = Path(generate_dir) if generate_dir else Path(cfg.lake.root).parent / "raw"
        data = synthetic.generate(out, cfg.generate)
        summary.stages["generate"] = {"out": str(out), "files": len(data.files), "lines": data.n_lines}
        inputs = [str(out)]
        labels = str(data.labels_path)
    summary.stages["ingest"] = ingest.run(spark, cfg, inputs, lake=lake).as_dict()
    summary.stages["featurize"] = featurize.run(spark, cfg, lake=lake).as_dict()
    summary.stages["train"] = train.run(spark, cfg, model_dir, lake=lake).as_dict()
    summary.stages["score"] = score.run(spark, cfg, model_dir, lake=lake).as_dict()
    if labels is not None:
        # Generated data comes with its labels: show how well the injected anomalies were found.
        summary.stages["evaluate"] = evaluate.run(spark, cfg, model_dir, labels=labels, lake=lake).as_dict()
    log.info("pipeline done: %s", {k: v for k, v in summary.stages.items()})
    return summary


def warm_up(spark: SparkSession, cfg: Config, work: str | Path) -> PipelineSummary:
    """A small :func:`run` on generated data under ``work``, for the JVM class archive
    (:mod:`loganomaly.runtime.class_archive`): every stage's JVM classes get loaded, Spark's and
    Delta's. Two hosts over two days, one epoch; ingest and scoring take their Spark paths (Python
    workers, Arrow) and their driver paths (Arrow into the JVM) both, since nightly runs use both."""
    work = Path(work)
    small = replace(
        cfg,
        lake=replace(cfg.lake, root=str(work / "lake")),
        generate=replace(cfg.generate, hosts=2, days=2),
        ingest=replace(cfg.ingest, local_max_bytes=0),
        score=replace(cfg.score, local_max_bytes=0),
        train=replace(cfg.train, epochs=1, mlflow=False),
    )
    summary = run(spark, small, work / "model", generate_dir=work / "raw")
    # The driver paths: a second, small file ingested and the windows scored again without tasks.
    lake = Lake(spark, small.lake.root, small.lake.engine)
    extra = work / "raw-extra"
    synthetic.generate(extra, replace(small.generate, hosts=1, days=1, seed=small.generate.seed + 1))
    driver = replace(small, ingest=replace(small.ingest, local_max_bytes=cfg.ingest.local_max_bytes or 1 << 22),
                     score=replace(small.score, local_max_bytes=cfg.score.local_max_bytes or 1 << 25))
    summary.stages["ingest_driver"] = ingest.run(spark, driver, [str(extra)], lake=lake).as_dict()
    summary.stages["score_driver"] = score.run(spark, driver, work / "model", lake=lake).as_dict()
    return summary


#: Where :func:`run_split` keeps the training inputs' tables, under the lake root.
TRAINING_LAKE = "_training"


def training_config(cfg: Config) -> Config:
    """``cfg`` for the training lake: its own root, and every window of it in the training period."""
    return replace(
        cfg,
        lake=replace(cfg.lake, root=str(Path(cfg.lake.root) / TRAINING_LAKE)),
        train=replace(cfg.train, train_until="", train_fraction=1.0),
        templates=replace(cfg.templates, train_until=""),
    )


def run_split(
    spark: SparkSession,
    cfg: Config,
    model_dir: str | Path,
    train_inputs: Sequence[str],
    score_inputs: Sequence[str],
) -> PipelineSummary:
    """Train on ``train_inputs``, score ``score_inputs`` (see the module docstring).

    Re-running with the same inputs ingests nothing new, trains a new model version on the same
    windows and replaces that model's scores of the scored dates: no duplicates.

    Raises:
        StageInputError: either input list is empty.
    """
    if not train_inputs or not score_inputs:
        raise StageInputError("a split pipeline needs both --train-input and --score-input paths")
    summary = PipelineSummary()
    tcfg = training_config(cfg)
    train_lake = Lake(spark, tcfg.lake.root, tcfg.lake.engine)
    summary.stages["ingest_train"] = ingest.run(spark, tcfg, train_inputs, lake=train_lake).as_dict()
    summary.stages["featurize_train"] = featurize.run(spark, tcfg, lake=train_lake).as_dict()
    summary.stages["train"] = train.run(spark, tcfg, model_dir, lake=train_lake).as_dict()

    lake = Lake(spark, cfg.lake.root, cfg.lake.engine)
    state = load_state(train_lake) if cfg.templates.enabled else None
    if state is not None:
        # The scoring events must get the template ids the model knows: make the training state
        # current in the scoring lake before its ingest matches anything.
        save_state(spark, lake, state, new_run_id("pipeline"), "")
    scfg = replace(cfg, templates=replace(cfg.templates, refit=False))
    summary.stages["ingest_score"] = ingest.run(spark, scfg, score_inputs, lake=lake).as_dict()
    bundle = load_bundle(model_dir)
    names = getattr(bundle, "feature_names", None)
    # Cold-start entities of the scored lake are judged against the training period's peer baselines.
    baselines = (getattr(bundle, "features", None) or {}).get("peer_baselines")
    known = (getattr(bundle, "features", None) or {}).get("error_templates")
    # With entity features, each entity's trailing history continues from its training events
    # (those before its first scored step): a series split in time is not scored from a cold start.
    summary.stages["featurize_score"] = featurize.run(spark, scfg, lake=lake, feature_names=names,
                                                      peer_baselines=baselines,
                                                      known_error_templates=known,
                                                      history_lake=train_lake).as_dict()
    summary.stages["score"] = score.run(spark, scfg, model_dir, lake=lake).as_dict()
    log.info("pipeline (train on %d, score %d inputs) done: %s", len(train_inputs), len(score_inputs),
             summary.stages)
    return summary
