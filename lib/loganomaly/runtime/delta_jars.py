"""delta-spark's jars: fetched once at set-up into a cache, then put on every local session from there.

The ``delta`` engine needs the Delta Lake Spark jars on the JVM's class path before the session
starts. They come from Maven Central (``io.delta:delta-spark_<spark line>_2.13:<version>`` and its
runtime dependencies). ``make setup`` runs ``python -m loganomaly.runtime.delta_jars``, which resolves them
once with Spark's own Ivy resolver (the same one behind ``--packages``, so only Java and PySpark are
needed) into a cache folder, checks them with a one-row Delta write/read, and writes a manifest of
the local jar paths. :func:`loganomaly.runtime.spark.get_spark` then passes those paths as ``spark.jars``
with the Delta SQL extension and catalog, so starting a session never downloads anything.

Where the cache is: ``$LOGANOMALY_JARS_DIR``, else ``$XDG_CACHE_HOME/loganomaly/jars`` (default
``~/.cache/loganomaly/jars``): shared by every checkout on the machine. A mirror of Maven Central
can be named with ``$LOGANOMALY_MAVEN_REPO``.

Under spark-submit or on Databricks the launcher owns the class path: nothing is added there, and
the ``delta`` engine is used when the launcher configured the extension (``--packages``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse
from xml.sax.saxutils import quoteattr

from loganomaly.errors import DeltaJarsError
from loganomaly.runtime.files import cache_folder, folder_lock
from loganomaly.runtime.java import ensure_java

log = logging.getLogger(__name__)

#: The Delta Lake release used with PySpark 4.1 (jars and the PyPI ``delta-spark`` Python API alike).
DELTA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2/"
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
#: Seconds the resolution may take (about 90 MB from Maven Central on a first run).
FETCH_TIMEOUT_S = 900


def spark_line(spark_version: str | None = None) -> str:
    """The Spark ``major.minor`` line the jars are built for (that of the installed PySpark by default)."""
    if spark_version is None:
        import pyspark

        spark_version = pyspark.__version__
    return ".".join(spark_version.split(".")[:2])


def coordinate(spark_version: str | None = None) -> str:
    """Maven coordinate of delta-spark for this PySpark, e.g. ``io.delta:delta-spark_4.1_2.13:4.4.0``.

    From Delta 4.1 on the artifact name carries the Spark line it was built against.
    """
    return f"io.delta:delta-spark_{spark_line(spark_version)}_{SCALA_VERSION}:{DELTA_VERSION}"


def cache_dir() -> Path:
    """The jars cache: ``$LOGANOMALY_JARS_DIR``, else ``$XDG_CACHE_HOME/loganomaly/jars``."""
    return cache_folder("LOGANOMALY_JARS_DIR", "jars")


def repository() -> str:
    """The Maven repository to fetch from: ``$LOGANOMALY_MAVEN_REPO`` or Maven Central."""
    return os.environ.get("LOGANOMALY_MAVEN_REPO") or MAVEN_CENTRAL


def manifest_path(cache: Path | None = None, coord: str | None = None) -> Path:
    coord = coord or coordinate()
    _, artifact, version = coord.split(":")
    return (cache or cache_dir()) / f"{artifact}-{version}.json"


def cached_jars(cache: Path | None = None, coord: str | None = None) -> list[str] | None:
    """Local paths of the cached jars for ``coord``, or None when the cache does not hold all of them."""
    manifest = manifest_path(cache, coord)
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    jars = [str(p) for p in data.get("jars", [])]
    if data.get("coordinate") != (coord or coordinate()) or not jars:
        return None
    if not all(os.path.isfile(p) for p in jars):
        return None
    return jars


_VERSION_SUFFIX = re.compile(r"-\d[\w.\-]*\.jar$")


def artifact_of(jar: str, ivy: bool = True) -> str:
    """The artifact id in a jar's file name: Ivy's ``<group>_<artifact>-<version>.jar`` (what the
    cache holds: ``io.delta_delta-storage-4.4.0.jar`` -> ``delta-storage``) or, with ``ivy=False``,
    Spark's ``<artifact>-<version>.jar`` (whose artifact may hold underscores: ``_2.13``)."""
    name = os.path.basename(jar)
    if ivy:
        name = name.split("_", 1)[-1]
    return _VERSION_SUFFIX.sub("", name)


