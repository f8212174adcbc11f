"""DeepLog and the supervised LSTM classifier on tiny synthetic sessions and windows (CPU, no Spark)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from loganomaly.errors import ConfigError, ModelError
from loganomaly.models.sequence import SEED_ARTICLE_PRESET, SequenceTrainConfig, train_classifier, train_deeplog
from loganomaly.models.classifier import ClassifierConfig, LSTMClassifier, balanced_class_weights, classifier_probabilities
from loganomaly.models.nextevent import DeepLog, DeepLogConfig, SessionScore, calibrate_nll_threshold, calibrate_top_g, score_sessions
from loganomaly.models.vocabulary import PAD_ID, UNKNOWN_ID, Vocabulary, next_event_windows
from loganomaly.training.loop import build_optimizer, init_weights

CYCLE = "ABCD"


def cyclic_session(n: int) -> list[str]:
    """A B C D A B C D ...: every next event is determined by the previous one."""
    return [CYCLE[i % len(CYCLE)] for i in range(n)]


def tiny_deeplog_cfg(vocab: Vocabulary) -> DeepLogConfig:
    return DeepLogConfig(vocab_size=vocab.size, window=4, embedding_dim=8, hidden_size=16, num_layers=1, top_g=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    """One intra-op thread: these tiny models gain nothing from more, and on shared cores two
    spinning OpenMP threads made training about 8x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FAST = SequenceTrainConfig(epochs=30, batch_size=32, learning_rate=0.02, patience=5, device="cpu")


@pytest.fixture(scope="module")
def deeplog(one_thread) -> tuple[DeepLog, Vocabulary, list[list[str]]]:
    rng = np.random.default_rng(0)
    train = [cyclic_session(int(rng.integers(8, 20))) for _ in range(40)]
    val = [cyclic_session(int(rng.integers(8, 20))) for _ in range(10)]
    vocab = Vocabulary.fit(train)
    result = train_deeplog(vocab.encode_many(train), vocab.encode_many(val), tiny_deeplog_cfg(vocab), FAST)
    assert result.best_epoch >= 0 and result.history
    return result.model, vocab, val  # type: ignore[return-value]


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


# ---------------------------------------------------------------------------------------- configs


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


def test_classifier_config_round_trip_and_refusals() -> None:
    cfg = ClassifierConfig(n_features=3, n_classes=2, bidirectional=True)
    assert ClassifierConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelError, match="valid keys"):
        ClassifierConfig.from_dict({**cfg.to_dict(), "window": 4})
    with pytest.raises(ModelError, match="n_classes"):
        ClassifierConfig(n_features=3, n_classes=1)


def test_train_config_round_trip_and_refusals() -> None:
    assert SequenceTrainConfig.from_dict(SEED_ARTICLE_PRESET.to_dict()) == SEED_ARTICLE_PRESET
    with pytest.raises(ConfigError, match="adam, sgd_nesterov"):
        SequenceTrainConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="valid keys"):
        SequenceTrainConfig.from_dict({"lr": 0.1})
    with pytest.raises(ConfigError, match="clip_value"):
        SequenceTrainConfig(clip_value=0.0)
    with pytest.raises(ConfigError, match="device"):
        SequenceTrainConfig(device="tpu")


# ---------------------------------------------------------------------------------------- DeepLog


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
    with caplog.at_level(logging.WARNING, logger="loganomaly.models.sequence"):
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


def _tiny_sessions() -> tuple[list[list[int]], list[list[int]], Vocabulary]:
    sessions = [cyclic_session(n) for n in (6, 9, 12, 7)]
    vocab = Vocabulary.fit(sessions)
    return vocab.encode_many(sessions[:3]), vocab.encode_many(sessions[3:]), vocab


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deeplog_same_seed_gives_identical_weights() -> None:
    train, val, vocab = _tiny_sessions()
    cfg = DeepLogConfig(vocab_size=vocab.size, window=3, embedding_dim=4, hidden_size=8, num_layers=2, dropout=0.2)
    settings = SequenceTrainConfig(epochs=3, batch_size=4, seed=7, device="cpu", patience=0)
    first = train_deeplog(train, val, cfg, settings)
    torch.rand(10)  # disturb the global RNG between runs
    second = train_deeplog(train, val, cfg, settings)
    other = train_deeplog(train, val, cfg, dataclasses.replace(settings, seed=8))
    assert _same(first.state_dict, second.state_dict)
    assert [h["val_loss"] for h in first.history] == [h["val_loss"] for h in second.history]
    assert not _same(first.state_dict, other.state_dict)


