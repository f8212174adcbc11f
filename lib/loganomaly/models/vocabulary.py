"""Template ids to model ids for DeepLog, and the next-event windows of a session.

Reserved ids come first: :data:`UNKNOWN_ID` (a template unseen in training, always unexpected) and
:data:`PAD_ID` (history before a session's first event), then the training templates in sorted
order, so fitting the same templates gives the same ids whatever order sessions come in.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from loganomaly.errors import ModelError

log = logging.getLogger(__name__)

__all__ = ["END_TOKEN", "FIRST_TEMPLATE_ID", "PAD_ID", "UNKNOWN_ID", "Vocabulary", "next_event_windows",
           "session_windows", "with_end"]

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


def session_windows(sessions: Sequence[Sequence[int]], window: int, vocab_size: int,
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
