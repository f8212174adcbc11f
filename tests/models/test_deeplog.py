"""DeepLog as a model kind: its rank work on the shared loop, then train/score on a tiny ``sessions`` table."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.config import Config
from loganomaly.errors import ConfigError, ModelError
from loganomaly.lake.schemas import TABLES
from loganomaly.models.bundle import load_bundle
from loganomaly.models.deeplog import DeepLogBundle
from loganomaly.models.nextevent import DeepLogConfig
from loganomaly.models.vocabulary import Vocabulary
from loganomaly.scoring import stage as score
from loganomaly.training import stage as train
from loganomaly.training.stage import TrainSummary
from tests.models.fitting import fit_deeplog, sequence_settings
from tests.models.test_nextevent import cyclic_session, tiny_deeplog_cfg

DAYS = [dt.date(2024, 3, 4) + dt.timedelta(days=i) for i in range(4)]
PER_DAY = 60
#: Abnormal sessions: template ids, and the (position, template, unknown?) that must explain them.
SWAPPED = (["T1", "T2", "T3", "T5", "T4", "T6"], "pos 3: T5 (rank")
UNKNOWN = (["T1", "T2", "T0", "T3", "T4", "T5", "T6"], "pos 2: T0 (unknown template)")
UNSEEN = (["T1", "T2", "T3", "T4", "T5", "T9", "T6"], "pos 5: T9 (unknown template)")


def deeplog_bundle(model_dir: Path) -> DeepLogBundle:
    """The bundle in ``model_dir``, which must be a DeepLog one."""
    bundle = load_bundle(model_dir)
    assert isinstance(bundle, DeepLogBundle), bundle.kind
    return bundle


# --- DeepLog's rank work on the shared loop (no Spark) --------------------------------------------


def _tiny_sessions() -> tuple[list[list[int]], list[list[int]], Vocabulary]:
    sessions = [cyclic_session(n) for n in (6, 9, 12, 7)]
    vocab = Vocabulary.fit(sessions)
    return vocab.encode_many(sessions[:3]), vocab.encode_many(sessions[3:]), vocab


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.usefixtures("one_thread")
def test_deeplog_same_seed_gives_identical_weights() -> None:
    train, val, vocab = _tiny_sessions()
    cfg = DeepLogConfig(vocab_size=vocab.size, window=3, embedding_dim=4, hidden_size=8, num_layers=2, dropout=0.2)
    settings = sequence_settings(epochs=3, batch_size=4, seed=7, device="cpu", patience=0)
    first = fit_deeplog(train, val, cfg, settings)
    torch.rand(10)  # disturb the global RNG between runs
    second = fit_deeplog(train, val, cfg, settings)
    other = fit_deeplog(train, val, cfg, dataclasses.replace(settings, seed=8))
    assert _same(first.state_dict, second.state_dict)
    assert [h["val_loss"] for h in first.history] == [h["val_loss"] for h in second.history]
    assert not _same(first.state_dict, other.state_dict)


@pytest.mark.usefixtures("one_thread")
def test_deeplog_work_refuses_empty_validation() -> None:
    train, _, vocab = _tiny_sessions()
    with pytest.raises(ModelError, match="validation"):
        fit_deeplog(train, [], DeepLogConfig(vocab_size=vocab.size), sequence_settings(device="cpu"))


@pytest.mark.usefixtures("one_thread")
def test_deeplog_work_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """DeepLog shares the loop's checkpoints: a resumed run ends where an uninterrupted one does."""
    rng = np.random.default_rng(3)
    train = [cyclic_session(int(rng.integers(6, 12))) for _ in range(20)]
    val = [cyclic_session(9) for _ in range(4)]
    vocab = Vocabulary.fit(train)
    ids, val_ids, cfg = vocab.encode_many(train), vocab.encode_many(val), tiny_deeplog_cfg(vocab)
    settings = sequence_settings(epochs=4, batch_size=16, seed=2, device="cpu", patience=0)
    whole = fit_deeplog(ids, val_ids, cfg, settings)
    fit_deeplog(ids, val_ids, cfg, dataclasses.replace(settings, epochs=2), checkpoint_dir=tmp_path)
    resumed = fit_deeplog(ids, val_ids, cfg, settings, checkpoint_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.best_val_loss == pytest.approx(whole.best_val_loss, rel=1e-6)
    for key, value in whole.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[key], value)


# --- train and score on Spark --------------------------------------------------------------------


def normal_session(rng: random.Random) -> list[str]:
    head = ["T1", "T2"] + (["T7"] if rng.random() < 0.15 else [])
    return head + ["T3"] * rng.choice([1, 2]) + ["T4", "T5", "T6"]