def spark_jars_dir() -> Path | None:
    """The folder of the jars the running PySpark ships (``$SPARK_HOME/jars`` or the wheel's)."""
    home = os.environ.get("SPARK_HOME")
    if home and os.path.isdir(os.path.join(home, "jars")):
        return Path(home) / "jars"
    import pyspark

    bundled = Path(pyspark.__file__).parent / "jars"
    return bundled if bundled.is_dir() else None


def not_shipped_by_spark(jars: Sequence[str], spark_jars: Path | None = None) -> list[str]:
    """The jars of ``jars`` whose artifact Spark does not already ship.

    Ivy resolves delta-spark with every transitive dependency (hadoop-client-runtime and -api,
    parquet, jackson, log4j, snappy, zstd: 22 of the 33 jars, about 70 of the 80 MB), all of
    which Spark's own class path already holds, in the versions Spark is built with (Jackson
    2.13 from Ivy beside Spark's 2.21, for one). Spark's copies are found first, so the cached
    ones are never loaded; they only add a second log4j initialisation and a mixed-version class
    path where a class missing from Spark's version would come from the older jar. Start-up time
    did not change measurably (a session plus a Delta write and read: 19.5-21.4 s either way on
    the quiet 2-core machine). The manifest keeps the full list (what was resolved and checked);
    only the session gets this one.
    """
    folder = spark_jars if spark_jars is not None else spark_jars_dir()
    if folder is None:
        return list(jars)
    shipped = {artifact_of(name, ivy=False) for name in os.listdir(folder) if name.endswith(".jar")}
    return [jar for jar in jars if artifact_of(jar) not in shipped]


def session_conf(jars: Sequence[str]) -> dict[str, str]:
    """Settings that make a new local session Delta-enabled from cached ``jars``."""
    return {
        "spark.jars": ",".join(jars),
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
    }


def _ivy_settings(cache: Path, repo: str) -> Path:
    """Ivy settings with only ``repo`` as resolver.

    Spark's default settings also look in ``~/.m2``, where a POM without its jar (left by an
    earlier partial Maven run) makes the whole resolution fail with "download failed".
    """
    path = cache / "ivysettings.xml"
    path.write_text(
        '<ivysettings>\n  <settings defaultResolver="central"/>\n  <resolvers>\n'
        f'    <ibiblio name="central" m2compatible="true" root={quoteattr(repo)}/>\n'
        "  </resolvers>\n</ivysettings>\n"
    )
    return path


def _summarise(log_text: str) -> str:
    """The lines of a failed resolution that say what went wrong."""
    keys = ("unresolved dependency", "download failed", "UnknownHost", "Connection", "not found",
            "Exception", "Error", "FAILED")
    lines = [ln.strip() for ln in log_text.splitlines() if any(k in ln for k in keys)]
    # Keep it short: the first distinct lines are the cause, the rest a stack trace.
    seen: list[str] = []
    for line in lines:
        if line not in seen:
            seen.append(line)
        if len(seen) == 6:
            break
    return "; ".join(seen) or "no error line in its output"


