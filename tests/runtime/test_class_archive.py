"""The JVM class archive: its name follows what the JVM checks, only a whole one is offered, and a
local session maps it (real JVMs in fresh processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loganomaly.errors import ClassArchiveError
from loganomaly.runtime import class_archive


def _fake_install(root: Path) -> tuple[Path, Path]:
    home, jars = root / "java", root / "jars"
    (home / "lib" / "server").mkdir(parents=True)
    (home / "release").write_text('JAVA_VERSION="17.0.15"\n')
    (home / "lib" / "server" / "libjvm.so").write_bytes(b"x" * 10)
    jars.mkdir()
    for name in ("spark-core_2.13-4.1.4.jar", "spark-sql_2.13-4.1.4.jar"):
        (jars / name).write_bytes(b"j" * 5)
    return home, jars


def test_fingerprint_follows_java_spark_jars_and_extra_jars(tmp_path: Path) -> None:
    home, jars = _fake_install(tmp_path)
    delta = tmp_path / "delta-spark.jar"
    delta.write_bytes(b"d")
    base = class_archive.fingerprint(home, jars, [str(delta)])
    assert base == class_archive.fingerprint(home, jars, [str(delta)])  # stable
    assert class_archive.fingerprint(home, jars, []) != base
    (home / "release").write_text('JAVA_VERSION="17.0.16"\n')
    changed_java = class_archive.fingerprint(home, jars, [str(delta)])
    assert changed_java != base
    (jars / "spark-core_2.13-4.1.4.jar").write_bytes(b"j" * 6)  # a reinstalled jar of another size
    changed_jar = class_archive.fingerprint(home, jars, [str(delta)])
    assert changed_jar != changed_java
    (jars / "extra.jar").write_bytes(b"e")
    assert class_archive.fingerprint(home, jars, [str(delta)]) != changed_jar
    (jars / "notes.txt").write_text("not a jar")  # only jars are on the class path
    assert class_archive.fingerprint(home, jars, [str(delta)]) == class_archive.fingerprint(home, jars, [str(delta)])


def test_only_a_whole_archive_is_offered(tmp_path: Path) -> None:
    archive, record = class_archive.paths("k1", tmp_path)
    assert class_archive.usable("k1", tmp_path) is None  # nothing built
    archive.write_bytes(b"a" * 100)
    assert class_archive.usable("k1", tmp_path) is None  # no record: a dump still being written
    record.write_text(json.dumps({"size": 100}))
    assert class_archive.usable("k1", tmp_path) == archive
    archive.write_bytes(b"a" * 60)  # truncated: mapping it would crash the JVM
    assert class_archive.usable("k1", tmp_path) is None
    record.write_text("{not json")
    assert class_archive.usable("k1", tmp_path) is None
    assert class_archive.use_options(archive)[0] == f"-XX:SharedArchiveFile={archive}"
    assert class_archive.dump_options(archive)[0] == f"-XX:ArchiveClassesAtExit={archive}"


def _writer(content: bytes, code: int = 0) -> list[str]:
    return [sys.executable, "-c",
            f"import sys; open(sys.argv[1], 'wb').write({content!r}); print('dumped'); sys.exit({code})"]


def test_build_renames_a_finished_dump_and_records_its_size(tmp_path: Path) -> None:
    runs: list[Path] = []

    def command(target: Path) -> list[str]:
        runs.append(target)
        assert target.name.endswith(".tmp")
        return [*_writer(b"classes" * 10), str(target)]

    archive = class_archive.build("k2", command, tmp_path)
    assert archive == class_archive.paths("k2", tmp_path)[0] and archive.read_bytes() == b"classes" * 10
    assert json.loads(class_archive.paths("k2", tmp_path)[1].read_text())["size"] == 70
    assert not runs[0].exists()
    assert "dumped" in (tmp_path / "build-k2.log").read_text()
    # Built once: a second call does not run the child again; force does.
    assert class_archive.build("k2", command, tmp_path) == archive and len(runs) == 1
    class_archive.build("k2", lambda t: [*_writer(b"again"), str(t)], tmp_path, force=True)
    assert archive.read_bytes() == b"again"


def test_a_failed_build_leaves_nothing_to_offer(tmp_path: Path) -> None:
    with pytest.raises(ClassArchiveError, match="exit 3"):
        class_archive.build("k3", lambda t: [*_writer(b"half", code=3), str(t)], tmp_path)
    with pytest.raises(ClassArchiveError, match="0 bytes"):
        class_archive.build("k3", lambda t: [sys.executable, "-c", "pass"], tmp_path)
    assert class_archive.usable("k3", tmp_path) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("loganomaly-")] == []


#: A fresh local session: which archive its JVM was given and whether it maps shared classes.
_PROBE = r"""
import json
from loganomaly.config import SparkConfig
from loganomaly.runtime.spark import get_spark
spark = get_spark(SparkConfig(master="local[1]", log_level="ERROR", driver_memory="1g"))
jvm = spark._jvm
diag = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
    jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
args = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
rows = spark.range(5).count()
print(json.dumps({"archive": [a for a in args if a.startswith("-XX:SharedArchiveFile")],
                  "shared": diag.getVMOption("UseSharedSpaces").getValue(), "rows": rows}))
spark.stop()
"""


def _probe(env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env}, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _current_key() -> str:
    from loganomaly.config import SparkConfig
    from loganomaly.runtime.java import ensure_java
    from loganomaly.runtime.spark import archive_key, local_session_conf

    ensure_java()
    return archive_key(local_session_conf(SparkConfig()))


def test_a_local_session_maps_the_archive_make_setup_built() -> None:
    archive = class_archive.usable(_current_key())
    if archive is None:
        pytest.skip("no class archive for this machine (make setup builds it; CLASS_ARCHIVE=0 skips it)")
    result = _probe({})
    assert result["archive"] == [f"-XX:SharedArchiveFile={archive}"]
    assert result["shared"] == "true" and result["rows"] == 5


def test_a_truncated_archive_is_not_given_to_the_jvm(tmp_path: Path) -> None:
    archive, record = class_archive.paths(_current_key(), tmp_path)
    archive.write_bytes(b"\0" * 4096)  # what a crash during the dump leaves; the JVM dies mapping it
    record.write_text(json.dumps({"size": 1 << 20}))
    result = _probe({"LOGANOMALY_JVM_DIR": str(tmp_path)})
    assert result["archive"] == [] and result["rows"] == 5


@pytest.mark.slow
def test_class_archive_command_builds_one_sessions_then_map(tmp_path: Path) -> None:
    """The whole chain as `make setup` runs it: the warm-up pipeline in a child whose JVM dumps
    its classes, then a new session that maps them."""
    env = {"LOGANOMALY_JVM_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "loganomaly.cli", "class-archive", "--log-level", "WARNING"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, **env}, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    archive = Path(out.stdout.strip().splitlines()[-1])
    assert archive.parent == tmp_path and class_archive.usable(_current_key(), tmp_path) == archive
    assert archive.stat().st_size > 10 << 20  # Spark's and Delta's classes, not an empty dump
    result = _probe(env)
    assert result["archive"] == [f"-XX:SharedArchiveFile={archive}"] and result["shared"] == "true"


def test_archives_of_removed_installs_are_pruned_at_the_next_build(tmp_path: Path) -> None:
    gone, kept = tmp_path / "old-venv" / "jars", tmp_path / "venv" / "jars"
    kept.mkdir(parents=True)
    gone.mkdir(parents=True)
    folder = tmp_path / "jvm"
    for key, jars in (("old", gone), ("cur", kept)):
        class_archive.build(key, lambda t: [*_writer(b"classes"), str(t)], folder,
                            install={"java_home": str(tmp_path), "spark_jars": str(jars)})
    legacy = class_archive.paths("legacy", folder)  # a record without install paths is left alone
    legacy[0].write_bytes(b"x")
    legacy[1].write_text(json.dumps({"size": 1}))
    gone.rmdir()
    class_archive.build("new", lambda t: [*_writer(b"classes"), str(t)], folder,
                        install={"java_home": str(tmp_path), "spark_jars": str(kept)})
    left = sorted(p.name for p in folder.glob("loganomaly-*"))
    assert left == [f"loganomaly-{k}.{ext}" for k in ("cur", "legacy", "new") for ext in ("jsa", "json")]
