"""``featurize``: ``events`` -> per-entity time-step features -> sliding windows in ``sequences``.

Spark aggregates events into (entity, step) rows; each entity's steps are then cut into windows
by the Spark-free :func:`loganomaly.features.windows.build_windows` inside ``applyInPandas``. Features are
stored raw (sign-preserving log1p of counts, sums and metric means); normalisation is fitted on the training split only and travels with
the model, so the same ``sequences`` serve training and scoring.

Feature list rule. Besides the fixed :data:`loganomaly.features.windows.FEATURE_NAMES`, every step counts
the events of each of the ``k`` most frequent templates (``tpl:<id>``), of every other known
template (``tpl:other``) and of messages no template covers (``tpl:unknown``, id ``T0``; flow
records without a message count in neither; none of the three with ``features.template_counts``
off, as in the ``zeek`` profile), then the step mean of each numeric attribute named
in ``features.metrics`` (``metric:<name>``, e.g. the columns of a CSV metric series), then, per
field of ``features.categories``, the events with each of its frequent values
(``cat:<field>=<value>``) and with any other (``cat:<field>=<other>``). Which templates and
values are "frequent" is a fitted choice,
so it must come from the training period only and must not move under a trained model:

1. if ``sequences`` already exists and has ``feature_names``, those names are reused as they are
   (a nightly run over new dates keeps the same columns, so the deployed model can score them);
2. otherwise (first run, or ``refit_templates=True`` after a deliberate retrain), the templates
   are :func:`choose_feature_templates` over the events before ``train.train_until``, or, when
   that is empty, before the first ``train.train_fraction`` of the events' time range (the same
   cut ``train`` makes over windows, here over event times).

The names are written on every ``sequences`` row (``feature_names``); ``train`` copies them into
the model bundle and ``score`` refuses windows whose names differ from the bundle's.

Write rule. ``sequences`` (and ``sessions``) are rebuilt from the whole ``events`` snapshot and
written as one atomic overwrite rather than ``replace_where`` per date: windows straddle midnight
and need the neighbouring day's steps, the rebuild is deterministic (a rerun gives the same rows),
one commit keeps one ``feature_names`` list across the table, and a full overwrite is the only
write that may change the table's schema (old tables gain the new columns). The one column whose
type it never changes is ``features``: a new table stores binary float32 tensors, an existing one
keeps the layout it has (:func:`table_layout`, :mod:`loganomaly.features.layout`). The nightly run
passes ``since`` instead: only the dates whose windows can hold the new day's events are
rebuilt, from one window length before it, and replaced (:func:`incremental_windows`), with the
table's feature names kept.

Windows keep references to their events cheaply: the raw lines of a window are the ``events``
rows of its ``entity`` with ``window_start <= ts < window_end``; ``first_event_ts`` and
``last_event_ts`` narrow that to where they are. Sessions (optional, see :func:`session_frame`)
store ``event_ids`` explicitly, because a session key is not a time range.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from loganomaly.config import Config
from loganomaly.errors import ConfigError, StageInputError
from loganomaly.features.entities import GroupRules, group_column, in_networks
from loganomaly.features.labels import is_abnormal_label
from loganomaly.features.layout import LAYOUT_TYPES, NEW_LAYOUT, Layout, layout_of, window_bytes
from loganomaly.features.windows import (
    GROUP_PREFIX,
    HISTORY_STEPS,
    METRIC_PREFIX,
    NEW_ERRORS,
    OTHER_CATEGORY,
    OTHER_TEMPLATES,
    RELATIVE_PREFIX,
    TEMPLATE_PREFIX,
    UNKNOWN_TEMPLATES,
    WindowSpec,
    build_windows,
    category_feature,
    feature_categories,
    feature_groups,
    feature_metrics,
    feature_names_for,
    feature_templates,
    relative_bases,
)
from loganomaly.lake.lock import writer_lock
from loganomaly.lake.schemas import EVENT_COLUMNS, TABLES, UNKNOWN_TEMPLATE_ID
from loganomaly.lake.tables import Lake
from loganomaly.runtime.runs import new_run_id, resolve_date

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

#: Connection states that mean the connection did not complete normally (Zeek ``conn_state``).
FAILED_CONN_STATES = ["S0", "REJ", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH"]
#: TCP attempts the originator made that never became a connection: its SYN unanswered (S0),
#: refused (REJ) or given up with a reset (RSTOS0). ``repeated_failures`` counts these. Not
#: attempts: RSTO/RSTR (reset after it was established), UDP's S0 (a datagram without reply,
#: normal for multicast), and the states a one-sided capture makes of ordinary connections:
#: SH (the originator's FIN after a SYN-ACK the sensor did not see), SHR and RSTRH (the
#: responder's SYN-ACK to a SYN the sensor did not see). In the Zeek captures those three are
#: 190 of the benign hosts' 282 failures (008, 010) and 79 of about 10,700 malicious ones; a busy
#: workstation behind a tap seeing one direction made 7-9 of them to one HTTPS server in a
#: window, which the indicator flagged as a bot's retries (README "Leave one capture out").
UNESTABLISHED_TCP_STATES = ["S0", "REJ", "RSTOS0"]
#: Zeek ``weird`` names for a request the sensor could not parse as its connection's protocol,
#: which ``malformed_requests`` counts. ``bad_HTTP_request``: the originator's bytes on a
#: connection Zeek analyses as HTTP are no request line (not ``bad_HTTP_reply``: that is the
#: server's side). In the labelled Zeek captures: 1,395 records, every one from capture 009's
#: Kovter host after its burst of unnamed requests ended, none from any benign or background host
#: of 001, 008, 009 or 010 (README "Leave one capture out").
MALFORMED_REQUEST_WEIRDS = ["bad_HTTP_request"]
#: An HTTP ``Host`` that is an address, not a name: IPv4 or bracketed IPv6 with an optional port,
#: or a bare IPv6 address.
ADDRESS_HOST = r"^(\d{1,3}(\.\d{1,3}){3}(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?|[0-9A-Fa-f]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)$"
ERROR_LEVELS = ["emerg", "alert", "crit", "err", "error", "fatal", "critical"]
WARNING_LEVELS = ["warning", "warn"]

#: Relative rank error of the per-step duration quantiles: coarse is enough for p50/p95 and
#: keeps the per-group sketch small.
DURATION_QUANTILE_ACCURACY = 100

#: Example key: HDFS block ids among the template parameters (one session per block).
HDFS_BLOCK_KEY = r"params:blk_-?\d+"


def signed_log1p(x: Column) -> Column:
    """``sign(x) * log1p(|x|)`` (Spark twin of :func:`loganomaly.features.windows.signed_log1p`)."""
    from pyspark.sql import functions as F

    return F.signum(x) * F.log1p(F.abs(x))


# ---------------------------------------------------------------- feature list
def training_cut(events: DataFrame, cfg: Config) -> float | None:
    """End of the training period (epoch seconds) as ``train`` will cut it; ``None`` for no events.

    ``train.train_until`` when set, else ``train.train_fraction`` of the events' time range
    (:func:`loganomaly.training.stage.chronological_split` does the same over window times; it is not
    imported here because ``train`` pulls in torch).
    """
    from pyspark.sql import functions as F

    if cfg.train.train_until:
        until = dt.datetime.fromisoformat(cfg.train.train_until)
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.timezone.utc)
        return until.timestamp()
    row = events.agg(
        F.min(F.unix_micros("ts")).alias("lo"), F.max(F.unix_micros("ts")).alias("hi")
    ).collect()[0]
    if row["lo"] is None:
        return None
    lo, hi = row["lo"] / 1e6, row["hi"] / 1e6
    return float(lo + (hi - lo) * cfg.train.train_fraction)


def choose_feature_templates(events_df: DataFrame, cut: float | None, k: int) -> list[str]:
    """The ``k`` most frequent known templates among events before ``cut`` (epoch seconds).

    Ties go to the smaller template id so the choice is deterministic. ``T0`` (unknown) and
    events without a template never count: they have their own bucket. ``cut=None`` uses every
    event (only for callers without a training period; :func:`run` always passes one).

    Example:
        >>> choose_feature_templates(lake.read("events"), cut=1709596800.0, k=8)
        ['T3f2a...', 'T91c0...', ...]
    """
    from pyspark.sql import functions as F

    if k <= 0:
        return []
    known = events_df.where(F.col("template_id").isNotNull() & (F.col("template_id") != UNKNOWN_TEMPLATE_ID))
    if cut is not None:
        known = known.where(F.unix_micros("ts") < F.lit(int(cut * 1e6)))
    rows = (
        known.groupBy("template_id")
        .agg(F.count(F.lit(1)).alias("n"))
        .orderBy(F.col("n").desc(), F.col("template_id"))
        .limit(k)
        .collect()
    )
    return [str(r["template_id"]) for r in rows]


#: ``events`` columns a categorical feature may name directly; any other name is an attribute.
CATEGORY_COLUMNS = ("status", "proto", "component", "level", "source", "format", "dst_port", "src_port")


def category_column(field: str) -> Column:
    """The events column (as text) or attribute that ``features.categories`` entry ``field`` names."""
    from pyspark.sql import functions as F

    if field in CATEGORY_COLUMNS:
        return F.col(field).cast("string")
    return F.col("attributes")[field]


def choose_feature_categories(events_df: DataFrame, cut: float | None, fields: Sequence[str],
                              k: int) -> dict[str, list[str]]:
    """The ``k`` most frequent values of each categorical field among events before ``cut``.

    Ties break by value so the choice is deterministic; a field with no value in the period gets
    none (only its ``<other>`` count). Like the templates, the choice is fitted on the training
    period only and then kept with the feature names.

    Example:
        >>> choose_feature_categories(lake.read("events"), cut=None, fields=["status"], k=3)
        {'status': ['SF', 'S0', 'REJ']}
    """
    from pyspark.sql import functions as F

    events = events_df if cut is None else events_df.where(F.unix_timestamp("ts") < F.lit(cut))
    chosen: dict[str, list[str]] = {}
    for name in fields:
        rows = (
            events.select(category_column(name).alias("v")).where(F.col("v").isNotNull() & (F.col("v") != ""))
            .groupBy("v").count().orderBy(F.desc("count"), F.asc("v")).limit(k).collect()
        )
        chosen[name] = [str(r["v"]) for r in rows]
        log.info("featurize: %d frequent values of %s counted as features: %s", len(chosen[name]), name,
                 chosen[name][:10])
    return chosen


def table_layout(lake: Lake) -> Layout:
    """How this run stores ``features``: the existing table's layout, else :data:`NEW_LAYOUT`.

    An existing table keeps its layout on every write (``--since`` replacing dates, a full
    rebuild, a refit): a ``replace_where`` write must match the table's schema anyway, and a full
    rebuild that changed the column's type would break whatever reads the table outside the
    library (SQL, notebooks, an older version of this package on a cluster) without warning.
    A new table (or one removed and rebuilt from ``events``) gets the binary layout.
    """
    if not lake.exists("sequences"):
        return NEW_LAYOUT
    current = lake.read("sequences").schema
    if "features" not in current.names:
        return NEW_LAYOUT
    return layout_of(current["features"].dataType)


def previous_feature_names(lake: Lake) -> list[str] | None:
    """Feature names of the current ``sequences`` snapshot, if it has a usable list."""
    if not lake.exists("sequences"):
        return None
    current = lake.read("sequences")
    if "feature_names" not in current.columns:
        return None
    row = current.select("feature_names").limit(1).collect()
    if not row or row[0]["feature_names"] is None:
        return None
    names = [str(n) for n in row[0]["feature_names"]]
    try:
        feature_templates(names)
    except ValueError as exc:
        log.warning("featurize: previous sequences feature names are not reusable (%s); choosing again", exc)
        return None
    return names


# ---------------------------------------------------------------- step features
def group_rules(cfg: Config) -> GroupRules:
    """The peer-group rules of ``features.local_networks``, ``features.groups`` and ``features.default_group``."""
    return GroupRules.from_config(cfg.features.local_networks, cfg.features.groups, cfg.features.default_group)


@dataclass(frozen=True)
class EntitySettings:
    """How the entity features of a run are computed (``features.*`` config, fixed per run).

    Attributes:
        rules: peer-group rules.
        baseline_steps: trailing horizon of the per-entity baseline, in steps.
        baseline_min_steps: fewer earlier busy steps than this: the peer group's baseline is used.
        cut: end of the training period (epoch seconds) whose steps give the peer-group baselines.
        group_baselines: baselines to use instead of computing them (group -> feature -> log1p
            mean; group ``*`` the fallback), e.g. the ``peer_baselines`` of an earlier run.
        baseline_statistic: ``mean`` or ``median`` of the earlier steps (``features.baseline_statistic``).
    """

    rules: GroupRules
    baseline_steps: int
    baseline_min_steps: int
    cut: float | None = None
    group_baselines: dict[str, dict[str, float]] | None = None
    baseline_statistic: str = "mean"

    @classmethod
    def from_config(cls, cfg: Config, cut: float | None = None,
                    group_baselines: dict[str, dict[str, float]] | None = None) -> EntitySettings:
        return cls(group_rules(cfg), cfg.features.baseline_steps, cfg.features.baseline_min_steps, cut, group_baselines,
                   cfg.features.baseline_statistic)


#: Rank accuracy of the trailing median (``percentile_approx``): beyond any horizon in steps a
#: run uses, so the median of the frame is exact up to the lower-middle element of an even count.
MEDIAN_ACCURACY = 100_000


def base_columns(feature_names: Sequence[str]) -> dict[str, str]:
    """Column of each ``rel:`` base in :func:`step_features` rows: ``_f<i>`` for a base in the
    list, ``_b<j>`` for a metric whose level is left out (``features.metric_levels: false``) but
    whose value the baseline is computed from."""
    position = {name: i for i, name in enumerate(feature_names)}
    bases = relative_bases(feature_metrics(feature_names))
    return {b: f"_f{position[b]}" if b in position else f"_b{j}" for j, b in enumerate(bases)}


#: Group key of the all-entities baseline in ``peer_baselines``.
ALL_GROUPS = "*"


def zeek_flag(value: Column) -> Column:
    """Zeek's ``T``/``F`` (or true/false) as a boolean, null when absent."""
    from pyspark.sql import functions as F

    low = F.lower(value)
    return F.when(low.isin("t", "true"), F.lit(True)).when(low.isin("f", "false"), F.lit(False))


