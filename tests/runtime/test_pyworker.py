"""The Python workers' lean path: Spark's pyspark/py4j archives and Python-free jars dropped only
when the interpreter imports the same pyspark without them."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from loganomaly.runtime.pyworker import lean_path


def _site(tmp_path: Path, version: str) -> Path:
    site = tmp_path / "site"
    (site / "pyspark").mkdir(parents=True)
    (site / "pyspark" / "__init__.py").write_text("")
    (site / "pyspark" / "version.py").write_text(f'__version__: str = "{version}"\n')
    (site / "py4j").mkdir()
    (site / "py4j" / "__init__.py").write_text("")
    return site


def _archives(tmp_path: Path, version: str, jar_python: bool = False) -> list[str]:
    lib = tmp_path / "spark" / "python" / "lib"
    lib.mkdir(parents=True)
    with zipfile.ZipFile(lib / "pyspark.zip", "w") as zf:
        zf.writestr("pyspark/__init__.py", "")
        zf.writestr("pyspark/version.py", f"__version__: str = '{version}'\n")
    with zipfile.ZipFile(lib / "py4j-0.10.9.9-src.zip", "w") as zf:
        zf.writestr("py4j/__init__.py", "")
    jar = tmp_path / "spark" / "jars" / "spark-core_2.13-4.1.4.jar"
    jar.parent.mkdir(parents=True)
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("org/apache/spark/SparkContext.class", b"\xca\xfe")
        if jar_python:
            zf.writestr("extra/mod.py", "")
    return [str(lib / "pyspark.zip"), str(lib / "py4j-0.10.9.9-src.zip"), str(jar)]


def test_archives_dropped_when_the_same_pyspark_is_installed(tmp_path: Path) -> None:
    archives = _archives(tmp_path, "4.1.4")
    site = str(_site(tmp_path, "4.1.4"))
    assert lean_path([*archives, "/elsewhere", site]) == ["/elsewhere", site]


def test_archives_kept_for_another_version_or_without_an_installed_pyspark(tmp_path: Path) -> None:
    archives = _archives(tmp_path, "4.1.4")
    other = str(_site(tmp_path, "4.0.0"))
    path = [*archives, other]
    assert lean_path(path) == path  # the zip is the JVM's pyspark; the installed one is another
    assert lean_path([*archives, "/elsewhere"]) == [*archives, "/elsewhere"]  # only the zip has it


def test_a_jar_holding_python_stays(tmp_path: Path) -> None:
    archives = _archives(tmp_path, "4.1.4", jar_python=True)
    site = str(_site(tmp_path, "4.1.4"))
    assert lean_path([*archives, site]) == [archives[2], site]


def test_a_path_without_archives_is_unchanged() -> None:
    assert lean_path(["/a", "/b"]) == ["/a", "/b"]


@pytest.mark.spark
def test_workers_of_our_sessions_import_pyspark_from_site_packages_and_cache_no_archive(spark) -> None:
    import pyarrow as pa

    assert spark.sparkContext.getConf().get("spark.python.daemon.module") == "loganomaly.runtime.pyworker"

    def probe(batches):  # type: ignore[no-untyped-def]
        import pyspark

        for _ in batches:
            pass
        zips = [k for k, v in sys.path_importer_cache.items() if type(v).__name__ == "zipimporter"]
        yield pa.RecordBatch.from_pylist([{"r": json.dumps({"zips": zips, "pyspark": pyspark.__file__})}])

    found = json.loads(spark.range(0, 1, 1, 1).mapInArrow(probe, "r string").collect()[0]["r"])
    assert found["zips"] == []  # nothing whose directory each task would read again
    assert "site-packages" in found["pyspark"] and ".zip" not in found["pyspark"]
