"""MLflow tracking of a training (``train.mlflow``): params, per-epoch metrics, the bundle as artifacts.

The driver starts (or joins) the run (:func:`mlflow_run`) and logs the settings; rank 0 logs each
epoch's losses itself (:func:`log_epoch`, called by the loop) into the run the driver named in the
ranks' settings (``train.mlflow_run_id``), so it works across processes and backends; after the
bundle is saved the driver uploads it under ``bundle/``. MLflow is imported only when tracking is
on, and a tracking outage never fails a training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loganomaly.config import TrainConfig
from loganomaly.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["MLFLOW_BUNDLE_PATH", "MlflowRun", "absolute_tracking_uri", "import_mlflow", "log_epoch", "mlflow_params",
           "mlflow_run"]

MLFLOW_INSTALL_HINT = "pip install 'loganomaly[mlflow]' (mlflow-skinny)"
#: Artifact folder of the run that holds the bundle's files (download it and load it as a bundle).
MLFLOW_BUNDLE_PATH = "bundle"
#: MLflow accepts at most this many params per ``log_batch`` call.
_MLFLOW_PARAMS_PER_BATCH = 100
#: Tracking URIs without a scheme that MLflow reads as a named store, not as a local path.
_MLFLOW_NAMED_STORES = frozenset({"databricks", "databricks-uc", "uc"})


def absolute_tracking_uri(uri: str) -> str:
    """``uri`` with a relative local store made absolute (``mlruns``, ``file:mlruns``, ``sqlite:///m.db``).

    Ranks may run in another working directory (torchrun, Spark tasks); an absolute store is the
    same store for all of them. Server, ``databricks`` and other remote URIs are returned unchanged.
    """
    parsed = urllib.parse.urlparse(uri)
    if uri in _MLFLOW_NAMED_STORES:
        return uri
    if parsed.scheme == "":
        return Path(uri).resolve().as_uri()
    if parsed.scheme == "file" and not parsed.netloc:
        path = Path(urllib.parse.unquote(parsed.path))
        return uri if path.is_absolute() else path.resolve().as_uri()
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # SQLAlchemy: three slashes then a relative path, four for an absolute one.
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def mlflow_params(sections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``{"model": {...}, "train": {...}}`` as MLflow params ``model.kind``, ``train.epochs``, ...

    The ``mlflow_*`` settings are left out (a tracking URI may hold credentials); non-scalar values
    are written as JSON.
    """
    params = {}
    for section, values in sections.items():
        for key, value in values.items():
            if key.startswith("mlflow"):
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            params[f"{section}.{key}"] = text
    return params


def import_mlflow() -> Any:
    """The ``mlflow`` package, imported only when tracking is asked for.

    Raises:
        ConfigError: ``train.mlflow`` is on but MLflow is not installed.
    """
    try:
        import mlflow  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(f"train.mlflow=true but MLflow cannot be imported ({exc}); {MLFLOW_INSTALL_HINT}") from None
    return mlflow


@dataclass
class MlflowRun:
    """The MLflow run of one ``train``, driven from the driver (one process: nothing to gate by rank).

    The driver logs the params and, at the end, the bundle and the summary; rank 0 logs each
    epoch's losses itself (:func:`log_epoch`), into the run named by ``train.mlflow_run_id``.

    Attributes:
        client: an ``mlflow.tracking.MlflowClient`` on ``tracking_uri``.
        run_id: the run's id.
        tracking_uri: the absolute tracking URI the ranks are given.
        owned: whether this run was started here (and is ended here) or given by ``train.mlflow_run_id``.
    """

    client: Any
    run_id: str
    tracking_uri: str
    owned: bool

    def train_config(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` for the ranks: pointing at this run and at the absolute store."""
        return dataclasses.replace(cfg, mlflow_run_id=self.run_id, mlflow_tracking_uri=self.tracking_uri)

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param  # type: ignore[import-not-found]

        items = [Param(k, v) for k, v in sorted(params.items())]
        for start in range(0, len(items), _MLFLOW_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _MLFLOW_PARAMS_PER_BATCH])

    def log_outcome(self, files: list[Path], metrics: dict[str, float], tags: dict[str, str],
                    name: str | None = None) -> None:
        """The saved bundle's ``files`` as artifacts under ``bundle/``, final metrics and tags.

        A failure is logged, not raised: the bundle is saved already and training is not repeated
        for the sake of its record.
        """
        from mlflow.entities import Metric, RunTag  # type: ignore[import-not-found]

        try:
            for path in files:
                self.client.log_artifact(self.run_id, str(path), MLFLOW_BUNDLE_PATH)
            now = int(time.time() * 1000)
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())],
                tags=[RunTag(k, v) for k, v in sorted(tags.items())],
            )
            if name and self.owned:
                self.client.update_run(self.run_id, name=name)
        except Exception as exc:  # the bundle exists; a tracking outage must not fail the stage now
            log.warning("mlflow: could not log the outcome of run %s (%s); the bundle itself is saved",
                        self.run_id, exc)
            return
        log.info("mlflow: run %s holds %d artifacts under %s/ and %d final metrics",
                 self.run_id, len(files), MLFLOW_BUNDLE_PATH, len(metrics))


@contextlib.contextmanager
def mlflow_run(cfg: TrainConfig, params: dict[str, str]) -> Iterator[MlflowRun | None]:
    """Start (or join) the MLflow run of a training when ``cfg.mlflow`` is on; ``None`` otherwise.

    The run lives in ``cfg.mlflow_experiment`` (created when missing) in the store named by
    ``cfg.mlflow_tracking_uri``, ``$MLFLOW_TRACKING_URI`` or MLflow's default. A run started here
    ends FINISHED, or FAILED when the block raises; a run given by ``cfg.mlflow_run_id`` is left
    running for its owner.

    Example:
        >>> with mlflow_run(cfg.train, mlflow_params({"train": cfg.to_dict()["train"]})) as run:
        ...     settings = run.train_config(cfg.train) if run else cfg.train  # doctest: +SKIP

    Raises:
        ConfigError: MLflow is not installed, or the run cannot be started in that store.
    """
    if not cfg.mlflow:
        yield None
        return
    mlflow = import_mlflow()
    from mlflow.tracking import MlflowClient  # type: ignore[import-not-found]

    uri = absolute_tracking_uri(cfg.mlflow_tracking_uri or mlflow.get_tracking_uri())
    client = MlflowClient(tracking_uri=uri)
    try:
        if cfg.mlflow_run_id:
            run = MlflowRun(client, client.get_run(cfg.mlflow_run_id).info.run_id, uri, owned=False)
        else:
            experiment = client.get_experiment_by_name(cfg.mlflow_experiment)
            if experiment is None:
                try:
                    experiment_id = client.create_experiment(cfg.mlflow_experiment)
                except Exception:  # another process created it meanwhile
                    experiment = client.get_experiment_by_name(cfg.mlflow_experiment)
                    if experiment is None:
                        raise
                    experiment_id = experiment.experiment_id
            else:
                experiment_id = experiment.experiment_id
            created = client.create_run(experiment_id, tags={"loganomaly.stage": "train"})
            run = MlflowRun(client, created.info.run_id, uri, owned=True)
        run.log_params(params)
    except Exception as exc:
        raise ConfigError(f"train.mlflow: cannot start a run in {uri} (experiment {cfg.mlflow_experiment!r}, "
                          f"run {cfg.mlflow_run_id or 'new'}): {exc}") from exc
    log.info("mlflow: tracking this training as run %s in %s", run.run_id, uri)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        if run.owned:
            try:
                client.set_terminated(run.run_id, status=status)
            except Exception as exc:
                log.warning("mlflow: could not mark run %s %s: %s", run.run_id, status, exc)


@functools.lru_cache(maxsize=4)
def _mlflow_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient  # type: ignore[import-not-found]

    return MlflowClient(tracking_uri=uri or None)


def log_epoch(settings: TrainConfig, record: dict[str, float]) -> None:
    """One epoch's metrics (step = epoch) to MLflow, from rank 0; never fails training.

    Into the run ``settings.mlflow_run_id`` when ``settings.mlflow`` is on (what ``train`` sets up
    for its ranks); otherwise into the caller's active run when the caller has started one with
    ``mlflow.start_run()`` (e.g. a notebook calling the loop directly).
    """
    metrics = {k: float(v) for k, v in record.items() if k != "epoch"}
    step = int(record["epoch"])
    run_id = getattr(settings, "mlflow_run_id", "") if getattr(settings, "mlflow", False) else ""
    try:
        if run_id:
            from mlflow.entities import Metric  # type: ignore[import-not-found]

            now = int(time.time() * 1000)
            client = _mlflow_client(getattr(settings, "mlflow_tracking_uri", ""))
            client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        elif "mlflow" in sys.modules:  # only a caller that imported MLflow can have a run active
            mlflow = sys.modules["mlflow"]
            if mlflow.active_run() is not None:
                mlflow.log_metrics(metrics, step=step)
    except Exception as exc:  # a tracking server outage must not kill a training run
        log.warning("mlflow logging failed: %s", exc)