def without_sensor_weirds(events: DataFrame, names: Sequence[str]) -> DataFrame:
    """``events`` less the Zeek ``weird`` records named in ``names`` (``features.sensor_weirds``).

    Why: those weirds say how the sensor saw the traffic (one direction only, lost or truncated
    packets, checksums offloaded by the host's NIC), not what the host did. Their rate follows the
    tap, not the host: a busy workstation behind a one-sided tap logs hundreds a day (the monitored
    host of Zeek capture 010: 261 of its 298 weirds) where the training captures' hosts log a few,
    so counted as its warnings they made its busy hours score as anomalous. Featurize leaves them
    out of every step; ``events`` keeps them.
    """
    from pyspark.sql import functions as F

    if not names:
        return events
    weird = F.lower(F.col("component")) == "weird"
    sensor = weird & F.col("attributes")["name"].isin(list(names))
    return events.where(~F.coalesce(sensor, F.lit(False)))


def entity_groups(events: DataFrame, rules: GroupRules) -> DataFrame:
    """``entity, group, group_rule`` of every entity of ``events``.

    Zeek's ``local_orig`` counts when any of the entity's records carries it (an originator seen
    as local once is local: the sensor saw it inside).
    """
    from pyspark.sql import functions as F

    local = zeek_flag(F.col("attributes")["local_orig"]).cast("int")
    per_entity = events.where(F.col("entity").isNotNull()).groupBy("entity").agg(F.max(local).alias("_local"))
    group, rule = group_column(F.col("entity"), F.col("_local").cast("boolean"), rules)
    return per_entity.select("entity", group.alias("group"), rule.alias("group_rule"))


