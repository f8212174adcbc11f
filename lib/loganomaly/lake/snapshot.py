"""Pinned snapshots of Delta tables, read outside Spark: the one checked way to list a version's files.

Training ranks, the embedded engine's reader and the feature-name lookup all read Parquet files of
one table version without Spark. They list those files here, and only here, because a reader that
lists files itself would silently get tables with deletion vectors (rows deleted without rewriting
the file) or column mapping (physical column names differ from logical ones) wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loganomaly.errors import TableError

if TYPE_CHECKING:
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

__all__ = ["Snapshot", "checked_table", "open_parquet"]


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
        return sorted(self.table().file_uris())

    def table(self) -> DeltaTable:
        """The delta-rs table at this version, after :func:`checked_table`'s checks."""
        return checked_table(self.path, self.version)


def checked_table(path: str, version: int | None = None) -> DeltaTable:
    """The delta-rs table at ``version`` (latest when None), refused when a reader outside Spark would
    get it wrong. Every read of a snapshot outside Spark (training ranks, the embedded engine's Spark
    reader, the feature-name lookup) opens its table here.

    Raises:
        TableError: the table or version does not exist, or it uses deletion vectors or column
            mapping.
    """
    from deltalake import DeltaTable

    try:
        table = DeltaTable(path, version=version)
    except Exception as exc:  # delta-rs raises several types for a missing table or version
        raise TableError(f"cannot open Delta table {path} at version {version}: {exc}") from None
    features = set(table.protocol().reader_features or [])
    if "deletionVectors" in features:
        raise TableError(f"{path} uses deletion vectors, which this reader does not apply")
    mapping = table.metadata().configuration.get("delta.columnMapping.mode", "none")
    if mapping not in ("none", None):
        raise TableError(f"{path} uses column mapping mode {mapping!r}, which this reader does not apply")
    return table


def open_parquet(uri: str) -> pq.ParquetFile:
    """A Parquet file of a snapshot, by URI (``file://``, ``s3://``, ...) or local path."""
    fs, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    return pq.ParquetFile(fs.open_input_file(path))
