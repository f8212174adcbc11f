"""Nothing lost, nothing duplicated, on a corpus built to break parsers: rows in = events + quarantined.

Usage::

    .venv/bin/python bench/bad_corpus.py [--lines 10000] [--seed 1] [--work build/bad_corpus]

Writes a corpus of about ``--lines`` lines in nine files (JSON lines, gzip JSON, Zeek TSV, RFC
5424 syslog, CSV, JSON led by a UTF-8 byte-order mark, UTF-16 JSON as Windows PowerShell writes it,
an empty file, a file of blank lines). A share of the first five files' lines is broken on purpose: cut short, control and NUL bytes, invalid UTF-8, a byte-order mark mid-file, single
quotes, nesting 5,000 deep, ``1e400``, a 5,000-digit integer, negative and impossible times,
negative counts, Zeek rows of the wrong width, unbalanced CSV quotes, a CR before the newline,
random bytes. Then ingests it along the product's three paths (the driver's for small loads, the
Spark tasks', ``ingest.native`` for JSON), each into a lake of its own, twice, and checks per file
that the ledger's line count is the file's physical line count, that ``events`` and ``quarantine``
hold exactly that many rows of it, that every path gives the same counts, and that the second run
loads nothing and moves no table version. Prints one table and the quarantine reasons; exits 1 on
any violation. Spark-backed; about a minute and a half on 2 cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _json_line(i: int) -> str:
    return json.dumps({"ts": 1709510400 + i, "host": f"h{i % 7}", "message": f"user {i} login ok", "level": "info"})


def _broken(text: str, rng: random.Random) -> bytes:
    """``text`` broken in one of fourteen ways (a line never gains a newline)."""
    data = text.encode()
    ways: list[Callable[[], bytes]] = [
        lambda: data[: rng.randrange(len(data))],  # cut short
        lambda: data + b"\x00\x01\x02",  # control and NUL bytes
        lambda: b"\xff\xfe" + data,  # invalid UTF-8
        lambda: data.replace(b'"', b"'", 3),  # single quotes
        lambda: b"[" * 5000 + b"]" * 5000,  # nesting past any parser's depth
        lambda: b'{"ts": 1e400, "x": 1}',  # a float past the double range
        lambda: b'{"ts": ' + b"9" * 5000 + b"}",  # an integer past Python's digit limit
        lambda: b"   \t  ",  # blank
        lambda: data + b"\r",  # CR before the newline
        lambda: b'{"ts": "2024-02-30T00:00:00Z", "message": "x"}',  # impossible date
        lambda: b'{"ts": -5, "message": "neg"}',  # negative epoch
        lambda: b'{"ts": 1709510400, "orig_bytes": -3, "id.orig_h": 5}',  # negative count
        lambda: b"\xef\xbb\xbf" + data,  # byte-order mark mid-file
        lambda: rng.randbytes(rng.randrange(1, 300)).replace(b"\n", b" "),  # random bytes (seeded)
    ]
    return rng.choice(ways)()


def write_corpus(out: Path, lines: int, seed: int) -> dict[str, int]:
    """The corpus under ``out``; returns each file's physical line count."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}

    def write(name: str, rows: list[bytes], gz: bool = False, newline_at_end: bool = True) -> None:
        data = b"\n".join(rows) + (b"\n" if newline_at_end and rows else b"")
        (out / name).write_bytes(gzip.compress(data) if gz else data)
        counts[name] = len(rows)

    share = max(1, lines // 10)
    write("app.jsonl", [_json_line(i).encode() if rng.random() < 0.7 else _broken(_json_line(i), rng)
                        for i in range(3 * share)])
    write("app2.jsonl.gz", [_json_line(i).encode() if rng.random() < 0.5 else _broken(_json_line(i), rng)
                            for i in range(share)], gz=True)
    header = [
        "#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-", "#path\tconn",
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration\torig_bytes\t"
        "resp_bytes\tconn_state",
        "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\tstring",
    ]
    zeek = [h.encode() for h in header]
    for i in range(2 * share):
        row = [f"{1709510400 + i}.5", f"C{i}", "10.0.0.1", str(1000 + i), "10.0.0.2", "80", "tcp", "http", "0.5",
               "10", "20", "SF"]
        r = rng.random()
        if r < 0.1:
            row = row[: rng.randrange(1, 12)]  # too few fields
        elif r < 0.15:
            row[9] = "-7"  # negative count
        elif r < 0.2:
            row[0] = "notatime"
        elif r < 0.25:
            row[3] = "99999999999"  # port past 32 bits
        elif r < 0.28:
            row.append("extra")  # too many fields
        text = "\t".join(row)
        zeek.append(text.encode() if rng.random() > 0.05 else _broken(text, rng))
    write("conn.log", zeek, newline_at_end=False)  # the last line without its newline
    syslog = []
    for i in range(2 * share):
        text = (f"<34>1 2024-03-04T00:{i // 60 % 60:02d}:{i % 60:02d}Z host{i % 5} sshd {1000 + i} - - "
                f"Failed password for root from 10.0.0.{i % 250} port 22")
        syslog.append(text.encode() if rng.random() < 0.8 else _broken(text, rng))
    write("auth.log", syslog)
    csv = [b"timestamp,entity,cpu,bytes,connections"]
    for i in range(int(1.5 * share) - 1):
        text = f"2024-03-04T00:00:{i % 60:02d}Z,h{i % 3},{rng.random():.3f},{rng.randrange(100)},{rng.randrange(10)}"
        r = rng.random()
        if r < 0.05:
            text += ',"unbalanced'
        elif r < 0.1:
            text = text.replace(",", ";")
        elif r < 0.13:
            text = "2024-13-45T99:99:99Z,h1,x,y,z"
        csv.append(text.encode() if rng.random() < 0.9 else _broken(text, rng))
    write("metrics.csv", csv)
    # What a Windows tool exports: a byte-order mark before the first line, the lines themselves fine.
    write("export.jsonl", [b"\xef\xbb\xbf" + _json_line(0).encode()]
          + [_json_line(i).encode() for i in range(1, share // 2)])
    # What Windows PowerShell 5's ``>`` writes: UTF-16LE with its byte-order mark, CRLF line ends.
    text = "".join(_json_line(i) + "\r\n" for i in range(share // 2))
    (out / "powershell.jsonl").write_bytes(text.encode("utf-16"))
    counts["powershell.jsonl"] = share // 2
    (out / "empty.log").write_bytes(b"")
    counts["empty.log"] = 0
    (out / "blank_lines.log").write_bytes(b"\n\n\n")
    counts["blank_lines.log"] = 3
    return counts


#: The product's three ingest paths: (name, config overrides).
PATHS: list[tuple[str, dict[str, Any]]] = [
    ("driver", {}),
    ("spark tasks", {"local_max_bytes": 0}),
    ("ingest.native", {"native": True, "local_max_bytes": 0}),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default="build/bad_corpus")
    args = ap.parse_args(argv)

    from loganomaly.config import Config
    from loganomaly.ingest import stage as ingest
    from loganomaly.lake.tables import Lake
    from loganomaly.runtime.spark import get_spark

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    corpus = work / "corpus"
    expected = write_corpus(corpus, args.lines, args.seed)
    cfg = Config()
    cfg.spark.log_level = "ERROR"
    spark = get_spark(cfg.spark)
    failures: list[str] = []
    per_path: dict[str, dict[str, tuple[int, int, int]]] = {}
    reasons: dict[str, int] = {}
    for name, overrides in PATHS:
        run_cfg = Config()
        for key, value in overrides.items():
            setattr(run_cfg.ingest, key, value)
        lake = Lake(spark, work / f"lake-{name.replace(' ', '-')}")
        first = ingest.run(spark, run_cfg, [str(corpus)], lake=lake)
        ledger = {Path(r.path).name: (r.lines, r.events, r.quarantined) for r in lake.read("ingested_files").collect()}
        events = {Path(r.file).name: r["count"] for r in lake.read("events").groupBy("file").count().collect()}
        quarantined = {Path(r.file).name: r["count"] for r in lake.read("quarantine").groupBy("file").count().collect()}
        for file, n_lines in expected.items():
            lines, n_events, n_quarantined = ledger.get(file, (-1, -1, -1))
            rows = (events.get(file, 0), quarantined.get(file, 0))
            if lines != n_lines or n_events + n_quarantined != n_lines or (n_events, n_quarantined) != rows:
                failures.append(f"{name}: {file}: {n_lines} lines, ledger {ledger.get(file)}, tables {rows}")
        if first.events + first.quarantined != sum(expected.values()):
            failures.append(f"{name}: {first.events} events + {first.quarantined} quarantined != {sum(expected.values())}")
        per_path[name] = ledger
        if not reasons:
            for r in lake.read("quarantine").groupBy("reason").count().collect():
                reasons[r.reason] = r["count"]
        versions = {t: lake.version(t) for t in ("events", "quarantine", "ingested_files")}
        again = ingest.run(spark, run_cfg, [str(corpus)], lake=lake)
        if (again.files_loaded, again.events, again.quarantined) != (0, 0, 0):
            failures.append(f"{name}: the rerun loaded {again.files_loaded} files, {again.events} events")
        if {t: lake.version(t) for t in versions} != versions:
            failures.append(f"{name}: the rerun moved a table version")
    spark.stop()
    names = [n for n, _ in PATHS]
    for file in expected:
        if len({per_path[n].get(file) for n in names}) != 1:
            failures.append(f"{file}: the paths disagree: {[per_path[n].get(file) for n in names]}")

    print(f"{sum(expected.values()):,} lines in {len(expected)} files (seed {args.seed}); per file: lines, events, "
          "quarantined, as the ledger of each path records them")
    print("| file | lines | " + " | ".join(f"{n}: events / quarantined" for n in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for file, n_lines in expected.items():
        cells = [f"{per_path[n][file][1]:,} / {per_path[n][file][2]:,}" if file in per_path[n] else "missing"
                 for n in names]
        print(f"| {file} | {n_lines:,} | " + " | ".join(cells) + " |")
    print()
    print("reruns: nothing loaded, no table version moved" if not any("rerun" in f for f in failures)
          else "reruns: see the failures")
    print("quarantine reasons (the driver path's lake), most frequent first:")
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {count:>5}  {reason[:90]}")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nrows in = events + quarantined on every file and path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
