"""The Petastorm reader in the compatibility environment (``make compat``: PySpark 4.0, pyarrow 14, Petastorm 0.12.1).

Real Delta tables written with delta-rs, real Petastorm reads, a real two-process gloo group for the
empty-shard case and real TorchDistributor / local training runs. In the main environment (no
Petastorm, pyarrow >= 15) the whole module skips.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loganomaly.config import TrainConfig
from loganomaly.errors import StageInputError
from loganomaly.features.split import Selection, ShardPlan, plan_shards, time_range, write_windows
from loganomaly.lake.snapshot import Snapshot
from loganomaly.models.autoencoder import AutoencoderWork, LSTMAutoencoderConfig
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.task import TrainResult
from loganomaly.training.readers.arrow import ShardReader
from loganomaly.training.readers.petastorm import PetastormShardReader, check_dealing, dealt_rows

# loganomaly.training.readers.petastorm imports Petastorm lazily, so the imports above work everywhere.
petastorm = pytest.importorskip("petastorm", reason="Petastorm lives in the compatibility env: make compat")
pyarrow = pytest.importorskip("pyarrow")
if int(pyarrow.__version__.split(".")[0]) >= 15:
    pytest.skip("Petastorm needs pyarrow < 15 (make compat)", allow_module_level=True)

T, F = 4, 3
HOUR = 3600.0
N = 61  # prime, so no world size divides it
HAVE_HOROVOD = importlib.util.find_spec("horovod") is not None


def windows(n: int, seed: int = 0) -> np.ndarray:
    """Windows whose first value is their id, so a row can be recognised after any shuffle."""
    x = np.random.default_rng(seed).normal(5.0, 2.0, (n, T, F)).astype(np.float32)
    x[:, 0, 0] = np.arange(n)
    return x


def ids(x: np.ndarray) -> list[int]:
    return x[:, 0, 0].astype(int).tolist()


@pytest.fixture
def snapshot(tmp_path: Path) -> Snapshot:
    """61 hourly windows over three days (three files), row groups of 5 rows: 13 row groups."""
    path = str(tmp_path / "sequences")
    version = write_windows(path, windows(N), np.arange(N) * HOUR, 60.0, max_rows_per_group=5)
    return Snapshot(path, version)


def split_plans(snapshot: Snapshot, cut_fraction: float = 0.8) -> tuple[ShardPlan, ShardPlan]:
    lo, hi = time_range(snapshot) or (0.0, 0.0)
    cut = lo + (hi - lo) * cut_fraction
    train, val = plan_shards(snapshot, [Selection(lo, cut, 0.25, "train"), Selection(lo, cut, 0.25, "validation")], 7)
    return train, val


def settled_readers(plan: ShardPlan, world: int, equal: bool = True) -> tuple[list[PetastormShardReader], list[Any]]:
    """Every rank's reader and shard, settled with the counts all ranks read (what load() gathers)."""
    readers = [PetastormShardReader(plan, rank, world, equal=equal) for rank in range(world)]
    shards = [r.read_local() for r in readers]
    for r in readers:
        r.settle([len(s) for s in shards])
    return readers, shards


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_selected_row_once_per_epoch_and_equal_batches(snapshot: Snapshot, world: int) -> None:
    (plan,) = plan_shards(snapshot, [Selection(0.0, 1e12, 0.25, "all")], seed=7)
    readers, shards = settled_readers(plan, world)
    # the shards partition the table: every row on exactly one rank
    assert sorted(i for s in shards for i in ids(s.x)) == list(range(N))
    assert all(len(s) for s in shards)
    # the driver's prediction of Petastorm's dealing is what the ranks really got
    assert dealt_rows(plan, world) == ([len(s) for s in shards], 13)
    for epoch in range(2):
        orders = [r.epoch_indices(epoch) for r in readers]
        assert len({len(o) for o in orders}) == 1, "every rank yields the same number of rows"
        assert len({r.batches_per_epoch(8) for r in readers}) == 1, "and runs the same number of batches"
        epoch_ids = [i for s, o in zip(shards, orders, strict=True) for i in ids(s.x[o])]
        assert set(epoch_ids) == set(range(N)), "every row at least once"
        # each rank's own rows once, then only padding up to the largest shard
        for s, o in zip(shards, orders, strict=True):
            assert sorted(o[: len(s)].tolist()) == list(range(len(s)))
        assert len(epoch_ids) == world * max(len(s) for s in shards), "padding only up to the largest shard"


