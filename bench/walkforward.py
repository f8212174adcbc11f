"""Walk-forward: the nightly cycle on a growing lake per model, old calibration against screened, same run.

Usage::

    .venv/bin/python bench/walkforward.py --work build/walkforward
    .venv/bin/python bench/walkforward.py --hosts 3 --days 8 --warmup 2 --incidents 12 --set train.epochs=20

The synthetic generator writes one-minute CPU, memory and disk I/O series per host with benign
level shifts, a daily cycle and slow drift (:class:`~loganomaly.ingest.synthetic.MetricDrift`),
plus ``--incidents`` labelled 20-minute incidents; the series is cut into one CSV per day. Each
model runs the nightly cycle on a lake of its own (``lake-old``, ``lake-screened``: the same files
in the same order), because a model's flags depend on its own earlier scores (the per-entity
score baseline reads its lineage's rows of earlier days), and in one shared lake each model's
rows of a date would replace the other's. The first ``--warmup``
days are ingested and featurized at once and both models are trained ``--until`` the next day.
Then, for every later day X, what a nightly job does (``metrics`` profile, unlabelled:
``train.normal_only`` off, incidents stay in the training period), in each lake:

* ``ingest`` day X's file, ``featurize --since X`` (windows that need earlier history are built
  from the lake);
* ``score --from X --to X`` (the model trained the night before, ``--until X``);
* ``train --until X+1`` into the model's directory (a fresh model each night, or ``--init-from``
  the previous one with ``--continue``), so the screened one is screened by the model it replaces.

The two models differ only in calibration: ``old`` turns screening and the stability check off
(``train.screen_mad_k=null``, ``train.screen_previous=false``, ``train.threshold_max_ratio=null``),
``screened`` keeps the defaults. Per day and model: the stored threshold, its ratio to the day
before, the false-positive rate on benign windows at that threshold (windows are labelled by the
generator's interval file: a window overlapping an incident of its host is an incident window),
and the incidents of that day found (a flagged window overlaps). Totals at the end. Prints
markdown and writes it to ``<work>/walkforward.md``. One Spark session for the whole run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from drift_data import fresh_drifting_series
from loganomaly.config import Config, load_config
from loganomaly.evaluation import stage as evaluation
from loganomaly.features import stage as featurize
from loganomaly.ingest import stage as ingest
from loganomaly.ingest.synthetic import InjectedAnomaly
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import load_bundle
from loganomaly.scoring import stage as score
from loganomaly.training import stage as train

log = logging.getLogger("bench.walkforward")

OLD = ["train.screen_mad_k=null", "train.screen_previous=false", "train.threshold_max_ratio=null"]


def split_by_day(path: Path, out: Path) -> dict[str, Path]:
    """The generator's CSV as one file per UTC date (``YYYY-MM-DD`` -> file), header on each."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    by_day: dict[str, list[list[str]]] = defaultdict(list)
    for row in body:
        by_day[row[0][:10]].append(row)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for day, day_rows in sorted(by_day.items()):
        target = out / day / "metrics.csv"
        target.parent.mkdir()
        with target.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(day_rows)
        files[day] = target
    return files


def day_results(spark: Any, lake: Lake, version: str, day: str, intervals: list[tuple[Any, ...]],
                incidents: list[InjectedAnomaly]) -> dict[str, Any]:
    """One model's scores of one day, judged against the labels: FPR on benign windows, incidents found."""
    from pyspark.sql import functions as F

    windows = (lake.read("scores")
               .where((F.col("model_version") == F.lit(version)) & (F.col("date") == F.lit(dt.date.fromisoformat(day))))
               .select(*evaluation.WINDOW_KEYS, "is_anomaly"))
    rows: Any = (evaluation.label_windows_by_intervals(spark, windows, intervals)
            .select("entity", F.unix_timestamp("window_start").alias("start"),
                    F.unix_timestamp("window_end").alias("end"), "is_anomaly", "label").toPandas())
    flagged = rows["is_anomaly"].to_numpy(bool)
    benign = rows["label"].to_numpy(np.int64) == 0
    found = 0
    for a in incidents:
        a0, a1 = a.start.timestamp(), a.end.timestamp()
        hit = (rows["entity"].to_numpy() == a.entity) & (rows["start"].to_numpy() < a1) & (rows["end"].to_numpy() > a0)
        found += bool((hit & flagged).any())
    return {"windows": len(rows), "benign": int(benign.sum()), "benign_flagged": int((flagged & benign).sum()),
            "found": found, "incidents": len(incidents)}


