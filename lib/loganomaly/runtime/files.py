"""File helpers shared by bundles and training checkpoints."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a unique temp file in the same directory, then rename it into place.

    Readers see the old file or the new one, never half of one; shared by bundles and checkpoints.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (its ``.lock`` file, created with the folder): one
    writer at a time in a per-machine cache that two checkouts setting up at once share."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_folder(variable: str, name: str) -> Path:
    """A per-machine cache folder: ``$<variable>`` when set, else ``$XDG_CACHE_HOME/loganomaly/<name>``
    (default ``~/.cache/loganomaly/<name>``), shared by every checkout on the machine."""
    explicit = os.environ.get(variable)
    if explicit:
        return Path(explicit).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).resolve() / "loganomaly" / name
