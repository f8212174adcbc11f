"""``featurize`` on small hand-built events: template buckets, stable feature names, sessions, reruns."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from loganomaly.config import Config
from loganomaly.features import stage as featurize
from loganomaly.features.layout import decode_windows
from loganomaly.features.windows import feature_names_for
from loganomaly.lake.schemas import EVENT_COLUMNS, TABLES

pytestmark = pytest.mark.spark

UTC = dt.timezone.utc
DAY1 = dt.datetime(2024, 3, 1, 10, 0, tzinfo=UTC)  # training period
DAY2 = dt.datetime(2024, 3, 2, 10, 0, tzinfo=UTC)  # after the cut
DAY3 = dt.datetime(2024, 3, 3, 10, 0, tzinfo=UTC)  # a later nightly run


#: Peer groups of the default config: every run here computes the entity features (turned on).
GROUPS = ["internal", "external", "default"]


def names_for(templates: list[str]) -> list[str]:
    return feature_names_for(templates, (), GROUPS)


def config(lake_root: str) -> Config:
    cfg = Config()
    cfg.lake.root = lake_root
    cfg.features.step_seconds = 300
    cfg.features.window_steps = 4
    cfg.features.stride_steps = 2
    cfg.train.train_until = "2024-03-02T00:00:00+00:00"
    cfg.features.entity_features = True
    return cfg


def event(ts: dt.datetime, line_no: int, template_id: str | None, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(EVENT_COLUMNS)
    row.update(
        event_id=f"e{line_no:04d}",
        ts=ts,
        date=ts.date(),
        source="hdfs",
        format="syslog",
        entity="h1",
        level="info",
        message=f"line {line_no}",
        template_id=template_id,
        file="f.log",
        line_no=line_no,
        run_id="test",
    )
    row.update(fields)
    return row


def write_events(spark, lake, rows: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    lake.write("events", spark.createDataFrame(rows, TABLES["events"].ddl), partition_by=("date",))


def day_events(day: dt.datetime, counts: dict[str | None, int], first_line: int) -> list[dict[str, Any]]:
    """``counts`` events per template id, all in the step that starts at ``day``."""
    rows, n = [], first_line
    for tid, count in counts.items():
        for _ in range(count):
            rows.append(event(day + dt.timedelta(seconds=n % 250), n, tid))
            n += 1
    return rows


def stored_window(r) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A ``sequences`` row's ``[n_steps, n_features]`` window, in whichever layout the table stores it."""
    return decode_windows(pa.array([r.features]), r.n_steps, r.n_features)[0]


