"""Training helpers for the model and loop tests: a kind's task on the shared loop, in this process.

The removed ``train_autoencoder``, ``train_classifier`` and ``train_deeplog`` were these few lines
around :func:`loganomaly.training.loop.fit` (or, for DeepLog, the rank work that the backends run),
so the tests keep their numbers: the same task, the same seeded order, the same validation share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from loganomaly.config import TrainConfig, load_config
from loganomaly.features.split import Selection, ShardPlan, plan_shards, time_range, write_windows
from loganomaly.lake.snapshot import Snapshot
from loganomaly.models.autoencoder import AutoencoderTask, LSTMAutoencoderConfig
from loganomaly.models.classifier import ClassifierConfig, ClassifierTask, balanced_class_weights
from loganomaly.models.deeplog import DeepLogWork
from loganomaly.models.nextevent import DeepLogConfig, SessionRows
from loganomaly.models.task import TrainResult
from loganomaly.runtime.collective import Collective, epoch_seed, shard_indices
from loganomaly.training.loop import fit, train_work

CONF = Path(__file__).resolve().parents[2] / "conf"


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: tiny models gain nothing from more, and on shared cores two spinning
    OpenMP threads made training about 8x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def sequence_settings(**overrides: Any) -> TrainConfig:
    """Training settings with the defaults of the removed ``SequenceTrainConfig``.

    The DeepLog and classifier tests were tuned with them (and with torch's own initialisation,
    ``init="default"``), so the ported tests keep their numbers.
    """
    values: dict[str, Any] = {"epochs": 20, "batch_size": 128, "learning_rate": 1e-3, "patience": 3, "seed": 0,
                              "device": "auto", "init": "default"}
    return TrainConfig(**{**values, **overrides})


def seed_article(**overrides: Any) -> TrainConfig:
    """The seed article's recipe: the training settings of ``conf/profiles/seed_article.yaml``."""
    return dataclasses.replace(load_config(profile="seed_article", conf_dir=CONF).train, **overrides)


def seeded_order(n: int, settings: TrainConfig, comm: Collective) -> Callable[[int], np.ndarray]:
    """This rank's share of a seeded shuffle of ``n`` rows per epoch (what the removed helpers dealt)."""
    rank, world, seed = comm.rank, comm.world, settings.seed

    def order(epoch: int) -> np.ndarray:
        return shard_indices(n, rank, world, epoch_seed(seed, epoch))

    return order


def fit_autoencoder(
    train_x: np.ndarray,
    val_x: np.ndarray,
    model_cfg: LSTMAutoencoderConfig,
    settings: TrainConfig,
    comm: Collective | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """The autoencoder task over normalised windows held in memory, on :func:`fit`."""
    comm = comm or Collective()
    task = AutoencoderTask(train_x, seeded_order(len(train_x), settings, comm), val_x[comm.rank :: comm.world],
                           model_cfg)
    return fit(task, settings, comm, checkpoint_dir, resume, init_state)


def fit_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: ClassifierConfig,
    settings: TrainConfig,
    class_weights: Sequence[float] | Literal["balanced"] | None = None,
    comm: Collective | None = None,
) -> TrainResult:
    """The classifier task over labelled windows held in memory, on :func:`fit`.

    ``class_weights="balanced"`` weighs the classes by :func:`balanced_class_weights` of ``train_y``.
    """
    comm = comm or Collective()
    train_y = np.asarray(train_y, dtype=np.int64)
    weights = balanced_class_weights(train_y, cfg.n_classes) if class_weights == "balanced" else class_weights
    rank, world = comm.rank, comm.world
    task = ClassifierTask(train_x, train_y, seeded_order(len(train_x), settings, comm), val_x[rank::world],
                          np.asarray(val_y, dtype=np.int64)[rank::world], cfg,
                          None if weights is None else list(weights))
    return fit(task, settings, comm)


def deeplog_work(ids: Sequence[Sequence[int]], val_ids: Sequence[Sequence[int]], cfg: DeepLogConfig) -> DeepLogWork:
    """DeepLog's rank work over encoded sessions (what the deeplog kind's plan ships to the ranks)."""
    return DeepLogWork(SessionRows.build(ids, cfg.window, cfg.vocab_size, "training"),
                       SessionRows.build(val_ids, cfg.window, cfg.vocab_size, "validation"), cfg)


def fit_deeplog(
    ids: Sequence[Sequence[int]],
    val_ids: Sequence[Sequence[int]],
    cfg: DeepLogConfig,
    settings: TrainConfig,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """DeepLog on encoded sessions, as one rank of a run in this process (:func:`train_work`)."""
    return train_work(deeplog_work(ids, val_ids, cfg), settings, comm=Collective(), checkpoint_dir=checkpoint_dir,
                      resume=resume)


def trained(model_cfg: Any, result: TrainResult) -> nn.Module:
    """The network of ``model_cfg`` with the result's (best) weights, in eval mode on the CPU."""
    model: nn.Module = model_cfg.build()
    model.load_state_dict(result.state_dict)
    return model.eval()


def snapshot_plans(directory: Path, x: np.ndarray, abnormal: np.ndarray | None = None,
                   seed: int = 1) -> tuple[ShardPlan, ShardPlan]:
    """Write ``x`` as a ``sequences`` table (a window every 10 minutes) and plan its split over it all.

    Returns the training and validation plans (a quarter of the period's time blocks validate).
    """
    path = str(directory / "sequences")
    version = write_windows(path, x, np.arange(len(x)) * 600.0, 60.0, abnormal=abnormal)
    snapshot = Snapshot(path, version)
    lo, hi = time_range(snapshot) or (0.0, 0.0)
    train, val = plan_shards(snapshot, [Selection(lo, hi, 0.25, "train"), Selection(lo, hi, 0.25, "validation")],
                             seed=seed)
    return train, val