def step_features(events: DataFrame, step_seconds: int, feature_names: Sequence[str],
                  entity: EntitySettings | None = None, history: DataFrame | None = None,
                  base_only: bool = False, known_errors: Sequence[str] = ()) -> DataFrame:
    """Aggregate events into one row per (entity, step), features in ``feature_names`` order.

    Columns: ``entity``, ``step`` (epoch seconds), ``n_events``, ``first_ts``/``last_ts`` (epoch
    microseconds of the step's first and last event) and ``_f0 .. _f{F-1}`` (positional, because
    template feature names are not safe Spark column names), every feature log1p-transformed.

    With entity features in ``feature_names`` (``entity`` settings then required), also the
    novelty counts (first-seen values within the entity's history: ``history``, the events from
    the start, defaulting to ``events``), the trailing per-entity baseline (the mean, or with
    ``baseline_statistic="median"`` the median, of the entity's earlier busy steps within
    ``baseline_steps``, a window function bounded to the past; a metric whose level is left out
    of ``feature_names`` is still computed for it and then dropped)
    and, for an entity with less history, its peer group's training-period baseline.
    With :data:`NEW_ERRORS` in ``feature_names``, the error-level events of a template whose first
    error-level event in ``history`` (or ``events``) falls in the step and is not among
    ``known_errors`` (templates logged at error level before this lake: a model's training lake),
    and error-level lines no template fits.
    ``base_only`` stops before those: the rows with ``group`` and the other features, what
    :func:`fit_peer_baselines` averages.

    Raises:
        ValueError: ``feature_names`` is not a list this version computes, or has entity
            features without ``entity`` settings.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    templates = feature_templates(feature_names)
    metrics = feature_metrics(feature_names)
    categories = feature_categories(feature_names)
    groups = feature_groups(feature_names)
    if groups is not None and entity is None:
        raise ValueError("entity features need EntitySettings")
    # Network records (Zeek logs of any type, JSON conn logs) name a peer; log lines do not.
    is_conn = F.col("dst_addr").isNotNull()
    orig_local = zeek_flag(F.col("attributes")["local_orig"])
    resp_local = zeek_flag(F.col("attributes")["local_resp"])
    # Zeek's own direction: an outside host opening a connection into the monitored network.
    inbound = (
        is_conn
        & F.lower(F.col("attributes")["local_orig"]).isin("f", "false")
        & F.lower(F.col("attributes")["local_resp"]).isin("t", "true")
    )
    level = F.lower(F.col("level"))
    tpl = F.col("template_id")
    step = (F.floor(F.unix_timestamp("ts") / step_seconds) * step_seconds).cast("long")

    def count_if(cond: Column) -> Column:
        return F.sum(F.when(cond, F.lit(1)).otherwise(F.lit(0)))

    known = tpl.isNotNull() & (tpl != UNKNOWN_TEMPLATE_ID)
    other = (known & ~tpl.isin(templates)) if templates else known
    is_error = level.isin(ERROR_LEVELS)
    new_errors: dict[str, Column] = {}
    if NEW_ERRORS in feature_names:
        # The step of each template's first error-level event in the whole history (a small
        # table: one row per template ever logged at error level), joined back by template.
        firsts = (
            (history if history is not None else events).where(F.col("ts").isNotNull() & known & is_error)
            .groupBy(tpl.alias("_ne_tpl")).agg(F.min(step).alias("_ne_step"))
        )
        events = events.join(F.broadcast(firsts), tpl == F.col("_ne_tpl"), "left")
        unknown_text = (tpl == UNKNOWN_TEMPLATE_ID) & F.col("message").isNotNull()
        first = (step == F.col("_ne_step")) & ~tpl.isin(list(known_errors)) if known_errors else (
            step == F.col("_ne_step"))
        new_errors[NEW_ERRORS] = count_if(is_error & (unknown_text | first))
    indicators: dict[str, Column] = {}
    attrs = F.col("attributes")
    if "unnamed_requests" in feature_names:
        # http.log rows carry a method (a conn.log row of service http does not); ssl.log rows an
        # ``established`` or ``version`` field. Unset fields are absent from the attributes.
        host = F.trim(attrs["host"])
        unnamed_http = attrs["method"].isNotNull() & (
            host.isNull() | (host == "") | host.rlike(ADDRESS_HOST))
        server = F.trim(attrs["server_name"])
        unnamed_tls = (F.lower(F.col("component")) == "ssl") & (
            attrs["established"].isNotNull() | attrs["version"].isNotNull()) & (server.isNull() | (server == ""))
        indicators["unnamed_requests"] = count_if(F.coalesce(unnamed_http | unnamed_tls, F.lit(False)))
    if "malformed_requests" in feature_names:
        malformed = (F.lower(F.col("component")) == "weird") & attrs["name"].isin(MALFORMED_REQUEST_WEIRDS)
        indicators["malformed_requests"] = count_if(F.coalesce(malformed, F.lit(False)))
    aggregates: dict[str, Column] = {
        "connections": F.sum(is_conn.cast("long")),
        "log_lines": F.sum((~is_conn).cast("long")),
        "bytes_out": F.sum("bytes_out"),
        "bytes_in": F.sum("bytes_in"),
        "distinct_dst_ports": F.count_distinct("dst_port"),
        "distinct_dst_addrs": F.count_distinct("dst_addr"),
        "failed_connections": F.sum(F.col("status").isin(FAILED_CONN_STATES).cast("long")),
        "inbound_connections": count_if(inbound),
        "errors": F.sum(is_error.cast("long")),
        "warnings": F.sum(level.isin(WARNING_LEVELS).cast("long")),
        "mean_duration": F.avg("duration"),
        "_duration_q": F.percentile_approx("duration", [0.5, 0.95], DURATION_QUANTILE_ACCURACY),
        OTHER_TEMPLATES: count_if(other),
        UNKNOWN_TEMPLATES: count_if((tpl == UNKNOWN_TEMPLATE_ID) & F.col("message").isNotNull()),
        **{TEMPLATE_PREFIX + t: count_if(tpl == t) for t in templates},
        **new_errors,
        **indicators,
        # try_cast: a metric cell that is not a number is missing, not a failed job (ANSI mode).
        **{METRIC_PREFIX + m: F.avg(F.col("attributes")[m].try_cast("double")) for m in metrics},
    }
    for field_name, counted in categories.items():
        cat = category_column(field_name)
        aggregates |= {category_feature(field_name, v): count_if(cat == F.lit(v)) for v in counted}
        present = cat.isNotNull() & (cat != "")
        aggregates[category_feature(field_name, OTHER_CATEGORY)] = count_if(
            present & ~cat.isin(counted) if counted else present)
    if entity is not None and groups is not None:
        # The peer's side: Zeek's local_resp where the record has it, else the configured networks.
        peer_local = F.coalesce(resp_local, in_networks(F.col("dst_addr"), entity.rules.local_networks))
        aggregates |= {
            "outbound_connections": count_if(is_conn & F.coalesce(orig_local, F.lit(False))
                                             & ~F.coalesce(resp_local, F.lit(True))),
            "to_local_peers": count_if(is_conn & peer_local),
            "to_external_peers": count_if(is_conn & ~peer_local),
        }
    aliases = {name: f"_a{i}" for i, name in enumerate(aggregates)}
    valid = events.where(F.col("entity").isNotNull() & F.col("ts").isNotNull())
    agg = (
        valid.groupBy("entity", step.alias("step"))
        .agg(
            F.count(F.lit(1)).alias("n_events"),
            count_if(is_abnormal_label(F.col("label"))).alias("n_abnormal"),
            F.unix_micros(F.min("ts")).alias("first_ts"),
            F.unix_micros(F.max("ts")).alias("last_ts"),
            *[expr.alias(aliases[name]) for name, expr in aggregates.items()],
        )
    )
    if "repeated_failures" in feature_names:
        # The step's never-established TCP attempts per (peer, port), then per (entity, step)
        # the most to one of them and how many there were, joined back (a step without one gets 0).
        attempts = (
            valid.where((F.lower(F.col("proto")) == "tcp") & F.col("status").isin(UNESTABLISHED_TCP_STATES)
                        & F.col("dst_addr").isNotNull())
            .groupBy("entity", step.alias("step"), "dst_addr", "dst_port").agg(F.count(F.lit(1)).alias("_rf"))
            .groupBy("entity", "step").agg(F.max("_rf").alias("_rf"), F.count(F.lit(1)).alias("_ft"))
        )
        agg = agg.join(attempts, ["entity", "step"], "left")
        aliases["repeated_failures"] = "_rf"
        aliases["failed_targets"] = "_ft"
    novelty = {"new_peers": F.col("dst_addr"), "new_ports": F.col("dst_port").cast("string"),
               "new_services": F.when(is_conn, F.col("component")),
               "new_templates": F.when(known, tpl)}
    if groups is not None:
        # First-seen values: the step where each (entity, value) first occurs in the history,
        # counted per step. ``history`` reaches before ``events`` on an incremental rebuild.
        seen = (history if history is not None else events).where(
            F.col("entity").isNotNull() & F.col("ts").isNotNull())
        for i, (name, value) in enumerate(novelty.items()):
            firsts = (
                seen.select("entity", value.alias("_v"), step.alias("_s"))
                .where(F.col("_v").isNotNull())
                .groupBy("entity", "_v").agg(F.min("_s").alias("step"))
                .groupBy("entity", "step").agg(F.count(F.lit(1)).alias(f"_n{i}"))
            )
            agg = agg.join(firsts, ["entity", "step"], "left")
            aliases[name] = f"_n{i}"

    def raw(name: str) -> Column:
        if name == "events":
            return F.col("n_events")
        if name == "error_ratio":
            return F.col(aliases["errors"]) / F.col("n_events")
        if name == "failed_share":
            return F.col(aliases["failed_connections"]) / F.when(F.col(aliases["connections"]) > 0,
                                                                 F.col(aliases["connections"]))
        if name == "p50_duration":
            return F.col(aliases["_duration_q"])[0]
        if name == "p95_duration":
            return F.col(aliases["_duration_q"])[1]
        return F.col(aliases[name])

    def logged(name: str) -> Column:
        return signed_log1p(F.coalesce(raw(name).cast("double"), F.lit(0.0)))

    keys = ["entity", "step", "n_events", "n_abnormal", "first_ts", "last_ts"]
    if groups is None:
        return agg.select(*keys, *[logged(name).alias(f"_f{i}") for i, name in enumerate(feature_names)])
    assert entity is not None
    position = {name: i for i, name in enumerate(feature_names)}
    plain = [n for n in feature_names if not n.startswith((RELATIVE_PREFIX, GROUP_PREFIX)) and n != HISTORY_STEPS]
    bases = relative_bases(metrics)
    columns = base_columns(feature_names)
    # Levels left out of the list (features.metric_levels: false) are still computed: their
    # baselines are made of them; they are dropped from the rows at the end.
    hidden = [b for b in bases if b not in position]
    steps = agg.select(*keys, *[logged(n).alias(f"_f{position[n]}") for n in plain],
                       *[logged(b).alias(columns[b]) for b in hidden]).join(
        entity_groups(history if history is not None else events, entity.rules), "entity", "left"
    ).withColumn("group", F.coalesce(F.col("group"), F.lit(entity.rules.default_group)))
    if base_only:
        return steps
    baselines = entity.group_baselines
    if baselines is None:
        baselines = fit_peer_baselines(steps, columns, entity.cut)
    # Strictly earlier steps of the same entity within the horizon: never the step itself, never the future.
    past = (Window.partitionBy("entity").orderBy("step")
            .rangeBetween(-entity.baseline_steps * step_seconds, -1))
    hist = F.count(F.lit(1)).over(past)
    steps = steps.withColumn("_hist", hist)
    fallback = baselines.get(ALL_GROUPS, {})
    relative: list[Column] = []
    for b in bases:
        col = F.col(columns[b])
        peer = F.lit(float(fallback.get(b, 0.0)))
        for g, values in baselines.items():
            if g != ALL_GROUPS and b in values:
                peer = F.when(F.col("group") == g, F.lit(float(values[b]))).otherwise(peer)
        own = (F.percentile_approx(col, 0.5, MEDIAN_ACCURACY) if entity.baseline_statistic == "median"
               else F.avg(col)).over(past)
        base = F.when(F.col("_hist") >= entity.baseline_min_steps, own).otherwise(peer)
        relative.append((col - base).alias(f"_f{position[RELATIVE_PREFIX + b]}"))
    one_hot = [(F.col("group") == g).cast("double").alias(f"_f{position[GROUP_PREFIX + g]}") for g in groups]
    out = steps.select(
        *keys, "group", *[f"_f{position[n]}" for n in plain],
        F.log1p(F.col("_hist").cast("double")).alias(f"_f{position[HISTORY_STEPS]}"),
        *relative, *one_hot,
    )
    return out.select(*keys, *[f"_f{i}" for i in range(len(feature_names))])


def error_templates(events: DataFrame, until: float | None = None) -> list[str]:
    """Templates with an error-level event (before ``until``, epoch seconds), sorted: what a model
    trained on this lake has seen fail, so a lake it scores later does not count them as new."""
    from pyspark.sql import functions as F

    tpl = F.col("template_id")
    rows = events.where(tpl.isNotNull() & (tpl != UNKNOWN_TEMPLATE_ID) & F.lower(F.col("level")).isin(ERROR_LEVELS))
    if until is not None:
        rows = rows.where(F.col("ts") <= F.lit(dt.datetime.fromtimestamp(until, dt.timezone.utc)))
    return sorted(str(r[0]) for r in rows.select(tpl).distinct().collect())


def fit_peer_baselines(steps: DataFrame, columns: dict[str, str], cut: float | None) -> dict[str, dict[str, float]]:
    """Mean of each feature column over the busy steps before ``cut``, per group and overall (``*``).

    The training period's steps only, like the frequent templates: scoring never moves them.
    """
    from pyspark.sql import functions as F

    train = steps if cut is None else steps.where(F.col("step") < F.lit(int(cut)))
    means = [F.avg(c).alias(f"m_{i}") for i, c in enumerate(columns.values())]
    names = list(columns)
    out: dict[str, dict[str, float]] = {}
    rows = [*train.groupBy("group").agg(*means).collect(),
            *train.agg(*means).withColumn("group", F.lit(ALL_GROUPS)).collect()]
    for row in rows:
        if row["group"] is None or row["m_0"] is None:
            continue
        out[str(row["group"])] = {n: float(row[f"m_{i}"]) for i, n in enumerate(names)}
    log.info("featurize: peer-group baselines of %d groups from the training period", len(out) - (ALL_GROUPS in out))
    return out


def windows_frame(steps: DataFrame, spec: WindowSpec, run_id: str, feature_names: Sequence[str],
                  layout: Layout = NEW_LAYOUT) -> DataFrame:
    """Cut each entity's steps into windows (``applyInPandas`` per entity) with the ``sequences`` schema.

    ``layout`` is how ``features`` is stored (:mod:`loganomaly.features.layout`): ``binary``
    float32 tensors, or the ``array<float>`` of a table written before them.
    """
    from pyspark.sql import functions as F

    names = list(feature_names)
    positional = [f"_f{i}" for i in range(len(names))]
    columns = {**TABLES["sequences"].columns, "features": LAYOUT_TYPES[layout]}
    # feature_names is one literal for the whole run: added in Spark, not shipped through pandas.
    udf_ddl = ", ".join(f"`{c}` {tp}" for c, tp in columns.items() if c != "feature_names")
    binary = layout == "binary"

    def per_entity(pdf: pd.DataFrame) -> pd.DataFrame:
        # An incremental rebuild carries where the entity's full-history grid starts.
        grid_first = int(pdf["grid_first"].iloc[0]) if "grid_first" in pdf.columns else None
        out = build_windows(pdf.sort_values("step"), spec, positional, grid_first)

        def ts(col: str, unit: str) -> pd.Series:
            return pd.to_datetime(out[col].astype(np.int64), unit=unit, utc=True)

        start = ts("window_start", "s")
        return pd.DataFrame(
            {
                "entity": pdf["entity"].iloc[0],
                "window_start": start,
                "window_end": ts("window_end", "s"),
                "date": start.dt.date,
                "n_steps": np.int32(spec.window_steps),
                "n_features": np.int32(len(names)),
                "features": [window_bytes(w) for w in out["features"]] if binary else out["features"],
                "n_events": out["n_events"].astype(np.int64),
                "n_abnormal": out["n_abnormal"].astype(np.int64),
                "first_event_ts": ts("first_event_ts", "us"),
                "last_event_ts": ts("last_event_ts", "us"),
                "run_id": run_id,
            }
        )

    windows = steps.groupBy("entity").applyInPandas(per_entity, udf_ddl)
    return windows.withColumn(
        "feature_names", F.array(*[F.lit(n) for n in names]).cast("array<string>")
    ).select(*columns)


# ---------------------------------------------------------------- sessions
@dataclass(frozen=True)
class SessionKey:
    """What groups events into a session: a column of ``events`` or a regex over ``params``.

    Spelled ``column:<events column>`` (or just the column name) or ``params:<regex>``; an event
    whose parameters hold several distinct matches (an HDFS line naming two blocks) belongs to
    each of those sessions. When no parameter matches, the regex is tried on the message, so a
    key the template miner kept as literal text is still found.
    """

    column: str | None = None
    regex: str | None = None

    @classmethod
    def parse(cls, spec: str) -> SessionKey:
        """Parse ``column:<name>``, ``<name>`` or ``params:<regex>``.

        Raises:
            ConfigError: the spec names no events column and is not a ``params:`` regex.
        """
        import re

        text = spec.strip()
        if text.startswith("params:"):
            regex = text[len("params:"):]
            try:
                re.compile(regex)
            except re.error as exc:
                raise ConfigError(f"session key {spec!r}: bad regex: {exc}") from exc
            if not regex:
                raise ConfigError(f"session key {spec!r}: empty regex")
            return cls(regex=regex)
        column = text[len("column:"):] if text.startswith("column:") else text
        scalar = [c for c, tp in EVENT_COLUMNS.items() if not tp.startswith(("array", "map"))]
        if column not in scalar:
            raise ConfigError(
                f"session key {spec!r}: expected 'params:<regex>' or 'column:<name>' with a name among "
                f"{', '.join(scalar)}"
            )
        return cls(column=column)

    def keys(self) -> Column:
        """The event's session keys as ``array<string>`` (empty or null: in no session)."""
        from pyspark.sql import functions as F

        if self.column is not None:
            value = F.col(self.column).cast("string")
            return F.when(value.isNotNull(), F.array(value))
        assert self.regex is not None
        pattern = self.regex
        in_params = F.array_distinct(
            F.transform(
                F.filter("params", lambda p: p.rlike(pattern)),
                lambda p: F.regexp_extract(p, pattern, 0),
            )
        )
        in_message = F.array_distinct(F.regexp_extract_all(F.col("message"), F.lit(pattern), F.lit(0)))
        return F.when(F.size(in_params) > 0, in_params).otherwise(in_message)