def step_values(lake, names: list[str], step_start: dt.datetime) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Feature values (log1p undone) of the step at ``step_start``, from a window that holds it."""
    rows = lake.read("sequences").collect()
    for r in rows:
        ws = r.window_start.replace(tzinfo=UTC) if r.window_start.tzinfo is None else r.window_start
        offset = int((step_start - ws).total_seconds()) // 300
        if 0 <= offset < r.n_steps:
            x = stored_window(r)[offset]
            return {n: float(np.expm1(v)) for n, v in zip(names, x, strict=True)}
    raise AssertionError(f"no window holds {step_start}")


def test_template_buckets_are_fitted_on_the_training_period(spark, lake) -> None:  # type: ignore[no-untyped-def]
    rows = day_events(DAY1, {"TA": 5, "TB": 3, "TE": 3, "TC": 2, "TD": 1, "T0": 2}, first_line=0)
    rows[0].update(level="error")
    rows[1].update(level="ERR")
    # a flow record: no message, so template T0 but not an unknown *log line*
    rows.append(event(DAY1 + dt.timedelta(seconds=30), 100, "T0", format="json", message=None, duration=4.0))
    # after the cut TC dominates: it must not become a feature
    rows += day_events(DAY2, {"TC": 20, "TA": 1}, first_line=200)
    write_events(spark, lake, rows)

    summary = featurize.run(spark, config(str(lake.root)), lake=lake, top_templates=2)

    # TB and TE tie at 3: the smaller id wins, deterministically
    assert summary.feature_names == names_for(["TA", "TB"])
    stored = lake.read("sequences").select("feature_names").distinct().collect()
    assert [list(r.feature_names) for r in stored] == [summary.feature_names]
    v = step_values(lake, summary.feature_names, DAY1)
    assert v["events"] == pytest.approx(17)
    assert v["tpl:TA"] == pytest.approx(5)
    assert v["tpl:TB"] == pytest.approx(3)
    assert v["tpl:other"] == pytest.approx(3 + 2 + 1)
    assert v["tpl:unknown"] == pytest.approx(2)
    assert v["errors"] == pytest.approx(2)
    assert v["error_ratio"] == pytest.approx(2 / 17, rel=1e-5)
    assert v["p50_duration"] == pytest.approx(4.0) and v["p95_duration"] == pytest.approx(4.0)
    later = step_values(lake, summary.feature_names, DAY2)
    assert later["tpl:other"] == pytest.approx(20) and later["tpl:TA"] == pytest.approx(1)

    # every window points at its raw lines: entity + [window_start, window_end), narrowed by the refs
    for r in lake.read("sequences").collect():
        assert r.window_start <= r.first_event_ts <= r.last_event_ts < r.window_end
        assert r.n_features == len(summary.feature_names) == len(names_for(["TA", "TB"]))


def test_template_counts_off_leave_every_tpl_feature_out_and_the_rest_as_it_was(spark, lake) -> None:  # type: ignore[no-untyped-def]
    """``features.template_counts: false`` (the zeek profile): the windows hold no ``tpl:`` column,
    every other feature keeps its value, and the names travel to the next run as before."""
    rows = day_events(DAY1, {"TA": 5, "TB": 3, "T0": 2}, first_line=0)
    rows[0].update(level="error", status="REJ", dst_addr="10.0.0.9")
    rows += day_events(DAY2, {"TC": 4}, first_line=200)
    write_events(spark, lake, rows)
    cfg = config(str(lake.root))
    cfg.features.template_counts = False

    summary = featurize.run(spark, cfg, lake=lake, top_templates=2)

    assert summary.feature_names == feature_names_for([], (), GROUPS, template_counts=False)
    assert not any(n.startswith("tpl:") for n in summary.feature_names)
    v = step_values(lake, summary.feature_names, DAY1)
    assert v["events"] == pytest.approx(10) and v["errors"] == pytest.approx(1)
    assert v["failed_connections"] == pytest.approx(1) and v["new_templates"] == pytest.approx(2)
    assert step_values(lake, summary.feature_names, DAY2)["events"] == pytest.approx(4)
    # a nightly run keeps the stored list even where the config now asks for template counts
    cfg.features.template_counts = True
    assert featurize.run(spark, cfg, lake=lake).feature_names == summary.feature_names


@pytest.mark.slow  # about 40 s on 2 cores: in `make test-slow` and CI, not `make test`
def test_feature_names_stay_stable_when_new_dates_arrive(spark, lake) -> None:  # type: ignore[no-untyped-def]
    write_events(spark, lake, day_events(DAY1, {"TA": 4, "TB": 2}, first_line=0))
    cfg = config(str(lake.root))
    first = featurize.run(spark, cfg, lake=lake, top_templates=2)
    assert first.feature_names == names_for(["TA", "TB"])

    write_events(spark, lake, day_events(DAY3, {"TZ": 30}, first_line=500))
    again = featurize.run(spark, cfg, lake=lake, top_templates=2)
    assert again.feature_names == first.feature_names
    dates = {r.date for r in lake.read("sequences").select("date").distinct().collect()}
    assert DAY3.date() in dates
    assert step_values(lake, again.feature_names, DAY3)["tpl:other"] == pytest.approx(30)

    # the training reader sees every window of the table in the one shape the names describe
    from loganomaly.features.split import Selection, plan_shards
    from loganomaly.lake.snapshot import Snapshot
    from loganomaly.training.readers.arrow import ShardReader

    version = lake.version("sequences")
    assert version is not None
    (plan,) = plan_shards(Snapshot(lake.path("sequences"), version), [Selection(0.0, 0.0, 0.25, "all")], seed=0)
    x = ShardReader(plan, rank=0, world=1).load().x
    assert x.shape == (lake.read("sequences").count(), 4, len(again.feature_names))

    # a deliberate refit with a later training period picks the new template
    cfg.train.train_until = "2024-03-04T00:00:00+00:00"
    refit = featurize.run(spark, cfg, lake=lake, top_templates=2, refit_templates=True)
    assert refit.feature_names == names_for(["TZ", "TA"])


def test_sessions_by_block_id_are_ordered_labelled_and_rerun_identically(spark, lake) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    t = DAY1
    s = dt.timedelta(seconds=1)
    rows = [
        # written out of order on purpose; two lines share a timestamp (line order breaks the tie)
        event(t + 3 * s, 4, "TC", params=["blk_-42", "10.0.0.1"], label="-"),
        event(t + 1 * s, 2, "TA", params=["blk_7"], label="-"),
        event(t + 0 * s, 1, "TA", params=["blk_-42"], label="-"),
        event(t + 1 * s, 3, "TB", params=["blk_-42", "blk_7"], label="-"),  # names two blocks
        event(t + 5 * s, 5, "TD", params=["blk_7"], entity="h2", label="Anomaly"),
        event(t + 6 * s, 6, "TE", params=["no block here"], label="-"),
        # the miner kept the id as text: found in the message
        event(t + 7 * s, 7, "TF", params=[], message="deleting blk_99 now", label=None),
    ]
    write_events(spark, lake, rows)
    cfg = config(str(lake.root))

    def snapshot() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        sessions = sorted(
            (r.session_key, r.source, r.start, r.end, r.date, r.n_events, tuple(r.template_ids),
             tuple(r.event_ids), r.label)
            for r in lake.read("sessions").collect()
        )
        windows = sorted(
            (r.entity, r.window_start, r.window_end, r.date, tuple(r.feature_names),
             tuple(round(v, 6) for v in r.features), r.n_events, r.first_event_ts, r.last_event_ts)
            for r in lake.read("sequences").collect()
        )
        return sessions, windows

    summary = featurize.run(spark, cfg, lake=lake, session_key=featurize.HDFS_BLOCK_KEY)
    assert summary.sessions == 3
    sessions, windows = snapshot()
    by_key = {row[0]: row for row in sessions}
    assert set(by_key) == {"blk_-42", "blk_7", "blk_99"}
    _, source, start, end, date, n, tids, eids, label = by_key["blk_-42"]
    assert (source, n, tids, eids, label) == ("hdfs", 3, ("TA", "TB", "TC"), ("e0001", "e0003", "e0004"), None)
    assert date == DAY1.date()
    assert by_key["blk_7"][5:] == (3, ("TA", "TB", "TD"), ("e0002", "e0003", "e0005"), "Anomaly")
    assert by_key["blk_99"][6:] == (("TF",), ("e0007",), None)
    assert math.isclose((by_key["blk_7"][3] - by_key["blk_7"][2]).total_seconds(), 4.0)
    # the event references open the raw lines
    ids = set(by_key["blk_7"][7])
    opened = lake.read("events").where(F.col("event_id").isin(sorted(ids))).count()
    assert opened == 3

    featurize.run(spark, cfg, lake=lake, session_key=featurize.HDFS_BLOCK_KEY)
    assert snapshot() == (sessions, windows)


def test_a_bad_session_key_names_the_valid_forms() -> None:
    from loganomaly.errors import ConfigError

    with pytest.raises(ConfigError, match="params:<regex>"):
        featurize.SessionKey.parse("no_such_column")
    assert featurize.SessionKey.parse("column:src_addr").column == "src_addr"
    assert featurize.SessionKey.parse(featurize.HDFS_BLOCK_KEY).regex == r"blk_-?\d+"


def window_rows(lake) -> dict[tuple[str, Any], tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    cols = ["entity", "window_start", "date", "features", "n_events", "n_abnormal", "first_event_ts",
            "last_event_ts", "feature_names"]
    return {(r.entity, r.window_start): tuple(r[c] for c in cols[2:]) for r in lake.read("sequences").collect()}


@pytest.mark.slow  # about 40 s on 2 cores: in `make test-slow` and CI, not `make test`
def test_incremental_featurize_gives_the_full_rebuilds_windows(spark, lake) -> None:  # type: ignore[no-untyped-def]
    """``since`` rebuilds only recent dates, and exactly as a full rebuild would.

    Windows of an hour overlap (the stride, 35 minutes, does not divide a day), they straddle
    midnight, one host starts only on the new day and another was quiet for a day before its
    late-evening events: a host with history has windows that start before its first recent event
    and reach it, which the rebuild gets right only by knowing where each entity's grid starts.
    """
    cfg = config(str(lake.root))
    cfg.features.window_steps, cfg.features.stride_steps = 12, 7
    night = dt.datetime(2024, 3, 2, 23, 52, tzinfo=UTC)
    old = (day_events(DAY1, {"TA": 3, "TB": 2}, first_line=0)
           + [event(night + dt.timedelta(minutes=i), 100 + i, "TA", entity=e) for i in range(3) for e in ("h1", "h2")]
           + [event(DAY1 + dt.timedelta(hours=3), 200 + i, "TB", entity=e) for i, e in enumerate(("h2", "h4"))])
    write_events(spark, lake, old)
    # the first night of a new lake has nothing to add to: --since builds everything
    assert featurize.run(spark, cfg, lake=lake, top_templates=2, since="2024-03-03").rebuilt_from is None
    before = window_rows(lake)
    new = ([event(dt.datetime(2024, 3, 3, 0, 4, tzinfo=UTC), 300, "TA", entity="h1")]
           + [event(DAY3 + dt.timedelta(minutes=m), 400 + m, "TB", entity="h3", label="attack") for m in range(0, 50, 5)]
           + [event(DAY3 + dt.timedelta(hours=2), 500, "TA", entity="h2")])
    write_events(spark, lake, new)

    summary = featurize.run(spark, cfg, lake=lake, since="2024-03-03")
    incremental = window_rows(lake)
    # One window (an hour) before the new day can reach it: 2024-03-02 and later are replaced.
    assert summary.rebuilt_from == "2024-03-02"
    runs = {r.date: r.run_id for r in lake.read("sequences").select("date", "run_id").distinct().collect()}
    assert runs[dt.date(2024, 3, 1)] != summary.run_id and runs[dt.date(2024, 3, 3)] == summary.run_id
    assert {k: v for k, v in incremental.items() if v[0] < dt.date(2024, 3, 2)} == \
        {k: v for k, v in before.items() if v[0] < dt.date(2024, 3, 2)}
    # the window across midnight now holds h1's new event too
    straddling = [v for (e, _), v in incremental.items() if e == "h1" and v[0] == dt.date(2024, 3, 2)
                  and v[5] is not None and v[5].date() == dt.date(2024, 3, 3)]
    assert straddling
    assert sum(v[3] for (e, _), v in incremental.items() if e == "h3") > 0  # labels counted

    featurize.run(spark, cfg, lake=lake)  # a full rebuild of the same events
    assert window_rows(lake) == incremental
    with pytest.raises(Exception, match="full run"):
        featurize.run(spark, cfg, lake=lake, since="2024-03-03", refit_templates=True)


def raw_step(lake, names: list[str], entity: str, step_start: dt.datetime) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Stored (log1p) feature values of one entity's step."""
    for r in lake.read("sequences").where(f"entity = '{entity}'").collect():
        ws = r.window_start.replace(tzinfo=UTC) if r.window_start.tzinfo is None else r.window_start
        offset = int((step_start - ws).total_seconds()) // 300
        if 0 <= offset < r.n_steps:
            x = stored_window(r)[offset]
            return dict(zip(names, (float(v) for v in x), strict=True))
    raise AssertionError(f"no window of {entity} holds {step_start}")


