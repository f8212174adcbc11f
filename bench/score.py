"""Scoring throughput per core: the Spark scoring function against pure torch inference, in the same run.

Writes its own ``sequences`` table (periodic windows plus noise and a few spikes, the full
``sequences`` schema with ``feature_names``, delta-rs) and its own model bundle (an untrained
LSTM autoencoder, seeded; inference costs the same as a trained one) in a temp dir, then measures
on the same windows and the same bundle:

* ``torch model only``: :func:`loganomaly.models.autoencoder.window_step_errors` on the normalised array,
  one process, one torch thread;
* ``torch score_windows``: the kind's
  :meth:`~loganomaly.models.window.WindowKind.score_windows` (normalise + model + explain, the body
  of the scoring function) on the in-memory array in chunks of ``--batch`` windows: the baseline of
  the ratio;
* ``arrow -> windows_of``: what the scoring function adds in the Python worker before the model (the
  Arrow batch of ``features`` to a ``[N, T, F]`` array, :func:`loganomaly.models.window.windows_of`);
* ``spark no-op mapInArrow``: the same scan and the same ``mapInArrow`` transport, into a function
  that returns the key columns and zeros: the cost of reading ``features`` and shipping it through
  Arrow to a Python worker and back;
* ``spark score_partitions``: ``Lake.read("sequences")`` +
  :func:`loganomaly.scoring.stage.score_partitions` in ``DataFrame.mapInArrow`` on ``--master``,
  every output column materialised with a ``noop`` write (a plain ``.count()`` would prune the
  columns away);
* ``spark score.run``: the real stage, :func:`loganomaly.scoring.stage.run` (checks, mapInArrow,
  ``scores`` and ``anomalies`` writes, the final count).

Per core = windows/s divided by the Spark task slots of ``--master`` (1 for the torch rows).
Every process runs torch with one thread (``OMP_NUM_THREADS=1`` for the Python workers,
``torch.set_num_threads(1)`` here), so the figure is per core, not per process. Runs alternate
and the median of ``--repeats`` is reported, because the machine's cores are shared. Aim:
``spark score_partitions`` per core >= 0.8 of ``torch score_windows``.

Usage:
    .venv/bin/python bench/score.py [--windows 50000] [--master local[2]] [--batch 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from loganomaly.config import Config, LakeConfig, ScoreConfig, SparkConfig
from loganomaly.features.windows import feature_names_for
from loganomaly.models.autoencoder import LSTMAutoencoder, LSTMAutoencoderConfig, window_step_errors
from loganomaly.models.bundle import BUNDLE_FILES, kind_of, load_bundle, save_bundle
from loganomaly.models.kind import RESULT_COLUMNS
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.window import ModelBundle, WindowKind, windows_of
from loganomaly.scoring.stage import KEY_COLUMNS, score_partitions

log = logging.getLogger("bench.score")

DAY0 = dt.datetime(2024, 3, 4, tzinfo=dt.UTC)


def make_windows(n: int, steps: int, n_features: int, seed: int = 0) -> np.ndarray:
    """log1p-like windows: a daily cycle per feature plus noise, 0.5% of windows with a spike."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    angle = 2 * np.pi * np.arange(steps)[None, :, None] / (4 * steps) + phase + np.arange(n_features)[None, None, :]
    x = np.clip(2 + 1.5 * np.sin(angle) + rng.normal(0, 0.2, (n, steps, n_features)), 0, None)
    spiky = rng.random(n) < 0.005
    x[spiky, rng.integers(0, steps), rng.integers(0, n_features)] += 4.0
    return x.astype(np.float32)


