"""Scoring throughput per core: torch alone, the scoring function in Spark, its floor and the whole stage.

Generates its own windows (a daily cycle plus noise and a few spikes) into a temp dir (never into the
repository), writes them as a ``sequences`` table (every column featurize writes, ``features`` in the
stored binary float32 layout, delta-rs, one file per date) and an untrained, seeded LSTM autoencoder bundle (inference costs the same as a trained
one; the threshold sits at the 99th percentile of its scores, so about 1% of windows are flagged
and explained, as on a real night). Then, on the same windows and bundle:

* ``torch model(x)``: forward passes over the normalised windows in memory, in the scoring
  forward-batch size, one process, one torch thread;
* ``torch score path``: the kind's :meth:`~loganomaly.models.kind.ModelKind.score_batch` on Arrow
  batches of the ``features`` column, in the scoring Arrow-batch size: what a Spark task runs per
  batch (features -> windows, normalise, forward, scores, explanations of the flagged windows).
  **The baseline of the ratios ("torch alone")**;
* ``spark no-op floor``: the same scan and the same ``mapInArrow`` transport into a function that
  returns the key columns and zeros; output written to Spark's ``noop`` sink;
* ``spark scoring UDF``: :func:`loganomaly.scoring.stage.score_partitions` in ``mapInArrow``, every
  output column materialised with a ``noop`` write;
* ``spark score stage``: :func:`loganomaly.scoring.stage.run` (the checks' aggregate, mapInArrow,
  the ``scores`` and ``anomalies`` Delta writes), whole; and its marginal rate: the windows beyond
  ``--small`` over the time beyond the stage's run on ``--small`` windows (both timed in this run),
  i.e. the stage's speed with its fixed cost taken out. Both figures are printed: the issue counts
  the fixed cost apart (the rows below).

Per core = windows/s divided by the task slots of ``--master`` (1 for the torch rows). Every
process runs torch with one thread (``OMP_NUM_THREADS=1``, and the stage sets ``spark.task.cpus``
threads = 1 in its workers). Runs alternate and the median of ``--repeats`` is reported, because
the machine's cores are shared.

Fixed cost: the stage on ``--small`` (1,000) windows against a bare Spark job over the same table
(read ``sequences``, write its rows to the ``noop`` sink), both in the warm session (after a
warm-up, median of ``--repeats``) and each in a fresh process: there the time from the session
being ready to the job's end is measured, so the JVM and Python start-up (the same for both) is
left out; the start-up itself is printed apart. A small input is scored by the driver
(``score.local_max_bytes``); the stage forced onto the Spark path (``local_max_bytes=0``) is
timed beside it, and the marginal row subtracts that path's small run.

``--entity-baseline``: the stage once more on the big table with ``score.entity_baseline`` on and
every entity in the ``internal`` group, so the rule's shuffles and window expressions cover every
row (:mod:`loganomaly.scoring.baseline`): its cost beside the plain stage; and once more without
``score.baseline_daily`` (the per-entity-and-hour window), the cost of that second window.

Scale: the stage at 1x, 4x and 16x of ``--scale-base`` windows (16x is at most ``--windows``),
reported as the growth of the cost per window per doubling of the input.

Layout: the floor and the UDF also run over a copy of the table whose ``features`` is the older
``array<float>`` layout (what lakes featurized before the binary layout keep; ``--no-layouts`` skips it).

Usage:
    .venv/bin/python bench/score.py [--windows 1000000] [--scale-base 62500] [--master local[2]] [--repeats 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from loganomaly.config import Config, LakeConfig, ScoreConfig, SparkConfig
from loganomaly.features.layout import NEW_LAYOUT, encode_windows
from loganomaly.features.windows import feature_names_for
from loganomaly.models.autoencoder import LSTMAutoencoder, LSTMAutoencoderConfig, flagged_step_errors
from loganomaly.models.bundle import BUNDLE_FILES, kind_of, load_bundle, save_bundle
from loganomaly.models.kind import RESULT_COLUMNS, Inference
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.sizing import scoring_sizes
from loganomaly.models.window import ModelBundle, WindowKind

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger("bench.score")

DAY0 = dt.datetime(2024, 3, 4, tzinfo=dt.UTC)
STEP_SECONDS = 300
KEY_COLUMNS = ("entity", "window_start", "window_end", "date")


def make_windows(n: int, steps: int, n_features: int, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """log1p-like windows: a daily cycle per feature plus noise, 0.5% of windows with a spike (in chunks)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, steps, n_features), np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        phase = rng.uniform(0, 2 * np.pi, (m, 1, 1))
        angle = (2 * np.pi * np.arange(steps)[None, :, None] / (4 * steps) + phase
                 + np.arange(n_features)[None, None, :])
        x = np.clip(2 + 1.5 * np.sin(angle) + rng.normal(0, 0.2, (m, steps, n_features)), 0, None)
        spiky = rng.random(m) < 0.005
        x[spiky, rng.integers(0, steps), rng.integers(0, n_features)] += 4.0
        out[i : i + m] = x
    return out


