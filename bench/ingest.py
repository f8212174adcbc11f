"""Ingest throughput per format, end to end (parse + templates + Delta write), against raw text reads.

For each format it generates ``--lines`` lines split over ``--files`` files, then, in a fresh lake
per format and master:

1. ingests the first file (the miner's training window: parse, fit, match, write);
2. times ``loganomaly ingest`` of the remaining files: the nightly path, with the saved state
   matched inside the parsing tasks;
3. times ``spark.read.text(files).count()`` of the same files in the same Spark session;
4. for the formats with a native path (``json``: Zeek conn records with a nested ``id`` object;
   ``zeekjson``: flat Zeek conn records; both parsed in the JVM by ``from_json``), times ingest again with
   ``ingest.native`` off and the plain ``spark.read.json(files).write.parquet(out)`` job.
   These runs follow a first one in the same session: JVM and session start-up are not in them,
   the per-job planning and code generation are.

Each master (``local[1]``, ``local[2]``) runs in its own process so each gets a fresh JVM. It prints
lines/s per core for ingest and for the raw read, their ratio, and the speed-up from one core to
two. Nothing is collected to the driver except counts and the template training messages
(streamed, distinct).

``--sections large`` adds one large file (``--large-mb``, default 2048: the issue's 2 GB class) on
``local[1]`` and ``local[2]``, read in byte ranges (``--split-mb``) or whole, against the same
bytes in 8 files, and its first 1/16 and 1/4 for the cost per line at 1x / 4x / 16x (growth per
doubling); each run is a fresh process with the per-run fixed cost (a 40-line ingest) subtracted.
``--sections startup`` times fresh processes on a 40-line file: ``loganomaly ingest`` (both lake
engines, on the driver path and with ``ingest.local_max_bytes=0``) against a bare
``spark.read.json(f).write.parquet(out)``. Every section prints the
template cache hit rate of its ingests.

Usage:
    .venv/bin/python bench/ingest.py [--lines 1000000] [--files 8] [--formats json,zeek,...]
        [--sections formats,large,startup] [--large-mb 2048] [--split-mb 128]
"""

from __future__ import annotations

import argparse
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

FORMATS = ("json", "zeekjson", "zeek", "syslog", "access", "loghub", "csv")
#: Formats with a native ingest path (loganomaly.ingest.native): also timed with it off, and against
#: the plain Spark job a user would write instead (``spark.read.json(files).write.parquet(out)``).
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
            total += sum(chunk.count(b"\n") for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""))
    return total