def test_petastorm_selects_exactly_the_rows_of_the_arrow_reader(snapshot: Snapshot) -> None:
    train, val = split_plans(snapshot)
    for plan, equal in ((train, True), (val, False)):
        arrow = ShardReader(plan, 0, 1, equal=equal).load()
        _, shards = settled_readers(plan, 2, equal=equal)
        got = np.concatenate([s.x for s in shards])
        assert sorted(ids(got)) == sorted(ids(arrow.x))
        # the same windows, value for value
        np.testing.assert_array_equal(got[np.argsort(ids(got))], arrow.x[np.argsort(ids(arrow.x))])


def test_normal_only_drops_the_same_windows_as_the_arrow_reader(tmp_path: Path) -> None:
    """``n_abnormal`` (with nulls, which count as 0) filters Petastorm's rows as it filters Arrow's."""
    n = 40
    path = str(tmp_path / "sequences")
    abnormal = [3 if i % 5 == 0 else (None if i % 7 == 0 else 0) for i in range(n)]
    write_windows(path, windows(n), np.arange(n) * HOUR, 60.0, mode="overwrite", abnormal=abnormal)
    snapshot = Snapshot(path, 0)
    lo, hi = time_range(snapshot) or (0.0, 0.0)
    for part in ("train", "validation"):
        (plan,) = plan_shards(snapshot, [Selection(lo, hi, 0.25, part, normal_only=True)], 1)  # type: ignore[arg-type]
        arrow = sorted(ids(ShardReader(plan, 0, 1, equal=False).load().x))
        _, shards = settled_readers(plan, 1, equal=False)
        assert sorted(ids(shards[0].x)) == arrow and not any(i % 5 == 0 for i in arrow)
        assert any(i % 7 == 0 for i in arrow), "a null count keeps its window"


def test_order_is_reproducible_and_reshuffled_every_epoch(snapshot: Snapshot) -> None:
    (plan,) = plan_shards(snapshot, [Selection(0.0, 1e12, 0.25, "all")], seed=7)
    first = PetastormShardReader(plan, 0, 2, pool_type="thread").read_local()
    again = PetastormShardReader(plan, 0, 2, pool_type="thread").read_local()
    assert first.keys() == again.keys(), "thread-pool completion order does not leak into the shard"
    readers, shards = settled_readers(plan, 2)
    a, b = readers[0].epoch_indices(0), readers[0].epoch_indices(1)
    assert a.tolist() != b.tolist() and sorted(set(a.tolist())) == sorted(set(b.tolist()))
    assert np.array_equal(readers[0].epoch_indices(3), readers[0].epoch_indices(3))


def test_fewer_row_groups_than_ranks_is_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "sequences")
    version = write_windows(path, windows(10), np.arange(10) * 60.0, 1.0, max_rows_per_group=5)  # 2 row groups
    (plan,) = plan_shards(Snapshot(path, version), [Selection(0.0, 1e12, 0.25, "all")], seed=1)
    with pytest.raises(StageInputError, match="row groups"):
        PetastormShardReader(plan, 0, 3).read_local()
    # validation needs no balance: rank 0 reads every row group, the others nothing
    shards = [PetastormShardReader(plan, r, 3, equal=False).read_local() for r in range(3)]
    assert [len(s) for s in shards] == [10, 0, 0]


def test_counts_that_miss_rows_fail_instead_of_training_on_less(snapshot: Snapshot) -> None:
    (plan,) = plan_shards(snapshot, [Selection(0.0, 1e12, 0.25, "all")], seed=7)
    reader = PetastormShardReader(plan, 0, 2)
    with pytest.raises(StageInputError, match="short or repeated read"):
        reader.settle([30, 0])  # what an empty read of rank 1 (Petastorm 0.13's thread pool) looks like