def k_sweep(spark: Any, cfg: Config, lake: Lake, model_dir: Path, until: str) -> list[str]:
    """How each ``train.screen_mad_k`` screens the last model's own validation windows (labelled by the data).

    The validation windows of the training period and their incident labels (``n_abnormal``) are
    what a default may be chosen on; the scored days are not used.
    """
    from loganomaly.models.autoencoder import screened_threshold, window_errors
    from loganomaly.models.window import ModelBundle
    from loganomaly.registry import MODEL_KINDS, READERS
    from loganomaly.runtime.collective import Collective

    at = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, train_until=until, init_from=""))
    plan = MODEL_KINDS.get("autoencoder").plan(spark, at, lake, model_dir)
    shard, _ = READERS.get("arrow").read(plan.context["val_plan"], Collective(), equal=False)
    bundle = load_bundle(model_dir)
    assert isinstance(bundle, ModelBundle)
    groups = bundle.peers.groups_of(shard.x) if bundle.peers is not None else None
    x = bundle.normalise(shard.x, groups) if groups is not None else bundle.normaliser.transform(shard.x)
    scores, _ = window_errors(bundle.build_model(), x)
    incident = (shard.abnormal if shard.abnormal is not None else np.zeros(len(scores))) > 0
    lines = [f"Validation windows of the last training period ({len(scores)}, {int(incident.sum())} of them incident "
             f"windows), scored by its unscreened model:", "",
             "| train.screen_mad_k | incident windows screened | benign windows screened | threshold | benign "
             "validation windows above it |", "|---|---|---|---|---|"]
    for k in (3.0, 4.0, 5.0, 6.0, 8.0, None):
        k_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, screen_mad_k=k))
        threshold, record = screened_threshold(scores, k_cfg)
        out = ~record["keep"]
        lines.append(f"| {k if k is not None else 'off'} | {int((out & incident).sum())} of {int(incident.sum())} | "
                     f"{int((out & ~incident).sum())} of {int((~incident).sum())} | {threshold:.4g} | "
                     f"{float((scores[~incident] > threshold).mean()):.4f} |")
    return lines


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="build/walkforward", help="generated data, lake and models go here")
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--days", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="days ingested before the first night")
    parser.add_argument("--incidents", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--continue", dest="continue_", action="store_true",
                        help="each night continues the previous model (--init-from) instead of training a fresh one")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both models (repeatable); default train.epochs=8")
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.days:
        parser.error("--warmup must be at least 1 and below --days")
    work = Path(args.work)
    started = time.perf_counter()
    data = fresh_drifting_series(work, args.hosts, args.days, args.incidents, args.seed)
    files = split_by_day(data.files[0], work / "inputs")
    days = sorted(files)
    base = ["train.epochs=8", *args.overrides]
    cfgs: dict[str, Config] = {
        "old": load_config(profile="metrics", overrides=[f"lake.root={work / 'lake-old'}", *base, *OLD]),
        "screened": load_config(profile="metrics", overrides=[f"lake.root={work / 'lake-screened'}", *base]),
    }
    cfg = cfgs["screened"]
    _, intervals = evaluation.read_label_file(data.labels_path)

    from loganomaly.runtime.spark import get_spark

    spark = get_spark(cfg.spark)
    lakes = {name: Lake(spark, c.lake.root, c.lake.engine) for name, c in cfgs.items()}
    models = {name: work / f"model-{name}" for name in cfgs}

    def retrain(until: str) -> dict[str, Any]:
        out = {}
        for name, model_cfg in cfgs.items():
            train_cfg = dataclasses.replace(model_cfg.train, train_until=until,
                                            init_from=str(models[name]) if args.continue_ and models[name].exists()
                                            else "")
            summary = train.run(spark, dataclasses.replace(model_cfg, train=train_cfg), models[name],
                                lake=lakes[name])
            out[name] = summary
        return out

    for name, lake in lakes.items():
        ingest.run(spark, cfgs[name], [str(files[d]) for d in days[: args.warmup]], lake=lake)
        featurize.run(spark, cfgs[name], lake=lake)
    trained = retrain(days[args.warmup])
    table: list[dict[str, Any]] = []
    for day in days[args.warmup:]:
        day_start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)
        todays = [a for a in data.anomalies if day_start <= a.start < day_start + dt.timedelta(days=1)]
        for name, lake in lakes.items():
            ingest.run(spark, cfgs[name], [str(files[day])], lake=lake)
            featurize.run(spark, cfgs[name], lake=lake, since=day)
            summary = trained[name]
            score.run(spark, cfgs[name], models[name], date_range=(day, day), lake=lake)
            result = day_results(spark, lake, load_bundle(models[name]).version, day, intervals, todays)
            table.append({"day": day, "model": name, "threshold": float(summary.threshold),
                          "ratio": summary.threshold_ratio, "screened": summary.screened_windows,
                          "validation": summary.validation_windows, **result})
        next_day = (day_start + dt.timedelta(days=1)).date().isoformat()
        if day != days[-1]:
            trained = retrain(next_day)

    lines = ["| day | model | threshold | ratio to previous | validation windows screened | benign windows "
             "flagged (FPR) | incidents found |", "|---|---|---|---|---|---|---|"]
    for r in table:
        fpr = r["benign_flagged"] / r["benign"] if r["benign"] else float("nan")
        lines.append(f"| {r['day']} | {r['model']} | {_fmt(r['threshold'], 4)} | {_fmt(r['ratio'])} | "
                     f"{r['screened']} of {r['validation']} | {r['benign_flagged']} of {r['benign']} ({_fmt(fpr)}) | "
                     f"{r['found']} of {r['incidents']} |")
    lines += ["", "| model | FPR on benign windows | incidents found | threshold min - max | largest day-to-day "
              "move |", "|---|---|---|---|---|"]
    for name in cfgs:
        mine = [r for r in table if r["model"] == name]
        benign = sum(r["benign"] for r in mine)
        thresholds = [r["threshold"] for r in mine]
        moves = [max(r["ratio"], 1 / r["ratio"]) for r in mine if r["ratio"]]
        lines.append(f"| {name} | {_fmt(sum(r['benign_flagged'] for r in mine) / benign if benign else None)} | "
                     f"{sum(r['found'] for r in mine)} of {sum(r['incidents'] for r in mine)} | "
                     f"{_fmt(min(thresholds), 4)} - {_fmt(max(thresholds), 4)} | "
                     f"{_fmt(max(moves) if moves else None)}x |")
    lines += ["", *k_sweep(spark, cfgs["old"], lakes["old"], models["old"], days[-1])]
    budget = 1 - cfg.train.threshold_quantile if cfg.train.alert_budget is None else cfg.train.alert_budget
    settings = (f"{args.hosts} hosts x {args.days} days ({args.warmup} warm-up), {len(data.anomalies)} incidents, "
                f"seed {args.seed}, {'continued' if args.continue_ else 'fresh'} models, alert budget {budget:.3g}, "
                f"overrides {base}; {time.perf_counter() - started:.0f}s")
    text = "\n".join(lines)
    (work / "walkforward.md").write_text(settings + "\n\n" + text + "\n")
    print(settings)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
