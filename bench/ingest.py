"""Ingest throughput per format, end to end (parse + templates + Delta write), against the plain Spark job.

For each format it generates ``--lines`` lines split over ``--files`` files, plus small files of 40
lines, then, in one warm Spark session per master (``local[1]``, ``local[2]``: each its own process, so
each gets a fresh JVM) and a fresh lake per format:

1. ingests the first file (the miner's training window: parse, fit, match, write; not timed);
2. times ``loganomaly ingest`` (the default Python parsers, templates on as by default) of one small
   file after a warm-up (``--small-repeats`` of them, median) and of the remaining files (the big run,
   each time into a fresh copy of the lake holding the saved template state): the nightly path, with
   the saved state matched inside the parsing tasks (the driver path for small loads,
   ``ingest.local_max_bytes``, turned off where the tree has it, so both runs take the same path);
3. times the same small and big runs of the format's native Spark job (``NATIVE_JOBS``: what a Spark
   user would write instead, Spark's readers and SQL functions to Parquet, no Python UDF), checking
   after the timing that it wrote one row per non-header line, each with its ``ts`` parsed. The big
   runs go in ``--big-repeats`` turns (ingest, job, ingest, job, ...; median of each side): one big
   run each made the ratio swing by up to 1.6x between runs of the same code, as the first big run of
   a reader in a session pays the JIT compilation of its code and the load of a shared machine moves;
4. times ``spark.read.text(files).count()`` of the same small and big inputs (the raw read);
5. for the formats with a native ingest path (``json``: Zeek conn records with a nested ``id``
   object; ``zeekjson``: flat Zeek conn records), the same ingest runs with ``ingest.native`` on.

Each side's marginal lines/s = (lines_big - lines_small) / (t_big - t_small): the per-run fixed cost
(planning, code generation, commits, the ledger) measured and subtracted in the same session. It prints
ingest / job against the issue's targets (>= 1.0 for JSON and syslog, >= 0.8 for the other formats),
the template cache hit rate, the native jobs' row checks, and the speed-up from one core to two.
Nothing is collected to the driver except counts and the template training messages (streamed,
distinct).

``--sections large`` adds one large file (``--large-mb``, default 2048: the issue's 2 GB class) on
``local[1]`` and ``local[2]``, read in byte ranges (``--split-mb``) or whole, against the same
bytes in 8 files, and its first 1/16 and 1/4 for the cost per line at 1x / 4x / 16x (growth per
doubling); each run is a fresh process with the per-run fixed cost (a 40-line ingest) subtracted.
``--sections startup`` times fresh processes on a 40-line file: ``loganomaly ingest`` (both lake
engines, on the driver path and with ``ingest.local_max_bytes=0``, and without the JVM class
archive) against a bare ``spark.read.json(f).write.parquet(out)``, and that bare job given the
same class archive. Every section prints the
template cache hit rate of its ingests.

Usage:
    .venv/bin/python bench/ingest.py [--lines 1000000] [--files 8] [--formats json,zeek,...]
        [--masters local[1],local[2]] [--small-repeats 3] [--big-repeats 3] [--sections formats,large,startup]
        [--large-mb 2048] [--split-mb 128]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMATS = ("json", "zeekjson", "zeek", "syslog", "access", "loghub", "csv")
#: Formats with a native ingest path (loganomaly.ingest.native, off by default): also timed with it on.
NATIVE = ("json", "zeekjson")

HOSTS = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(400)]
T0 = 1709510400  # 2024-03-04T00:00:00Z


def _json(rng: random.Random, i: int) -> str:
    ts = T0 + i * 0.05
    rec = {
        "ts": round(ts, 6),
        "uid": f"C{rng.getrandbits(48):012x}",
        "id": {"orig_h": rng.choice(HOSTS), "orig_p": rng.randint(1024, 65535),
               "resp_h": rng.choice(HOSTS), "resp_p": rng.choice([53, 80, 443, 22, 8080])},
        "proto": rng.choice(["tcp", "udp"]),
        "service": rng.choice(["dns", "http", "ssl", "-"]),
        "duration": round(rng.expovariate(2.0), 6),
        "orig_bytes": rng.randint(0, 5000),
        "resp_bytes": rng.randint(0, 50000),
        "conn_state": rng.choice(["SF", "SF", "SF", "S0", "REJ"]),
        "orig_pkts": rng.randint(1, 40),
        "resp_pkts": rng.randint(0, 60),
    }
    return json.dumps(rec)


def _zeekjson(rng: random.Random, i: int) -> str:
    """A Zeek conn record as Zeek's JSON writer prints it: flat, dotted keys."""
    rec = json.loads(_json(rng, i))
    for key, value in rec.pop("id").items():
        rec[f"id.{key}"] = value
    return json.dumps(rec, separators=(",", ":"))


def _zeek_header() -> list[str]:
    return [
        "#separator \\x09",
        "#set_separator\t,",
        "#empty_field\t(empty)",
        "#unset_field\t-",
        "#path\tconn",
        "#open\t2024-03-04-00-00-00",
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\t"
        "orig_bytes\tresp_bytes\tconn_state\torig_pkts\tresp_pkts",
        "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring\tcount\tcount",
    ]


def _zeek(rng: random.Random, i: int) -> str:
    return "\t".join(
        str(v)
        for v in (
            f"{T0 + i * 0.05:.6f}", f"C{rng.getrandbits(48):012x}", rng.choice(HOSTS), rng.randint(1024, 65535),
            rng.choice(HOSTS), rng.choice([53, 80, 443]), rng.choice(["tcp", "udp"]), rng.choice(["dns", "-"]),
            f"{rng.expovariate(2.0):.6f}", rng.randint(0, 5000), rng.randint(0, 50000),
            rng.choice(["SF", "S0", "REJ"]), rng.randint(1, 40), rng.randint(0, 60),
        )
    )