def features_column(x: np.ndarray, layout: str) -> pa.Array | pa.ChunkedArray:
    n, steps, feats = x.shape
    if layout == "binary":
        return encode_windows(x)
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * steps * feats), pa.array(x.reshape(-1)))


def write_sequences(path: str, x: np.ndarray, names: list[str], days: int, entities: int,
                    layout: str = NEW_LAYOUT) -> None:
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
    end_us = start_us + steps * STEP_SECONDS * 1_000_000
    ts = pa.timestamp("us", tz="UTC")
    entity_names = pa.array([f"host-{e:05d}" for e in range(entities)], pa.string())
    table = pa.table({
        "entity": entity_names.take(pa.array(within % entities)),
        "window_start": pa.array(start_us, ts),
        "window_end": pa.array(end_us, ts),
        "date": pa.array((start_us // 86_400_000_000).astype(np.int32), pa.int32()).cast(pa.date32()),
        "n_steps": pa.array(np.full(n, steps, np.int32)),
        "n_features": pa.array(np.full(n, feats, np.int32)),
        "feature_names": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * feats),
                                                  pa.array(names * n, pa.string())) if n else
        pa.array([], pa.list_(pa.string())),
        "features": features_column(x, layout),
        "n_events": pa.array(np.full(n, 100, np.int64)),
        "n_abnormal": pa.array(np.zeros(n, np.int64)),
        "first_event_ts": pa.array(start_us, ts),
        "last_event_ts": pa.array(end_us, ts),
        "run_id": pa.array(np.full(n, "bench-score", object), pa.string()),
    })
    write_deltalake(path, table, mode="overwrite", partition_by=["date"],
                    writer_properties=WriterProperties(max_row_group_size=65_536))


