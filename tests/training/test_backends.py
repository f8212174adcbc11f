"""Training backends on ``local[2]``: local vs TorchDistributor (2 DDP ranks over gloo), Horovod if built.

The data is a tiny sequences table written with delta-rs; each run is a few seconds of training
plus, for TorchDistributor, starting torchrun and two Python processes.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from loganomaly.config import TrainConfig
from loganomaly.errors import BackendUnavailableError, ConfigError, ModelError
from loganomaly.features.split import Selection, ShardPlan, plan_shards, time_range, write_windows
from loganomaly.lake.snapshot import Snapshot
from loganomaly.models.autoencoder import AutoencoderWork, LSTMAutoencoderConfig
from loganomaly.models.deeplog import DeepLogWork
from loganomaly.models.nextevent import DeepLogConfig, SessionRows
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.task import TrainResult
from loganomaly.models.vocabulary import Vocabulary
from loganomaly.training.backends import decode_result, encode_result, import_horovod, run_backend
from tests.models.test_autoencoder import F, T, periodic_windows

pytestmark = [pytest.mark.spark, pytest.mark.slow]

#: Largest relative gap allowed between the best validation losses of the two backends. Both runs
#: see the same windows, the same normaliser and the same number of optimiser steps over the same
#: global batch (one process x 32 rows vs two ranks x 16 rows with averaged gradients), so they
#: differ only in which rows share a batch and in float summation order. Measured on this data:
#: reseeding the local run alone (seeds 1-6) gave best validation losses 0.36-0.46 (23% of the
#: larger apart), the two-rank run (seeds 1, 2, 5) 0.41-0.42. 35% leaves a margin over that seed
#: spread and still fails a run that did not learn (its loss stays near epoch 0's, about 0.99).
RELATIVE_TOLERANCE = 0.35

HAVE_HOROVOD = importlib.util.find_spec("horovod") is not None


def plans(tmp_path: Path) -> tuple[ShardPlan, ShardPlan]:
    path = str(tmp_path / "sequences")
    version = write_windows(path, periodic_windows(240, seed=2), np.arange(240) * 600.0, 60.0, max_rows_per_group=16)
    snapshot = Snapshot(path, version)
    lo, hi = time_range(snapshot) or (0.0, 0.0)
    train, val = plan_shards(snapshot, [Selection(lo, hi, 0.25, "train"), Selection(lo, hi, 0.25, "validation")], 3)
    return train, val


def cfg(batch_size: int) -> TrainConfig:
    # Xavier: the autoencoder's own init (``train.init: auto`` in the train stage), as these runs always had.
    return TrainConfig(epochs=8, batch_size=batch_size, learning_rate=1e-2, patience=0, seed=5, device="cpu",
                       num_processes=2, init="xavier")


MODEL = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)


def normaliser(result: TrainResult) -> Normaliser:
    """The normaliser the ranks fitted together (an autoencoder run's extras)."""
    return Normaliser.from_dict(result.extras["normaliser"])


def test_local_and_torch_distributor_reach_comparable_validation_loss(spark: object, tmp_path: Path) -> None:
    train, val = plans(tmp_path)
    local = run_backend(None, "local", AutoencoderWork(train, val, MODEL), cfg(32))
    dist = run_backend(spark, "torch_distributor", AutoencoderWork(train, val, MODEL), cfg(16),  # type: ignore[arg-type]
                       checkpoint_dir=tmp_path / "ckpt")
    assert len(dist.history) == len(local.history) == 8
    for record in dist.history:
        assert record["batches_min"] == record["batches_max"] == record["batches"], "ranks ran equal batch counts"
    assert dist.history[0]["batches"] == local.history[0]["batches"] == train.batches_per_epoch(1, 32)
    # every training window exactly once per epoch, plus padding to equalise (at most one row)
    assert train.total <= dist.history[0]["samples"] <= train.total + 1
    # the ranks fitted the normaliser together: the same as one process over all windows
    np.testing.assert_allclose(normaliser(dist).mean, normaliser(local).mean, rtol=1e-9)
    np.testing.assert_allclose(normaliser(dist).std, normaliser(local).std, rtol=1e-9)
    # both learned, and about equally well
    for result in (local, dist):
        assert result.best_val_loss < 0.6 * result.history[0]["val_loss"]
    gap = abs(dist.best_val_loss - local.best_val_loss) / max(dist.best_val_loss, local.best_val_loss)
    assert gap < RELATIVE_TOLERANCE, (local.best_val_loss, dist.best_val_loss)
    # rank 0 checkpointed every epoch
    assert (tmp_path / "ckpt" / "checkpoint.json").is_file()


def test_result_transport_round_trips_without_pickle(tmp_path: Path) -> None:
    train, val = plans(tmp_path)
    result = run_backend(None, "local", AutoencoderWork(train, val, MODEL), replace(cfg(32), epochs=1))
    back = decode_result(encode_result(result))
    assert back.history == result.history and back.best_val_loss == result.best_val_loss
    assert back.extras == result.extras and normaliser(back) == normaliser(result)
    assert all((back.state_dict[k] == v).all() for k, v in result.state_dict.items())
    with pytest.raises(ModelError, match="returned no result"):
        decode_result(None)


@pytest.mark.skipif(HAVE_HOROVOD, reason="Horovod is installed")
def test_horovod_backend_without_horovod_names_the_install() -> None:
    with pytest.raises(BackendUnavailableError, match="horovod==0.28.1"):
        import_horovod()


@pytest.mark.skipif(not HAVE_HOROVOD, reason="Horovod is not installed (builds from source; see the README, 'Training backends')")
def test_horovod_trains_two_ranks_with_equal_batches(spark: object, tmp_path: Path) -> None:
    train, val = plans(tmp_path)
    result = run_backend(spark, "horovod", AutoencoderWork(train, val, MODEL), cfg(16))  # type: ignore[arg-type]
    assert all(h["batches_min"] == h["batches_max"] for h in result.history)
    assert result.best_val_loss < 0.6 * result.history[0]["val_loss"]
    # about as good as one process on the same windows (see RELATIVE_TOLERANCE)
    local = run_backend(None, "local", AutoencoderWork(train, val, MODEL), cfg(32))
    gap = abs(result.best_val_loss - local.best_val_loss) / max(result.best_val_loss, local.best_val_loss)
    assert gap < RELATIVE_TOLERANCE, (local.best_val_loss, result.best_val_loss)


def test_train_run_saves_a_bundle_through_torch_distributor(spark: object, tmp_path: Path) -> None:
    from loganomaly.config import Config
    from loganomaly.features.windows import FEATURE_NAMES
    from loganomaly.lake.tables import Lake
    from loganomaly.models.bundle import load_bundle
    from loganomaly.models.window import ModelBundle
    from loganomaly.training import stage as train

    lake = Lake(spark, tmp_path / "lake", engine="deltars")  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 1.0, (200, 6, len(FEATURE_NAMES))).astype(np.float32)
    write_windows(lake.path("sequences"), x, np.arange(200) * 900.0, 150.0, max_rows_per_group=32)
    cfg = Config()
    cfg.model.hidden_size = 4
    cfg.train = replace(cfg.train, backend="torch_distributor", num_processes=2, epochs=2, batch_size=16,
                        device="cpu", train_fraction=0.8)
    summary = train.run(spark, cfg, tmp_path / "model", lake=lake)  # type: ignore[arg-type]
    bundle = load_bundle(tmp_path / "model")
    assert isinstance(bundle, ModelBundle)
    assert summary.sequences_version == 0 and summary.epochs == 2
    assert bundle.training["backend"] == "torch_distributor"
    assert summary.train_windows + summary.validation_windows == bundle.training["train_windows"] + \
        bundle.training["validation_windows"]
    assert np.isfinite(bundle.threshold)

    # train.resume: the run continues from <model-dir>/checkpoints at its next epoch.
    cfg.train = replace(cfg.train, epochs=3, resume=True)
    train.run(spark, cfg, tmp_path / "model", lake=lake)  # type: ignore[arg-type]
    resumed = load_bundle(tmp_path / "model")
    assert isinstance(resumed, ModelBundle)
    assert [h["epoch"] for h in resumed.training["history"]] == [0, 1, 2]
    assert resumed.training["history"][:2] == bundle.training["history"]

    # train.init_from: a new model starts from the bundle's weights and keeps its normaliser.
    cfg.train = replace(cfg.train, backend="local", epochs=1, resume=False, init_from=str(tmp_path / "model"))
    train.run(spark, cfg, tmp_path / "continued", lake=lake)  # type: ignore[arg-type]
    continued = load_bundle(tmp_path / "continued")
    assert isinstance(continued, ModelBundle)
    assert continued.normaliser == resumed.normaliser
    assert continued.training["init_from"] == str(tmp_path / "model")
    assert continued.training["history"][0]["val_loss"] < resumed.training["history"][0]["val_loss"]


