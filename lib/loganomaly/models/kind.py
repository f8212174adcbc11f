"""The model-kind protocol: everything the generic stages need from a kind of model, in one place.

A *kind* (the autoencoder, DeepLog, the classifier, or one of your own) is one module that
implements :class:`ModelKind` and is named in :data:`loganomaly.registry.MODEL_KINDS`. The stages
call only this protocol and never ask which kind they hold:

* ``train`` (driver): :meth:`ModelKind.plan` pins the kind's input table, splits it and returns a
  :class:`TrainingPlan` whose :class:`RankWork` travels to every rank of the chosen backend; on a
  rank, :meth:`RankWork.build_task` reads the rank's share and returns a
  :class:`~loganomaly.models.task.FitTask` for the shared loop; back on the driver,
  :meth:`ModelKind.finish` calibrates the threshold on validation data and returns the bundle.
* ``score``: :meth:`ModelKind.scoring_input` selects and checks the rows a bundle can judge,
  :meth:`ModelKind.score_batch` scores one Arrow batch of them inside a Spark UDF and explains
  the flagged rows.
* ``evaluate`` and ``report`` read a bundle's :class:`Bundle` fields only.

The kind is always taken from the bundle (``model.json`` records it), never from the config, so a
nightly job scores whatever kind was trained without being told.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from loganomaly.config import Config, TrainConfig
from loganomaly.models.task import FitTask, TrainResult
from loganomaly.runtime.collective import Collective

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from loganomaly.lake.tables import Lake

__all__ = ["RESULT_COLUMNS", "RESULT_SCHEMA", "Bundle", "Inference", "ModelKind", "RankWork", "RowCheck",
           "ScoringInput", "TrainingPlan", "result_arrays", "scored_batch"]

#: What :meth:`ModelKind.score_batch` returns per row, as a Spark DDL string.
RESULT_COLUMNS = "score double, top_features array<string>, explanation string"
#: The same columns as an Arrow schema (what :func:`scored_batch` builds).
RESULT_SCHEMA = pa.schema([("score", pa.float64()), ("top_features", pa.list_(pa.string())),
                           ("explanation", pa.string())])


def scored_batch(score: np.ndarray, flagged: np.ndarray, top_features: list[list[str]],
                 explanations: list[str]) -> pa.RecordBatch:
    """The result of scoring N rows as one Arrow batch, built from the flagged rows' explanations only.

    Most rows are never explained; building a Python list and a string per row just to say so cost
    more than the model on small networks. Here the unexplained rows cost nothing in Python: their
    ``top_features`` is an empty list and their ``explanation`` an empty string, written straight as
    Arrow offsets.

    Args:
        score: the score of every row ``[N]``.
        flagged: indices (ascending) of the explained rows.
        top_features: per flagged row, the names it explains by.
        explanations: per flagged row, its text.
    """
    n = len(score)
    flagged = np.asarray(flagged, dtype=np.int64)
    if not len(flagged) == len(top_features) == len(explanations):
        raise ValueError(f"{len(flagged)} flagged rows, {len(top_features)} feature lists, "
                         f"{len(explanations)} explanations")
    names = [name for names in top_features for name in names]
    encoded = [text.encode() for text in explanations]
    list_sizes = np.zeros(n, np.int32)
    text_sizes = np.zeros(n, np.int32)
    if len(flagged):
        list_sizes[flagged] = [len(names_) for names_ in top_features]
        text_sizes[flagged] = [len(e) for e in encoded]
    list_offsets = np.zeros(n + 1, np.int32)
    np.cumsum(list_sizes, out=list_offsets[1:])
    text_offsets = np.zeros(n + 1, np.int32)
    np.cumsum(text_sizes, out=text_offsets[1:])
    return pa.RecordBatch.from_arrays(
        [pa.array(np.asarray(score, dtype=np.float64)),
         pa.ListArray.from_arrays(pa.array(list_offsets), pa.array(names, pa.string())),
         pa.StringArray.from_buffers(n, pa.py_buffer(text_offsets), pa.py_buffer(b"".join(encoded)))],
        schema=RESULT_SCHEMA,
    )


def result_arrays(result: pa.RecordBatch | pd.DataFrame) -> list[pa.Array]:
    """``score``, ``top_features`` and ``explanation`` of a kind's result, as Arrow arrays.

    Kinds in this package return a :func:`scored_batch`; a kind written elsewhere may still return a
    pandas DataFrame with the same columns (converted here, at its per-row cost).
    """
    if isinstance(result, pa.RecordBatch):
        return [result.column(name) for name in RESULT_SCHEMA.names]
    return [pa.array(result["score"].to_numpy(), pa.float64()),
            pa.array(list(result["top_features"]), pa.list_(pa.string())),
            pa.array(list(result["explanation"]), pa.string())]


class Bundle(Protocol):
    """What every trained model carries (``model.safetensors`` + ``model.json``); kinds add their own fields."""

    model_cfg: Any
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    training: dict[str, Any]
    version: str
    templates: dict[str, Any] | None

    @property
    def kind(self) -> str:
        """The bundle kind written to ``model.json`` (:attr:`ModelKind.bundle_kind`)."""
        ...

    @property
    def threshold(self) -> float:
        """Scores above it are anomalies (``scores.threshold``)."""
        ...

    def build_model(self, device: torch.device | None = None) -> torch.nn.Module:
        """The network with its weights, in eval mode."""
        ...


class RankWork(ABC):
    """One kind's training data and settings for the ranks: plain, picklable data, no SparkSession.

    Every rank of every backend gets the same object (the backend ships it), calls
    :meth:`build_task` and hands the task to the shared loop.
    """

    @abstractmethod
    def check_world(self, world: int, settings: TrainConfig) -> None:
        """Fail on the driver, before any rank starts, when the data cannot be dealt to ``world`` ranks."""

    @abstractmethod
    def build_task(self, settings: TrainConfig, comm: Collective) -> tuple[FitTask, dict[str, Any]]:
        """This rank's task, plus JSON-ready extras for the driver and the checkpoints (e.g. a normaliser)."""


