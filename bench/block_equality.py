"""Block parsing against the per-line reference on real logs: the same batches, and how many lines
went column-wise.

For every Loghub sample under ``--data`` (``loghub_2k/<System>/<System>_2k.log``, read with its
system's pattern), the larger HDFS and BGL files of ``hdfs_bgl_logai`` and Loghub's Linux sample
read as RFC 3164 syslog, it runs one ingest task's parsing
(:func:`loganomaly.ingest.stage.parse_files_to_batches`) block by block and line by line and
compares every value of every batch. The tests do the same on generated lines
(``tests/ingest/formats/test_*_columns.py``); this is the check on data the project does not ship.

Usage:
    .venv/bin/python bench/block_equality.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding loghub_2k/ and hdfs_bgl_logai/")
    args = ap.parse_args()
    from loganomaly.ingest import stage
    from loganomaly.ingest.formats import FormatOptions, parse_file_blocks

    data = Path(args.data)
    files: list[tuple[Path, FormatOptions]] = [
        (path, FormatOptions(format="loghub", pattern=path.parent.name))
        for path in sorted(data.glob("loghub_2k/*/*_2k.log"))
    ]
    files += [(data / "hdfs_bgl_logai" / name, FormatOptions(format="loghub", pattern=pattern))
              for name, pattern in (("HDFS_20000.log", "HDFS"), ("BGL_5000.log", "BGL"))]  # fmt: skip
    files.append((data / "loghub_2k" / "Linux" / "Linux_2k.log", FormatOptions(format="syslog", year=2005)))
    files = [(path, options) for path, options in files if path.exists()]
    if not files:
        print(f"no Loghub files under {data}", file=sys.stderr)
        return 2

    def batches(path: Path, options: FormatOptions, columnar: bool) -> list[str]:
        return [f"{b.schema}\n{b.to_pydict()!r}" for b in stage.parse_files_to_batches(
            [str(path)], "run", 2048, sources={str(path): ("bench", options)}, columnar=columnar)]  # fmt: skip

    print("| file | read as | lines | column-wise | same batches |\n|---|---|---:|---:|---|")
    differ = 0
    for path, options in files:
        blocks = list(parse_file_blocks(path, 2048, options=options))
        lines = sum(len(b.line_nos) for b in blocks)
        taken = sum(len(b.columns.positions) for b in blocks if b.columns)
        same = batches(path, options, True) == batches(path, options, False)
        differ += not same
        how = f"{options.format} {options.pattern or ''}".strip()
        print(f"| {path.relative_to(data)} | {how} | {lines:,} | {taken:,} | {'yes' if same else 'NO'} |")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
