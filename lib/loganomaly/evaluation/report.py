"""``report``: one self-contained HTML page about a model and its scores, for people to read.

Why one file: a report is mailed, attached to a ticket or opened from a job's artifacts, often
offline; so every plot is an embedded base64 PNG and the page loads nothing (no script, no
external stylesheet, no font). Plots are drawn with matplotlib's object API on the Agg canvas,
never through ``pyplot``, so building a report touches no global backend state of the process.

Only small things reach the driver: per-entity aggregates, the windows of the entities shown
(at most ``max_entities``), the top anomalies, and one (score, label) pair per window when labels
exist (for the PR and ROC curves). Every text put into the page goes through ``html.escape``:
explanations and entity names come from log lines, which an attacker can write.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from loganomaly.config import Config
from loganomaly.errors import StageInputError
from loganomaly.evaluation.metrics import evaluate as evaluate_arrays
from loganomaly.evaluation.stage import EVENTS_SOURCE, LabelledWindows, labelled_windows, read_label_file
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import kind_of, load_bundle
from loganomaly.models.kind import Bundle

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: Entities drawn as score timelines (the highest max scores); more would be unreadable.
MAX_ENTITIES = 12
TOP_ANOMALIES = 25
COLUMNS = 3
COLOURS = {"score": "#1f77b4", "threshold": "#d62728", "flag": "#d62728", "label": "#ff7f0e",
           "train": "#1f77b4", "val": "#2ca02c", "best": "#9467bd"}

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.2em 1.2em;font-size:.9em}
dl.meta dt{color:#666}dl.meta dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace}
img{max-width:100%;height:auto;border:1px solid #eee}.note{color:#666;font-style:italic}
"""


