"""Read a rank's shard of a pinned ``sequences`` snapshot with Petastorm (``make_batch_reader``).

The second reader (``train.reader=petastorm``), for the compatibility environment only
(``make compat``: PySpark 4.0, pyarrow 14.0.2, Petastorm 0.12.1). Petastorm cannot run with
pyarrow >= 15, which PySpark 4.1 needs, so it is imported lazily and the main environment
refuses this reader with a :class:`~loganomaly.errors.ConfigError` that names ``make compat``.
The default :mod:`loganomaly.training.readers.arrow` (Arrow) needs none of this; choose Petastorm only where a
platform already standardises on it.

What it reads: the same pinned snapshot and the same plan as the Arrow reader. The plan
(:class:`~loganomaly.features.split.ShardPlan`) names the Parquet files that hold selected rows and how many
rows the selection keeps; Petastorm reads those files with ``cur_shard=rank``,
``shard_count=world``, ``num_epochs=1``, and every batch is filtered with the same
:meth:`~loganomaly.features.split.Selection.mask`, so train and validation are split exactly as with Arrow.

How its guarantees are kept, given that Petastorm deals *whole row groups* to ranks (row group
``i`` of the listed files goes to rank ``i % world``) and so gives ranks unequal shares:

* Every rank reads its row groups once, keeps its selected rows in memory and sorts them by the
  row key (entity, window start), so their order does not depend on which Petastorm worker thread
  finished first.
* The ranks exchange their row counts (:meth:`Collective.gather`). Every rank then yields as many
  rows per epoch as the largest shard, padding with its own rows, so all ranks run the same number
  of batches (DDP hangs otherwise). Every selected row is seen exactly once per epoch; padding adds
  ``sum(max - n_rank)`` rows, at most ``world - 1`` times the largest shard.
* The counts must add up to the plan's total (counted from the Parquet metadata scan of
  :func:`~loganomaly.features.split.plan_shards`): a short or repeated read, like Petastorm 0.13's
  thread pool returning nothing without an error, fails the run instead of training on less.
* A rank whose row groups hold no selected window has nothing to pad with: every rank raises a
  :class:`~loganomaly.errors.StageInputError` that says to write more row groups or use fewer
  ranks. The driver predicts the dealing from the Parquet footers (:func:`check_dealing`) and
  refuses such a run before any rank starts. A read that fails on one rank also fails every rank (after the exchange), so no rank
  waits forever in a collective.

Petastorm unpickles a Unischema only from a ``_common_metadata`` file; a list of Delta data files has
none, so nothing is unpickled here. The process pool (pickle over ZeroMQ) is never used.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from loganomaly.errors import ConfigError, LogAnomalyError, StageInputError
from loganomaly.features.split import ABNORMAL_COLUMN, READ_COLUMNS, Reader, Shard, ShardPlan
from loganomaly.lake.snapshot import open_parquet
from loganomaly.runtime.collective import Collective

log = logging.getLogger(__name__)

COMPAT_HINT = (
    "the petastorm reader runs only in the compatibility environment (PySpark 4.0, pyarrow 14.0.2, "
    "Petastorm 0.12.1): create it with `make compat` and run `.venv-compat/bin/loganomaly train --reader "
    "petastorm ...`, or use train.reader=arrow"
)

#: Petastorm releases whose thread pool returned zero rows with no error in some reads (README "Readers");
#: they get the single-threaded ``dummy`` pool.
RACY_THREAD_POOL_FROM = (0, 13)

#: Reader threads per rank for Petastorm 0.12 (a rank usually has one or two cores of its own).
THREAD_WORKERS = 2


def import_petastorm() -> Any:
    """The ``petastorm`` module, checked to be usable with the installed pyarrow.

    Raises:
        ConfigError: Petastorm is not installed, or pyarrow is too new for it (the main environment).
    """
    try:
        import petastorm  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(f"train.reader=petastorm but Petastorm cannot be imported ({exc}); {COMPAT_HINT}") from None
    import pyarrow

    if _version_tuple(pyarrow.__version__) >= (15,):
        raise ConfigError(f"Petastorm {petastorm.__version__} cannot run with pyarrow {pyarrow.__version__} "
                          f"(ParquetDataset(validate_schema=...) was removed in 15); {COMPAT_HINT}")
    return petastorm


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def pool_type_for(petastorm_version: str) -> str:
    """``thread`` for Petastorm 0.12, ``dummy`` (read in the calling thread) from 0.13 on (its race)."""
    return "dummy" if _version_tuple(petastorm_version) >= RACY_THREAD_POOL_FROM else "thread"


class PetastormShardReader:
    """One rank's Petastorm view of a :class:`ShardPlan`: its row groups, balanced with the other ranks.

    The interface of :class:`loganomaly.training.readers.arrow.ShardReader` (``load``, ``epoch_indices``,
    ``rows_per_epoch``, ``batches_per_epoch``), except that :meth:`load` is collective: every rank
    must call it, as every rank of a training run does.

    Args:
        plan: the plan every rank shares (its files, selection, total and seed are used).
        rank, world: this rank and the number of ranks.
        equal: training shards must give every rank rows and are padded to equal lengths;
            validation (``equal=False``) runs outside the collectives and may leave a rank empty.
        pool_type: Petastorm's ``reader_pool_type``; by default from :func:`pool_type_for`.
    """

    def __init__(self, plan: ShardPlan, rank: int, world: int, equal: bool = True,
                 pool_type: str | None = None) -> None:
        if not 0 <= rank < world:
            raise StageInputError(f"rank {rank} outside world size {world}")
        if equal:
            plan.check_world(world)
        self.plan, self.rank, self.world, self.equal = plan, rank, world, equal
        self.pool_type = pool_type
        self.counts: list[int] | None = None  # every rank's selected rows, after load()

    # ------------------------------------------------------------------ reading (no collectives)
    def files(self) -> list[str]:
        """The files this reader hands Petastorm (see :func:`plan_files`)."""
        return plan_files(self.plan)

    def read_local(self) -> Shard:
        """Read this rank's row groups with Petastorm, keep the selected rows, sort them by row key.

        Raises:
            ConfigError: Petastorm is unavailable here.
            StageInputError: training files with fewer row groups than ranks, or windows of mixed or
                broken shapes.
        """
        import_petastorm()
        from petastorm.errors import NoDataAvailableError  # type: ignore[import-not-found]

        files = self.files()
        if not files:
            return _empty_shard()
        try:
            return self._read(files, self.rank, self.world)
        except NoDataAvailableError as exc:
            if not self.equal:
                # Validation needs no balance (its loss is summed over ranks): with fewer row groups
                # than ranks, rank 0 reads them all.
                return self._read(files, None, None) if self.rank == 0 else _empty_shard()
            raise StageInputError(
                f"Petastorm cannot deal the {self.plan.selection.part} files of {self.plan.snapshot.path} to "
                f"{self.world} ranks ({exc}). It gives whole row groups to ranks; write more row groups "
                "(smaller row groups or more files), lower train.num_processes, or use train.reader=arrow"
            ) from None

    def _read(self, files: list[str], cur_shard: int | None, shard_count: int | None) -> Shard:
        petastorm = import_petastorm()
        pool = self.pool_type or pool_type_for(petastorm.__version__)
        with warnings.catch_warnings():
            # Petastorm 0.12 uses pyarrow's legacy ParquetDataset, which warns on every row group.
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?")
            shard, batches = self._read_batches(files, cur_shard, shard_count, pool)
        log.debug("rank %d/%d read %d %s windows in %d Petastorm batches (%s pool)", self.rank, self.world,
                  len(shard), self.plan.selection.part, batches, pool)
        return shard

    def _read_batches(self, files: list[str], cur_shard: int | None, shard_count: int | None, pool: str
                      ) -> tuple[Shard, int]:
        from petastorm import make_batch_reader

        xs: list[np.ndarray] = []
        entities: list[np.ndarray] = []
        starts_us: list[np.ndarray] = []
        shape: tuple[int, int] | None = None
        batches = 0
        with make_batch_reader(
            [_as_url(f) for f in files],
            # A pattern that matches no column is ignored, so tables without n_abnormal read as well.
            schema_fields=[*READ_COLUMNS, ABNORMAL_COLUMN],
            reader_pool_type=pool,
            workers_count=THREAD_WORKERS,
            num_epochs=1,
            cur_shard=cur_shard,
            shard_count=shard_count,
            shuffle_row_groups=False,
        ) as reader:
            for batch in reader:
                batches += 1
                start, end = _epoch_us(batch.window_start), _epoch_us(batch.window_end)
                # The Arrow reader's arithmetic (microseconds / 1e6), so both readers select the same rows.
                keep = self._mask(start / 1e6, end / 1e6, getattr(batch, ABNORMAL_COLUMN, None))
                if not keep.any():
                    continue
                x, shape = _windows(batch, keep, shape)
                xs.append(x)
                entities.append(np.asarray(batch.entity, dtype=object)[keep])
                starts_us.append(start[keep])
        if not xs:
            return _empty_shard(shape), batches
        x_all, entity, start_all = np.concatenate(xs), np.concatenate(entities), np.concatenate(starts_us)
        # Thread-pool results arrive in completion order; the row key makes the order reproducible.
        order = np.lexsort((start_all, entity.astype(str)))
        return Shard(x_all[order], entity[order], start_all[order]), batches

    def _mask(self, starts: np.ndarray, ends: np.ndarray, abnormal: Any) -> np.ndarray:
        """:meth:`Selection.mask`, given the ``n_abnormal`` column only where the table has one."""
        if abnormal is None:
            return self.plan.selection.mask(starts, ends)
        # An integer column with nulls comes back from pandas as float with NaN; null counts as 0.
        counts = np.nan_to_num(np.asarray(abnormal, dtype=np.float64), nan=0.0).astype(np.int64)
        return self.plan.selection.mask(starts, ends, counts)

    # ------------------------------------------------------------------ balancing (collective)
    def load(self, comm: Any) -> Shard:
        """Read this rank's rows and agree with the other ranks on the epoch length. Collective.

        Args:
            comm: the run's :class:`loganomaly.runtime.collective.Collective` (its ``rank``/``world`` must match).

        Raises:
            StageInputError: on every rank, when any rank failed to read, a training rank got no
                rows, or the ranks' rows do not add up to the plan's total.
        """
        if (comm.rank, comm.world) != (self.rank, self.world):
            raise StageInputError(f"reader for rank {self.rank}/{self.world} used with collective "
                                  f"{comm.rank}/{comm.world}")
        shard: Shard | None = None
        failure: Exception | None = None
        try:
            shard = self.read_local()
        # Any failure, not only ours: a rank that raised before the exchange would leave the
        # others waiting in it forever, so the failure is announced first and raised after.
        except Exception as exc:
            failure = exc
        mine = torch.tensor([len(shard) if shard is not None else 0, failure is not None], dtype=torch.int64)
        counts_failed = comm.gather(mine)
        counts = [int(c) for c in counts_failed[:, 0].tolist()]
        failed = [r for r, f in enumerate(counts_failed[:, 1].tolist()) if f]
        if failure is not None:
            if isinstance(failure, LogAnomalyError):
                raise failure
            raise StageInputError(f"rank {self.rank}: Petastorm failed to read its shard: {failure}") from failure
        if failed:
            raise StageInputError(f"ranks {failed} failed to read their Petastorm shards (see their logs)")
        self.settle(counts)
        assert shard is not None
        return shard

    def settle(self, counts: list[int]) -> None:
        """Check every rank's row count (in rank order, as :meth:`load` gathers them) and fix the epoch length.

        Raises:
            StageInputError: a training rank with no rows, or counts that do not add up to the plan.
        """
        if len(counts) != self.world:
            raise StageInputError(f"{len(counts)} row counts for {self.world} ranks")
        part = self.plan.selection.part
        if sum(counts) != self.plan.total:
            raise StageInputError(
                f"Petastorm returned {sum(counts)} {part} windows over {self.world} ranks (per rank {counts}), "
                f"the snapshot {self.plan.snapshot.path} version {self.plan.snapshot.version} has "
                f"{self.plan.total}: a short or repeated read. Petastorm 0.13's thread pool is known to return "
                "no rows without an error; use Petastorm 0.12.1 (make compat) or train.reader=arrow"
            )
        empty = [r for r, n in enumerate(counts) if n == 0]
        if self.equal and empty:
            raise StageInputError(_empty_shard_message(self.plan, self.world, empty))
        self.counts = list(counts)
        if self.rank == 0 and self.equal:
            pad = self.world * max(counts) - sum(counts)
            log.info("petastorm %s shards: %s windows per rank, %d padding rows per epoch to equal %d",
                     part, counts, pad, max(counts))
            if max(counts) > 2 * min(counts):
                log.warning("petastorm shards are uneven (%s windows per rank): the smallest repeats its rows "
                            "%.1f times per epoch; write more, smaller row groups or use train.reader=arrow",
                            counts, max(counts) / min(counts))

    def _settled(self) -> list[int]:
        if self.counts is None:
            raise StageInputError("PetastormShardReader: call load() (or settle()) before asking for epochs")
        return self.counts

    @property
    def rows_per_epoch(self) -> int:
        """Rows this rank yields per epoch: the largest shard's size, equal on all ranks."""
        counts = self._settled()
        return max(counts) if self.equal else counts[self.rank]

    def batches_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.rows_per_epoch / batch_size)

    def epoch_indices(self, epoch: int, n_local: int | None = None) -> np.ndarray:
        """Positions into this rank's shard for one epoch: a seeded shuffle, padded to the common length.

        Seeded by (plan seed, epoch, rank) like :meth:`loganomaly.training.readers.arrow.ShardReader.epoch_indices`,
        so a resumed run repeats it; padding repeats this rank's own rows, each at most
        ``ceil(pad / n)`` times.
        """
        n = self._settled()[self.rank] if n_local is None else n_local
        rng = np.random.default_rng([self.plan.seed, epoch, self.rank])
        order = rng.permutation(n)
        pad = self.rows_per_epoch - n
        if pad > 0:
            if n == 0:
                raise StageInputError(f"rank {self.rank} has no rows to pad {pad} with")
            # Whole extra passes first, then a sample without repeats: padding spreads over the rows.
            extra = [rng.permutation(n) for _ in range(pad // n)]
            order = np.concatenate([order, *extra, rng.choice(n, size=pad % n, replace=False)])
        return order


def plan_files(plan: ShardPlan) -> list[str]:
    """The snapshot files that hold selected rows, sorted: every rank lists the same files in the same order.

    Files without a selected row are left out, so a test-period file is not read to be thrown away.
    """
    return sorted({unit.uri for unit in plan.units})


def dealt_rows(plan: ShardPlan, world: int) -> tuple[list[int], int]:
    """Selected rows each rank will get from Petastorm, and the number of row groups it deals.

    Petastorm (0.12, 0.13) numbers the row groups of the listed files in order and gives row group
    ``i`` to shard ``i % shard_count``; this applies that rule to the plan's per-row-group counts,
    reading only the files' Parquet footers. The ranks check what they really got (:meth:`settle`).
    """
    selected = {(unit.uri, unit.row_group): unit.rows for unit in plan.units}
    counts, index = [0] * world, 0
    for uri in plan_files(plan):
        for rg in range(open_parquet(uri).metadata.num_row_groups):
            counts[index % world] += selected.get((uri, rg), 0)
            index += 1
    return counts, index


def check_dealing(plan: ShardPlan, world: int) -> list[int]:
    """Refuse, on the driver, a world that Petastorm's dealing would leave a training rank without rows.

    Returns:
        The rows per rank (:func:`dealt_rows`).

    Raises:
        StageInputError: fewer row groups than ranks, or a rank whose row groups hold no selected row.
    """
    counts, groups = dealt_rows(plan, world)
    empty = [r for r, n in enumerate(counts) if n == 0]
    if groups < world or empty:
        raise StageInputError(_empty_shard_message(plan, world, empty or list(range(groups, world))))
    return counts


def _empty_shard_message(plan: ShardPlan, world: int, empty: list[int]) -> str:
    part = plan.selection.part
    return (
        f"Petastorm gives ranks {empty} of {world} no {part} windows: it deals whole row groups to ranks "
        f"(row group i to rank i % {world}) and only {len(plan.units)} row groups of {plan.snapshot.path} hold "
        f"{part} windows. Write more row groups (smaller row groups or more files), use fewer ranks "
        "(train.num_processes), or use train.reader=arrow, which splits by rows"
    )


def _empty_shard(shape: tuple[int, int] | None = None) -> Shard:
    steps, feats = shape if shape is not None else (0, 0)
    return Shard(np.zeros((0, steps, feats), np.float32), np.zeros(0, object), np.zeros(0, np.int64))


def _as_url(path: str) -> str:
    """Petastorm wants URLs of one scheme; delta-rs gives local files as plain absolute paths."""
    return path if "://" in path else f"file://{path}"


def _epoch_us(values: Any) -> np.ndarray:
    """A Petastorm timestamp column (numpy datetime64, UTC) as epoch microseconds, as the Arrow reader uses."""
    array = np.asarray(values)
    if array.dtype.kind != "M":
        raise StageInputError(f"window times came back as {array.dtype}, not timestamps")
    return array.astype("datetime64[us]").astype(np.int64)


def _windows(batch: Any, keep: np.ndarray, shape: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """The kept rows' ``features`` as ``[n, T, F]`` float32, checking every row has the same shape."""
    steps = np.unique(np.asarray(batch.n_steps)[keep])
    feats = np.unique(np.asarray(batch.n_features)[keep])
    if len(steps) != 1 or len(feats) != 1:
        raise StageInputError(f"windows of mixed shapes (n_steps {steps.tolist()}, n_features {feats.tolist()})")
    this = (int(steps[0]), int(feats[0]))
    if shape is not None and this != shape:
        raise StageInputError(f"windows of shape {this}, earlier batches {shape}")
    column = np.asarray(batch.features)
    if column.dtype.kind in "OS" and column.ndim == 1:
        # The binary layout (loganomaly.features.layout): Petastorm hands one bytes object per row
        # (or a fixed-width bytes array); every row must be one float32 tensor of the window's size.
        width = this[0] * this[1] * 4
        rows = column[keep]
        if column.dtype.kind == "S":
            if column.dtype.itemsize != width:
                raise StageInputError(f"features of {column.dtype.itemsize} bytes, expected {width} "
                                      f"(windows of {this[0]} x {this[1]})")
            data = np.ascontiguousarray(rows).tobytes()
        else:
            sizes = {len(r) if r is not None else -1 for r in rows.tolist()}
            if sizes - {width}:
                raise StageInputError(f"features rows of {sorted(sizes - {width})[:5]} bytes, expected {width} "
                                      f"(windows of {this[0]} x {this[1]}; -1: missing)")
            data = b"".join(rows.tolist())
        return np.frombuffer(data, "<f4").reshape(-1, *this).copy(), this
    flat = column
    if flat.ndim != 2 or flat.shape[1] != this[0] * this[1]:
        raise StageInputError(f"features of shape {flat.shape[1:]}, expected n_steps * n_features = "
                              f"{this[0] * this[1]}")
    return flat[keep].astype(np.float32, copy=False).reshape(-1, *this), this


__all__ = ["COMPAT_HINT", "PetastormShardReader", "check_dealing", "dealt_rows", "import_petastorm", "plan_files",
           "pool_type_for"]


class PetastormReader:
    """``train.reader=petastorm``: :class:`PetastormShardReader`, in the compatibility environment only."""

    #: It does not read ``sequences.n_abnormal``, so the classifier cannot use it.
    reads_labels = False

    def check_available(self) -> None:
        """Fail on the driver, not in every rank: Petastorm runs only in the compatibility environment.

        Raises:
            ConfigError: Petastorm cannot be imported here (see :data:`COMPAT_HINT`).
        """
        import_petastorm()

    def check_dealing(self, plan: ShardPlan, world: int) -> None:
        """Petastorm deals whole row groups: refuse a world where a rank would get no training window."""
        if world > 1:
            check_dealing(plan, world)

    def read(self, plan: ShardPlan, comm: Collective, equal: bool) -> tuple[Shard, Callable[[int], np.ndarray]]:
        """This rank's rows of ``plan`` and its per-epoch order; collective (every rank must call it)."""
        reader = PetastormShardReader(plan, comm.rank, comm.world, equal=equal)
        return reader.load(comm), reader.epoch_indices

    def read_parts(self, plans: Sequence[ShardPlan], comm: Collective, equal: Sequence[bool]
                   ) -> list[tuple[Shard, Callable[[int], np.ndarray]]]:
        """:meth:`read` of each plan in turn (Petastorm opens one reader per plan)."""
        return [self.read(plan, comm, e) for plan, e in zip(plans, equal, strict=True)]


READER: Reader = PetastormReader()
