"""Python parse path, Spark-free: this tree's parsers against a baseline revision's, in the same run.

What one ingest task does per file, without Spark: :func:`loganomaly.ingest.stage.parse_files_to_batches`
(read lines, parse, check, build the Arrow batches) over files made by ``bench/ingest.py``'s
generators. Each side runs in its own Python process (``PYTHONPATH`` pointing at this tree's
``lib`` or at the baseline's, exported by ``git archive``), timed inside the process after a warm-up
file, so imports and start-up are not in the figures. Sides alternate ``--repeats`` times and the best
of each is kept (the machine is shared: the best run is the least disturbed). It also checks that both
sides produced the same batches (a digest of every value), so a speed-up never comes from a change
of output.

Each format is parsed with the end-to-end bench's source options; ``--templates`` matches every
event against a miner fitted on the warm-up file (as an ingest task does, a new matcher per run),
with the end-to-end bench's template preset (HDFS for ``loghub``; before 2026-12-03 the default
settings, whose number mask the HDFS preset did not have). The state is fitted by this tree and
holds its settings, so both sides match with this tree's preset: a preset change is measured end
to end (``bench/ingest.py``).

Usage:
    .venv/bin/python bench/parse.py [--lines 200000] [--formats zeekjson,json] [--baseline HEAD]
        [--repeats 3] [--templates]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Runs in the side's process: parse the files, print lines/s and a digest of the batches.
WORKER = r"""
import hashlib, json, sys, time
import loganomaly
from loganomaly.ingest.formats import FormatOptions
from loganomaly.ingest.stage import parse_files_to_batches
from loganomaly.ingest.templates.miner import Templates
try:  # what an ingest task runs under (trees before the collector change run without it)
    from loganomaly.runtime.gc_tuning import relaxed_gc
except ImportError:
    from contextlib import nullcontext as relaxed_gc
options, state, warm, paths = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
def run(files):
    sources = {p: ("bench", FormatOptions(**options)) for p in files}
    # A matcher per run, as a fresh task has (its message cache starts empty).
    templates = Templates.from_json(open(state).read()) if state else None
    start = time.perf_counter()
    with relaxed_gc():
        batches = list(parse_files_to_batches(files, "run", 2048, sources=sources, templates=templates))
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for batch in batches:  # values, not buffers: equal arrays may be laid out differently
        digest.update(repr(batch.to_pydict()).encode())
    return sum(b.num_rows for b in batches), seconds, digest.hexdigest()
run([warm])
rows, seconds, digest = run(paths)
print(json.dumps({"lib": loganomaly.__file__, "rows": rows, "seconds": seconds, "digest": digest}))
"""


#: Fits the template miner on the warm-up file's messages with this tree's code; both sides match with it.
FIT = r"""
import json, sys
from loganomaly.ingest.formats import FormatOptions
from loganomaly.ingest.stage import parse_files_to_batches
from loganomaly.ingest.templates.masking import preset
from loganomaly.ingest.templates.miner import Templates
options, warm, out, name = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sources = {warm: ("bench", FormatOptions(**options))}
messages = [m for b in parse_files_to_batches([warm], "fit", 2048, sources=sources)
            for m in b.column("message").to_pylist() if m is not None]
Templates(preset(name) if name else None).fit(messages).save(out)
"""

#: The template preset each format's miner is fitted with: the end-to-end bench's (``bench/ingest.py``).
PRESET = {"loghub": "HDFS"}


def side(lib: Path, options: dict[str, object], state: str, warm: Path, paths: list[Path]) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(lib)}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(options), state, str(warm), *map(str, paths)], env=env, check=True,
        capture_output=True, text=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    if not str(result["lib"]).startswith(str(lib)):
        raise SystemExit(f"side {lib} imported {result['lib']}: PYTHONPATH did not take")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--formats", default="zeekjson,json")
    ap.add_argument("--baseline", default="HEAD", help="git revision whose lib/ is the old code path")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--templates", action="store_true",
                    help="match templates (a miner fitted on the warm-up file by this tree) as ingest does")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from ingest import SOURCE_OPTIONS, generate  # the same generators and sources as the end-to-end bench

    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline, "lib"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        sides = {"baseline": base / "lib", "this tree": ROOT / "lib"}
        print(f"baseline {args.baseline}; {args.lines} lines per format; best of {args.repeats}; load {os.getloadavg()}")
        for fmt in args.formats.split(","):
            paths = generate(Path(tmp) / fmt, fmt, args.lines, 4)
            warm = generate(Path(tmp) / f"{fmt}-warm", fmt, 5_000, 1)[0]
            options = SOURCE_OPTIONS[fmt]
            state = ""
            if args.templates:
                state = str(Path(tmp) / f"{fmt}-templates.json")
                subprocess.run([sys.executable, "-c", FIT, json.dumps(options), str(warm), state, PRESET.get(fmt, "")],
                               env={**os.environ, "PYTHONPATH": str(ROOT / "lib")}, check=True)
            best: dict[str, float] = {}
            digests: dict[str, object] = {}
            for _ in range(args.repeats):
                for name, lib in sides.items():
                    result = side(lib, options, state, warm, paths)
                    rate = float(result["rows"]) / float(result["seconds"])  # type: ignore[arg-type]
                    best[name] = max(best.get(name, 0.0), rate)
                    digests[name] = result["digest"]
            same = "same output" if digests["baseline"] == digests["this tree"] else "OUTPUT DIFFERS"
            print(
                f"{fmt:9s} baseline {best['baseline']:9.0f} lines/s   this tree {best['this tree']:9.0f} lines/s   "
                f"ratio {best['this tree'] / best['baseline']:.2f}x   {same}"
            )


if __name__ == "__main__":
    main()
