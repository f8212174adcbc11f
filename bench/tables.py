"""Delta write/read cost of both engines (delta-spark, deltars) against plain Spark Parquet, in one run.

The same cached DataFrame is written (partitioned by date) and read back (a full scan: sum and
count) through plain Parquet, delta-spark (engine ``delta``) and delta-rs (engine ``deltars``), each
``--repeat`` times in turn; the best time of each counts. Prints rows/s and time ratios against
Parquet. Usage:
    .venv/bin/python bench/tables.py [--rows 2000000] [--master local[2]] [--repeat 3]

The delta engine needs the jars that ``make setup`` caches; without them only deltars is measured.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from loganomaly.config import SparkConfig
from loganomaly.lake.tables import Lake, delta_spark_available
from loganomaly.runtime.spark import get_spark


def _sums(lake: Lake) -> object:
    return lake.read("bench").selectExpr("sum(bytes)", "count(*)").collect()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best time of each counts")
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
    engines = ["delta", "deltars"] if delta_spark_available(spark) else ["deltars"]
    best: dict[tuple[str, str], float] = {}

    def record(key: tuple[str, str], seconds: float) -> None:
        best[key] = min(seconds, best.get(key, float("inf")))

    try:
        lakes = {e: Lake(spark, root / e, engine=e) for e in engines}
        parquet_path = str(root / "parquet")
        for _ in range(args.repeat):
            record(("parquet", "write"),
                   timed(lambda: df.write.partitionBy("date").mode("overwrite").parquet(parquet_path)))
            record(("parquet", "read"),
                   timed(lambda: spark.read.parquet(parquet_path).selectExpr("sum(bytes)", "count(*)").collect()))
            for engine, lake in lakes.items():
                record((engine, "write"),
                       timed(functools.partial(lake.write, "bench", df, mode="overwrite", partition_by=["date"])))
                record((engine, "read"),
                       timed(functools.partial(_sums, lake)))
        n = args.rows
        print(f"rows: {n:,}  master: {args.master}  rounds: {args.repeat} (best of each)  spark: {spark.version}")
        header = "| operation | parquet rows/s | " + " | ".join(f"{e} rows/s | {e} / parquet time" for e in engines)
        print(header + " |")
        print("|---|---:|" + "---:|---:|" * len(engines))
        for op, label in (("write", "write (overwrite, by date)"), ("read", "read (full scan)")):
            base = best[("parquet", op)]
            cells = [f"{n / best[(e, op)]:,.0f} | {best[(e, op)] / base:.2f}x" for e in engines]
            print(f"| {label} | {n / base:,.0f} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        spark.stop()


if __name__ == "__main__":
    main()