@dataclass
class TrainingPlan:
    """What :meth:`ModelKind.plan` decided on the driver.

    Attributes:
        work: what the ranks train on.
        init_state: weights to start from (``train.init_from``), or None.
        describe: one log line's worth: rows, split, input version.
        context: the kind's own driver-side state for :meth:`ModelKind.finish` (split, plans, ...).
    """

    work: RankWork
    init_state: dict[str, torch.Tensor] | None = None
    describe: str = ""
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Inference:
    """How a kind runs its network while scoring (the stage sizes it: :mod:`loganomaly.models.sizing`).

    Attributes:
        batch_size: rows per forward pass.
        bf16: bf16 autocast in the forward passes, on CUDA only (``score.bf16``); ignored on a CPU,
            where an LSTM under bf16 autocast fails in oneDNN on CPUs without bf16 instructions.
    """

    batch_size: int = 1024
    bf16: bool = False


@dataclass
class RowCheck:
    """A condition every scored row must meet, computed by the stage next to its scan of the input.

    Attributes:
        bad: a boolean Column, true on a row the bundle cannot score.
        detail: a Column shown (its value on one bad row) in the error.
        message: the error's text, given that value.
    """

    bad: Any
    detail: Any
    message: Callable[[Any], str]


@dataclass
class ScoringInput:
    """The rows a bundle judges, in the common shape of ``scores``.

    Attributes:
        rows: a DataFrame with ``entity``, ``window_start``, ``window_end``, ``date`` and the
            kind's input column.
        column: the input column handed to :meth:`ModelKind.score_batch`.
        checks: conditions on the rows scored (shape, feature names), evaluated by the stage over
            exactly the rows it scores; a failing one is a ModelError.
    """

    rows: DataFrame
    column: str
    checks: list[RowCheck] = field(default_factory=list)


