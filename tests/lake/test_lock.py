"""The lake's writer lock between real processes: a second writer is refused, a dead one's lock taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loganomaly.errors import LakeBusyError
from loganomaly.lake.lock import lock_path, writer_lock

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time, pathlib
from loganomaly.lake.lock import writer_lock
lake, flag = sys.argv[1], pathlib.Path(sys.argv[2])
with writer_lock(lake, "run-A", "ingest"):
    (flag / "ready").touch()
    deadline = time.time() + 60
    while not (flag / "release").exists() and time.time() < deadline:
        time.sleep(0.05)
"""


def start_holder(lake: Path, flags: Path) -> subprocess.Popen[bytes]:
    flags.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lake), str(flags)], cwd=ROOT)
    deadline = time.time() + 30
    while not (flags / "ready").exists():
        assert proc.poll() is None and time.time() < deadline, "holder did not start"
        time.sleep(0.05)
    return proc


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lake = tmp_path / "lake"
    holder = start_holder(lake, tmp_path / "flags")
    try:
        with pytest.raises(LakeBusyError, match=rf"lake {lake} is being written by run run-A \(ingest, pid {holder.pid} on host "):
            with writer_lock(lake, "run-B", "ingest"):
                pytest.fail("entered while another process held the lock")
        assert json.loads(Path(lock_path(lake)).read_text())["run_id"] == "run-A"  # untouched
    finally:
        (tmp_path / "flags" / "release").touch()
        assert holder.wait(30) == 0
    assert not os.path.exists(lock_path(lake))  # released by its holder
    with writer_lock(lake, "run-B", "ingest") as me:
        assert json.loads(Path(lock_path(lake)).read_text()) == me
    assert not os.path.exists(lock_path(lake))


def test_the_lock_of_a_killed_run_is_taken_over_on_its_host(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    lake = tmp_path / "lake"
    holder = start_holder(lake, tmp_path / "flags")
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    assert json.loads(Path(lock_path(lake)).read_text())["pid"] == holder.pid  # left behind
    with writer_lock(lake, "run-B", "ingest") as me:
        assert me["run_id"] == "run-B"
    assert "taking over the stale writer lock of run run-A" in caplog.text
    assert not os.path.exists(lock_path(lake))


def test_a_lock_held_from_another_host_is_not_taken_over(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lake = tmp_path / "lake"
    os.makedirs(os.path.dirname(lock_path(lake)))
    other = {"pid": 1, "host": "elsewhere", "run_id": "run-X", "stage": "score", "started": "2024-03-05T00:00:00+00:00"}
    Path(lock_path(lake)).write_text(json.dumps(other))
    with pytest.raises(LakeBusyError, match="run-X .*on host elsewhere.* since 2024-03-05.*remove .*writer.lock"):
        with writer_lock(lake, "run-B", "ingest"):
            pass
    assert json.loads(Path(lock_path(lake)).read_text()) == other


@pytest.mark.spark
def test_featurize_and_score_are_refused_while_another_run_writes(spark, lake, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every stage that writes the lake takes the same lock, before it reads or writes anything."""
    from loganomaly.config import Config
    from loganomaly.errors import LakeBusyError
    from loganomaly.features import stage as featurize
    from loganomaly.scoring import stage as score

    holder = start_holder(Path(lake.root), tmp_path / "flags")
    try:
        with pytest.raises(LakeBusyError, match="being written by run run-A"):
            featurize.run(spark, Config(), lake=lake)
        with pytest.raises(LakeBusyError, match="being written by run run-A"):
            score.run(spark, Config(), tmp_path / "no-model", lake=lake)
    finally:
        (tmp_path / "flags" / "release").touch()
        holder.wait(30)
    assert not lake.exists("sequences") and not lake.exists("scores")
