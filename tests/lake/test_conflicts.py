"""Commit conflicts are retried a bounded number of times (issue 16: ledger conflicts are retried)."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

from loganomaly.lake.conflicts import is_conflict, retry_conflicts


def _stale_merge_conflict(path: str) -> None:
    """A real delta-rs conflict: a MERGE planned on a snapshot that another writer then changed."""
    from deltalake import DeltaTable

    stale = DeltaTable(path)
    DeltaTable(path).delete("k = 1")  # the other writer
    stale.merge(pa.table({"k": [1], "v": ["z"]}), "t.k = s.k", "s", "t").when_matched_update_all().when_not_matched_insert_all().execute()


@pytest.fixture
def table(tmp_path):  # type: ignore[no-untyped-def]
    from deltalake import write_deltalake

    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"k": [1, 2], "v": ["a", "b"]}))
    return path


def test_a_delta_rs_conflict_is_retried_against_the_new_version(table, caplog) -> None:  # type: ignore[no-untyped-def]
    from deltalake import DeltaTable

    calls = []

    def merge() -> int:
        calls.append(1)
        if len(calls) == 1:
            _stale_merge_conflict(table)  # raises CommitFailedError
        DeltaTable(table).merge(
            pa.table({"k": [1], "v": ["z"]}), "t.k = s.k", "s", "t"
        ).when_matched_update_all().when_not_matched_insert_all().execute()
        return len(calls)

    with caplog.at_level(logging.INFO, logger="loganomaly.lake.conflicts"):
        assert retry_conflicts(merge, "ledger", backoff_s=0.01) == 2
    rows = DeltaTable(table).to_pyarrow_table().to_pylist()
    assert sorted((r["k"], r["v"]) for r in rows) == [(1, "z"), (2, "b")]
    assert "attempt 1 of 5" in caplog.text and "committed after 2 attempts" in caplog.text


def test_retries_are_bounded_and_the_last_conflict_is_raised(table) -> None:  # type: ignore[no-untyped-def]
    from deltalake import write_deltalake
    from deltalake.exceptions import CommitFailedError

    calls = []

    def always_conflicts() -> None:
        calls.append(1)
        write_deltalake(table, pa.table({"k": [1], "v": ["again"]}), mode="append")  # k = 1 exists again
        _stale_merge_conflict(table)

    with pytest.raises(CommitFailedError):
        retry_conflicts(always_conflicts, "ledger", attempts=3, backoff_s=0.01)
    assert len(calls) == 3


def test_other_errors_are_not_retried() -> None:
    calls = []

    def fails() -> None:
        calls.append(1)
        raise ValueError("not a conflict")

    with pytest.raises(ValueError):
        retry_conflicts(fails, "ledger", backoff_s=0.01)
    assert calls == [1]


def test_delta_spark_conflicts_are_recognised() -> None:
    """delta-spark's Python classes (what pyspark converts io.delta.exceptions.* to), and the Java
    class name where a conversion did not happen."""
    from delta.exceptions import base

    for cls in (base.ConcurrentAppendException, base.ConcurrentDeleteReadException, base.MetadataChangedException):
        assert is_conflict(cls("Files were added to the root of the table by a concurrent update."))
    assert is_conflict(RuntimeError("py4j: io.delta.exceptions.ConcurrentAppendException: Files were added"))
    assert not is_conflict(RuntimeError("disk full"))
