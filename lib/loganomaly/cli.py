"""The ``loganomaly`` command: one sub-command per stage, each a thin call to that stage's ``run()``.

The same entry point serves the console script, ``jobs/<stage>.py`` under spark-submit, a
Databricks ``python_wheel_task`` and Airflow. Logging handlers are configured here only.
This is the one module allowed to print (results meant for the user's terminal).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from loganomaly.config import Config, load_config
from loganomaly.errors import ConfigError, LogAnomalyError
from loganomaly.lake.guard import check_root
from loganomaly.registry import BACKENDS, READERS

log = logging.getLogger("loganomaly.cli")

STAGES = ("generate", "ingest", "featurize", "train", "score", "evaluate", "report", "sql", "pipeline", "maintain")


class _Parser(argparse.ArgumentParser):
    """An argument parser without abbreviated options (every sub-parser is one too, argparse
    builds them with the parent's class): ``score --since 2024-03-05`` is an unknown option,
    never a silent ``--since-last-run``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help="conf/profiles/<name>.yaml applied over conf/default.yaml")
    parser.add_argument("--conf-dir", help="directory holding default.yaml and profiles/ (default: ./conf)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.epochs=5 (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _lake(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", help="lake root directory (overrides lake.root)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loganomaly", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write synthetic activity logs with injected anomalies and labels")
    _common(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, help="random seed (overrides generate.seed)")

    p = sub.add_parser("ingest", help="parse log files into the events and quarantine tables")
    _common(p)
    _lake(p)
    p.add_argument("--input", nargs="+", required=True, help="files or directories")

    p = sub.add_parser("featurize", help="build per-entity feature windows into the sequences table")
    _common(p)
    _lake(p)
    p.add_argument(
        "--since",
        help="YYYY-MM-DD, today or yesterday: rebuild only the windows that can hold events of that date or "
        "later (the nightly run after new data); by default the whole table is rebuilt",
    )

    p = sub.add_parser("train", help="train the LSTM on the training period of sequences")
    _common(p)
    _lake(p)
    p.add_argument("--model-dir", required=True)
    _backend(p)
    p.add_argument(
        "--reader",
        choices=READERS.names(),
        help="how ranks read their shard (overrides train.reader); petastorm needs the `make compat` environment",
    )
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run checkpointed in <model-dir>/checkpoints (train.resume)")
    p.add_argument("--init-from", metavar="BUNDLE_DIR",
                   help="continue training this existing model on the current data (train.init_from)")
    p.add_argument("--until", metavar="T",
                   help="end the training period at T, an ISO date (its 00:00 UTC) or timestamp: windows ending "
                        "at or before T train and validate (train.train_until); later windows are left to score")

    p = sub.add_parser("score", help="score windows into the scores and anomalies tables")
    _common(p)
    _lake(p)
    p.add_argument("--model-dir", required=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--date", help="score one date (YYYY-MM-DD, today or yesterday in UTC); its earlier results are replaced"
    )
    which.add_argument(
        "--since-last-run",
        action="store_true",
        help="score the last date this model scored and every later date of sequences",
    )
    which.add_argument("--all", action="store_true", help="score every date (the default)")
    which.add_argument(
        "--from", dest="date_from", metavar="D1",
        help="score every date of sequences from D1 to --to D2, both included, in one run (YYYY-MM-DD, today "
             "or yesterday); those dates' earlier results are replaced, no other date is touched",
    )
    p.add_argument("--to", dest="date_to", metavar="D2", help="last date of a --from range (default: D1)")

    p = sub.add_parser("sql", help="run Spark SQL over every table (each is a view of its own name)")
    _common(p)
    _lake(p)
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=50, help="rows to print")
    p.add_argument(
        "--local",
        action="store_true",
        help="run with DataFusion (delta-rs) instead of Spark: no JVM, for quick queries",
    )
    p.add_argument(
        "--allow-write",
        action="store_true",
        help="run a statement that writes (DDL, INSERT, COPY...): refused without it; bypasses the "
        "lake's writer lock, so use it for repairs and exports only",
    )

    p = sub.add_parser("evaluate", help="measure a model's scores against labels into the evaluations table")
    _common(p)
    _lake(p)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--labels", help="CSV entity,start,end[,kind] or key,label (default: the events' label column)")

    p = sub.add_parser("report", help="write a self-contained HTML report of a model and its scores")
    _common(p)
    _lake(p)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--labels", help="labels CSV for PR/ROC curves (default: the events' label column)")
    p.add_argument("--max-entities", type=int, default=12, help="entities drawn as score timelines")

    p = sub.add_parser("maintain", help="compact (OPTIMIZE) then vacuum the lake's tables")
    _common(p)
    _lake(p)
    p.add_argument("--table", dest="tables", action="append", default=[],
                   help="a table to maintain (repeatable; default: every table)")
    p.add_argument("--retain-hours", type=int, default=168,
                   help="keep files that snapshots of the last N hours need (time travel window; default 168)")

    p = sub.add_parser("class-archive", help="build the JVM class archive local sessions start from (make setup runs it)")
    _common(p)
    p.add_argument("--force", action="store_true", help="build it again even when one fits this machine")
    p.add_argument("--dump", help=argparse.SUPPRESS)  # the build's child: run the warm-up, dump to this file

    p = sub.add_parser("pipeline", help="generate (when no --input) -> ingest -> featurize -> train -> score")
    _common(p)
    _lake(p)
    p.add_argument("--model-dir", help="model bundle directory (default: <lake>/../model)")
    p.add_argument("--input", nargs="*", default=[], help="log files or directories; none = generate data")
    p.add_argument("--train-input", nargs="+", default=[],
                   help="train on these inputs (in <lake>/_training) and score --score-input")
    p.add_argument("--score-input", nargs="+", default=[], help="inputs to score with the model of --train-input")
    p.add_argument("--generate-dir", help="where generated data goes (default: <lake>/../raw)")
    p.add_argument("--top", type=int, default=10, help="top anomalies to print at the end")
    _backend(p)
    return parser


def _backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS.names(),
        help="training backend (overrides train.backend)",
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if getattr(args, "lake", None):
        overrides.append(f"lake.root={args.lake}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"generate.seed={args.seed}")
    if getattr(args, "backend", None):
        overrides.append(f"train.backend={args.backend}")
    if getattr(args, "reader", None):
        overrides.append(f"train.reader={args.reader}")
    if getattr(args, "resume", False):
        overrides.append("train.resume=true")
    if getattr(args, "init_from", None):
        overrides.append(f"train.init_from={args.init_from}")
    if getattr(args, "until", None):
        overrides.append(f"train.train_until={args.until}")
    return load_config(profile=args.profile, overrides=overrides, conf_dir=args.conf_dir)


def _print_frame(df: Any, limit: int) -> None:
    """Print a Spark DataFrame or a pandas one (the local SQL path) as an aligned table."""
    pdf = df.head(limit) if hasattr(df, "iloc") else df.limit(limit).toPandas()
    if pdf.empty:
        print("(no rows)")
    else:
        print(pdf.to_string(index=False, max_colwidth=80))


def dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "date_to", None) and not getattr(args, "date_from", None):
        raise ConfigError("score --to needs --from (a date range); for one date use --date")
    cfg = _config(args)
    if getattr(args, "lake", None):
        check_root(cfg.lake.root)  # a file given as --lake: refused before Spark starts or anything is read
    if args.command == "generate":
        from loganomaly.ingest import synthetic

        data = synthetic.generate(args.out, cfg.generate)
        print(json.dumps({"files": len(data.files), "lines": data.n_lines, "labels": str(data.labels_path)}))
        return 0

    if args.command == "sql" and args.local:
        from loganomaly.lake import sql

        _print_frame(sql.run_local(cfg.lake.root, args.query, allow_write=args.allow_write).to_pandas(), args.limit)
        return 0

    if args.command == "class-archive":
        return _class_archive(args, cfg)

    from loganomaly.runtime.spark import get_spark

    spark = get_spark(cfg.spark)
    if args.command == "ingest":
        from loganomaly.ingest import stage as ingest

        print(json.dumps(ingest.run(spark, cfg, args.input).as_dict()))
    elif args.command == "featurize":
        from loganomaly.features import stage as featurize

        print(json.dumps(featurize.run(spark, cfg, since=args.since).as_dict()))
    elif args.command == "train":
        from loganomaly.training import stage as train

        print(json.dumps(train.run(spark, cfg, args.model_dir).as_dict()))
    elif args.command == "score":
        from loganomaly.scoring import stage as score

        scored = score.run(spark, cfg, args.model_dir, date=args.date, since_last_run=args.since_last_run,
                           date_range=(args.date_from, args.date_to or args.date_from) if args.date_from else None)
        print(json.dumps(scored.as_dict()))
    elif args.command == "evaluate":
        from loganomaly.evaluation import stage as evaluate

        print(json.dumps(evaluate.run(spark, cfg, args.model_dir, labels=args.labels).as_dict(), indent=2))
    elif args.command == "report":
        from loganomaly.evaluation import report

        out = report.build_report(
            spark, cfg, args.model_dir, Path(args.out), labels=args.labels, max_entities=args.max_entities
        )
        print(out)
    elif args.command == "sql":
        from loganomaly.lake import sql

        _print_frame(sql.run(spark, cfg, args.query, allow_write=args.allow_write), args.limit)
    elif args.command == "maintain":
        from loganomaly.lake import maintenance

        maintained = maintenance.run(spark, cfg, tables=args.tables, retention_hours=args.retain_hours)
        print(json.dumps(maintained.as_dict(), indent=2))
    elif args.command == "pipeline":
        from loganomaly import pipeline
        from loganomaly.lake import sql

        model_dir = args.model_dir or str(Path(cfg.lake.root).resolve().parent / "model")
        if args.train_input or args.score_input:
            if args.input:
                raise ConfigError("give either --input or --train-input/--score-input, not both")
            summary = pipeline.run_split(spark, cfg, model_dir, args.train_input, args.score_input)
        else:
            summary = pipeline.run(spark, cfg, model_dir, inputs=args.input, generate_dir=args.generate_dir)
        print(json.dumps(summary.stages, indent=2, default=str))
        print(
            f"\nTop {args.top} anomalies (SQL over the Delta tables under {Path(cfg.lake.root).resolve()}):"
        )
        _print_frame(sql.run(spark, cfg, sql.TOP_ANOMALIES.format(limit=int(args.top))), args.top)
    return 0


def _class_archive(args: argparse.Namespace, cfg: Config) -> int:
    """``class-archive``: build the archive in a child (``--dump``) that runs the warm-up pipeline
    in a JVM writing its loaded classes at exit; the child waits for its JVM to finish writing."""
    from loganomaly.runtime import class_archive
    from loganomaly.runtime.java import ensure_java
    from loganomaly.runtime.spark import archive_install, archive_key, get_spark, local_session_conf

    if args.dump:
        from loganomaly import pipeline

        options = ["-Dderby.system.home=" + os.getcwd(), *class_archive.dump_options(Path(args.dump))]
        spark = get_spark(replace(cfg.spark, class_archive=False,
                                  conf={**cfg.spark.conf, "spark.driver.extraJavaOptions": " ".join(options)}))
        with tempfile.TemporaryDirectory(prefix="loganomaly-warm-up-") as work:
            pipeline.warm_up(spark, cfg, work)
        jvm = spark.sparkContext._gateway.proc  # type: ignore[union-attr]
        spark.stop()
        jvm.stdin.close()  # the gateway JVM exits on end of input, and writes the archive as it exits
        jvm.wait(timeout=class_archive.BUILD_TIMEOUT_S)
        return 0
    ensure_java()
    conf = local_session_conf(cfg.spark)
    child = [sys.executable, "-m", "loganomaly.cli", "class-archive", "--log-level", "INFO"]
    for flag, value in (("--profile", args.profile), ("--conf-dir", args.conf_dir)):
        if value:
            child += [flag, value]
    for override in args.overrides:
        child += ["--set", override]
    archive = class_archive.build(archive_key(conf), lambda target: [*child, "--dump", str(target)],
                                  force=args.force, install=archive_install(conf))
    print(archive)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code (2 for refused input or settings)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return dispatch(args)
    except LogAnomalyError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 2


def run_stage(stage: str, argv: Sequence[str]) -> int:
    """Entry for ``jobs/<stage>.py``: the stage's arguments without the sub-command name."""
    if stage not in STAGES:
        raise SystemExit(f"unknown stage {stage!r}; choose one of: {', '.join(STAGES)}")
    return main([stage, *argv])


if __name__ == "__main__":
    sys.exit(main())
