"""DeepLog's vocabulary and the next-event windows of a session (no torch model, no Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from loganomaly.errors import ModelError
from loganomaly.models.vocabulary import PAD_ID, UNKNOWN_ID, Vocabulary, next_event_windows

# ---------------------------------------------------------------------------------------- windows


def test_next_event_windows_pads_the_start_and_predicts_every_event() -> None:
    x, y = next_event_windows([5, 6, 7, 8], window=2)
    assert x.tolist() == [[PAD_ID, PAD_ID], [PAD_ID, 5], [5, 6], [6, 7]]
    assert y.tolist() == [5, 6, 7, 8]
    assert x.dtype == np.int64


def test_next_event_windows_empty_and_invalid() -> None:
    x, y = next_event_windows([], window=3)
    assert x.shape == (0, 3) and y.shape == (0,)
    with pytest.raises(ModelError, match="window"):
        next_event_windows([2, 3], window=0)


# ------------------------------------------------------------------------------------- vocabulary


def test_vocabulary_maps_unseen_templates_to_unknown() -> None:
    vocab = Vocabulary.fit([["b", "a"], ["c", "a"]])
    assert vocab.templates == ["a", "b", "c"]  # sorted: independent of session order
    assert vocab.size == 5  # UNKNOWN, PAD and three templates
    assert vocab.encode(["a", "zzz", "c"]) == [2, UNKNOWN_ID, 4]
    assert vocab.decode([2, UNKNOWN_ID, PAD_ID]) == ["a", "<UNKNOWN>", "<PAD>"]
    with pytest.raises(ModelError, match="outside"):
        vocab.decode([9])


def test_vocabulary_min_count_and_round_trip() -> None:
    vocab = Vocabulary.fit([["a", "a", "b"]], min_count=2)
    assert vocab.templates == ["a"]
    assert vocab.encode(["b"]) == [UNKNOWN_ID]
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab


def test_vocabulary_min_support_counts_sessions_not_events() -> None:
    sessions = [["A", "B"]] * 18 + [["A", "C", "C", "C", "C", "C"]] * 1 + [["A", "D"]] * 2
    # C: 5 events but 1 of 21 sessions; D: 2 of 21 sessions (about 9.5 %)
    assert Vocabulary.fit(sessions, min_support=0.05).templates == ["A", "B", "D"]
    assert Vocabulary.fit(sessions, min_support=0.1).templates == ["A", "B"]
    assert Vocabulary.fit(sessions).templates == ["A", "B", "C", "D"]
    with pytest.raises(ModelError):
        Vocabulary.fit(sessions, min_support=1.0)


def test_vocabulary_from_dict_refuses_bad_input() -> None:
    with pytest.raises(ModelError, match="unknown vocabulary keys"):
        Vocabulary.from_dict({"templates": ["a"], "extra": 1})
    with pytest.raises(ModelError, match="unique"):
        Vocabulary.from_dict({"templates": ["a", "a"]})
    with pytest.raises(ModelError, match="templates"):
        Vocabulary.from_dict({})
