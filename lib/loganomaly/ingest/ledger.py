"""The ``ingested_files`` ledger: which files (and which generation of each) are loaded, and what to load next.

Each ledger row is one generation of one file as last loaded (path, size, mtime, hash of its first
block, run, lines = events + quarantined), or a file that vanished between the listing and the
read (status ``vanished``, counts 0). :func:`plan_loads` applies the content rule below.

The "changed file" rule compares content, not dates. A loaded generation records its size and
:func:`head_hash`, a blake2b hash of its first :data:`HEAD_BYTES` bytes (64 KiB), or of the whole
file when it was shorter. At the next run the file's first ``min(64 KiB, recorded size)`` bytes
are hashed again:

* same head, same size: unchanged, skipped (whatever its mtime);
* same head, larger: appended to; the generation is read again and its rows replaced (event ids
  are stable per line and the generation keeps its id scheme, so the earlier lines keep their ids);
* smaller (copytruncate, truncate-and-rewrite), or another head at any size (the file was
  renamed away and a new one created at the path, or truncated and refilled past the old
  size): a new *generation* of the path, loaded with its own ledger row and event ids; every
  earlier generation's rows stay.

A file edited in place past its first 64 KiB at an unchanged size is taken as unchanged (logs are
appended to, not edited). A rotated copy under a new name (``app.log.1``) is another path: when
the input glob matches it, its lines load again under that name, so exclude rotated names from
the inputs (``*.log``, not ``*.log*``). Ledgers written before ``head_hash`` existed fall back to
the older size rule for their rows (smaller: new generation; else re-read) until the file's next
load records a hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loganomaly.ingest.ids import CURRENT, LEGACY, IdKey
from loganomaly.lake.conflicts import retry_conflicts
from loganomaly.lake.schemas import TABLES
from loganomaly.lake.tables import Lake, rows_table

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

__all__ = [
    "HEAD_BYTES",
    "Generation",
    "Listing",
    "Load",
    "file_identity",
    "head_hash",
    "identities",
    "ledger_row",
    "list_files",
    "migrate_ledger",
    "plan_loads",
    "read_ledger",
    "record",
    "vanished_row",
]

#: Bytes of a file's start hashed to recognise it (see the module docstring).
HEAD_BYTES = 64 * 1024
LOADED = "loaded"
VANISHED = "vanished"
#: ``format`` of a loaded file without lines, and of one no format recognised.
EMPTY = "empty"
UNRECOGNISED = "unrecognised"


def file_identity(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return path, int(st.st_size), int(st.st_mtime_ns // 1_000_000)


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def head_hash(path: str, size: int) -> str:
    """Hash of the first ``min(HEAD_BYTES, size)`` bytes of ``path`` (``size`` is the listed size:
    bytes appended since the listing are not hashed). Raises ``FileNotFoundError`` if it is gone."""
    with open(path, "rb") as fh:
        return _hash(fh.read(min(HEAD_BYTES, size)))


@dataclass(frozen=True)
class Listing:
    """What a run found: files as (path, size, mtime), and those listed but gone before their stat."""

    files: list[tuple[str, int, int]]
    vanished: list[str]


def list_files(paths: Iterable[Path]) -> Listing:
    """(path, size, mtime) of each listed file; one deleted since the listing goes to ``vanished``."""
    found, vanished = [], []
    for p in paths:
        resolved = str(p.resolve())
        try:
            found.append(file_identity(resolved))
        except FileNotFoundError:
            log.warning("%s vanished after it was listed", p)
            vanished.append(resolved)
    return Listing(found, vanished)


def identities(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of each listed file; one deleted since the listing is left out."""
    return list_files(paths).files


@dataclass(frozen=True)
class Generation:
    """One loaded ``ingested_files`` row: a generation of a file as last loaded."""

    generation: int
    size: int
    mtime: int
    run_id: str
    head_hash: str | None = None
    id_scheme: int = LEGACY


