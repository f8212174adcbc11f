"""Every read of a snapshot outside Spark lists its files through one checked path (lake/snapshot.py).

A table with deletion vectors (rows deleted without rewriting their file) or column mapping
(physical column names differ from the logical ones) would be read wrongly by plain Parquet
readers; the training readers and the embedded engine's Spark reader both refuse it.
"""

from __future__ import annotations

import pytest

from loganomaly.errors import TableError
from loganomaly.lake.snapshot import Snapshot
from loganomaly.lake.tables import Lake
from tests.conftest import require_engine


@pytest.mark.spark
@pytest.mark.parametrize(
    ("prop", "message"),
    [("'delta.enableDeletionVectors' = 'true'", "deletion vectors"),
     ("'delta.columnMapping.mode' = 'name', 'delta.minReaderVersion' = '2', 'delta.minWriterVersion' = '5'",
      "column mapping")],
)
def test_readers_outside_spark_refuse_tables_they_would_misread(spark, tmp_path, prop: str, message: str) -> None:  # type: ignore[no-untyped-def]
    require_engine(spark, "delta")
    path = tmp_path / "lake" / "events"
    spark.sql(f"CREATE TABLE delta.`{path}` (id BIGINT, host STRING) USING delta TBLPROPERTIES ({prop})")
    spark.sql(f"INSERT INTO delta.`{path}` VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    spark.sql(f"DELETE FROM delta.`{path}` WHERE id = 2")
    version = int(spark.sql(f"DESCRIBE HISTORY delta.`{path}`").agg({"version": "max"}).collect()[0][0])
    with pytest.raises(TableError, match=message):
        Snapshot(str(path), version).file_uris()  # the training readers' listing
    with pytest.raises(TableError, match=message):
        Lake(spark, tmp_path / "lake", engine="deltars").read("events").collect()  # the embedded engine
    # Delta's own reader applies them: the delete is seen.
    assert sorted(r.id for r in Lake(spark, tmp_path / "lake", engine="delta").read("events").collect()) == [1, 3]
