"""Operational faults of a lake end in errors naming the table, the commit file or the path."""

from __future__ import annotations

import pytest

from loganomaly.errors import ConfigError, TableError
from loganomaly.lake.guard import check_root, corrupt_commit
from loganomaly.lake.tables import Lake

pytestmark = pytest.mark.spark


def test_a_damaged_commit_is_a_table_error_naming_the_table_and_the_commit(spark, lake) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame([(1, "a"), (2, "b")], "id bigint, v string")
    lake.write("runs", df)
    lake.write("runs", df)
    commit = f"{lake.path('runs')}/_delta_log/00000000000000000001.json"
    with open(commit, "w") as fh:
        fh.write('{"commitInfo": {"timestamp": 1\n')  # cut short, as by a full disk
    assert corrupt_commit(lake.path("runs")) == (commit, corrupt_commit(lake.path("runs"))[1])  # type: ignore[index]
    for call in (lambda: lake.read("runs"), lambda: lake.version("runs"), lambda: lake.history("runs")):
        with pytest.raises(TableError, match=r"table 'runs' cannot be read: its Delta log commit .*00000000000000000001\.json is damaged"):
            call()


def test_a_lake_root_that_is_a_file_is_refused_up_front(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    log_file = tmp_path / "conn.log"
    log_file.write_text("not a lake\n")
    with pytest.raises(ConfigError, match="conn.log is not a directory"):
        Lake(spark, log_file, engine="deltars")
    check_root(tmp_path)  # a directory, or a path not there yet, is fine
    check_root(tmp_path / "new")
    assert log_file.read_text() == "not a lake\n"
