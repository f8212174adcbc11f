"""The package reaches spark-submit's driver and executors through ``--py-files``, for real.

``scripts/package.sh`` builds the wheel; real ``spark-submit --master local[2]`` runs probe scripts
and the ``jobs/*.py`` shims under a *clean* interpreter: a fresh venv that sees the project venv's
dependencies (pyspark, pyarrow, pandas, torch, deltalake, drain3, ...) but not loganomaly itself,
so the package can only come from what spark-submit shipped. Every run works in a temporary
directory, so neither ``./lib`` nor ``./conf`` of the checkout is on any path by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
DEPS = ("pyspark", "pyarrow", "pandas", "torch", "deltalake", "drain3", "yaml", "safetensors")

PROBE = """
import json, sys
import loganomaly
from pyspark.sql import SparkSession

def where(_):
    import loganomaly
    return loganomaly.__file__

spark = SparkSession.builder.getOrCreate()
executors = spark.sparkContext.parallelize(range(2), 2).map(where).collect()
print("PROBE " + json.dumps({"driver": loganomaly.__file__, "executors": executors}))
spark.stop()
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and its .zip copy, built by scripts/package.sh from a copy of lib/."""
    if not SPARK_SUBMIT.is_file():
        pytest.skip(f"no spark-submit next to {sys.executable} (pyspark installs it there)")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "package.sh"), str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=300,
    )
    wheels = list(out.glob("loganomaly-*-py3-none-any.whl"))
    assert len(wheels) == 1, wheels
    return {"whl": wheels[0], "zip": out / "loganomaly.zip"}


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv that reaches the project venv's site-packages through a plain path in a .pth file.

    A path line in a .pth is added to ``sys.path`` without processing the ``.pth`` files inside
    it, so the editable install's ``__editable__.loganomaly-*.pth`` (which adds ``lib/``) stays
    inert: the dependencies import, loganomaly does not.
    """
    venv = tmp_path_factory.mktemp("clean") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()
    paths = dict.fromkeys([ours["purelib"], ours["platlib"]])
    (Path(site) / "loganomaly-deps.pth").write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")

    check = subprocess.run(
        [str(python), "-c", f"import {', '.join(DEPS)}"], capture_output=True, text=True, env=_env(python)
    )
    assert check.returncode == 0, f"clean interpreter lacks a dependency:\n{check.stderr}"
    leak = subprocess.run(
        [str(python), "-c", "import loganomaly; print(loganomaly.__file__)"],
        capture_output=True,
        text=True,
        env=_env(python),
        cwd=venv,
    )
    if leak.returncode == 0:
        pytest.skip(f"loganomaly is installed non-editable in {ours['purelib']} ({leak.stdout.strip()})")
    return python


def _env(python: Path) -> dict[str, str]:
    from loganomaly.runtime.java import find_java_home

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")
        and not k.startswith("LOGANOMALY_")
    }
    env.update(
        PYSPARK_PYTHON=str(python),
        PYSPARK_DRIVER_PYTHON=str(python),
        PYTHONNOUSERSITE="1",
        JAVA_HOME=str(find_java_home()),
    )
    return env


def _submit(
    python: Path, cwd: Path, py_files: Path | None, app: Path, *args: str
) -> subprocess.CompletedProcess:
    cmd = [
        str(SPARK_SUBMIT),
        "--master",
        "local[2]",
        "--driver-memory",
        "1g",
        "--conf",
        "spark.ui.enabled=false",
    ]
    if py_files is not None:
        cmd += ["--py-files", str(py_files)]
    return subprocess.run(
        [*cmd, str(app), *args], cwd=cwd, env=_env(python), capture_output=True, text=True, timeout=400
    )


def _tail(result: subprocess.CompletedProcess, n: int = 6000) -> str:
    """What went wrong: spark-submit relays the Python driver's stdout *and* stderr on its stdout."""
    return f"rc={result.returncode}\n--- stdout\n{result.stdout[-n:]}\n--- stderr\n{result.stderr[-n:]}"


