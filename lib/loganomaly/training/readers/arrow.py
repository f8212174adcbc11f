"""The default reader: a rank's shard of a pinned ``sequences`` snapshot, streamed with pyarrow.

Why not Petastorm or Spark: Petastorm cannot run with pyarrow >= 15 (so not beside PySpark 4.1)
and its thread-pool reader silently returned empty shards; a training rank has no SparkSession.
The snapshot's checked file list (:mod:`loganomaly.lake.snapshot`) gives the exact Parquet files
of one table version, pyarrow reads them.

A rank (:class:`ShardReader`) reads only the row groups that overlap its range of the plan
(:class:`~loganomaly.features.split.ShardPlan`; a row group on a boundary is read by the two ranks
that share it, nothing else is read twice), keeps its selected rows in memory as float32 windows,
and per epoch shuffles them with a seed of (base seed, epoch, rank). Ranks with one row fewer pad
with one of their own rows, so every rank yields ``ceil(total / world)`` rows and the same number
of batches (DDP hangs otherwise), and across ranks every selected row is seen exactly once per
epoch plus at most ``world - 1`` padding rows.

The assignment of rows to ranks is fixed for the run (seeded), so a rank reads its data once;
the order within a rank changes every epoch. With gradients averaged over ranks this is as good
as a global shuffle for SGD, and it is what keeps a rank from reading other ranks' rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loganomaly.errors import StageInputError
from loganomaly.features.split import READ_COLUMNS, Shard, ShardPlan, mask_args, micros, with_abnormal
from loganomaly.lake.snapshot import open_parquet
from loganomaly.runtime.collective import Collective

log = logging.getLogger(__name__)

__all__ = ["READER", "ArrowReader", "ShardReader"]


class ShardReader:
    """One rank's view of a :class:`ShardPlan`: loads its rows once, orders them per epoch.

    Args:
        plan: the plan every rank shares.
        rank, world: this rank and the number of ranks.
        equal: training shards must give every rank rows (and are padded to equal lengths);
            validation (``equal=False``) runs outside the collectives and may leave a rank empty.
    """

    def __init__(self, plan: ShardPlan, rank: int, world: int, equal: bool = True) -> None:
        if equal:
            plan.check_world(world)
        elif not 0 <= rank < world:
            raise StageInputError(f"rank {rank} outside world size {world}")
        self.plan, self.rank, self.world = plan, rank, world
        self.lo, self.hi = plan.rank_range(rank, world)

    @property
    def rows_per_epoch(self) -> int:
        """Rows this rank yields per epoch (equal on all ranks)."""
        return self.plan.rows_per_rank(self.world)

    def batches_per_epoch(self, batch_size: int) -> int:
        return self.plan.batches_per_epoch(self.world, batch_size)

    def load(self) -> Shard:
        """Read this rank's rows: only the row groups overlapping its range, only the needed columns.

        Raises:
            StageInputError: the windows have mixed or inconsistent shapes, or a row group no longer
                holds the rows the plan counted (the plan is from another snapshot).
        """
        xs: list[np.ndarray] = []
        entities: list[np.ndarray] = []
        starts_us: list[np.ndarray] = []
        abnormal: list[np.ndarray | None] = []
        shape: tuple[int, int] | None = None
        offset, groups = 0, 0
        files: dict[str, pq.ParquetFile] = {}
        for unit in self.plan.units:
            a, b = max(self.lo, offset), min(self.hi, offset + unit.rows)
            if a < b:
                if unit.uri not in files:
                    files = {unit.uri: open_parquet(unit.uri)}  # keep at most one file open
                parquet = files[unit.uri]
                table = parquet.read_row_group(unit.row_group, columns=with_abnormal(parquet, READ_COLUMNS))
                keep = np.flatnonzero(self.plan.selection.mask(*mask_args(table)))
                if len(keep) != unit.rows:
                    raise StageInputError(
                        f"row group {unit.row_group} of {unit.uri} has {len(keep)} selected rows, the plan "
                        f"{unit.rows}; was the plan made for another snapshot?"
                    )
                part = table.take(pa.array(keep[a - offset : b - offset]))
                x, shape = _windows(part, shape, unit.uri)
                xs.append(x)
                entities.append(part.column("entity").to_numpy(zero_copy_only=False))
                starts_us.append(micros(part.column("window_start")))
                abnormal.append(mask_args(part)[2])
                groups += 1
            offset += unit.rows
            if offset >= self.hi:
                break
        steps, feats = shape if shape is not None else (0, 0)
        shard = Shard(
            np.concatenate(xs) if xs else np.zeros((0, steps, feats), np.float32),
            np.concatenate(entities) if entities else np.zeros(0, object),
            np.concatenate(starts_us) if starts_us else np.zeros(0, np.int64),
            # A file of an older table version may lack the column: then no labels at all.
            None if any(a is None for a in abnormal)
            else np.concatenate([a for a in abnormal if a is not None]).astype(np.int64) if abnormal
            else np.zeros(0, np.int64),
        )
        log.debug("rank %d/%d read %d %s windows from %d row groups", self.rank, self.world, len(shard),
                  self.plan.selection.part, groups)
        return shard

    def epoch_indices(self, epoch: int, n_local: int | None = None) -> np.ndarray:
        """Positions into this rank's shard for one epoch: a fresh shuffle, padded to the common length.

        The shuffle is seeded by (plan seed, epoch, rank), so a resumed run repeats it. Padding
        repeats at most one of this rank's own rows (ranges differ by at most one row).
        """
        n = self.hi - self.lo if n_local is None else n_local
        rng = np.random.default_rng([self.plan.seed, epoch, self.rank])
        order = rng.permutation(n)
        pad = self.rows_per_epoch - n
        if pad:
            order = np.concatenate([order, rng.choice(n, size=pad, replace=pad > n)])
        return order


def _windows(table: pa.Table, shape: tuple[int, int] | None, uri: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The ``features`` column as ``[n, T, F]`` float32, checking every row has the same shape."""
    steps = pc.unique(table.column("n_steps")).to_pylist()
    feats = pc.unique(table.column("n_features")).to_pylist()
    if len(steps) != 1 or len(feats) != 1 or None in steps or None in feats:
        raise StageInputError(f"{uri}: windows of mixed or missing shapes (n_steps {steps}, n_features {feats})")
    this = (int(steps[0]), int(feats[0]))
    if shape is not None and this != shape:
        raise StageInputError(f"{uri}: windows of shape {this}, earlier row groups {shape}")
    column = table.column("features").combine_chunks()
    if column.null_count:
        raise StageInputError(f"{uri}: {column.null_count} windows without features")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != this[0] * this[1]).any():
        raise StageInputError(f"{uri}: features of length {sorted(set(lengths.tolist()))[:5]}, "
                              f"expected n_steps * n_features = {this[0] * this[1]}")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(-1, *this), this


class ArrowReader:
    """``train.reader=arrow``: :class:`ShardReader` over the snapshot's Parquet files (works everywhere)."""

    #: It reads ``sequences.n_abnormal``, the classifier's labels.
    reads_labels = True

    def check_available(self) -> None:
        """pyarrow is a dependency: always available."""

    def check_dealing(self, plan: ShardPlan, world: int) -> None:
        """Rows are dealt by range, so any world size up to the row count works."""

    def read(self, plan: ShardPlan, comm: Collective, equal: bool) -> tuple[Shard, Callable[[int], np.ndarray]]:
        """This rank's rows of ``plan`` and its per-epoch order (``equal``: padded to the common length)."""
        reader = ShardReader(plan, comm.rank, comm.world, equal=equal)
        return reader.load(), reader.epoch_indices


READER = ArrowReader()