# ----------------------------------------------------------------------------- DeepLog on the backends
def deeplog_data() -> tuple[SessionRows, SessionRows, DeepLogConfig]:
    """Sessions of two interleaved workflows; the next template is predictable from the history."""
    rng = np.random.default_rng(4)
    flows = [["open", "read", "read", "close"], ["open", "write", "sync", "close"]]

    def session() -> list[str]:
        return [t for _ in range(int(rng.integers(2, 5))) for t in flows[int(rng.integers(2))]]

    train, val = [session() for _ in range(60)], [session() for _ in range(12)]
    vocab = Vocabulary.fit(train)
    cfg = DeepLogConfig(vocab_size=vocab.size, window=4, embedding_dim=8, hidden_size=16)
    rows = SessionRows.build(vocab.encode_many(train), cfg.window, cfg.vocab_size, "training")
    return rows, SessionRows.build(vocab.encode_many(val), cfg.window, cfg.vocab_size, "validation"), cfg


def deeplog_cfg(batch_size: int) -> TrainConfig:
    # torch's own init: DeepLog's (``train.init: auto`` in the train stage), as these runs always had.
    return TrainConfig(epochs=6, batch_size=batch_size, learning_rate=2e-2, patience=0, seed=3, device="cpu",
                       num_processes=2, init="default")