def session_frame(events: DataFrame, key: SessionKey, run_id: str) -> DataFrame:
    """Group events by session key into time-ordered template-id sequences (the ``sessions`` schema).

    Built with Spark SQL only (``collect_list`` of ``(ts, file, line_no, event_id, template_id)``
    structs sorted by ``array_sort``, so ties in time keep file order), never a Python UDF.
    Sessions are per ``(source, session_key)``. A column key such as ``entity`` gives one session
    per entity over the whole snapshot: meant for keys that identify short-lived work.
    """
    from pyspark.sql import functions as F

    keyed = events.where(F.col("ts").isNotNull()).select(
        F.explode(key.keys()).alias("session_key"),
        "source",
        "ts",
        "file",
        "line_no",
        "event_id",
        "template_id",
        "label",
    ).where(F.col("session_key").isNotNull() & (F.col("session_key") != ""))
    abnormal = F.when(is_abnormal_label(F.col("label")), F.col("label"))
    grouped = keyed.groupBy("source", "session_key").agg(
        F.array_sort(F.collect_list(F.struct("ts", "file", "line_no", "event_id", "template_id"))).alias("_ev"),
        F.min("ts").alias("start"),
        F.max("ts").alias("end"),
        F.count(F.lit(1)).alias("n_events"),
        F.min(abnormal).alias("label"),
    )
    return grouped.select(
        "session_key",
        "source",
        "start",
        "end",
        F.to_date("start").alias("date"),
        F.col("n_events").cast("long").alias("n_events"),
        F.transform("_ev", lambda e: e["template_id"]).alias("template_ids"),
        F.transform("_ev", lambda e: e["event_id"]).alias("event_ids"),
        "label",
        F.lit(run_id).alias("run_id"),
    )