def write_sequences(path: str, x: np.ndarray, names: list[str], days: int, entities: int,
                    step_seconds: int) -> None:
    """The windows as a ``sequences`` table (every column featurize writes), one file per date."""
    from deltalake import WriterProperties, write_deltalake

    n, steps, feats = x.shape
    per_day = -(-n // days)
    slots = -(-per_day // entities)
    stride = max(1, 86_400 // slots)
    i = np.arange(n)
    day, within = i // per_day, i % per_day
    start_s = DAY0.timestamp() + day * 86_400 + (within // entities) * stride
    start_us = (start_s * 1e6).astype(np.int64)
    end_us = start_us + steps * step_seconds * 1_000_000
    ts = pa.timestamp("us", tz="UTC")
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * steps * feats)
    table = pa.table({
        "entity": pa.array([f"host-{e:03d}" for e in within % entities], pa.string()),
        "window_start": pa.array(start_us, ts),
        "window_end": pa.array(end_us, ts),
        "date": pa.array((start_us // 86_400_000_000).astype(np.int32), pa.int32()).cast(pa.date32()),
        "n_steps": pa.array(np.full(n, steps, np.int32)),
        "n_features": pa.array(np.full(n, feats, np.int32)),
        "feature_names": pa.array([names] * n, pa.list_(pa.string())),
        "features": pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1))),
        "n_events": pa.array(np.full(n, 100, np.int64)),
        "first_event_ts": pa.array(start_us, ts),
        "last_event_ts": pa.array(end_us, ts),
        "run_id": pa.array(["bench-score"] * n, pa.string()),
    })
    write_deltalake(path, table, mode="overwrite", partition_by=["date"],
                    writer_properties=WriterProperties(max_row_group_size=8192))


def make_bundle(model_dir: Path, x: np.ndarray, names: list[str], hidden: int, step_seconds: int,
                top_templates: int) -> ModelBundle:
    """An untrained (seeded) autoencoder with a real normaliser, typical errors and threshold."""
    torch.manual_seed(0)
    _, steps, feats = x.shape
    cfg = LSTMAutoencoderConfig(n_features=feats, window_steps=steps, hidden_size=hidden)
    model = LSTMAutoencoder(cfg).eval()
    normaliser = Normaliser.fit(x[:4096])
    per_step = window_step_errors(model, normaliser.transform(x[:4096]))
    scores = per_step.mean(axis=(1, 2))
    bundle = ModelBundle(
        model_cfg=cfg,
        state_dict=model.state_dict(),
        normaliser=normaliser,
        threshold=float(np.quantile(scores, 0.99)),
        feature_names=names,
        features={"step_seconds": step_seconds, "window_steps": steps, "stride_steps": 3,
                  "top_templates": top_templates, "transform": "log1p"},
        metrics={"val_feature_error": per_step.mean(axis=(0, 1)).tolist()},
        training={"note": "bench/score.py: untrained"},
    )
    save_bundle(model_dir, bundle)
    return bundle


def slots_of(master: str) -> int:
    """Task slots of a ``local[N]`` / ``local[*]`` / ``local`` master."""
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master)
    if not m:
        raise SystemExit(f"--master must be local, local[N] or local[*], got {master!r}")
    return os.cpu_count() or 1 if m.group(1) == "*" else int(m.group(1) or 1)


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=50_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--batch", type=int, default=4096, help="spark.sql.execution.arrow.maxRecordsPerBatch, "
                        "and the chunk size of the torch score_windows baseline")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--templates", type=int, default=8, help="frequent-template features (features.top_templates)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--days", type=int, default=4, help="dates (= Delta partitions, one file each)")
    parser.add_argument("--entities", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-run", action="store_true", help="skip the full score.run rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    slots = slots_of(args.master)
    # One torch thread per process: here directly, in the Python workers through the environment
    # they inherit from the JVM started below (PySpark would also default it to spark.task.cpus).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    names = feature_names_for([f"Tbench{i:08x}" for i in range(args.templates)])
    step_seconds = 300
    root = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        x = make_windows(args.windows, args.steps, len(names))
        lake_root = root / "lake"
        write_sequences(str(lake_root / "sequences"), x, names, args.days, args.entities, step_seconds)
        model_dir = root / "model"
        make_bundle(model_dir, x, names, args.hidden, step_seconds, args.templates)
        bundle = load_bundle(model_dir)
        kind = kind_of(bundle.kind)
        assert isinstance(bundle, ModelBundle) and isinstance(kind, WindowKind)
        device = torch.device("cpu")
        model = bundle.build_model(device)
        n = len(x)
        normalised = bundle.normaliser.transform(x)

        def torch_model_only() -> None:
            window_step_errors(model, normalised, device=device)

        def torch_score_windows() -> None:
            for i in range(0, n, args.batch):
                kind.score_windows(bundle, model, device, x[i : i + args.batch], args.top_k)

        # The worker's conversion, alone: Arrow batches of the column -> [N, T, F] windows.
        features_col = pa.ListArray.from_arrays(
            pa.array(np.arange(n + 1, dtype=np.int32) * args.steps * len(names)), pa.array(x.reshape(-1)))
        arrow_batches = [features_col.slice(i, args.batch) for i in range(0, n, args.batch)]

        def convert() -> None:
            for b in arrow_batches:
                windows_of(b, args.steps, len(names))

        from pyspark.sql import functions as F

        from loganomaly.lake.tables import Lake
        from loganomaly.runtime.spark import get_spark
        from loganomaly.scoring import stage as score

        spark_cfg = SparkConfig(master=args.master, shuffle_partitions=slots, log_level="ERROR",
                                driver_memory="2g", arrow_max_records_per_batch=args.batch,
                                conf={"spark.executorEnv.OMP_NUM_THREADS": "1"})
        spark = get_spark(spark_cfg)
        try:
            lake = Lake(spark, lake_root, "auto")
            files = {name: Path(model_dir, name).read_bytes() for name in BUNDLE_FILES}
            broadcast = spark.sparkContext.broadcast(files)
            # What the stage feeds its scoring function: the key columns and the kind's input column.
            windows = lake.read("sequences").select(*KEY_COLUMNS, "features")
            keys = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in windows.select(*KEY_COLUMNS).schema)
            scored = windows.mapInArrow(
                score_partitions(kind, bundle.version, broadcast, "features", args.top_k), f"{keys}, {RESULT_COLUMNS}")
            partitions = windows.rdd.getNumPartitions()

            def spark_score() -> None:
                scored.write.format("noop").mode("overwrite").save()

            def passthrough(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                for batch in batches:
                    yield pa.RecordBatch.from_arrays(
                        [batch.column(name) for name in KEY_COLUMNS] + [pa.array(np.zeros(batch.num_rows))],
                        names=[*KEY_COLUMNS, "score"])

            def spark_passthrough() -> None:
                windows.mapInArrow(passthrough, f"{keys}, score double").write.format("noop").mode("overwrite").save()

            cfg = Config(spark=spark_cfg, lake=LakeConfig(root=str(lake_root), engine=lake.engine),
                         score=ScoreConfig(explain_top_k=args.top_k))

            def spark_run() -> None:
                summary = score.run(spark, cfg, model_dir, lake=lake)
                assert summary.windows == n, summary

            @F.udf("int")
            def worker_threads(_):  # type: ignore[no-untyped-def]
                import torch as t

                return int(t.get_num_threads())

            threads = sorted({r[0] for r in spark.range(slots * 2, numPartitions=slots).select(
                worker_threads("id")).collect()})
            # Warm-up, not counted: oneDNN kernels here; Python workers start and load the model.
            torch_score_windows()
            for _ in range(2):  # the JVM's JIT needs more than one pass
                spark_passthrough()
                spark_score()
            if not args.no_run:
                spark_run()

            runs: dict[str, list[float]] = {k: [] for k in ("model", "windows", "convert", "pass", "score", "run")}
            for _ in range(args.repeats):
                runs["model"].append(timed(torch_model_only))
                runs["windows"].append(timed(torch_score_windows))
                runs["convert"].append(timed(convert))
                runs["pass"].append(timed(spark_passthrough))
                runs["score"].append(timed(spark_score))
                if not args.no_run:
                    runs["run"].append(timed(spark_run))
            broadcast.unpersist()
        finally:
            spark.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    seconds = {k: statistics.median(v) for k, v in runs.items() if v}
    log.warning("seconds per run: %s", {k: [round(s, 2) for s in v] for k, v in runs.items() if v})
    base = n / seconds["windows"]
    rows = [
        ("torch model only (window_step_errors)", 1, "model", "batch 1024"),
        ("torch score_windows (the scoring body, baseline)", 1, "windows", f"chunks of {args.batch}"),
        ("arrow -> windows_of (worker side)", 1, "convert", "conversion alone, no model"),
        ("spark scan + Arrow round trip (no-op mapInArrow)", slots, "pass", "the floor of any Python function here"),
        ("spark score_partitions (mapInArrow) -> noop write", slots, "score", f"{partitions} input partitions"),
        ("spark score.run (checks, mapInArrow, 2 Delta writes)", slots, "run", "the real stage"),
    ]
    print(f"\nwindows: {n:,} x {args.steps} steps x {len(names)} features, hidden {args.hidden}, "
          f"top_k {args.top_k}, master {args.master}, arrow batch {args.batch}, repeats {args.repeats} (median), "
          f"torch threads: 1 here, {threads} in the Python workers; {os.cpu_count()} cores (shared)")
    print("| path | cores | windows/s | windows/s per core | per core / torch score_windows | note |")
    print("|---|---:|---:|---:|---:|---|")
    for name, cores, key, note in rows:
        if key not in seconds:
            continue
        rate = n / seconds[key]
        print(f"| {name} | {cores} | {rate:,.0f} | {rate / cores:,.0f} | {rate / cores / base:.2f} | {note} |")


if __name__ == "__main__":
    main()
