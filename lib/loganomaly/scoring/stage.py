"""``score``: a bundle's input rows -> ``scores`` (every row) and ``anomalies`` (flagged ones).

The same stage scores every model kind: the kind comes from the bundle (``model.json``), never from
the config, so a nightly job scores whatever was trained without being told. The kind selects and
checks its input (:meth:`~loganomaly.models.kind.ModelKind.scoring_input`: the windows of
``sequences`` or the sessions of ``sessions``) and scores one Arrow batch at a time
(:meth:`~loganomaly.models.kind.ModelKind.score_batch`).

The model is shipped to executors as bytes in a broadcast (no shared file system needed) and a
``mapInArrow`` function loads it once per Python worker: the first batch of a task materialises the
bundle into a worker-local cache keyed by the model version, later batches and later tasks on the
same (reused) worker use it directly. Batches stay Arrow from the JVM to the model: the features
column becomes a numpy view of its values, with no per-row Python objects.

Sizes come from the task and the row, not constants (:mod:`loganomaly.models.sizing`): each Python
worker runs torch with ``spark.task.cpus`` threads (the task's own cores), and the Arrow batch
(``spark.sql.execution.arrow.maxRecordsPerBatch``, set for the scoring writes only) and the
forward-pass batch hold a fixed number of input floats, so wide windows get fewer rows per batch.
``score.bf16`` autocasts the forward passes on CUDA workers.

One pass over the input scores it and writes ``scores``: the kind's row checks (shape, feature
names) become boolean columns computed next to the scan and carried into the scoring function,
which raises on a refused row (the job fails, nothing is committed, and the driver words the
check's ModelError from the input); the function hands its batches on to the ``scores`` write
and, on the side, puts its flagged rows into a Parquet file of its own under the lake's
``_staging`` folder and reports the file and its per-date counts through an accumulator (only
successful task attempts' reports arrive, so a retried task's file is counted once). ``anomalies``
is then written from the staged files of that report: the flagged rows of the same pass, not a
re-read of ``scores`` and not a second run of the model. The dates to replace come from the input
table's Delta log (no Spark job) before the pass starts. (Earlier versions persisted the scored
rows, aggregated them for the dates, counts and checks, and wrote both tables from the cache: the
cache's build and read cost about a third of the stage at 1M windows; before that the checks were
a separate aggregate and a count ran after the writes.)

The two writes are two commits: a run killed between them leaves ``anomalies`` of those dates from
the previous run (rows whose ``run_id`` differs from ``scores``'). Every run first repairs that
(:func:`repair_anomalies`): ``anomalies`` of each date is exactly the flagged ``scores`` rows, so a
date whose (run id, count) of flagged rows differ between the two tables is rewritten from
``scores``, without the model. That comparison scans both tables, so it runs only when the newest
commits of the two tables do not both belong to one run (:func:`last_run_finished`): after a
normal night the repair costs two log-file reads.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute in the workers)
import pyarrow.parquet as pq
from pyspark.accumulators import AccumulatorParam

from loganomaly.config import Config
from loganomaly.errors import ModelError, StageInputError
from loganomaly.lake.deltars import snapshot_files, spark_to_delta_arrow
from loganomaly.lake.lock import writer_lock
from loganomaly.lake.schemas import TABLES
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import BUNDLE_FILES, kind_of, load_bundle, worker_model
from loganomaly.models.kind import (
    RESULT_COLUMNS,
    RESULT_SCHEMA,
    Inference,
    ModelKind,
    ScoringInput,
    result_arrays,
)
from loganomaly.models.sizing import ScoringSizes, scoring_sizes, torch_threads
from loganomaly.runtime.device import pick_device
from loganomaly.runtime.runs import new_run_id, resolve_date
from loganomaly.scoring.baseline import BaselineRule, Scorer, judge_dataframe, judge_table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

__all__ = [
    "REPAIR_SUFFIX",
    "ScoreSummary",
    "AnomalyStaging",
    "REFUSED_MARKER",
    "check_columns",
    "last_run_finished",
    "last_scored_date",
    "range_dates",
    "repair_anomalies",
    "resolve_range",
    "run",
    "arrow_per_date",
    "driver_input",
    "input_bytes",
    "input_dates",
    "raise_refused",
    "flagged",
    "raise_failed_checks",
    "score_batches",
    "score_on_driver",
    "score_partitions",
    "write_scores_arrow",
]

#: The columns every kind's scoring input carries besides its own input column.
KEY_COLUMNS = ("entity", "window_start", "window_end", "date")


@dataclass
class ScoreSummary:
    run_id: str
    model_version: str
    dates: list[str]
    windows: int
    anomalies: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def score_partitions(
    kind: ModelKind, version: str, files: Any, column: str, top_k: int, inference: Inference | None = None,
    refused: str | None = None, staging: AnomalyStaging | None = None,
) -> Callable[[Iterable[pa.RecordBatch]], Iterable[pa.RecordBatch]]:
    """The ``mapInArrow`` function: key columns in, key columns plus the kind's results out.

    Args:
        kind: the bundle's kind (shipped with the function, so a plug-in kind registered on the
            driver scores on executors too).
        version: the bundle's content version (the worker cache key, checked on load).
        files: a broadcast of the bundle's files (name -> bytes).
        column: the kind's input column.
        top_k: features or events named per explanation.
        inference: forward-pass batch size and bf16 (:func:`loganomaly.models.sizing.scoring_sizes`).
        refused: a boolean input column, true on rows the kind's checks refuse: a batch holding one
            is not scored (NaN scores; the driver raises the check's error before writing). Every
            input column besides ``column`` is passed through to the output, after the results.
        staging: the stage's side output (:class:`AnomalyStaging`): each task raises on a refused
            row, stages its flagged rows and reports its counts. None (the bench's UDF rows): the
            batches only.

    Torch in the worker runs with as many threads as the task has cores (``spark.task.cpus``, read
    from the task's context).
    """

    def score(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        threads = torch_threads(context.cpus() if context is not None else 1)
        bundle, model, device = worker_model(version, files.value, kind, threads=threads)
        scored = score_batches(kind, bundle, model, device, batches, column, top_k, inference, refused)
        yield from scored if staging is None else staging.tee(scored)

    return score


#: What a scoring task raises on a row the kind's checks refuse (the driver finds it in the job's
#: error and words the check's own message from the input rows: :func:`raise_refused`).
REFUSED_MARKER = "loganomaly-scoring: a row the model's checks refuse"


class _Reports(AccumulatorParam):  # type: ignore[type-arg]
    """An accumulator of report lists: each successful task attempt adds its one report."""

    def zero(self, value: Any) -> list[Any]:
        return []

    def addInPlace(self, value1: list[Any], value2: list[Any]) -> list[Any]:  # noqa: N802 - pyspark's name
        value1.extend(value2)
        return value1


@dataclass(frozen=True)
class AnomalyStaging:
    """The scoring pass's side output: flagged rows staged as Parquet, counts reported per task.

    ``scores`` and ``anomalies`` come from one run of the model: the pass's batches go on to the
    ``scores`` write, and :meth:`tee` writes the flagged rows of each task into its own file under
    ``directory`` (the lake's ``_staging`` folder, where executors can write as they write the
    tables) with the rows ``anomalies`` holds. At the end of a task it adds
    ``{"files": [...], "counts": {date: [rows, flagged]}}`` to ``reports``: Spark merges the
    accumulator updates of successful task attempts only, so a retried or speculative attempt's
    file is not counted twice (unreported files go with the folder). ``flagged`` is
    Spark SQL's ``score > threshold`` (:func:`flagged`), the rule of the ``is_anomaly`` column.

    Args:
        directory: this run's staging folder (created by the driver, removed after the writes).
        schema: the Arrow schema of the ``anomalies`` rows (from the table's DDL, on the driver).
        threshold, model_version, run_id: the constant columns of the rows.
        reports: the accumulator (:class:`_Reports`).
        refused: the carried boolean column that marks rows the kind's checks refuse.
        stage_rows: False when ``anomalies`` is written from ``scores`` instead (per-entity
            baselines decide the flags after the pass): the tasks then only count, and write no file.
    """

    directory: str
    schema: pa.Schema
    threshold: float
    model_version: str
    run_id: str
    reports: Any
    refused: str = "_refused"
    stage_rows: bool = True

    def tee(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Pass ``batches`` on unchanged, staging their flagged rows; raise on a refused row."""
        path = os.path.join(self.directory, f"part-{uuid.uuid4().hex}.parquet")
        writer: pq.ParquetWriter | None = None
        counts: dict[str, list[int]] = {}
        try:
            for batch in batches:
                if self.refused in batch.schema.names and pa.compute.any(batch.column(self.refused)).as_py():
                    raise RuntimeError(REFUSED_MARKER)
                mask = flagged(batch.column("score").to_numpy(zero_copy_only=False), self.threshold)
                for day, n in _date_counts(batch.column("date")):
                    counts.setdefault(day, [0, 0])[0] += n
                if mask.any() and not self.stage_rows:
                    for day, n in _date_counts(batch.column("date").filter(pa.array(mask))):
                        counts.setdefault(day, [0, 0])[1] += n
                elif mask.any():
                    rows = self.anomaly_rows(batch.filter(pa.array(mask)))
                    for day, n in _date_counts(rows.column("date")):
                        counts.setdefault(day, [0, 0])[1] += n
                    if writer is None:
                        writer = pq.ParquetWriter(path, self.schema)
                    writer.write_batch(rows)
                yield batch
            if writer is not None:
                writer.close()
                writer = None
                files = [path]
            else:
                files = []
        except BaseException:
            if writer is not None:
                writer.close()
            if os.path.exists(path):
                os.remove(path)
            raise
        self.reports.add([{"files": files, "counts": counts}])

    def anomaly_rows(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The ``anomalies`` columns of ``batch``'s rows (all flagged), in the table's order and types."""
        n = batch.num_rows
        values = {
            "score": batch.column("score"),
            "threshold": pa.array(np.full(n, self.threshold)),
            "is_anomaly": pa.array(np.ones(n, dtype=bool)),
            "explanation": batch.column("explanation"),
            "top_features": batch.column("top_features"),
            "model_version": pa.array([self.model_version] * n, pa.string()),
            "run_id": pa.array([self.run_id] * n, pa.string()),
        }
        columns = [values[f.name] if f.name in values else batch.column(f.name) for f in self.schema]
        return pa.RecordBatch.from_arrays([c.cast(f.type) for c, f in zip(columns, self.schema, strict=True)],
                                          schema=self.schema)


def _date_counts(dates: pa.Array) -> list[tuple[str, int]]:
    """``(YYYY-MM-DD, rows)`` per distinct date of a ``date`` column."""
    return [(v["values"].isoformat(), int(v["counts"])) for v in pa.compute.value_counts(dates).to_pylist()]


def score_batches(
    kind: ModelKind, bundle: Any, model: Any, device: Any, batches: Iterable[pa.RecordBatch], column: str,
    top_k: int, inference: Inference | None = None, refused: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """The body of :func:`score_partitions` once the model is loaded: what a Spark task runs, and
    what the driver runs on a small input (:func:`driver_input`), so both paths score alike."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        carried = [name for name in batch.schema.names if name not in KEY_COLUMNS and name != column]
        if refused is not None and pa.compute.any(batch.column(refused)).as_py():
            n = batch.num_rows
            result = [pa.array(np.full(n, np.nan)), pa.array([[]] * n, pa.list_(pa.string())),
                      pa.array([""] * n, pa.string())]
        else:
            result = result_arrays(kind.score_batch(bundle, model, device, batch.column(column), top_k, inference))
        yield pa.RecordBatch.from_arrays(
            [batch.column(name) for name in KEY_COLUMNS] + result + [batch.column(name) for name in carried],
            names=[*KEY_COLUMNS, *RESULT_SCHEMA.names, *carried],
        )


def last_scored_date(lake: Lake, model_version: str) -> str | None:
    """The latest date in ``scores`` scored by this model version, or None."""
    if not lake.exists("scores"):
        return None
    from pyspark.sql import functions as F

    row = lake.read("scores").where(F.col("model_version") == model_version).agg(F.max("date")).collect()[0]
    return None if row[0] is None else row[0].isoformat()


def check_columns(source: ScoringInput) -> list[Any]:
    """The kind's row checks as columns ``_bad{i}``, true on a row check ``i`` refuses.

    The scoring pass carries these flags only, not the checks' values: detail columns (a string
    and the window's 24 feature names, null on nearly every row) doubled the cost of its Arrow
    round trip (1M windows on ``local[2]``: 16.8 s against 10.0 s with the flags alone, 8.3 s with
    no check column), and they are needed only to word the error of a check that fails, which
    :func:`raise_refused` and :func:`raise_failed_checks` look up in the input.
    """
    from pyspark.sql import functions as F

    return [F.coalesce(check.bad, F.lit(False)).alias(f"_bad{i}") for i, check in enumerate(source.checks)]


def raise_failed_checks(source: ScoringInput, dates: Iterable[Any], inputs: DataFrame) -> None:
    """Raise the ModelError of the first of the kind's checks that fails on some date of ``dates``.

    ``dates``: per-date rows with ``bad{i}`` (true or 1 where check ``i`` refused a row); a failing
    row's value is looked up in ``inputs`` (one more query, on the failure path only).
    """
    dates = list(dates)
    for i, check in enumerate(source.checks):
        if any(r[f"bad{i}"] for r in dates):
            found = inputs.where(check.bad).select(check.detail).first()
            raise ModelError(check.message(found[0] if found is not None else None))


def raise_refused(source: ScoringInput, inputs: DataFrame) -> None:
    """Raise the ModelError of the first of the kind's checks that refuses a row of ``inputs``.

    The scoring pass stops at a refused row without saying which check refused it (a task's error
    is text); this looks the checks up in order, one query each, on the failure path only.
    """
    for check in source.checks:
        found = inputs.where(check.bad).select(check.detail).first()
        if found is not None:
            raise ModelError(check.message(found[0]))
    raise ModelError("a scoring task found a row the model's checks refuse, but no check refuses a row of the "
                     "input now (did the input change during the run?)")


#: Appended to a run's id in the commit metadata of its repair commit (see :func:`repair_anomalies`).
REPAIR_SUFFIX = "+repair"


def last_run_finished(lake: Lake) -> bool:
    """True when the newest commits of ``scores`` and ``anomalies`` carry the same run id.

    A ``score`` run commits, under the writer lock, in this order: its repair of ``anomalies``
    (if any, with the run id plus :data:`REPAIR_SUFFIX`), ``scores``, ``anomalies``. So when the
    newest commit of both tables is the same run's, that run finished both writes of the same
    scoring pass on the same dates after making every other date agree: the tables agree. Any
    other state (a run stopped between its commits, a repair not followed by a scoring, a data
    commit by another writer, commits without run ids) answers False, and the caller compares the
    tables. Maintenance commits that change no row (``maintain``'s OPTIMIZE and VACUUM) are looked
    past (:meth:`Lake.last_data_commit`): after a compaction the tables still hold what the last
    run wrote. A few log files read, no Spark job.
    """
    scores, anomalies = lake.last_data_commit("scores"), lake.last_data_commit("anomalies")
    if scores is None or anomalies is None:
        return False
    run = scores.get("runId")
    return bool(run) and run == anomalies.get("runId")


def repair_anomalies(lake: Lake, run_id: str) -> list[str]:
    """Rewrite ``anomalies`` for the dates where it is not the flagged rows of ``scores``; the dates.

    A ``score`` killed after its ``scores`` commit and before its ``anomalies`` one leaves the
    two tables from different runs (and maybe models) on those dates. ``anomalies`` is derived
    from ``scores`` (its ``is_anomaly`` rows), so the repair needs no model: compare flagged rows
    per (date, run id) in both tables (two aggregates over three columns) and replace the dates
    that differ in one commit. Runs under the stage's writer lock, before anything is scored.

    The comparison scans both tables whole, and its cost grows with the history kept: every
    nightly run paid it (about half the stage's time on 1,000 windows). It runs only when
    :func:`last_run_finished` cannot tell from the two newest commits that the tables agree,
    which is after a run stopped between its commits or a foreign commit; a normal night skips it.
    """
    if not lake.exists("scores"):
        return []
    if last_run_finished(lake):
        return []
    from pyspark.sql import functions as F

    def per_run(name: str, flagged_only: bool) -> dict[tuple[str, str], int]:
        if not lake.exists(name):
            return {}
        df = lake.read(name)
        if flagged_only:
            df = df.where(F.col("is_anomaly"))
        rows = df.groupBy("date", "run_id").agg(F.count(F.lit(1)).alias("n")).collect()
        return {(r.date.isoformat(), r.run_id): int(r.n) for r in rows}

    flagged, held = per_run("scores", True), per_run("anomalies", False)
    dates = sorted({d for d, r in flagged.keys() | held.keys() if flagged.get((d, r)) != held.get((d, r))})
    if not dates:
        return []
    rows = lake.read("scores").where(F.col("is_anomaly") & F.col("date").isin([dt.date.fromisoformat(d) for d in dates]))
    partition_by = TABLES["anomalies"].partition_by
    if lake.exists("anomalies"):
        lake.write("anomalies", rows, mode="overwrite", partition_by=partition_by, replace_where={"date": dates},
                   run_id=run_id + REPAIR_SUFFIX)
    else:
        lake.write("anomalies", rows, partition_by=partition_by, run_id=run_id + REPAIR_SUFFIX)
    log.warning("score %s: anomalies lagged scores on %d dates (an earlier score stopped between its two "
                "commits); rewritten from scores: %s", run_id, len(dates), ", ".join(dates))
    return dates


def run(
    spark: SparkSession,
    cfg: Config,
    model_dir: str | Path,
    date: str | None = None,
    lake: Lake | None = None,
    since_last_run: bool = False,
    date_range: tuple[str, str] | None = None,
) -> ScoreSummary:
    """Score the rows of one date, of a range of dates, of the dates new since the last run, or of every date.

    Example:
        >>> run(spark, cfg, "model", date="2024-03-06")  # doctest: +SKIP
        ScoreSummary(run_id='score-...', model_version='...', dates=['2024-03-06'], windows=412, anomalies=7)

    ``date`` is ``YYYY-MM-DD``, ``today`` or ``yesterday`` (UTC; what a scheduler that cannot
    compute dates passes). ``since_last_run`` scores the dates of the input from the last date
    this model already scored onwards: that date again (it may have been partial when it was
    scored) and every later one, so a nightly run picks up whatever arrived. ``date_range``
    ``(D1, D2)`` scores every date from D1 to D2, both included, in one run (the walk-forward
    cycle's ``score --from D1 --to D2``): the input's rows of those dates only, so a window that
    needed earlier history (built by featurize from the whole lake) is scored on its own date and
    no date outside the range is re-scored. Each scored date's earlier rows are replaced; for a
    range, every date of it that the input or ``scores`` holds, so a date whose windows are gone
    loses its old results as with ``date``. ``ScoreSummary.windows`` counts the kind's rows
    (windows, sessions).

    Raises:
        StageInputError: no input table, nothing on the dates asked for, a range whose end is
            before its start, or a date that is not ``YYYY-MM-DD``, ``today`` or ``yesterday``.
        ModelError: no loadable bundle in ``model_dir``, or input that does not match it.
    """
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    run_id = new_run_id("score")
    # One writer per lake (:mod:`loganomaly.lake.lock`): a concurrent run is refused, not interleaved.
    with writer_lock(lake.root, run_id, "score"):
        return _run(spark, cfg, model_dir, date, lake, since_last_run, run_id, date_range)


def resolve_range(date_range: tuple[str, str]) -> tuple[dt.date, dt.date]:
    """``(D1, D2)`` as dates (each ``YYYY-MM-DD``, ``today`` or ``yesterday``), D1 <= D2.

    Raises:
        StageInputError: a date that does not parse, or D2 before D1.
    """
    first, last = (dt.date.fromisoformat(str(resolve_date(d))) for d in date_range)
    if last < first:
        raise StageInputError(f"score range ends ({last}) before it starts ({first}); give --from D1 --to D2 "
                              f"with D1 <= D2")
    return first, last


def range_dates(lake: Lake, input_days: Iterable[str], first: dt.date, last: dt.date) -> list[str]:
    """The dates a range run replaces: those of its input rows plus those ``scores`` already holds in it.

    Listing every calendar day of a long range would make the replace predicate as long as the
    range; the dates with old results are what a rerun must clear, and they are few.
    """
    from pyspark.sql import functions as F

    dates = set(input_days)
    if lake.exists("scores"):
        held = lake.read("scores").where(F.col("date").between(F.lit(first), F.lit(last))).select("date").distinct()
        dates |= {r["date"].isoformat() for r in held.collect()}
    return sorted(dates)


def _run(spark: SparkSession, cfg: Config, model_dir: str | Path, date: str | None, lake: Lake, since_last_run: bool,
         run_id: str, date_range: tuple[str, str] | None = None) -> ScoreSummary:
    from pyspark.sql import functions as F

    date = resolve_date(date)
    span = resolve_range(date_range) if date_range is not None else None
    bundle = load_bundle(model_dir)
    repair_anomalies(lake, run_id)
    kind = kind_of(bundle.kind)
    source = kind.scoring_input(lake, bundle)
    rows = source.rows
    last = None
    if date:
        rows = rows.where(F.col("date") == F.lit(dt.date.fromisoformat(date)))
    elif span is not None:
        rows = rows.where(F.col("date").between(F.lit(span[0]), F.lit(span[1])))
    elif since_last_run:
        last = last_scored_date(lake, bundle.version)
        if last is not None:
            rows = rows.where(F.col("date") >= F.lit(dt.date.fromisoformat(last)))

    sizes = scoring_sizes(kind.row_floats(bundle), int(spark.sparkContext.getConf().get("spark.task.cpus", "1")))
    inference = Inference(batch_size=sizes.forward_rows, bf16=cfg.score.bf16)
    checks = check_columns(source)
    refused = F.lit(False)
    for i, _ in enumerate(source.checks):
        refused = refused | F.col(f"_bad{i}")
    checked = rows.select(*KEY_COLUMNS, source.column, *checks).withColumn("_refused", refused)
    since = dt.date.fromisoformat(last) if last is not None else None
    day = dt.date.fromisoformat(date) if date else None
    on_disk = input_dates(lake, kind.input_table, day, span, since)

    def dates_to_replace(input_days: Iterable[str]) -> list[str]:
        """The dates whose rows this run replaces (before any write, so both commits replace the same)."""
        # A date asked for by name is replaced even when it has no rows left (its old scores go too).
        if date:
            return [dt.date.fromisoformat(date).isoformat()]
        if span is not None:
            dates = range_dates(lake, input_days, *span)
            log.info("score: range %s to %s: %d dates to replace", span[0], span[1], len(dates))
            return dates
        return sorted(input_days)

    def finish(dates: list[str], write: Callable[[list[str]], tuple[int, int]]) -> ScoreSummary:
        """The writes and the summary: the same after either path."""
        if since_last_run and not date:
            log.info("score: last date scored by model %s: %s; scoring %s", bundle.version, last, dates)
            if not dates:
                return ScoreSummary(run_id, bundle.version, [], 0, 0)
        if not dates:
            raise StageInputError(f"{kind.input_table} has no {kind.unit} to score")
        n_rows, n_anomalies = write(dates)
        log.info("score: %d %s scored on %d dates (%d flagged); %s", n_rows, kind.unit, len(dates),
                 n_anomalies, sizes)
        summary = ScoreSummary(run_id, bundle.version, dates, n_rows, n_anomalies)
        log.info("score %s: %d %s over %d dates, %d anomalies (%s %s)", run_id, summary.windows, kind.unit,
                 len(dates), summary.anomalies, bundle.kind, bundle.version)
        return summary

    rule = BaselineRule.from_config(cfg)
    local = None
    if cfg.score.local_max_bytes > 0:
        local = driver_input(checked, cfg.score.local_max_bytes, kind.row_floats(bundle),
                             None if on_disk is None else sum(on_disk.values()))
    if local is not None:
        scored_rows = score_on_driver(kind, bundle, local, source.column, cfg.score.explain_top_k, inference,
                                      sizes.arrow_rows, run_id)
        # The dates of the rows scored (the same before and after judging), replaced by the writes.
        replaced = dates_to_replace(sorted({d.isoformat() for d in scored_rows.column("date").to_pylist() if d}))
        if rule is not None:
            # History ends before the first date this run replaces (those dates' old scores go).
            scored_rows = judge_table(spark, scored_rows, lake, Scorer.of(bundle), replaced, rule)
        counts = arrow_per_date(source, scored_rows, inputs=rows)

        def write_local(dates: list[str]) -> tuple[int, int]:
            write_scores_arrow(lake, scored_rows, dates, run_id)
            return sum(int(r["n"]) for r in counts), sum(int(r["flagged"]) for r in counts)

        return finish(replaced, write_local)

    # The Spark path. The dates come from the input's Delta log (or, where it cannot be read here,
    # one query of the date column), so the pass can write ``scores`` as it scores.
    if on_disk is not None:
        input_days: list[str] = sorted(on_disk)
    else:
        input_days = sorted(r["date"].isoformat() for r in rows.select("date").distinct().collect()
                            if r["date"] is not None)
    files = spark.sparkContext.broadcast({name: Path(model_dir, name).read_bytes() for name in BUNDLE_FILES})
    staging_root = Path(lake.root, STAGING_FOLDER)
    for stale in staging_root.glob("score-*"):  # a run killed before cleaning up (we hold the writer lock)
        shutil.rmtree(stale, ignore_errors=True)
    folder = staging_root / run_id
    try:
        return finish(dates_to_replace(input_days), lambda dates: write_on_executors(
            spark, lake, source, checked, rows, kind, bundle, files, str(folder), cfg.score.explain_top_k, inference,
            sizes, dates, run_id, rule))
    finally:
        files.unpersist()
        shutil.rmtree(folder, ignore_errors=True)


#: The lake's folder for files a run stages before it commits them (removed after the run).
STAGING_FOLDER = "_staging"


def write_on_executors(spark: SparkSession, lake: Lake, source: ScoringInput, checked: DataFrame, inputs: DataFrame,
                       kind: ModelKind, bundle: Any, files: Any, folder: str, top_k: int, inference: Inference,
                       sizes: ScoringSizes, dates: list[str], run_id: str,
                       rule: BaselineRule | None = None) -> tuple[int, int]:
    """The Spark path's two commits from one scoring pass: ``scores``, then ``anomalies``.

    The pass scores ``checked`` (the input with the checks' flags) and is the ``scores`` write;
    its tasks stage the flagged rows (:class:`AnomalyStaging`), from which ``anomalies`` is
    written. Returns (rows scored, rows flagged). With per-entity baselines (``rule``) the flags
    are decided after a shuffle by entity (:mod:`loganomaly.scoring.baseline`), so ``anomalies``
    is this run's flagged rows of ``scores`` as written instead of the staged files.

    Raises:
        ModelError: a row the kind's checks refuse (nothing is committed).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    spec = TABLES["scores"]
    os.makedirs(folder, exist_ok=True)
    threshold = float(bundle.threshold)
    reports = spark.sparkContext.accumulator([], _Reports())
    struct = StructType.fromDDL(TABLES["anomalies"].ddl)
    assert isinstance(struct, StructType)
    staging = AnomalyStaging(folder, spark_to_delta_arrow(struct), threshold, bundle.version, run_id, reports,
                             stage_rows=rule is None)
    carried = [f for f in checked.schema.fields if f.name not in KEY_COLUMNS and f.name != source.column]
    schema = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in checked.select(*KEY_COLUMNS).schema.fields)
    schema += ", " + RESULT_COLUMNS + "".join(f", {f.name} {f.dataType.simpleString()}" for f in carried)
    scored = checked.mapInArrow(
        score_partitions(kind, bundle.version, files, source.column, top_k, inference, "_refused", staging),
        schema,
    ).select(
        *KEY_COLUMNS,
        "score",
        F.lit(threshold).alias("threshold"),
        (F.col("score") > F.lit(threshold)).alias("is_anomaly"),
        "explanation",
        "top_features",
        F.lit(bundle.version).alias("model_version"),
        F.lit(run_id).alias("run_id"),
    )
    if rule is not None:
        scored = judge_dataframe(scored, lake, Scorer.of(bundle), dates, rule)
    try:
        with arrow_batch_rows(spark, sizes):
            lake.write("scores", scored.select(*spec.columns), mode="overwrite", partition_by=spec.partition_by,
                       replace_where={"date": dates}, run_id=run_id)
    except Exception as exc:
        if REFUSED_MARKER in str(exc):
            raise_refused(source, inputs)
        raise
    staged = [f for report in reports.value for f in report["files"]]
    counts: dict[str, list[int]] = {}
    for report in reports.value:
        for day, (n, n_flagged) in report["counts"].items():
            total = counts.setdefault(day, [0, 0])
            total[0] += n
            total[1] += n_flagged
    n_flagged = sum(f for _, f in counts.values())
    if rule is not None:
        flagged_rows = lake.read("scores").where(
            F.col("is_anomaly") & (F.col("run_id") == F.lit(run_id))
            & F.col("date").isin([dt.date.fromisoformat(d) for d in dates]))
        flagged_rows = flagged_rows.select(*spec.columns).persist()
        n_flagged = flagged_rows.count()
    else:
        flagged_rows = spark.read.schema(struct).parquet(*staged) if staged else spark.createDataFrame([], struct)
    try:
        lake.write("anomalies", flagged_rows.select(*spec.columns), mode="overwrite", partition_by=spec.partition_by,
                   replace_where={"date": dates}, run_id=run_id)
    finally:
        if rule is not None:
            flagged_rows.unpersist()
    return sum(n for n, _ in counts.values()), n_flagged


#: Bytes assumed per row when a kind's rows vary in size (``row_floats`` None), to cap the probe.
_VARIABLE_ROW_BYTES = 256


def input_dates(lake: Lake, table: str, date: dt.date | None, span: tuple[dt.date, dt.date] | None,
                since: dt.date | None) -> dict[str, int] | None:
    """Bytes on disk of ``table``'s files per date (``YYYY-MM-DD``) a run scores, from the Delta log
    (no Spark job); None when the table is not partitioned by ``date`` or its log cannot be read here.

    The dates are those the Spark path replaces (it writes as it scores, so it needs them before
    the pass), and their total lets a large night skip :func:`driver_input`'s probe: rows take at
    least their compressed size in memory, so an input whose files hold more than twice the limit
    cannot fit. Files of a null date are left out (no window has one).
    """
    try:
        files = snapshot_files(lake.path(table), None)
    except Exception as exc:  # noqa: BLE001 - a hint only: without it the probe and one query decide
        log.debug("score: no file list for %s (%s); the probe and a query of the dates decide", table, exc)
        return None
    if files is None or any("date" not in values for _, _, values in files):
        return None
    days: dict[str, int] = {}
    for _, size, values in files:
        value = values["date"]
        if not value:
            continue
        day = dt.date.fromisoformat(value)
        if date is not None:
            keep = day == date
        elif span is not None:
            keep = span[0] <= day <= span[1]
        else:
            keep = since is None or day >= since
        if keep:
            days[day.isoformat()] = days.get(day.isoformat(), 0) + size
    return days


def input_bytes(lake: Lake, table: str, date: dt.date | None, span: tuple[dt.date, dt.date] | None,
                since: dt.date | None) -> int | None:
    """The total of :func:`input_dates` (None where it is None)."""
    days = input_dates(lake, table, date, span, since)
    return None if days is None else sum(days.values())


def driver_input(checked: DataFrame, max_bytes: int, row_floats: int | None,
                 on_disk: int | None = None) -> pa.Table | None:
    """The rows to score as one Arrow table in the driver, when they are few; else None.

    A nightly run over a few thousand windows spends most of its time starting what the scoring
    pass needs on the executors: Python workers that import torch and load the model (about 7 s
    of a fresh 1,000-window run here, against 1 s for a bare Spark job's whole pass). Rows that fit
    in ``score.local_max_bytes`` are collected instead (``limit`` + ``toArrow``: at most that many
    bytes, one pass that stops early) and scored by the driver, which has the model loaded
    already; a bigger input costs one probe of that size and takes the Spark path, unless its
    files on disk (``on_disk``, :func:`input_bytes`) already hold more than twice the limit, when
    no probe runs. 0 turns it off.
    """
    if max_bytes <= 0:
        return None
    if on_disk is not None and on_disk > 2 * max_bytes:
        log.info("score: %d bytes of input files on disk > 2 x score.local_max_bytes %d: the Spark path",
                 on_disk, max_bytes)
        return None
    cap = max_bytes // (4 * row_floats if row_floats else _VARIABLE_ROW_BYTES)
    if cap < 1:
        return None
    table = checked.limit(cap + 1).toArrow()
    if table.num_rows > cap or table.nbytes > max_bytes:
        log.info("score: more than %d rows or %d bytes to score: the Spark path", cap, max_bytes)
        return None
    log.info("score: %d rows (%d bytes) scored by the driver (score.local_max_bytes %d)", table.num_rows,
             table.nbytes, max_bytes)
    return table


def flagged(score: np.ndarray, threshold: float) -> np.ndarray:
    """``score > threshold`` as Spark SQL compares doubles (the Spark path's ``is_anomaly``): NaN is
    greater than every number, so a NaN score is flagged unless the threshold is NaN too."""
    if np.isnan(threshold):
        return np.zeros(len(score), dtype=bool)
    return (score > threshold) | np.isnan(score)


def score_on_driver(kind: ModelKind, bundle: Any, table: pa.Table, column: str, top_k: int, inference: Inference,
                    batch_rows: int, run_id: str) -> pa.Table:
    """:func:`driver_input`'s rows scored in this process: the Spark path's columns, same values.

    The model runs on the driver's device (a GPU where the driver has one) with the driver's torch
    threads; the batches are cut to the scoring size, as Spark would cut them.
    """
    device = pick_device("auto")
    model = bundle.build_model(device)
    parts = list(score_batches(kind, bundle, model, device, table.to_batches(max_chunksize=batch_rows), column,
                               top_k, inference, "_refused"))
    if parts:
        out = pa.Table.from_batches(parts)
    else:  # no rows: the same columns, empty
        names = [*KEY_COLUMNS, *RESULT_SCHEMA.names] + [n for n in table.column_names
                                                        if n not in KEY_COLUMNS and n != column]
        out = pa.table({n: pa.array([], table.schema.field(n).type if n in table.column_names
                                        else RESULT_SCHEMA.field(n).type) for n in names})
    n = out.num_rows
    threshold = float(bundle.threshold)
    score = out.column("score").to_numpy(zero_copy_only=False)
    columns = {
        **{name: out.column(name) for name in KEY_COLUMNS},
        "score": out.column("score"),
        "threshold": pa.array(np.full(n, threshold)),
        "is_anomaly": pa.array(flagged(score, threshold)),
        "explanation": out.column("explanation"),
        "top_features": out.column("top_features"),
        "model_version": pa.array([bundle.version] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
    }
    for name in out.column_names:
        if name.startswith("_bad"):
            columns[name] = out.column(name)
    return pa.table(columns)


def arrow_per_date(source: ScoringInput, scored: pa.Table, inputs: DataFrame) -> list[dict[str, Any]]:
    """Rows, flagged rows and the checks' flags per date of the rows the driver scored.

    Raises:
        ModelError: a check fails on some row (its value looked up in ``inputs``).
    """
    aggs: list[Any] = [([], "count_all"), ("is_anomaly", "sum")]
    table = scored.select(["date", "score", "is_anomaly"])
    for i, _ in enumerate(source.checks):
        table = table.append_column(f"bad{i}", pa.compute.cast(scored.column(f"_bad{i}"), pa.int8()))
        aggs.append((f"bad{i}", "max"))
    grouped = table.group_by("date").aggregate(aggs) if table.num_rows else None
    dates: list[dict[str, Any]] = []
    if grouped is not None:
        for r in grouped.to_pylist():
            row = {"date": r["date"], "n": int(r["count_all"]), "flagged": int(r["is_anomaly_sum"] or 0)}
            for i, _ in enumerate(source.checks):
                row[f"bad{i}"] = int(r[f"bad{i}_max"] or 0)
            dates.append(row)
    raise_failed_checks(source, dates, inputs)
    return dates


def write_scores_arrow(lake: Lake, scored: pa.Table, dates: list[str], run_id: str) -> None:
    """:func:`write_scores` for rows scored by the driver: the same two commits, from Arrow.

    With ``delta`` the JVM reads the rows from Arrow (no Python worker); with ``deltars`` the
    driver writes the Parquet files and commits them itself.
    """
    spec = TABLES["scores"]
    rows = scored.select(list(spec.columns))
    for name, data in (("scores", rows), ("anomalies", rows.filter(rows.column("is_anomaly")))):
        lake.write_arrow(name, data, spec.ddl, mode="overwrite", partition_by=spec.partition_by,
                         replace_where={"date": dates}, run_id=run_id)


@contextmanager
def arrow_batch_rows(spark: SparkSession, sizes: ScoringSizes) -> Iterator[None]:
    """``spark.sql.execution.arrow.maxRecordsPerBatch`` set to the scoring size, restored afterwards."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key, None)
    spark.conf.set(key, str(sizes.arrow_rows))
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