def read_ledger(lake: Lake) -> dict[str, list[Generation]]:
    """Loaded ledger rows by path, oldest generation first. Columns a ledger predates read as
    their old meaning: no ``generation`` is 0, no ``head_hash`` is NULL, no ``status`` is loaded,
    no ``id_scheme`` is :data:`.ids.LEGACY`.
    Rows of files that vanished are left out (they hold nothing and must not stop a reload)."""
    if not lake.exists("ingested_files"):
        return {}
    from pyspark.sql import functions as F

    df = lake.read("ingested_files")
    cols = set(df.columns)
    gen = F.coalesce(F.col("generation"), F.lit(0)) if "generation" in cols else F.lit(0)
    head = F.col("head_hash") if "head_hash" in cols else F.lit(None).cast("string")
    scheme = F.coalesce(F.col("id_scheme"), F.lit(LEGACY)) if "id_scheme" in cols else F.lit(LEGACY)
    if "status" in cols:
        df = df.where(F.col("status").isNull() | (F.col("status") == LOADED))
    found: dict[str, list[Generation]] = {}
    for r in df.select(
        "path", "size", "mtime", "run_id", gen.alias("generation"), head.alias("head"), scheme.alias("scheme")
    ).collect():
        found.setdefault(r.path, []).append(
            Generation(int(r.generation), r.size, r.mtime, r.run_id, r.head, int(r.scheme))
        )
    for gens in found.values():
        gens.sort(key=lambda g: g.generation)
    return found


@dataclass(frozen=True)
class Load:
    """A file to load: its identity and head hash, the generation it loads as, the runs whose
    rows of it stay (those of earlier generations), and how its lines are named (``id_scheme``:
    a generation read again keeps the one it was first loaded with)."""

    path: str
    size: int
    mtime: int
    generation: int
    keep_runs: tuple[str, ...]
    head_hash: str | None = None
    id_scheme: int = CURRENT

    @property
    def id_key(self) -> IdKey:
        """The event ids of this generation's lines."""
        return IdKey(self.path, self.generation, self.id_scheme)


def _heads(path: str, size: int, recorded_size: int) -> tuple[str, str]:
    """Hash of the file's head over the recorded length (to compare) and over its own (to record),
    from one read."""
    with open(path, "rb") as fh:
        data = fh.read(min(HEAD_BYTES, max(size, recorded_size)))
    return _hash(data[: min(HEAD_BYTES, recorded_size)]), _hash(data[: min(HEAD_BYTES, size)])


def plan_loads(
    files: Sequence[tuple[str, int, int]],
    ledger: Mapping[str, list[Generation]],
    vanished: list[str] | None = None,
) -> list[Load]:
    """What to load, by the content rule of the module docstring. A file gone before its head is
    read is appended to ``vanished`` (when given) instead.
    """
    todo = []
    for path, size, mtime in files:
        gens = ledger.get(path, [])
        last = gens[-1] if gens else None
        try:
            compare, own = _heads(path, size, last.size if last else 0)
        except FileNotFoundError:
            log.warning("%s vanished after it was listed", path)
            if vanished is not None:
                vanished.append(path)
            continue
        if last is None:
            todo.append(Load(path, size, mtime, 0, (), own))
            continue
        if last.head_hash is None:  # recorded before head hashes: the size rule
            if (size, mtime) == (last.size, last.mtime):
                continue
            new = size < last.size
            why = f"smaller than recorded ({size} < {last.size} bytes)"
        elif size < last.size:
            new, why = True, f"smaller than recorded ({size} < {last.size} bytes)"
        elif compare != last.head_hash:
            new, why = True, f"its first {min(HEAD_BYTES, last.size)} bytes differ from those loaded"
        elif size == last.size:
            continue  # unchanged
        else:
            new, why = False, ""
        generation = last.generation + 1 if new else last.generation
        if new:
            log.info("%s is %s: a new generation %d, earlier rows kept", path, why, generation)
        else:
            log.info(
                "%s grew from %d to %d bytes: generation %d is read again", path, last.size, size, generation
            )
        keep = tuple(g.run_id for g in gens if g.generation < generation and g.run_id)
        todo.append(Load(path, size, mtime, generation, keep, own, CURRENT if new else last.id_scheme))
    return todo


