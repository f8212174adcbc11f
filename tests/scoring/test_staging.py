"""The scoring pass's side output, without Spark: flagged rows staged per task, counts per date."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loganomaly.scoring.stage import REFUSED_MARKER, AnomalyStaging

SCHEMA = pa.schema([
    ("entity", pa.string()), ("window_start", pa.timestamp("us", tz="UTC")),
    ("window_end", pa.timestamp("us", tz="UTC")), ("date", pa.date32()), ("score", pa.float64()),
    ("threshold", pa.float64()), ("is_anomaly", pa.bool_()), ("explanation", pa.string()),
    ("top_features", pa.list_(pa.string())), ("model_version", pa.string()), ("run_id", pa.string()),
])


class Reports:
    """Stands in for the accumulator's worker side: collects what a task adds."""

    def __init__(self) -> None:
        self.value: list[dict] = []  # type: ignore[type-arg]

    def add(self, value: list[dict]) -> None:  # type: ignore[type-arg]
        self.value.extend(value)


def _batch(scores: list[float], days: list[dt.date], refused: list[bool] | None = None) -> pa.RecordBatch:
    n = len(scores)
    start = [dt.datetime(2024, 3, 4, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=i) for i in range(n)]
    columns = {
        "entity": pa.array([f"h{i}" for i in range(n)]),
        "window_start": pa.array(start, pa.timestamp("us", tz="UTC")),
        "window_end": pa.array(start, pa.timestamp("us", tz="UTC")),
        "date": pa.array(days, pa.date32()),
        "score": pa.array(scores, pa.float64()),
        "top_features": pa.array([["f"] if s != 0.5 else [] for s in scores], pa.list_(pa.string())),
        "explanation": pa.array([f"why {i}" for i in range(n)]),
    }
    if refused is not None:
        columns["_refused"] = pa.array(refused)
    return pa.RecordBatch.from_pydict(columns)


def test_flagged_rows_are_staged_and_counted_per_date(tmp_path: Path) -> None:
    d1, d2 = dt.date(2024, 3, 4), dt.date(2024, 3, 5)
    reports = Reports()
    staging = AnomalyStaging(str(tmp_path), SCHEMA, 1.0, "v1", "run-1", reports)
    batches = [_batch([0.5, 2.0, float("nan")], [d1, d1, d2]), _batch([0.5, 0.5], [d2, d2]),
               _batch([1.0, 3.0], [d1, d2])]
    out = list(staging.tee(iter(batches)))
    assert out == batches  # passed on unchanged, for the scores write
    [report] = reports.value
    assert report["counts"] == {"2024-03-04": [3, 1], "2024-03-05": [4, 2]}  # NaN flagged, 1.0 is not > 1.0
    [path] = report["files"]
    table = pq.read_table(path)
    assert table.schema.equals(SCHEMA)
    assert table.column("entity").to_pylist() == ["h1", "h2", "h1"]
    assert np.isnan(table.column("score").to_pylist()[1])
    assert set(table.column("is_anomaly").to_pylist()) == {True}
    assert set(table.column("model_version").to_pylist()) == {"v1"} and set(table.column("run_id").to_pylist()) == {"run-1"}
    assert table.column("explanation").to_pylist() == ["why 1", "why 2", "why 1"]


def test_a_task_without_flagged_rows_stages_no_file(tmp_path: Path) -> None:
    reports = Reports()
    list(AnomalyStaging(str(tmp_path), SCHEMA, 1.0, "v1", "r", reports).tee(iter([_batch([0.1], [dt.date(2024, 3, 4)])])))
    assert reports.value == [{"files": [], "counts": {"2024-03-04": [1, 0]}}]
    assert not list(tmp_path.iterdir())


def test_without_staged_rows_a_task_only_counts(tmp_path: Path) -> None:
    """Per-entity baselines write ``anomalies`` from ``scores``: the tasks then write no file."""
    d1, d2 = dt.date(2024, 3, 4), dt.date(2024, 3, 5)
    reports = Reports()
    staging = AnomalyStaging(str(tmp_path), SCHEMA, 1.0, "v1", "r", reports, stage_rows=False)
    batches = [_batch([0.5, 2.0, float("nan")], [d1, d1, d2]), _batch([1.0, 3.0], [d1, d2])]
    assert list(staging.tee(iter(batches))) == batches
    assert reports.value == [{"files": [], "counts": {"2024-03-04": [3, 1], "2024-03-05": [2, 2]}}]
    assert not list(tmp_path.iterdir())


def test_a_refused_row_stops_the_task_and_removes_its_file(tmp_path: Path) -> None:
    reports = Reports()
    staging = AnomalyStaging(str(tmp_path), SCHEMA, 1.0, "v1", "r", reports)
    day = dt.date(2024, 3, 4)
    batches = [_batch([5.0, 0.1], [day, day], [False, False]), _batch([0.1], [day], [True])]
    with pytest.raises(RuntimeError, match=REFUSED_MARKER):
        list(staging.tee(iter(batches)))
    assert reports.value == [] and not list(tmp_path.iterdir())  # nothing reported, the first batch's file gone