def session_rows() -> tuple[list[tuple], dict[str, str]]:  # type: ignore[type-arg]
    """Normal sessions every 20 minutes for 4 days; abnormal ones on days 0 (training period), 2 and 3."""
    rng = random.Random(5)
    rows, expected = [], {}
    for d, day in enumerate(DAYS):
        base = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
        plan: list[tuple[list[str], str | None]] = [(normal_session(rng), None) for _ in range(PER_DAY)]
        if d in (0, 2, 3):
            for k, (ids, why) in enumerate((SWAPPED, UNKNOWN, UNSEEN)):
                plan[10 + 15 * k] = (ids, why)
        for i, (ids, why) in enumerate(plan):
            key = f"s{d}-{i}"
            start = base + dt.timedelta(minutes=20 * i)
            rows.append((key, "app", start, start + dt.timedelta(seconds=len(ids)), day, len(ids), ids,
                         [f"{key}-e{j}" for j in range(len(ids))], None if why is None else "anomaly", "featurize-x"))
            if why is not None and d >= 2:
                expected[key] = why
    return rows, expected


@pytest.fixture(scope="module")
def deeplog_run(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    from loganomaly.ingest.templates.miner import Templates
    from loganomaly.ingest.templates.store import save_state
    from loganomaly.lake.tables import Lake

    root = tmp_path_factory.mktemp("deeplog")
    lake = Lake(spark, root / "lake", engine="deltars")
    rows, expected = session_rows()
    lake.write("sessions", spark.createDataFrame(rows, TABLES["sessions"].ddl), mode="overwrite",
               partition_by=TABLES["sessions"].partition_by)
    state = Templates().fit([f"block {i} opened by user {i % 3}" for i in range(20)] + ["served block 7"])
    save_state(spark, lake, state, "ingest-x", "")
    cfg = Config()
    cfg.lake.root, cfg.lake.engine = str(root / "lake"), "deltars"
    cfg.model.kind = "deeplog"
    cfg.model.history, cfg.model.hidden_size, cfg.model.embedding_dim = 4, 32, 8
    cfg.train.train_until = DAYS[2].isoformat()
    cfg.train.epochs, cfg.train.learning_rate, cfg.train.patience, cfg.train.device = 40, 0.01, 5, "cpu"
    model_dir = root / "model"
    summary = train.run(spark, cfg, model_dir, lake=lake)  # dispatches on model.kind
    scored = score.run(spark, cfg, model_dir, lake=lake)
    return cfg, lake, model_dir, summary, scored, expected, state


@pytest.mark.spark
def test_train_calibrates_on_normal_sessions_only(deeplog_run) -> None:  # type: ignore[no-untyped-def]
    _, lake, model_dir, summary, _, _, state = deeplog_run
    assert isinstance(summary, TrainSummary) and summary.model_kind == "deeplog"
    assert summary.excluded_labelled == 3  # the abnormal sessions of day 0
    assert summary.train_sessions + summary.validation_sessions == 2 * PER_DAY - 3
    assert summary.validation_sessions >= 10
    assert summary.top_g <= 2 and summary.validation_fpr <= 0.01
    bundle = deeplog_bundle(model_dir)
    assert bundle.version == summary.model_version and bundle.top_g == summary.top_g
    assert bundle.training["sessions_version"] == lake.version("sessions")
    assert "T0" not in bundle.vocabulary.templates and "T9" not in bundle.vocabulary.templates
    # The template-miner state of the lake travels with the model.
    assert bundle.templates == state.to_dict() and bundle.training["templates_version"] == state.version
    assert bundle.template_state() is not None and bundle.template_state().version == state.version  # type: ignore[union-attr]


@pytest.mark.spark
def test_abnormal_sessions_flagged_with_their_unexpected_events(deeplog_run) -> None:  # type: ignore[no-untyped-def]
    _, lake, _, summary, scored, expected, _ = deeplog_run
    assert scored.model_version == summary.model_version and len(scored.dates) == 4
    rows = {r.entity: r for r in lake.read("scores").collect()}
    assert len(rows) == scored.windows == 4 * PER_DAY
    for key, why in expected.items():
        row = rows[key]
        assert row.is_anomaly and row.score >= 1 and row.threshold == 0.0, (key, row.explanation)
        assert why in row.explanation, (key, row.explanation)
    assert rows["s2-25"].top_features[0] == "T0" and "T0" in rows["s2-25"].top_features
    assert "T9" in rows["s3-40"].top_features
    test_normals = [r for k, r in rows.items() if k not in expected and r.date >= DAYS[2]]
    fpr = sum(r.is_anomaly for r in test_normals) / len(test_normals)
    assert fpr <= 0.05, fpr
    assert all(r.explanation == "" and r.top_features == [] for r in test_normals if not r.is_anomaly)
    flagged = {r.entity for r in lake.read("anomalies").collect()}
    assert flagged == {k for k, r in rows.items() if r.is_anomaly}
    swapped = rows["s2-10"]  # window = the session's own start and end
    assert (swapped.window_end - swapped.window_start).total_seconds() == len(SWAPPED[0])


@pytest.mark.spark
def test_score_rerun_replaces_rows(spark, deeplog_run) -> None:  # type: ignore[no-untyped-def]
    cfg, lake, model_dir, _, _, _, _ = deeplog_run
    before = (lake.read("scores").count(), lake.read("anomalies").count())
    score.run(spark, cfg, model_dir, lake=lake)  # the kind comes from the bundle
    assert (lake.read("scores").count(), lake.read("anomalies").count()) == before
    again = score.run(spark, cfg, model_dir, date=DAYS[3].isoformat(), lake=lake)
    assert again.dates == [DAYS[3].isoformat()] and again.windows == PER_DAY
    assert (lake.read("scores").count(), lake.read("anomalies").count()) == before


@pytest.mark.spark
@pytest.mark.slow
def test_continue_training_on_two_torch_distributor_ranks(spark, deeplog_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """train.init_from continues the module's model, on the torch_distributor backend's two ranks."""
    cfg, lake, model_dir, summary, _, expected, _ = deeplog_run
    base = deeplog_bundle(model_dir)
    more = dataclasses.replace(cfg.train, backend="torch_distributor", num_processes=2, epochs=3,
                               init_from=str(model_dir))
    cont_cfg = dataclasses.replace(cfg, train=more)
    cont = train.run(spark, cont_cfg, tmp_path / "continued", lake=lake)
    bundle = deeplog_bundle(tmp_path / "continued")
    assert bundle.training["backend"] == "torch_distributor" and bundle.training["init_from"] == str(model_dir)
    assert bundle.vocabulary == base.vocabulary  # continuing keeps the output layer's vocabulary
    history = bundle.training["history"]
    assert all(h["batches_min"] == h["batches_max"] for h in history)
    # It started from the trained weights: its first epoch is already about as good as the base.
    assert history[0]["val_loss"] < 1.5 * summary.best_val_loss
    assert cont.top_g <= 2
    scored = score.run(spark, cfg, tmp_path / "continued", lake=lake)
    flagged = {r.entity for r in lake.read("anomalies").collect()}
    assert set(expected) <= flagged and scored.model_version == bundle.version
    # A model of another shape cannot be continued.
    other = dataclasses.replace(cfg, train=dataclasses.replace(more, backend="local"),
                                model=dataclasses.replace(cfg.model, hidden_size=8))
    with pytest.raises(ConfigError, match="init_from"):
        train.run(spark, other, tmp_path / "other", lake=lake)
    # Leave the module's scores as the other tests expect them.
    score.run(spark, cfg, model_dir, lake=lake)


@pytest.mark.spark
def test_default_config_scores_evaluates_and_reports_a_deeplog_bundle(spark, deeplog_run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A nightly task without --profile (model.kind is the default autoencoder) still handles DeepLog."""
    from loganomaly.evaluation import report
    from loganomaly.evaluation import stage as evaluate

    cfg, lake, model_dir, summary, _, expected, _ = deeplog_run
    plain = Config()
    plain.lake.root, plain.lake.engine = cfg.lake.root, "deltars"
    assert plain.model.kind == "autoencoder"
    before = lake.read("scores").count()
    again = score.run(spark, plain, model_dir, lake=lake, since_last_run=True)
    # --since-last-run works for DeepLog too: the last date it scored again, and nothing older.
    assert again.dates == [DAYS[3].isoformat()] and again.windows == PER_DAY
    assert lake.read("scores").count() == before
    labels = tmp_path / "labels.csv"
    rows, _ = session_rows()
    labels.write_text("session,label\n" + "".join(f"{r[0]},{r[8] or 'normal'}\n" for r in rows))
    result = evaluate.run(spark, plain, model_dir, labels=str(labels), lake=lake)
    assert result.model_version == summary.model_version and result.n_windows == 4 * PER_DAY
    assert result.results["stored"]["recall"] >= len(expected) / result.n_positive
    html = report.build_report(spark, plain, model_dir, tmp_path / "report.html", lake=lake,
                               labels=str(labels)).read_text()
    assert "deeplog (deeplog)" in html and "sessions scored" in html and "top_g" in html