# ----------------------------------------------------------------------------- two real ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_load(rank: int, world: int, port: int, plan: ShardPlan, results: Any) -> None:
    """One rank of a real gloo group: load the Petastorm shard, report what happened."""
    import torch.distributed as dist

    from loganomaly.runtime.collective import TorchCollective

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shard = PetastormShardReader(plan, rank, world).load(TorchCollective())
        results.put((rank, "ok", str(len(shard))))
    except Exception as exc:
        results.put((rank, type(exc).__name__, str(exc)))
    finally:
        dist.destroy_process_group()


def run_two_ranks(plan: ShardPlan, timeout: float = 180.0) -> dict[int, tuple[str, str]]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_load, args=(r, 2, port, plan, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.terminate()
    assert not hung, "a rank hung instead of failing"
    out = {}
    while not results.empty():
        rank, kind, message = results.get()
        out[rank] = (kind, message)
    return out


def test_a_rank_with_an_empty_shard_fails_on_every_rank(tmp_path: Path) -> None:
    """One file, two row groups; only the first holds training windows, so rank 1 gets none."""
    path = str(tmp_path / "sequences")
    version = write_windows(path, windows(10), np.arange(10) * 60.0, 1.0, max_rows_per_group=5)
    snapshot = Snapshot(path, version)
    # windows 0-4 end by 4 * 60 + 4 s: the training period covers the first row group only
    (plan,) = plan_shards(snapshot, [Selection(0.0, 4 * 60.0 + 4.0, 0.25, "train")], seed=1)
    assert plan.total >= 2 and len(plan.units) == 1
    out = run_two_ranks(plan)
    assert set(out) == {0, 1}
    for kind, message in out.values():
        assert kind == "StageInputError", message
        assert "row groups" in message and "fewer ranks" in message


def test_the_driver_refuses_a_dealing_that_leaves_a_rank_empty(tmp_path: Path) -> None:
    from loganomaly.training.backends import run_backend

    path = str(tmp_path / "sequences")
    version = write_windows(path, windows(10), np.arange(10) * 60.0, 1.0, max_rows_per_group=5)
    (train,) = plan_shards(Snapshot(path, version), [Selection(0.0, 4 * 60.0 + 4.0, 0.25, "train")], seed=1)
    assert check_dealing(train, 1) == [train.total]
    with pytest.raises(StageInputError, match=r"gives ranks \[1\] of 2 no train windows.*fewer ranks"):
        check_dealing(train, 2)
    with pytest.raises(StageInputError, match=r"ranks \[1, 2\] of 3"):  # 2 row groups, 3 ranks
        check_dealing(train, 3)
    # before any rank or Spark job starts (hence no SparkSession needed)
    with pytest.raises(StageInputError, match="row groups"):
        run_backend(None, "torch_distributor", AutoencoderWork(train, train, MODEL), train_cfg(16))


def test_two_real_ranks_agree_on_the_epoch_length(snapshot: Snapshot) -> None:
    (plan,) = plan_shards(snapshot, [Selection(0.0, 1e12, 0.25, "all")], seed=7)
    out = run_two_ranks(plan)
    assert {kind for kind, _ in out.values()} == {"ok"}
    assert sum(int(n) for _, n in out.values()) == N


# ----------------------------------------------------------------------------- training
MODEL = LSTMAutoencoderConfig(n_features=3, window_steps=12, hidden_size=8)


def training_plans(tmp_path: Path) -> tuple[ShardPlan, ShardPlan]:
    """The training and validation plans the backend tests in the main env use (same data, same split)."""
    from tests.training.test_backends import plans

    return plans(tmp_path)


def train_cfg(batch_size: int, reader: str = "petastorm") -> TrainConfig:
    # Xavier: the autoencoder's own init (``train.init: auto`` in the train stage), as these runs always had.
    return TrainConfig(epochs=8, batch_size=batch_size, learning_rate=1e-2, patience=0, seed=5, device="cpu",
                       num_processes=2, reader=reader, init="xavier")


def normaliser(result: TrainResult) -> Normaliser:
    """The normaliser the ranks fitted together (an autoencoder run's extras)."""
    return Normaliser.from_dict(result.extras["normaliser"])


def test_local_training_with_petastorm_sees_the_rows_of_the_arrow_reader(tmp_path: Path) -> None:
    from loganomaly.training.backends import run_backend

    train, val = training_plans(tmp_path)
    arrow = run_backend(None, "local", AutoencoderWork(train, val, MODEL), train_cfg(32, reader="arrow"))
    local = run_backend(None, "local", AutoencoderWork(train, val, MODEL), train_cfg(32))
    # one rank: the same rows as the Arrow reader, so the same normaliser, batches and samples
    np.testing.assert_allclose(normaliser(local).mean, normaliser(arrow).mean, rtol=1e-9)
    np.testing.assert_allclose(normaliser(local).std, normaliser(arrow).std, rtol=1e-9)
    assert local.history[0]["batches"] == arrow.history[0]["batches"]
    assert local.history[0]["samples"] == train.total
    assert local.best_val_loss < 0.6 * local.history[0]["val_loss"]


@pytest.mark.spark
@pytest.mark.slow
def test_train_run_with_petastorm_on_two_torch_distributor_ranks(spark: object, tmp_path: Path) -> None:
    """``loganomaly train --reader petastorm --backend torch_distributor`` minus the argument parsing."""
    from loganomaly.config import load_config
    from loganomaly.features.windows import FEATURE_NAMES
    from loganomaly.lake.tables import Lake
    from loganomaly.models.bundle import load_bundle
    from loganomaly.models.window import ModelBundle
    from loganomaly.training import stage as train

    lake = Lake(spark, tmp_path / "lake", engine="deltars")  # type: ignore[arg-type]
    # smooth curves with a random phase per window (a table without feature_names holds FEATURE_NAMES)
    rng = np.random.default_rng(2)
    angle = (2 * np.pi * np.arange(6)[None, :, None] / 6 + rng.uniform(0, 2 * np.pi, (240, 1, 1))
             + np.arange(len(FEATURE_NAMES))[None, None, :])
    x = (5 + 3 * np.sin(angle) + rng.normal(0, 0.2, angle.shape)).astype(np.float32)
    write_windows(lake.path("sequences"), x, np.arange(240) * 600.0, 60.0, max_rows_per_group=16)
    cfg = load_config(overrides=["train.reader=petastorm", "train.backend=torch_distributor", "train.num_processes=2",
                                 "train.epochs=8", "train.batch_size=16", "train.learning_rate=0.01",
                                 "train.patience=0", "train.device=cpu", "train.train_fraction=0.9",
                                 "model.hidden_size=8"])
    summary = train.run(spark, cfg, tmp_path / "model", lake=lake)  # type: ignore[arg-type]
    bundle = load_bundle(tmp_path / "model")
    assert isinstance(bundle, ModelBundle)
    assert bundle.training["reader"] == "petastorm" and bundle.training["backend"] == "torch_distributor"
    history = bundle.training["history"]
    assert len(history) == 8
    for record in history:
        assert record["batches_min"] == record["batches_max"] == record["batches"], "equal batches on both ranks"
    # every training window once per epoch, plus padding of the smaller shard up to the larger one
    assert summary.train_windows <= history[0]["samples"] < summary.train_windows + 2 * 16
    assert min(h["val_loss"] for h in history) < 0.8 * history[0]["val_loss"], "it learned"
    assert np.isfinite(bundle.threshold)


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_HOROVOD, reason="Horovod is not installed in this environment (make compat builds it)")
def test_horovod_trains_with_the_petastorm_reader(spark: object, tmp_path: Path) -> None:
    from loganomaly.training.backends import run_backend

    train, val = training_plans(tmp_path)
    result = run_backend(spark, "horovod", AutoencoderWork(train, val, MODEL),  # type: ignore[arg-type]
                         replace(train_cfg(16), epochs=4))
    assert all(h["batches_min"] == h["batches_max"] for h in result.history)
    assert result.best_val_loss < 0.8 * result.history[0]["val_loss"]
