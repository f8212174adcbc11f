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
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loganomaly.errors import StageInputError
from loganomaly.features.layout import decode_windows
from loganomaly.features.split import (
    ABNORMAL_COLUMN,
    READ_COLUMNS,
    Reader,
    Shard,
    ShardPlan,
    Unit,
    micros,
    read_ahead,
    with_abnormal,
)
from loganomaly.lake.snapshot import open_parquet
from loganomaly.runtime.collective import Collective

log = logging.getLogger(__name__)

__all__ = ["READER", "ArrowReader", "ShardReader", "load_shards"]


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
        return load_shards([self])[0]

    def pieces(self) -> list[tuple[Unit, int, int]]:
        """(row group, first, end) of the selected rows this rank takes from each unit, in plan order."""
        out = []
        offset = 0
        for unit in self.plan.units:
            a, b = max(self.lo, offset), min(self.hi, offset + unit.rows)
            if a < b:
                out.append((unit, a - offset, b - offset))
            offset += unit.rows
            if offset >= self.hi:
                break
        return out

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


def load_shards(readers: Sequence[ShardReader]) -> list[Shard]:
    """Every reader's shard in one pass over the row groups they need (each read once).

    The training and validation plans of a run select rows of the same row groups (validation is
    time blocks inside the training period), so reading them plan by plan read most row groups
    twice; here each row group is read once, its selection masks computed once per plan, and
    each reader's rows come out in its own plan order. Row groups are read by a few threads
    (pyarrow releases the GIL while it reads and decodes), which overlaps the per-file costs.

    Raises:
        StageInputError: as :meth:`ShardReader.load`.
    """
    wanted: dict[tuple[str, int], list[tuple[int, int, Unit, int, int]]] = {}
    for r, reader in enumerate(readers):
        for position, (unit, a, b) in enumerate(reader.pieces()):
            wanted.setdefault((unit.uri, unit.row_group), []).append((r, position, unit, a, b))
    parts: list[dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]] = [{} for _ in readers]
    shapes: dict[tuple[int, int], str] = {}

    def read(key: tuple[str, int]) -> pa.Table:
        uri, row_group = key
        parquet = open_parquet(uri)
        return parquet.read_row_group(row_group, columns=with_abnormal(parquet, READ_COLUMNS))

    keys = list(wanted)
    for key, table in zip(keys, read_ahead(read, keys), strict=True):
        uri = key[0]
        # The columns every plan reading this row group shares, converted once.
        start_us, end_us = micros(table.column("window_start")), micros(table.column("window_end"))
        abnormal = (pc.fill_null(table.column(ABNORMAL_COLUMN), 0).to_numpy(zero_copy_only=False)
                    if ABNORMAL_COLUMN in table.schema.names else None)
        args = (start_us / 1e6, end_us / 1e6, abnormal)
        whole: tuple[np.ndarray, np.ndarray] | None = None
        if len(pc.unique(table.column("n_steps"))) == 1 and len(pc.unique(table.column("n_features"))) == 1:
            # One shape in the row group: decode it once (a view) and index it per plan.
            x_all, shape = _windows(table, None, uri)
            whole = (x_all, table.column("entity").to_numpy(zero_copy_only=False))
        for r, position, unit, a, b in wanted[key]:
            keep = np.flatnonzero(readers[r].plan.selection.mask(*args))
            if len(keep) != unit.rows:
                raise StageInputError(
                    f"row group {unit.row_group} of {uri} has {len(keep)} selected rows, the plan "
                    f"{unit.rows}; was the plan made for another snapshot?"
                )
            rows = keep[a:b]
            if whole is not None:
                x, entity = whole[0][rows], whole[1][rows]
            else:  # mixed shapes: only the selected rows must agree
                part = table.take(pa.array(rows))
                x, shape = _windows(part, None, uri)
                entity = part.column("entity").to_numpy(zero_copy_only=False)
            shapes.setdefault(shape, uri)
            if len(shapes) > 1:
                first = next(iter(shapes))
                raise StageInputError(f"{uri}: windows of shape {shape}, earlier row groups {first}")
            parts[r][position] = (x, entity, start_us[rows], None if abnormal is None else abnormal[rows])
    steps, feats = next(iter(shapes)) if shapes else (0, 0)
    shards = []
    for reader, mine in zip(readers, parts, strict=True):
        pieces = [mine[i] for i in sorted(mine)]
        labels = [p[3] for p in pieces]
        shard = Shard(
            np.concatenate([p[0] for p in pieces]) if pieces else np.zeros((0, steps, feats), np.float32),
            np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, object),
            np.concatenate([p[2] for p in pieces]) if pieces else np.zeros(0, np.int64),
            # A file of an older table version may lack the column: then no labels at all.
            None if any(a is None for a in labels)
            else np.concatenate([a for a in labels if a is not None]).astype(np.int64) if labels
            else np.zeros(0, np.int64),
        )
        log.debug("rank %d/%d read %d %s windows from %d row groups", reader.rank, reader.world, len(shard),
                  reader.plan.selection.part, len(pieces))
        shards.append(shard)
    return shards


def _windows(table: pa.Table, shape: tuple[int, int] | None, uri: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The ``features`` column as ``[n, T, F]`` float32, checking every row has the same shape."""
    steps = pc.unique(table.column("n_steps")).to_pylist()
    feats = pc.unique(table.column("n_features")).to_pylist()
    if len(steps) != 1 or len(feats) != 1 or None in steps or None in feats:
        raise StageInputError(f"{uri}: windows of mixed or missing shapes (n_steps {steps}, n_features {feats})")
    this = (int(steps[0]), int(feats[0]))
    if shape is not None and this != shape:
        raise StageInputError(f"{uri}: windows of shape {this}, earlier row groups {shape}")
    # Either stored layout (binary float32 tensors or array<float>), every row checked for its length.
    try:
        return decode_windows(table.column("features"), *this), this
    except StageInputError as exc:
        raise StageInputError(f"{uri}: {exc}") from exc


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
        ((shard, order),) = self.read_parts([plan], comm, [equal])
        return shard, order

    def read_parts(self, plans: Sequence[ShardPlan], comm: Collective, equal: Sequence[bool]
                   ) -> list[tuple[Shard, Callable[[int], np.ndarray]]]:
        """:meth:`read` of several plans of one snapshot (training and validation), each row group read once."""
        readers = [ShardReader(plan, comm.rank, comm.world, equal=e) for plan, e in zip(plans, equal, strict=True)]
        return [(shard, reader.epoch_indices) for shard, reader in zip(load_shards(readers), readers, strict=True)]


READER: Reader = ArrowReader()