# ---------------------------------------------------------------- the stage
@dataclass
class FeaturizeSummary:
    run_id: str
    events_version: int
    windows: int
    entities: int
    feature_names: list[str]
    sessions: int | None = None
    #: First date an incremental run replaced (its ``windows``/``entities`` count from there on).
    rebuilt_from: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def run(
    spark: SparkSession,
    cfg: Config,
    lake: Lake | None = None,
    session_key: str | None = None,
    top_templates: int | None = None,
    refit_templates: bool = False,
    feature_names: Sequence[str] | None = None,
    since: str | None = None,
    peer_baselines: dict[str, dict[str, float]] | None = None,
    known_error_templates: Sequence[str] | None = None,
    history_lake: Lake | None = None,
) -> FeaturizeSummary:
    """Rebuild ``sequences`` (and ``sessions`` when a session key is set) from the current ``events``.

    Example:
        >>> run(spark, cfg, session_key=HDFS_BLOCK_KEY)  # also writes `sessions`, one per block id

    Args:
        spark: the session.
        cfg: configuration (``features`` for the windows, ``train`` for the training cut).
        lake: the tables (default: from ``cfg.lake``).
        session_key: build ``sessions`` by this key (:class:`SessionKey` syntax); default
            ``features.session_key`` (empty: no sessions, so the default pipeline pays nothing for them).
        top_templates: frequent templates counted as features when they are (re)chosen; default
            ``features.top_templates``.
        refit_templates: choose the templates again even if ``sequences`` has feature names
            (after which the current model no longer scores the new windows: retrain).
        feature_names: use exactly these features (a trained model's, so that windows of a lake
            the model was not trained on can be scored); overrides the two above.
        since: ``YYYY-MM-DD``, ``today`` or ``yesterday``: rebuild only the windows that can hold
            events of that date or later (:func:`incremental_windows`) and replace just their
            dates, keeping the table's feature names; the nightly run after new data arrived.
            ``sessions`` are still rebuilt in full (a session may span any dates). Without a
            ``sequences`` table with feature names yet, the whole table is built.
        peer_baselines: the peer-group baselines to judge cold-start entities by (a trained
            model's, with its ``feature_names``, when scoring a lake it was not trained on);
            default: the table's (``peer_baselines``) when its names are kept, else fitted on
            this lake's training period.
        known_error_templates: templates logged at error level before this lake's events (a
            trained model's, ``features.error_templates`` of its bundle), so the ``new_errors``
            feature of a lake the model was not trained on does not count their first error here
            as new.
        history_lake: a lake whose events came before this one's (the training lake of a split
            pipeline, :func:`loganomaly.pipeline.run_split`). With entity features, each entity's
            events there from before its first step here are read as its history: the trailing
            baselines, the count of earlier steps and the first-seen values continue from them
            (no window is made of them), so a series scored in a lake of its own after its
            training part does not start cold, judged against its peer group for the first
            ``features.baseline_min_steps`` steps. An entity absent there, and every entity
            without entity features, is built as without it. Full builds only (not ``since``).

    Raises:
        StageInputError: no ``events``.
        ConfigError: ``since`` with ``refit_templates``, other feature names or ``history_lake``.
    """
    lake = lake or Lake(spark, cfg.lake.root, cfg.lake.engine)
    run_id = new_run_id("featurize")
    # One writer per lake (:mod:`loganomaly.lake.lock`): a concurrent run is refused, not interleaved.
    with writer_lock(lake.root, run_id, "featurize"):
        return _run(spark, cfg, lake, session_key, top_templates, refit_templates, feature_names, since, run_id,
                    peer_baselines, tuple(known_error_templates or ()), history_lake)