def run_master(master: str, data: Path, formats: list[str]) -> dict[str, dict[str, float]]:
    """One process, one Spark session: time ingest and raw reads for every format."""
    from loganomaly.config import Config, SourceConfig
    from loganomaly.ingest import stage as ingest
    from loganomaly.lake.tables import Lake
    from loganomaly.runtime.spark import get_spark

    cfg = Config()
    cfg.spark.master = master
    cfg.spark.shuffle_partitions = 4
    cfg.spark.log_level = "ERROR"
    cfg.spark.driver_memory = "3g"
    spark = get_spark(cfg.spark)
    results: dict[str, dict[str, float]] = {}
    for fmt in formats:
        paths = sorted((data / fmt).iterdir())
        cfg.ingest.sources = [SourceConfig(name=fmt, paths=[f"*/{fmt}/*"], options=SOURCE_OPTIONS[fmt])]
        if fmt == "loghub":
            cfg.templates.preset = "HDFS"
        else:
            cfg.templates.preset = ""
        cfg.ingest.native = fmt in NATIVE  # off by default in the config; this bench measures it
        root = Path(tempfile.mkdtemp(prefix=f"bench-ingest-{fmt}-"))
        try:
            lake = Lake(spark, root / "lake", engine="deltars")
            ingest.run(spark, cfg, [str(paths[0])], lake=lake)  # fit the miner on the first file
            rest = [str(p) for p in paths[1:]]
            lines = count_lines(paths[1:])
            start = time.perf_counter()
            summary = ingest.run(spark, cfg, rest, lake=lake)
            t_ingest = time.perf_counter() - start
            if summary.events + summary.quarantined != lines:
                raise SystemExit(f"{fmt}: {lines} lines but {summary.events} events + {summary.quarantined} quarantined")
            start = time.perf_counter()
            spark.read.text(rest).count()
            t_raw = time.perf_counter() - start
            results[fmt] = {"lines": lines, "ingest_s": t_ingest, "raw_s": t_raw,
                            "events": summary.events, "quarantined": summary.quarantined,
                            "hit_rate": summary.template_cache_hit_rate or 0.0}
            if fmt in NATIVE:
                # the same files with the native path off, in a lake of their own (miner fitted first)
                cfg.ingest.native = False
                lake = Lake(spark, root / "lake-python", engine="deltars")
                ingest.run(spark, cfg, [str(paths[0])], lake=lake)
                start = time.perf_counter()
                ingest.run(spark, cfg, rest, lake=lake)
                results[fmt]["python_s"] = time.perf_counter() - start
                start = time.perf_counter()
                spark.read.json(rest).write.mode("overwrite").parquet(str(root / "plain.parquet"))
                results[fmt]["spark_json_s"] = time.perf_counter() - start
        finally:
            shutil.rmtree(root, ignore_errors=True)
    spark.stop()
    return results


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
STARTUP_RUNS: dict[str, list[str] | None] = {
    "ingest": [],
    "ingest_deltars": ["lake.engine=deltars"],
    "ingest_spark": ["ingest.local_max_bytes=0"],
    "ingest_deltars_spark": ["lake.engine=deltars", "ingest.local_max_bytes=0"],
    "bare": None,
}


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
            "s = SparkSession.builder.master('local[2]').getOrCreate()\n"
            "s.read.json(sys.argv[1]).write.parquet(sys.argv[2])\ns.stop()\n")
    times: dict[str, list[float]] = {name: [] for name in STARTUP_RUNS}
    for _k in range(repeats):
        work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
        try:
            for name, overrides in STARTUP_RUNS.items():
                if overrides is None:
                    cmd = [sys.executable, "-c", bare, str(tiny), str(work / "out.parquet")]
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
    parser.add_argument("--startup-repeats", type=int, default=3, help="fresh-process pairs (the median is kept)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-large", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    if args.worker:
        print(json.dumps(run_master(args.worker, Path(args.data), formats)))
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
            runs = time_startup(data, args.startup_repeats)
            times = {name: sorted(ts)[len(ts) // 2] for name, ts in runs.items()}
            bare_s = times["bare"]
            print(f"start-up, fresh processes on a 40-line JSON file (median of {args.startup_repeats}; "
                  f"bare spark.read.json -> parquet {bare_s:.1f} s; 1-min load average {load_before:.1f} "
                  f"before, {os.getloadavg()[0]:.1f} after):")
            print("| engine | driver path s | vs bare (target <= 1.5) | Spark path (local_max_bytes=0) s | vs bare |")
            print("|---|---:|---:|---:|---:|")
            for label, key in (("delta-spark (conf/default.yaml, auto)", "ingest"), ("deltars", "ingest_deltars")):
                print(f"| {label} | {times[key]:.1f} | {times[key] / bare_s:.2f} | {times[key + '_spark']:.1f} "
                      f"| {times[key + '_spark'] / bare_s:.2f} |")
            # Each repeat's runs went in turn: under a changing load, compare within a repeat.
            for k in range(args.startup_repeats):
                print(f"repeat {k + 1}: " + ", ".join(f"{name} {ts[k]:.1f} s" for name, ts in runs.items()))
            print()
        if "formats" not in sections:
            return
        for fmt in formats:
            if not (data / fmt).is_dir():
                generate(data / fmt, fmt, args.lines, args.files)
        runs: dict[str, dict[str, dict[str, float]]] = {}
        for master in args.masters.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", master, "--data", str(data), "--formats", ",".join(formats)],
                check=True, capture_output=True, text=True,
            )
            runs[master] = json.loads(out.stdout.strip().splitlines()[-1])
        masters = list(runs)
        print(f"lines per format: {args.lines:,} in {args.files} files (ingest timed on files 2..{args.files})")
        print("| format | master | ingest lines/s/core | raw read lines/s/core | ingest / raw | quarantined "
              "| template cache hit rate |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for fmt in formats:
            for master in masters:
                r = runs[master][fmt]
                cores = int(master.split("[")[1].rstrip("]")) if "[" in master else 1
                ing = r["lines"] / r["ingest_s"] / cores
                raw = r["lines"] / r["raw_s"] / cores
                rate = "-" if r.get("hit_rate") is None else f"{r['hit_rate']:.3f}"
                print(f"| {fmt} | {master} | {ing:,.0f} | {raw:,.0f} | {ing / raw:.2f} | {int(r['quarantined'])} "
                      f"| {rate} |")
        native = [f for f in formats if f in NATIVE]
        if native:
            print()
            print("| format | master | ingest native lines/s | ingest Python lines/s | spark.read.json -> parquet lines/s "
                  "| native / Spark job | Python / Spark job |")
            print("|---|---|---:|---:|---:|---:|---:|")
            for fmt in native:
                for master in masters:
                    r = runs[master][fmt]
                    nat, py, job = (r["lines"] / r[k] for k in ("ingest_s", "python_s", "spark_json_s"))
                    print(f"| {fmt} | {master} | {nat:,.0f} | {py:,.0f} | {job:,.0f} | {nat / job:.2f} | {py / job:.2f} |")
        if len(masters) == 2:
            print()
            print(f"| format | speed-up {masters[0]} -> {masters[1]} (ingest wall time) |")
            print("|---|---:|")
            for fmt in formats:
                print(f"| {fmt} | {runs[masters[0]][fmt]['ingest_s'] / runs[masters[1]][fmt]['ingest_s']:.2f}x |")
    finally:
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
