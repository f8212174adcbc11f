"""Stream a rank's shard of a pinned ``sequences`` snapshot with pyarrow: no Spark in the ranks.

Why not Petastorm or Spark: Petastorm cannot run with pyarrow >= 15 (so not beside PySpark 4.1)
and its thread-pool reader silently returned empty shards; a training rank has no SparkSession.
delta-rs gives the exact Parquet files of one table version, pyarrow reads them.

How a run is planned (driver) and read (ranks):

1. The driver pins a table version (:class:`Snapshot`) and describes the split as a
   :class:`Selection`: the training period ``[train_from, train_until]`` plus the rule that puts
   evenly spread time blocks of it into validation. A selection is a few floats, not row keys,
   so nothing is collected on the driver.
2. :func:`plan_shards` streams only the two timestamp columns, one row group at a time, and
   counts the selected rows of every row group (a *unit*). Units are put in a seeded order and
   the resulting sequence of selected rows is cut into ``world`` contiguous ranges whose sizes
   differ by at most one. The plan is a small list of (file, row group, count) and travels to the
   ranks with the job.
3. A rank (:class:`ShardReader`) reads only the row groups that overlap its range (a row group
   on a boundary is read by the two ranks that share it, nothing else is read twice), keeps its
   selected rows in memory as float32 windows, and per epoch shuffles them with a seed of
   (base seed, epoch, rank). Ranks with one row fewer pad with one of their own rows, so every
   rank yields ``ceil(total / world)`` rows and the same number of batches (DDP hangs otherwise),
   and across ranks every selected row is seen exactly once per epoch plus at most
   ``world - 1`` padding rows.

The assignment of rows to ranks is fixed for the run (seeded), so a rank reads its data once;
the order within a rank changes every epoch. With gradients averaged over ranks this is as good
as a global shuffle for SGD, and it is what keeps a rank from reading other ranks' rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loganomaly.errors import StageInputError, TableError

log = logging.getLogger(__name__)

#: The training period is cut into this many equal time blocks; validation takes an evenly spread
#: subset of them, so it sees every time of day instead of only the period's last hours.
VALIDATION_BLOCKS = 24

#: Columns a rank reads; ``entity`` and ``window_start`` identify a window (its row key).
READ_COLUMNS = ("entity", "window_start", "window_end", "n_steps", "n_features", "features")
TIME_COLUMNS = ("window_start", "window_end")
#: Count of abnormal-labelled events per window (``train.normal_only``); absent in older tables.
ABNORMAL_COLUMN = "n_abnormal"

Part = Literal["train", "validation", "all"]
PARTS: tuple[str, ...] = ("train", "validation", "all")


@dataclass(frozen=True)
class Snapshot:
    """One version of a Delta table: what every rank of a run reads, however the table moves on."""

    path: str
    version: int

    def file_uris(self) -> list[str]:
        """The snapshot's Parquet files (sorted, so every process sees the same order).

        Raises:
            TableError: the table uses a feature this reader would silently get wrong (deletion
                vectors, column mapping).
        """
        from deltalake import DeltaTable

        try:
            table = DeltaTable(self.path, version=self.version)
        except Exception as exc:  # delta-rs raises several types for a missing table or version
            raise TableError(f"cannot open Delta table {self.path} at version {self.version}: {exc}") from None
        features = set(table.protocol().reader_features or [])
        if "deletionVectors" in features:
            raise TableError(f"{self.path} uses deletion vectors, which this reader does not apply")
        mapping = table.metadata().configuration.get("delta.columnMapping.mode", "none")
        if mapping not in ("none", None):
            raise TableError(f"{self.path} uses column mapping mode {mapping!r}, which this reader does not apply")
        return sorted(table.file_uris())


def validation_block_mask(starts: np.ndarray, train_from: float, train_until: float, fraction: float) -> np.ndarray:
    """Windows that start in a validation block of the training period ``[train_from, train_until]``.

    Blocks are contiguous stretches of time (not random windows), so overlapping windows rarely
    straddle training and validation; spreading the blocks evenly makes the threshold see the
    whole daily cycle.
    """
    span = max(train_until - train_from, 1.0)
    block = np.clip(((starts - train_from) / span * VALIDATION_BLOCKS).astype(int), 0, VALIDATION_BLOCKS - 1)
    n_val = max(1, round(VALIDATION_BLOCKS * fraction))
    chosen = np.unique(np.round(np.linspace(VALIDATION_BLOCKS - 1, 0, n_val, endpoint=False)).astype(int))
    return np.isin(block, chosen)


@dataclass(frozen=True)
class Selection:
    """Which windows of a snapshot a part of the split keeps, as a rule every process can apply.

    Attributes:
        train_from: first window start of the training period (epoch seconds).
        train_until: windows ending at or before this are the training period.
        validation_fraction: share of :data:`VALIDATION_BLOCKS` time blocks held out.
        part: ``train`` (period minus validation blocks), ``validation`` or ``all`` (every row).
        normal_only: also leave out windows with events labelled abnormal (``n_abnormal > 0``;
            tables without the column have none), for ``train`` and ``validation``.
    """

    train_from: float
    train_until: float
    validation_fraction: float
    part: Part = "train"
    normal_only: bool = False

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise StageInputError(f"unknown selection part {self.part!r}; choose one of: {', '.join(PARTS)}")

    def mask(self, starts: np.ndarray, ends: np.ndarray, abnormal: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask of the selected windows, from start and end times in epoch seconds.

        ``abnormal`` (the ``n_abnormal`` column, when the table has it) applies with ``normal_only``.
        """
        if self.part == "all":
            return np.ones(len(starts), dtype=bool)
        in_period = ends <= self.train_until
        val = validation_block_mask(starts, self.train_from, self.train_until, self.validation_fraction)
        keep = in_period & (val if self.part == "validation" else ~val)
        if self.normal_only and abnormal is not None:
            keep &= abnormal == 0
        return keep


