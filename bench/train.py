"""Training throughput: Delta -> Arrow shard reader -> training step, against in-memory tensors.

Writes its own ``sequences``-shaped table (random windows, ``features`` in the stored binary layout,
delta-rs) in a temp dir, then measures,
in the same process and with the same model, data, batch size and epochs:

* ``in-memory``: an :class:`~loganomaly.models.autoencoder.AutoencoderTask` over arrays already
  normalised in memory, trained by :func:`loganomaly.training.loop.fit`;
* ``delta``: :func:`loganomaly.training.loop.train_work` on an
  :class:`~loganomaly.models.autoencoder.AutoencoderWork` (what every backend's rank runs), timed
  from planning the shards (time columns scan), reading the rank's Parquet row groups and fitting
  the normaliser, to the end of training; the ratio ``delta / in-memory`` is the cost of the full
  path (aim: >= 0.95); once per reader (``--reader``): the Arrow reader and, where it runs, Petastorm;
* ``read only``: windows/s of each reader loading one rank's whole training shard (no training);
* ``torch_distributor`` with 1 and 2 processes on ``local[2]`` (skip with ``--no-distributed``), through
  :func:`loganomaly.training.backends.run_backend`: wall time including torchrun start-up, and the
  training loop's own samples/s, per reader.

Runs alternate (memory first in even repeats, the readers first in odd ones) and the median of
``--repeats`` is reported, because the machine's cores are shared.

Usage:
    python bench/train.py [--windows 8192] [--epochs 5] [--batch-size 64] [--hidden 32] [--no-distributed]
                          [--reader arrow|petastorm|both]
    .venv-compat/bin/python bench/train.py        # both readers (Petastorm runs only in make compat's env)
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import loganomaly.features.split as split_module
from loganomaly.config import TrainConfig
from loganomaly.features.split import Selection, plan_shards, time_range, write_windows
from loganomaly.features.windows import FEATURE_NAMES
from loganomaly.lake.snapshot import Snapshot
from loganomaly.models.autoencoder import AutoencoderTask, AutoencoderWork, LSTMAutoencoderConfig
from loganomaly.runtime.collective import Collective, epoch_seed, shard_indices
from loganomaly.training.loop import fit, train_work
from loganomaly.training.readers.arrow import ShardReader

log = logging.getLogger("bench.train")


def make_table(directory: Path, n: int, steps: int, seed: int = 0) -> Snapshot:
    """Smooth periodic windows plus noise, 10 minutes apart, row groups of 2048 rows."""
    rng = np.random.default_rng(seed)
    f = len(FEATURE_NAMES)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    angle = 2 * np.pi * np.arange(steps)[None, :, None] / steps + phase + np.arange(f)[None, None, :]
    x = (5 + 3 * np.sin(angle) + rng.normal(0, 0.3, (n, steps, f))).astype(np.float32)
    path = str(directory / "sequences")
    version = write_windows(path, x, np.arange(n) * 600.0, 60.0, max_rows_per_group=2048)
    return Snapshot(path, version)


def selections(snapshot: Snapshot) -> list[Selection]:
    lo, hi = time_range(snapshot) or (0.0, 0.0)
    return [Selection(lo, hi, 0.25, "train"), Selection(lo, hi, 0.25, "validation")]


def petastorm_runs() -> bool:
    """Petastorm importable and usable (pyarrow < 15): the compatibility environment."""
    try:
        from loganomaly.training.readers.petastorm import import_petastorm

        import_petastorm()
    except Exception:
        return False
    return True


def read_only(snapshot: Snapshot, reader: str, seed: int) -> float:
    """Windows/s of one rank loading the whole training shard with ``reader`` (plan not counted)."""
    train, _ = plan_shards(snapshot, selections(snapshot), seed)
    started = time.perf_counter()
    if reader == "arrow":
        n = len(ShardReader(train, 0, 1).load())
    else:
        from loganomaly.training.readers.petastorm import PetastormShardReader

        n = len(PetastormShardReader(train, 0, 1).load(Collective()))
    return n / (time.perf_counter() - started)


def run_delta(snapshot: Snapshot, model_cfg: LSTMAutoencoderConfig, cfg: TrainConfig) -> tuple[float, int, float]:
    """(wall seconds, samples trained, seconds inside the epoch loops).

    Planning starts cold, as in a fresh ``loganomaly train`` process: the time columns kept from an
    earlier scan of this snapshot (:data:`loganomaly.features.split.TIME_CACHE_ROWS`) are dropped.
    """
    split_module._time_cache.clear()
    started = time.perf_counter()
    train, val = plan_shards(snapshot, selections(snapshot), cfg.seed)
    result = train_work(AutoencoderWork(train, val, model_cfg), cfg, comm=Collective())
    return (time.perf_counter() - started, sum(int(h["samples"]) for h in result.history),
            sum(float(h["seconds"]) for h in result.history))


def run_memory(train_x: np.ndarray, val_x: np.ndarray, model_cfg: LSTMAutoencoderConfig, cfg: TrainConfig
               ) -> tuple[float, int, float]:
    started = time.perf_counter()
    n = len(train_x)

    def order(epoch: int) -> np.ndarray:  # one rank: every window, reshuffled per epoch
        return shard_indices(n, 0, 1, epoch_seed(cfg.seed, epoch))

    result = fit(AutoencoderTask(train_x, order, val_x, model_cfg), cfg, Collective())
    return (time.perf_counter() - started, sum(int(h["samples"]) for h in result.history),
            sum(float(h["seconds"]) for h in result.history))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (default 1: stable on shared cores, and what torchrun "
                        "gives each of several ranks)")
    parser.add_argument("--no-distributed", action="store_true")
    parser.add_argument("--reader", choices=["arrow", "petastorm", "both"],
                        help="shard reader(s) to measure (default: both where Petastorm runs, else arrow)")
    args = parser.parse_args(argv)
    readers = {"arrow": ["arrow"], "petastorm": ["petastorm"], "both": ["arrow", "petastorm"]}[
        args.reader or ("both" if petastorm_runs() else "arrow")]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # torchrun keeps an OMP_NUM_THREADS it finds, so 1- and 2-process runs use the same threads per rank.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=3e-3, patience=0, seed=1,
                      device="cpu")
    model_cfg = LSTMAutoencoderConfig(n_features=len(FEATURE_NAMES), window_steps=args.steps, hidden_size=args.hidden)
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = make_table(Path(tmp), args.windows, args.steps)
        # The in-memory baseline gets the very windows and normaliser the full path uses.
        train_plan, val_plan = plan_shards(snapshot, selections(snapshot), cfg.seed)
        one = Collective()
        from loganomaly.models.normaliser import fit_normaliser

        raw_train = ShardReader(train_plan, 0, 1).load().x
        norm = fit_normaliser(raw_train, one)
        train_x = norm.transform(raw_train)
        val_x = norm.transform(ShardReader(val_plan, 0, 1, equal=False).load().x)
        run_memory(train_x, val_x, model_cfg, cfg)  # warm-up (allocator, oneDNN kernels), not counted

        memory_rates: list[float] = []
        memory_loop: list[float] = []
        delta_rates: dict[str, list[float]] = {r: [] for r in readers}
        delta_loop: dict[str, list[float]] = {r: [] for r in readers}
        setup: dict[str, list[float]] = {r: [] for r in readers}
        reads: dict[str, list[float]] = {r: [] for r in readers}
        def memory_run() -> None:
            seconds, samples, loop = run_memory(train_x, val_x, model_cfg, cfg)
            memory_rates.append(samples / seconds)
            memory_loop.append(samples / loop)

        def delta_runs() -> None:
            for reader in readers:
                seconds, samples, loop = run_delta(snapshot, model_cfg, replace(cfg, reader=reader))  # type: ignore[arg-type]
                delta_rates[reader].append(samples / seconds)
                delta_loop[reader].append(samples / loop)
                setup[reader].append(seconds - loop)
                reads[reader].append(read_only(snapshot, reader, cfg.seed))

        # The order alternates between repeats: on shared cores, whatever runs second in every pair
        # would otherwise carry any drift in the machine's load.
        for i in range(args.repeats):
            for fn in ((memory_run, delta_runs) if i % 2 == 0 else (delta_runs, memory_run)):
                fn()
        memory = statistics.median(memory_rates)
        rows.append(("in-memory tensors (end to end)", "1", f"{memory:,.0f}",
                     f"loop only {statistics.median(memory_loop):,.0f}/s"))
        for reader in readers:
            delta = statistics.median(delta_rates[reader])
            rows.append((f"Delta -> {reader} reader -> train (end to end)", "1", f"{delta:,.0f}",
                         f"ratio {delta / memory:.3f}; loop only {statistics.median(delta_loop[reader]):,.0f}/s; "
                         f"plan+read+normaliser {statistics.median(setup[reader]):.2f}s once per run"))
        for reader in readers:
            rows.append((f"{reader} reader, read only (windows/s)", "1", f"{statistics.median(reads[reader]):,.0f}",
                         "one rank loads the whole training shard"))

        if not args.no_distributed:
            from loganomaly.config import SparkConfig
            from loganomaly.runtime.spark import get_spark
            from loganomaly.training.backends import run_backend

            spark = get_spark(SparkConfig(master="local[2]", shuffle_partitions=2, log_level="ERROR",
                                          driver_memory="1g"))
            try:
                for reader in readers:
                    for n in (1, 2):
                        started = time.perf_counter()
                        result = run_backend(spark, "torch_distributor", AutoencoderWork(train_plan, val_plan, model_cfg),
                                             replace(cfg, reader=reader), num_processes=n)
                        wall = time.perf_counter() - started
                        samples = sum(int(h["samples"]) for h in result.history)
                        loop = sum(float(h["seconds"]) for h in result.history)
                        rows.append((f"torch_distributor, {reader} (loop; wall {wall:.1f}s)", str(n),
                                     f"{samples / loop:,.0f}",
                                     f"wall {samples / wall:,.0f}/s, val {result.best_val_loss:.4f}"))
            finally:
                spark.stop()

    print(f"\n{args.windows} windows x {args.steps} steps x {len(FEATURE_NAMES)} features, hidden {args.hidden}, "
          f"batch {args.batch_size}, {args.epochs} epochs, {args.threads} thread(s) per process, "
          f"{os.cpu_count()} cores")
    print(f"{'path':50} {'procs':>5} {'samples/s':>10}  note")
    for name, procs, rate, note in rows:
        print(f"{name:50} {procs:>5} {rate:>10}  {note}")


if __name__ == "__main__":
    main()