def test_train_deeplog_refuses_empty_validation() -> None:
    train, _, vocab = _tiny_sessions()
    with pytest.raises(ModelError, match="validation"):
        train_deeplog(train, [], DeepLogConfig(vocab_size=vocab.size), SequenceTrainConfig(device="cpu"))


# ------------------------------------------------------------------------------------- classifier

T, F = 6, 3


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 windows sit at +1 on feature 0, class 0 at -1, with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 0.5, (n, T, F)).astype(np.float32)
    x[:, :, 0] += np.where(y == 1, 1.0, -1.0)[:, None]
    return x, y


@pytest.mark.parametrize(
    "settings",
    [
        SequenceTrainConfig(epochs=15, batch_size=16, learning_rate=0.01, patience=4, device="cpu"),
        dataclasses.replace(SEED_ARTICLE_PRESET, epochs=15, batch_size=16, patience=4, device="cpu"),
    ],
    ids=["adam", "seed_article_sgd_nesterov"],
)
def test_classifier_learns_a_separable_problem(settings: SequenceTrainConfig) -> None:
    x, y = separable(256, 0)
    vx, vy = separable(128, 1)
    cfg = ClassifierConfig(n_features=F, n_classes=2, hidden_size=8)
    result = train_classifier(x, y, vx, vy, cfg, settings)
    assert isinstance(result.model, LSTMClassifier)
    proba = classifier_probabilities(result.model, vx, batch_size=50)
    assert proba.shape == (128, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert (proba.argmax(axis=1) == vy).mean() > 0.9


def test_seed_article_preset_settings_and_optimizer() -> None:
    preset = SEED_ARTICLE_PRESET
    assert (preset.seed, preset.learning_rate, preset.clip_value, preset.init) == (123, 0.005, 0.5, "xavier")
    model = LSTMClassifier(ClassifierConfig(n_features=F, n_classes=2, hidden_size=4))
    optimiser = build_optimizer(model, preset)
    assert isinstance(optimiser, torch.optim.SGD)
    group = optimiser.param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.9 and group["lr"] == 0.005
    assert isinstance(build_optimizer(model, SequenceTrainConfig()), torch.optim.Adam)
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.learning_rate = 0.1  # type: ignore[misc]


def test_xavier_init_zeroes_biases() -> None:
    torch.manual_seed(0)
    model = LSTMClassifier(ClassifierConfig(n_features=F, n_classes=2, hidden_size=4))
    init_weights(model, "xavier")
    biases = [p for n, p in model.named_parameters() if "bias" in n]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)