def conn(ts: dt.datetime, line_no: int, src: str, dst: str, port: int, status: str, service: str,
         orig: str, resp: str) -> dict[str, Any]:
    return event(ts, line_no, None, format="zeek", entity=src, src_addr=src, dst_addr=dst, dst_port=port,
                 status=status, component=service, message=None,
                 attributes={"local_orig": orig, "local_resp": resp})


def test_network_indicators_count_repeated_attempts_and_requests_to_bare_addresses(spark, lake) -> None:  # type: ignore[no-untyped-def]
    """A bot calling a dead controller: many unanswered TCP attempts to one peer and port in one
    step, beside what does not count (UDP without reply, resets after a connection, the
    half-seen connections of a one-sided capture, failures spread over peers); HTTP and TLS requests without a host or server name beside named ones."""
    cfg = config(str(lake.root))
    cfg.features.entity_features = False
    cfg.features.network_indicators = True
    host = "10.0.0.5"
    t0 = DAY1 + dt.timedelta(minutes=10)
    rows: list[dict[str, Any]] = []

    def add(offset: int, **fields: Any) -> None:
        rows.append(event(t0 + dt.timedelta(seconds=offset), len(rows), None, format="zeek", entity=host,
                          src_addr=host, message=None, **fields))

    for k in range(4):  # the bot: four SYNs without answer to one controller
        add(k, dst_addr="203.0.113.9", dst_port=1177, status="S0", proto="tcp", component="conn")
    add(5, dst_addr="203.0.113.9", dst_port=1178, status="REJ", proto="tcp", component="conn")  # other port
    for k in range(6):  # LLMNR queries: UDP "S0" (no reply) to one multicast address, not attempts
        add(10 + k, dst_addr="224.0.0.252", dst_port=5355, status="S0", proto="udp", component="dns")
    for k in range(3):  # reset after connecting: a connection, not a failed attempt
        add(20 + k, dst_addr="198.51.100.1", dst_port=443, status="RSTO", proto="tcp", component="ssl")
    for k, state in enumerate(["SH", "SH", "SHR", "SHR", "RSTRH"]):
        # a tap that sees one direction: ordinary connections half seen, five to one server
        add(24 + k, dst_addr="198.51.100.7", dst_port=443, status=state, proto="tcp", component="ssl")
    http = {"method": "GET", "uri": "/"}
    add(30, dst_addr="203.0.113.9", dst_port=80, component="http", attributes={**http, "host": "203.0.113.9"})
    add(31, dst_addr="203.0.113.9", dst_port=80, component="http", attributes=dict(http))  # no Host
    add(32, dst_addr="2001:db8::1", dst_port=8080, component="http",
        attributes={**http, "host": "[2001:db8::1]:8080"})
    add(33, dst_addr="198.51.100.2", dst_port=80, component="http", attributes={**http, "host": "example.org"})
    add(34, dst_addr="198.51.100.1", dst_port=443, component="ssl", attributes={"established": "true"})  # no SNI
    add(35, dst_addr="198.51.100.1", dst_port=443, component="ssl",
        attributes={"established": "true", "server_name": "example.org"})
    # a conn.log row of service ssl or http is not a request record
    add(36, dst_addr="198.51.100.1", dst_port=443, status="SF", proto="tcp", component="ssl")
    add(37, dst_addr="198.51.100.2", dst_port=80, status="SF", proto="tcp", component="http")
    # requests Zeek could not parse as HTTP, beside a malformed reply (the server's side) and
    # another weird: only the two requests are malformed requests
    for k, name in enumerate(["bad_HTTP_request", "bad_HTTP_request", "bad_HTTP_reply", "line_terminated_with_single_CR"]):
        add(40 + k, dst_addr="203.0.113.80", dst_port=80, proto="tcp", component="weird", level="warning",
            attributes={"name": name})
    later = t0 + dt.timedelta(minutes=5)
    for k in range(3):  # the next step: one failed attempt to each of three peers
        rows.append(event(later + dt.timedelta(seconds=k), len(rows), None, format="zeek", entity=host,
                          src_addr=host, message=None, dst_addr=f"198.51.100.{10 + k}", dst_port=445,
                          status="S0", proto="tcp", component="conn"))
    write_events(spark, lake, rows)

    summary = featurize.run(spark, cfg, lake=lake, top_templates=0)
    names = summary.feature_names
    assert names == feature_names_for([], indicators=True)
    assert names[-4:] == ["repeated_failures", "unnamed_requests", "malformed_requests", "failed_targets"]
    v = raw_step(lake, names, host, t0)
    assert np.expm1(v["repeated_failures"]) == pytest.approx(4)
    assert np.expm1(v["unnamed_requests"]) == pytest.approx(3 + 1)
    assert np.expm1(v["malformed_requests"]) == pytest.approx(2)
    # the bot's two targets (one port four times, another once); not the UDP, reset or half-seen ones
    assert np.expm1(v["failed_targets"]) == pytest.approx(2)
    nxt = raw_step(lake, names, host, later)
    assert np.expm1(nxt["repeated_failures"]) == pytest.approx(1) and np.expm1(nxt["unnamed_requests"]) == 0
    assert np.expm1(nxt["malformed_requests"]) == 0 and np.expm1(nxt["failed_targets"]) == pytest.approx(3)
    # A feature list from before malformed_requests (a sequences table or bundle of then) is
    # still computed as it was: its two indicators, the same counts.
    old = feature_names_for([], indicators=["repeated_failures", "unnamed_requests"])
    assert old == names[:-2]
    from pyspark.sql import functions as F

    steps = featurize.step_features(lake.read("events"), cfg.features.step_seconds, old).where(
        F.col("entity") == host).orderBy("step").collect()
    assert [round(float(np.expm1(r[f"_f{len(old) - 2}"]))) for r in steps[:2]] == [4, 1]
    assert [round(float(np.expm1(r[f"_f{len(old) - 1}"]))) for r in steps[:2]] == [4, 0]
    for wrong in (["unnamed_requests", "repeated_failures"], ["repeated_failures"],
                  ["repeated_failures", "unnamed_requests", "failed_targets"]):
        with pytest.raises(ValueError, match="first two or more"):
            feature_names_for([], indicators=wrong)
    # a featurize without the setting keeps the list it has (the table's names)
    cfg.features.network_indicators = False
    assert featurize.run(spark, cfg, lake=lake, top_templates=0).feature_names == names


