"""The Arrow shard reader over real Delta tables written with delta-rs (no Spark, tiny data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loganomaly.errors import StageInputError
from loganomaly.features.split import (
    Selection,
    ShardPlan,
    Split,
    plan_shards,
    time_range,
    window_shape,
    write_windows,
)
from loganomaly.lake.snapshot import Snapshot
from loganomaly.training.readers.arrow import ShardReader

T, F = 4, 3
HOUR = 3600.0
N = 61  # prime, so no world size divides it


def windows(n: int, first_id: int = 0, seed: int = 0) -> np.ndarray:
    """Windows whose first value is their id, so a row can be recognised after any shuffle."""
    x = np.random.default_rng(seed).normal(5.0, 2.0, (n, T, F)).astype(np.float32)
    x[:, 0, 0] = np.arange(first_id, first_id + n)
    return x


@pytest.fixture
def table(tmp_path: Path) -> tuple[str, int]:
    """61 hourly windows over three days (three date partitions), row groups of 5 rows."""
    path = str(tmp_path / "sequences")
    version = write_windows(path, windows(N), np.arange(N) * HOUR, 60.0, max_rows_per_group=5)
    return path, version


def ids(x: np.ndarray) -> list[int]:
    return x[:, 0, 0].astype(int).tolist()


def all_rows(path: str, version: int) -> ShardPlan:
    (plan,) = plan_shards(Snapshot(path, version), [Selection(0.0, 1e12, 0.25, "all")], seed=7)
    return plan


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_partition_the_rows_exactly_once_per_epoch_with_equal_batches(table: tuple[str, int], world: int) -> None:
    plan = all_rows(*table)
    assert plan.total == N and len(plan.units) > world  # several files and row groups
    readers = [ShardReader(plan, rank, world) for rank in range(world)]
    shards = [r.load() for r in readers]
    # the shards partition the table: every row exactly once, sizes within one row
    seen = sorted(i for s in shards for i in ids(s.x))
    assert seen == list(range(N))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    for epoch in range(2):
        orders = [r.epoch_indices(epoch) for r in readers]
        assert len({len(o) for o in orders}) == 1, "every rank yields the same number of rows"
        assert len({r.batches_per_epoch(8) for r in readers}) == 1, "and runs the same number of batches"
        epoch_ids = [i for s, o in zip(shards, orders, strict=True) for i in ids(s.x[o])]
        assert set(epoch_ids) == set(range(N))
        assert len(epoch_ids) - N == (-N) % world, "padding only to equalise"


def test_epochs_and_seeds_change_the_order(table: tuple[str, int]) -> None:
    plan = all_rows(*table)
    reader = ShardReader(plan, 0, 2)
    shard = reader.load()
    first, second = ids(shard.x[reader.epoch_indices(0)]), ids(shard.x[reader.epoch_indices(1)])
    assert first != second and sorted(set(first)) == sorted(set(second))
    assert np.array_equal(reader.epoch_indices(3), reader.epoch_indices(3)), "an epoch's order is reproducible"
    # the seeded assignment of row groups to ranks depends on the seed
    (other,) = plan_shards(plan.snapshot, [plan.selection], seed=8)
    assert set(ids(ShardReader(other, 0, 2).load().x)) != set(ids(shard.x))


def test_a_rank_reads_only_the_row_groups_of_its_range(table: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    import loganomaly.training.readers.arrow as reader_module

    plan = all_rows(*table)
    reads: list[int] = []
    real_open = reader_module.open_parquet

    class Counting:
        def __init__(self, uri: str) -> None:
            self.inner = real_open(uri)

        @property
        def schema_arrow(self) -> object:
            return self.inner.schema_arrow

        def read_row_group(self, i: int, columns: list[str]) -> object:
            reads.append(i)
            return self.inner.read_row_group(i, columns=columns)

    monkeypatch.setattr(reader_module, "open_parquet", Counting)
    ShardReader(plan, 1, 3).load()
    # a third of 13 row groups, plus at most the two it shares at its range's ends
    assert len(reads) <= len(plan.units) // 3 + 2


def test_train_and_validation_selections_follow_the_split_rule(table: tuple[str, int]) -> None:
    path, version = table
    snapshot = Snapshot(path, version)
    lo, hi = time_range(snapshot) or (0.0, 0.0)
    assert (lo, hi) == (0.0, (N - 1) * HOUR + T * 60.0)
    cut = lo + (hi - lo) * 0.5
    train, val = plan_shards(snapshot, [Selection(lo, cut, 0.25, "train"), Selection(lo, cut, 0.25, "validation")], 1)
    starts = np.arange(N) * HOUR
    in_period = starts + T * 60.0 <= cut
    expected_val = in_period & Split(lo, cut).validation_mask(starts, 0.25)
    expected_train = in_period & ~expected_val
    assert sorted(ids(ShardReader(train, 0, 1).load().x)) == np.flatnonzero(expected_train).tolist()
    assert sorted(ids(ShardReader(val, 0, 1).load().x)) == np.flatnonzero(expected_val).tolist()
    assert window_shape(snapshot) == (T, F)


def test_the_pinned_version_is_read_after_a_later_append(table: tuple[str, int]) -> None:
    path, version = table
    later = write_windows(path, windows(10, first_id=1000, seed=3), np.arange(N, N + 10) * HOUR, 60.0)
    assert later == version + 1
    plan = all_rows(path, version)
    assert sorted(ids(ShardReader(plan, 0, 1).load().x)) == list(range(N))
    assert all_rows(path, later).total == N + 10


def test_fewer_rows_than_ranks_is_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "tiny")
    version = write_windows(path, windows(2), np.arange(2) * HOUR, 60.0)
    plan = all_rows(path, version)
    with pytest.raises(StageInputError, match="2 all windows cannot be shared by 3 ranks"):
        ShardReader(plan, 0, 3)
    # validation shards may be empty on some ranks: they are not part of the collectives
    assert [len(ShardReader(plan, r, 3, equal=False).load()) for r in range(3)] == [0, 1, 1]


def test_normal_only_leaves_out_windows_with_abnormal_events(tmp_path: Path) -> None:
    n = 40
    path = str(tmp_path / "sequences")
    write_windows(path, windows(n), np.arange(n) * HOUR, 60.0, abnormal=np.where(np.arange(n) % 5 == 0, 3, 0))
    snapshot = Snapshot(path, 0)
    lo, hi = time_range(snapshot) or (0.0, 0.0)
    plans = plan_shards(snapshot, [Selection(lo, hi, 0.25, part, normal_only)
                                   for part in ("train", "validation") for normal_only in (False, True)], 1)
    every, normal = (sorted(ids(ShardReader(p, 0, 1, equal=False).load().x)) for p in (plans[0], plans[1]))
    assert set(normal) == {i for i in every if i % 5}
    assert any(i % 5 == 0 for i in every)
    val_all, val_normal = (sorted(ids(ShardReader(p, 0, 1, equal=False).load().x)) for p in (plans[2], plans[3]))
    assert val_normal == [i for i in val_all if i % 5]


def test_time_columns_read_the_same_in_any_stored_unit() -> None:
    """delta-rs stores microseconds, delta-spark Spark's INT96 (nanoseconds in pyarrow)."""
    import pyarrow as pa

    from loganomaly.features.split import micros as _micros

    micros = [1709510400_000_000, 1709510700_123_456]
    us = pa.array(micros, pa.timestamp("us", "UTC"))
    ns = pa.array([m * 1000 for m in micros], pa.timestamp("ns"))
    assert _micros(us).tolist() == _micros(ns).tolist() == micros
    assert _micros(pa.chunked_array([ns])).tolist() == micros


