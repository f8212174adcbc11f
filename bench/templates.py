"""Template mining: grouping accuracy on loghub_2k (default config and per-system presets) and speed.

Accuracy is the logpai benchmark's grouping accuracy: a message is correctly grouped iff the set of
messages in its predicted group equals the set in its ground-truth group (``EventId``). Two groupings are
scored: Drain's learning-time grouping (``fit_predict``, the benchmark's definition) and the grouping the
pipeline produces (``fit`` on the 2k lines, then ``match`` on them). Speed: messages/s of fit, of match
without cache and with cache on ~200k lines (all systems' lines repeated), one core.

Usage:
    .venv/bin/python bench/templates.py [--data /work/shared/data] [--lines 200000]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from loganomaly.ingest.templates.masking import PRESETS, TemplateConfig
from loganomaly.ingest.templates.miner import Templates

SYSTEMS = ("HDFS", "Hadoop", "Spark", "Zookeeper", "BGL", "HPC", "Thunderbird", "Windows", "Linux", "Android",
           "HealthApp", "Apache", "Proxifier", "OpenSSH", "OpenStack", "Mac")


def load_system(root: Path, system: str) -> tuple[list[str], list[str]]:
    """Messages (``Content``) and ground-truth event ids of one loghub_2k system."""
    folder = root / system
    candidates = [folder / f"{system}_2k.log_structured.csv", folder / f"{system}_2k.log_structured_corrected.csv"]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        raise FileNotFoundError(f"no structured csv for {system} in {folder}")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"] for r in rows], [r["EventId"] for r in rows]


def grouping_accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Fraction of messages whose predicted group is exactly their ground-truth group."""
    truth_size = Counter(truth)
    members: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(predicted):
        members[p].append(i)
    correct = 0
    for idx in members.values():
        truths = {truth[i] for i in idx}
        if len(truths) == 1 and truth_size[truth[idx[0]]] == len(idx):
            correct += len(idx)
    return correct / len(truth) if truth else 0.0


def evaluate(config: TemplateConfig, messages: list[str], truth: list[str]) -> tuple[float, float, float]:
    """(learning-time accuracy, fit-then-match accuracy, fit messages/s)."""
    t = Templates(config)
    start = time.perf_counter()
    learned = t.fit_predict(messages)
    rate = len(messages) / (time.perf_counter() - start)
    matched = [m.template_id for m in t.match_many(messages)]
    return grouping_accuracy(truth, learned), grouping_accuracy(truth, matched), rate


def speed(messages: list[str], lines: int) -> list[tuple[str, float]]:
    corpus = (messages * (lines // len(messages) + 1))[:lines]
    random.Random(0).shuffle(corpus)
    out = []
    t = Templates(TemplateConfig())
    start = time.perf_counter()
    t.fit(corpus)
    out.append(("fit (default masks)", len(corpus) / (time.perf_counter() - start)))
    for strategy in ("never", "fallback", "always"):
        m = Templates.from_json(t.to_json().replace('"match_strategy":"fallback"', f'"match_strategy":"{strategy}"'),
                                cache_size=0)
        start = time.perf_counter()
        m.match_many(corpus)
        out.append((f"match, no cache, {strategy}", len(corpus) / (time.perf_counter() - start)))
    cached = Templates.from_json(t.to_json())
    start = time.perf_counter()
    cached.match_many(corpus)
    out.append(("match, cache (cold: first pass)", len(corpus) / (time.perf_counter() - start)))
    start = time.perf_counter()
    cached.match_many(corpus)
    out.append(("match, cache (warm: second pass)", len(corpus) / (time.perf_counter() - start)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data", help="folder holding loghub_2k/ (or loghub_2k itself)")
    parser.add_argument("--lines", type=int, default=200_000, help="lines for the speed test")
    args = parser.parse_args()
    root = Path(args.data)
    if (root / "loghub_2k").is_dir():
        root = root / "loghub_2k"
    if not (root / "HDFS").is_dir():
        print(f"skipped: no loghub_2k data under {args.data} (pass --data DIR)")
        sys.exit(0)

    print("| system | default: learn | default: match | preset: learn | preset: match | preset fit msg/s |")
    print("|---|---:|---:|---:|---:|---:|")
    sums = [0.0, 0.0, 0.0, 0.0]
    everything: list[str] = []
    for system in SYSTEMS:
        messages, truth = load_system(root, system)
        everything.extend(messages)
        d_learn, d_match, _ = evaluate(TemplateConfig(), messages, truth)
        p_learn, p_match, rate = evaluate(PRESETS[system], messages, truth)
        for i, v in enumerate((d_learn, d_match, p_learn, p_match)):
            sums[i] += v
        print(f"| {system} | {d_learn:.3f} | {d_match:.3f} | {p_learn:.3f} | {p_match:.3f} | {rate:,.0f} |")
    n = len(SYSTEMS)
    print(f"| **mean** | {sums[0] / n:.3f} | {sums[1] / n:.3f} | {sums[2] / n:.3f} | {sums[3] / n:.3f} | |")
    print()
    print(f"speed on {args.lines:,} lines (all systems' 2k lines repeated and shuffled), one core:")
    print("| operation | messages/s |")
    print("|---|---:|")
    for name, rate in speed(everything, args.lines):
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
