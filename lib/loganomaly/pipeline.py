"""``pipeline``: generate (when no input is given) -> ingest -> featurize -> train -> score -> evaluate.

What ``make demo`` runs. Each stage is the same ``run()`` its own command and job call, so the
pipeline adds ordering, not behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loganomaly import featurize, ingest, score, synthetic, train
from loganomaly.config import Config
from loganomaly.tables import Lake

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
        from loganomaly import evaluate

        summary.stages["evaluate"] = evaluate.run(spark, cfg, model_dir, labels=labels, lake=lake).as_dict()
    log.info("pipeline done: %s", {k: v for k, v in summary.stages.items()})
    return summary