def test_both_features_layouts_read_the_same_shards(tmp_path: Path) -> None:
    """A table in the older ``array<float>`` layout gives exactly the binary table's shards."""
    x = windows(N)
    shards = {}
    for layout in ("binary", "list"):
        path = str(tmp_path / layout / "sequences")
        version = write_windows(path, x, np.arange(N) * HOUR, 60.0, max_rows_per_group=5, layout=layout)  # type: ignore[arg-type]
        shards[layout] = [ShardReader(all_rows(path, version), rank, 2).load() for rank in range(2)]
    for a, b in zip(shards["binary"], shards["list"], strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        assert a.keys() == b.keys()
    np.testing.assert_array_equal(np.sort(np.concatenate([s.x for s in shards["list"]]), axis=0), np.sort(x, axis=0))


def test_a_binary_row_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    path = str(tmp_path / "sequences")
    version = write_windows(path, windows(6), np.arange(6) * HOUR, 60.0)
    from deltalake import DeltaTable

    table = DeltaTable(path).to_pyarrow_table()
    short = table.column("features").to_pylist()
    short[2] = short[2][:-4]
    bad = table.set_column(table.schema.get_field_index("features"), "features", pa.array(short, pa.binary()))
    write_deltalake(path, bad, mode="overwrite", partition_by=["date"])
    with pytest.raises(StageInputError, match="not all 48 bytes"):
        ShardReader(all_rows(path, version + 1), 0, 1).load()


class _CountingParquet:
    """A Parquet file that records which row groups are read (thread-safe enough: list.append)."""

    def __init__(self, inner: object, reads: list[tuple[int, tuple[str, ...]]]) -> None:
        self.inner, self.reads = inner, reads

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def read_row_group(self, i: int, columns: list[str]) -> object:
        self.reads.append((i, tuple(columns)))
        return self.inner.read_row_group(i, columns=columns)  # type: ignore[attr-defined]


def test_training_and_validation_shards_are_read_in_one_pass(table: tuple[str, int],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Both selections come from the same row groups: each is read once, with the shards of separate reads."""
    import loganomaly.training.readers.arrow as reader_module
    from loganomaly.runtime.collective import Collective

    path, version = table
    snapshot = Snapshot(path, version)
    lo, hi = time_range(snapshot) or (0.0, 0.0)
    plans = plan_shards(snapshot, [Selection(lo, hi, 0.25, "train"), Selection(lo, hi, 0.25, "validation")], 3)
    separate = [ShardReader(plans[0], 0, 1).load(), ShardReader(plans[1], 0, 1, equal=False).load()]
    reads: list[tuple[int, tuple[str, ...]]] = []
    real_open = reader_module.open_parquet
    uris: list[str] = []

    def counting(uri: str) -> _CountingParquet:
        uris.append(uri)
        return _CountingParquet(real_open(uri), reads)

    monkeypatch.setattr(reader_module, "open_parquet", counting)
    together = reader_module.READER.read_parts(plans, Collective(), [True, False])
    assert len(reads) == len(uris) == len({(u.uri, u.row_group) for p in plans for u in p.units})
    for (shard, order), alone in zip(together, separate, strict=True):
        np.testing.assert_array_equal(shard.x, alone.x)
        assert shard.keys() == alone.keys()
        assert len(order(0)) >= len(shard)


def test_planning_reads_the_time_columns_once(table: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The time range, the training period's range and the plan share one scan of a snapshot version."""
    import loganomaly.features.split as split_module

    path, version = table
    real_open = split_module.open_parquet

    def plan(budget: int) -> tuple[list[tuple[int, tuple[str, ...]]], list[ShardPlan]]:
        monkeypatch.setattr(split_module, "TIME_CACHE_ROWS", budget)
        split_module._time_cache.clear()
        reads: list[tuple[int, tuple[str, ...]]] = []
        monkeypatch.setattr(split_module, "open_parquet", lambda uri: _CountingParquet(real_open(uri), reads))
        snapshot = Snapshot(path, version)
        lo, hi = time_range(snapshot) or (0.0, 0.0)
        cut = (time_range(snapshot, until=lo + (hi - lo) / 2) or (0.0, 0.0))[1]
        return reads, plan_shards(snapshot, [Selection(lo, cut, 0.25, "train"), Selection(lo, cut, 0.25, "validation")], 1)

    cached_reads, cached = plan(split_module.TIME_CACHE_ROWS)
    uncached_reads, uncached = plan(N - 1)  # one row over the budget: every scan reads the files again
    row_groups = len(uncached_reads) // 3
    assert len(cached_reads) == row_groups > 1
    assert cached == uncached
    later = write_windows(path, windows(3, first_id=500), np.arange(N, N + 3) * HOUR, 60.0)
    assert time_range(Snapshot(path, later)) != time_range(Snapshot(path, version))  # another version: read again


def test_read_ahead_keeps_order_and_bounds_what_it_holds() -> None:
    import threading

    from loganomaly.features.split import read_ahead

    started: list[int] = []
    lock = threading.Lock()

    def read(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    consumed = 0
    for i, value in enumerate(read_ahead(read, list(range(50)), threads=3)):
        assert value == i * i  # in order, whatever order the threads finish in
        consumed += 1
        assert len(started) <= consumed + 2 * 3  # never more than 2 x threads results ahead
    assert consumed == 50 and sorted(started) == list(range(50))
    assert list(read_ahead(read, [7], threads=3)) == [49]  # one key: no threads at all
