"""DeepLog's network, its next-event rows and its scoring, on tiny synthetic sessions (CPU, no Spark)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from loganomaly.errors import ModelError
from loganomaly.models.nextevent import (
    DeepLog,
    DeepLogConfig,
    NextEventTask,
    SessionRows,
    SessionScore,
    calibrate_nll_threshold,
    calibrate_top_g,
    score_sessions,
)
from loganomaly.models.vocabulary import PAD_ID, UNKNOWN_ID, Vocabulary, next_event_windows
from tests.models.fitting import fit_deeplog, sequence_settings, trained

pytestmark = pytest.mark.usefixtures("one_thread")

CYCLE = "ABCD"


def cyclic_session(n: int) -> list[str]:
    """A B C D A B C D ...: every next event is determined by the previous one."""
    return [CYCLE[i % len(CYCLE)] for i in range(n)]


def tiny_deeplog_cfg(vocab: Vocabulary) -> DeepLogConfig:
    return DeepLogConfig(vocab_size=vocab.size, window=4, embedding_dim=8, hidden_size=16, num_layers=1, top_g=1)


FAST = sequence_settings(epochs=30, batch_size=32, learning_rate=0.02, patience=5, device="cpu")


@pytest.fixture(scope="module")
def deeplog(one_thread) -> tuple[DeepLog, Vocabulary, list[list[str]]]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    train = [cyclic_session(int(rng.integers(8, 20))) for _ in range(40)]
    val = [cyclic_session(int(rng.integers(8, 20))) for _ in range(10)]
    vocab = Vocabulary.fit(train)
    cfg = tiny_deeplog_cfg(vocab)
    result = fit_deeplog(vocab.encode_many(train), vocab.encode_many(val), cfg, FAST)
    assert result.best_epoch >= 0 and result.history
    model = trained(cfg, result)
    assert isinstance(model, DeepLog)
    return model, vocab, val


# ---------------------------------------------------------------------------------------- config


def test_deeplog_config_round_trip_and_refusals() -> None:
    cfg = DeepLogConfig(vocab_size=7, window=5, top_g=3)
    assert DeepLogConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.n_templates == 5
    with pytest.raises(ModelError, match="unknown DeepLog config keys"):
        DeepLogConfig.from_dict({**cfg.to_dict(), "bidirectional": True})
    with pytest.raises(ModelError, match="incomplete"):
        DeepLogConfig.from_dict({"window": 5})
    with pytest.raises(ModelError, match="reserved"):
        DeepLogConfig(vocab_size=2)
    with pytest.raises(ModelError, match="top_g"):
        DeepLogConfig(vocab_size=7, top_g=0)
    with pytest.raises(ModelError, match="dropout"):
        DeepLogConfig(vocab_size=7, dropout=1.0)


# ---------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("top_g", [1, 2])
def test_deeplog_normal_sessions_have_no_misses(deeplog, top_g: int) -> None:  # type: ignore[no-untyped-def]
    model, vocab, val = deeplog
    scores = score_sessions(model, vocab.encode_many(val), top_g=top_g)
    assert [s.n_misses for s in scores] == [0] * len(val)
    assert not any(s.anomalous for s in scores)
    assert all(s.n_events == len(v) for s, v in zip(scores, val, strict=True))
    assert all(s.max_rank == 0 for s in scores)


def test_deeplog_flags_a_swapped_event_at_its_position(deeplog) -> None:  # type: ignore[no-untyped-def]
    model, vocab, _ = deeplog
    swapped = list("ABCDACBDABCD")  # positions 5 and 6 swapped
    [score] = score_sessions(model, [vocab.encode(swapped)], top_g=1)
    assert score.anomalous
    first = score.unexpected[0]
    assert first.position == 5
    assert first.event_id == vocab.id_of("C")
    assert first.reason == "not_in_top_g"
    assert first.rank is not None and first.rank >= 1
    assert first.expected == [vocab.id_of("B")]
    assert score.max_nll >= first.nll > 0
    # After the swap the grammar resumes; nothing later than position 7 is unexpected.
    assert all(e.position <= 7 for e in score.unexpected)


def test_deeplog_unknown_template_is_always_unexpected(deeplog) -> None:  # type: ignore[no-untyped-def]
    model, vocab, _ = deeplog
    session = vocab.encode(list("ABCXABCD"))
    assert session[3] == UNKNOWN_ID
    # With g = every template no known event can miss, but the unknown one still does.
    [score] = score_sessions(model, [session], top_g=model.cfg.n_templates)
    assert score.anomalous and score.n_unknown == 1
    assert [(e.position, e.reason, e.rank) for e in score.unexpected] == [(3, "unknown_template", None)]


def test_score_sessions_refuses_ids_outside_the_vocabulary(deeplog) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = deeplog
    with pytest.raises(ModelError, match="Vocabulary"):
        score_sessions(model, [[2, 3, 99]])
    with pytest.raises(ModelError, match="PAD"):
        score_sessions(model, [[2, PAD_ID]])
    with pytest.raises(ModelError, match="top_g"):
        score_sessions(model, [[2, 3]], top_g=0)


def test_score_sessions_handles_empty_sessions(deeplog) -> None:  # type: ignore[no-untyped-def]
    model, vocab, _ = deeplog
    scores = score_sessions(model, [[], vocab.encode(list("ABCD")), []])
    assert [s.n_events for s in scores] == [0, 4, 0]
    assert scores[0].max_nll == 0.0 and not scores[0].anomalous and scores[0].max_rank == -1


def _score(max_rank: int, n_unknown: int = 0, max_nll: float = 0.0) -> SessionScore:
    return SessionScore(n_events=5, n_misses=0, max_nll=max_nll, anomalous=False, unexpected=[],
                        max_rank=max_rank, n_unknown=n_unknown)


def test_calibrate_top_g_picks_the_smallest_g_meeting_the_target(deeplog, caplog) -> None:  # type: ignore[no-untyped-def]
    scores = [_score(0), _score(0), _score(1), _score(3)]
    assert calibrate_top_g(scores, target_fpr=0.5) == 1  # g=1 flags 2/4
    assert calibrate_top_g(scores, target_fpr=0.4) == 2  # g=2 flags 1/4
    assert calibrate_top_g(scores, target_fpr=0.25) == 2
    assert calibrate_top_g(scores, target_fpr=0.0) == 4
    # Unknown templates flag a session whatever g is: the target cannot be met, a warning says so.
    with caplog.at_level(logging.WARNING, logger="loganomaly.models.nextevent"):
        assert calibrate_top_g([_score(0, n_unknown=1), _score(1)], target_fpr=0.0) == 2
    assert "no top_g" in caplog.text
    # On the trained model's normal validation sessions, g = 1 already has no false positive.
    model, vocab, val = deeplog
    assert calibrate_top_g(score_sessions(model, vocab.encode_many(val), top_g=5), target_fpr=0.0) == 1
    with pytest.raises(ModelError):
        calibrate_top_g([], target_fpr=0.1)


def test_calibrate_nll_threshold_is_a_quantile() -> None:
    scores = [_score(0, max_nll=v) for v in (1.0, 2.0, 3.0, 4.0, 5.0)]
    assert calibrate_nll_threshold(scores, 0.5) == pytest.approx(3.0)
    assert calibrate_nll_threshold(scores, 0.75) == pytest.approx(4.0)
    with pytest.raises(ModelError, match="quantile"):
        calibrate_nll_threshold(scores, 1.0)


# ---------------------------------------------------------------------------------------- rows


def test_session_rows_cut_the_same_windows_as_next_event_windows() -> None:
    sessions = [[5, 6, 7], [], [8], [2, 3, 4, 5, 6, 2]]
    rows = SessionRows.build(sessions, window=3, vocab_size=9, what="test")
    expected = [next_event_windows(s, 3) for s in sessions]
    want_x = np.concatenate([x for x, _ in expected])
    want_y = np.concatenate([y for _, y in expected])
    assert len(rows) == len(want_y) == 10
    cfg = DeepLogConfig(vocab_size=9, window=3)
    task = NextEventTask(rows, rows.take(np.arange(0, 10, 2)), cfg, lambda epoch: np.arange(10))
    x, y = task.train_batch(torch.arange(10))
    assert x.tolist() == want_x.tolist() and y.tolist() == want_y.tolist()
    (vx, vy), = task.val_batches(100)
    assert vx.tolist() == want_x[::2].tolist() and vy.tolist() == want_y[::2].tolist()
    with pytest.raises(ModelError, match="PAD id"):
        SessionRows.build([[5, PAD_ID]], window=3, vocab_size=9, what="test")
    with pytest.raises(ModelError, match="outside"):
        SessionRows.build([[9]], window=3, vocab_size=9, what="test")
