"""A class-data-sharing archive of the driver JVM: local sessions start in a quarter to a third less time.

A local session's start-up is mostly the JVM loading, verifying and linking classes: Spark's,
then Delta's on the first commit (measured on the 2-core machine: a session plus four small
Delta writes took 26-27 s without the archive and 17.5-18 s with it; README "Start-up"). Java
can dump the classes a run loaded into an archive (``-XX:ArchiveClassesAtExit``, a dynamic CDS
archive, JDK 13+) and map that archive into later JVMs (``-XX:SharedArchiveFile``) instead of
loading the classes again.

``make setup`` runs ``loganomaly class-archive``: a child process runs a small pipeline on
generated data (every stage's JVM classes: Spark SQL, Arrow, Python runners, Delta) with the dump
option, and the archive is kept in ``$LOGANOMALY_JVM_DIR``, else ``$XDG_CACHE_HOME/loganomaly/jvm``
(default ``~/.cache/loganomaly/jvm``), beside the delta-spark jars' cache. Later local sessions
(:func:`loganomaly.runtime.spark.get_spark`; ``spark.class_archive: false`` turns it off) map it.

Why it is safe to use:

* The archive is named by a fingerprint of what the JVM would check: the Java installation
  (its home, ``release`` file and ``libjvm.so``), the jars of Spark's class path and the session's
  extra jars. Another Java, PySpark or Delta version looks for another file, so a stale archive is
  never offered; build it again with ``loganomaly class-archive`` (``make setup`` does).
* A truncated archive crashes the JVM (SIGBUS while mapping it, checked), so the dump goes to a
  temporary name, and only a complete one is renamed into place, followed by a record of its size.
  A session passes the archive only when the file is there with that size.
* Anything else the JVM refuses (other heap settings, a class path it does not match) makes it
  start without the archive, as if none were given; its CDS log lines are turned off so that
  falling back is silent.

Under spark-submit or on Databricks the launcher owns the JVM's options: nothing is added there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loganomaly.errors import ClassArchiveError
from loganomaly.runtime.files import cache_folder, folder_lock

log = logging.getLogger(__name__)

#: Bumped when what goes into an archive changes (its workload), so older archives are not used.
FORMAT = 1
#: Seconds the child building the archive may take (a small pipeline run plus the dump).
BUILD_TIMEOUT_S = 900
#: The JVM's CDS log lines off: a refused archive is a silent fallback, not a warning per session.
QUIET = ("-Xlog:cds=off", "-Xlog:cds+dynamic=off")


def archive_dir() -> Path:
    """Where archives live: ``$LOGANOMALY_JVM_DIR``, else ``$XDG_CACHE_HOME/loganomaly/jvm``."""
    return cache_folder("LOGANOMALY_JVM_DIR", "jvm")


def _stat(path: Path) -> list[object]:
    try:
        st = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns]


def fingerprint(java_home: str | os.PathLike[str], spark_jars: str | os.PathLike[str] | None,
                extra_jars: Sequence[str]) -> str:
    """A short hash of what an archive depends on: the Java installation, Spark's jars, extra jars.

    Each file enters by path, size and modification time (cheap: one ``stat`` each, no reading),
    so reinstalling any of them gives a new fingerprint and a new archive name.
    """
    home = Path(os.path.realpath(java_home))
    try:
        release = (home / "release").read_text(errors="replace")
    except OSError:
        release = ""
    libjvm = sorted(home.glob("lib/server/libjvm.*")) + sorted(home.glob("jre/lib/*/server/libjvm.*"))
    jars: list[list[object]] = []
    if spark_jars and os.path.isdir(spark_jars):
        folder = Path(spark_jars)
        jars = [_stat(folder / name) for name in sorted(os.listdir(folder)) if name.endswith(".jar")]
    record = {
        "format": FORMAT,
        "java_home": str(home),
        "release": release,
        "libjvm": [_stat(p) for p in libjvm],
        "spark_jars": jars,
        "extra_jars": [_stat(Path(p)) for p in extra_jars],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def paths(key: str, folder: Path | None = None) -> tuple[Path, Path]:
    """The archive of ``key`` and the record of its size written after it."""
    folder = folder or archive_dir()
    return folder / f"loganomaly-{key}.jsa", folder / f"loganomaly-{key}.json"


def usable(key: str, folder: Path | None = None) -> Path | None:
    """The archive of ``key`` when it is there whole (its recorded size), else None."""
    archive, record = paths(key, folder)
    try:
        size = int(json.loads(record.read_text())["size"])
        return archive if archive.stat().st_size == size and size > 0 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def use_options(archive: Path) -> list[str]:
    """JVM options that map ``archive`` (or start without it when the JVM refuses it)."""
    return [f"-XX:SharedArchiveFile={archive}", *QUIET]


def dump_options(target: Path) -> list[str]:
    """JVM options that write the classes a run loaded to ``target`` when the JVM exits."""
    return [f"-XX:ArchiveClassesAtExit={target}", *QUIET]


def prune(folder: Path | None = None) -> list[Path]:
    """Remove the archives whose Java or Spark install is gone (a deleted checkout's ``.venv``):
    each install gets its own archive of about 200 MB, and nothing could map these any more."""
    folder = folder or archive_dir()
    removed: list[Path] = []
    for record in sorted(folder.glob("loganomaly-*.json")):
        try:
            data = json.loads(record.read_text())
            needed = [data["java_home"], data["spark_jars"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # written by an older build: no paths to judge it by
        if all(isinstance(p, str) and os.path.exists(p) for p in needed):
            continue
        archive = record.with_suffix(".jsa")
        for path in (record, archive):
            path.unlink(missing_ok=True)
        removed.append(archive)
        log.info("class archive %s removed: its install (%s) is gone", archive.name, ", ".join(map(str, needed)))
    return removed


def build(key: str, command: Callable[[Path], Sequence[str]], folder: Path | None = None, force: bool = False,
          timeout_s: float = BUILD_TIMEOUT_S, install: dict[str, Any] | None = None) -> Path:
    """Build the archive of ``key`` with ``command(target)`` (a child that dumps to ``target``).

    Returns the archive (at once when a whole one is there and ``force`` is off). The child's
    output goes to ``build-<key>.log`` in the folder; a leftover temporary file of a crashed
    build is removed, and so are archives of installs that are gone (:func:`prune`). ``install``
    (the fingerprint's arguments) goes into the record for that.

    Raises:
        ClassArchiveError: the child failed, timed out or left no archive; the message names the log.
    """
    folder = folder or archive_dir()
    with folder_lock(folder):  # one build at a time per folder
        prune(folder)
        found = usable(key, folder)
        if found is not None and not force:
            log.info("class archive already built: %s", found)
            return found
        archive, record = paths(key, folder)
        target = archive.with_name(archive.name + ".tmp")
        log_file = folder / f"build-{key}.log"
        for stale in (target, record):
            stale.unlink(missing_ok=True)
        started = time.monotonic()
        with open(log_file, "w") as out:
            try:
                code: int | str = subprocess.run(list(command(target)), stdout=out, stderr=subprocess.STDOUT,
                                                 timeout=timeout_s, check=False).returncode
            except subprocess.TimeoutExpired:
                code = f"timed out after {timeout_s:.0f} s"
        size = target.stat().st_size if target.is_file() else 0
        if code != 0 or size == 0:
            target.unlink(missing_ok=True)
            raise ClassArchiveError(
                f"could not build the JVM class archive (exit {code}, archive {size} bytes); log: {log_file}. "
                "Sessions start without it (slower, otherwise the same)."
            )
        os.replace(target, archive)
        tmp_record = record.with_name(record.name + ".tmp")
        tmp_record.write_text(json.dumps({"size": size, "key": key, "built_s": round(time.monotonic() - started, 1),
                                          **(install or {})}))
        os.replace(tmp_record, record)
        log.info("class archive built in %.0f s: %s (%.0f MB)", time.monotonic() - started, archive, size / 2**20)
        return archive