def _run(spark: SparkSession, cfg: Config, lake: Lake, session_key: str | None, top_templates: int | None,
         refit_templates: bool, feature_names: Sequence[str] | None, since: str | None, run_id: str,
         given_baselines: dict[str, dict[str, float]] | None = None,
         known_errors: tuple[str, ...] = (), history_lake: Lake | None = None) -> FeaturizeSummary:
    from pyspark.sql import functions as F

    if not lake.exists("events"):
        raise StageInputError(f"no events table under {lake.root}; run `loganomaly ingest` first")
    spec_text = session_key if session_key is not None else cfg.features.session_key
    key = SessionKey.parse(spec_text) if spec_text else None  # parse before any work: fail fast
    k = top_templates if top_templates is not None else cfg.features.top_templates
    events_version = lake.version("events")
    assert events_version is not None
    events = without_sensor_weirds(lake.read("events", version=events_version), cfg.features.sensor_weirds)

    names = None if refit_templates else previous_feature_names(lake)
    reused = names is not None and feature_names is None
    since_date = None if since is None else dt.date.fromisoformat(str(resolve_date(since)))
    if since_date is not None:
        if history_lake is not None:
            raise ConfigError("featurize --since reads its history from this lake; a history lake needs a full run")
        if refit_templates:
            raise ConfigError("featurize --since keeps the table's feature names; refitting templates needs a full run")
        if names is None:
            # The first night of a new lake: nothing to add to, so build everything.
            log.info("featurize: --since %s but no sequences table with feature names yet; rebuilding in full",
                     since_date)
            since_date = None
        elif feature_names is not None and list(feature_names) != names:
            raise ConfigError("featurize --since keeps the table's feature names; these differ (run a full featurize)")
    if feature_names is not None:
        names = list(feature_names)
        feature_templates(names)  # a list this version computes, or ValueError
    elif names is not None:
        kept = feature_templates(names)
        if len(kept) != k:
            log.info("featurize: keeping the %d templates of the existing sequences (top_templates=%d "
                     "applies on refit)", len(kept), k)
    else:
        cut = training_cut(events, cfg)
        counts = cfg.features.template_counts
        chosen = choose_feature_templates(events, cut, k) if counts else []
        categories = choose_feature_categories(events, cut, cfg.features.categories, cfg.features.top_categories)
        groups = group_rules(cfg).names if cfg.features.entity_features else None
        names = feature_names_for(chosen, cfg.features.metrics, groups, categories,
                                  cfg.features.metric_levels or groups is None, cfg.features.new_errors, counts,
                                  cfg.features.network_indicators)
        log.info(
            "featurize: chose %s from events before %s%s",
            f"{len(chosen)} frequent templates" if counts else "no template counts (features.template_counts off)",
            dt.datetime.fromtimestamp(cut, dt.timezone.utc).isoformat() if cut is not None else "-",
            f"; entity features with peer groups {groups}" if groups is not None else "",
        )

    if feature_metrics(names) and since_date is None:
        # Once per full build: a nightly --since run would scan the whole history again for it.
        warn_sparse_steps(events, cfg.features.step_seconds, cfg.features.window_steps, cfg.features.baseline_steps)
    entity: EntitySettings | None = None
    if feature_groups(names) is not None:
        # Peer baselines, like the templates, are fitted once and kept while the names are kept.
        kept_baselines = given_baselines or (read_peer_baselines(lake) if reused else None)
        entity = EntitySettings.from_config(cfg, None if kept_baselines is not None else training_cut(events, cfg),
                                            kept_baselines)
        if kept_baselines is None:
            entity = dataclasses.replace(entity, group_baselines=fit_peer_baselines(
                step_features(events, cfg.features.step_seconds, names, entity, base_only=True),
                base_columns(names), entity.cut))
        if given_baselines is not None or kept_baselines is None:
            write_peer_baselines(spark, lake, entity.group_baselines or {}, run_id)

    spec = WindowSpec(cfg.features.step_seconds, cfg.features.window_steps, cfg.features.stride_steps)
    partition_by = TABLES["sequences"].partition_by
    layout = table_layout(lake)
    if layout != NEW_LAYOUT:
        log.info("featurize: sequences stores features as %s (written before the %s layout); kept",
                 LAYOUT_TYPES[layout], NEW_LAYOUT)
    replaced: list[str] | None = None
    if since_date is None:
        if entity is not None and history_lake is not None and history_lake.exists("events"):
            history = without_sensor_weirds(history_lake.read("events"), cfg.features.sensor_weirds)
            steps = steps_after_history(events, history, spec, names, entity, known_errors)
        else:
            steps = step_features(events, spec.step_seconds, names, entity, known_errors=known_errors)
        windows = windows_frame(steps, spec, run_id, names, layout)
        version = lake.write("sequences", windows, mode="overwrite", partition_by=partition_by, run_id=run_id)
    else:
        windows, replaced = incremental_windows(lake, events, spec, run_id, names, since_date, entity, layout,
                                                known_errors)
        version = lake.write("sequences", windows, mode="overwrite", partition_by=partition_by,
                             replace_where={"date": replaced}, run_id=run_id)
    if entity is not None or cfg.score.entity_baseline:
        # The peer groups are what score.entity_baseline reads too (loganomaly.scoring.baseline).
        rules = entity.rules if entity is not None else group_rules(cfg)
        merge_entities(lake, events, lake.read("sequences", version=version), rules, run_id)
    written = lake.read("sequences", version=version)
    if replaced is not None:
        written = written.where(F.col("date") >= F.lit(dt.date.fromisoformat(replaced[0])))
    stats = written.selectExpr("count(*) AS n", "count(DISTINCT entity) AS e").collect()[0]
    summary = FeaturizeSummary(run_id, events_version, int(stats["n"]), int(stats["e"]), list(names),
                               rebuilt_from=None if replaced is None else replaced[0])
    if key is not None:
        sessions_version = lake.write(
            "sessions",
            session_frame(events, key, run_id),
            mode="overwrite",
            partition_by=TABLES["sessions"].partition_by,
            run_id=run_id,
        )
        summary.sessions = lake.read("sessions", version=sessions_version).count()
        log.info("featurize %s: %d sessions by %s", run_id, summary.sessions, spec_text)
    log.info(
        "featurize %s: %d windows of %d features for %d entities from events version %d%s",
        run_id,
        summary.windows,
        len(names),
        summary.entities,
        events_version,
        "" if replaced is None else f" (dates {replaced[0]}..{replaced[-1]} replaced)",
    )
    if summary.windows == 0:
        # Nothing to window: say which events were left out and why (one query, on this path only),
        # rather than let train fail later on an empty table with nothing to go on.
        missing = events.selectExpr("count(*) AS n", "count_if(entity IS NULL) AS no_entity",
                                    "count_if(ts IS NULL) AS no_ts").collect()[0]
        if missing["n"]:
            log.warning("featurize %s: no windows from %d events: %d have no entity, %d no time (an entity "
                        "comes from the format's entity field or the source's default_entity option)",
                        run_id, missing["n"], missing["no_entity"], missing["no_ts"])
    return summary