def test_entity_features_direction_failures_novelty_baselines_and_groups(spark, lake) -> None:  # type: ignore[no-untyped-def]
    """An internal host with a steady history, then a burst outward; an internet host seen once.

    The host's burst is measured against its own trailing baseline; the internet host has no
    history and is measured against the training period's baseline (its own group never occurs
    there, so the all-entities one). ``entities`` records both, and a rerun changes nothing.
    """
    cfg = config(str(lake.root))
    cfg.features.baseline_steps, cfg.features.baseline_min_steps = 12, 2
    host, outside = "10.0.0.5", "203.0.113.7"
    rows, n = [], 0
    for s in range(6):  # two web connections inside the network every step
        for k in range(2):
            rows.append(conn(DAY1 + dt.timedelta(minutes=5 * s, seconds=10 * k), n, host, "10.0.0.9", 80, "SF",
                             "http", "T", "T"))
            n += 1
    burst = DAY1 + dt.timedelta(minutes=30)
    for k, (port, status) in enumerate([(53, "REJ"), (443, "S0"), (22, "SF")]):
        rows.append(conn(burst + dt.timedelta(seconds=k), n, host, "8.8.8.8", port, status, "dns", "T", "F"))
        n += 1
    probe = DAY2 + dt.timedelta(minutes=10)
    rows.append(conn(probe, n, outside, host, 445, "S0", "smb", "F", "T"))
    write_events(spark, lake, rows)

    summary = featurize.run(spark, cfg, lake=lake, top_templates=0)
    names = summary.feature_names
    assert names == names_for([])
    v = raw_step(lake, names, host, burst)
    count = {k: float(np.expm1(v[k])) for k in names if not k.startswith(("rel:", "group:"))}
    assert count["outbound_connections"] == pytest.approx(3) and count["inbound_connections"] == pytest.approx(0)
    assert count["to_external_peers"] == pytest.approx(3) and count["to_local_peers"] == pytest.approx(0)
    assert count["failed_share"] == pytest.approx(2 / 3, rel=1e-5)  # REJ and S0 failed, SF did not
    assert count["new_peers"] == pytest.approx(1) and count["new_ports"] == pytest.approx(3)
    assert count["new_services"] == pytest.approx(1)
    assert count["history_steps"] == pytest.approx(6)  # six earlier busy steps in the horizon
    # own trailing baseline: two connections per step, so 3 reads as "3 vs baseline 2"
    from loganomaly.features.windows import relative_baseline

    assert float(relative_baseline(v["connections"], v["rel:connections"])) == pytest.approx(2, rel=1e-5)
    assert (v["group:internal"], v["group:external"], v["group:default"]) == (1.0, 0.0, 0.0)
    quiet = raw_step(lake, names, host, DAY1 + dt.timedelta(minutes=5))
    assert np.expm1(quiet["new_peers"]) == pytest.approx(0) and np.expm1(quiet["new_ports"]) == pytest.approx(0)

    w = raw_step(lake, names, outside, probe)
    assert np.expm1(w["inbound_connections"]) == pytest.approx(1) and np.expm1(w["history_steps"]) == 0
    assert w["group:external"] == 1.0
    baselines = featurize.read_peer_baselines(lake)
    assert baselines is not None and set(baselines) == {"internal", "*"}  # the training period's groups
    assert w["rel:events"] == pytest.approx(np.log1p(1) - baselines["*"]["events"], rel=1e-5)

    def entities() -> dict[str, tuple[Any, ...]]:
        return {r.entity: (r.group, r.group_rule, r.events, r.windows, r.first_seen, r.last_seen)
                for r in lake.read("entities").collect()}

    first = entities()
    assert first[host][:3] == ("internal", "zeek_local_orig", 15) and first[host][3] > 0
    assert first[outside][:3] == ("external", "zeek_local_orig", 1)
    featurize.run(spark, cfg, lake=lake, top_templates=0)  # rerun: same rows, not duplicated
    assert entities() == first and lake.read("entities").count() == 2

    # A model's baselines (scoring a lake it was not trained on) replace this lake's own.
    model_baselines = {"*": {b: 0.5 for b in baselines["*"]}, "external": {b: 0.25 for b in baselines["*"]}}
    featurize.run(spark, cfg, lake=lake, feature_names=names, peer_baselines=model_baselines)
    assert featurize.read_peer_baselines(lake) == model_baselines
    w = raw_step(lake, names, outside, probe)
    assert w["rel:events"] == pytest.approx(np.log1p(1) - 0.25, rel=1e-5)


