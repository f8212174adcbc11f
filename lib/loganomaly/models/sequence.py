"""Sequence models over log sessions: DeepLog next-event prediction and a supervised LSTM classifier.

DeepLog (Du et al., CCS 2017) learns, from normal sessions only, which template usually comes next
after the last ``window`` templates. At scoring time an event whose template is not among the
``top_g`` most likely candidates is unexpected, and a session with any unexpected event is
anomalous. The unexpected events themselves (position, template, how unlikely it was) are the
explanation an operator reads.

The supervised classifier is for data sets with labelled anomalies: numeric windows ``[B, T, F]``
go through an LSTM, its last hidden state through a linear layer to class logits.
:data:`SEED_ARTICLE_PRESET` reproduces the training recipe of the article this project started
from (SGD with Nesterov momentum, Xavier init, element-wise gradient clipping).

Both models train on the shared rank-aware loop (:func:`loganomaly.training.loop.fit`): alone, or as one
rank of a DDP or Horovod run (pass the run's :class:`~loganomaly.training.loop.Collective`), with the same
early stopping, checkpoints, resume and equal batch counts per rank as the autoencoder. A task
here only says how to cut batches and what the loss is: DeepLog keeps every session once in a flat
id array and cuts each history from it at batch time, so the windows (``window`` times the
events) are never materialised. Every run is seeded: the same seed and data give identical
weights. bf16 autocast is applied on CUDA only, because an LSTM under CPU bf16 autocast fails in
oneDNN on CPUs without bf16 instructions.

Weights are plain ``state_dict`` tensors (save them with safetensors) and configs and vocabularies
are JSON-ready dicts; nothing here pickles.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from loganomaly.errors import ConfigError, ModelError
from loganomaly.runtime.device import DEVICES, pick_device
from loganomaly.training.loop import (
    INITS,
    OPTIMIZERS,
    Collective,
    FitTask,
    LoopSettings,
    TensorTask,
    default_collective,
    epoch_seed,
    fit,
    shard_indices,
)

log = logging.getLogger(__name__)

#: Id of a template not seen in training. Always an unexpected event when it occurs in a session.
UNKNOWN_ID = 0
#: Id that fills the history before a session's first events. Distinct from UNKNOWN so that "no
#: history yet" does not look like "an unseen template happened".
PAD_ID = 1
#: Ids below this are reserved; real templates are numbered from here.
FIRST_TEMPLATE_ID = 2
UNKNOWN_TOKEN = "<UNKNOWN>"
PAD_TOKEN = "<PAD>"
#: Pseudo-template closing every session when ``model.session_end`` is on: the model must also
#: predict that a session ends, so one that stops early (a block never stored, a job cut off)
#: misses "<END>" and is anomalous, which next-event prediction over its events alone cannot see.
END_TOKEN = "<END>"


def with_end(sessions: Iterable[Sequence[str]]) -> list[list[str]]:
    """Every session with :data:`END_TOKEN` appended."""
    return [[*map(str, s), END_TOKEN] for s in sessions]


_C = TypeVar("_C")


def _from_dict(cls: type[_C], data: Any, what: str, error: type[Exception]) -> _C:
    """Rebuild a dataclass from a dict, refusing unknown keys (a newer writer's setting must not be dropped)."""
    if not isinstance(data, dict):
        raise error(f"{what} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise error(f"unknown {what} keys {unknown}; valid keys: {', '.join(names)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise error(f"incomplete {what} {data!r}: {exc}") from None


def _check_positive_ints(obj: object, names: Iterable[str], what: str, error: type[Exception]) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise error(f"{what} {name} must be a positive integer, got {value!r}")


def _check_dropout(value: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ModelError(f"{what} dropout must be in [0, 1), got {value!r}")


# --------------------------------------------------------------------------------------------------
# Vocabulary and windows
# --------------------------------------------------------------------------------------------------


class Vocabulary:
    """Template id strings to the integer ids DeepLog embeds.

    Fitted on training sessions only: a template first seen in validation or scoring maps to
    :data:`UNKNOWN_ID`, which the scorer always reports as unexpected (an unseen template is itself
    a signal). Ids are assigned in sorted template order, so fitting the same training templates
    gives the same ids whatever order the sessions come in.
    """

    def __init__(self, templates: Iterable[str]) -> None:
        self.templates: list[str] = list(templates)
        if len(set(self.templates)) != len(self.templates):
            raise ModelError("vocabulary templates must be unique")
        if any(not isinstance(t, str) for t in self.templates):
            raise ModelError("vocabulary templates must be strings")
        self._ids = {t: i + FIRST_TEMPLATE_ID for i, t in enumerate(self.templates)}

    @classmethod
    def fit(cls, sessions: Iterable[Iterable[str]], min_count: int = 1, min_support: float = 0.0) -> Vocabulary:
        """The templates of the training sessions seen at least ``min_count`` times and in at
        least ``min_support`` (a fraction) of the sessions.

        A ``min_count`` above 1 treats rare training templates as unknown, so the model also learns
        what follows an unknown event instead of meeting id 0 for the first time at scoring.
        ``min_support`` is for training data that are not known to be clean: an event type found in
        fewer sessions than the expected share of anomalous ones is not trusted as normal.
        """
        if min_count < 1:
            raise ModelError(f"min_count must be >= 1, got {min_count}")
        if not 0.0 <= min_support < 1.0:
            raise ModelError(f"min_support must be in [0, 1), got {min_support}")
        counts: Counter[str] = Counter()
        support: Counter[str] = Counter()
        n_sessions = 0
        for session in sessions:
            templates = [str(t) for t in session]
            counts.update(templates)
            support.update(set(templates))
            n_sessions += 1
        vocab = cls(sorted(t for t, c in counts.items()
                           if c >= min_count and support[t] >= min_support * n_sessions))
        log.info("vocabulary: %d templates (of %d seen, min_count %d)", len(vocab.templates), len(counts), min_count)
        return vocab

    @property
    def size(self) -> int:
        """``vocab_size`` for :class:`DeepLogConfig`: templates plus the reserved UNKNOWN and PAD ids."""
        return len(self.templates) + FIRST_TEMPLATE_ID

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.templates == other.templates

    def __hash__(self) -> int:
        return hash(tuple(self.templates))

    def id_of(self, template: str) -> int:
        """The id of ``template``; :data:`UNKNOWN_ID` when it was not in training."""
        return self._ids.get(template, UNKNOWN_ID)

    def encode(self, session: Iterable[str]) -> list[int]:
        """One session of template strings as ids (unseen templates become :data:`UNKNOWN_ID`)."""
        return [self._ids.get(str(t), UNKNOWN_ID) for t in session]

    def encode_many(self, sessions: Iterable[Iterable[str]]) -> list[list[int]]:
        """Several sessions; logs how many events were unknown, a quick drift indicator."""
        encoded = [self.encode(s) for s in sessions]
        total = sum(len(s) for s in encoded)
        unknown = sum(s.count(UNKNOWN_ID) for s in encoded)
        if unknown:
            log.info("vocabulary: %d of %d events have templates unseen in training", unknown, total)
        return encoded

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids back to template strings, with placeholders for the reserved ids."""
        out = []
        for i in ids:
            i = int(i)
            if i == UNKNOWN_ID:
                out.append(UNKNOWN_TOKEN)
            elif i == PAD_ID:
                out.append(PAD_TOKEN)
            elif FIRST_TEMPLATE_ID <= i < self.size:
                out.append(self.templates[i - FIRST_TEMPLATE_ID])
            else:
                raise ModelError(f"id {i} is outside this vocabulary of size {self.size}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; the list order is the id order."""
        return {"templates": list(self.templates)}

    @classmethod
    def from_dict(cls, data: Any) -> Vocabulary:
        """Rebuild from :meth:`to_dict`; unknown keys are refused."""
        if not isinstance(data, dict):
            raise ModelError(f"vocabulary must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"templates"})
        if unknown:
            raise ModelError(f"unknown vocabulary keys {unknown}; valid keys: templates")
        if not isinstance(data.get("templates"), list):
            raise ModelError("vocabulary needs a 'templates' list")
        return cls(data["templates"])


def next_event_windows(seq: Sequence[int], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Histories and next events of one session: ``X[N, window]`` (int64) and ``y[N]``.

    Every event is a target, the first one included: its history is all :data:`PAD_ID`. That way
    a session opening with an unusual (or unknown) event is judged too, and short sessions still
    give windows. Histories shorter than ``window`` are padded at the start.

    Example:
        >>> X, y = next_event_windows([5, 6, 7], window=2)
        >>> X.tolist(), y.tolist()
        ([[1, 1], [1, 5], [5, 6]], [5, 6, 7])
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ModelError(f"window must be a positive integer, got {window!r}")
    ids = np.asarray(seq, dtype=np.int64).ravel()
    n = len(ids)
    padded = np.concatenate([np.full(window, PAD_ID, dtype=np.int64), ids])
    if n == 0:
        return np.zeros((0, window), dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Row i is padded[i : i + window], the `window` events before event i.
    x = np.lib.stride_tricks.sliding_window_view(padded, window)[:n].copy()
    return x, ids.copy()


def _session_windows(sessions: Sequence[Sequence[int]], window: int, vocab_size: int,
                     what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All sessions' windows stacked, and the session index of each row."""
    xs, ys, owner = [], [], []
    for k, session in enumerate(sessions):
        x, y = next_event_windows(session, window)
        if len(y) and (y.min() < 0 or y.max() >= vocab_size or (y == PAD_ID).any()):
            raise ModelError(
                f"{what} session {k} holds ids outside [0, {vocab_size}) or the PAD id {PAD_ID}; "
                "encode sessions with the model's Vocabulary"
            )
        xs.append(x)
        ys.append(y)
        owner.append(np.full(len(y), k, dtype=np.int64))
    if not xs:
        return np.zeros((0, window), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(owner)


# --------------------------------------------------------------------------------------------------
# Training settings shared by both models
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceTrainConfig:
    """How :func:`train_deeplog` and :func:`train_classifier` train. Frozen: presets are shared.

    Attributes:
        epochs: maximum passes over the training windows.
        batch_size: windows per optimiser step.
        learning_rate: step size.
        patience: stop after this many epochs without a lower validation loss (``<= 0``: never).
        seed: seeds weight init, dropout and batch order; the same seed gives identical weights.
        device: ``auto``, ``cpu`` or ``cuda`` (see :func:`loganomaly.runtime.device.pick_device`).
        bf16: bf16 autocast, applied on CUDA only (ignored with a warning on CPU).
        optimizer: ``adam`` or ``sgd_nesterov`` (SGD with Nesterov momentum).
        momentum: momentum of ``sgd_nesterov``.
        weight_decay: L2 penalty of either optimiser.
        clip_value: clip every gradient element to ``[-clip_value, clip_value]`` before each step
            (``torch.nn.utils.clip_grad_value_``); ``None`` disables clipping.
        init: ``default`` (torch's) or ``xavier`` (Xavier-uniform weights, zero biases).
    """

    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 1e-3
    patience: int = 3
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip_value: float | None = None
    init: str = "default"

    def __post_init__(self) -> None:
        _check_positive_ints(self, ("epochs", "batch_size"), "train config", ConfigError)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"train config seed must be a non-negative integer, got {self.seed!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose one of: {', '.join(INITS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise ConfigError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.optimizer == "sgd_nesterov" and self.momentum == 0.0:
            raise ConfigError("sgd_nesterov needs momentum > 0 (torch refuses Nesterov without momentum)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.clip_value is not None and not self.clip_value > 0:
            raise ConfigError(f"clip_value must be > 0 or None, got {self.clip_value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (stored beside a model as its training provenance)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SequenceTrainConfig:
        """Rebuild from :meth:`to_dict`; an unknown key is a ConfigError naming the valid keys."""
        return _from_dict(cls, data, "train config", ConfigError)


#: The recipe of the seed article: seed 123, SGD with Nesterov momentum 0.9, learning rate 0.005,
#: Xavier init and element-wise gradient clipping at 0.5. Its "tanh LSTM" is the standard LSTM cell
#: (tanh on the cell input and output, sigmoid gates), which is what ``nn.LSTM`` computes, so no
#: setting is needed for it. Adjust epochs or batch size with ``dataclasses.replace``.
SEED_ARTICLE_PRESET = SequenceTrainConfig(
    seed=123,
    optimizer="sgd_nesterov",
    momentum=0.9,
    learning_rate=0.005,
    init="xavier",
    clip_value=0.5,
)


@dataclass
class SequenceTrainResult:
    """What training produced.

    Attributes:
        model: the network holding the best validation epoch's weights, in eval mode.
        state_dict: those weights on CPU (save them with safetensors).
        history: per epoch ``epoch``, ``train_loss``, ``val_loss``, ``seconds``, ``samples``.
        best_epoch: epoch (0-based) of ``state_dict``; -1 if no epoch ran.
        best_val_loss: its validation loss (mean cross-entropy).
    """

    model: nn.Module
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float


def _train(task: FitTask, model_cls: Callable[[Any], nn.Module], cfg: Any, train: LoopSettings,
           comm: Collective | None, checkpoint_dir: Path | None, resume: bool,
           init_state: dict[str, torch.Tensor] | None) -> SequenceTrainResult:
    """Run the shared loop, then rebuild the best epoch's network on this process's device."""
    result = fit(task, train, comm, checkpoint_dir, resume, init_state)
    model = model_cls(cfg)
    model.load_state_dict(result.state_dict)
    model.to(pick_device(train.device)).eval()
    return SequenceTrainResult(model, result.state_dict, result.history, result.best_epoch, result.best_val_loss)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------------
# DeepLog
# --------------------------------------------------------------------------------------------------


@dataclass
class DeepLogConfig:
    """Shape of a DeepLog model; stored with its weights to rebuild it.

    Attributes:
        vocab_size: number of ids, the reserved :data:`UNKNOWN_ID` and :data:`PAD_ID` included
            (:attr:`Vocabulary.size`).
        window: history length h: events the model sees before predicting the next one.
        embedding_dim: width of the template embeddings.
        hidden_size: LSTM width (64 in the DeepLog paper).
        num_layers: stacked LSTM layers (2 in the paper).
        top_g: an event outside the g most likely next templates is unexpected (9 in the paper);
            :func:`calibrate_top_g` chooses it on validation sessions.
        dropout: dropout between stacked LSTM layers (ignored by torch for one layer).
    """

    vocab_size: int
    window: int = 10
    embedding_dim: int = 16
    hidden_size: int = 64
    num_layers: int = 2
    top_g: int = 9
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_positive_ints(self, ("vocab_size", "window", "embedding_dim", "hidden_size", "num_layers", "top_g"),
                             "DeepLog config", ModelError)
        if self.vocab_size <= FIRST_TEMPLATE_ID:
            raise ModelError(f"DeepLog config vocab_size must exceed the {FIRST_TEMPLATE_ID} reserved ids "
                             f"(UNKNOWN, PAD), got {self.vocab_size}")
        _check_dropout(self.dropout, "DeepLog config")

    @property
    def n_templates(self) -> int:
        """Real templates, the candidates of a next-event prediction."""
        return self.vocab_size - FIRST_TEMPLATE_ID

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (checkpoints, bundles)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> DeepLogConfig:
        """Rebuild from :meth:`to_dict`; an unknown or missing key is a ModelError, never ignored."""
        return _from_dict(cls, data, "DeepLog config", ModelError)


class DeepLog(nn.Module):
    """Embedding -> LSTM -> linear to next-template logits over the whole vocabulary.

    The logits cover the reserved ids too; the scorer ignores them as candidates (PAD never
    happens, UNKNOWN is always unexpected) but the loss keeps them, so validation events with
    unseen templates still have a finite, large loss.
    """

    def __init__(self, cfg: DeepLogConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim, padding_idx=PAD_ID)
        dropout = cfg.dropout if cfg.num_layers > 1 else 0.0
        self.lstm = nn.LSTM(cfg.embedding_dim, cfg.hidden_size, cfg.num_layers, batch_first=True, dropout=dropout)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Histories ``x[B, window]`` (integer ids) to next-event logits ``[B, vocab_size]``."""
        out, _ = self.lstm(self.embedding(x))
        return self.output(out[:, -1])


def _ce_sums(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return F.cross_entropy(logits, y, reduction="sum"), torch.tensor(float(len(y)), device=logits.device)


@dataclass
class SessionRows:
    """Encoded sessions laid out for next-event training without materialising the windows.

    ``flat`` holds every session once, each preceded by ``window`` :data:`PAD_ID`; ``targets``
    are the flat positions of the real events. The history of the event at position ``p`` is
    ``flat[p - window : p]``, exactly the row :func:`next_event_windows` gives, at ``1/window``
    of its memory (an HDFS day of 11M events: 90 MB instead of 900 MB at ``window=10``).

    Attributes:
        flat: int64 ids, sessions separated by their padding.
        targets: int64 positions into ``flat``, session by session, in order.
        window: history length.
    """

    flat: np.ndarray
    targets: np.ndarray
    window: int

    @classmethod
    def build(cls, sessions: Sequence[Sequence[int]], window: int, vocab_size: int, what: str) -> SessionRows:
        """Lay out ``sessions`` (ids from the model's :class:`Vocabulary`).

        Raises:
            ModelError: an id outside ``[0, vocab_size)`` or the PAD id, or a bad ``window``.
        """
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ModelError(f"window must be a positive integer, got {window!r}")
        arrays = [np.asarray(s, dtype=np.int64).ravel() for s in sessions]
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        for k, ids in enumerate(arrays):
            if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size or (ids == PAD_ID).any()):
                raise ModelError(
                    f"{what} session {k} holds ids outside [0, {vocab_size}) or the PAD id {PAD_ID}; "
                    "encode sessions with the model's Vocabulary"
                )
        pad = np.full(window, PAD_ID, dtype=np.int64)
        flat = np.concatenate([part for ids in arrays for part in (pad, ids)]) if arrays else pad[:0]
        # Session k's events start after k+1 paddings and the events of sessions before it.
        starts = (np.arange(len(arrays), dtype=np.int64) + 1) * window + np.concatenate([[0], np.cumsum(lengths)[:-1]]) \
            if arrays else np.zeros(0, np.int64)
        targets = (np.repeat(starts, lengths) + _ranges(lengths)).astype(np.int64)
        return cls(flat, targets, window)

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, positions: np.ndarray) -> SessionRows:
        """Only the events at ``positions`` of :attr:`targets` (the flat ids stay shared)."""
        return SessionRows(self.flat, self.targets[positions], self.window)


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """``[0..l0), [0..l1), ...`` concatenated."""
    if len(lengths) == 0 or lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.arange(ends[-1], dtype=np.int64) - np.repeat(ends - lengths, lengths)


class NextEventTask(FitTask):
    """DeepLog's part of the loop: histories cut from :class:`SessionRows` predict the next id.

    Args:
        train_rows: all training events (every rank holds them; ``order`` deals them to ranks).
        val_rows: this rank's validation events.
        cfg: the model shape.
        order: ``epoch -> positions`` into ``train_rows``; by default this rank's shard of a
            seeded shuffle (:func:`loganomaly.training.loop.shard_indices`).
    """

    label = "deeplog"

    def __init__(self, train_rows: SessionRows, val_rows: SessionRows, cfg: DeepLogConfig,
                 order: Callable[[int], np.ndarray]) -> None:
        self.cfg = cfg
        self.order_fn = order
        self.offsets = torch.arange(-cfg.window, 0, dtype=torch.int64)
        self.train_flat, self.train_targets = torch.from_numpy(train_rows.flat), torch.from_numpy(train_rows.targets)
        self.val_flat, self.val_targets = torch.from_numpy(val_rows.flat), torch.from_numpy(val_rows.targets)

    def model_config(self) -> dict[str, Any]:
        # top_g is calibrated after training and plays no part in it: a resume must not depend on it.
        return {k: v for k, v in self.cfg.to_dict().items() if k != "top_g"}

    def build_model(self) -> nn.Module:
        return DeepLog(self.cfg)

    def order(self, epoch: int) -> np.ndarray:
        return self.order_fn(epoch)

    def to(self, device: torch.device) -> None:
        self.offsets = self.offsets.to(device)
        self.train_flat, self.train_targets = self.train_flat.to(device), self.train_targets.to(device)
        self.val_flat, self.val_targets = self.val_flat.to(device), self.val_targets.to(device)

    def _cut(self, flat: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return flat[targets.unsqueeze(1) + self.offsets], flat[targets]

    def train_batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._cut(self.train_flat, self.train_targets[positions])

    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.val_targets), batch_size):
            yield self._cut(self.val_flat, self.val_targets[start : start + batch_size])

    def loss_sums(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _ce_sums(output, target)


def train_deeplog(
    train_sessions: Sequence[Sequence[int]] | SessionRows,
    val_sessions: Sequence[Sequence[int]] | SessionRows,
    cfg: DeepLogConfig,
    train: LoopSettings | None = None,
    comm: Collective | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
) -> SequenceTrainResult:
    """Train DeepLog on normal sessions with cross-entropy and early stopping on validation loss.

    As one rank of a distributed run, every rank passes all sessions: each trains on its shard of
    the events (equal batch counts) and validates its share; the losses are summed over ranks.

    Args:
        train_sessions: encoded normal sessions (:meth:`Vocabulary.encode_many`), or already laid
            out as :class:`SessionRows` (what a distributed backend ships to its ranks).
        val_sessions: encoded normal sessions held out for early stopping (or their rows).
        cfg: model shape; ``vocab_size`` must be the vocabulary's size.
        train: optimiser, epochs, patience, seed, device (Adam by default).
        comm: the process group (by default from the environment; one process without one).
        checkpoint_dir, resume, init_state: as in :func:`loganomaly.training.loop.fit`.

    Raises:
        ModelError: no training or validation events, ids outside the vocabulary, fewer training
            events than ranks.
    """
    train = train or SequenceTrainConfig()
    comm = comm or default_collective()
    rows = train_sessions if isinstance(train_sessions, SessionRows) else \
        SessionRows.build(train_sessions, cfg.window, cfg.vocab_size, "training")
    val_rows = val_sessions if isinstance(val_sessions, SessionRows) else \
        SessionRows.build(val_sessions, cfg.window, cfg.vocab_size, "validation")
    if len(rows) < comm.world or len(val_rows) == 0:
        raise ModelError(f"DeepLog needs training and validation events (at least one training event per "
                         f"rank), got {len(rows)} and {len(val_rows)} on {comm.world} rank(s)")
    if comm.rank == 0:
        log.info("DeepLog: %d training and %d validation events on %d rank(s)", len(rows), len(val_rows), comm.world)
    n, rank, world, seed = len(rows), comm.rank, comm.world, train.seed

    def order(epoch: int) -> np.ndarray:
        return shard_indices(n, rank, world, epoch_seed(seed, epoch))

    share = val_rows.take(np.arange(rank, len(val_rows), world))
    task = NextEventTask(rows, share, cfg, order)
    return _train(task, DeepLog, cfg, train, comm, checkpoint_dir, resume, init_state)


@dataclass
class UnexpectedEvent:
    """One event DeepLog did not expect: the explanation of a flagged session.

    Attributes:
        position: 0-based index of the event in its session.
        event_id: its template id (:data:`UNKNOWN_ID` for a template unseen in training).
        reason: ``unknown_template`` or ``not_in_top_g``.
        rank: 0-based rank of the actual template among the predicted templates (0 = the most
            likely); ``None`` for an unknown template, which has no rank among them.
        nll: ``-log p(actual)`` under the model.
        expected: the top-g template ids the model predicted, most likely first.
    """

    position: int
    event_id: int
    reason: str
    rank: int | None
    nll: float
    expected: list[int] = field(default_factory=list)


@dataclass
class SessionScore:
    """DeepLog's verdict on one session.

    Attributes:
        n_events: events in the session (every one is predicted, see :func:`next_event_windows`).
        n_misses: events outside the top-g candidates, unknown templates included.
        max_nll: the largest ``-log p(actual next)`` over the session (0.0 for an empty session):
            a continuous score, thresholded with :func:`calibrate_nll_threshold`.
        anomalous: any miss (the DeepLog rule).
        unexpected: the missed events, in session order.
        max_rank: largest 0-based rank of a known event's actual template; the session has no
            miss for any ``top_g > max_rank`` (unless it holds unknown templates). -1 when it has
            no known event. Lets :func:`calibrate_top_g` choose g without rescoring.
        n_unknown: events with an unknown template.
    """

    n_events: int
    n_misses: int
    max_nll: float
    anomalous: bool
    unexpected: list[UnexpectedEvent]
    max_rank: int
    n_unknown: int


def score_sessions(
    model: DeepLog,
    sessions: Sequence[Sequence[int]],
    top_g: int | None = None,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> list[SessionScore]:
    """Judge every event of every session against the model's top-g next-template candidates.

    An event is unexpected when its template is unknown (always) or when its rank among the real
    templates' predicted probabilities is ``>= top_g``. Ranks count templates with a strictly
    higher logit, so a tie with the top candidate is not a miss.

    Args:
        model: a trained :class:`DeepLog` (put in eval mode here).
        sessions: encoded sessions.
        top_g: candidates per step; by default the model config's ``top_g``.
        batch_size: windows per forward pass.
        device: where to run; by default where the model's parameters are.

    Raises:
        ModelError: ids outside the vocabulary, or a ``top_g``/``batch_size`` below 1.
    """
    cfg = model.cfg
    g = cfg.top_g if top_g is None else top_g
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ModelError(f"top_g must be a positive integer, got {g!r}")
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}")
    device = device or _device_of(model)
    x, y, owner = _session_windows(sessions, cfg.window, cfg.vocab_size, "scored")
    ranks = np.zeros(len(y), dtype=np.int64)
    nll = np.zeros(len(y), dtype=np.float64)
    unknown = y == UNKNOWN_ID
    n_top = min(g, cfg.n_templates)
    # Candidates are kept for missed events only: for every event they would be N x g ids.
    expected: dict[int, list[int]] = {}
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(y), batch_size):
            xb = torch.from_numpy(x[start : start + batch_size]).to(device)
            yb = torch.from_numpy(y[start : start + batch_size]).to(device)
            logits = model(xb).float()
            nll[start : start + len(yb)] = (-F.log_softmax(logits, dim=1).gather(1, yb[:, None])[:, 0]).cpu().numpy()
            real = logits[:, FIRST_TEMPLATE_ID:]
            actual = logits.gather(1, yb[:, None])
            batch_ranks = (real > actual).sum(dim=1).cpu().numpy()
            ranks[start : start + len(yb)] = batch_ranks
            missed = np.flatnonzero((batch_ranks >= g) | unknown[start : start + len(yb)])
            if len(missed):
                top = real[torch.from_numpy(missed).to(device)].topk(n_top, dim=1).indices + FIRST_TEMPLATE_ID
                expected.update(zip((missed + start).tolist(), top.cpu().tolist(), strict=True))
    miss = unknown | (ranks >= g)
    bounds = np.searchsorted(owner, np.arange(len(sessions) + 1))
    scores = []
    for k in range(len(sessions)):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        unexpected = [
            UnexpectedEvent(
                position=int(i) - lo,
                event_id=int(y[i]),
                reason="unknown_template" if unknown[i] else "not_in_top_g",
                rank=None if unknown[i] else int(ranks[i]),
                nll=float(nll[i]),
                expected=expected[int(i)],
            )
            for i in np.flatnonzero(miss[lo:hi]) + lo
        ]
        known = ranks[lo:hi][~unknown[lo:hi]]
        scores.append(SessionScore(
            n_events=hi - lo,
            n_misses=len(unexpected),
            max_nll=float(nll[lo:hi].max()) if hi > lo else 0.0,
            anomalous=bool(unexpected),
            unexpected=unexpected,
            max_rank=int(known.max()) if len(known) else -1,
            n_unknown=int(unknown[lo:hi].sum()),
        ))
    flagged = sum(s.anomalous for s in scores)
    log.info("DeepLog scored %d sessions (%d events) at top_g %d: %d anomalous", len(sessions), len(y), g, flagged)
    return scores


def calibrate_top_g(val_scores: Sequence[SessionScore], target_fpr: float, max_g: int | None = None) -> int:
    """The smallest g whose false-positive rate on validation normal sessions is ``<= target_fpr``.

    Works from any :func:`score_sessions` output (``max_rank`` does not depend on the g it was
    scored with): at g a session is flagged when it holds an unknown template or ``max_rank >= g``.
    A smaller g catches more anomalies, so the smallest acceptable one is chosen.

    Args:
        val_scores: scores of validation sessions known to be normal.
        target_fpr: largest acceptable fraction of flagged normal sessions, in [0, 1).
        max_g: upper bound of the search (by default the largest rank seen plus one, where no
            known event is missed).

    Returns:
        The chosen g. When unknown templates alone flag more than ``target_fpr`` of the sessions, no
        g can meet the target; the g that misses no known event is returned and a warning logged.

    Raises:
        ModelError: no scores, or a target outside [0, 1).
    """
    if not val_scores:
        raise ModelError("no validation sessions to calibrate top_g on")
    if not 0.0 <= target_fpr < 1.0:
        raise ModelError(f"target false-positive rate must be in [0, 1), got {target_fpr}")
    max_rank = np.array([s.max_rank for s in val_scores])
    has_unknown = np.array([s.n_unknown > 0 for s in val_scores])
    upper = int(max_rank.max()) + 1 if max_g is None else max_g
    upper = max(upper, 1)
    for g in range(1, upper + 1):
        fpr = float(np.mean(has_unknown | (max_rank >= g)))
        if fpr <= target_fpr:
            log.info("calibrated top_g %d: false-positive rate %.4f on %d validation sessions (target %.4f)",
                     g, fpr, len(val_scores), target_fpr)
            return g
    log.warning("no top_g up to %d meets false-positive rate %.4f on validation (%.4f of sessions hold unknown "
                "templates, %.4f at g=%d); using g=%d", upper, target_fpr, float(has_unknown.mean()), fpr,
                upper, upper)
    return upper


def calibrate_nll_threshold(val_scores: Sequence[SessionScore], quantile: float) -> float:
    """Threshold of the continuous score ``max_nll``: its ``quantile`` over validation normal sessions.

    The alternative to the top-g rule when a ranking (ROC/PR curves) or a tunable alarm rate is
    wanted; sessions with ``max_nll`` above it are anomalous.

    Raises:
        ModelError: no scores, non-finite scores or a quantile outside (0, 1).
    """
    values = np.array([s.max_nll for s in val_scores], dtype=np.float64)
    if values.size == 0:
        raise ModelError("no validation sessions to calibrate a threshold on")
    if not np.isfinite(values).all():
        raise ModelError("validation max_nll values contain NaN or infinity")
    if not 0.0 < quantile < 1.0:
        raise ModelError(f"threshold quantile must be in (0, 1), got {quantile}")
    return float(np.quantile(values, quantile))


# --------------------------------------------------------------------------------------------------
# Supervised LSTM classifier
# --------------------------------------------------------------------------------------------------


@dataclass
class ClassifierConfig:
    """Shape of an :class:`LSTMClassifier`; stored with its weights to rebuild it.

    Attributes:
        n_features: F, per-step features of a window.
        n_classes: C, output classes (2 for normal/anomalous).
        hidden_size: LSTM width.
        num_layers: stacked LSTM layers.
        dropout: dropout between stacked layers (ignored by torch for one layer).
        bidirectional: read windows in both directions (the seed article's model is not).
    """

    n_features: int
    n_classes: int
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False

    def __post_init__(self) -> None:
        _check_positive_ints(self, ("n_features", "n_classes", "hidden_size", "num_layers"),
                             "classifier config", ModelError)
        if self.n_classes < 2:
            raise ModelError(f"classifier config n_classes must be >= 2, got {self.n_classes}")
        _check_dropout(self.dropout, "classifier config")
        if not isinstance(self.bidirectional, bool):
            raise ModelError(f"classifier config bidirectional must be a boolean, got {self.bidirectional!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (checkpoints, bundles)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ClassifierConfig:
        """Rebuild from :meth:`to_dict`; an unknown or missing key is a ModelError, never ignored."""
        return _from_dict(cls, data, "classifier config", ModelError)


class LSTMClassifier(nn.Module):
    """LSTM over ``[B, T, F]`` -> last hidden state (both directions if bidirectional) -> linear to logits.

    The cell is the standard LSTM: sigmoid gates, tanh on the candidate cell state and on the
    output, i.e. the "tanh LSTM" of the seed article.
    """

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dropout = cfg.dropout if cfg.num_layers > 1 else 0.0
        self.lstm = nn.LSTM(cfg.n_features, cfg.hidden_size, cfg.num_layers, batch_first=True, dropout=dropout,
                            bidirectional=cfg.bidirectional)
        directions = 2 if cfg.bidirectional else 1
        self.output = nn.Linear(cfg.hidden_size * directions, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Windows ``x[B, T, F]`` to class logits ``[B, C]``."""
        _, (h, _) = self.lstm(x)
        # h is [layers * directions, B, H]; the last layer's directions are its last rows.
        last = torch.cat([h[-2], h[-1]], dim=1) if self.cfg.bidirectional else h[-1]
        return self.output(last)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> list[float]:
    """``n / (C * count_c)`` per class, so every class weighs as much in the loss as a balanced set.

    A class absent from ``y`` gets weight 1.0 (it contributes no loss anyway).
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)[:n_classes]
    n = float(counts.sum())
    return [n / (n_classes * c) if c else 1.0 for c in counts]


def _check_labelled(x: np.ndarray, y: np.ndarray, cfg: ClassifierConfig, what: str) -> None:
    if x.ndim != 3 or x.shape[2] != cfg.n_features:
        raise ModelError(f"{what} windows have shape {x.shape}; expected [N, T, {cfg.n_features}]")
    if len(x) == 0 or len(x) != len(y):
        raise ModelError(f"{what} needs as many labels as windows (> 0), got {len(x)} windows, {len(y)} labels")
    if not np.isfinite(x).all():
        raise ModelError(f"{what} windows contain NaN or infinite values")
    if y.min() < 0 or y.max() >= cfg.n_classes:
        raise ModelError(f"{what} labels must be in [0, {cfg.n_classes}), got [{y.min()}, {y.max()}]")


class ClassifierTask(TensorTask):
    """The classifier's part of the loop: windows ``[N, T, F]`` to classes, weighted cross-entropy."""

    label = "classifier"

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, order: Callable[[int], np.ndarray],
                 val_x: np.ndarray, val_y: np.ndarray, cfg: ClassifierConfig,
                 class_weights: Sequence[float] | None) -> None:
        super().__init__(_float_tensor(train_x), order, _float_tensor(val_x),
                         torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
                         torch.from_numpy(np.asarray(val_y, dtype=np.int64)))
        self.cfg = cfg
        self.weights = None if class_weights is None else torch.tensor([float(w) for w in class_weights])

    def model_config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def build_model(self) -> nn.Module:
        return LSTMClassifier(self.cfg)

    def to(self, device: torch.device) -> None:
        super().to(device)
        if self.weights is not None:
            self.weights = self.weights.to(device)

    def loss_sums(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Weighted sum and the sum of the weights: the same mean as F.cross_entropy(weight=...).
        total = F.cross_entropy(output, target, weight=self.weights, reduction="sum")
        if self.weights is None:
            return total, torch.tensor(float(len(target)), device=output.device)
        return total, self.weights[target].sum()


def train_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: ClassifierConfig,
    train: LoopSettings | None = None,
    class_weights: Sequence[float] | Literal["balanced"] | None = None,
    comm: Collective | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
) -> SequenceTrainResult:
    """Train the classifier with cross-entropy and early stopping on validation loss.

    As one rank of a distributed run, every rank passes all windows and trains on its shard.

    Args:
        train_x: normalised training windows ``[N, T, F]``.
        train_y: their classes ``[N]`` in ``[0, n_classes)``.
        val_x, val_y: held-out windows and classes for early stopping.
        cfg: model shape.
        train: optimiser and schedule; :data:`SEED_ARTICLE_PRESET` for the seed article's recipe.
        class_weights: per-class loss weights against imbalance (anomalies are rare), ``balanced``
            for :func:`balanced_class_weights` of the training labels, or ``None``. The
            validation loss uses the same weights, so early stopping judges what is optimised.
        comm: the process group (by default from the environment; one process without one).
        checkpoint_dir, resume, init_state: as in :func:`loganomaly.training.loop.fit`.

    Raises:
        ModelError: empty, mis-shaped or non-finite data, labels outside the classes, or a wrong
            number of class weights.
    """
    train = train or SequenceTrainConfig()
    comm = comm or default_collective()
    train_y = np.asarray(train_y, dtype=np.int64)
    val_y = np.asarray(val_y, dtype=np.int64)
    _check_labelled(train_x, train_y, cfg, "training")
    _check_labelled(val_x, val_y, cfg, "validation")
    weights = balanced_class_weights(train_y, cfg.n_classes) if class_weights == "balanced" else class_weights
    if weights is not None and len(weights) != cfg.n_classes:
        raise ModelError(f"{len(weights)} class weights for {cfg.n_classes} classes")
    if comm.rank == 0:
        counts = np.bincount(train_y, minlength=cfg.n_classes).tolist()
        log.info("classifier: class counts in training %s, class weights %s", counts, weights)
    n, rank, world, seed = len(train_x), comm.rank, comm.world, train.seed

    def order(epoch: int) -> np.ndarray:
        return shard_indices(n, rank, world, epoch_seed(seed, epoch))

    task = ClassifierTask(train_x, train_y, order, val_x[rank::world], val_y[rank::world], cfg,
                          None if weights is None else list(weights))
    return _train(task, LSTMClassifier, cfg, train, comm, checkpoint_dir, resume, init_state)


def _float_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def classifier_probabilities(
    model: LSTMClassifier, x: np.ndarray, batch_size: int = 1024, device: torch.device | None = None
) -> np.ndarray:
    """Class probabilities ``[N, C]`` (float64) of windows ``x[N, T, F]``, computed in batches.

    The probability of the anomalous class is the score to threshold or rank.
    """
    if x.ndim != 3 or x.shape[2] != model.cfg.n_features:
        raise ModelError(f"windows have shape {x.shape}; expected [N, T, {model.cfg.n_features}]")
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}")
    device = device or _device_of(model)
    out: list[np.ndarray] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)).to(device)
            out.append(torch.softmax(model(xb).float(), dim=1).cpu().numpy())
    if not out:
        return np.zeros((0, model.cfg.n_classes), dtype=np.float64)
    return np.concatenate(out).astype(np.float64)
