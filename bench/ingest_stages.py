"""Where an ingest task's time goes per line, stage by stage, Spark-free.

``bench/ingest.py`` says how fast ``loganomaly ingest`` runs against Spark's own job; this says
what a parsing task spends a line on, so that the gap can be read against what each stage costs.
For each format it generates ``--lines`` lines with ``bench/ingest.py``'s generators (plus as
many again to fit the template miner on, as the first file of an ingest does), then times, in one
process with Python's GC relaxed as in the tasks, and in this order:

- read: the file's lines (:func:`loganomaly.ingest.formats.base.open_lines`);
- parse: read and parse a block at a time (:func:`~loganomaly.ingest.formats.detect.parse_file_blocks`),
  the read included;
- batch: the Arrow batches without templates (:func:`loganomaly.ingest.stage.records_batch`),
  event ids included;
- ids: the event ids alone, as the tasks build them (:meth:`loganomaly.ingest.ids.IdKey.batch`);
- templates: the batches with templates minus the batches without them (matching with a matcher
  rebuilt from the fitted state, warm: the same lines matched once before the timing);
- write: the events of those batches through the lake's Parquet writer
  (:class:`loganomaly.lake.deltars.PartitionedFileWriter`, as a direct-write task uses it).

Each stage is timed ``--repeats`` times and the best kept; the total is parse + batch + templates +
write, what one core spends per line outside Spark. Divide the native Spark job's marginal
lines/s of ``bench/ingest.py`` by the cores to compare (2 cores: 1e6 / (lines/s / 2) us a line).

Usage:
    .venv/bin/python bench/ingest_stages.py [--lines 200000] [--formats zeekjson,zeek,csv] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest as bench_ingest  # noqa: E402  (bench/ingest.py: generators, source options)


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def stages(fmt: str, lines: int, repeats: int, work: Path) -> dict[str, float]:
    """Seconds per line of each stage for ``fmt`` (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from loganomaly.config import Config
    from loganomaly.ingest import stage
    from loganomaly.ingest.formats import FormatOptions
    from loganomaly.ingest.formats.base import open_lines
    from loganomaly.ingest.formats.detect import parse_file_blocks
    from loganomaly.ingest.ids import IdKey
    from loganomaly.ingest.templates.miner import Templates
    from loganomaly.ingest.templates.store import template_config
    from loganomaly.lake.deltars import PartitionedFileWriter
    from loganomaly.lake.schemas import EVENT_COLUMNS, TABLES
    from loganomaly.runtime.gc_tuning import relaxed_gc

    fit_path, path = (str(p) for p in bench_ingest.generate(work / fmt, fmt, 2 * lines, 2))
    given: dict[str, Any] = bench_ingest.SOURCE_OPTIONS[fmt]
    options = FormatOptions(**given) if given else None
    cfg = Config()
    cfg.templates.preset = "HDFS" if fmt == "loghub" else ""

    def parse(p: str) -> list[Any]:
        return list(parse_file_blocks(p, 2048, options=options, block_lines=stage.BATCH_ROWS))

    def batches(p: str, blocks: list[Any], templates: Any) -> list[Any]:
        return [
            stage.records_batch(p, fmt, b.rows, b.line_nos, b.kinds, "bench", templates, 0, b.columns)
            for b in blocks
        ]

    with relaxed_gc():
        messages: dict[str, None] = {}
        for batch in batches(fit_path, parse(fit_path), None):
            messages.update(dict.fromkeys(m for m in batch.column("message").to_pylist() if m is not None))
        fitted = Templates(template_config(cfg.templates)).fit(iter(messages))
        templates = stage.matcher(fitted.version, fitted.to_json())

        t_read, _ = _best(lambda: sum(1 for _ in open_lines(path)), repeats)
        t_parse, blocks = _best(lambda: parse(path), repeats)
        t_batch, _ = _best(lambda: batches(path, blocks, None), repeats)
        key = IdKey(path)
        t_ids, _ = _best(lambda: [key.batch(b.line_nos, [k == "event" for k in b.kinds]) for b in blocks], repeats)
        batches(path, blocks, templates)  # warm: the matcher's caches as a task's after its first file
        t_templates, parsed = _best(lambda: batches(path, blocks, templates), repeats)
        events_schema = pa.schema([stage.PARSED_ARROW.field(c) for c in EVENT_COLUMNS])
        events = [b.filter(pc.equal(b.column(stage.KIND), "event")).select(list(EVENT_COLUMNS)) for b in parsed]
        runs = iter(range(repeats))

        def write() -> int:
            out = work / f"write-{fmt}-{next(runs)}"
            writer = PartitionedFileWriter(str(out), events_schema, list(TABLES["events"].partition_by), "bench")
            for batch in events:
                writer.write_batch(batch)
            written = sum(f.size for f in writer.close())
            shutil.rmtree(out, ignore_errors=True)
            return written

        t_write, size = _best(write, repeats)
    n = lines
    return {
        "read": t_read / n, "parse": t_parse / n, "batch": t_batch / n, "ids": t_ids / n,
        "templates": max(t_templates - t_batch, 0.0) / n, "write": t_write / n, "bytes": size / n,
        "total": (t_parse + t_templates + t_write) / n,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--formats", default="zeekjson,json,zeek,csv,syslog,loghub")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    try:
        print(f"us per line on one core, {args.lines:,} generated lines per format, best of {args.repeats}:")
        print("| format | read | parse (read included) | batch (ids included) | ids | templates | Parquet write "
              "| total | bytes written per line |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for fmt in args.formats.split(","):
            s = stages(fmt, args.lines, args.repeats, work)
            us = {k: v * 1e6 for k, v in s.items() if k != "bytes"}
            print(f"| {fmt} | {us['read']:.2f} | {us['parse']:.2f} | {us['batch']:.2f} | {us['ids']:.2f} | "
                  f"{us['templates']:.2f} | {us['write']:.2f} | {us['total']:.2f} | {s['bytes']:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
