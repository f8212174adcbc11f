"""Spark-free maths of time-step windows: per-step feature rows of one entity -> sliding windows.

A window is ``window_steps`` consecutive steps of ``step_seconds``; windows start every
``stride_steps`` steps on a grid aligned to the Unix epoch, so the same events always give the
same window keys (entity, window_start) whichever run or partition computes them. Steps with no
events are zero rows: silence is information too (a host that stops talking).

The raw lines of a window are exactly the ``events`` rows of its ``entity`` with
``window_start <= ts < window_end`` (a step is ``floor(ts / step_seconds)``), so ``sequences``
stores no per-event arrays; ``first_event_ts``/``last_event_ts`` only narrow that range to where
the window's events actually are.

The feature list is not a constant: :data:`FEATURE_NAMES` are the per-step features every run
computes, followed by one count per frequent template (``tpl:<template id>``), ``tpl:other``
and ``tpl:unknown`` (see :func:`feature_names_for`). The names of a run are stored with its
windows (``sequences.feature_names``) and travel with the model, so train and score agree on
the order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Per-step features computed by every featurize run, first in ``sequences.features``. Counts,
#: sums and durations are log1p-transformed so that one busy host does not dwarf the others (the
#: ratio too, to keep one transform that explanations can undo).
FEATURE_NAMES: list[str] = [
    "events",
    "connections",
    "log_lines",
    "bytes_out",
    "bytes_in",
    "distinct_dst_ports",
    "distinct_dst_addrs",
    "failed_connections",
    "inbound_connections",
    "errors",
    "warnings",
    "mean_duration",
    "error_ratio",
    "p50_duration",
    "p95_duration",
]

#: Prefix of the per-template count features (``tpl:T1a2b3c4d5e6f``).
TEMPLATE_PREFIX = "tpl:"
#: Events with a known template outside the frequent ones.
OTHER_TEMPLATES = "tpl:other"
#: Events whose message no template covers (template id ``T0``).
UNKNOWN_TEMPLATES = "tpl:unknown"
#: Error-level events of a kind the lake never had at error level before (``features.new_errors``):
#: per step, the entity's error-level events whose template has its first error-level event in the
#: whole lake in this step, plus every error-level event no template fits (``T0``: text the miner
#: never saw). Global, not per entity: a node logging a known failure for the first time is not
#: news, the system logging a failure nobody has seen is. Counted over the lake's whole history,
#: so it reads "first seen" exactly on a lake that grows night by night; a scoring lake separate
#: from the training lake (``pipeline --train-input/--score-input``) has only its own history, so
#: there a known template's first error in it counts as new too.
NEW_ERRORS = "new_errors"
#: Network indicators (``features.network_indicators``): what malware does on any network, in
#: counts that do not depend on how busy the network is. ``repeated_failures``: the most TCP
#: attempts from the entity to one peer and port in the step that were never established (Zeek
#: ``conn_state`` S0, REJ, RSTOS0; not the half-seen states of a one-sided capture), a bot calling a dead controller or a password
#: guesser; a workstation's failures are spread over peers. ``unnamed_requests``: HTTP requests
#: without a host name (no ``Host``, or an address literal) and TLS sessions without a server name
#: (SNI), traffic to hard-coded addresses, where browsers and updaters name their servers.
#: ``malformed_requests``: requests from the entity that the sensor could not parse as the
#: protocol of their connection (Zeek ``weird`` records ``bad_HTTP_request``: bytes on an HTTP
#: connection that are no HTTP request), a client speaking its own protocol over port 80, where
#: browsers and libraries send well-formed requests. ``failed_targets``: how many distinct
#: (peer, port) the entity tried in the step without a connection (the same never-established
#: attempts), a scanner's sweep, where a workstation's failures are a few. A feature list from
#: before the later ones (models and ``sequences`` tables written with the first two or three)
#: keeps working with those.
INDICATOR_FEATURES: list[str] = ["repeated_failures", "unnamed_requests", "malformed_requests", "failed_targets"]
#: Prefix of numeric metric features (``metric:cpu``): the step mean of a numeric attribute, e.g.
#: a column of a CSV metric series (``features.metrics``).
METRIC_PREFIX = "metric:"

#: ``cat:<field>=<value>``: events of the step whose categorical ``field`` (``features.categories``:
#: an ``events`` column such as ``status`` for Zeek's ``conn_state`` or NSL-KDD's ``flag``, or an
#: attribute) has ``value``, for the ``features.top_categories`` most frequent values of the
#: training period; ``cat:<field>=`` + :data:`OTHER_CATEGORY` counts the field's other values.
#: One-hot counts of what a record *is* (protocol, state, method) carry across hosts and networks.
CATEGORY_PREFIX = "cat:"
#: Value part of the catch-all feature of a categorical field (not a value a log could hold
#: literally: the angle brackets mark it as ours).
OTHER_CATEGORY = "<other>"

#: Entity features (``features.entity_features``), after :data:`FEATURE_NAMES`: direction of the
#: entity's own connections (``inbound_connections`` is the other direction), peers inside or
#: outside the local networks, the failed share of connections (Zeek ``conn_state``), and novelty:
#: how many peers, destination ports, services and templates the step shows for the first time in
#: the entity's history. Counts carry across networks where absolute levels do not.
NETWORK_FEATURES: list[str] = [
    "outbound_connections",
    "to_local_peers",
    "to_external_peers",
    "failed_share",
    "new_peers",
    "new_ports",
    "new_services",
    "new_templates",
]
#: Novelty features and what they count, for explanations ("3 new destination ports (first seen)").
NOVELTY_UNITS: dict[str, str] = {
    "new_peers": "new peers",
    "new_ports": "new destination ports",
    "new_services": "new services",
    "new_templates": "new templates",
    NEW_ERRORS: "error-level events of a new kind",
}
#: The network indicators in words, for explanations ("40 repeated failed attempts to one peer and port").
INDICATOR_UNITS: dict[str, str] = {
    "repeated_failures": "repeated failed attempts to one peer and port",
    "unnamed_requests": "requests without a host or server name",
    "malformed_requests": "malformed requests (not the protocol of their connection)",
    "failed_targets": "peers and ports tried without a connection",
}
#: Earlier busy steps of the entity within the baseline horizon (log1p): how much own history the
#: relative features stand on; below ``features.baseline_min_steps`` they use the peer group's.
HISTORY_STEPS = "history_steps"
#: ``rel:<feature>``: the step's value minus the entity's trailing baseline (both log1p), i.e. the
#: log of the ratio to what is usual for this entity (or its peer group on a cold start).
RELATIVE_PREFIX = "rel:"
#: Features that get a relative twin (plus every metric).
RELATIVE_BASES: list[str] = [
    "events",
    "connections",
    "inbound_connections",
    "outbound_connections",
    "bytes_out",
    "bytes_in",
    "distinct_dst_ports",
    "distinct_dst_addrs",
    "failed_connections",
    "errors",
]
#: ``group:<name>``: 1 on the steps of an entity of that peer group (one-hot, last in the list), so
#: a model can read the group of any window from its features alone.
GROUP_PREFIX = "group:"


def relative_bases(metrics: Sequence[str]) -> list[str]:
    """The features that get a ``rel:`` twin in a run averaging ``metrics``."""
    return [*RELATIVE_BASES, *(METRIC_PREFIX + m for m in metrics)]


def feature_names_for(
    template_ids: Sequence[str], metrics: Sequence[str] = (), groups: Sequence[str] | None = None,
    categories: Mapping[str, Sequence[str]] | None = None, metric_levels: bool = True,
    new_errors: bool = False, template_counts: bool = True, indicators: bool | Sequence[str] = False,
) -> list[str]:
    """The full feature list of a run that counts ``template_ids`` and averages ``metrics`` per step.

    ``template_counts=False`` (``features.template_counts``) leaves every ``tpl:`` count out,
    ``tpl:other`` and ``tpl:unknown`` included; ``template_ids`` must then be empty.

    ``categories`` (field -> its frequent values) adds ``cat:<field>=<value>`` counts and one
    ``cat:<field>=<other>`` per field after the metrics. ``groups`` (peer group names) adds the entity features: :data:`NETWORK_FEATURES` after the
    fixed ones, and :data:`HISTORY_STEPS`, the ``rel:`` twins and the group one-hot at the end.
    ``None`` is the list of runs before entity features (still computed, so older tables and
    models keep working). ``new_errors`` adds :data:`NEW_ERRORS` after ``tpl:unknown``, and
    ``indicators`` :data:`INDICATOR_FEATURES` after that (``True``: all of them; a list: the
    first two or more, as a feature list from before the later ones were added holds them).
    ``metric_levels=False`` (``features.metric_levels``, only with
    ``groups``) leaves the metrics' own levels out: each metric is then only its ``rel:`` twin.

    Raises:
        ValueError: ``metric_levels=False`` without ``groups`` (the metrics would vanish).
    """
    if not metric_levels and groups is None and metrics:
        raise ValueError("metric levels can only be left out with entity features (their rel: twins)")
    if not template_counts and template_ids:
        raise ValueError("frequent templates are counted only with template counts on")
    names = [
        *FEATURE_NAMES,
        *(NETWORK_FEATURES if groups is not None else []),
        *(TEMPLATE_PREFIX + t for t in template_ids),
        *([OTHER_TEMPLATES, UNKNOWN_TEMPLATES] if template_counts else []),
        *([NEW_ERRORS] if new_errors else []),
        *(indicator_names(indicators)),
        *(METRIC_PREFIX + m for m in metrics if metric_levels),
    ]
    for name, values in (categories or {}).items():
        names += [*(category_feature(name, v) for v in values), category_feature(name, OTHER_CATEGORY)]
    if groups is not None:
        names += [HISTORY_STEPS, *(RELATIVE_PREFIX + b for b in relative_bases(metrics)),
                  *(GROUP_PREFIX + g for g in groups)]
    return names


def indicator_names(indicators: bool | Sequence[str]) -> list[str]:
    """The indicator features a feature list holds: all of :data:`INDICATOR_FEATURES` for
    ``True``, none for ``False`` or an empty list, else the given ones: the first two or more of
    them, as the lists of earlier versions hold them.

    Raises:
        ValueError: any other list.
    """
    if isinstance(indicators, bool):
        return list(INDICATOR_FEATURES) if indicators else []
    chosen = list(indicators)
    if chosen and not written_indicators(chosen):
        raise ValueError(f"network indicators {chosen} are not the first two or more of {INDICATOR_FEATURES}")
    return chosen


def written_indicators(chosen: Sequence[str]) -> bool:
    """Whether ``chosen`` is an indicator list some version wrote: the first two or more of
    :data:`INDICATOR_FEATURES`, in order."""
    return len(chosen) >= 2 and list(chosen) == INDICATOR_FEATURES[:len(chosen)]


def feature_groups(names: Sequence[str]) -> list[str] | None:
    """The peer groups encoded in a feature list, or None for a list without entity features."""
    if NETWORK_FEATURES[0] not in names:
        return None
    return [n[len(GROUP_PREFIX):] for n in names if n.startswith(GROUP_PREFIX)]


def category_feature(field: str, value: str) -> str:
    """``cat:<field>=<value>`` (the field name holds no ``=``, so the first one splits)."""
    return f"{CATEGORY_PREFIX}{field}={value}"


def feature_categories(names: Sequence[str]) -> dict[str, list[str]]:
    """The categorical fields and their counted values encoded in a feature list, in order
    (without the ``<other>`` catch-all)."""
    out: dict[str, list[str]] = {}
    for n in names:
        if n.startswith(CATEGORY_PREFIX):
            field, _, value = n[len(CATEGORY_PREFIX):].partition("=")
            values = out.setdefault(field, [])
            if value != OTHER_CATEGORY:
                values.append(value)
    return out


def feature_metrics(names: Sequence[str]) -> list[str]:
    """The metric attribute names encoded in a feature list, in order.

    A metric is named by its level (``metric:<name>``) or, in a list without levels
    (``features.metric_levels: false``), by its ``rel:metric:<name>`` twin alone.
    """
    levels = [n[len(METRIC_PREFIX):] for n in names if n.startswith(METRIC_PREFIX)]
    if levels:
        return levels
    twin = RELATIVE_PREFIX + METRIC_PREFIX
    return [n[len(twin):] for n in names if n.startswith(twin)]


def has_metric_levels(names: Sequence[str]) -> bool:
    """Whether a feature list holds its metrics' own levels (False only for ``features.metric_levels: false``)."""
    return not feature_metrics(names) or any(n.startswith(METRIC_PREFIX) for n in names)


