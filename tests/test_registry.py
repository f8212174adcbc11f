"""The extension points: one registry each, read by the config, the CLI and the stages.

The end-to-end test registers a model kind and a backend from the test suite (``tests/plugins``),
changing no product code, and runs them through train, score, evaluate and report on real Spark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from loganomaly.config import load_config
from loganomaly.errors import ConfigError
from loganomaly.registry import BACKENDS, LOG_FORMATS, MODEL_KINDS, READERS, Registry

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_a_registry_lists_its_names_in_order_and_refuses_unknown_ones() -> None:
    reg: Registry[Any] = Registry("thing", "x.thing", {"a": "loganomaly.errors:ConfigError", "b": 2})
    assert reg.names() == ("a", "b")
    assert reg.get("a") is ConfigError  # resolved lazily from "module:attribute"
    assert reg.get("b") == 2
    with pytest.raises(ConfigError, match=r"unknown x.thing 'c'.*choose one of: a, b"):
        reg.get("c")
    reg.register("c", 3, before="b")
    assert reg.names() == ("a", "c", "b")
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("c", 4)
    reg.unregister("c")
    assert reg.names() == ("a", "b")


def test_the_product_registries_resolve_every_entry() -> None:
    for registry in (MODEL_KINDS, BACKENDS, READERS, LOG_FORMATS):
        for name, impl in registry.items():
            assert impl is not None, name
    assert {k.bundle_kind for _, k in MODEL_KINDS.items()} == {"lstm_autoencoder", "lstm_classifier", "deeplog"}
    assert LOG_FORMATS.names()[0] == "json"


def test_config_and_cli_take_their_choices_from_the_registries() -> None:
    from loganomaly.cli import build_parser

    with pytest.raises(ConfigError, match="choose one of: autoencoder, classifier, deeplog"):
        load_config(overrides=["model.kind=lstm"], conf_dir=CONF)
    with pytest.raises(ConfigError, match="choose one of: local, torch_distributor, horovod"):
        load_config(overrides=["train.backend=mpi"], conf_dir=CONF)
    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions  # type: ignore[union-attr]
                 if "--backend" in a.option_strings)
    assert tuple(train.choices) == BACKENDS.names()


@pytest.fixture
def plugins() -> Any:
    """The toy kind and a recording backend, registered from outside the package, removed afterwards."""
    from loganomaly.training.backends import Backend, RankJob, rank_main
    from tests.plugins import toy_kind

    launched: list[int] = []

    class RecordingBackend(Backend):
        """Runs the ranks in this process, like ``local``, and records each launch."""

        needs_spark = False

        def launch(self, spark: Any, job: RankJob, n: int) -> bytes:
            launched.append(n)
            return rank_main(job)

        def ranks(self, cfg: Any, num_processes: int | None) -> int:
            return 1

    # Executors import the kind by value: a user's module need not be installed on them.
    cloudpickle.register_pickle_by_value(toy_kind)
    MODEL_KINDS.register("step_linear", toy_kind.KIND)
    BACKENDS.register("recording", RecordingBackend())
    try:
        yield toy_kind, launched
    finally:
        MODEL_KINDS.unregister("step_linear")
        BACKENDS.unregister("recording")
        cloudpickle.unregister_pickle_by_value(toy_kind)


@pytest.mark.spark
@pytest.mark.slow
def test_a_kind_and_a_backend_from_outside_run_through_every_stage(spark, tmp_path: Path, plugins) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from loganomaly.evaluation import report
    from loganomaly.evaluation import stage as evaluate
    from loganomaly.features import stage as featurize
    from loganomaly.ingest import stage as ingest
    from loganomaly.ingest import synthetic
    from loganomaly.lake.tables import Lake
    from loganomaly.models.bundle import load_bundle
    from loganomaly.scoring import stage as score
    from loganomaly.training import stage as train

    toy_kind, launched = plugins
    cfg = load_config(profile="test", conf_dir=CONF, overrides=[
        f"lake.root={tmp_path / 'lake'}", "lake.engine=deltars", "model.kind=step_linear", "train.backend=recording",
    ])
    data = synthetic.generate(tmp_path / "raw", cfg.generate)
    lake = Lake(spark, cfg.lake.root, "deltars")
    ingest.run(spark, cfg, [str(tmp_path / "raw")], lake=lake)
    featurize.run(spark, cfg, lake=lake)
    summary = train.run(spark, cfg, tmp_path / "model", lake=lake)
    assert launched == [1]
    assert summary.model_kind == "step_linear" and summary.train_windows > 0

    bundle = load_bundle(tmp_path / "model")
    assert bundle.kind == "toy_step_linear"
    assert isinstance(bundle.model_cfg, toy_kind.StepLinearConfig)

    # Scoring, evaluation and the report take the kind from the bundle: the default model.kind here.
    plain = load_config(profile="test", conf_dir=CONF, overrides=[f"lake.root={tmp_path / 'lake'}",
                                                                  "lake.engine=deltars"])
    scored = score.run(spark, plain, tmp_path / "model", lake=lake)
    assert scored.windows == lake.read("sequences").count() > 0
    rows = lake.read("scores").where(F.col("model_version") == bundle.version)
    assert rows.where(F.col("explanation").startswith("largest error: ")).count() == scored.windows
    result = evaluate.run(spark, plain, tmp_path / "model", labels=str(data.labels_path), lake=lake)
    assert result.n_windows == scored.windows
    html = report.build_report(spark, plain, tmp_path / "model", tmp_path / "report.html", lake=lake).read_text()
    assert "step_linear (toy_step_linear)" in html
