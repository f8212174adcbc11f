"""Delta write/read cost of the ``deltars`` engine against plain Spark Parquet, in the same run.

Prints rows/s of each and the ratio. Usage:
    .venv/bin/python bench/tables.py [--rows 2000000] [--master local[2]]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from loganomaly.config import SparkConfig
from loganomaly.lake.tables import Lake
from loganomaly.runtime.spark import get_spark


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    spark = get_spark(SparkConfig(master=args.master, shuffle_partitions=4, log_level="ERROR"))
    df = spark.range(args.rows, numPartitions=4).selectExpr(
        "id",
        "timestamp_seconds(1709510400 + id % 259200) AS ts",
        "to_date(timestamp_seconds(1709510400 + id % 259200)) AS date",
        "concat('host-', id % 50) AS entity",
        "repeat('x', 40 + cast(id % 20 AS int)) AS message",
        "rand(1) * 1e6 AS bytes",
    ).cache()
    df.count()
    root = Path(tempfile.mkdtemp(prefix="bench-tables-"))
    try:
        lake = Lake(spark, root / "lake", engine="deltars")
        parquet_path = str(root / "parquet")
        t_pq_w = timed(lambda: df.write.partitionBy("date").mode("overwrite").parquet(parquet_path))
        t_dl_w = timed(lambda: lake.write("bench", df, mode="overwrite", partition_by=["date"]))
        t_pq_r = timed(lambda: spark.read.parquet(parquet_path).selectExpr("sum(bytes)", "count(*)").collect())
        t_dl_r = timed(lambda: lake.read("bench").selectExpr("sum(bytes)", "count(*)").collect())
        n = args.rows
        print(f"rows: {n:,}  master: {args.master}")
        print("| operation | parquet rows/s | deltars rows/s | deltars / parquet time |")
        print("|---|---:|---:|---:|")
        print(f"| write | {n / t_pq_w:,.0f} | {n / t_dl_w:,.0f} | {t_dl_w / t_pq_w:.2f}x |")
        print(f"| read (full scan) | {n / t_pq_r:,.0f} | {n / t_dl_r:,.0f} | {t_dl_r / t_pq_r:.2f}x |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        spark.stop()


if __name__ == "__main__":
    main()
