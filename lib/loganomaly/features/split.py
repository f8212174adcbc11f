"""The train/validation split and how it is dealt to training ranks, as rules every process applies.

Splits are by time, never random: windows (or sessions) ending before the cut are the training
period, later ones are what scoring judges. Validation is not the period's last stretch but an
evenly spread set of time blocks inside it (:func:`validation_block_mask`), so the threshold is
calibrated on every time of day.

How a run over a pinned ``sequences`` snapshot is planned (driver) and read (ranks):

1. The driver pins a table version (:class:`~loganomaly.lake.snapshot.Snapshot`) and describes the
   split as a :class:`Selection`: the training period ``[train_from, train_until]`` plus the rule
   that puts the validation blocks aside. A selection is a few floats, not row keys, so nothing
   is collected on the driver.
2. :func:`plan_shards` streams only the two timestamp columns, one row group at a time, and
   counts the selected rows of every row group (a *unit*). Units are put in a seeded order and
   the resulting sequence of selected rows is cut into ``world`` contiguous ranges whose sizes
   differ by at most one. The plan is a small list of (file, row group, count) and travels to the
   ranks with the job.
3. A rank reads only the row groups that overlap its range with a reader of
   :data:`loganomaly.registry.READERS` and gets a :class:`Shard`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loganomaly.config import Config
from loganomaly.errors import StageInputError
from loganomaly.features.layout import NEW_LAYOUT, Layout, encode_windows
from loganomaly.lake.snapshot import Snapshot, open_parquet

if TYPE_CHECKING:
    from loganomaly.runtime.collective import Collective

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

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


def validation_block_mask(starts: np.ndarray, train_from: float, train_until: float, fraction: float) -> np.ndarray:
    """Windows that start in a validation block of the training period ``[train_from, train_until]``.

    Blocks are contiguous stretches of time (not random windows), so overlapping windows rarely
    straddle training and validation; spreading the blocks evenly makes the threshold see the
    whole daily cycle.
    """
    span = max(train_until - train_from, 1.0)
    block = np.clip(((starts - train_from) / span * VALIDATION_BLOCKS).astype(int), 0, VALIDATION_BLOCKS - 1)
    return _validation_blocks(float(fraction))[block]


@functools.lru_cache(maxsize=16)
def _validation_blocks(fraction: float) -> np.ndarray:
    """Which of the :data:`VALIDATION_BLOCKS` blocks validate, as a lookup by block number.

    Computed once per fraction: the mask runs once per row group and plan, hundreds of times a run.
    """
    n_val = max(1, round(VALIDATION_BLOCKS * fraction))
    chosen = np.unique(np.round(np.linspace(VALIDATION_BLOCKS - 1, 0, n_val, endpoint=False)).astype(int))
    lookup = np.zeros(VALIDATION_BLOCKS, dtype=bool)
    lookup[chosen] = True
    lookup.setflags(write=False)
    return lookup


def order_validation_mask(starts: np.ndarray, eligible: np.ndarray, fraction: float) -> np.ndarray:
    """Every ``round(1 / fraction)``-th eligible session in start order (ties by position) validates."""
    every = max(2, round(1 / fraction))
    idx = np.flatnonzero(eligible)
    ordered = idx[np.argsort(starts[idx], kind="stable")]
    mask = np.zeros(len(starts), dtype=bool)
    mask[ordered[every - 1 :: every]] = True
    return mask


@dataclass
class Split:
    """Chronological split of window times (epoch seconds)."""

    train_from: float
    train_until: float  # windows ending at or before this are the training period

    def as_dict(self) -> dict[str, str]:
        def iso(t: float) -> str:
            return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()

        return {"train_from": iso(self.train_from), "train_until": iso(self.train_until)}

    def validation_mask(self, starts: np.ndarray, fraction: float) -> np.ndarray:
        """Windows of the training period that start in a validation block (:func:`validation_block_mask`)."""
        return validation_block_mask(starts, self.train_from, self.train_until, fraction)


def training_cut(cfg: Config, whole: tuple[float, float] | None) -> float:
    """Where the training period ends: ``train.train_until``, or ``train.train_fraction`` of ``whole``.

    Raises:
        StageInputError: no ``train_until`` and no data (``whole`` is None).
    """
    if cfg.train.train_until:
        until = dt.datetime.fromisoformat(cfg.train.train_until)
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.timezone.utc)
        return until.timestamp()
    if whole is None:
        raise StageInputError("nothing to split: the input is empty")
    lo, hi = whole
    return lo + (hi - lo) * cfg.train.train_fraction


def chronological_split(starts: np.ndarray, ends: np.ndarray, cfg: Config) -> Split:
    """The split of rows with these start and end times (epoch seconds)."""
    whole = (float(starts.min()), float(ends.max())) if len(starts) else None
    cut = training_cut(cfg, whole)
    in_train = starts[ends <= cut]
    if len(in_train) == 0:
        raise StageInputError(
            f"no windows end before the training cut {dt.datetime.fromtimestamp(cut, dt.timezone.utc)}"
        )
    return Split(float(in_train.min()), cut)


def snapshot_split(snapshot: Snapshot, cfg: Config) -> Split:
    """:func:`chronological_split` computed by streaming the snapshot's time columns, never collecting them."""
    cut = training_cut(cfg, None if cfg.train.train_until else time_range(snapshot))
    period = time_range(snapshot, until=cut)
    if period is None:
        raise StageInputError(
            f"no windows end before the training cut {dt.datetime.fromtimestamp(cut, dt.timezone.utc)}"
        )
    return Split(period[0], cut)


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


