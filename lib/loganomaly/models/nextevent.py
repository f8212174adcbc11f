"""DeepLog's network and its part of the training loop (Du et al., CCS 2017).

DeepLog learns, from normal sessions only, which template usually comes next after the last
``window`` templates. At scoring time an event whose template is not among the ``top_g`` most
likely candidates is unexpected, and a session with any unexpected event is anomalous. The
unexpected events themselves (position, template, how unlikely it was) are the explanation an
operator reads. Training keeps every session once in a flat id array (:class:`SessionRows`) and
cuts each history from it at batch time, so the windows (``window`` times the events) are never
materialised. The model kind around it is :mod:`loganomaly.models.deeplog`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from loganomaly.errors import ModelError
from loganomaly.models.common import check_dropout, check_positive_ints, inference_autocast, strict_from_dict
from loganomaly.models.task import FitTask
from loganomaly.models.vocabulary import FIRST_TEMPLATE_ID, PAD_ID, UNKNOWN_ID, session_windows

log = logging.getLogger(__name__)

__all__ = ["DeepLog", "DeepLogConfig", "NextEventTask", "SessionRows", "SessionScore", "UnexpectedEvent",
           "calibrate_nll_threshold", "calibrate_top_g", "score_sessions"]


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

    #: ``kind`` of the bundle this model is saved in.
    bundle_kind: ClassVar[str] = "deeplog"

    def __post_init__(self) -> None:
        check_positive_ints(self, ("vocab_size", "window", "embedding_dim", "hidden_size", "num_layers", "top_g"),
                            "DeepLog config")
        if self.vocab_size <= FIRST_TEMPLATE_ID:
            raise ModelError(f"DeepLog config vocab_size must exceed the {FIRST_TEMPLATE_ID} reserved ids "
                             f"(UNKNOWN, PAD), got {self.vocab_size}")
        check_dropout(self.dropout, "DeepLog config")

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
        return strict_from_dict(cls, data, "DeepLog config")

    def build(self) -> DeepLog:
        """A freshly initialised network of this shape."""
        return DeepLog(self)


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
            seeded shuffle (:func:`loganomaly.runtime.collective.shard_indices`).
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
    bf16: bool = False,
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
        bf16: autocast the forward pass (CUDA only; float32 elsewhere).

    Raises:
        ModelError: ids outside the vocabulary, or a ``top_g``/``batch_size`` below 1.
    """
    cfg = model.cfg
    g = cfg.top_g if top_g is None else top_g
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ModelError(f"top_g must be a positive integer, got {g!r}")
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1, got {batch_size}")
    device = device or next(model.parameters()).device
    x, y, owner = session_windows(sessions, cfg.window, cfg.vocab_size, "scored")
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
            with inference_autocast(device, bf16):
                logits = model(xb)
            logits = logits.float()
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