class ModelKind(ABC):
    """A kind of model, from training data to explained scores. Register one in ``MODEL_KINDS``."""

    #: ``model.kind`` value, and this kind's name in :data:`loganomaly.registry.MODEL_KINDS`.
    name: ClassVar[str]
    #: ``kind`` in ``model.json``.
    bundle_kind: ClassVar[str]
    #: The lake table it trains on and scores (``sequences``, ``sessions``).
    input_table: ClassVar[str]
    #: What one scored row is, for log lines (``windows``, ``sessions``).
    unit: ClassVar[str] = "windows"

    # ------------------------------------------------------------------ training (driver, ranks)
    @abstractmethod
    def plan(self, spark: SparkSession, cfg: Config, lake: Lake, model_dir: Path) -> TrainingPlan:
        """Pin the input table, split it, check ``train.init_from``; what the ranks will train on.

        Raises:
            StageInputError: no or too little input.
            ConfigError: settings this kind cannot train with.
        """

    @abstractmethod
    def finish(self, plan: TrainingPlan, result: TrainResult, cfg: Config, lake: Lake, run_id: str) -> Bundle:
        """Calibrate the threshold on the validation part and assemble the bundle (not yet saved)."""

    def summary(self, bundle: Bundle) -> dict[str, Any]:
        """Kind-specific figures for the train summary (threshold, vocabulary size, ...)."""
        return {"threshold": float(bundle.threshold)}

    # ------------------------------------------------------------------ bundles
    @abstractmethod
    def bundle_meta(self, bundle: Bundle) -> dict[str, Any]:
        """The kind's fields of ``model.json`` (``kind``, ``model`` and its own)."""

    @abstractmethod
    def bundle_from(self, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> Bundle:
        """The bundle from ``model.json`` and its weights (already verified).

        Raises:
            KeyError, TypeError, ValueError: a malformed field (reported as a ModelError by the loader).
        """

    def check_bundle(self, bundle: Bundle) -> None:
        """Refuse an inconsistent bundle (e.g. feature names that do not match the model).

        Raises:
            ModelError: the bundle's parts disagree.
        """
        return None

    # ------------------------------------------------------------------ scoring
    @abstractmethod
    def scoring_input(self, lake: Lake, bundle: Bundle) -> ScoringInput:
        """The rows of :attr:`input_table` this bundle can judge, checked against what it was trained on.

        Raises:
            StageInputError: no input table.
            ModelError: the table cannot match the bundle at all (e.g. a column is missing); row-level
                conditions (shape, feature names) go in :attr:`ScoringInput.checks`.
        """

    def row_floats(self, bundle: Bundle) -> int | None:
        """Input floats per scored row (``T x F`` of a window), to size batches; None when rows vary."""
        return None

    @abstractmethod
    def score_batch(self, bundle: Bundle, model: torch.nn.Module, device: torch.device, values: Any,
                    top_k: int, inference: Inference | None = None) -> pa.RecordBatch | pd.DataFrame:
        """Score one batch of the input column (Spark-free: the UDF body).

        Args:
            values: the input column of one Arrow batch (a ``pyarrow.Array``).
            top_k: how many features or events an explanation names.
            inference: forward-pass batch size and bf16 autocast (defaults: :class:`Inference`).

        Returns:
            ``score`` (float64), ``top_features`` (list of str) and ``explanation`` (str) per row;
            rows at or below the threshold may have empty explanations. Preferably an Arrow batch
            (:func:`scored_batch` builds one without per-row Python objects); a pandas DataFrame
            with those columns is accepted too (:func:`result_arrays`).
        """

    # ------------------------------------------------------------------ evaluation and report
    def report_facts(self, bundle: Bundle) -> list[tuple[str, Any]]:
        """Extra (name, value) rows for the report's model table."""
        return []


def quantiles(values: np.ndarray) -> dict[str, float]:
    """The 0.5, 0.9 and 0.99 quantiles, as bundles record validation scores."""
    return {str(q): float(np.quantile(values, q)) for q in (0.5, 0.9, 0.99)}