def ledger_row(
    load: Load, counts: tuple[int, int, str | None], run_id: str, now: dt.datetime
) -> tuple[Any, ...]:
    """The ``ingested_files`` row of a loaded file (columns in table order).

    ``format`` is the format its lines were parsed as; a file without lines reads ``empty`` and
    one whose format no entry recognised (every line quarantined with that reason) ``unrecognised``,
    so the ledger does not call a 2,000-line file empty.
    """
    n_ev, n_q, fmt = counts
    if fmt is None:
        fmt = UNRECOGNISED if n_ev + n_q else EMPTY
    return (
        load.path, load.size, load.mtime, fmt, n_ev + n_q, n_ev, n_q, run_id, now,
        load.generation, load.head_hash, LOADED, None, load.id_scheme,
    )  # fmt: skip


def vanished_row(path: str, generation: int, run_id: str, now: dt.datetime, reason: str) -> tuple[Any, ...]:
    """The ``ingested_files`` row of a file gone before it was read: counts 0, not loaded, so the
    file loads if it comes back."""
    return (path, 0, 0, None, 0, 0, 0, run_id, now, generation, None, VANISHED, reason, None)


def next_generation(ledger: Mapping[str, list[Generation]], path: str) -> int:
    """The generation a new content of ``path`` would load as."""
    gens = ledger.get(path)
    return gens[-1].generation + 1 if gens else 0


#: Values given to each column a ledger predates, as SQL (their old meaning).
_MIGRATED = {"generation": "CAST(0 AS BIGINT)", "head_hash": "CAST(NULL AS STRING)", "status": "'loaded'",
             "reason": "CAST(NULL AS STRING)", "id_scheme": f"CAST({LEGACY} AS BIGINT)"}  # fmt: skip


def migrate_ledger(spark: SparkSession, lake: Lake) -> None:
    """Give a ledger written before ``generation``, ``head_hash``, ``status``, ``reason`` or
    ``id_scheme`` existed those columns (generation 0, no hash, loaded, legacy ids), so merges on (path, generation) match its rows.
    One overwrite of a small table, on either engine."""
    if not lake.exists("ingested_files"):
        return
    old = lake.read("ingested_files")
    missing = [c for c in TABLES["ingested_files"].columns if c not in old.columns]
    if not missing:
        return
    from pyspark.sql import functions as F

    for name in missing:
        old = old.withColumn(name, F.expr(_MIGRATED[name]))
    rows = old.select(*TABLES["ingested_files"].columns).collect()
    lake.write("ingested_files", spark.createDataFrame(rows, TABLES["ingested_files"].ddl), mode="overwrite")
    log.info("ingested_files: added column(s) %s to %d existing rows", ", ".join(missing), len(rows))


def record(spark: SparkSession, lake: Lake, rows: Sequence[tuple[Any, ...]], run_id: str) -> None:
    """MERGE ``rows`` into ``ingested_files`` on (path, generation), after the data they describe
    committed.

    A stage holds the lake's writer lock (:mod:`loganomaly.lake.lock`), so no other ingest
    commits meanwhile; the retry on a commit conflict covers writers that do not take it
    (``maintain``, a user's own job on the lake), which would otherwise fail the run after its
    events committed (a rerun would heal it, but the run would end in error).
    """
    ddl = TABLES["ingested_files"].ddl
    if not lake.exists("ingested_files"):
        # A first load: a merge into nothing is an append of these rows (one per path and
        # generation), written from the driver (no Spark job with deltars; see Lake.write_arrow).
        lake.write_arrow("ingested_files", rows_table(rows, ddl), ddl, run_id=run_id)
        log.info("ingest %s: ingested_files created with %d rows", run_id, len(rows))
        return
    migrate_ledger(spark, lake)
    df = spark.createDataFrame(list(rows), ddl)
    retry_conflicts(
        lambda: lake.merge("ingested_files", df, keys=["path", "generation"]),
        f"ingest {run_id}: ingested_files",
    )