_SYSLOG_MSGS = [
    "Accepted publickey for user{u} from {ip} port {p} ssh2",
    "Failed password for invalid user admin{u} from {ip} port {p} ssh2",
    "session opened for user user{u} by (uid=0)",
    "Connection closed by {ip} port {p} [preauth]",
    "kernel: eth0: link up, 1000 Mbps, full duplex",
    "CRON[{p}]: (root) CMD (run-parts /etc/cron.hourly)",
]


def _syslog(rng: random.Random, i: int) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(T0 + i // 20)) + f".{i % 20 * 50:03d}Z"
    msg = rng.choice(_SYSLOG_MSGS).format(u=rng.randint(1, 50), ip=rng.choice(HOSTS), p=rng.randint(1024, 65535))
    return f"<{rng.choice([38, 86, 30, 131])}>1 {ts} host-{rng.randint(1, 40):02d} sshd {rng.randint(100, 9999)} - - {msg}"


def _access(rng: random.Random, i: int) -> str:
    ts = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(T0 + i // 20))
    path = rng.choice(["/", "/index.html", "/api/v1/items/{}", "/login", "/static/app.js"]).format(rng.randint(1, 999))
    return (
        f'{rng.choice(HOSTS)} - - [{ts}] "{rng.choice(["GET", "GET", "POST"])} {path} HTTP/1.1" '
        f'{rng.choice([200, 200, 200, 304, 404, 500])} {rng.randint(100, 90000)} "-" "Mozilla/5.0 (X11; Linux x86_64)"'
    )


_HDFS_MSGS = [
    "dfs.DataNode$DataXceiver: Receiving block blk_{b} src: /{ip}:{p} dest: /{ip2}:50010",
    "dfs.DataNode$PacketResponder: PacketResponder {n} for block blk_{b} terminating",
    "dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: {ip}:50010 is added to blk_{b} size {s}",
    "dfs.DataNode$PacketResponder: Received block blk_{b} of size {s} from /{ip}",
    "dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: /user/root/rand/_temporary/part-{n}. blk_{b}",
]


def _loghub(rng: random.Random, i: int) -> str:
    secs = i // 20
    stamp = time.strftime("%y%m%d %H%M%S", time.gmtime(T0 + secs))
    msg = rng.choice(_HDFS_MSGS).format(
        b=rng.randint(-(2**62), 2**62), ip=rng.choice(HOSTS), ip2=rng.choice(HOSTS), p=rng.randint(1024, 65535),
        n=rng.randint(0, 2), s=rng.randint(1, 67108864),
    )
    return f"{stamp} {rng.randint(1, 300)} INFO {msg}"


def _csv(rng: random.Random, i: int) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + i))
    return f"{ts},host-{i % 50:02d},{rng.uniform(0, 100):.3f},{rng.uniform(0, 1e6):.1f},{rng.randint(0, 500)}"


GENERATORS: dict[str, tuple[str, Callable[[random.Random, int], str], Callable[[], list[str]]]] = {
    "json": (".jsonl", _json, list),
    "zeekjson": (".log", _zeekjson, list),
    "zeek": (".log", _zeek, _zeek_header),
    "syslog": (".log", _syslog, list),
    "access": (".log", _access, list),
    "loghub": (".log", _loghub, list),
    "csv": (".csv", _csv, lambda: ["timestamp,entity,cpu,bytes,connections"]),
}

#: Per-format ingest sources (what a profile would say), so no time goes to detection guesses.
SOURCE_OPTIONS: dict[str, dict[str, object]] = {
    "json": {"format": "json"},
    "zeekjson": {"format": "json"},
    "zeek": {"format": "zeek"},
    "syslog": {"format": "syslog"},
    "access": {"format": "access"},
    "loghub": {"format": "loghub", "pattern": "HDFS"},
    "csv": {"format": "csv"},
}


def generate(out: Path, fmt: str, lines: int, files: int) -> list[Path]:
    suffix, line, header = GENERATORS[fmt]
    rng = random.Random(7)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    per_file = lines // files
    for f in range(files):
        path = out / f"{fmt}-{f:02d}{suffix}"
        with path.open("w") as fh:
            head = header()
            fh.write("".join(h + "\n" for h in head))
            base = f * per_file
            fh.write("".join(line(rng, base + i) + "\n" for i in range(per_file - len(head))))
        paths.append(path)
    return paths