def check_deeplog_ranks(result: TrainResult, rows: SessionRows, local: TrainResult) -> None:
    for record in result.history:
        assert record["batches_min"] == record["batches_max"] == record["batches"], "ranks ran equal batch counts"
    # every training event exactly once per epoch, plus padding to equalise (at most one row)
    assert len(rows) <= result.history[0]["samples"] <= len(rows) + 1
    assert result.best_val_loss < 0.5 * result.history[0]["val_loss"]
    gap = abs(result.best_val_loss - local.best_val_loss) / max(result.best_val_loss, local.best_val_loss)
    assert gap < RELATIVE_TOLERANCE, (local.best_val_loss, result.best_val_loss)


@pytest.fixture(scope="module")
def deeplog_local() -> tuple[SessionRows, SessionRows, DeepLogConfig, TrainResult]:
    rows, val_rows, model_cfg = deeplog_data()
    local = run_backend(None, "local", DeepLogWork(rows, val_rows, model_cfg), deeplog_cfg(32))
    assert local.history[0]["batches"] == -(-len(rows) // 32)
    assert local.best_val_loss < 0.5 * local.history[0]["val_loss"]
    return rows, val_rows, model_cfg, local


def test_deeplog_trains_on_two_torch_distributor_ranks(spark: object, tmp_path: Path, deeplog_local) -> None:  # type: ignore[no-untyped-def]
    rows, val_rows, model_cfg, local = deeplog_local
    dist = run_backend(spark, "torch_distributor", DeepLogWork(rows, val_rows, model_cfg),  # type: ignore[arg-type]
                       deeplog_cfg(16), checkpoint_dir=tmp_path / "ckpt")
    check_deeplog_ranks(dist, rows, local)
    assert dist.history[0]["batches"] == local.history[0]["batches"]
    assert "normaliser" not in dist.extras  # DeepLog reads ids, nothing to normalise
    # rank 0 checkpointed DeepLog's config (without top_g, which training does not use)
    meta = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    assert meta["model"]["vocab_size"] == model_cfg.vocab_size and "top_g" not in meta["model"]
    assert meta["world_size"] == 2


@pytest.mark.skipif(not HAVE_HOROVOD, reason="Horovod is not installed (builds from source; see the README, 'Training backends')")
def test_deeplog_trains_on_two_horovod_ranks_with_clipping(spark: object, deeplog_local) -> None:  # type: ignore[no-untyped-def]
    rows, val_rows, model_cfg, local = deeplog_local
    # Element-wise clipping on Horovod needs its gradients synchronised first (HorovodCollective.step).
    settings = replace(deeplog_cfg(16), clip_value=0.5)
    result = run_backend(spark, "horovod", DeepLogWork(rows, val_rows, model_cfg), settings)  # type: ignore[arg-type]
    check_deeplog_ranks(result, rows, local)


def test_deeplog_backend_refuses_the_petastorm_reader_and_too_many_ranks(deeplog_local) -> None:  # type: ignore[no-untyped-def]
    rows, val_rows, model_cfg, _ = deeplog_local
    with pytest.raises(ConfigError, match="train.reader"):
        run_backend(None, "torch_distributor", DeepLogWork(rows, val_rows, model_cfg),
                    replace(deeplog_cfg(16), reader="petastorm"))
    few = rows.take(np.arange(2))
    with pytest.raises(ModelError, match="cannot give each of 3 ranks"):
        run_backend(None, "torch_distributor", DeepLogWork(few, val_rows, model_cfg), deeplog_cfg(16), num_processes=3)