def fetch(cache: Path | None = None, repo: str | None = None, force: bool = False) -> list[str]:
    """Resolve delta-spark and its dependencies into ``cache`` (once) and return the jar paths.

    Runs in a child process: a JVM with ``spark.jars.packages`` resolves the jars with Spark's Ivy
    into ``<cache>/ivy/jars``, writes a one-row Delta table and reads it back, and only then is the
    manifest written, so a manifest always names jars that worked together.

    Raises:
        DeltaJarsError: the jars could not be fetched or did not work; the message names the
            coordinate, the repository, the failing lines and the full log file.
    """
    cache = cache or cache_dir()
    repo = repo or repository()
    coord = coordinate()
    with folder_lock(cache):  # one fetch at a time per cache
        if not force:
            jars = cached_jars(cache, coord)
            if jars is not None:
                log.info("delta-spark jars already cached: %s (%d jars in %s)", coord, len(jars), cache)
                return jars
        ensure_java()
        settings = _ivy_settings(cache, repo)
        log_file = cache / "fetch.log"
        log.info("fetching %s and its dependencies from %s into %s", coord, repo, cache)
        started = time.monotonic()
        env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
        with open(log_file, "w") as out:
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "loganomaly.runtime.delta_jars", "_resolve", str(cache), coord, str(settings)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    timeout=FETCH_TIMEOUT_S,
                    check=False,
                )
                code: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                code = f"timed out after {FETCH_TIMEOUT_S} s"
        jars = cached_jars(cache, coord)
        if code != 0 or jars is None:
            raise DeltaJarsError(
                f"could not fetch the delta-spark jars {coord} from {repo} (exit {code}): "
                f"{_summarise(log_file.read_text(errors='replace'))}. Full log: {log_file}. "
                "Check that the repository is reachable (or set LOGANOMALY_MAVEN_REPO to a mirror); "
                "without these jars the tables use the 'deltars' engine (make setup DELTA=0 skips this step)."
            )
        log.info("cached %d delta-spark jars in %.0f s: %s", len(jars), time.monotonic() - started, cache)
        return jars


def _resolve_child(cache: Path, coord: str, settings: Path) -> None:
    """In the child process: resolve, check with a real Delta write/read, write the manifest."""
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("loganomaly-delta-jars")
        .config("spark.jars.packages", coord)
        .config("spark.jars.ivy", str(cache / "ivy"))
        .config("spark.jars.ivySettings", str(settings))
        .config("spark.sql.extensions", DELTA_EXTENSION)
        .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.databricks.delta.snapshotPartitions", "1")
        .getOrCreate()
    )
    try:
        uris = [u for u in (spark.sparkContext.getConf().get("spark.jars", "") or "").split(",") if u]
        jars = [unquote(urlparse(u).path) if u.startswith("file:") else u for u in uris]
        missing = [j for j in jars if not os.path.isfile(j)]
        if not jars or missing:
            raise DeltaJarsError(f"resolution listed no jars or missing files: {missing or uris}")
        with tempfile.TemporaryDirectory() as tmp:
            table = os.path.join(tmp, "check")
            spark.range(3).write.format("delta").save(table)
            got = spark.read.format("delta").load(table).count()
            if got != 3:
                raise DeltaJarsError(f"delta-spark check table read back {got} rows, wrote 3")
        manifest = manifest_path(cache, coord)
        tmp_manifest = manifest.with_suffix(".json.tmp")
        tmp_manifest.write_text(
            json.dumps({"coordinate": coord, "spark": spark.version, "jars": jars}, indent=1) + "\n"
        )
        os.replace(tmp_manifest, manifest)
        log.info("resolved %s: %d jars, checked with a Delta write/read on Spark %s", coord, len(jars), spark.version)
    finally:
        spark.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loganomaly.runtime.delta_jars [--force]``: fetch the jars into the cache (what ``make setup`` runs)."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args[:1] == ["_resolve"]:
        _resolve_child(Path(args[1]), args[2], Path(args[3]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m loganomaly.runtime.delta_jars", description=main.__doc__)
    parser.add_argument("--force", action="store_true", help="fetch again even when the cache holds them")
    parser.add_argument("--print-cache", action="store_true", help="print the cache folder and exit")
    opts = parser.parse_args(args)
    if opts.print_cache:
        sys.stdout.write(f"{cache_dir()}\n")
        return 0
    try:
        jars = fetch(force=opts.force)
    except DeltaJarsError as exc:
        log.error("%s", exc)
        return 1
    sys.stdout.write(f"delta-spark: {coordinate()} ({len(jars)} jars) in {cache_dir()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