# ---------------------------------------------------------------- small helpers
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}g}"
    if isinstance(value, (dt.datetime, np.datetime64)):
        return str(value)[:19].replace("T", " ")
    return str(value)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure, name: str, figures_dir: Path | None) -> str:
    """The figure as an ``<img>`` with a base64 PNG (and as ``<figures_dir>/<name>.png`` when asked)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if figures_dir is not None:
        figures_dir.mkdir(parents=True, exist_ok=True)
        (figures_dir / f"{name}.png").write_bytes(data)
    return f'<img alt="{_e(name)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{_e(_fmt(v))}</td>' if i in numeric else f"<td>{_e(_fmt(v))}</td>"
            for i, v in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------- plots
def plot_timelines(
    windows: pd.DataFrame,
    threshold: float,
    intervals: list[tuple[Any, ...]] | None = None,
) -> Figure:
    """Small multiples: each entity's score over time, the threshold, flagged windows, labelled intervals.

    ``windows``: ``entity, window_start[, window_end], score, is_anomaly`` for the entities to draw, in the
    order to draw them. The y axis is logarithmic when every score is positive: a reconstruction
    error of an anomaly is often 100x the normal one, which flattens normal windows on a linear axis.
    """
    import matplotlib.dates as mdates

    entities = list(dict.fromkeys(windows["entity"]))
    rows = max(1, math.ceil(len(entities) / COLUMNS))
    ncols = min(COLUMNS, max(1, len(entities)))
    fig = _figure(4.2 * ncols, 2.4 * rows + 0.4)
    axes = fig.subplots(rows, ncols, sharex=True, sharey=True, squeeze=False)
    log_scale = bool((windows["score"] > 0).all())
    windows = windows.copy()
    # A window's score is drawn at its midpoint: drawn at its start, a spike sits up to a window
    # length before the anomaly that caused it and looks misaligned with the labelled interval.
    if "window_end" in windows:
        windows["t"] = windows["window_start"] + (windows["window_end"] - windows["window_start"]) / 2
    else:
        windows["t"] = windows["window_start"]
    by_entity = {e: g.sort_values("t") for e, g in windows.groupby("entity", sort=False)}
    period = (windows["window_start"].max() - windows["window_start"].min()) if len(windows) else None
    min_span = (period.to_pytimedelta() if period is not None else dt.timedelta(0)) / 100
    for i, ax in enumerate(axes.flat):
        if i >= len(entities):
            ax.set_visible(False)
            continue
        entity = entities[i]
        g = by_entity[entity]
        for _, start, end, *_rest in (iv for iv in intervals or [] if iv[0] == entity):
            # Widened to at least 1% of the plotted period: a 10-minute interval over days of data
            # would otherwise be a hairline nobody sees.
            lo, hi = _naive(start), _naive(end)
            pad = max(dt.timedelta(0), (min_span - (hi - lo)) / 2)
            ax.axvspan(lo - pad, hi + pad, color=COLOURS["label"], alpha=0.35, lw=0, label="labelled anomaly")
        ax.plot(g["t"], g["score"], color=COLOURS["score"], lw=0.9, label="score")
        flagged = g[g["is_anomaly"]]
        ax.scatter(flagged["t"], flagged["score"], s=14, color=COLOURS["flag"], zorder=3,
                   label="flagged")
        ax.axhline(threshold, color=COLOURS["threshold"], ls="--", lw=0.9, label="threshold")
        name = entity if len(entity) <= 40 else entity[:39] + "…"
        ax.set_title(f"{name}  ({len(flagged)} flagged)", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if log_scale:
            ax.set_yscale("log")
        locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
        formatter = mdates.ConciseDateFormatter(locator)
        # The default offset names the last tick's day, which reads as the period's date; the
        # ticks already carry the days, so the offset only says the month and year.
        formatter.offset_formats = ["", "%Y", "%b %Y", "%b %Y", "%b %Y", "%b %Y"]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(formatter)
    for i in range(max(0, len(entities) - ncols), len(entities)):
        # The last plot of each column carries the time axis (sharex hides it above empty cells).
        axes.flat[i].tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("score", fontsize=8)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=False):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside upper right", ncols=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle("Window scores per entity (UTC)", fontsize=10, x=0.01, ha="left")
    return fig


def _naive(value: dt.datetime) -> dt.datetime:
    """UTC as a naive datetime, as ``toPandas`` gives window times (session time zone UTC)."""
    if value.tzinfo is None:
        return value
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


def plot_curves(data: LabelledWindows, best_threshold: float | None) -> Figure:
    """PR and ROC curves, with the operating points of the stored and the best-F1 threshold."""
    from sklearn import metrics

    fig = _figure(10, 4.2)
    pr_ax, roc_ax = fig.subplots(1, 2)
    precision, recall, _ = metrics.precision_recall_curve(data.labels, data.scores)
    fpr, tpr, _ = metrics.roc_curve(data.labels, data.scores)
    ap = metrics.average_precision_score(data.labels, data.scores)
    auc = metrics.roc_auc_score(data.labels, data.scores)
    pr_ax.step(recall, precision, where="post", color=COLOURS["score"], label=f"PR (AP {ap:.3f})")
    pr_ax.axhline(data.labels.mean(), color="#999", ls=":", lw=1, label=f"chance ({data.labels.mean():.3f})")
    roc_ax.plot(fpr, tpr, color=COLOURS["score"], label=f"ROC (AUC {auc:.3f})")
    roc_ax.plot([0, 1], [0, 1], color="#999", ls=":", lw=1, label="chance")
    points = [("stored threshold", data.threshold, COLOURS["threshold"], "o")]
    if best_threshold is not None:
        points.append(("best-F1 threshold", best_threshold, COLOURS["best"], "s"))
    positives, negatives = data.labels == 1, data.labels == 0
    for name, t, colour, marker in points:
        pred = data.scores > t
        tp, fp = int((pred & positives).sum()), int((pred & negatives).sum())
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / max(1, int(positives.sum()))
        pr_ax.plot([r], [p], marker=marker, color=colour, ls="", ms=8, label=f"{name} {t:.4g}")
        roc_ax.plot([fp / max(1, int(negatives.sum()))], [r], marker=marker, color=colour, ls="", ms=8,
                    label=f"{name} {t:.4g}")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(-0.02, 1.02),
              ylim=(-0.02, 1.05))
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(-0.02, 1.02),
               ylim=(-0.02, 1.05))
    for ax in (pr_ax, roc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
    return fig


def plot_training(history: list[dict[str, Any]], best_epoch: int | None) -> Figure:
    """Train and validation loss per epoch; the best (kept) epoch marked."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(7, 3.6)
    ax = fig.subplots()
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    for key, colour in (("train_loss", COLOURS["train"]), ("val_loss", COLOURS["val"])):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", ms=3, color=colour,
                    label=key.replace("_", " "))
    if best_epoch is not None:
        ax.axvline(best_epoch, color=COLOURS["best"], ls="--", lw=1, label=f"best epoch {best_epoch}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="loss (mean squared error)", title="Training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_histogram(scores: np.ndarray, threshold: float) -> Figure:
    """Distribution of all window scores (log-spaced bins) with the threshold."""
    fig = _figure(7, 3.2)
    ax = fig.subplots()
    positive = scores[scores > 0]
    if len(positive) == len(scores) and len(scores) and positive.max() > positive.min():
        bins: Any = np.geomspace(positive.min(), positive.max(), 60)
        ax.set_xscale("log")
    else:
        bins = 60
    ax.hist(scores, bins=bins, color=COLOURS["score"], alpha=0.8)
    ax.axvline(threshold, color=COLOURS["threshold"], ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax.set_yscale("log")
    ax.set(xlabel="score", ylabel="windows", title=f"Score distribution ({len(scores)} windows)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- the report
def _labels(
    spark: SparkSession, lake: Lake, bundle: Bundle, labels: str | Path | None
) -> tuple[LabelledWindows | None, list[tuple[Any, ...]] | None, str]:
    """Labelled windows (or None), interval labels to shade (or None), and a note on what was used."""
    intervals = None
    if labels is not None:
        kind, rows = read_label_file(labels)
        intervals = rows if kind == "intervals" else None
    elif not lake.exists("events"):
        return None, None, "no labels file given and no events table: no PR/ROC curves"
    try:
        data = labelled_windows(spark, lake, bundle.version, labels)
    except StageInputError as exc:
        return None, intervals, f"no usable labels ({exc})"
    if data.labels.min() == data.labels.max():
        kind_ = "anomalies" if data.labels[0] == 1 else "normal windows"
        source = "the events' label column" if data.label_source == EVENTS_SOURCE else data.label_source
        return None, intervals, f"labels from {source} hold only {kind_}: PR/ROC curves are undefined"
    return data, intervals, f"labels from {data.label_source}"


def build_report(
    spark: SparkSession,
    cfg: Config,
    model_dir: str | Path,
    out: Path,
    lake: Lake | None = None,
    labels: str | Path | None = None,
    max_entities: int = MAX_ENTITIES,
    top_anomalies: int = TOP_ANOMALIES,
    figures_dir: Path | None = None,
) -> Path:
    """Write the HTML report of the model in ``model_dir`` and its ``scores`` to ``out``.

    Example:
        >>> build_report(spark, cfg, "model", Path("report.html"), labels="raw/labels.csv")  # doctest: +SKIP
        PosixPath('report.html')

    Args:
        labels: a labels CSV (see :func:`loganomaly.evaluation.stage.read_label_file`); ``None`` tries the
            events' ``label`` column. Interval labels are also shaded on the timelines.
        max_entities: entities drawn as timelines, those with the highest max score.
        figures_dir: also write every plot there as PNG (for checking the plots by eye).

    Raises:
        StageInputError: no ``scores`` table, or no window scored by this model.
        ModelError: no loadable bundle in ``model_dir``.
    """
    from pyspark.sql import functions as F

    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    bundle = load_bundle(model_dir)
    scores_version = lake.version("scores")
    if scores_version is None:
        raise StageInputError(f"no scores table under {lake.root}; run `loganomaly score` first")
    scores = lake.read("scores", version=scores_version).where(F.col("model_version") == F.lit(bundle.version))
    per_entity = cast("pd.DataFrame", (
        scores.groupBy("entity")
        .agg(F.max("score").alias("max_score"), F.count(F.lit(1)).alias("windows"),
             F.sum(F.col("is_anomaly").cast("long")).alias("flagged"),
             F.min("window_start").alias("first"), F.max("window_end").alias("last"))
        .orderBy(F.desc("max_score"), "entity")
        .toPandas()
    ))
    if per_entity.empty:
        raise StageInputError(f"scores (version {scores_version}) holds no window of model {bundle.version}")
    shown = list(per_entity["entity"][:max_entities])
    windows = cast("pd.DataFrame", scores.where(F.col("entity").isin(shown))
                   .select("entity", "window_start", "window_end", "score", "is_anomaly").toPandas())
    windows["entity"] = windows["entity"].astype(str)
    order = {e: i for i, e in enumerate(shown)}
    windows = windows.sort_values(["entity", "window_start"], key=lambda c: c.map(order) if c.name == "entity" else c)
    top = (
        scores.where(F.col("is_anomaly"))
        .orderBy(F.desc("score"))
        .limit(top_anomalies)
        .select("entity", "window_start", "window_end", "score", "explanation", "top_features")
        .collect()
    )
    all_scores = scores.select("score").toArrow().column("score").to_numpy(zero_copy_only=False)
    data, intervals, label_note = _labels(spark, lake, bundle, labels)

    threshold = float(bundle.threshold)
    n_windows, n_flagged = int(per_entity["windows"].sum()), int(per_entity["flagged"].sum())
    history = list(bundle.training.get("history") or [])
    best_epoch = bundle.metrics.get("best_epoch")
    kind = kind_of(bundle.kind)
    versions = {
        f"{kind.input_table} (trained on)": bundle.training.get(f"{kind.input_table}_version"),
        "scores": scores_version,
        "events": lake.version("events"),
        "evaluations": lake.version("evaluations"),
    }
    meta = [
        ("model version", bundle.version),
        ("model kind", f"{kind.name} ({bundle.kind})"),
        ("threshold", f"{threshold:.6g}"),
        *kind.report_facts(bundle),
        ("training run", bundle.training.get("run_id")),
        ("training split", ", ".join(f"{k} {v}" for k, v in (bundle.training.get("split") or {}).items())),
        ("data versions", ", ".join(f"{k} v{v}" for k, v in versions.items() if v is not None)),
        (f"{kind.unit} scored", f"{n_windows} over {len(per_entity)} entities, "
                               f"{_fmt(per_entity['first'].min())} to {_fmt(per_entity['last'].max())} UTC"),
        (f"{kind.unit} flagged", f"{n_flagged} ({100 * n_flagged / max(1, n_windows):.2f}%)"),
        ("labels", label_note),
        ("generated", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>loganomaly report: model {_e(bundle.version)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>loganomaly report: model {_e(bundle.version)}</h1>",
        '<section id="summary"><dl class="meta">',
        *(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta),
        "</dl></section>",
    ]

    parts.append('<section id="timelines"><h2>Score timelines</h2>')
    note = f"The {len(shown)} {'entity' if len(shown) == 1 else 'entities'} with the highest maximum score"
    if len(per_entity) > len(shown):
        note += f" (of {len(per_entity)})"
    parts.append(f'<p class="note">{_e(note)}; dashed line: threshold; red dots: flagged windows'
                 f"{'; shaded: labelled anomalies' if intervals else ''}.</p>")
    parts.append(_png(plot_timelines(windows, threshold, intervals), "timelines", figures_dir))
    parts.append(_png(plot_histogram(all_scores, threshold), "score_histogram", figures_dir))
    parts.append(_table(
        ["entity", "windows", "flagged", "max score"],
        [[r.entity, int(r.windows), int(r.flagged or 0), float(r.max_score)]
         for r in per_entity.head(max_entities).itertuples()],
        numeric={1, 2, 3},
    ))
    parts.append("</section>")

    parts.append(f'<section id="anomalies"><h2>Top anomalies ({len(top)} of {n_flagged} flagged)</h2>')
    if top:
        parts.append(_table(
            ["entity", "window start", "window end", "score", "× threshold", "top features", "explanation"],
            [[r.entity, r.window_start, r.window_end, float(r.score), f"{r.score / threshold:.1f}"
              if threshold > 0 else "–", ", ".join(r.top_features or []), r.explanation] for r in top],
            numeric={3, 4},
        ))
    else:
        parts.append('<p class="note">No window is above the threshold.</p>')
    parts.append("</section>")

    parts.append('<section id="evaluation"><h2>Evaluation against labels</h2>')
    if data is not None:
        stored = evaluate_arrays(data.scores, data.labels, data.threshold, flagged=data.flags)
        best_t = stored["best_f1_threshold"]
        best = evaluate_arrays(data.scores, data.labels, best_t)
        parts.append(_table(
            ["threshold kind", "threshold", "precision", "recall", "F1", "ROC-AUC", "PR-AUC", "TP", "FP", "TN", "FN"],
            [[kind, r["threshold"], r["precision"], r["recall"], r["f1"], r["roc_auc"], r["pr_auc"],
              r["tp"], r["fp"], r["tn"], r["fn"]] for kind, r in (("stored", stored), ("best F1", best))],
            numeric=set(range(1, 11)),
        ))
        parts.append(f'<p class="note">{_e(len(data.labels))} labelled windows, {_e(int(data.labels.sum()))} '
                     f"anomalous; {_e(label_note)}.</p>")
        parts.append(_png(plot_curves(data, best_t), "pr_roc", figures_dir))
    else:
        parts.append(f'<p class="note">{_e(label_note)}.</p>')
    parts.append("</section>")

    parts.append('<section id="training"><h2>Training</h2>')
    if history:
        parts.append(_png(plot_training(history, best_epoch), "training", figures_dir))
        parts.append(f'<p class="note">{_e(len(history))} epochs; best validation loss '
                     f"{_e(_fmt(bundle.metrics.get('best_val_loss')))} at epoch {_e(best_epoch)}; "
                     f"{_e(bundle.training.get(f'train_{kind.unit}'))} training and "
                     f"{_e(bundle.training.get(f'validation_{kind.unit}'))} validation {_e(kind.unit)}.</p>")
    else:
        parts.append('<p class="note">The bundle has no training history.</p>')
    parts.append("</section></body></html>")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")
    log.info("report for model %s: %d windows, %d flagged, %d entities drawn -> %s",
             bundle.version, n_windows, n_flagged, len(shown), out)
    return out