def sampling(events: DataFrame, step_seconds: int) -> tuple[int, int, float] | None:
    """(steps holding an event, steps from each entity's first to its last, median seconds
    between an entity's events) over the entities with two or more events; None without any."""
    from pyspark.sql import functions as F

    step = F.floor(F.unix_timestamp("ts") / step_seconds)
    per_entity = (
        events.where(F.col("entity").isNotNull() & F.col("ts").isNotNull())
        .groupBy("entity")
        .agg(F.count_distinct(step).alias("held"), (F.max(step) - F.min(step) + 1).alias("span"),
             ((F.unix_timestamp(F.max("ts")) - F.unix_timestamp(F.min("ts"))) / (F.count(F.lit(1)) - 1)).alias("gap"))
        .where(F.col("span") > 1)
    )
    row = per_entity.agg(F.sum("held").alias("held"), F.sum("span").alias("span"),
                         F.median("gap").alias("gap")).collect()[0]
    if row["span"] is None:
        return None
    return int(row["held"]), int(row["span"]), float(row["gap"])


def warn_sparse_steps(events: DataFrame, step_seconds: int, window_steps: int, baseline_steps: int) -> None:
    """Warn when metric samples come less often than the step: most steps are then empty, and
    an empty step reads every metric as 0, so the windows and trailing baselines are mostly
    gaps (a 5-minute series under the ``metrics`` profile's 1-minute steps: four steps in
    five). The warning names the settings that would fit the data; nothing is changed."""
    found = sampling(events, step_seconds)
    if found is None:
        return
    held, span, gap = found
    if held >= 0.5 * span or gap < 1.5 * step_seconds:
        return
    fit = int(round(gap))
    scale = fit / step_seconds
    log.warning(
        "featurize: only %d of %d steps hold a sample (%.0f%%): the series are sampled about every %d s "
        "but features.step_seconds is %d, and an empty step reads every metric as 0. For this data set "
        "features.step_seconds=%d (and, for the same time spans, features.window_steps=%d, "
        "features.baseline_steps=%d)",
        held, span, 100.0 * held / span, fit, step_seconds, fit,
        max(2, round(window_steps / scale)), max(1, round(baseline_steps / scale)),
    )


def steps_after_history(events: DataFrame, earlier: DataFrame, spec: WindowSpec, names: Sequence[str],
                        entity: EntitySettings, known_errors: Sequence[str] = ()) -> DataFrame:
    """:func:`step_features` of ``events``, each entity's history continued from ``earlier``
    (another lake's events): the trailing baselines read its steps there within the horizon,
    novelty and groups all of them, but only those before the entity's first step in
    ``events`` (lakes may overlap in time: a step is never made of both).

    The steps returned are those of ``events`` and, before them, the earlier steps in the
    stride cell of the entity's first step: the first window (the grid starts at that cell,
    as without ``earlier``) then holds them where it would otherwise hold empty steps, which
    read every metric as 0. Every window is the one a lake holding both lakes' events makes.
    """
    from pyspark.sql import functions as F

    step_seconds = spec.step_seconds
    cell = spec.stride_steps * step_seconds
    step = F.floor(F.unix_timestamp("ts") / step_seconds) * step_seconds
    valid = events.where(F.col("entity").isNotNull() & F.col("ts").isNotNull())
    firsts = valid.groupBy("entity").agg(F.min(step).cast("long").alias("_first_step"))
    before = (
        earlier.where(F.col("entity").isNotNull() & F.col("ts").isNotNull())
        .join(firsts, "entity")
        .where(step < F.col("_first_step"))
    )
    # The first window's cell starts up to a stride before the first step: its steps need their horizon too.
    grid_first = F.floor(F.col("_first_step") / cell) * cell
    horizon = before.where(step >= grid_first - entity.baseline_steps * step_seconds)
    both = valid.unionByName(horizon.drop("_first_step"), allowMissingColumns=True)
    history = valid.unionByName(before.drop("_first_step"), allowMissingColumns=True)
    steps = step_features(both, step_seconds, names, entity, history=history, known_errors=known_errors)
    return steps.join(firsts, "entity").where(F.col("step") >= grid_first).drop("_first_step")


