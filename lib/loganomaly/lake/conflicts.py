"""Retrying a commit that lost a race with another writer of the same Delta table.

Delta commits are optimistic: a transaction that finds a newer version than the one it read
checks whether the two conflict and, if so, fails instead of committing (delta-spark raises one of
its ``io.delta.exceptions.Concurrent*`` family, delta-rs ``CommitFailedError``). For a small
bookkeeping write whose source does not depend on what it read (a ledger MERGE of rows computed
beforehand), running it again against the new version is the right answer, which
:func:`retry_conflicts` does a bounded number of times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Java class names (delta-spark) of commit conflicts, matched when pyspark did not convert them.
_JAVA_CONFLICTS = (
    "io.delta.exceptions.Concurrent",
    "io.delta.exceptions.MetadataChangedException",
    "io.delta.exceptions.ProtocolChangedException",
    "io.delta.exceptions.DeltaConcurrentModificationException",
)


def _conflict_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    try:
        from deltalake.exceptions import CommitFailedError

        found.append(CommitFailedError)
    except ImportError:  # delta-rs is optional where only delta-spark writes
        pass
    try:
        from delta.exceptions import base

        found.extend(
            [
                base.DeltaConcurrentModificationException,
                base.ConcurrentWriteException,
                base.MetadataChangedException,
                base.ProtocolChangedException,
                base.ConcurrentAppendException,
                base.ConcurrentDeleteReadException,
                base.ConcurrentDeleteDeleteException,
                base.ConcurrentTransactionException,
            ]
        )
    except ImportError:  # delta-spark is optional where only delta-rs writes
        pass
    return tuple(found)


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is a Delta commit conflict (either engine) rather than a real failure."""
    if isinstance(exc, _conflict_types()):
        return True
    text = str(exc)
    return any(name in text for name in _JAVA_CONFLICTS)


def retry_conflicts(action: Callable[[], T], what: str, attempts: int = 5, backoff_s: float = 0.2) -> T:
    """Run ``action``; on a commit conflict run it again, at most ``attempts`` times in all.

    ``action`` must build its commit from scratch each time (read the table anew), so a retry
    commits against the winner's version. Waits grow linearly (``backoff_s``, 2x, ...). The last
    conflict is raised as is; any other error at once.

    Example:
        >>> retry_conflicts(lambda: lake.merge("ingested_files", rows, ["path", "generation"]), "ledger")
    """
    for attempt in range(1, attempts + 1):
        try:
            result = action()
        except Exception as exc:
            if attempt == attempts or not is_conflict(exc):
                raise
            log.warning(
                "%s: commit conflict with another writer (attempt %d of %d), retrying: %s",
                what,
                attempt,
                attempts,
                str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
            )
            time.sleep(backoff_s * attempt)
            continue
        if attempt > 1:
            log.info("%s: committed after %d attempts", what, attempt)
        return result
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