def test_categorical_fields_count_their_training_periods_frequent_values(spark, lake) -> None:  # type: ignore[no-untyped-def]
    """``features.categories``: per field, the frequent values of the training period only, each
    counted per step, the field's other values together; an attribute works like a column."""
    rows, n = [], 0
    for status, count in {"SF": 5, "S0": 3, "REJ": 2}.items():
        for _ in range(count):
            method = {"attributes": {"method": "GET"}} if status == "SF" else {}
            rows.append(event(DAY1 + dt.timedelta(seconds=n), n, "TA", status=status, **method))
            n += 1
    rows.append(event(DAY1 + dt.timedelta(seconds=n), n, "TA"))  # no status: counted in neither
    # after the cut RSTO dominates: it must not become a feature, it counts as another status
    for i in range(4):
        rows.append(event(DAY2 + dt.timedelta(seconds=i), 100 + i, "TA", status="RSTO"))
    rows.append(event(DAY2 + dt.timedelta(seconds=9), 110, "TA", status="S0", attributes={"method": "PUT"}))
    write_events(spark, lake, rows)
    cfg = config(str(lake.root))
    cfg.features.entity_features = False
    cfg.features.categories = ["status", "method"]
    cfg.features.top_categories = 2

    summary = featurize.run(spark, cfg, lake=lake, top_templates=1)

    categories = {"status": ["SF", "S0"], "method": ["GET"]}
    assert summary.feature_names == feature_names_for(["TA"], (), None, categories)
    assert summary.feature_names[-5:] == ["cat:status=SF", "cat:status=S0", "cat:status=<other>",
                                          "cat:method=GET", "cat:method=<other>"]
    v = step_values(lake, summary.feature_names, DAY1)
    assert (v["cat:status=SF"], v["cat:status=S0"], v["cat:status=<other>"]) == pytest.approx((5, 3, 2))
    assert (v["cat:method=GET"], v["cat:method=<other>"]) == pytest.approx((5, 0))
    later = step_values(lake, summary.feature_names, DAY2)
    assert (later["cat:status=SF"], later["cat:status=S0"], later["cat:status=<other>"]) == pytest.approx((0, 1, 4))
    assert later["cat:method=<other>"] == pytest.approx(1)
    # the chosen values travel with the names: a rerun with another top_categories keeps them
    cfg.features.top_categories = 3
    assert featurize.run(spark, cfg, lake=lake, top_templates=1).feature_names == summary.feature_names