def _max_grad_seen_by_step(monkeypatch: pytest.MonkeyPatch, settings: SequenceTrainConfig) -> float:
    """Train one epoch on large inputs, recording the largest gradient element the SGD step sees."""
    seen: list[float] = []
    original = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(max(float(p.grad.abs().max()) for g in self.param_groups for p in g["params"]
                        if p.grad is not None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    x, y = separable(64, 2)
    train_classifier(x * 50, y, x[:8] * 50, y[:8], ClassifierConfig(n_features=F, n_classes=2, hidden_size=4),
                     settings)
    monkeypatch.undo()
    assert seen
    return max(seen)


def test_preset_clips_gradients_element_wise(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dataclasses.replace(SEED_ARTICLE_PRESET, epochs=1, batch_size=8, device="cpu")
    assert _max_grad_seen_by_step(monkeypatch, dataclasses.replace(settings, clip_value=None)) > 0.5
    assert _max_grad_seen_by_step(monkeypatch, settings) == pytest.approx(0.5)


def test_classifier_same_seed_gives_identical_weights() -> None:
    x, y = separable(48, 3)
    cfg = ClassifierConfig(n_features=F, n_classes=2, hidden_size=4, num_layers=2, dropout=0.3)
    settings = dataclasses.replace(SEED_ARTICLE_PRESET, epochs=2, batch_size=8, device="cpu")
    first = train_classifier(x, y, x[:8], y[:8], cfg, settings, class_weights="balanced")
    second = train_classifier(x, y, x[:8], y[:8], cfg, settings, class_weights="balanced")
    assert _same(first.state_dict, second.state_dict)


def test_class_weights() -> None:
    assert balanced_class_weights(np.array([0, 0, 0, 1]), 2) == pytest.approx([4 / 6, 2.0])
    assert balanced_class_weights(np.array([0, 0]), 3) == pytest.approx([2 / 6, 1.0, 1.0])
    x, y = separable(16, 4)
    cfg = ClassifierConfig(n_features=F, n_classes=2, hidden_size=4)
    with pytest.raises(ModelError, match="class weights"):
        train_classifier(x, y, x, y, cfg, SequenceTrainConfig(epochs=1, device="cpu"), class_weights=[1.0])


def test_classifier_refuses_bad_data() -> None:
    x, y = separable(16, 5)
    cfg = ClassifierConfig(n_features=F, n_classes=2, hidden_size=4)
    settings = SequenceTrainConfig(epochs=1, device="cpu")
    with pytest.raises(ModelError, match="expected"):
        train_classifier(x[:, :, :2], y, x, y, cfg, settings)
    with pytest.raises(ModelError, match="labels must be"):
        train_classifier(x, y + 5, x, y, cfg, settings)
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        train_classifier(bad, y, x, y, cfg, settings)


def test_bidirectional_classifier_shape() -> None:
    model = LSTMClassifier(ClassifierConfig(n_features=F, n_classes=3, hidden_size=5, num_layers=2,
                                            bidirectional=True))
    assert model(torch.zeros(4, T, F)).shape == (4, 3)


def test_bf16_on_cpu_warns_and_trains_in_float32(caplog: pytest.LogCaptureFixture) -> None:
    x, y = separable(16, 6)
    cfg = ClassifierConfig(n_features=F, n_classes=2, hidden_size=4)
    with caplog.at_level(logging.WARNING, logger="loganomaly.models.sequence"):
        result = train_classifier(x, y, x, y, cfg, SequenceTrainConfig(epochs=1, device="cpu", bf16=True))
    assert "CUDA only" in caplog.text
    assert all(v.dtype == torch.float32 for v in result.state_dict.values())


def test_session_rows_cut_the_same_windows_as_next_event_windows() -> None:
    from loganomaly.models.nextevent import NextEventTask, SessionRows

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


def test_train_deeplog_resumes_from_its_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """DeepLog shares the loop's checkpoints: a resumed run ends where an uninterrupted one does."""
    rng = np.random.default_rng(3)
    train = [cyclic_session(int(rng.integers(6, 12))) for _ in range(20)]
    val = [cyclic_session(9) for _ in range(4)]
    vocab = Vocabulary.fit(train)
    ids, val_ids, cfg = vocab.encode_many(train), vocab.encode_many(val), tiny_deeplog_cfg(vocab)
    settings = SequenceTrainConfig(epochs=4, batch_size=16, seed=2, device="cpu", patience=0)
    whole = train_deeplog(ids, val_ids, cfg, settings)
    train_deeplog(ids, val_ids, cfg, dataclasses.replace(settings, epochs=2), checkpoint_dir=tmp_path)
    resumed = train_deeplog(ids, val_ids, cfg, settings, checkpoint_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.best_val_loss == pytest.approx(whole.best_val_loss, rel=1e-6)
    for key, value in whole.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[key], value)