def _probe(result: subprocess.CompletedProcess) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert lines, _tail(result)
    return json.loads(lines[-1][len("PROBE ") :])


def test_zip_reaches_driver_and_executors(package, clean_python: Path, tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(PROBE, encoding="utf-8")
    result = _submit(clean_python, tmp_path, package["zip"], tmp_path / "probe.py")
    assert result.returncode == 0, _tail(result)
    seen = _probe(result)
    # driver: spark-submit put the archive itself on the driver's PYTHONPATH
    assert seen["driver"] == str(package["zip"] / "loganomaly" / "__init__.py")
    # executors: the copy Spark distributed to the tasks' working files
    assert len(seen["executors"]) == 2
    for path in seen["executors"]:
        assert path.endswith("/loganomaly.zip/loganomaly/__init__.py"), path
        assert "userFiles-" in path and not path.startswith(str(package["zip"])), path


def test_bare_wheel_reaches_the_driver_only(package, clean_python: Path, tmp_path: Path) -> None:
    """Why the docs ship ``loganomaly.zip``: PySpark puts only .zip/.egg/.jar py-files on the workers' path."""
    (tmp_path / "probe.py").write_text(PROBE, encoding="utf-8")
    result = _submit(clean_python, tmp_path, package["whl"], tmp_path / "probe.py")
    assert result.returncode != 0
    assert "No module named 'loganomaly'" in result.stdout + result.stderr
    # the driver had it: the failure is inside a task, after the session started
    assert ", in where" in result.stdout + result.stderr


def test_jobs_need_the_package(clean_python: Path, tmp_path: Path) -> None:
    """Control: without --py-files the clean interpreter cannot run a job shim at all."""
    result = _submit(clean_python, tmp_path, None, ROOT / "jobs" / "generate.py", "--out", "raw")
    assert result.returncode != 0
    assert "No module named 'loganomaly'" in result.stdout
    assert not (tmp_path / "raw").exists()


def test_generate_then_pipeline_from_the_shipped_package(package, clean_python: Path, tmp_path: Path) -> None:
    conf = ["--conf-dir", str(ROOT / "conf"), "--profile", "test", "--log-level", "WARNING"]
    small = ["--set", "generate.hosts=2", "--set", "generate.days=2"]

    gen = _submit(
        clean_python, tmp_path, package["zip"], ROOT / "jobs" / "generate.py", *conf, "--out", "raw", *small
    )
    assert gen.returncode == 0, _tail(gen)
    generated = json.loads(gen.stdout.strip().splitlines()[-1])
    assert generated["files"] > 0 and (tmp_path / "raw" / "labels.csv").is_file()

    run = _submit(
        clean_python,
        tmp_path,
        package["zip"],
        ROOT / "jobs" / "pipeline.py",
        *conf,
        "--lake", "lake", "--model-dir", "model", "--input", "raw", "--set", "train.epochs=1", "--top", "3",
    )  # fmt: skip
    assert run.returncode == 0, _tail(run)
    # ingest and featurize run Python inside Spark tasks (Arrow UDFs, the deltars data source):
    # they only succeed when the executors import loganomaly from the shipped zip
    lines = run.stdout.splitlines()
    summary = json.loads("\n".join(lines[lines.index("{") : lines.index("}") + 1]))
    assert summary["ingest"]["events"] > 0
    assert summary["ingest"]["events"] + summary["ingest"]["quarantined"] == generated["lines"]
    assert summary["featurize"]["windows"] > 0
    assert summary["score"]["windows"] > 0
    for table in ("events", "quarantine", "ingested_files", "sequences", "scores", "anomalies"):
        assert (tmp_path / "lake" / table / "_delta_log").is_dir(), table
    assert (tmp_path / "model" / "model.safetensors").is_file()