def metric_rows(values: list[float], start: dt.datetime) -> list[dict[str, Any]]:
    """One metric sample (``cpu``) per 5-minute step of host ``m1``."""
    return [event(start + dt.timedelta(minutes=5 * s, seconds=30), s, None, entity="m1", format="csv",
                  message=None, attributes={"cpu": str(v)})
            for s, v in enumerate(values)]


@pytest.mark.parametrize("statistic", ["median", "mean"])
def test_a_level_shift_is_absorbed_by_the_trailing_median_and_an_incident_is_not(spark, lake, statistic) -> None:  # type: ignore[no-untyped-def]
    """A metric series judged only against its own trailing baseline (``features.metric_levels: false``).

    Level 100 for 20 steps, a benign shift to 130, a two-step incident at 10, then 130 again,
    with a horizon of 8 steps. The median reads the shift as normal again after half the horizon,
    sees the whole incident, and is not moved by it afterwards; the mean takes the whole horizon to
    absorb the shift and carries the incident into the steps after it (what
    ``baseline_statistic: median`` is for).
    """
    cfg = config(str(lake.root))
    cfg.features.metrics = ["cpu"]
    cfg.features.metric_levels = False
    cfg.features.baseline_statistic = statistic
    cfg.features.baseline_steps, cfg.features.baseline_min_steps = 8, 2
    values = [100.0] * 20 + [130.0] * 10 + [10.0] * 2 + [130.0] * 8
    write_events(spark, lake, metric_rows(values, DAY1))

    names = featurize.run(spark, cfg, lake=lake, top_templates=0).feature_names
    assert "metric:cpu" not in names and "rel:metric:cpu" in names
    assert names == feature_names_for([], ["cpu"], GROUPS, metric_levels=False)

    def rel(step: int) -> float:
        return raw_step(lake, names, "m1", DAY1 + dt.timedelta(minutes=5 * step))["rel:metric:cpu"]

    shift, incident, after = np.log1p(130) - np.log1p(100), np.log1p(10) - np.log1p(130), 33
    assert rel(10) == pytest.approx(0, abs=1e-6)  # steady: the baseline is the level itself
    assert rel(20) == pytest.approx(shift, rel=1e-4)  # the shift, when it happens
    assert rel(30) == pytest.approx(incident, rel=1e-3)  # the incident, against the new level
    if statistic == "median":
        assert rel(25) == pytest.approx(0, abs=1e-6)  # 5 of 8 earlier steps at the new level
        assert rel(after) == pytest.approx(0, abs=1e-6)  # two incident steps do not move the median
    else:
        assert rel(25) == pytest.approx(shift * 3 / 8, rel=1e-3)  # still 3 of 8 old steps in the mean
        assert rel(after) > 0.4  # the incident dragged the baseline down: a normal step reads high


