"""Short-lived ``sql --local`` processes exit cleanly (issue 16: delta-rs readers once aborted at exit
with ``terminate called without an active exception``, 3 times in 68).

Not reproduced here (0 in 100 CLI runs and 0 in 165 bare delta-rs readers on a 30-partition
table); this loop guards against its return in the product's own short-lived reader.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

pytestmark = pytest.mark.slow

RUNS = 25


def test_many_short_sql_local_processes_exit_cleanly(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    lake = tmp_path / "lake"
    for k in range(8):
        n = 5000
        day = dt.date(2024, 3, 1 + k)
        table = pa.table({"entity": [f"h{i % 50}" for i in range(n)], "date": [day] * n,
                          "score": [float(i) for i in range(n)], "is_anomaly": [i % 97 == 0 for i in range(n)]})
        write_deltalake(str(lake / "scores"), table, mode="append", partition_by=["date"])
    query = "SELECT entity, date, score FROM scores WHERE is_anomaly ORDER BY score DESC"
    cli = [sys.executable, "-m", "loganomaly.cli", "sql", "--local", "--lake", str(lake), "--limit", "5", query]
    failures = []
    for i in range(RUNS):
        done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or "terminate called" in done.stderr:
            failures.append((i, done.returncode, done.stderr[-300:]))
    assert not failures, failures