def relative_baseline(x: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """The baseline a ``rel:`` feature compared against, in user units (``expm1(x - rel)``)."""
    return signed_expm1(np.asarray(x, dtype=np.float64) - np.asarray(rel, dtype=np.float64))


def feature_templates(names: Sequence[str]) -> list[str]:
    """The frequent template ids encoded in a feature list, in order (inverse of :func:`feature_names_for`).

    Raises:
        ValueError: ``names`` is not a list this version computes (an unknown base feature, or
            one missing), so the stored order cannot be reproduced.
    """
    templates = [
        n[len(TEMPLATE_PREFIX):]
        for n in names
        if n.startswith(TEMPLATE_PREFIX) and n not in (OTHER_TEMPLATES, UNKNOWN_TEMPLATES)
    ]
    groups = feature_groups(names)
    levels = has_metric_levels(names) or groups is None
    if list(names) != feature_names_for(templates, feature_metrics(names), groups, feature_categories(names),
                                        levels, NEW_ERRORS in names, UNKNOWN_TEMPLATES in names,
                                        [n for n in INDICATOR_FEATURES if n in names]):
        raise ValueError(
            f"feature names {list(names)[:20]} are not {FEATURE_NAMES} (then, with entity features, "
            f"{NETWORK_FEATURES}) followed by template counts, {OTHER_TEMPLATES!r}, {UNKNOWN_TEMPLATES!r} "
            "(all three left out without template counts), "
            f"optionally {NEW_ERRORS!r}, optionally {INDICATOR_FEATURES}, metrics ({METRIC_PREFIX}<name>), category counts "
            f"({CATEGORY_PREFIX}<field>=<value>, each "
            f"field ending with ={OTHER_CATEGORY}) and, with entity features, {HISTORY_STEPS!r}, "
            f"{RELATIVE_PREFIX}<feature> and {GROUP_PREFIX}<group>"
        )
    return templates


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)``: log1p for counts, and defined for metrics that go negative."""
    return np.sign(x) * np.log1p(np.abs(x))


def signed_expm1(y: np.ndarray) -> np.ndarray:
    """Inverse of :func:`signed_log1p` (equal to ``expm1`` for the non-negative counts)."""
    return np.sign(y) * np.expm1(np.abs(y))


@dataclass(frozen=True)
class WindowSpec:
    """How steps and windows are cut; stored with the model so scoring cuts them the same way."""

    step_seconds: int
    window_steps: int
    stride_steps: int

    def to_dict(self) -> dict[str, int]:
        return {
            "step_seconds": self.step_seconds,
            "window_steps": self.window_steps,
            "stride_steps": self.stride_steps,
        }


def build_windows(
    steps: pd.DataFrame, spec: WindowSpec, feature_names: Sequence[str] = FEATURE_NAMES,
    grid_first: int | None = None,
) -> pd.DataFrame:
    """Cut one entity's step rows into sliding windows.

    Args:
        steps: rows of one entity with ``step`` (epoch seconds of the step start, a multiple of
            ``spec.step_seconds``), ``n_events`` and one column per feature name; optionally
            ``first_ts``/``last_ts`` (epoch microseconds of the step's first and last event) and
            ``n_abnormal`` (events with an abnormal label), summed per window when present.
        spec: step, window length and stride.
        feature_names: feature columns, in storage order.
        grid_first: where the entity's window grid starts, in steps since the epoch (a multiple of
            the stride, at or before the first step given). By default its first step rounded
            down to the stride, which makes the leading windows depend on the entity's history:
            an incremental rebuild of recent steps passes the grid start of the whole history.

    Returns:
        One row per window: ``window_start``/``window_end`` (epoch seconds), ``features`` (flat
        float32 array of ``window_steps * n_features``, row-major) and ``n_events``, plus
        ``first_event_ts``/``last_event_ts`` (epoch microseconds) when ``steps`` has
        ``first_ts``/``last_ts``. Only windows that contain at least one event are returned. An
        entity active for less than one window gets a single window padded with empty steps.
    """
    with_refs = "first_ts" in steps.columns and "last_ts" in steps.columns
    with_abnormal = "n_abnormal" in steps.columns
    columns = ["window_start", "window_end", "features", "n_events"]
    if with_abnormal:
        columns.append("n_abnormal")
    if with_refs:
        columns += ["first_event_ts", "last_event_ts"]
    if steps.empty:
        return pd.DataFrame(columns=columns)
    names = list(feature_names)
    step_s, length, stride = spec.step_seconds, spec.window_steps, spec.stride_steps
    idx = steps["step"].to_numpy(dtype=np.int64) // step_s
    # Window starts are multiples of the stride (in steps since the epoch). Every event step lies
    # in some window; edge windows reach at most ``stride - 1`` empty steps past the active span.
    first = int(idx.min() // stride * stride)
    if grid_first is not None:
        if grid_first % stride or grid_first > first:
            raise ValueError(f"grid_first {grid_first} must be a multiple of the stride {stride} at or before {first}")
        first = int(grid_first)
    last_start = max(first, int(-(-(idx.max() - length + 1) // stride) * stride))
    starts = np.arange(0, last_start - first + 1, stride, dtype=np.int64)
    n_rows = int(last_start - first + length)
    grid = np.zeros((n_rows, len(names)), dtype=np.float32)
    counts = np.zeros(n_rows, dtype=np.int64)
    grid[idx - first] = steps[names].to_numpy(dtype=np.float32)
    counts[idx - first] = steps["n_events"].to_numpy(dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(counts)])
    n_events = cum[starts + length] - cum[starts]
    keep = n_events > 0
    starts, n_events = starts[keep], n_events[keep]
    windows = (
        np.stack([grid[s : s + length].reshape(-1) for s in starts])
        if len(starts)
        else np.zeros((0, length * len(names)), dtype=np.float32)
    )
    start_s = (first + starts) * step_s
    out = {
        "window_start": start_s,
        "window_end": start_s + length * step_s,
        "features": list(windows.astype(np.float32)),
        "n_events": n_events,
    }
    if with_abnormal:
        abnormal = np.zeros(n_rows, dtype=np.int64)
        abnormal[idx - first] = steps["n_abnormal"].to_numpy(dtype=np.int64)
        cum_abnormal = np.concatenate([[0], np.cumsum(abnormal)])
        out["n_abnormal"] = cum_abnormal[starts + length] - cum_abnormal[starts]
    if with_refs:
        # Busy steps in grid order; a kept window has at least one, so both lookups land inside it.
        busy = np.flatnonzero(counts > 0)
        first_ts = np.zeros(n_rows, dtype=np.int64)
        last_ts = np.zeros(n_rows, dtype=np.int64)
        first_ts[idx - first] = steps["first_ts"].to_numpy(dtype=np.int64)
        last_ts[idx - first] = steps["last_ts"].to_numpy(dtype=np.int64)
        out["first_event_ts"] = first_ts[busy[np.searchsorted(busy, starts)]]
        out["last_event_ts"] = last_ts[busy[np.searchsorted(busy, starts + length) - 1]]
    return pd.DataFrame(out, columns=columns)


def to_tensor(flat: np.ndarray | list[np.ndarray], n_steps: int, n_features: int) -> np.ndarray:
    """Stack flat window vectors into a ``[N, n_steps, n_features]`` float32 array."""
    if len(flat) == 0:
        return np.zeros((0, n_steps, n_features), dtype=np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in flat]).reshape(-1, n_steps, n_features)