def micros(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A timestamp column as epoch microseconds (int64), whatever unit its files store.

    delta-rs writes microseconds; delta-spark writes Spark's default INT96, which pyarrow reads as
    nanoseconds.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if pa.types.is_timestamp(column.type) and column.type.unit != "us":
        column = column.cast(pa.timestamp("us", column.type.tz), safe=False)
    if pa.types.is_timestamp(column.type) and column.null_count == 0:
        # The values buffer is already int64 microseconds: a copy of it, without a compute call
        # (whose fixed cost, paid per row group, was a quarter of a rank's read time).
        return np.frombuffer(column.buffers()[1], np.int64, count=len(column), offset=column.offset * 8).copy()
    return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)


def _times(batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Window start and end as epoch seconds (float64), as the split rule expects them."""
    starts = micros(batch.column("window_start")) / 1e6
    ends = micros(batch.column("window_end")) / 1e6
    return starts, ends


def mask_args(batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """What :meth:`Selection.mask` takes: start, end and, when the table has it, ``n_abnormal``."""
    starts, ends = _times(batch)
    if ABNORMAL_COLUMN not in batch.schema.names:
        return starts, ends, None
    abnormal = pc.fill_null(batch.column(ABNORMAL_COLUMN), 0).to_numpy(zero_copy_only=False)
    return starts, ends, abnormal


def with_abnormal(parquet: pq.ParquetFile, columns: Sequence[str]) -> list[str]:
    """``columns`` plus ``n_abnormal`` when the file has it (tables from before it do not)."""
    names = parquet.schema_arrow.names
    return [*columns, ABNORMAL_COLUMN] if ABNORMAL_COLUMN in names else list(columns)


def iter_row_group_times(snapshot: Snapshot) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """(file, row group, starts, ends) for every row group, reading only the two time columns.

    Memory stays at one row group's timestamps, so the driver can scan any table this way.
    """
    for uri, rg, starts, ends, _ in _iter_row_group_mask_args(snapshot):
        yield uri, rg, starts, ends


#: Files or row groups read at once by :func:`read_ahead` (each read is I/O plus decoding in
#: pyarrow, which releases the GIL, so a few threads overlap the per-file costs).
READ_THREADS = 4


def read_ahead(read: Callable[[K], V], keys: Sequence[K], threads: int = READ_THREADS) -> Iterator[V]:
    """``map(read, keys)`` in order, with up to ``threads`` reads running and ``2 * threads`` results held.

    Planning and the shard readers open many small Parquet files (one per date partition); reading
    them one after the other leaves the per-file costs in series. Memory stays bounded: at most
    ``2 * threads`` results wait to be consumed.
    """
    workers = min(threads, len(keys))
    if workers <= 1:
        yield from map(read, keys)
        return
    with ThreadPoolExecutor(workers) as pool:
        ahead: deque[Future[V]] = deque()
        try:
            for key in keys:
                ahead.append(pool.submit(read, key))
                if len(ahead) > 2 * workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()


#: Most rows whose time columns the driver keeps from one scan of a snapshot to the next (about
#: 24 bytes a row: 48 MB). Planning a run scans them up to three times (the time range, the range
#: of the training period, the shard plan); a snapshot version never changes, so below this size
#: the later scans reuse the first one's columns instead of reading every file again.
TIME_CACHE_ROWS = 2_000_000

_RowGroupTimes = tuple[str, int, np.ndarray, np.ndarray, np.ndarray | None]
_time_cache: dict[tuple[str, int], list[_RowGroupTimes]] = {}


def _iter_row_group_mask_args(snapshot: Snapshot) -> Iterator[_RowGroupTimes]:
    """(file, row group, starts, ends, n_abnormal or None): the columns the selections need.

    The last fully scanned snapshot of at most :data:`TIME_CACHE_ROWS` rows is kept (read-only
    arrays), so a planning's later scans of the same version read no file.
    """
    key = (snapshot.path, snapshot.version)
    cached = _time_cache.get(key)
    if cached is not None:
        yield from cached
        return
    kept: list[_RowGroupTimes] | None = []
    rows = 0

    def scan(uri: str) -> list[_RowGroupTimes]:
        parquet = open_parquet(uri)
        columns = with_abnormal(parquet, TIME_COLUMNS)
        out = []
        for rg in range(parquet.metadata.num_row_groups):
            starts, ends, abnormal = mask_args(parquet.read_row_group(rg, columns=columns))
            for array in (starts, ends, abnormal):
                if array is not None:
                    array.setflags(write=False)
            out.append((uri, rg, starts, ends, abnormal))
        return out

    for file_items in read_ahead(scan, snapshot.file_uris()):
        for item in file_items:
            if kept is not None:
                rows += len(item[2])
                if rows <= TIME_CACHE_ROWS:
                    kept.append(item)
                else:
                    kept = None
            yield item
    if kept is not None:
        _time_cache.clear()
        _time_cache[key] = kept


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
        parquet = open_parquet(uri)
        for rg in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(rg, columns=["n_steps", "n_features"])
            if table.num_rows:
                return int(table.column("n_steps")[0].as_py()), int(table.column("n_features")[0].as_py())
    return None


def selected_keys(plan: ShardPlan) -> tuple[np.ndarray, np.ndarray]:
    """(entity, window start in epoch microseconds) of every window ``plan`` selects, in plan order.

    Reads only the key and time columns (and ``n_abnormal``), so the driver can afford it for a
    whole training period: a daily alert budget needs the windows' density over whole days, which
    the validation blocks alone (slices of each day) understate.
    """
    entities: list[np.ndarray] = []
    starts: list[np.ndarray] = []

    def read(unit: Unit) -> pa.Table:
        parquet = open_parquet(unit.uri)
        return parquet.read_row_group(unit.row_group, columns=with_abnormal(parquet, ["entity", "window_start",
                                                                                      "window_end"]))

    for table in read_ahead(read, list(plan.units)):
        keep = plan.selection.mask(*mask_args(table))
        entities.append(table.column("entity").to_numpy(zero_copy_only=False)[keep])
        starts.append(micros(table.column("window_start"))[keep])
    if not entities:
        return np.array([], dtype=object), np.array([], dtype=np.int64)
    return np.concatenate(entities), np.concatenate(starts)


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


def stored_feature_names(path: str, version: int | None = None) -> list[str] | None:
    """Feature names of a ``sequences`` snapshot, read from its first row.

    One row is enough: featurize writes the whole table in one commit with one name list. Returns
    ``None`` for an empty table or one written without the column (e.g. by
    :func:`write_windows`); callers decide what that means. delta-rs only lists
    the snapshot's files and pyarrow reads them (not ``DeltaTable.to_pyarrow_dataset``, which
    needs pyarrow >= 15 and so would fail in the Petastorm environment).
    """
    if version is None:
        from deltalake import DeltaTable

        version = int(DeltaTable(path).version())
    for uri in Snapshot(path, version).file_uris():
        parquet = open_parquet(uri)
        if "feature_names" not in parquet.schema_arrow.names:
            return None
        for rg in range(parquet.metadata.num_row_groups):
            head = parquet.read_row_group(rg, columns=["feature_names"])
            if head.num_rows:
                names = head.column("feature_names")[0].as_py()
                return [str(n) for n in names] if names is not None else None
    return None


def write_windows(
    path: str,
    x: np.ndarray,
    starts: np.ndarray,
    step_seconds: float,
    entities: Sequence[str] | np.ndarray | None = None,
    mode: Literal["append", "overwrite"] = "append",
    max_rows_per_group: int | None = None,
    abnormal: Sequence[int | None] | np.ndarray | None = None,
    layout: Layout = NEW_LAYOUT,
) -> int:
    """Write windows as a ``sequences``-shaped Delta table with delta-rs; returns the new version.

    For benchmarks, tests and notebooks that need a ``sequences`` table without running ingest
    and featurize (the pipeline writes it with :class:`loganomaly.lake.tables.Lake`).

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
        layout: how ``features`` is stored (:mod:`loganomaly.features.layout`): ``binary`` (what
            featurize writes) or ``list`` (``array<float>``, tables written before it).
    """
    from deltalake import DeltaTable, WriterProperties, write_deltalake

    n, steps, feats = x.shape
    start_us = (np.asarray(starts, dtype=np.float64) * 1e6).astype(np.int64)
    end_us = start_us + int(steps * step_seconds * 1e6)
    ts = pa.timestamp("us", tz="UTC")
    if layout == "binary":
        features: pa.Array | pa.ChunkedArray = encode_windows(x)
    else:
        flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
        features = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * steps * feats), flat)
    table = pa.table({
        "entity": pa.array(list(entities) if entities is not None else ["e0"] * n, pa.string()),
        "window_start": pa.array(start_us, ts),
        "window_end": pa.array(end_us, ts),
        "date": pa.array(start_us // 86_400_000_000, pa.int32()).cast(pa.date32()),
        "n_steps": pa.array(np.full(n, steps, np.int32)),
        "n_features": pa.array(np.full(n, feats, np.int32)),
        "features": features,
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
    return int(DeltaTable(path).version())


class Reader(Protocol):
    """What a ``train.reader`` (:data:`loganomaly.registry.READERS`) is: how a rank reads its shard.

    Declared here, beside :class:`ShardPlan` and :class:`Shard`, because the model kinds (a layer
    below ``training``, where the readers live) call it.
    """

    #: Whether it reads ``sequences.n_abnormal`` (the supervised classifier's labels).
    reads_labels: bool

    def check_available(self) -> None:
        """Raise on the driver when the reader cannot run here (a clear ConfigError)."""

    def check_dealing(self, plan: ShardPlan, world: int) -> None:
        """Raise on the driver when ``world`` ranks cannot each get rows of ``plan``."""

    def read(self, plan: ShardPlan, comm: Collective, equal: bool) -> tuple[Shard, Callable[[int], np.ndarray]]:
        """This rank's rows of ``plan`` and its per-epoch order (``equal``: padded to the common length)."""

    def read_parts(self, plans: Sequence[ShardPlan], comm: Collective, equal: Sequence[bool]
                   ) -> list[tuple[Shard, Callable[[int], np.ndarray]]]:
        """:meth:`read` of several plans of one snapshot (training and validation) in one go.

        A reader that can share work between the plans (the Arrow reader reads each row group
        once for both) does; one that cannot reads them one after the other.
        """
