"""One writer at a time per lake: an exclusive lock file under ``<lake>/_locks/``.

Two overlapping ingests on one lake both append and both ledger MERGEs succeed, so every event
of the files they share is written twice. A stage that writes holds :func:`writer_lock` for its
whole run: the lock file ``<lake>/_locks/writer.lock`` is created atomically (``O_CREAT|O_EXCL``)
and holds the holder's pid, host, run id, stage and start time; it is removed when the stage
ends, failed or not. A second writer is refused with :class:`~loganomaly.errors.LakeBusyError`
naming the holder.

A lock whose holder's pid is gone on this host (killed, machine rebooted) is stale and taken
over, with a warning. A holder on another host cannot be checked from here: if that run is
really gone, remove ``<lake>/_locks/writer.lock`` by hand (the manual override).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loganomaly.errors import LakeBusyError

log = logging.getLogger(__name__)

LOCK_DIR = "_locks"
LOCK_NAME = "writer.lock"


def lock_path(root: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(root), LOCK_DIR, LOCK_NAME)


def _holder(path: str) -> dict[str, Any] | None:
    """The lock's content; None when it is gone; ``{}`` when it cannot be read as a holder."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _stale(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


def _take_over(path: str, holder: dict[str, Any]) -> None:
    """Move the stale lock aside; put it back if it changed since it was judged (another taker won)."""
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _holder(aside) == holder:
        log.warning("taking over the stale writer lock of run %s (pid %s on %s, gone)",
                    holder.get("run_id"), holder.get("pid"), holder.get("host"))
        os.remove(aside)
        return
    try:
        os.link(aside, path)  # a live lock moved by mistake goes back, unless a new one is there
    except FileExistsError:
        pass
    os.remove(aside)


@contextmanager
def writer_lock(root: str | os.PathLike[str], run_id: str, stage: str) -> Iterator[dict[str, Any]]:
    """Hold the lake's writer lock for the duration; yields the holder record written.

    Example:
        >>> with writer_lock(cfg.lake.root, run_id, "ingest"):
        ...     ...  # write tables

    Raises:
        LakeBusyError: another live run holds it (its run id, pid, host and start time named).
    """
    path = lock_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "run_id": run_id,
        "stage": stage,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                continue  # released meanwhile
            if holder and _stale(holder):
                _take_over(path, holder)
                continue
            raise LakeBusyError(
                f"lake {os.fspath(root)} is being written by run {holder.get('run_id', '?')} "
                f"({holder.get('stage', '?')}, pid {holder.get('pid', '?')} on host {holder.get('host', '?')}) "
                f"since {holder.get('started', '?')}; if that run is gone, remove {path}"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
            fh.flush()
            os.fsync(fh.fileno())
        break
    else:
        raise LakeBusyError(f"lake {os.fspath(root)}: could not take the writer lock {path}")
    log.info("writer lock on %s taken by %s %s", root, stage, run_id)
    try:
        yield me
    finally:
        if _holder(path) == me:
            os.remove(path)
        else:
            log.warning("writer lock %s was not ours any more at the end of %s", path, run_id)
