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

Both models train here in a single process, on whatever :func:`loganomaly.model.pick_device`
chooses at run time; both are small enough (DeepLog trains at about 10k windows/s on two CPU cores)
that the DDP machinery of :mod:`loganomaly.training` is not needed. Every run is seeded: the same
seed and data give identical weights. bf16 autocast is applied on CUDA only, because an LSTM under
CPU bf16 autocast fails in oneDNN on CPUs without bf16 instructions.

Weights are plain ``state_dict`` tensors (save them with safetensors) and configs and vocabularies
are JSON-ready dicts; nothing here pickles.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from loganomaly.errors import ConfigError, ModelError
from loganomaly.model import DEVICES, pick_device

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

#: Optimisers :class:`SequenceTrainConfig` accepts.
OPTIMIZERS = ("adam", "sgd_nesterov")
#: Weight initialisations :class:`SequenceTrainConfig` accepts.
INITS = ("default", "xavier")
#: Smallest drop of the validation loss that counts as an improvement (float noise is not one).
MIN_IMPROVEMENT = 1e-7

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
        device: ``auto``, ``cpu`` or ``cuda`` (see :func:`loganomaly.model.pick_device`).
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


def init_weights(model: nn.Module, init: str) -> None:
    """Re-initialise ``model`` in place: ``xavier`` gives Xavier-uniform weights and zero biases.

    Xavier keeps early pre-activations away from tanh/sigmoid saturation, which the seed article's
    slow SGD schedule depends on. Embedding tables keep their normal init (Xavier on a
    vocabulary-sized table makes the vectors tiny), and a padding row stays zero.
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    if init == "default":
        return
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.dim() >= 2:
                nn.init.xavier_uniform_(param)
            elif "bias" in name:
                nn.init.zeros_(param)


def build_optimizer(model: nn.Module, train: SequenceTrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``train.optimizer`` names, over all of ``model``'s parameters."""
    if train.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    if train.optimizer == "sgd_nesterov":
        return torch.optim.SGD(model.parameters(), lr=train.learning_rate, momentum=train.momentum,
                               nesterov=True, weight_decay=train.weight_decay)
    raise ConfigError(f"unknown optimizer {train.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


LossSums = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _fit(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    loss_sums: LossSums,
    train: SequenceTrainConfig,
    device: torch.device,
    label: str,
) -> SequenceTrainResult:
    """The loop both models share: seeded batch order, clipping, early stopping on validation loss.

    ``loss_sums(logits, y)`` returns (sum of per-sample losses, their total weight), so the batch
    loss and the validation loss are both exact weighted means, whatever the batch sizes. Data stay
    on the CPU and move one batch at a time: DeepLog windows of a big log do not fit a GPU at once.
    """
    autocast = train.bf16 and device.type == "cuda"
    if train.bf16 and not autocast:
        log.warning("bf16 autocast is for CUDA only; training %s in float32 on %s", label, device)
    optimiser = build_optimizer(model, train)
    # Own generator: the batch order must not depend on what else consumed the global RNG.
    order_rng = torch.Generator().manual_seed(train.seed)
    n = len(train_x)
    best_val, best_epoch, stale = math.inf, -1, 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    log.info("training %s on %s: %d training and %d validation samples, optimizer %s, lr %g",
             label, device, n, len(val_x), train.optimizer, train.learning_rate)
    for epoch in range(train.epochs):
        started = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=order_rng)
        total = torch.zeros((), dtype=torch.float64, device=device)
        weight = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n, train.batch_size):
            idx = perm[start : start + train.batch_size]
            xb, yb = train_x[idx].to(device, non_blocking=True), train_y[idx].to(device, non_blocking=True)
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                logits = model(xb)
            loss_sum, w = loss_sums(logits.float(), yb)
            (loss_sum / w.clamp_min(1e-12)).backward()
            if train.clip_value is not None:
                torch.nn.utils.clip_grad_value_(model.parameters(), train.clip_value)
            optimiser.step()
            # Accumulated on the device: a float() per batch would synchronise a GPU every step.
            total += loss_sum.detach().double()
            weight += w.detach().double()
        train_loss = float(total) / max(float(weight), 1e-12)
        val_loss = _val_loss(model, val_x, val_y, loss_sums, train.batch_size * 4, device, autocast)
        if not math.isfinite(val_loss):
            raise ModelError(f"{label}: validation loss is {val_loss} at epoch {epoch}; lower the learning rate")
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                  "seconds": time.perf_counter() - started, "samples": n}
        history.append(record)
        improved = val_loss < best_val - MIN_IMPROVEMENT
        if improved:
            best_val, best_epoch, stale = val_loss, epoch, 0
            best_state = _cpu_state(model)
        else:
            stale += 1
        log.info("%s epoch %d train_loss %.5f val_loss %.5f (%.2fs)%s", label, epoch, train_loss, val_loss,
                 record["seconds"], " best" if improved else "")
        if 0 < train.patience <= stale:
            log.info("%s: early stop at epoch %d, no improvement for %d epochs (best epoch %d, val_loss %.5f)",
                     label, epoch, stale, best_epoch, best_val)
            break
    if best_state is None:
        best_state = _cpu_state(model)
    model.load_state_dict(best_state)
    model.eval()
    return SequenceTrainResult(model, best_state, history, best_epoch, best_val)


