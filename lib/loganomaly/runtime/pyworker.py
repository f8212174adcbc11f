"""Spark's Python daemon with a lean ``sys.path``: ``spark.python.daemon.module`` of our sessions.

Why: Spark starts its Python workers with ``$SPARK_HOME/python/lib/pyspark.zip`` and the py4j zip
first on ``PYTHONPATH``, and at the start of every task the worker calls
``importlib.invalidate_caches()`` (``pyspark.worker_util.setup_spark_files``). On Python 3.11 a zip
archive's importer answers that by reading the archive's whole directory again, in Python: 1,328
entries of ``pyspark.zip``, about 0.12 s of a worker's CPU per task, measured with py-spy on a
``mapInArrow`` task that does nothing (0.16-0.18 s from the task's start to the function's first
line, against 0.08 s for a whole JVM-only job), and the 5,362 of the spark-core jar, which Spark
puts there too. Every parsing and scoring task paid it.

When pyspark is installed with pip, as ``make setup`` does, the zips hold the same pyspark and py4j
as the interpreter's own ``site-packages``, and the jar holds no Python at all. This daemon drops
them from its ``sys.path`` and importer cache (the workers it forks inherit both) when, and only
when, both packages import from the rest of the path at the version the zip holds; otherwise (a
cluster whose workers get pyspark from the zip alone, or another version) the path stays as Spark
made it. Then it runs Spark's own daemon.

Nothing here imports pyspark before the path is settled, nor any other loganomaly module.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from importlib.machinery import PathFinder

#: The archives Spark puts on the workers' path (``PythonUtils.sparkPythonPath``).
_ARCHIVE = re.compile(r"^(pyspark|py4j-[0-9.]+-src)\.zip$")
_VERSION = re.compile(r"""^__version__\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""", re.MULTILINE)


def _version_text(text: str) -> str | None:
    found = _VERSION.search(text)
    return found.group(1) if found else None


def _zip_version(archive: str, member: str) -> str | None:
    try:
        with zipfile.ZipFile(archive) as zf:
            return _version_text(zf.read(member).decode("utf-8"))
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        return None


def _file_version(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return _version_text(fh.read())
    except (OSError, UnicodeDecodeError):
        return None


def _holds_python(archive: str) -> bool:
    """Whether a jar on the path holds Python modules (unreadable: assume it does)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            return any(name.endswith((".py", ".pyc")) for name in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return True


def lean_path(path: list[str]) -> list[str]:
    """``path`` without Spark's pyspark/py4j zips and Python-free jars (Spark adds the jar of its
    own ``PythonUtils``, spark-core: 5,362 entries, none Python) when the rest of ``path`` imports
    the same pyspark (same ``pyspark/version.py``) and a py4j; else ``path`` unchanged."""
    archives = [p for p in path if _ARCHIVE.match(os.path.basename(p))
                or (p.endswith(".jar") and os.path.isfile(p) and not _holds_python(p))]
    if not archives:
        return path
    rest = [p for p in path if p not in archives]
    pyspark = PathFinder.find_spec("pyspark", rest)
    py4j = PathFinder.find_spec("py4j", rest)
    if pyspark is None or py4j is None or not pyspark.submodule_search_locations:
        return path
    own = _file_version(os.path.join(list(pyspark.submodule_search_locations)[0], "version.py"))
    if own is None:
        return path
    for archive in archives:
        if os.path.basename(archive) == "pyspark.zip" and _zip_version(archive, "pyspark/version.py") != own:
            return path
    return rest


def main() -> None:
    """Settle ``sys.path``, then run ``pyspark.daemon`` (which reads the worker module from argv)."""
    lean = lean_path(sys.path)
    for dropped in set(sys.path) - set(lean):
        # Importing this module walked the path and cached an importer per archive; the caches'
        # invalidation visits every cached importer, on the path or not.
        sys.path_importer_cache.pop(dropped, None)
    sys.path[:] = lean
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    main()