@dataclass(frozen=True)
class Unit:
    """One Parquet row group and how many of its rows a selection keeps."""

    uri: str
    row_group: int
    rows: int


@dataclass(frozen=True)
class ShardPlan:
    """How a selection of a snapshot is dealt to ranks; small, plain, sent with the job.

    Attributes:
        snapshot: the pinned table version.
        selection: the rule applied to every row group.
        units: row groups with at least one selected row, in the seeded order ranks cut.
        seed: the seed of that order (and of the per-epoch shuffles).
    """

    snapshot: Snapshot
    selection: Selection
    units: tuple[Unit, ...]
    seed: int

    @property
    def total(self) -> int:
        """Selected rows over all units."""
        return sum(u.rows for u in self.units)

    def rank_range(self, rank: int, world: int) -> tuple[int, int]:
        """This rank's ``[lo, hi)`` of the selected-row sequence; sizes differ by at most one."""
        if not 0 <= rank < world:
            raise StageInputError(f"rank {rank} outside world size {world}")
        total = self.total
        return rank * total // world, (rank + 1) * total // world

    def rows_per_rank(self, world: int) -> int:
        """Rows every rank yields per epoch, padding included."""
        return math.ceil(self.total / world)

    def batches_per_epoch(self, world: int, batch_size: int) -> int:
        """Batches every rank runs per epoch (the same on all ranks by construction)."""
        return math.ceil(self.rows_per_rank(world) / batch_size)

    def check_world(self, world: int) -> None:
        """Refuse a world size that would leave a rank without rows (it would have nothing to pad with).

        Raises:
            StageInputError: fewer selected rows than ranks.
        """
        if self.total < world:
            raise StageInputError(
                f"{self.total} {self.selection.part} windows cannot be shared by {world} ranks; "
                "lower train.num_processes or train on more data"
            )


