"""Operational faults of a lake turned into errors that name what is wrong.

* :func:`check_root`: a lake root that exists but is not a directory is refused before anything
  runs (``--lake`` given a log file by mistake).
* :func:`delta_errors`: a decorator for :class:`~loganomaly.lake.tables.Lake` methods taking a table
  name first; delta-rs's ``DeltaError`` (e.g. ``Json error`` from a damaged ``_delta_log`` commit)
  becomes a :class:`~loganomaly.errors.TableError` naming the table and, when one is found, the
  commit file that does not parse.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar, cast

from loganomaly.errors import ConfigError, TableError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
_COMMIT = re.compile(r"^(\d{20})\.json$")


def check_root(root: str | os.PathLike[str]) -> None:
    """Refuse a lake root that exists and is not a directory.

    Raises:
        ConfigError: naming the path.
    """
    if os.path.exists(root) and not os.path.isdir(root):
        raise ConfigError(f"lake root {os.fspath(root)} is not a directory (lake.root / --lake must name a folder)")


def corrupt_commit(table_path: str) -> tuple[str, str] | None:
    """The first commit file after the last checkpoint that is not JSON lines, and why; else None."""
    log_dir = os.path.join(table_path, "_delta_log")
    try:
        names = sorted(n for n in os.listdir(log_dir) if _COMMIT.match(n))
    except OSError:
        return None
    after = -1
    try:
        with open(os.path.join(log_dir, "_last_checkpoint"), encoding="utf-8") as fh:
            after = int(json.load(fh)["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for name in names:
        if int(name[:20]) <= after:
            continue
        path = os.path.join(log_dir, name)
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            return path, f"unreadable: {exc}"
        for n, line in enumerate(lines, 1):
            try:
                if line.strip():
                    json.loads(line)
            except ValueError as exc:
                return path, f"line {n} is not JSON: {exc}"
    return None


def table_error(name: str, table_path: str, exc: BaseException) -> TableError:
    """A TableError for a delta-rs failure on table ``name``, naming the damaged commit if found."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    found = corrupt_commit(table_path)
    if found is not None:
        commit, problem = found
        return TableError(
            f"table {name!r} cannot be read: its Delta log commit {commit} is damaged ({problem}); "
            f"restore that file from a backup (delta-rs: {first_line})"
        )
    return TableError(f"table {name!r} at {table_path} failed in delta-rs: {first_line}")


def delta_errors(method: F) -> F:
    """Decorate a ``Lake`` method ``(self, name, ...)``: delta-rs errors become :func:`table_error`."""
    @functools.wraps(method)
    def wrapper(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        # delta-rs is imported when a table method runs, not with this module: the CLI imports
        # check_root, and the Airflow environment (which imports the CLI) has no delta-rs.
        from deltalake.exceptions import DeltaError

        try:
            return method(self, name, *args, **kwargs)
        except DeltaError as exc:
            error = table_error(name, os.path.join(self.root, name), exc)
            log.error("%s", error)
            raise error from exc

    return cast(F, wrapper)
