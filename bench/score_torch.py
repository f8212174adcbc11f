"""Scoring throughput without Spark: ``kind.score_batch`` against the network alone, on this machine's device.

Needs only torch, numpy, pyarrow and the package's models (no PySpark, no Java), so it runs on a GPU
machine that has no Spark. It builds an untrained, seeded LSTM autoencoder bundle in memory (inference
costs the same as a trained one) with the threshold at the 99th percentile of its scores (about 1% of
windows flagged and explained, as on a real night), and measures on the same windows:

* ``model(x) alone``: forward passes over the normalised windows already on the device, in
  forward batches of the scoring size rule (:func:`loganomaly.models.sizing.scoring_sizes`);
* ``kind.score_batch``: what a Spark task runs per Arrow batch: the ``features`` column ->
  ``[N, T, F]`` windows, normalise, copy to the device, forward, scores, explanations of the flagged
  windows, in Arrow batches of the same rule.

Usage:
    python bench/score_torch.py [--windows 200000] [--device auto|cpu|cuda] [--bf16] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401
import torch

from loganomaly.features.layout import encode_windows
from loganomaly.models.autoencoder import KIND, LSTMAutoencoder, LSTMAutoencoderConfig, flagged_step_errors
from loganomaly.models.common import inference_autocast
from loganomaly.models.kind import Inference, result_arrays
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.sizing import scoring_sizes
from loganomaly.models.window import ModelBundle
from loganomaly.runtime.device import pick_device

log = logging.getLogger("bench.score_torch")


def make_windows(n: int, steps: int, n_features: int, seed: int = 0) -> np.ndarray:
    """log1p-like windows: a daily cycle per feature plus noise, 0.5% of windows with a spike."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    angle = 2 * np.pi * np.arange(steps)[None, :, None] / (4 * steps) + phase + np.arange(n_features)[None, None, :]
    x = np.clip(2 + 1.5 * np.sin(angle) + rng.normal(0, 0.2, (n, steps, n_features)), 0, None)
    spiky = rng.random(n) < 0.005
    x[spiky, rng.integers(0, steps), rng.integers(0, n_features)] += 4.0
    return x.astype(np.float32)


def make_bundle(x: np.ndarray, hidden: int, device: torch.device) -> ModelBundle:
    """An untrained (seeded) autoencoder bundle, threshold at the 99th percentile of its scores."""
    torch.manual_seed(0)
    _, steps, feats = x.shape
    cfg = LSTMAutoencoderConfig(n_features=feats, window_steps=steps, hidden_size=hidden)
    model = LSTMAutoencoder(cfg).to(device).eval()
    normaliser = Normaliser.fit(x[:4096])
    score, _, errors = flagged_step_errors(model, normaliser.transform(x[:4096]), -np.inf, device=device)
    return ModelBundle(
        model_cfg=cfg, state_dict={k: v.cpu() for k, v in model.state_dict().items()}, normaliser=normaliser,
        threshold=float(np.quantile(score, 0.99)), feature_names=[f"f{i}" for i in range(feats)],
        features={"step_seconds": 300, "window_steps": steps, "transform": "log1p"},
        metrics={"val_feature_error": errors.mean(axis=(0, 1)).tolist()}, version="bench",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--features", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a Spark task's spark.task.cpus)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    x = make_windows(args.windows, args.steps, args.features)
    bundle = make_bundle(x, args.hidden, device)
    model = bundle.build_model(device)
    sizes = scoring_sizes(args.steps * args.features, args.threads)
    inference = Inference(batch_size=sizes.forward_rows, bf16=args.bf16)
    n = len(x)
    on_device = torch.from_numpy(bundle.normaliser.transform(x)).to(device)
    column = encode_windows(x)  # the stored layout of sequences.features (binary float32 tensors)
    batches = [column.slice(i, sizes.arrow_rows) for i in range(0, n, sizes.arrow_rows)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def model_alone() -> None:
        with torch.inference_mode():
            for i in range(0, n, sizes.forward_rows):
                with inference_autocast(device, args.bf16):
                    model(on_device[i : i + sizes.forward_rows])
        sync()

    flagged = [0]

    def score_batch() -> None:
        flagged[0] = 0
        for b in batches:
            out = KIND.score_batch(bundle, model, device, b, args.top_k, inference)
            flagged[0] += len(out) - pa.compute.sum(pa.compute.equal(result_arrays(out)[2], "")).as_py()
        sync()

    model_alone()  # warm-up: kernels, allocator
    score_batch()
    runs: dict[str, list[float]] = {"model": [], "batch": []}
    for _ in range(args.repeats):
        for key, fn in (("model", model_alone), ("batch", score_batch)):
            start = time.perf_counter()
            fn()
            runs[key].append(time.perf_counter() - start)
    seconds = {k: statistics.median(v) for k, v in runs.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} torch thread(s)"
    print(f"\n{n:,} windows of {args.steps} x {args.features}, hidden {args.hidden}, {name}, bf16 "
          f"{args.bf16 and device.type == 'cuda'}, torch {torch.__version__}, {os.cpu_count()} cores, "
          f"{sizes}, {flagged[0]} windows explained, median of {args.repeats}")
    print("| path | windows/s | / model alone |")
    print("|---|---:|---:|")
    for label, key in (("model(x) alone", "model"), ("kind.score_batch (Arrow in, explained scores out)", "batch")):
        print(f"| {label} | {n / seconds[key]:,.0f} | {seconds['model'] / seconds[key]:.2f} |")
    assert "pyspark" not in sys.modules, "bench/score_torch.py must run without Spark"


if __name__ == "__main__":
    main()