def _micros(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A timestamp column as epoch microseconds (int64), whatever unit its files store.

    delta-rs writes microseconds; delta-spark writes Spark's default INT96, which pyarrow reads as
    nanoseconds.
    """
    if pa.types.is_timestamp(column.type) and column.type.unit != "us":
        column = column.cast(pa.timestamp("us", column.type.tz), safe=False)
    return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)


def _times(batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Window start and end as epoch seconds (float64), as the split rule expects them."""
    starts = _micros(batch.column("window_start")) / 1e6
    ends = _micros(batch.column("window_end")) / 1e6
    return starts, ends


def _mask_args(batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What :meth:`Selection.mask` takes: start, end and, when the table has it, ``n_abnormal``."""
    starts, ends = _times(batch)
    if ABNORMAL_COLUMN not in batch.schema.names:
        return starts, ends, None
    abnormal = pc.fill_null(batch.column(ABNORMAL_COLUMN), 0).to_numpy(zero_copy_only=False)
    return starts, ends, abnormal


def _with_abnormal(parquet: pq.ParquetFile, columns: Sequence[str]) -> list[str]:
    """``columns`` plus ``n_abnormal`` when the file has it (tables from before it do not)."""
    names = parquet.schema_arrow.names
    return [*columns, ABNORMAL_COLUMN] if ABNORMAL_COLUMN in names else list(columns)


def _open(uri: str) -> pq.ParquetFile:
    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    return pq.ParquetFile(fs.open_input_file(path))


def iter_row_group_times(snapshot: Snapshot) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """(file, row group, starts, ends) for every row group, reading only the two time columns.

    Memory stays at one row group's timestamps, so the driver can scan any table this way.
    """
    for uri, rg, starts, ends, _ in _iter_row_group_mask_args(snapshot):
        yield uri, rg, starts, ends


def _iter_row_group_mask_args(
    snapshot: Snapshot,
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray, np.ndarray | None]]:
    """(file, row group, starts, ends, n_abnormal or None): the columns the selections need."""
    for uri in snapshot.file_uris():
        parquet = _open(uri)
        columns = _with_abnormal(parquet, TIME_COLUMNS)
        for rg in range(parquet.metadata.num_row_groups):
            yield uri, rg, *_mask_args(parquet.read_row_group(rg, columns=columns))


def time_range(snapshot: Snapshot, until: float | None = None) -> tuple[float, float] | None:
    """(earliest window start, latest window end) of the snapshot, or of the windows ending by ``until``.

    Returns None when no window qualifies.
    """
    lo, hi = math.inf, -math.inf
    for _, _, starts, ends in iter_row_group_times(snapshot):
        if until is not None:
            keep = ends <= until
            starts, ends = starts[keep], ends[keep]
        if len(starts):
            lo, hi = min(lo, float(starts.min())), max(hi, float(ends.max()))
    return None if lo == math.inf else (lo, hi)


def window_shape(snapshot: Snapshot) -> tuple[int, int] | None:
    """(n_steps, n_features) of the snapshot's first window, from one row group's two int columns."""
    for uri in snapshot.file_uris():
        parquet = _open(uri)
        for rg in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(rg, columns=["n_steps", "n_features"])
            if table.num_rows:
                return int(table.column("n_steps")[0].as_py()), int(table.column("n_features")[0].as_py())
    return None


def plan_shards(snapshot: Snapshot, selections: Sequence[Selection], seed: int) -> list[ShardPlan]:
    """Plan how each selection is dealt to ranks, in one streaming pass over the time columns.

    Example:
        >>> snap = Snapshot("/lake/sequences", 7)
        >>> train, val = plan_shards(snap, [Selection(t0, t1, 0.25, "train"),
        ...                                 Selection(t0, t1, 0.25, "validation")], seed=123)
        >>> ShardReader(train, rank=1, world=2).load()
    """
    counts: list[list[Unit]] = [[] for _ in selections]
    for uri, rg, starts, ends, abnormal in _iter_row_group_mask_args(snapshot):
        for i, sel in enumerate(selections):
            n = int(sel.mask(starts, ends, abnormal).sum())
            if n:
                counts[i].append(Unit(uri, rg, n))
    plans = []
    for sel, units in zip(selections, counts, strict=True):
        # Seeded order: which row groups end up together on a rank changes with the seed, not
        # with file names (which follow dates, so a plain cut would give each rank one period).
        order = np.random.default_rng([seed, 0x5EED]).permutation(len(units))
        plans.append(ShardPlan(snapshot, sel, tuple(units[i] for i in order), seed))
        log.info("planned %s: %d windows in %d row groups of %s version %d",
                 sel.part, plans[-1].total, len(units), snapshot.path, snapshot.version)
    return plans


@dataclass
class Shard:
    """A rank's selected windows, in plan order.

    Attributes:
        x: raw (not normalised) windows ``[n, T, F]`` float32.
        entity: entity of each window; with ``window_start`` the row key.
        window_start: start of each window, epoch microseconds.
        abnormal: ``n_abnormal`` of each window (nulls as 0), or ``None`` when the table has no
            such column; the labels of the supervised classifier.
    """

    x: np.ndarray
    entity: np.ndarray
    window_start: np.ndarray = field(repr=False)
    abnormal: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.x)

    def keys(self) -> list[tuple[str, int]]:
        """(entity, window_start microseconds) of every window."""
        return list(zip(self.entity.tolist(), self.window_start.tolist(), strict=True))


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
                    files = {unit.uri: _open(unit.uri)}  # keep at most one file open
                parquet = files[unit.uri]
                table = parquet.read_row_group(unit.row_group, columns=_with_abnormal(parquet, READ_COLUMNS))
                keep = np.flatnonzero(self.plan.selection.mask(*_mask_args(table)))
                if len(keep) != unit.rows:
                    raise StageInputError(
                        f"row group {unit.row_group} of {unit.uri} has {len(keep)} selected rows, the plan "
                        f"{unit.rows}; was the plan made for another snapshot?"
                    )
                part = table.take(pa.array(keep[a - offset : b - offset]))
                x, shape = _windows(part, shape, unit.uri)
                xs.append(x)
                entities.append(part.column("entity").to_numpy(zero_copy_only=False))
                starts_us.append(_micros(part.column("window_start")))
                abnormal.append(_mask_args(part)[2])
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


def write_windows(
    path: str,
    x: np.ndarray,
    starts: np.ndarray,
    step_seconds: float,
    entities: Sequence[str] | np.ndarray | None = None,
    mode: Literal["append", "overwrite"] = "append",
    max_rows_per_group: int | None = None,
    abnormal: Sequence[int | None] | np.ndarray | None = None,
) -> int:
    """Write windows as a ``sequences``-shaped Delta table with delta-rs; returns the new version.

    For benchmarks, tests and notebooks that need a ``sequences`` table without running ingest
    and featurize (the pipeline writes it with :class:`loganomaly.tables.Lake`).

    Example:
        >>> write_windows("/tmp/lake/sequences", x, starts=np.arange(len(x)) * 600.0, step_seconds=60)

    Args:
        path: table directory.
        x: raw windows ``[N, T, F]``.
        starts: window starts, epoch seconds (``window_end = start + T * step_seconds``).
        step_seconds: length of one step.
        entities: entity per window (default ``"e0"``).
        mode: ``append`` or ``overwrite``.
        max_rows_per_group: Parquet row group size (small values give tests many row groups).
        abnormal: ``n_abnormal`` per window (nulls allowed); without it the column is not written,
            as in tables from before it existed.
    """
    from deltalake import WriterProperties, write_deltalake

    n, steps, feats = x.shape
    start_us = (np.asarray(starts, dtype=np.float64) * 1e6).astype(np.int64)
    end_us = start_us + int(steps * step_seconds * 1e6)
    ts = pa.timestamp("us", tz="UTC")
    flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * steps * feats)
    table = pa.table({
        "entity": pa.array(list(entities) if entities is not None else ["e0"] * n, pa.string()),
        "window_start": pa.array(start_us, ts),
        "window_end": pa.array(end_us, ts),
        "date": pa.array(start_us // 86_400_000_000, pa.int32()).cast(pa.date32()),
        "n_steps": pa.array(np.full(n, steps, np.int32)),
        "n_features": pa.array(np.full(n, feats, np.int32)),
        "features": pa.ListArray.from_arrays(offsets, flat),
        "n_events": pa.array(np.zeros(n, np.int64)),
        "run_id": pa.array(["write_windows"] * n, pa.string()),
    })
    if abnormal is not None:
        values = abnormal.tolist() if isinstance(abnormal, np.ndarray) else list(abnormal)
        table = table.append_column(ABNORMAL_COLUMN, pa.array(values, pa.int64()))
    props = WriterProperties(max_row_group_size=max_rows_per_group)  # None: the writer's default
    if mode == "overwrite":
        write_deltalake(path, table, mode="overwrite", partition_by=["date"], writer_properties=props)
    else:
        write_deltalake(path, table, mode="append", partition_by=["date"], writer_properties=props)
    from deltalake import DeltaTable

    return int(DeltaTable(path).version())