def _val_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_sums: LossSums, batch_size: int,
              device: torch.device, autocast: bool) -> float:
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    weight = torch.zeros((), dtype=torch.float64, device=device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
            loss_sum, w = loss_sums(model(xb).float(), yb)
            total += loss_sum.double()
            weight += w.double()
    return float(total) / max(float(weight), 1e-12)


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


def train_deeplog(
    train_sessions: Sequence[Sequence[int]],
    val_sessions: Sequence[Sequence[int]],
    cfg: DeepLogConfig,
    train: SequenceTrainConfig | None = None,
) -> SequenceTrainResult:
    """Train DeepLog on normal sessions with cross-entropy and early stopping on validation loss.

    Args:
        train_sessions: encoded normal sessions (:meth:`Vocabulary.encode_many`).
        val_sessions: encoded normal sessions held out for early stopping.
        cfg: model shape; ``vocab_size`` must be the vocabulary's size.
        train: optimiser, epochs, patience, seed, device (Adam by default).

    Raises:
        ModelError: no training or validation windows, or ids outside the vocabulary.
    """
    train = train or SequenceTrainConfig()
    x, y, _ = _session_windows(train_sessions, cfg.window, cfg.vocab_size, "training")
    vx, vy, _ = _session_windows(val_sessions, cfg.window, cfg.vocab_size, "validation")
    if len(y) == 0 or len(vy) == 0:
        raise ModelError(f"DeepLog needs training and validation events, got {len(y)} and {len(vy)}")
    device = pick_device(train.device)
    torch.manual_seed(train.seed)
    model = DeepLog(cfg)
    init_weights(model, train.init)
    model.to(device)
    log.info("DeepLog: %d training and %d validation sessions", len(train_sessions), len(val_sessions))
    return _fit(model, torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(vx), torch.from_numpy(vy),
                _ce_sums, train, device, "deeplog")


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


def train_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: ClassifierConfig,
    train: SequenceTrainConfig | None = None,
    class_weights: Sequence[float] | Literal["balanced"] | None = None,
) -> SequenceTrainResult:
    """Train the classifier with cross-entropy and early stopping on validation loss.

    Args:
        train_x: normalised training windows ``[N, T, F]``.
        train_y: their classes ``[N]`` in ``[0, n_classes)``.
        val_x, val_y: held-out windows and classes for early stopping.
        cfg: model shape.
        train: optimiser and schedule; :data:`SEED_ARTICLE_PRESET` for the seed article's recipe.
        class_weights: per-class loss weights against imbalance (anomalies are rare), ``balanced``
            for :func:`balanced_class_weights` of the training labels, or ``None``. The
            validation loss uses the same weights, so early stopping judges what is optimised.

    Raises:
        ModelError: empty, mis-shaped or non-finite data, labels outside the classes, or a wrong
            number of class weights.
    """
    train = train or SequenceTrainConfig()
    train_y = np.asarray(train_y, dtype=np.int64)
    val_y = np.asarray(val_y, dtype=np.int64)
    _check_labelled(train_x, train_y, cfg, "training")
    _check_labelled(val_x, val_y, cfg, "validation")
    weights = balanced_class_weights(train_y, cfg.n_classes) if class_weights == "balanced" else class_weights
    if weights is not None and len(weights) != cfg.n_classes:
        raise ModelError(f"{len(weights)} class weights for {cfg.n_classes} classes")
    device = pick_device(train.device)
    weight_t = None if weights is None else torch.tensor([float(w) for w in weights], device=device)

    def loss_sums(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Weighted sum and the sum of the weights: the same mean as F.cross_entropy(weight=...).
        total = F.cross_entropy(logits, y, weight=weight_t, reduction="sum")
        if weight_t is None:
            return total, torch.tensor(float(len(y)), device=logits.device)
        return total, weight_t[y].sum()

    torch.manual_seed(train.seed)
    model = LSTMClassifier(cfg)
    init_weights(model, train.init)
    model.to(device)
    counts = np.bincount(train_y, minlength=cfg.n_classes).tolist()
    log.info("classifier: class counts in training %s, class weights %s", counts, weights)
    return _fit(model, _float_tensor(train_x), torch.from_numpy(train_y), _float_tensor(val_x),
                torch.from_numpy(val_y), loss_sums, train, device, "classifier")


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
