"""The ``ingested_files`` ledger: which files (and which generation of each) are loaded, and what to load next.

Each ledger row is one generation of one file as last loaded (path, size, mtime, run, lines =
events + quarantined). :func:`plan_loads` applies the rerun rules: a file whose latest generation
has its size and mtime is skipped; a known file now smaller than that was rotated (copytruncate)
and loads as the next generation, keeping every earlier one; a file that changed at the same or a
larger size replaces its latest generation's rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loganomaly.lake.schemas import TABLES
from loganomaly.lake.tables import Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

__all__ = ["Generation", "Load", "file_identity", "identities", "migrate_ledger", "plan_loads", "read_ledger"]


def file_identity(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return path, int(st.st_size), int(st.st_mtime_ns // 1_000_000)


def identities(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of each listed file; one deleted since the listing is left out."""
    found = []
    for p in paths:
        try:
            found.append(file_identity(str(p.resolve())))
        except FileNotFoundError:
            log.warning("%s vanished after it was listed: skipped", p)
    return found


@dataclass(frozen=True)
class Generation:
    """One ``ingested_files`` row: a generation of a file as last loaded."""

    generation: int
    size: int
    mtime: int
    run_id: str


def read_ledger(lake: Lake) -> dict[str, list[Generation]]:
    """Ledger rows by path, oldest generation first (a ledger without the column is generation 0)."""
    if not lake.exists("ingested_files"):
        return {}
    from pyspark.sql import functions as F

    df = lake.read("ingested_files")
    gen = F.coalesce(F.col("generation"), F.lit(0)) if "generation" in df.columns else F.lit(0)
    found: dict[str, list[Generation]] = {}
    for r in df.select("path", "size", "mtime", "run_id", gen.alias("generation")).collect():
        found.setdefault(r.path, []).append(Generation(int(r.generation), r.size, r.mtime, r.run_id))
    for gens in found.values():
        gens.sort(key=lambda g: g.generation)
    return found


@dataclass(frozen=True)
class Load:
    """A file to load: its identity, the generation it loads as, and the runs whose rows of it stay."""

    path: str
    size: int
    mtime: int
    generation: int
    keep_runs: tuple[str, ...]


def plan_loads(files: Sequence[tuple[str, int, int]], ledger: Mapping[str, list[Generation]]) -> list[Load]:
    """What to load: a file is skipped when its latest generation has its size and mtime; a known
    file now smaller than that generation was rotated (copytruncate, truncate-and-rewrite) and
    loads as the next generation, keeping every earlier one; a file that changed at the same or a
    larger size (appended to, edited) replaces its latest generation's rows.
    """
    todo = []
    for path, size, mtime in files:
        gens = ledger.get(path, [])
        if not gens:
            todo.append(Load(path, size, mtime, 0, ()))
            continue
        last = gens[-1]
        if (size, mtime) == (last.size, last.mtime):
            continue
        generation = last.generation + 1 if size < last.size else last.generation
        if generation > last.generation:
            log.info("%s is smaller than recorded (%d < %d bytes): rotated; loading it as generation %d, "
                     "earlier rows kept", path, size, last.size, generation)
        keep = tuple(g.run_id for g in gens if g.generation < generation and g.run_id)
        todo.append(Load(path, size, mtime, generation, keep))
    return todo


def migrate_ledger(spark: SparkSession, lake: Lake) -> None:
    """Give a ledger written before ``generation`` existed that column (0 on every row), so merges
    on (path, generation) match its rows. One overwrite of a small table, on either engine."""
    if not lake.exists("ingested_files"):
        return
    old = lake.read("ingested_files")
    if "generation" in old.columns:
        return
    from pyspark.sql import functions as F

    rows = old.withColumn("generation", F.lit(0).cast("bigint")).select(*TABLES["ingested_files"].columns).collect()
    lake.write("ingested_files", spark.createDataFrame(rows, TABLES["ingested_files"].ddl), mode="overwrite")
    log.info("ingested_files: added column generation (0 on %d existing rows)", len(rows))