def test_a_scoring_lake_continues_each_entitys_history_from_the_training_lake(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A series trained on its first part and scored on the rest in a lake of its own (the split
    pipeline): with ``history_lake`` its windows are those of one lake holding the whole series,
    where without it the first scored steps are judged cold, against the peer group's baseline.

    Host m1: level 100, a benign shift to 130 at step 18, split at step 25 (inside a stride
    cell: the first window holds step 24 from the training lake, not an empty step), an
    incident of two steps at 10 at step 30. Host m2 exists only in the scoring lake and is built as without
    history. Host m3's training events overlap the scoring lake in time: only its steps before
    its first scored one are read, so no step is counted twice.
    """
    from loganomaly.lake.tables import Lake

    def lake_at(name: str) -> Lake:
        return Lake(spark, str(tmp_path / name), "deltars")

    cfg = config(str(tmp_path / "train"))
    cfg.features.metrics = ["cpu"]
    cfg.features.metric_levels = False
    cfg.features.baseline_statistic = "median"
    cfg.features.baseline_steps, cfg.features.baseline_min_steps = 8, 2
    cfg.train.train_until = ""
    values = [100.0] * 18 + [130.0] * 12 + [10.0] * 2 + [130.0] * 8
    split = 25

    def rows(entity: str, vals: list[float], first: int) -> list[dict[str, Any]]:
        return [{**r, "entity": entity, "event_id": f"{entity}-{first + k}", "line_no": first + k}
                for k, r in enumerate(metric_rows(vals, DAY1 + dt.timedelta(minutes=5 * first)))]

    m1, m3 = rows("m1", values, 0), rows("m3", values, 0)
    m2 = rows("m2", [50.0] * 16, split)
    train, score, whole = lake_at("train"), lake_at("score"), lake_at("whole")
    write_events(spark, train, m1[:split] + m3)
    write_events(spark, score, m1[split:] + m2 + m3[split:])
    write_events(spark, whole, m1 + m2 + m3[split:] + m3[:split])
    names = featurize.run(spark, cfg, lake=train, top_templates=0).feature_names
    baselines = featurize.read_peer_baselines(train)

    def build(lake: Lake, history: Lake | None) -> dict[tuple[str, dt.datetime], np.ndarray]:
        featurize.run(spark, cfg, lake=lake, feature_names=names, peer_baselines=baselines, history_lake=history)
        return {(r.entity, r.window_start): stored_window(r) for r in lake.read("sequences").collect()}

    scored = build(score, train)
    reference = build(whole, None)
    assert {e for e, _ in scored} == {"m1", "m2", "m3"}
    for key, window in scored.items():  # m3 in `whole` also has its training steps: same values
        np.testing.assert_allclose(window, reference[key], rtol=1e-6, atol=1e-6, err_msg=str(key))
    rel, hist = names.index("rel:metric:cpu"), names.index("history_steps")
    first = min(ws for e, ws in scored if e == "m1")
    assert (first if first.tzinfo else first.replace(tzinfo=UTC)) == DAY1 + dt.timedelta(minutes=5 * 24)
    assert scored[("m1", first)][1, rel] == pytest.approx(0, abs=1e-6)  # the shift is seven steps old
    assert scored[("m1", first)][1, hist] == pytest.approx(np.log1p(8))  # a full horizon behind it
    assert scored[("m1", first)][0, names.index("events")] > 0  # step 24, from the training lake
    m2_first = scored[("m2", first)]

    write_events(spark, lake_at("cold"), m1[split:] + m2 + m3[split:])
    cold_windows = build(lake_at("cold"), None)
    assert cold_windows[("m1", first)][0, names.index("events")] == 0  # step 24: empty
    assert cold_windows[("m1", first)][1, hist] == 0  # no earlier step: judged against the peers
    assert cold_windows[("m1", first)][1, rel] != pytest.approx(0, abs=1e-3)
    np.testing.assert_allclose(cold_windows[("m2", first)], m2_first)  # no history anywhere: the same


def test_new_errors_count_each_templates_first_error_in_the_lake_and_every_unfitted_error_line(  # type: ignore[no-untyped-def]
        spark, lake) -> None:
    """``new_errors``: the first error-level event of a template in the whole lake, on any host,
    counts; later errors of it do not, nor do its info lines; every error line no template fits
    (``T0``) counts; templates a model saw fail before the lake (``known_error_templates``) never
    count; and a nightly ``--since`` rebuild reads the whole history, as a full one does."""
    cfg = config(str(lake.root))
    cfg.features.entity_features = False
    cfg.features.new_errors = True
    step = dt.timedelta(minutes=5)
    rows = [
        event(DAY1, 0, "TA", level="info"),                       # TA logged, but not at error level
        event(DAY1 + 2 * step, 1, "TA", level="error"),           # TA's first error: new
        event(DAY1 + 2 * step + dt.timedelta(seconds=9), 2, "TA", level="fatal"),  # same step: new too
        event(DAY1 + 4 * step, 3, "TA", level="error", entity="h2"),  # TA failing on another host: known
        event(DAY1 + 4 * step, 4, "T0", level="error", entity="h2", message="no template fits"),  # new
        event(DAY1 + 4 * step, 5, "T0", level="info", entity="h2", message="no template fits either"),
        event(DAY1 + 6 * step, 6, "TB", level="crit"),            # TB's first error: new
        event(DAY1 + 6 * step, 7, "TC", level="error"),           # TC: known to the model below
    ]
    write_events(spark, lake, rows)
    featurize.run(spark, cfg, lake=lake, top_templates=3)
    names = lake.read("sequences").first().feature_names
    assert names == feature_names_for(["TA", "TB", "TC"], (), None, None, True, True)
    assert names.index("new_errors") == names.index("tpl:unknown") + 1

    def new(entity: str, at: dt.datetime) -> float:
        return round(raw_step_plain(lake, names, entity, at)["new_errors"], 6)

    assert new("h1", DAY1) == 0
    assert new("h1", DAY1 + 2 * step) == 2
    assert new("h2", DAY1 + 4 * step) == 1
    assert new("h1", DAY1 + 6 * step) == 2

    featurize.run(spark, cfg, lake=lake, feature_names=names, known_error_templates=["TC", "TA"])
    assert new("h1", DAY1 + 2 * step) == 0 and new("h2", DAY1 + 4 * step) == 1 and new("h1", DAY1 + 6 * step) == 1

    # A later night on a new host: TA fails again (not new), TD fails for the first time (new).
    # (A host quiet since an earlier day would get one more window of that day from a full
    # rebuild, its edge window: a --since rebuild keeps that day's windows.)
    featurize.run(spark, cfg, lake=lake, feature_names=names)
    write_events(spark, lake, [event(DAY3, 20, "TA", level="error", entity="h3"),
                               event(DAY3 + step, 21, "TD", level="error", entity="h3")])
    featurize.run(spark, cfg, lake=lake, since="2024-03-03")
    incremental = window_rows(lake)
    assert new("h3", DAY3) == 0 and new("h3", DAY3 + step) == 1
    featurize.run(spark, cfg, lake=lake)
    assert window_rows(lake) == incremental


def raw_step_plain(lake, names: list[str], entity: str, step_start: dt.datetime) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Feature values (log1p undone) of one entity's step, from a window that holds it."""
    return {n: float(np.expm1(v)) for n, v in raw_step(lake, names, entity, step_start).items()}


def test_sensor_weirds_leave_the_steps_and_stay_in_events(spark, lake) -> None:  # type: ignore[no-untyped-def]
    """Zeek weirds that describe the capture (one-sided tap, lost packets) are not the host's
    warnings or log lines; a weird about the traffic itself (a bad HTTP request) still is, and a
    step holding sensor weirds only is no step. ``sensor_weirds: []`` counts them all again."""
    cfg = config(str(lake.root))
    cfg.features.entity_features = False
    host = "10.0.0.5"
    t0 = DAY1 + dt.timedelta(minutes=10)
    rows: list[dict[str, Any]] = []

    def weird(at: dt.datetime, name: str) -> None:
        rows.append(event(at, len(rows), None, format="zeek", entity=host, src_addr=host, level="warning",
                          component="weird", message=f"weird {name}", attributes={"name": name}))

    rows.append(event(t0, 0, None, format="zeek", entity=host, src_addr=host, dst_addr="10.0.0.9", dst_port=80,
                      component="conn", message=None))
    for k in range(5):
        weird(t0 + dt.timedelta(seconds=1 + k), "possible_split_routing")
    weird(t0 + dt.timedelta(seconds=9), "data_before_established")
    weird(t0 + dt.timedelta(seconds=10), "bad_HTTP_request")
    later = t0 + dt.timedelta(minutes=5)  # a step of sensor weirds only
    weird(later, "above_hole_data_without_any_acks")
    weird(later + dt.timedelta(seconds=1), "bad_TCP_checksum")
    write_events(spark, lake, rows)

    names = featurize.run(spark, cfg, lake=lake, top_templates=0).feature_names
    v = raw_step_plain(lake, names, host, t0)
    assert v["warnings"] == pytest.approx(1) and v["log_lines"] == pytest.approx(1)
    assert v["connections"] == pytest.approx(1)
    assert raw_step_plain(lake, names, host, later)["log_lines"] == 0  # an empty step of the window
    assert lake.read("events").count() == len(rows)

    cfg.features.sensor_weirds = []
    featurize.run(spark, cfg, lake=lake, top_templates=0)
    v = raw_step_plain(lake, names, host, t0)
    assert v["warnings"] == pytest.approx(7) and v["log_lines"] == pytest.approx(7)
    assert raw_step_plain(lake, names, host, later)["warnings"] == pytest.approx(2)