def make_bundle(model_dir: Path, x: np.ndarray, names: list[str], hidden: int, top_templates: int) -> None:
    """An untrained (seeded) autoencoder with a real normaliser, typical errors, threshold at its p99."""
    torch.manual_seed(0)
    _, steps, feats = x.shape
    cfg = LSTMAutoencoderConfig(n_features=feats, window_steps=steps, hidden_size=hidden)
    model = LSTMAutoencoder(cfg).eval()
    sample = x[:: max(1, len(x) // 8192)][:8192]
    normaliser = Normaliser.fit(sample)
    scores, _, errors = flagged_step_errors(model, normaliser.transform(sample), -np.inf)
    save_bundle(model_dir, ModelBundle(
        model_cfg=cfg, state_dict=model.state_dict(), normaliser=normaliser,
        threshold=float(np.quantile(scores, 0.99)), feature_names=names,
        features={"step_seconds": STEP_SECONDS, "window_steps": steps, "stride_steps": 3,
                  "top_templates": top_templates, "transform": "log1p"},
        metrics={"val_feature_error": errors.mean(axis=(0, 1)).tolist()},
        training={"note": "bench/score.py: untrained"},
    ))


def slots_of(master: str) -> int:
    """Task slots of a ``local[N]`` / ``local[*]`` / ``local`` master."""
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master)
    if not m:
        raise SystemExit(f"--master must be local, local[N] or local[*], got {master!r}")
    return os.cpu_count() or 1 if m.group(1) == "*" else int(m.group(1) or 1)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spark_config(master: str, slots: int) -> SparkConfig:
    return SparkConfig(master=master, shuffle_partitions=slots, log_level="ERROR", driver_memory="3g",
                       conf={"spark.executorEnv.OMP_NUM_THREADS": "1"})


def zeros(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The floor's function: same input, the key columns and a zero score out."""
    for batch in batches:
        yield pa.RecordBatch.from_arrays([batch.column(name) for name in KEY_COLUMNS]
                                         + [pa.array(np.zeros(batch.num_rows))], names=[*KEY_COLUMNS, "score"])


def fresh_process(lake: Path, model_dir: Path, master: str, what: str) -> dict[str, float]:
    """Start-up and job seconds of ``what`` (``stage`` or ``bare``) in a new Python process and JVM."""
    out = subprocess.run([sys.executable, __file__, "--child", what, "--child-lake", str(lake), "--child-model",
                          str(model_dir), "--master", master], check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def child(args: argparse.Namespace) -> None:
    """One job in this fresh process: prints {"startup": s, "job": s} (start-up = imports + session)."""
    from loganomaly.lake.tables import Lake
    from loganomaly.runtime.spark import get_spark
    from loganomaly.scoring import stage

    slots = slots_of(args.master)
    spark = get_spark(spark_config(args.master, slots))
    lake = Lake(spark, args.child_lake, "auto")
    ready = time.perf_counter()
    if args.child in ("stage", "stage_spark"):
        cfg = Config(spark=spark_config(args.master, slots), lake=LakeConfig(root=args.child_lake, engine=lake.engine))
        if args.child == "stage_spark":
            cfg.score.local_max_bytes = 0  # the Spark path whatever the size
        stage.run(spark, cfg, args.child_model, lake=lake)
    else:
        lake.read("sequences").write.format("noop").mode("overwrite").save()
    job = time.perf_counter() - ready
    print(json.dumps({"startup": ready - STARTED, "job": job}))
    spark.stop()


STARTED = time.perf_counter()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=1_000_000)
    parser.add_argument("--scale-base", type=int, default=62_500, help="1x of the scale rows (4x, 16x follow)")
    parser.add_argument("--small", type=int, default=1_000, help="windows of the fixed-cost rows")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--templates", type=int, default=7, help="frequent-template features (24 features in all)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--days", type=int, default=4, help="dates (= Delta partitions, one file each)")
    parser.add_argument("--entities", type=int, default=4096)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-layouts", action="store_true", help="skip the binary-layout rows")
    parser.add_argument("--entity-baseline", action="store_true",
                        help="also time the stage with score.entity_baseline, every entity internal")
    parser.add_argument("--fresh-repeats", type=int, default=2, help="fresh-process runs of each fixed-cost job")
    parser.add_argument("--child", choices=("stage", "stage_spark", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--child-lake", help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # One torch thread per process: here, and in the Python workers through the environment they
    # inherit from the JVM started below.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if args.child:
        child(args)
        return
    slots = slots_of(args.master)
    names = feature_names_for([f"Tbench{i:08x}" for i in range(args.templates)])
    n = args.windows
    scales = [s for s in (args.scale_base, 4 * args.scale_base, 16 * args.scale_base) if s <= n]
    root = Path(tempfile.mkdtemp(prefix="bench-score-"))
    started = time.perf_counter()
    try:
        x = make_windows(n, args.steps, len(names))
        model_dir = root / "model"
        make_bundle(model_dir, x, names, args.hidden, args.templates)
        lakes = {size: root / f"lake-{size}" for size in {n, args.small, *scales}}
        for size, lake_root in lakes.items():
            write_sequences(str(lake_root / "sequences"), x[:size], names, args.days, args.entities)
        if not args.no_layouts:
            write_sequences(str(root / "lake-list" / "sequences"), x, names, args.days, args.entities, "list")
        log.warning("generated %d windows and %d tables in %.0fs", n, len(lakes) + (not args.no_layouts),
                    time.perf_counter() - started)
        bundle = load_bundle(model_dir)
        kind = kind_of(bundle.kind)
        assert isinstance(bundle, ModelBundle) and isinstance(kind, WindowKind)
        device = torch.device("cpu")
        model = bundle.build_model(device)
        sizes = scoring_sizes(kind.row_floats(bundle), 1)
        inference = Inference(batch_size=sizes.forward_rows)
        normalised = torch.from_numpy(bundle.normaliser.transform(x))
        column = features_column(x, NEW_LAYOUT)
        arrow_batches = [column.slice(i, sizes.arrow_rows) for i in range(0, n, sizes.arrow_rows)]

        def torch_model() -> None:
            with torch.inference_mode():
                for i in range(0, n, sizes.forward_rows):
                    model(normalised[i : i + sizes.forward_rows])

        def torch_score_path() -> None:
            for b in arrow_batches:
                kind.score_batch(bundle, model, device, b, args.top_k, inference)

        from loganomaly.lake.tables import Lake
        from loganomaly.runtime.spark import get_spark
        from loganomaly.scoring import stage

        spark = get_spark(spark_config(args.master, slots))
        try:
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(sizes.arrow_rows))
            lake = Lake(spark, lakes[n], "auto")
            engine = lake.engine
            files = spark.sparkContext.broadcast({name: Path(model_dir, name).read_bytes() for name in BUNDLE_FILES})

            def scan(lake_root: Path) -> DataFrame:
                return Lake(spark, lake_root, engine).read("sequences").select(*KEY_COLUMNS, "features")

            windows = scan(lakes[n])
            keys = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in windows.select(*KEY_COLUMNS).schema)
            score_fn = stage.score_partitions(kind, bundle.version, files, "features", args.top_k, inference)

            def noop(df: DataFrame) -> Callable[[], None]:
                return lambda: df.write.format("noop").mode("overwrite").save()

            floor = noop(windows.mapInArrow(zeros, f"{keys}, score double"))
            scoring = noop(windows.mapInArrow(score_fn, f"{keys}, {RESULT_COLUMNS}"))
            older = None if args.no_layouts else scan(root / "lake-list")
            floor_list = None if older is None else noop(older.mapInArrow(zeros, f"{keys}, score double"))
            scoring_list = None if older is None else noop(older.mapInArrow(score_fn, f"{keys}, {RESULT_COLUMNS}"))

            def stage_on(size: int, local_max_bytes: int | None = None, baseline: bool = False,
                         daily: bool = True) -> Callable[[], None]:
                score_cfg = ScoreConfig(explain_top_k=args.top_k, entity_baseline=baseline, baseline_daily=daily)
                if local_max_bytes is not None:
                    score_cfg.local_max_bytes = local_max_bytes
                cfg = Config(spark=spark_config(args.master, slots), lake=LakeConfig(root=str(lakes[size]),
                                                                                  engine=engine),
                             score=score_cfg)

                def go() -> None:
                    summary = stage.run(spark, cfg, model_dir, lake=Lake(spark, lakes[size], engine))
                    assert summary.windows == size, summary
                return go

            bare_small = noop(Lake(spark, lakes[args.small], engine).read("sequences"))
            plan: dict[str, Callable[[], None]] = {
                "model": torch_model, "path": torch_score_path, "floor": floor, "udf": scoring,
                "stage": stage_on(n), "small": stage_on(args.small), "small_spark": stage_on(args.small, 0),
                "bare": bare_small,
            }
            if floor_list is not None and scoring_list is not None:
                plan["floor_list"], plan["udf_list"] = floor_list, scoring_list
            for size in scales:
                if size != n:
                    plan[f"scale{size}"] = stage_on(size)
            if args.entity_baseline:
                # Every entity internal: the rule's shuffles and window expressions cover every row.
                entities = windows.select("entity").distinct().selectExpr(  # type: ignore[attr-defined]
                    "entity", "'internal' AS group", "'local_networks' AS group_rule",
                    "timestamp'2024-01-01 00:00:00' AS first_seen", "timestamp'2024-01-01 00:00:00' AS last_seen",
                    "1L AS events", "1L AS windows", "'bench' AS run_id")
                lake.write("entities", entities)
                plan["stage_baseline"] = stage_on(n, baseline=True)
                plan["stage_baseline_recent"] = stage_on(n, baseline=True, daily=False)
            # Warm-up, not counted: kernels, the JVM's JIT, Python workers loading the model.
            torch_score_path()
            for key in ("floor", "udf", "small", "small_spark", "bare", "small", "small_spark", "bare"):
                plan[key]()
            runs: dict[str, list[float]] = {key: [] for key in plan}
            for _ in range(args.repeats):
                for key, fn in plan.items():
                    runs[key].append(timed(fn))
            files.unpersist()
            partitions = windows.rdd.getNumPartitions()  # type: ignore[attr-defined]
        finally:
            spark.stop()
        fresh_runs: dict[str, list[dict[str, float]]] = {"bare": [], "stage": [], "stage_spark": []}
        for _ in range(args.fresh_repeats):
            for what in fresh_runs:
                fresh_runs[what].append(fresh_process(lakes[args.small], model_dir, args.master, what))
        log.warning("fresh runs: %s", fresh_runs)
        fresh = {what: {key: statistics.median(r[key] for r in rs) for key in ("startup", "job")}
                 for what, rs in fresh_runs.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    seconds = {k: statistics.median(v) for k, v in runs.items()}
    log.warning("seconds per run: %s", {k: [round(s, 2) for s in v] for k, v in runs.items()})
    base = n / seconds["path"]
    floor_rate = n / seconds["floor"] / slots
    print(f"\n{n:,} windows of {args.steps} x {len(names)}, hidden {args.hidden}, top_k {args.top_k}, "
          f"master {args.master} ({partitions} input partitions), engine {engine}, features stored as "
          f"{NEW_LAYOUT}, {sizes}, "
          f"median of {args.repeats}; torch threads 1 per process; {os.cpu_count()} cores (shared)")
    print("| path | cores | windows/s | per core | / torch score path | / no-op floor |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [("torch model(x) alone", 1, "model"), ("torch score path (kind.score_batch on Arrow batches)", 1, "path"),
            ("spark no-op mapInArrow floor", slots, "floor"), ("spark scoring UDF (score_partitions)", slots, "udf"),
            ("spark score stage (checks, UDF, 2 Delta writes)", slots, "stage"),
            ("spark score stage with score.entity_baseline (every entity internal)", slots, "stage_baseline"),
            ("the same without score.baseline_daily (the recent limit only)", slots, "stage_baseline_recent"),
            ("older array<float> layout: no-op floor", slots, "floor_list"),
            ("older array<float> layout: scoring UDF", slots, "udf_list")]
    for label, cores, key in rows:
        if key in seconds:
            per_core = n / seconds[key] / cores
            print(f"| {label} | {cores} | {n / seconds[key]:,.0f} | {per_core:,.0f} | {per_core / base:.2f} | "
                  f"{per_core / floor_rate:.2f} |")
        if key == "stage" and seconds["stage"] > seconds["small_spark"] and n > args.small:
            # The stage's rate once its fixed cost is paid: the extra windows over the extra time,
            # against the stage on --small windows timed in the same run, on the same (Spark) path.
            marginal = (n - args.small) / (seconds["stage"] - seconds["small_spark"])
            print(f"| spark score stage, marginal (its {args.small:,}-window run on the Spark path, "
                  f"{seconds['small_spark']:.2f}s, "
                  f"subtracted) | {cores} | {marginal:,.0f} | {marginal / cores:,.0f} | "
                  f"{marginal / cores / base:.2f} | {marginal / cores / floor_rate:.2f} |")
    print(f"\nfixed cost, {args.small:,} windows: warm session: stage {seconds['small']:.2f}s (scored by the "
          f"driver, score.local_max_bytes), the stage on the Spark path {seconds['small_spark']:.2f}s, bare job "
          f"(read sequences + noop write) {seconds['bare']:.2f}s, ratios {seconds['small'] / seconds['bare']:.2f} "
          f"and {seconds['small_spark'] / seconds['bare']:.2f}")
    print(f"fixed cost, {args.small:,} windows, fresh processes (from session ready to job end, median of "
          f"{args.fresh_repeats}): stage {fresh['stage']['job']:.2f}s, the stage on the Spark path "
          f"{fresh['stage_spark']['job']:.2f}s, bare {fresh['bare']['job']:.2f}s; stage / bare "
          f"{fresh['stage']['job'] / fresh['bare']['job']:.2f} (aim <= 2), Spark path / bare "
          f"{fresh['stage_spark']['job'] / fresh['bare']['job']:.2f} (start-up left out: "
          f"{fresh['stage']['startup']:.1f}s, {fresh['stage_spark']['startup']:.1f}s and "
          f"{fresh['bare']['startup']:.1f}s)")
    timing = {size: seconds["stage" if size == n else f"scale{size}"] for size in scales}
    if len(scales) > 1:
        first, last = scales[0], scales[-1]
        growth = ((timing[last] / last) / (timing[first] / first)) ** (1 / np.log2(last / first))
        print("scale: " + ", ".join(f"{size:,} windows {timing[size]:.1f}s ({size / timing[size] / slots:,.0f}/s "
                                    f"per core)" for size in scales)
              + f"; cost per window grows {growth:.2f}x per doubling")


if __name__ == "__main__":
    main()
