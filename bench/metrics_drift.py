"""Metric series that drift: does the false-alarm rate stay at the budget while incidents are found?

Usage::

    .venv/bin/python bench/metrics_drift.py --work build/metrics_drift
    .venv/bin/python bench/metrics_drift.py --hosts 3 --days 8 --incidents 8 --set train.threshold_quantile=0.99

The synthetic generator writes one-minute CPU, memory and disk I/O series per host with benign
level shifts (30 %, host ``h`` shifting ``h`` hours after host 0, 45 % of the way through), a daily
cycle and slow drift (2 %/day), plus ``--incidents`` labelled incidents of 20 minutes (CPU stuck
at 100 %, disk I/O collapsing). The first ``--train-share`` (15 %) of the time range trains
(``pipeline --train-input``, profile ``metrics``, ``train.normal_only``: incident windows left
out), the rest is scored (``--score-input``), and the scored windows are labelled by the
generator's interval file with the same rule ``evaluate`` uses (a window is an incident window
when it overlaps an incident of its host).

Reported: the share of all scored windows flagged, the false-positive rate on normal windows
against the budget (``train.alert_budget``, else ``1 - train.threshold_quantile``), the same rate
before and after each host's level shift and per day, and split by where the false alarms sit:
the scored input's first hour (the scoring lake starts empty, so every host starts cold), the
windows overlapping the hour after a level shift, and the rest; then window recall on incident
windows and incident recall (incidents with at least one flagged window). ``--set key=value``
passes overrides to the config (``--set features.entity_features=false --set
features.metric_levels=true`` is the ``metrics`` profile as it was before it judged each metric
against the host's trailing median). Prints a markdown table and writes it to
``<work>/metrics_drift.md``.

Settings are chosen on another seed (``--seed 5``), never on the reported one (11).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drift_data import fresh_drifting_series
from loganomaly import pipeline
from loganomaly.config import load_config
from loganomaly.evaluation import stage as evaluation
from loganomaly.evaluation.metrics import evaluate as metrics_of
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import load_bundle
from loganomaly.models.window import alert_budget

log = logging.getLogger("bench.metrics_drift")


def split_by_time(path: Path, train_share: float, out: Path) -> tuple[Path, Path, str]:
    """The generator's CSV cut at ``train_share`` of its time range: (train file, score file, cut time)."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    times = sorted({r[0] for r in body})
    cut = times[int(len(times) * train_share)]
    out.mkdir(parents=True, exist_ok=True)
    train, score = out / "train.csv", out / "score.csv"
    for target, keep in ((train, lambda t: t < cut), (score, lambda t: t >= cut)):
        with target.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(r for r in body if keep(r[0]))
    return train, score, cut