def incremental_windows(
    lake: Lake, events: DataFrame, spec: WindowSpec, run_id: str, names: Sequence[str], since: dt.date,
    entity: EntitySettings | None = None, layout: Layout = NEW_LAYOUT, known_errors: Sequence[str] = (),
) -> tuple[DataFrame, list[str]]:
    """The windows that can hold events of ``since`` or later, exactly as a full rebuild makes them.

    A window dated D starts at or after D's midnight and reads only steps from its start on, so
    the windows dated from ``rebuild_from`` (the date of the first window that can reach
    ``since``: ``since`` minus one window length) need only the events from that midnight on.
    What they would miss is where each entity's window grid starts: a full rebuild starts it at
    the entity's first step ever (rounded down to the stride), so the grid start of the whole
    history is computed (one pass over two columns of ``events``) and handed to
    :func:`loganomaly.features.windows.build_windows`. Events dated before ``since`` must not have changed.

    Returns:
        The windows (dated ``rebuild_from`` or later) and every date from ``rebuild_from`` to the
        last date of the events or of the table, the ``replace_where`` of the write.
    """
    from pyspark.sql import functions as F

    length_s = spec.window_steps * spec.step_seconds
    since_s = int(dt.datetime.combine(since, dt.time(), tzinfo=dt.timezone.utc).timestamp())
    rebuild_from = dt.datetime.fromtimestamp(since_s - length_s + 1, dt.timezone.utc).date()
    from_s = int(dt.datetime.combine(rebuild_from, dt.time(), tzinfo=dt.timezone.utc).timestamp())
    stride, step_s = spec.stride_steps, spec.step_seconds
    lookback_first = from_s // step_s // stride * stride
    valid = events.where(F.col("entity").isNotNull() & F.col("ts").isNotNull())
    recent = valid.where(F.col("ts") >= F.lit(dt.datetime.fromtimestamp(from_s, dt.timezone.utc)))
    grid = (
        valid.groupBy("entity")
        .agg(F.min(F.unix_timestamp("ts")).alias("_min_s"))
        .select(
            "entity",
            F.greatest(
                (F.floor(F.floor(F.col("_min_s") / step_s) / stride) * stride).cast("long"),
                F.lit(lookback_first).cast("long"),
            ).alias("grid_first"),
        )
    )
    if entity is None:
        # new_errors reads the whole history too (a template's first error-level event).
        steps = step_features(recent, step_s, names, history=valid if NEW_ERRORS in names else None,
                              known_errors=known_errors)
    else:
        # The trailing baselines read one horizon further back; novelty reads the whole history.
        horizon_s = from_s - entity.baseline_steps * step_s
        earlier = valid.where(F.col("ts") >= F.lit(dt.datetime.fromtimestamp(horizon_s, dt.timezone.utc)))
        steps = step_features(earlier, step_s, names, entity, history=valid, known_errors=known_errors).where(
            F.col("step") >= F.lit(lookback_first * step_s))
    steps = steps.join(grid, "entity")
    windows = windows_frame(steps, spec, run_id, names, layout).where(F.col("date") >= F.lit(rebuild_from))
    # Epoch seconds, not a collected timestamp: those come back naive in the driver's time zone.
    last_event = valid.agg(F.max(F.unix_timestamp("ts")).alias("t")).collect()[0]["t"]
    last_dates = [rebuild_from]
    if last_event is not None:
        last_dates.append(dt.datetime.fromtimestamp(int(last_event), dt.timezone.utc).date())
    if lake.exists("sequences"):
        row = lake.read("sequences").agg(F.max("date").alias("d")).collect()[0]
        if row["d"] is not None:
            last_dates.append(row["d"])
    days = (max(last_dates) - rebuild_from).days
    dates = [(rebuild_from + dt.timedelta(days=i)).isoformat() for i in range(days + 1)]
    log.info("featurize: incremental from %s (events since %s, one window of lookback): replacing %d date(s)",
             rebuild_from, since, len(dates))
    return windows, dates


# ---------------------------------------------------------------- entities and peer baselines
def read_peer_baselines(lake: Lake) -> dict[str, dict[str, float]] | None:
    """The ``peer_baselines`` table as group -> feature -> baseline, or None without one."""
    if not lake.exists("peer_baselines"):
        return None
    out: dict[str, dict[str, float]] = {}
    for row in lake.read("peer_baselines").collect():
        out.setdefault(str(row["group"]), {})[str(row["feature"])] = float(row["baseline"])
    return out or None


def write_peer_baselines(spark: SparkSession, lake: Lake, baselines: dict[str, dict[str, float]], run_id: str) -> None:
    """Overwrite ``peer_baselines`` with this run's (one atomic commit; a rerun writes the same rows).

    Example:
        >>> write_peer_baselines(spark, lake, {"internal": {"events": 1.2}, "*": {"events": 1.0}}, run_id)
    """
    rows = [(g, f, float(v), run_id) for g, values in sorted(baselines.items()) for f, v in sorted(values.items())]
    df = spark.createDataFrame(rows, TABLES["peer_baselines"].ddl)
    lake.write("peer_baselines", df, mode="overwrite", run_id=run_id)


def merge_entities(lake: Lake, events: DataFrame, sequences: DataFrame, rules: GroupRules, run_id: str) -> int:
    """Upsert one ``entities`` row per entity of ``events``: group, rule, first/last seen, counts.

    MERGE on ``entity``: a rerun over the same events rewrites the same values (idempotent), a
    later run updates last_seen and the counts. Counts are over the whole ``events`` and
    ``sequences`` snapshots read, so they never double on a rerun.

    Example:
        >>> merge_entities(lake, lake.read("events"), lake.read("sequences"), rules, run_id)
    """
    from pyspark.sql import functions as F

    valid = events.where(F.col("entity").isNotNull() & F.col("ts").isNotNull())
    seen = valid.groupBy("entity").agg(F.min("ts").alias("first_seen"), F.max("ts").alias("last_seen"),
                                       F.count(F.lit(1)).alias("events"))
    windows = sequences.groupBy("entity").agg(F.count(F.lit(1)).alias("windows"))
    rows = (
        seen.join(entity_groups(valid, rules), "entity", "left")
        .join(windows, "entity", "left")
        .select(
            "entity",
            F.coalesce(F.col("group"), F.lit(rules.default_group)).alias("group"),
            F.coalesce(F.col("group_rule"), F.lit("not_an_address")).alias("group_rule"),
            "first_seen",
            "last_seen",
            F.col("events").cast("long"),
            F.coalesce(F.col("windows"), F.lit(0)).cast("long").alias("windows"),
            F.lit(run_id).alias("run_id"),
        )
    )
    version = lake.merge("entities", rows, ["entity"])
    log.info("featurize %s: entities table at version %d", run_id, version)
    return version