def count_lines(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with p.open("rb") as fh:
            total += sum(chunk.count(b"\n") for chunk in iter(functools.partial(fh.read, 1 << 20), b""))
    return total


#: Lines of each small file: the run whose time is subtracted from the big run's (the fixed cost of
#: one run in a warm session: planning, code generation, commits, the ledger).
SMALL_LINES = 40


def generate_small(out: Path, fmt: str, repeats: int) -> list[Path]:
    """``repeats`` files of SMALL_LINES lines each (headers included), content unlike the big files'
    (other seeds and line numbers), one per timed small run: the ledger skips a file it has loaded."""
    suffix, line, header = GENERATORS[fmt]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(repeats):
        rng = random.Random(1000 + k)
        head = header()
        base = 10_000_000 + k * SMALL_LINES
        path = out / f"small-{k}{suffix}"
        path.write_text("".join(h + "\n" for h in head)
                        + "".join(line(rng, base + i) + "\n" for i in range(SMALL_LINES - len(head))))
        paths.append(path)
    return paths


_SYSLOG_RE = r"^<(\d{1,3})>(\d{1,2}) (\S+) (\S+) (\S+) (\S+) (\S+) (-|(?:\[.*?\])+)(?: (.*))?$"
_ACCESS_RE = r'^(\S+) (\S+) (\S+) \[([^\]]+)\] "(\S+) (\S+) (\S+)" (\d{3}|-) (\d+|-)(?: "([^"]*)" "([^"]*)")?'
_HDFS_RE = r"^(\d{6}) (\d{6}) (\d+) ([A-Z]+) (\S+?): (.*)$"
#: Zeek ``#types`` -> Spark SQL types for the TSV job's schema (anything else is read as a string).
_ZEEK_TYPES = {"time": "double", "interval": "double", "double": "double", "count": "bigint", "int": "bigint",
               "port": "int", "bool": "boolean"}


def _regex_job(spark: Any, files: list[str], pattern: str, fields: dict[str, tuple[int, str]],
               ts: Callable[[Any], Any], extra: Callable[[Any], dict[str, Any]] | None = None) -> Any:
    """``spark.read.text`` + one ``regexp_extract`` per field (``fields``: name -> (group, type),
    numbers by ``try_cast``) + the ``ts`` column from the extracted strings."""
    from pyspark.sql import functions as F

    value = F.col("value")
    cols = {}
    for name, (group, kind) in fields.items():
        text = F.regexp_extract(value, pattern, group)
        cols[name] = text if kind == "string" else text.try_cast(kind)
    df = spark.read.text(files).select(*(c.alias(n) for n, c in cols.items()))
    more = {"ts": ts(F)} | (extra(F) if extra else {})
    return df.select("*", *(c.alias(n) for n, c in more.items()))


def _job_json(spark: Any, files: list[str]) -> Any:
    return spark.read.json(files)


def _job_syslog(spark: Any, files: list[str]) -> Any:
    fields = {"pri": (1, "int"), "version": (2, "int"), "ts_text": (3, "string"), "host": (4, "string"),
              "app": (5, "string"), "procid": (6, "string"), "msgid": (7, "string"), "sd": (8, "string"),
              "message": (9, "string")}
    df = _regex_job(spark, files, _SYSLOG_RE, fields, lambda F: F.try_to_timestamp(F.col("ts_text")),
                    lambda F: {"severity": F.col("pri") % 8, "facility": F.floor(F.col("pri") / 8)})
    return df.drop("ts_text")


def _job_access(spark: Any, files: list[str]) -> Any:
    fields = {"host": (1, "string"), "ident": (2, "string"), "user": (3, "string"), "time": (4, "string"),
              "method": (5, "string"), "path": (6, "string"), "protocol": (7, "string"), "status": (8, "int"),
              "size": (9, "bigint"), "referer": (10, "string"), "agent": (11, "string")}
    df = _regex_job(spark, files, _ACCESS_RE, fields,
                    lambda F: F.try_to_timestamp(F.col("time"), F.lit("dd/MMM/yyyy:HH:mm:ss Z")))
    return df.drop("time")


def _job_loghub(spark: Any, files: list[str]) -> Any:
    fields = {"date": (1, "string"), "time": (2, "string"), "pid": (3, "int"), "level": (4, "string"),
              "component": (5, "string"), "content": (6, "string")}
    df = _regex_job(
        spark, files, _HDFS_RE, fields,
        lambda F: F.try_to_timestamp(F.concat_ws(" ", F.col("date"), F.col("time")), F.lit("yyMMdd HHmmss")),
        lambda F: {"block": F.regexp_extract(F.col("content"), r"blk_-?\d+", 0)},
    )
    return df.drop("date", "time")


def _job_zeek(spark: Any, files: list[str]) -> Any:
    from pyspark.sql import functions as F

    # the schema from the first file's #fields / #types, as a Spark user of Zeek logs would build it
    head: dict[str, list[str]] = {}
    with open(files[0]) as fh:
        for text in fh:
            if not text.startswith("#"):
                break
            key, _, rest = text.rstrip("\n").partition("\t")
            head[key] = rest.split("\t")
    names = [n.replace(".", "_") for n in head["#fields"]]
    schema = ", ".join(f"{n} {_ZEEK_TYPES.get(t, 'string')}" for n, t in zip(names, head["#types"], strict=True))
    df = spark.read.csv(files, sep="\t", comment="#", nullValue="-", header=False, schema=schema)
    return df.withColumn("ts", F.timestamp_seconds(F.col("ts")))


def _job_csv(spark: Any, files: list[str]) -> Any:
    from pyspark.sql import functions as F

    df = spark.read.csv(files, header=True, schema="timestamp STRING, entity STRING, cpu DOUBLE, bytes DOUBLE, "
                        "connections INT")
    return df.select(F.try_to_timestamp(F.col("timestamp")).alias("ts"), "entity", "cpu", "bytes", "connections")


#: The plain Spark job a Spark user would write instead of ``loganomaly ingest``, per format: Spark's own
#: readers and SQL functions (no Python UDF), written to Parquet. Every job's output has a ``ts`` column;
#: a line it cannot parse still gives a row (no reason, nothing quarantined): the JSON reader's PERMISSIVE
#: mode a row of nulls (and ``_corrupt_record`` when inference saw one), ``regexp_extract`` empty strings
#: and ``try_cast``/``try_to_timestamp`` nulls, the CSV reader nulls for missing or malformed fields;
#: only ``#`` lines (Zeek, ``comment``) and each CSV file's header are dropped. The bench checks each
#: job's row count (lines minus header lines) and that no row has a null ``ts``.
NATIVE_JOBS: dict[str, tuple[str, Callable[[Any, list[str]], Any]]] = {
    "json": ("spark.read.json(files) (schema inferred, one pass more)", _job_json),
    "zeekjson": ("spark.read.json(files) (schema inferred, one pass more)", _job_json),
    "zeek": ("spark.read.csv(sep=tab, comment=#, nullValue=-, schema from #fields/#types), "
             "timestamp_seconds(ts)", _job_zeek),
    "syslog": ("spark.read.text + 9 regexp_extract (RFC 5424) + try_cast + try_to_timestamp", _job_syslog),
    "access": ("spark.read.text + 11 regexp_extract (combined) + try_cast + "
               "try_to_timestamp('dd/MMM/yyyy:HH:mm:ss Z')", _job_access),
    "loghub": ("spark.read.text + 6 regexp_extract (HDFS pattern) + block id + "
               "try_to_timestamp('yyMMdd HHmmss')", _job_loghub),
    "csv": ("spark.read.csv(header, schema given) + try_to_timestamp", _job_csv),
}
#: The issue's targets: marginal ingest lines/s >= this fraction of the native Spark job's.
TARGETS = {"json": 1.0, "zeekjson": 1.0, "syslog": 1.0}
DEFAULT_TARGET = 0.8


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _ingest_runs(spark: Any, cfg: Any, lake_dir: Path, fmt: str, first: str, small: list[str], rest: list[str],
                 lines: int) -> tuple[dict[str, float], Callable[[], tuple[float, Any]]]:
    """Fit the miner on ``first`` (not timed), ingest ``small[0]`` (a warm-up, not timed), then time each
    other ``small`` file's ingest (median), checking lines = events + quarantined. Returns those figures
    and a function that times one ingest of ``rest`` on a fresh copy of the lake as it stands then
    (the saved template state in it, ``rest`` not yet loaded), so that the big run can be repeated."""
    from loganomaly.ingest import stage as ingest
    from loganomaly.lake.tables import Lake

    def timed(lake: Any, files: list[str], expect: int) -> tuple[float, Any]:
        start = time.perf_counter()
        summary = ingest.run(spark, cfg, files, lake=lake)
        took = time.perf_counter() - start
        if summary.events + summary.quarantined != expect:
            raise SystemExit(f"{fmt}: {expect} lines but {summary.events} events + {summary.quarantined} quarantined")
        return took, summary

    lake = Lake(spark, lake_dir, engine="deltars")
    ingest.run(spark, cfg, [first], lake=lake)
    timed(lake, [small[0]], SMALL_LINES)  # warm-up, not counted
    t_small = _median([timed(lake, [f], SMALL_LINES)[0] for f in small[1:]])
    copies = iter(range(1, 1000))

    def big() -> tuple[float, Any]:
        copy = lake_dir.with_name(f"{lake_dir.name}-big-{next(copies)}")
        shutil.copytree(lake_dir, copy)
        try:
            return timed(Lake(spark, copy, engine="deltars"), rest, lines)
        finally:
            shutil.rmtree(copy, ignore_errors=True)

    return {"small_s": t_small}, big


def _summarised(run: Callable[[], tuple[float, Any]], summaries: list[Any]) -> float:
    """``run()``'s time; its ingest summary appended to ``summaries``."""
    took, summary = run()
    summaries.append(summary)
    return took


def _big_runs(r: dict[str, float], repeats: int, sides: dict[str, Callable[[], float]]) -> None:
    """Time the big run of each side ``repeats`` times, the sides taking turns (ingest, job, ingest,
    job, ...) so that a change of load or of the JVM's state (JIT compilation of a reader's code in its
    first big run) falls on both; ``r[side_big_s]`` is the median, ``r[side_big_runs]`` every run."""
    times: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(repeats):
        for side, run in sides.items():
            times[side].append(run())
    for side, ts in times.items():
        r[f"{side}_big_s"] = _median(ts)
        r[f"{side}_big_runs"] = ts  # type: ignore[assignment]


def _timed_job(spark: Any, fmt: str, files: list[str], out: Path) -> float:
    start = time.perf_counter()
    NATIVE_JOBS[fmt][1](spark, files).write.mode("overwrite").parquet(str(out))
    return time.perf_counter() - start


def _timed_raw(spark: Any, files: list[str]) -> float:
    start = time.perf_counter()
    spark.read.text(files).count()
    return time.perf_counter() - start


def run_master(master: str, data: Path, formats: list[str], repeats: int,
               with_native: bool = True, big_repeats: int = 3) -> dict[str, dict[str, float]]:
    """One process, one warm Spark session: for every format, fit the miner on the first file (not
    timed), then time ``repeats`` small runs (median) and ``big_repeats`` big runs (files 2..n, the two
    sides taking turns; median) of ``loganomaly ingest`` (the default Python path) and of the format's
    native Spark job, and a raw text count."""
    from pyspark.sql import functions as F

    from loganomaly.config import Config, SourceConfig
    from loganomaly.runtime.spark import get_spark

    cfg = Config()
    cfg.spark.master = master
    cfg.spark.shuffle_partitions = 4
    cfg.spark.log_level = "ERROR"
    cfg.spark.driver_memory = "3g"
    # A driver path for small loads (ingest.local_max_bytes, in trees that have it) would take the
    # 40-line runs and not the big one, and the subtracted fixed cost would be another path's: off, so
    # both runs go through the Spark tasks.
    driver_path = hasattr(cfg.ingest, "local_max_bytes")
    if driver_path:
        cfg.ingest.local_max_bytes = 0
    spark = get_spark(cfg.spark)
    results: dict[str, dict[str, float]] = {}
    for fmt in formats:
        paths = sorted((data / fmt).iterdir())
        small = [str(p) for p in sorted((data / f"{fmt}-small").iterdir())][: repeats + 1]  # [0]: warm-up
        first, rest = str(paths[0]), [str(p) for p in paths[1:]]
        lines = count_lines(paths[1:])
        cfg.ingest.sources = [
            SourceConfig(name=fmt, paths=[f"*/{fmt}/*", f"*/{fmt}-small/*"], options=SOURCE_OPTIONS[fmt])
        ]
        cfg.templates.preset = "HDFS" if fmt == "loghub" else ""
        root = Path(tempfile.mkdtemp(prefix=f"bench-ingest-{fmt}-"))
        try:
            cfg.ingest.native = False  # the default: the Python parsers
            r: dict[str, float] = {"lines": lines, "small_lines": SMALL_LINES,
                                   "templates": 1.0 if cfg.templates.enabled else 0.0,
                                   "driver_path_off": 1.0 if driver_path else 0.0, "big_repeats": big_repeats}
            runs, ingest_big = _ingest_runs(spark, cfg, root / "lake", fmt, first, small, rest, lines)
            r |= {f"ingest_{k}": v for k, v in runs.items()}
            _timed_job(spark, fmt, small[:1], root / "warm-up.parquet")
            r["job_small_s"] = _median([_timed_job(spark, fmt, [f], root / f"small-{k}.parquet")
                                        for k, f in enumerate(small[1:])])
            summaries: list[Any] = []
            _big_runs(r, big_repeats, {
                "ingest": functools.partial(_summarised, ingest_big, summaries),
                "job": functools.partial(_timed_job, spark, fmt, rest, root / "big.parquet"),
            })
            r["ingest_quarantined"] = summaries[-1].quarantined
            r["ingest_hit_rate"] = summaries[-1].template_cache_hit_rate or 0.0
            _timed_raw(spark, small[:1])
            r["raw_small_s"] = _median([_timed_raw(spark, [f]) for f in small[1:]])
            r["raw_big_s"] = _timed_raw(spark, rest)
            # the job's output, checked after the timing: one row per non-header line, every ts parsed
            out = spark.read.parquet(str(root / "big.parquet"))
            r["job_rows"] = out.count()
            r["job_null_ts"] = out.where(F.col("ts").isNull()).count()
            r["job_expected_rows"] = lines - len(rest) * len(GENERATORS[fmt][2]())
            if r["job_rows"] != r["job_expected_rows"] or r["job_null_ts"]:
                raise SystemExit(f"{fmt}: native job wrote {r['job_rows']} rows ({r['job_null_ts']} without ts), "
                                 f"expected {r['job_expected_rows']}")
            if fmt in NATIVE and with_native:  # ingest.native (JSON in the JVM), off by default: the same runs in a lake of its own
                cfg.ingest.native = True
                runs, native_big = _ingest_runs(spark, cfg, root / "lake-native", fmt, first, small, rest, lines)
                r |= {f"native_{k}": v for k, v in runs.items()}
                _big_runs(r, 1, {"native": functools.partial(_summarised, native_big, [])})
                cfg.ingest.native = False
            results[fmt] = r
        finally:
            shutil.rmtree(root, ignore_errors=True)
    spark.stop()
    return results


def _marginal(r: dict[str, float], prefix: str, big_s: float | None = None) -> float | None:
    """(lines_big - lines_small) / (t_big - t_small); None when the big run was not slower.
    ``big_s``: one big run's time instead of the median."""
    dt = (r[f"{prefix}_big_s"] if big_s is None else big_s) - r[f"{prefix}_small_s"]
    return (r["lines"] - r["small_lines"]) / dt if dt > 0 else None


def _turn_ratios(r: dict[str, Any]) -> str:
    """ingest / job of each turn of the big runs (ingest run k against job run k), the spread the
    median hides."""
    cells = []
    for a, b in zip(r.get("ingest_big_runs", []), r.get("job_big_runs", []), strict=True):
        ing, job = _marginal(r, "ingest", a), _marginal(r, "job", b)
        cells.append("n/a" if not ing or not job else f"{ing / job:.2f}")
    return " ".join(cells) or "-"


def _rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def report_formats(runs: dict[str, dict[str, dict[str, float]]], formats: list[str], lines: int, files: int,
                   repeats: int) -> None:
    masters = list(runs)
    print(f"lines per format: {lines:,} in {files} files; the first fits the miner (not timed); big run = files "
          f"2..{files}, {int(runs[masters[0]][formats[0]].get('big_repeats', 1))} turns of ingest then job, median; "
          f"small run = one {SMALL_LINES}-line file, median of {repeats}; all runs of a master in one "
          "warm session; marginal lines/s = (lines_big - lines_small) / (t_big - t_small)"
          + ("; ingest's driver path for small loads off (ingest.local_max_bytes=0): every run through Spark"
             if runs[masters[0]][formats[0]].get("driver_path_off") else ""))
    print("| format | master | templates (cache hit rate) | ingest marginal lines/s | native Spark job marginal "
          "lines/s | ingest / job | per turn | target | met | ingest s small / big | job s small / big | raw read s "
          "small / big | quarantined |")
    print("|---|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|")
    for fmt in formats:
        for master in masters:
            r = runs[master][fmt]
            ing, job = (_marginal(r, p) for p in ("ingest", "job"))
            target = TARGETS.get(fmt, DEFAULT_TARGET)
            ratio = ing / job if ing and job else None
            met = "n/a" if ratio is None else ("met" if ratio >= target else "not met")
            templates = f"on ({r['ingest_hit_rate']:.3f})" if r["templates"] else "off"
            print(f"| {fmt} | {master} | {templates} | {_rate(ing)} | {_rate(job)} | "
                  f"{'n/a' if ratio is None else f'{ratio:.2f}'} | {_turn_ratios(r)} | >= {target:.1f} | {met} | {r['ingest_small_s']:.2f} "
                  f"/ {r['ingest_big_s']:.2f} | {r['job_small_s']:.2f} / {r['job_big_s']:.2f} | {r['raw_small_s']:.2f} / "
                  f"{r['raw_big_s']:.2f} | {int(r['ingest_quarantined'])} |")
    print()
    print("native Spark jobs (each -> Parquet; rows checked after timing: lines minus header lines, none without ts):")
    first = runs[masters[0]]
    for fmt in formats:
        r = first[fmt]
        print(f"- {fmt}: {NATIVE_JOBS[fmt][0]}; {int(r['job_rows']):,} rows of {int(r['lines']):,} lines, "
              f"{int(r['job_null_ts'])} without ts")
    native = [f for f in formats if f in NATIVE and "native_big_s" in runs[masters[0]][f]]
    if native:
        print()
        print("| format | master | ingest.native marginal lines/s | ingest (Python) marginal lines/s | Spark job "
              "marginal lines/s | ingest.native / job | ingest.native small s |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for fmt in native:
            for master in masters:
                r = runs[master][fmt]
                nat, py, job = (_marginal(r, p) for p in ("native", "ingest", "job"))
                share = "n/a" if not nat or not job else f"{nat / job:.2f}"
                print(f"| {fmt} | {master} | {_rate(nat)} | {_rate(py)} | {_rate(job)} | {share} "
                      f"| {r['native_small_s']:.2f} |")
    if len(masters) == 2:
        print()
        print(f"| format | speed-up {masters[0]} -> {masters[1]}, ingest marginal | same, native Spark job |")
        print("|---|---:|---:|")
        for fmt in formats:
            a, b = runs[masters[0]][fmt], runs[masters[1]][fmt]
            cells = []
            for p in ("ingest", "job"):
                one, two = _marginal(a, p), _marginal(b, p)
                cells.append("n/a" if not one or not two else f"{two / one:.2f}x")
            print(f"| {fmt} | {cells[0]} | {cells[1]} |")


# ------------------------------------------------------------------ one large file, cost growth, start-up


def _write_lines(path: Path, line: Callable[[random.Random, int], str], rng: random.Random, first: int,
                 stop_bytes: int | None = None, count: int | None = None) -> int:
    """Lines ``first, first+1, ...`` into ``path`` until ``count`` lines or ``stop_bytes`` bytes; returns the next index."""
    i = first
    written = 0
    with path.open("w") as fh:
        while (count is None or i - first < count) and (stop_bytes is None or written < stop_bytes):
            n = 20_000 if count is None else min(20_000, first + count - i)
            block = "".join(line(rng, j) + "\n" for j in range(i, i + n))
            fh.write(block)
            written += len(block.encode())
            i += n
    return i


def _cut_copy(src: Path, dst: Path, size: int) -> None:
    """The first ``size`` bytes of ``src`` (moved on to the next line end) into ``dst``."""
    with src.open("rb") as fh, dst.open("wb") as out:
        out.write(fh.read(size) + fh.readline())


def generate_large(out: Path, fmt: str, mb: int) -> None:
    """``big``: one file of about ``mb`` MiB; ``x1``/``x4``: its first 1/16 and 4/16 (``big`` is 16x);
    ``eight/``: the same bytes as ``big`` in 8 files cut at line ends; ``train``: 20k lines the miner
    is fitted on first; ``tiny``, ``tiny2``: 40 lines each, a warm-up and the per-run fixed cost."""
    suffix, line, _ = GENERATORS[fmt]
    rng = random.Random(11)
    out.mkdir(parents=True, exist_ok=True)
    nxt = _write_lines(out / f"train{suffix}", line, rng, 0, count=20_000)
    nxt = _write_lines(out / f"tiny{suffix}", line, rng, nxt, count=40)
    nxt = _write_lines(out / f"tiny2{suffix}", line, rng, nxt, count=40)
    big = out / f"big{suffix}"
    _write_lines(big, line, rng, nxt + 1000, stop_bytes=mb << 20)
    size = big.stat().st_size
    _cut_copy(big, out / f"x1{suffix}", size // 16)
    _cut_copy(big, out / f"x4{suffix}", size // 4)
    (out / "eight").mkdir(exist_ok=True)
    with big.open("rb") as fh:
        for k in range(8):
            with (out / "eight" / f"part-{k}{suffix}").open("wb") as part:
                part.write(fh.read(size // 8) + fh.readline() if k < 7 else fh.read())


#: Runs of the large-file bench: (master, label, input under the data folder, split the big file). Each
#: runs in a fresh process: a Python worker keeps its template matcher and caches between jobs, and
#: these inputs share their bytes, so a run after another would find its messages cached.
LARGE_RUNS = [
    ("local[1]", "one file", "big", True),
    ("local[2]", "one file", "big", True),
    ("local[2]", "one file, not split", "big", False),
    ("local[2]", "8 files", "eight", True),
    ("local[2]", "1x", "x1", True),
    ("local[2]", "4x", "x4", True),
]


def run_large(run: int, data: Path, fmt: str, split_mb: int) -> dict[str, dict[str, float]]:
    """One process, one run of LARGE_RUNS: fit the miner on ``train``, ingest ``tiny`` (warm-up), time
    ``tiny2`` (the fixed cost of a run), then time the run's input."""
    from loganomaly.config import Config, SourceConfig
    from loganomaly.ingest import stage as ingest
    from loganomaly.ingest.formats import registered_formats
    from loganomaly.lake.tables import Lake
    from loganomaly.runtime.spark import get_spark

    master, label, name, split = LARGE_RUNS[run]
    suffix = GENERATORS[fmt][0]
    cfg = Config()
    cfg.spark.master = master
    cfg.spark.shuffle_partitions = 4
    cfg.spark.log_level = "ERROR"
    cfg.spark.driver_memory = "3g"
    cfg.ingest.sources = [SourceConfig(name=fmt, paths=["*"], options=SOURCE_OPTIONS[fmt])]
    cfg.templates.preset = "HDFS" if fmt == "loghub" else ""
    cfg.ingest.split_bytes = split_mb << 20 if split else 1 << 62
    if hasattr(cfg.ingest, "local_max_bytes"):  # the 40-line fixed-cost run goes through Spark too
        cfg.ingest.local_max_bytes = 0
    spark = get_spark(cfg.spark)
    out: dict[str, dict[str, float]] = {}
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-large-"))
    try:
        lake = Lake(spark, root / "lake", engine="deltars")
        ingest.run(spark, cfg, [str(data / f"train{suffix}")], lake=lake)
        ingest.run(spark, cfg, [str(data / f"tiny{suffix}")], lake=lake)
        start = time.perf_counter()
        ingest.run(spark, cfg, [str(data / f"tiny2{suffix}")], lake=lake)
        fixed = time.perf_counter() - start
        path = data / (name if name == "eight" else f"{name}{suffix}")
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        lines = count_lines(files)
        start = time.perf_counter()
        summary = ingest.run(spark, cfg, [str(path)], lake=lake)
        wall = time.perf_counter() - start
        if summary.events + summary.quarantined != lines:
            raise SystemExit(f"{label}: {lines} lines but {summary.events} events + {summary.quarantined} quarantined")
        out["run"] = {"s": wall, "fixed": fixed, "lines": lines, "bytes": sum(p.stat().st_size for p in files),
                      "tasks": summary.split_tasks or len(files), "hit_rate": summary.template_cache_hit_rate or 0.0}
        if run == 1:  # first line numbers of the ranges: a Spark job, or the driver alone
            size = path.stat().st_size
            formats = registered_formats()
            for where, session in (("spark", spark), ("driver", None)):
                start = time.perf_counter()
                ingest.plan_tasks(session, [(str(path), size)], 1, split_mb << 20,
                                  lambda p: ingest.splittable(p, None, formats), driver_count_bytes=0)
                out[f"count_{where}"] = {"s": time.perf_counter() - start}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    spark.stop()
    return out


#: The start-up runs: name -> extra ``--set`` overrides of ``loganomaly ingest`` (None: the bare job).
#: ``*_spark`` turn the driver path off (``ingest.local_max_bytes=0``): the Spark path's start-up in
#: the same run, what the driver path is measured against.
#: ``*_no_archive`` start the JVM without the class archive (``spark.class_archive=false``), and
#: ``bare_archive`` is the bare job given the same archive: what the archive alone is worth to each.
STARTUP_RUNS: dict[str, list[str] | None] = {
    "ingest": [],
    "ingest_deltars": ["lake.engine=deltars"],
    "ingest_spark": ["ingest.local_max_bytes=0"],
    "ingest_deltars_spark": ["lake.engine=deltars", "ingest.local_max_bytes=0"],
    "ingest_no_archive": ["spark.class_archive=false"],
    "ingest_deltars_no_archive": ["lake.engine=deltars", "spark.class_archive=false"],
    "bare": None,
    "bare_archive": None,
}


def archive_options() -> str:
    """The JVM options a default local session maps the class archive with ("" when none is built)."""
    from loganomaly.config import SparkConfig
    from loganomaly.runtime import class_archive
    from loganomaly.runtime.java import ensure_java
    from loganomaly.runtime.spark import archive_key, local_session_conf

    ensure_java()
    archive = class_archive.usable(archive_key(local_session_conf(SparkConfig())))
    return " ".join(class_archive.use_options(archive)) if archive is not None else ""


def time_startup(data: Path, repeats: int) -> dict[str, list[float]]:
    """Wall time of fresh processes on a 40-line JSON file: ``loganomaly ingest`` (conf/default.yaml,
    local[2], a new lake each time; each engine, on the driver path and with it off) and a bare
    ``spark.read.json(f).write.parquet(out)`` job. The runs of one repeat go in turn, so a change of
    load on the machine touches all of them alike."""
    tiny = data / "tiny.jsonl"
    tiny.write_text("".join(_json(random.Random(i), i) + "\n" for i in range(40)))
    cli = Path(sys.executable).parent / "loganomaly"
    repo = Path(__file__).resolve().parent.parent
    bare = ("import sys\nfrom pyspark.sql import SparkSession\n"
            "b = SparkSession.builder.master('local[2]')\n"
            "b = b.config('spark.driver.extraJavaOptions', sys.argv[3]) if sys.argv[3] else b\n"
            "s = b.getOrCreate()\n"
            "s.read.json(sys.argv[1]).write.parquet(sys.argv[2])\ns.stop()\n")
    archive = archive_options()
    times: dict[str, list[float]] = {name: [] for name in STARTUP_RUNS if archive or "archive" not in name}
    for _k in range(repeats):
        work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
        try:
            for name, overrides in STARTUP_RUNS.items():
                if name not in times:
                    continue
                if overrides is None:
                    cmd = [sys.executable, "-c", bare, str(tiny), str(work / f"{name}.parquet"),
                           archive if name == "bare_archive" else ""]
                else:
                    cmd = [str(cli), "ingest", "--lake", str(work / f"lake-{name}"), "--input", str(tiny),
                           "--set", "spark.master=local[2]", "--log-level", "WARNING"]
                    for override in overrides:
                        cmd += ["--set", override]
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, cwd=repo)
                times[name].append(time.perf_counter() - start)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return times


def report_large(fmt: str, split_mb: int, results: list[dict[str, dict[str, float]]]) -> None:
    runs = {(m, label): r["run"] for (m, label, _, _), r in zip(LARGE_RUNS, results, strict=True)}
    big = runs[("local[2]", "one file")]
    print(f"one large {fmt} file: {big['bytes'] / 2**20:,.0f} MiB, {int(big['lines']):,} lines, ingest.split_bytes "
          f"{split_mb} MiB; each run a fresh process, the miner fitted first on 20k lines; marginal = wall minus "
          "the fixed cost of a 40-line ingest in the same session")
    print("| run | master | tasks | wall s | fixed s | marginal lines/s | template cache hit rate |")
    print("|---|---|---:|---:|---:|---:|---:|")
    marginal: dict[tuple[str, str], float] = {}
    for (master, label), r in runs.items():
        marginal[(master, label)] = m = max(r["s"] - r["fixed"], 1e-3)
        print(f"| {label} | {master} | {int(r['tasks'])} | {r['s']:.1f} | {r['fixed']:.1f} | {r['lines'] / m:,.0f} "
              f"| {r['hit_rate']:.3f} |")
    one = marginal[("local[2]", "one file")]
    print(f"one file, speed-up local[1] -> local[2]: {marginal[('local[1]', 'one file')] / one:.2f}x (target >= 1.8x); "
          f"not split / split on local[2]: {marginal[('local[2]', 'one file, not split')] / one:.2f}x; "
          f"one file / 8 files of the same bytes: {one / marginal[('local[2]', '8 files')]:.2f}")
    per_line = {k: marginal[("local[2]", k)] / runs[("local[2]", k)]["lines"] for k in ("1x", "4x", "one file")}
    growth = (per_line["one file"] / per_line["1x"]) ** (1 / 4)
    print("cost per line at 1x / 4x / 16x (local[2], marginal): "
          + " / ".join(f"{per_line[k] * 1e6:.1f} us" for k in ("1x", "4x", "one file"))
          + f"; growth per doubling 1x -> 16x: {growth:.3f}x (target <= 1.1x)")
    counts = results[1]
    print(f"first line numbers of the {int(big['tasks'])} ranges (newline count): Spark job "
          f"{counts['count_spark']['s']:.2f} s, driver alone {counts['count_driver']['s']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines per format")
    parser.add_argument("--files", type=int, default=8, help="files per format (the first trains the miner)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--masters", default="local[1],local[2]")
    parser.add_argument("--data", help="reuse generated data in this folder")
    parser.add_argument("--sections", default="formats,large,startup",
                        help="formats: lines/s per format; large: one large file (splits, cores, 8 files, "
                             "1x/4x/16x); startup: fresh-process start-up against a bare Spark job")
    parser.add_argument("--large-mb", type=int, default=2048, help="size of the large file in MiB")
    parser.add_argument("--large-format", default="loghub", choices=sorted(GENERATORS))
    parser.add_argument("--split-mb", type=int, default=128, help="ingest.split_bytes of the large-file runs, in MiB")
    parser.add_argument("--small-repeats", type=int, default=3,
                        help="small runs per format and side, the median is the fixed cost subtracted")
    parser.add_argument("--ingest-native", action=argparse.BooleanOptionalAction, default=True,
                        help="formats section: also time ingest with ingest.native on (json, zeekjson)")
    parser.add_argument("--big-repeats", type=int, default=3,
                        help="big runs per side, ingest and job taking turns (the median is kept)")
    parser.add_argument("--startup-repeats", type=int, default=3, help="fresh-process pairs (the median is kept)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-large", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    if args.worker:
        print(json.dumps(run_master(args.worker, Path(args.data), formats, args.small_repeats, args.ingest_native,
                                    args.big_repeats)))
        return
    if args.worker_large is not None:
        print(json.dumps(run_large(args.worker_large, Path(args.data), args.large_format, args.split_mb)))
        return
    sections = set(args.sections.split(","))

    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="bench-ingest-data-"))
    try:
        if "large" in sections:
            large = data / f"large-{args.large_format}-{args.large_mb}"
            if not (large / "eight").is_dir():
                start = time.perf_counter()
                generate_large(large, args.large_format, args.large_mb)
                print(f"(generated the large-file data in {time.perf_counter() - start:.0f} s)", file=sys.stderr)
            large_runs = []
            for run in range(len(LARGE_RUNS)):
                out = subprocess.run(
                    [sys.executable, __file__, "--worker-large", str(run), "--data", str(large),
                     "--large-format", args.large_format, "--split-mb", str(args.split_mb)],
                    check=True, capture_output=True, text=True,
                )
                large_runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            report_large(args.large_format, args.split_mb, large_runs)
            print()
        if "startup" in sections:
            load_before = os.getloadavg()[0]
            started = time_startup(data, args.startup_repeats)
            times = {name: sorted(ts)[len(ts) // 2] for name, ts in started.items()}
            bare_s = times["bare"]
            print(f"start-up, fresh processes on a 40-line JSON file (median of {args.startup_repeats}; "
                  f"bare spark.read.json -> parquet {bare_s:.1f} s; 1-min load average {load_before:.1f} "
                  f"before, {os.getloadavg()[0]:.1f} after):")
            archived = "bare_archive" in times
            print("| engine | driver path s | vs bare (target <= 1.5) | Spark path (local_max_bytes=0) s | vs bare |"
                  + (" driver path, no class archive s | vs bare | driver path / bare job, both with the archive |"
                     if archived else ""))
            print("|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if archived else ""))
            for label, key in (("delta-spark (conf/default.yaml, auto)", "ingest"), ("deltars", "ingest_deltars")):
                row = (f"| {label} | {times[key]:.1f} | {times[key] / bare_s:.2f} | {times[key + '_spark']:.1f} "
                       f"| {times[key + '_spark'] / bare_s:.2f} |")
                if archived:
                    row += (f" {times[key + '_no_archive']:.1f} | {times[key + '_no_archive'] / bare_s:.2f} "
                            f"| {times[key] / times['bare_archive']:.2f} |")
                print(row)
            if archived:
                print(f"bare job with the class archive: {times['bare_archive']:.1f} s")
            else:
                print("no class archive built (loganomaly class-archive): the sessions started without one")
            # Each repeat's runs went in turn: under a changing load, compare within a repeat.
            for k in range(args.startup_repeats):
                print(f"repeat {k + 1}: " + ", ".join(f"{name} {ts[k]:.1f} s" for name, ts in started.items()))
            print()
        if "formats" not in sections:
            return
        for fmt in formats:
            if not (data / fmt).is_dir():
                generate(data / fmt, fmt, args.lines, args.files)
            if len(list((data / f"{fmt}-small").glob("small-*"))) < args.small_repeats + 1:
                generate_small(data / f"{fmt}-small", fmt, args.small_repeats + 1)
        runs: dict[str, dict[str, dict[str, float]]] = {}
        for master in args.masters.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", master, "--data", str(data), "--formats", ",".join(formats),
                 "--small-repeats", str(args.small_repeats), "--big-repeats", str(args.big_repeats)]
                + ([] if args.ingest_native else ["--no-ingest-native"]),
                check=True, capture_output=True, text=True,
            )
            runs[master] = json.loads(out.stdout.strip().splitlines()[-1])
        report_formats(runs, formats, args.lines, args.files, args.small_repeats)
    finally:
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
