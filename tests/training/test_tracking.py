"""``train.mlflow``: a training run tracked in a real local MLflow store, read back with ``MlflowClient``.

The store is a ``file:`` tracking URI under the test's directory (MLflow's file store; no server).
Training is the real ``train`` stage on a tiny ``sequences`` table: through TorchDistributor with
two ranks (the per-epoch metrics come from rank 0 only, in another process than the driver that
started the run) and with the local backend.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from loganomaly.config import Config
from loganomaly.errors import ConfigError, StageInputError
from loganomaly.features.split import write_windows
from loganomaly.features.windows import FEATURE_NAMES
from loganomaly.models.bundle import META, WEIGHTS, load_bundle
from loganomaly.training.tracking import MLFLOW_BUNDLE_PATH, absolute_tracking_uri

mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed (pip install 'loganomaly[mlflow]')")
from mlflow.tracking import MlflowClient  # noqa: E402

EPOCH_METRICS = ("train_loss", "val_loss", "seconds", "batches", "batches_min", "batches_max", "samples")


def _config(uri: str, **train: object) -> Config:
    cfg = Config()
    cfg.model.hidden_size = 4
    settings: dict[str, object] = {"epochs": 3, "batch_size": 16, "device": "cpu", "train_fraction": 0.8,
                                   "patience": 0, "mlflow": True, "mlflow_tracking_uri": uri,
                                   "mlflow_experiment": "loganomaly-test"}
    cfg.train = replace(cfg.train, **{**settings, **train})  # type: ignore[arg-type]
    return cfg


def _lake(spark: object, root: Path):  # type: ignore[no-untyped-def]
    from loganomaly.lake.tables import Lake

    lake = Lake(spark, root, engine="deltars")  # type: ignore[arg-type]
    x = np.random.default_rng(0).normal(3.0, 1.0, (200, 6, len(FEATURE_NAMES))).astype(np.float32)
    write_windows(lake.path("sequences"), x, np.arange(200) * 900.0, 150.0, max_rows_per_group=32)
    return lake


def _only_run(client: MlflowClient, experiment: str):  # type: ignore[no-untyped-def]
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in the store"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


@pytest.mark.spark
def test_train_run_on_two_ranks_is_tracked_with_params_epochs_and_bundle(spark: object, tmp_path: Path) -> None:
    from loganomaly.training import stage as train

    uri = (tmp_path / "mlruns").as_uri()
    lake = _lake(spark, tmp_path / "lake")
    cfg = _config(uri, backend="torch_distributor", num_processes=2)
    summary = train.run(spark, cfg, tmp_path / "model", lake=lake)  # type: ignore[arg-type]

    client = MlflowClient(tracking_uri=uri)
    run = _only_run(client, "loganomaly-test")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == summary.run_id
    # params: the model kind, model and train settings as the run used them
    params = run.data.params
    assert params["model.kind"] == "autoencoder" and params["model.hidden_size"] == "4"
    assert params["train.backend"] == "torch_distributor" and params["train.num_processes"] == "2"
    assert params["train.epochs"] == "3" and params["train.learning_rate"] == str(cfg.train.learning_rate)
    assert not any(k.startswith("train.mlflow") for k in params), "tracking settings are not params"

    # one value per epoch and metric: rank 0 logged, rank 1 did not
    bundle = load_bundle(tmp_path / "model")
    history = bundle.training["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    for name in EPOCH_METRICS:
        logged = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in logged] == [0, 1, 2], name
        assert [m.value for m in logged] == pytest.approx([float(h[name]) for h in history]), name
    assert history[0]["samples"] >= 2 * history[0]["batches"], "the history is of two ranks"

    # the summary's numbers, its versions as tags
    assert run.data.metrics["best_val_loss"] == pytest.approx(summary.best_val_loss)
    assert run.data.metrics["threshold"] == pytest.approx(summary.threshold)
    assert run.data.tags["loganomaly.model_version"] == summary.model_version == bundle.version
    assert run.data.tags["loganomaly.sequences_version"] == "0"
    # the bundle records its run, so a model can be traced to it
    assert bundle.training["config"]["train"]["mlflow_run_id"] == run.info.run_id

    # the artifacts are the bundle: downloaded, they load as the same model
    names = sorted(Path(a.path).name for a in client.list_artifacts(run.info.run_id, MLFLOW_BUNDLE_PATH))
    assert names == sorted([WEIGHTS, META])
    (tmp_path / "download").mkdir()
    local = client.download_artifacts(run.info.run_id, MLFLOW_BUNDLE_PATH, str(tmp_path / "download"))
    assert load_bundle(local).version == summary.model_version


@pytest.mark.spark
def test_tracking_uri_from_the_environment_relative_to_the_working_directory(
    spark: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loganomaly.training import stage as train

    lake = _lake(spark, tmp_path / "lake")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:tracking")
    summary = train.run(spark, _config("", epochs=2), tmp_path / "model", lake=lake)  # type: ignore[arg-type]

    client = MlflowClient(tracking_uri=(tmp_path / "tracking").as_uri())
    run = _only_run(client, "loganomaly-test")
    assert run.info.status == "FINISHED" and run.data.params["train.backend"] == "local"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]
    assert run.data.tags["loganomaly.model_version"] == summary.model_version


@pytest.mark.spark
def test_a_failed_training_ends_its_run_failed(spark: object, tmp_path: Path) -> None:
    from loganomaly.lake.tables import Lake
    from loganomaly.training import stage as train

    uri = (tmp_path / "mlruns").as_uri()
    lake = Lake(spark, tmp_path / "empty", engine="deltars")  # type: ignore[arg-type]
    with pytest.raises(StageInputError, match="no sequences table"):
        train.run(spark, _config(uri), tmp_path / "model", lake=lake)  # type: ignore[arg-type]
    run = _only_run(MlflowClient(tracking_uri=uri), "loganomaly-test")
    assert run.info.status == "FAILED"
    assert run.data.params["model.kind"] == "autoencoder"


def test_tracking_off_creates_no_store_and_missing_mlflow_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loganomaly.training.tracking import mlflow_run

    cfg = _config((tmp_path / "mlruns").as_uri())
    with mlflow_run(replace(cfg.train, mlflow=False), {}) as run:
        assert run is None
    assert not (tmp_path / "mlruns").exists()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without MLflow shows
    with pytest.raises(ConfigError, match=r"loganomaly\[mlflow\]"), mlflow_run(cfg.train, {}):
        pass


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("mlruns", "file://{cwd}/mlruns"),
        ("file:mlruns", "file://{cwd}/mlruns"),
        ("file:///srv/mlruns", "file:///srv/mlruns"),
        ("sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db"),
        ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
        ("http://tracking:5000", "http://tracking:5000"),
        ("databricks", "databricks"),
    ],
)
def test_absolute_tracking_uri(uri: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri(uri) == expected.format(cwd=tmp_path.resolve())