def _rate(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else float("nan")


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="build/metrics_drift", help="generated data, lakes and model go here")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--incidents", type=int, default=8)
    parser.add_argument("--train-share", type=float, default=0.15, help="share of the time range that trains")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (repeatable), e.g. train.threshold_quantile=0.99")
    args = parser.parse_args(argv)
    work = Path(args.work)
    started = time.perf_counter()
    data = fresh_drifting_series(work, args.hosts, args.days, args.incidents, args.seed)
    train_file, score_file, cut = split_by_time(data.files[0], args.train_share, work / "inputs")
    cfg = load_config(profile="metrics",
                      overrides=[f"lake.root={work / 'lake'}", "train.normal_only=true", *args.overrides])

    from pyspark.sql import functions as F

    from loganomaly.runtime.spark import get_spark

    spark = get_spark(cfg.spark)
    model_dir = work / "model"
    pipeline.run_split(spark, cfg, model_dir, [str(train_file)], [str(score_file)])
    lake = Lake(spark, cfg.lake.root, cfg.lake.engine)
    version = load_bundle(model_dir).version
    windows = (lake.read("scores").where(F.col("model_version") == F.lit(version))
               .select(*evaluation.WINDOW_KEYS, "score", "threshold", "is_anomaly"))
    _, intervals = evaluation.read_label_file(data.labels_path)
    scored: pd.DataFrame = (evaluation.label_windows_by_intervals(spark, windows, intervals)
              .select("entity", F.unix_timestamp("window_start").alias("start"),
                      F.unix_timestamp("window_end").alias("end"), "score", "threshold", "is_anomaly", "label")
              .toPandas())
    scores, labels = scored["score"].to_numpy(np.float64), scored["label"].to_numpy(np.int64)
    threshold = float(scored["threshold"].iloc[0])
    # The stored flags: score > threshold, less what score.entity_baseline cleared.
    flagged = scored["is_anomaly"].to_numpy(bool)
    start = scored["start"].to_numpy(np.int64)
    days = np.empty(len(scored), dtype=object)
    day_of = [dt.datetime.fromtimestamp(int(s), dt.timezone.utc).date().isoformat() for s in start]
    days[:] = list(zip(scored["entity"], day_of, strict=True))
    m = metrics_of(scores, labels, threshold, days, flagged)

    shift_at = {host: int(t.timestamp()) for host, t in data.level_shifts}
    after_shift = np.array([s >= shift_at.get(e, np.iinfo(np.int64).max) for e, s in zip(scored["entity"], start,
                                                                                          strict=True)])
    normal = labels == 0
    # Where the false alarms sit: the scored input's first hour (a fresh lake, so every host starts
    # cold: judged against its peer group's training baseline until it has history), the hour
    # after each host's level shift (a trailing baseline needs time to follow it), and the rest.
    end = scored["end"].to_numpy(np.int64)
    cut_s = int(dt.datetime.fromisoformat(cut.replace("Z", "+00:00")).timestamp())
    first_hour = start < cut_s + 3600
    shift_hour = np.array([shift_at.get(e, -1) >= 0 and s < shift_at[e] + 3600 and t > shift_at[e]
                           for e, s, t in zip(scored["entity"], start, end, strict=True)])
    budget = alert_budget(cfg)
    cut_at = dt.datetime.fromisoformat(cut.replace("Z", "+00:00"))
    scored_incidents = [a for a in data.anomalies if a.start >= cut_at]
    found = 0
    for a in scored_incidents:
        a0, a1 = a.start.timestamp(), a.end.timestamp()
        hit = (scored["entity"].to_numpy() == a.entity) & (start < a1) & (scored["end"].to_numpy() > a0) & flagged
        found += bool(hit.any())

    rows = [
        ("scored windows (incident windows)", f"{len(scores)} ({int(labels.sum())})"),
        ("threshold stored by train", f"{threshold:.4g}"),
        ("share of all scored windows flagged", _fmt(_rate(flagged))),
        ("budget (false alarms accepted on normal windows)", _fmt(budget)),
        ("FPR on normal windows", _fmt(m["fpr"])),
        ("FPR on normal windows before each host's level shift", _fmt(_rate(flagged[normal & ~after_shift]))),
        ("FPR on normal windows after it", _fmt(_rate(flagged[normal & after_shift]))),
        ("FPR on normal windows in the scored input's first hour (cold start)", _fmt(_rate(flagged[normal & first_hour]))),
        ("FPR on normal windows overlapping the hour after a level shift",
         _fmt(_rate(flagged[normal & shift_hour & ~first_hour]))),
        ("FPR on the other normal windows", _fmt(_rate(flagged[normal & ~shift_hour & ~first_hour]))),
        ("false alarms: first hour / hour after a shift / other",
         f"{int((flagged & normal & first_hour).sum())} / {int((flagged & normal & shift_hour & ~first_hour).sum())}"
         f" / {int((flagged & normal & ~shift_hour & ~first_hour).sum())}"),
        ("recall on incident windows", _fmt(m["recall"])),
        ("incidents in the scored part found (a flagged window overlaps)", f"{found} of {len(scored_incidents)}"),
        ("alerts per host-day", _fmt(m["alerts_per_entity_day"])),
        ("ROC-AUC", _fmt(m["roc_auc"])),
        ("PR-AUC", _fmt(m["pr_auc"])),
        ("F1 (flagging every window)", f"{_fmt(m['f1'])} ({_fmt(m['flag_all_f1'])})"),
    ]
    for day in sorted(set(day_of)):
        sel = normal & (np.array(day_of) == day)
        rows.append((f"FPR on normal windows, {day}", _fmt(_rate(flagged[sel]))))
    text = "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    settings = (f"{args.hosts} hosts x {args.days} days, {args.incidents} incidents, seed {args.seed}, "
                f"train on the first {args.train_share:.0%} (until {cut}), overrides {args.overrides or 'none'}; "
                f"{time.perf_counter() - started:.0f}s")
    (work / "metrics_drift.md").write_text(settings + "\n\n" + text + "\n")
    print(settings)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
