"""Column-wise block parsing against the per-line path, Spark-free, in the same run and process.

What one ingest task does per file without Spark (:func:`loganomaly.ingest.stage.parse_files_to_batches`:
read lines, parse, check, build the Arrow batches) over files made by ``bench/ingest.py``'s generators,
twice: with ``columnar=True`` (parsers' :meth:`parse_block`, the new path) and ``columnar=False``
(every line through ``parse``, the reference). The two alternate ``--repeats`` times and the best of
each is kept (the machine is shared: the best run is the least disturbed); the script checks that
both gave the same batches (every value), so a speed-up never comes from a change of output.

Usage:
    .venv/bin/python bench/parse_columns.py [--lines 100000] [--formats zeek,csv,syslog,loghub] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--formats", default="zeek,csv,syslog,loghub")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from ingest import SOURCE_OPTIONS, generate  # the same generators as the end-to-end bench
    from loganomaly.ingest.formats import FormatOptions
    from loganomaly.ingest.stage import parse_files_to_batches

    print(f"{args.lines} lines per format in 4 files; best of {args.repeats}; load {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-columns-") as tmp:
        for fmt in args.formats.split(","):
            paths = [str(p) for p in generate(Path(tmp) / fmt, fmt, args.lines, 4)]
            options = FormatOptions(**SOURCE_OPTIONS[fmt])  # type: ignore[arg-type]
            sources = {p: ("bench", options) for p in paths}
            best: dict[bool, float] = {}
            out: dict[bool, list[object]] = {}
            for _ in range(args.repeats):
                for columnar in (False, True):
                    start = time.perf_counter()
                    batches = list(parse_files_to_batches(paths, "run", 2048, sources=sources, columnar=columnar))
                    rate = sum(b.num_rows for b in batches) / (time.perf_counter() - start)
                    best[columnar] = max(best.get(columnar, 0.0), rate)
                    out[columnar] = [b.to_pydict() for b in batches]
            same = "same output" if out[True] == out[False] else "OUTPUT DIFFERS"
            print(
                f"{fmt:6s} per line {best[False]:9.0f} lines/s   column-wise {best[True]:9.0f} lines/s   "
                f"ratio {best[True] / best[False]:.2f}x   {same}"
            )


if __name__ == "__main__":
    main()
