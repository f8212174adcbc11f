"""Spark-free tests of :mod:`loganomaly.ingest.parsing`: every input format, detection, and bad input.

The invariant checked throughout: one record per physical line (events + quarantine), with a
specific reason for every quarantined line. Fixtures under ``tests/resources/logs`` were written
for these tests (modelled on real Zeek, Loghub, NSL-KDD and web server formats, not copied).
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loganomaly.errors import ConfigError, ParseError
from loganomaly.ingest.parsing import (
    FORMATS,
    HEADER_REASON,
    LOGHUB_PATTERNS,
    MAX_LINE_BYTES,
    NSL_KDD_COLUMNS,
    Detection,
    FormatOptions,
    ParsedRecord,
    TimeFormat,
    _Clock,
    detect,
    detect_format,
    iter_input_files,
    normalize_level,
    nsl_kdd_options,
    open_lines,
    parse_epoch,
    parse_file,
    parse_timestamp,
)
from loganomaly.lake.schemas import EVENT_COLUMNS, EVENT_NUMERIC_FIELDS

LOGS = Path(__file__).resolve().parents[1] / "resources" / "logs"
UTC = dt.timezone.utc
INT_COLUMNS = {k for k, v in EVENT_NUMERIC_FIELDS.items() if v in ("int", "bigint")}
#: Columns ingest fills; a parser must leave them alone.
INGEST_COLUMNS = {
    "event_id",
    "date",
    "file",
    "line_no",
    "run_id",
    "source",
    "template_id",
    "template",
    "params",
}


def physical_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def parse(path: Path, **kwargs: Any) -> list[ParsedRecord]:
    records = list(parse_file(path, **kwargs))
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    elif raw[:3] == b"BZh":
        raw = bz2.decompress(raw)
    assert len(records) == physical_lines(raw), "one record per physical line"
    assert [r.line_no for r in records] == list(range(1, len(records) + 1))
    for r in records:
        check_record(r)
    return records


def check_record(record: ParsedRecord) -> None:
    """Shape and types of one record, whatever its format."""
    if record.kind == "quarantine":
        assert set(record.data) == {"format", "reason", "raw", "raw_length"}
        assert isinstance(record.data["reason"], str) and record.data["reason"]
        return
    assert record.kind == "event"
    event = record.data
    assert set(event) <= set(EVENT_COLUMNS) - INGEST_COLUMNS, set(event) - set(EVENT_COLUMNS)
    assert isinstance(event["ts"], dt.datetime) and event["ts"].utcoffset() == dt.timedelta(0)
    assert event["format"] in FORMATS
    for name in INT_COLUMNS:
        assert event.get(name) is None or type(event[name]) is int, (name, event[name])
    assert event.get("duration") is None or type(event["duration"]) is float
    for name in (
        "entity",
        "level",
        "component",
        "message",
        "status",
        "proto",
        "src_addr",
        "dst_addr",
        "label",
    ):
        assert event.get(name) is None or isinstance(event[name], str), (name, event[name])
    attributes = event.get("attributes") or {}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items())


def events(records: list[ParsedRecord]) -> list[dict[str, Any]]:
    return [r.data for r in records if r.kind == "event"]


def reasons(records: list[ParsedRecord]) -> list[str]:
    return [r.data["reason"] for r in records if r.kind == "quarantine"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


# ------------------------------------------------------------------------------ the module stays Spark-free


def test_parsing_imports_without_pyspark() -> None:
    code = "import sys; sys.modules['pyspark'] = None; import loganomaly.ingest.parsing"
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": "lib"}, cwd=LOGS.parents[2]
    )


# ------------------------------------------------------------------------------ timestamps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (1_700_000_000.5, dt.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)),
        (1_700_000_000_123, dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        (1_700_000_000_123_456, dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),
        (1_700_000_000_123_456_789, dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)),
        ("1700000000123", dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)),
        ("1700000000.25", dt.datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)),
        ("2023-11-14T22:13:20Z", dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-15T00:13:20+02:00", dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-15T00:13:20+0200", dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("2023-11-14T17:13:20.000123-05:00", dt.datetime(2023, 11, 14, 22, 13, 20, 123, tzinfo=UTC)),
        ("2023-11-14 22:13:20,5", dt.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)),
        ("2023-11-14T22:13:20", dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_normalises_to_utc(value: Any, expected: dt.datetime) -> None:
    got = parse_timestamp(value)
    assert got == expected
    assert got.tzinfo is UTC or got.utcoffset() == dt.timedelta(0)


def test_zone_less_iso_time_is_read_in_the_given_timezone() -> None:
    paris = FormatOptions(timezone="Europe/Paris").tz
    assert parse_timestamp("2023-07-01T12:00:00", paris) == dt.datetime(2023, 7, 1, 10, tzinfo=UTC)
    assert parse_timestamp("2023-01-01T12:00:00", paris) == dt.datetime(2023, 1, 1, 11, tzinfo=UTC)
    # An explicit zone wins over the default zone.
    assert parse_timestamp("2023-07-01T12:00:00Z", paris) == dt.datetime(2023, 7, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2023-13-01T00:00:00Z", "impossible date/time"),
        ("2023-02-30T00:00:00", "impossible date/time"),
        ("99999-01-01T00:00:00Z", "unparseable timestamp"),
        (-5, "negative epoch"),
        ("-1700000000", "negative epoch"),
        (10**25, "out of range"),
        ("2150-01-01T00:00:00Z", "out of range"),
        (True, "not a time"),
        (float("nan"), "not a time"),
        ("yesterday", "unparseable timestamp"),
        ("", "empty timestamp"),
    ],
)
def test_impossible_timestamps_raise_specific_reasons(value: Any, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse_timestamp(value)


def test_epoch_integers_are_exact() -> None:
    assert parse_epoch(1_700_000_000_000_001).microsecond == 1
    assert parse_epoch("1700000000000001") == parse_epoch(1_700_000_000_000_001)


def test_time_format_subset_and_year_rollover() -> None:
    clock = _Clock(None, 2022)
    fmt = TimeFormat.compile("%b %d %H:%M:%S")
    assert fmt.parse("Dec 31 23:59:59", clock) == dt.datetime(2022, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert fmt.parse("Jan  1 00:00:01", clock) == dt.datetime(2023, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert TimeFormat.compile("%d/%b/%Y:%H:%M:%S %z").parse(
        "10/Oct/2000:13:55:36 -0700", clock
    ) == dt.datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC)
    assert TimeFormat.compile("%Y-%m-%d %I:%M:%S %p").parse("2020-01-02 01:02:03 PM", clock).hour == 13
    with pytest.raises(ParseError, match="impossible date/time"):
        TimeFormat.compile("%y%m%d %H%M%S").parse("081310 101502", clock)
    with pytest.raises(ParseError, match="does not match format"):
        fmt.parse("not a time", clock)
    with pytest.raises(ConfigError, match="unsupported strptime directive"):
        TimeFormat.compile("%Q")


def test_normalize_level() -> None:
    assert [normalize_level(v) for v in ("W", "WARN", "Warning", "E", "SEVERE", "I", "V", "F", "notice")] == [
        "warning", "warning", "warning", "error", "error", "info", "debug", "fatal", "notice",
    ]  # fmt: skip
    assert normalize_level("-") is None
    assert normalize_level("Custom") == "custom"


# ------------------------------------------------------------------------------ json


def test_zeek_json_records_map_to_typed_columns() -> None:
    records = parse(LOGS / "zeek_json.log")
    conn, http, notice = events(records)
    assert conn["ts"] == dt.datetime(2023, 3, 1, 10, 0, 0, 250000, tzinfo=UTC)
    assert (conn["src_addr"], conn["src_port"], conn["dst_addr"], conn["dst_port"]) == (
        "10.9.0.4",
        50111,
        "10.9.0.1",
        53,
    )
    assert (conn["bytes_out"], conn["bytes_in"], conn["packets_out"], conn["packets_in"]) == (44, 120, 1, 1)
    assert conn["duration"] == 0.0125 and conn["proto"] == "udp" and conn["component"] == "dns"
    assert conn["status"] == "SF" and conn["label"] == "Benign" and conn["entity"] == "10.9.0.4"
    assert conn["message"] == "udp dns 10.9.0.4:50111 -> 10.9.0.1:53 SF"
    assert conn["attributes"]["uid"] == "CJ1" and conn["attributes"]["local_orig"] == "true"
    assert "detailed_label" not in conn["attributes"]  # "-" means none
    # HTTP "host" is the Host header (the server), so the entity stays the client.
    assert http["entity"] == "10.9.0.4" and http["attributes"]["host"] == "www.example.com"
    assert http["status"] == "200"
    assert notice["level"] == "warning" and notice["message"].startswith(
        "198.51.100.3 appears to be guessing"
    )


def test_generic_json_nested_fields_levels_and_zones() -> None:
    records = parse(LOGS / "app.jsonl")
    first, second, third, fourth = events(records)
    assert first["ts"] == dt.datetime(2023, 5, 4, 10, 0, tzinfo=UTC)  # +02:00 -> two hours earlier
    assert first["level"] == "warning" and first["entity"] == "app-1"
    assert first["component"] == "billing" and first["attributes"]["trace.id"] == "ab12"
    assert first["message"] == "payment retry 2 for order 7781"
    assert second["ts"] == dt.datetime(2023, 5, 4, 10, 0, 0, 123000, tzinfo=UTC)  # epoch ms
    assert second["level"] == "error" and second["attributes"]["latency_ms"] == "30000"
    assert third["ts"] == dt.datetime(2023, 5, 4, 10, 0, tzinfo=UTC) and third["level"] == "debug"
    assert fourth["label"] == "attack" and fourth["entity"] == "svc-4"


def test_synthetic_json_keeps_host_as_entity(tmp_path: Path) -> None:
    line = {"ts": 1700000000.5, "host": "host-03", "id.orig_h": "10.0.0.3", "id.orig_p": 40000, "id.resp_h": "10.0.0.1",
            "id.resp_p": 53, "proto": "udp", "service": "dns", "duration": 1, "orig_bytes": 10, "resp_bytes": 20,
            "conn_state": "SF"}  # fmt: skip
    (event,) = events(parse(write(tmp_path, "c.jsonl", json.dumps(line) + "\n")))
    assert event["entity"] == "host-03" and "host" not in event["attributes"]
    assert event["duration"] == 1.0 and type(event["duration"]) is float


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"ts": 1700000000, "orig_bytes": true}', "field orig_bytes is not an integer"),
        ('{"ts": 1700000000, "id.orig_p": 80.5}', "field id.orig_p is not an integer"),
        ('{"ts": 1700000000, "resp_bytes": "12kB"}', "field resp_bytes is not an integer"),
        ('{"ts": 1700000000, "orig_pkts": -3}', "field packets_out is negative"),
        ('{"ts": 1700000000, "duration": "NaN"}', "field duration is not a finite number"),
        ('{"ts": 1700000000, "duration": [1]}', "field duration is not a number"),
        ('{"msg": "no time"}', "no timestamp field"),
        ('{"ts": "2023-13-01T00:00:00Z"}', "impossible date/time"),
        ('{"ts": -1}', "negative epoch"),
        ("[1, 2]", "JSON line is not an object"),
        ('{"ts": 1700000000, "a": ', "invalid JSON"),
        ('{"ts": 1700000000, "n": ' + "9" * 5000 + "}", "invalid JSON: Exceeds the limit"),
        ('{"ts": "' + "1" * 5000 + '"}', "unparseable timestamp"),
        ('{"ts": 1700000000, "orig_bytes": "' + "1" * 5000 + '"}', "field orig_bytes is not an integer"),
    ],
)
def test_json_bad_values_are_quarantined_with_the_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path, "bad.jsonl", '{"ts": 1700000000}\n' + line + "\n")
    records = parse(path, fmt="json")
    assert records[0].kind == "event"
    assert records[1].kind == "quarantine" and reason in records[1].data["reason"]
    assert records[1].data["raw"] == line[:2048] and records[1].data["format"] == "json"


def test_json_odd_value_types_and_missing_markers(tmp_path: Path) -> None:
    line = '{"ts": 1700000000, "status": [1], "conn_state": "-", "service": "-", "level": ["x"], "tags": {"a": [1]}}'
    (event,) = events(parse(write(tmp_path, "o.jsonl", line + "\n")))
    assert event["status"] == "[1]" and event["component"] is None
    assert event["attributes"] == {"tags.a": "[1]"}  # "-" markers are dropped, not kept as text


def test_json_configurable_timestamp_and_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path, "x.jsonl", '{"when": "04/05/2023 10:00:00", "who": "alice", "sev": "W", "text": "hi"}\n'
    )
    opts = FormatOptions(
        timestamp_fields=["when"], timestamp_format="%d/%m/%Y %H:%M:%S", timezone="Europe/Paris",
        entity_field="who", level_field="sev", message_field="text",
    )  # fmt: skip
    (event,) = events(parse(path, options=opts))
    assert event["ts"] == dt.datetime(2023, 5, 4, 8, tzinfo=UTC)
    assert (event["entity"], event["level"], event["message"]) == ("alice", "warning", "hi")


# ------------------------------------------------------------------------------ zeek tsv


def test_zeek_tsv_headers_types_sets_and_iot23_labels() -> None:
    records = parse(LOGS / "zeek_conn_iot23.log")
    assert [r.line_no for r in records if r.kind == "quarantine" and r.data["reason"] == HEADER_REASON] == [
        1, 2, 3, 4, 5, 6, 7, 8, 12,
    ]  # fmt: skip
    ok, scan = events(records)
    assert ok["ts"] == dt.datetime(2023, 3, 1, 10, 0, 0, 250000, tzinfo=UTC)
    assert (ok["bytes_out"], ok["bytes_in"], ok["packets_out"], ok["packets_in"]) == (1200, 48000, 12, 40)
    assert ok["duration"] == 2.5 and ok["src_port"] == 51234 and ok["dst_port"] == 443
    assert ok["label"] == "Benign" and "detailed_label" not in ok["attributes"]
    assert ok["attributes"]["tunnel_parents"] == "[]"  # (empty) set
    assert ok["attributes"]["local_orig"] == "true"  # bool T
    assert ok["component"] == "ssl" and ok["status"] == "SF"
    # Unset "-" values are absent, not zero; the #path names the component when there is no service.
    assert "bytes_out" not in scan and "duration" not in scan and scan["component"] == "conn"
    assert (
        scan["label"] == "Malicious" and scan["attributes"]["detailed_label"] == "PartOfAHorizontalPortScan"
    )
    assert json.loads(scan["attributes"]["tunnel_parents"]) == ["Caaa", "Cbbb"]
    assert reasons(records)[-2] == "field orig_bytes is not an integer: 'lots'"


def test_zeek_tsv_vectors_bools_and_detailedlabel_column() -> None:
    records = parse(LOGS / "zeek_dns.log")
    first, second = events(records)
    assert first["component"] == "dns" and first["label"] == "Background"
    assert json.loads(first["attributes"]["answers"]) == ["93.184.216.34", "93.184.216.35"]
    assert first["attributes"]["AA"] == "false" and "detailed_label" not in first["attributes"]
    assert second["attributes"]["answers"] == "[]" and second["attributes"]["detailed_label"] == "C&C"


def test_zeek_custom_separator_and_markers(tmp_path: Path) -> None:
    text = (
        "#separator \\x7c\n#set_separator|;\n#empty_field|EMPTY\n#unset_field|NONE\n#path|weird\n"
        "#fields|ts|id.orig_h|name|addl|notice|peers\n#types|time|addr|string|string|bool|set[string]\n"
        "1700000000.000001|10.0.0.9|bad_TCP_checksum|NONE|F|a;b\n"
        "1700000001|10.0.0.9|dns_unmatched_msg|EMPTY|X|EMPTY\n"
    )
    records = parse(write(tmp_path, "weird.log", text))
    assert len(reasons(records)) == 8
    (event,) = events(records)
    assert event["ts"] == dt.datetime(2023, 11, 14, 22, 13, 20, 1, tzinfo=UTC)
    assert event["level"] == "warning" and event["message"] == "weird bad_TCP_checksum"
    assert "addl" not in event["attributes"] and json.loads(event["attributes"]["peers"]) == ["a", "b"]
    assert reasons(records)[-1] == "field notice is not a zeek bool: 'X'"


def test_zeek_data_before_header_and_wrong_field_count(tmp_path: Path) -> None:
    records = parse(write(tmp_path, "z.log", "1700000000\tC1\n"), fmt="zeek")
    assert reasons(records) == ["zeek data line before its #fields header"]
    text = "#separator \\x09\n#fields\tts\tuid\n#types\ttime\tstring\n1700000000\tC1\textra\n1700000000\tC2\n"
    records = parse(write(tmp_path, "z2.log", text))
    assert reasons(records)[-1] == "zeek line has 3 fields, header has 2"
    assert events(records)[0]["attributes"] == {"uid": "C2"}


def test_zeek_odd_headers_do_not_crash(tmp_path: Path) -> None:
    text = "#types\ttime\tset[string]\n#set_separator\t\n#fields\tts\ttags\n1700000000\ta,b\n"
    (event,) = events(parse(write(tmp_path, "odd.log", text), fmt="zeek"))
    assert event["attributes"]["tags"] == '["a,b"]'


def test_parser_bug_is_quarantined_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loganomaly.ingest import parsing

    def broken(self: Any, text: str, line_no: int = 0) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(parsing.JsonParser, "parse", broken)
    records = parse(write(tmp_path, "x.jsonl", GOOD_JSON + "\n"))
    assert reasons(records) == ["parser error: RuntimeError: boom"]


# ------------------------------------------------------------------------------ syslog


def test_rfc3164_without_pri_year_rollover_and_default_zone() -> None:
    records = parse(LOGS / "messages.log", options=FormatOptions(year=2023))
    first, second, third, fourth = events(records)
    assert first["ts"] == dt.datetime(2023, 12, 31, 23, 59, 58, tzinfo=UTC)
    assert second["ts"] == dt.datetime(2024, 1, 1, 0, 0, 3, tzinfo=UTC)  # December -> January
    assert (first["entity"], first["component"], first["attributes"]) == ("gw01", "sshd", {"procid": "2201"})
    assert first["message"].startswith("Failed password for invalid user admin")
    assert first["level"] == "info"  # no PRI, no severity
    assert third["component"] == "kernel" and third["message"] == "[12345.678901] eth0: link up"
    assert fourth["component"] == "CRON"


def test_rfc3164_timezone_and_mtime_year(tmp_path: Path) -> None:
    path = write(
        tmp_path, "messages", "Aug  4 12:00:00 host1 app: summer\nJan  4 12:00:00 host1 app: winter\n"
    )
    summer, winter = events(parse(path, options=FormatOptions(year=2022, timezone="America/New_York")))
    assert summer["ts"] == dt.datetime(2022, 8, 4, 16, tzinfo=UTC)  # EDT, UTC-4
    assert winter["ts"] == dt.datetime(2023, 1, 4, 17, tzinfo=UTC)  # EST, UTC-5, next year
    stamp = dt.datetime(2019, 8, 1, tzinfo=UTC).timestamp()
    os.utime(path, (stamp, stamp))
    assert events(parse(path))[0]["ts"].year == 2019


def test_syslog_with_pri_and_rfc5424() -> None:
    records = parse(LOGS / "syslog_pri.log", options=FormatOptions(year=2023))
    su, app, rfc5424 = events(records)
    assert su["level"] == "crit" and su["attributes"]["facility"] == "4" and su["component"] == "su"
    assert app["level"] == "notice" and app["attributes"]["procid"] == "77"
    assert rfc5424["ts"] == dt.datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC)
    assert rfc5424["attributes"]["msgid"] == "ID47" and rfc5424["message"] == "An application event"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("<999>Oct 11 22:14:15 host app: x", "syslog PRI out of range"),
        ("Feb 30 10:00:00 host app: x", "impossible date/time"),
        ("Foo 10 10:00:00 host app: x", "unknown month name"),
        ("just some text", "not RFC 5424 or RFC 3164 syslog"),
        ("<13>1 - host app - - - msg", "syslog timestamp is NILVALUE"),
    ],
)
def test_syslog_bad_lines(tmp_path: Path, line: str, reason: str) -> None:
    records = parse(write(tmp_path, "s.log", line + "\n"), fmt="syslog")
    assert reason in reasons(records)[0]


# ------------------------------------------------------------------------------ access logs


def test_access_log_fields() -> None:
    records = parse(LOGS / "access.log")
    ok, unauthorized, unavailable, garbage = events(records)
    assert ok["ts"] == dt.datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC)  # -0700 -> +7 hours
    assert (ok["entity"], ok["src_addr"], ok["status"], ok["bytes_out"]) == (
        "203.0.113.7",
        "203.0.113.7",
        "200",
        2326,
    )
    assert ok["level"] == "info" and ok["message"] == "GET /apache_pb.gif 200"
    assert ok["attributes"] == {
        "method": "GET", "path": "/apache_pb.gif?x=1", "protocol": "HTTP/1.0", "user": "frank",
        "referer": "http://www.example.com/start.html", "agent": "Mozilla/4.08 [en] (Win98; I ;Nav)",
    }  # fmt: skip
    assert unauthorized["bytes_out"] is None and unauthorized["level"] == "warning"
    assert "referer" not in unauthorized["attributes"]
    assert unavailable["level"] == "error" and unavailable["message"] == "GET /admin 503"  # common format
    assert (
        garbage["attributes"]["request"] == "\\x16\\x03\\x01\\x00" and "method" not in garbage["attributes"]
    )


def test_access_log_entity_field_and_bad_lines(tmp_path: Path) -> None:
    text = (
        '10.0.0.1 - bob [01/Feb/2024:10:00:00 +0100] "GET / HTTP/1.1" 200 5\n'
        '10.0.0.1 - bob [01/Foo/2024:10:00:00 +0100] "GET / HTTP/1.1" 200 5\n'
        '10.0.0.1 - bob [31/Feb/2024:10:00:00 +0100] "GET / HTTP/1.1" 200 5\n'
        "10.0.0.1 - bob not an access line\n"
        '10.0.0.1 - bob [01/Feb/2024:10:00:00 +0100] "GET / HTTP/1.1" 200 ' + "9" * 5000 + "\n"
    )
    records = parse(
        write(tmp_path, "access_log", text), options=FormatOptions(format="access", entity_field="user")
    )
    assert events(records)[0]["entity"] == "bob"
    assert events(records)[0]["ts"] == dt.datetime(2024, 2, 1, 9, tzinfo=UTC)
    assert [r.split(" ")[0:2] for r in reasons(records)] == [
        ["unknown", "month"],
        ["impossible", "date/time"],
        ["not", "a"],
        ["field", "response"],
    ]
    with pytest.raises(ConfigError, match="not an access log field"):
        list(
            parse_file(
                write(tmp_path, "a2.log", text), options=FormatOptions(format="access", entity_field="x")
            )
        )


# ------------------------------------------------------------------------------ loghub


def test_loghub_hdfs_entity_is_the_block_id() -> None:
    records = parse(LOGS / "HDFS_sample.log")
    first, second, warn, _ = events(records)
    assert first["ts"] == dt.datetime(2008, 11, 10, 10, 15, 2, tzinfo=UTC)
    assert first["entity"] == "blk_-4411589101766563890" and first["component"] == "dfs.DataNode$DataXceiver"
    assert first["attributes"] == {"Pid": "412"} and first["format"] == "loghub"
    assert first["message"].startswith("Receiving block blk_-4411589101766563890 src:")
    assert second["entity"] == "blk_902371245610485732"
    assert warn["level"] == "warning"


def test_loghub_bgl_labels_epoch_and_fraction() -> None:
    normal, tlb, app = events(parse(LOGS / "BGL_sample.log"))
    # Epoch column is UTC (the Time column is local, UTC-7); sub-seconds come from the Time column.
    assert normal["ts"] == dt.datetime(2005, 6, 14, 17, 42, 11, 384920, tzinfo=UTC)
    assert normal["label"] is None and normal["level"] == "info" and normal["entity"] == "R23-M0-NB-C:J05-U01"
    assert tlb["label"] == "KERNDTLB" and tlb["level"] == "fatal" and tlb["component"] == "KERNEL"
    assert app["label"] == "APPSEV" and app["message"].startswith("ciod: Error reading message prefix")


def test_loghub_linux_and_openssh_need_a_year() -> None:
    auth, ftp, rotate = events(parse(LOGS / "Linux_sample.log", options=FormatOptions(year=2005)))
    assert auth["ts"] == dt.datetime(2005, 7, 27, 14, 41, 57, tzinfo=UTC)
    assert (auth["entity"], auth["component"], auth["attributes"]) == (
        "combo",
        "sshd(pam_unix)",
        {"PID": "20882"},
    )
    assert rotate["component"] == "logrotate" and rotate["attributes"] == {}
    ssh = events(
        parse(LOGS / "OpenSSH_sample.log", options=FormatOptions(year=2005, timezone="Asia/Hong_Kong"))
    )
    assert ssh[0]["ts"] == dt.datetime(2005, 12, 11, 1, 12, 1, tzinfo=UTC)  # HKT is UTC+8
    assert (
        ssh[0]["entity"] == "LabSZ"
        and ssh[0]["component"] == "sshd"
        and ssh[0]["attributes"] == {"Pid": "31002"}
    )
    assert ssh[2]["message"] == "Failed password for invalid user oracle from 203.0.113.201 port 40312 ssh2"
    by_pid = events(parse(LOGS / "OpenSSH_sample.log", options=FormatOptions(year=2005, entity_field="Pid")))
    assert by_pid[0]["entity"] == "31002" and "Pid" not in by_pid[0]["attributes"]


@pytest.mark.parametrize(
    ("system", "line", "entity", "level"),
    [
        ("Android", "03-17 16:13:38.811  1702  2395 D WindowManager: freeze done", "1702", "debug"),
        ("Apache", "[Sun Dec 04 04:47:44 2005] [error] mod_jk child workerEnv in error state 6", None, "error"),
        ("HPC", "134681 node-246 unix.hw state_change.unavailable 1077804742 1 Component State Change", "node-246", "info"),
        ("Hadoop", "2015-10-18 18:01:47,978 INFO [main] org.apache.Foo: Created x", "org.apache.Foo", "info"),
        ("HealthApp", "20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579", "Step_LSC", "info"),
        ("Mac", "Jul  1 09:00:55 calvisitor-10 kernel[0]: Thunderbolt packet", "calvisitor-10", "info"),
        ("OpenStack", "nova-api.log.1 2017-05-16 00:00:00.008 25746 INFO nova.api [req-1 - - -] 10.11.10.1 GET", "nova.api", "info"),
        ("Proxifier", "[10.30 16:49:06] chrome.exe *64 - proxy.example.org:5070 open through proxy", "chrome.exe *64", "info"),
        ("Spark", "17/06/09 20:10:40 INFO spark.SecurityManager: Changing view acls to: yarn", "spark.SecurityManager", "info"),
        ("Thunderbird", "- 1131566461 2005.11.09 dn228 Nov 9 12:01:01 dn228/dn228 crond[2916]: (root) CMD", "dn228", "info"),
        ("Windows", "2016-09-28 04:30:30, Info                  CBS    Loaded Servicing Stack", "CBS", "info"),
        ("Zookeeper", "2015-07-29 17:41:44,747 - WARN  [QuorumPeer[myid=1]/0:0:0:0:0:0:0:0:2181:FastLeaderElection@774] - "
         "Notification time out: 3200", "FastLeaderElection", "warning"),
    ],
)  # fmt: skip
def test_every_builtin_loghub_pattern(
    tmp_path: Path, system: str, line: str, entity: str | None, level: str
) -> None:
    path = write(tmp_path, f"{system}.log", line + "\n")
    assert tuple(detect(path)) == ("loghub", system)
    (event,) = events(parse(path, options=FormatOptions(year=2005)))
    assert event["entity"] == entity and event["level"] == level
    assert event["ts"].year in (2004, 2005, 2015, 2016, 2017)


def test_all_sixteen_loghub_systems_are_built_in() -> None:
    assert set(LOGHUB_PATTERNS) == {
        "Android", "Apache", "BGL", "HDFS", "HPC", "Hadoop", "HealthApp", "Linux", "Mac", "OpenSSH",
        "OpenStack", "Proxifier", "Spark", "Thunderbird", "Windows", "Zookeeper",
    }  # fmt: skip


def test_loghub_custom_pattern_and_bad_lines(tmp_path: Path) -> None:
    text = "2024-03-01 10:00:00 [node7] ERROR disk: sector 12 unreadable\n2024-13-01 10:00:00 [node7] INFO x: y\nnope\n"
    opts = FormatOptions(format="loghub", pattern=r"<Date> <Time> \[<Node>\] <Level> <Component>: <Content>")
    records = parse(write(tmp_path, "app.log", text), options=opts)
    (event,) = events(records)
    assert event["ts"] == dt.datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert (event["entity"], event["level"], event["component"]) == ("node7", "error", "disk")
    assert event["message"] == "sector 12 unreadable"
    assert "impossible date/time" in reasons(records)[0]
    assert reasons(records)[1] == "line does not match the custom pattern"
    # The same pattern found by detection when given without format.
    assert detect(tmp_path / "app.log", FormatOptions(pattern=opts.pattern)) == Detection(
        "loghub", opts.pattern
    )


def test_loghub_month_13_in_hdfs_is_quarantined(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "HDFS_bad.log",
        "081110 101502 412 INFO dfs.DataNode: ok\n081310 101502 412 INFO dfs.DataNode: bad\n",
    )
    records = parse(path)
    assert records[0].kind == "event" and "impossible date/time" in reasons(records)[0]


# ------------------------------------------------------------------------------ csv


def test_csv_metrics_with_header() -> None:
    records = parse(LOGS / "metrics.csv")
    assert records[0].kind == "quarantine" and records[0].data["reason"] == HEADER_REASON
    first, second = events(records)
    assert first["ts"] == dt.datetime(2024, 2, 1, tzinfo=UTC) and first["entity"] == "web-1"
    assert (first["bytes_in"], first["bytes_out"]) == (1200, 3400) and first["label"] is None
    assert first["attributes"] == {"cpu": "0.42", "mem": "0.61", "bytes_in": "1200", "bytes_out": "3400"}
    assert second["ts"] == dt.datetime(2024, 1, 31, 23, 1, tzinfo=UTC) and second["label"] == "spike"
    assert reasons(records)[-1] == "field bytes_in is not an integer: '12.5'"


def test_csv_headerless_nsl_kdd_with_synthetic_time() -> None:
    records = parse(
        LOGS / "kdd_sample.txt", options=nsl_kdd_options(start="2024-01-01T00:00:00Z", step_seconds=2)
    )
    rows = events(records)
    assert [r["ts"] for r in rows] == [dt.datetime(2024, 1, 1, 0, 0, s, tzinfo=UTC) for s in (2, 4, 6)]
    first = rows[0]
    assert (first["proto"], first["component"], first["status"]) == ("tcp", "http", "SF")
    assert (first["bytes_out"], first["bytes_in"], first["duration"]) == (215, 45076, 0.0)
    assert first["label"] == "normal" and rows[1]["label"] == "neptune" and first["entity"] == "http"
    assert first["attributes"]["difficulty"] == "21" and first["attributes"]["count"] == "1"
    assert len(NSL_KDD_COLUMNS) == 43
    assert FormatOptions(columns="nsl_kdd").columns == NSL_KDD_COLUMNS  # by name, for YAML configs


def test_synthetic_time_follows_physical_line_numbers(tmp_path: Path) -> None:
    rows = (LOGS / "kdd_sample.txt").read_text().splitlines()
    path = write(tmp_path, "kdd.txt", f"{rows[0]}\n\n{rows[1]}\n")
    records = parse(path, options=nsl_kdd_options(start="2024-01-01T00:00:00+01:00", step_seconds=0.5))
    assert [r.kind for r in records] == ["event", "quarantine", "event"]
    assert [e["ts"] for e in events(records)] == [
        dt.datetime(2023, 12, 31, 23, 0, 0, 500000, tzinfo=UTC),
        dt.datetime(2023, 12, 31, 23, 0, 1, 500000, tzinfo=UTC),
    ]


def test_csv_without_time_column_says_how_to_fix(tmp_path: Path) -> None:
    records = parse(LOGS / "kdd_sample.txt", options=FormatOptions(format="csv", columns=NSL_KDD_COLUMNS))
    assert len(reasons(records)) == 3 and all("synthetic_time_start" in r for r in reasons(records))


def test_csv_semicolons_custom_columns_and_wrong_width(tmp_path: Path) -> None:
    text = "when;node;value\n01.02.2024 10:00;n1;5\n01.02.2024 10:01;n2\n"
    opts = FormatOptions(timestamp_fields=["when"], timestamp_format="%d.%m.%Y %H:%M", entity_field="node")
    records = parse(write(tmp_path, "m.csv", text), options=opts)
    (event,) = events(records)
    assert event["ts"] == dt.datetime(2024, 2, 1, 10, tzinfo=UTC) and event["entity"] == "n1"
    assert event["attributes"] == {"value": "5"}
    assert reasons(records) == [HEADER_REASON, "csv row has 2 columns, expected 3"]
    records = parse(write(tmp_path, "q.csv", 'timestamp,host,v\n1700000000,"x",a\rb\n1700000001,h2,3\n'))
    assert reasons(records)[1].startswith("malformed CSV line") and events(records)[0]["entity"] == "h2"


# ------------------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("zeek_conn_iot23.log", Detection("zeek")),
        ("zeek_dns.log", Detection("zeek")),
        ("zeek_json.log", Detection("json")),
        ("app.jsonl", Detection("json")),
        ("messages.log", Detection("syslog")),
        ("syslog_pri.log", Detection("syslog")),
        ("access.log", Detection("access")),
        ("HDFS_sample.log", Detection("loghub", "HDFS")),
        ("BGL_sample.log", Detection("loghub", "BGL")),
        ("Linux_sample.log", Detection("loghub", "Linux")),
        ("OpenSSH_sample.log", Detection("loghub", "OpenSSH")),
        ("metrics.csv", Detection("csv")),
        ("kdd_sample.txt", Detection("csv")),
    ],
)
def test_detection_of_every_format(name: str, expected: Detection) -> None:
    assert detect(LOGS / name) == expected
    assert detect_format(LOGS / name) == expected.format


def test_detection_uses_the_file_name_only_as_a_hint(tmp_path: Path) -> None:
    # Linux lines are RFC 3164 syslog; named like a Loghub system they parse as that system.
    copy = tmp_path / "var-messages"
    copy.write_bytes((LOGS / "Linux_sample.log").read_bytes())
    assert detect(copy) == Detection("syslog")
    # An HDFS name on JSON content does not make it HDFS.
    assert detect(write(tmp_path, "HDFS_x.log", '{"ts": 1}\n')) == Detection("json")
    # Without a name hint, HDFS lines are still recognised by their shape.
    assert detect(write(tmp_path, "datanode.out", (LOGS / "HDFS_sample.log").read_text())) == Detection(
        "loghub", "HDFS"
    )


def test_undetectable_file_quarantines_every_line_with_the_reason(tmp_path: Path) -> None:
    records = parse(write(tmp_path, "notes.txt", "hello there\nhow are you\n"))
    assert (
        reasons(records)
        == ["unrecognised log format (supported: json, zeek, syslog, access, loghub, csv)"] * 2
    )
    with pytest.raises(ParseError, match="unrecognised"):
        detect_format(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "xml"}, "unknown log format 'xml'; valid: json, zeek, syslog, access, loghub, csv"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"year": 1900}, "year must be an integer in 1970..2099"),
        ({"pattern": "NotASystem"}, "valid names: Android, Apache"),
        ({"pattern": "<Date> (<Content>"}, "not a valid regex"),
        ({"timestamp_format": "%Y-%Q"}, "unsupported strptime directive"),
        ({"columns": ["a", "a"]}, "duplicate"),
        ({"columns": "kdd99"}, "unknown column preset 'kdd99'; valid: nsl_kdd"),
        ({"synthetic_time_step_seconds": 0}, "must be > 0"),
        ({"synthetic_time_start": "soon"}, "not an ISO time"),
        ({"delimiter": ";;"}, "one character"),
    ],
)
def test_format_options_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        FormatOptions(**kwargs)


def test_unknown_fmt_argument_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown log format"):
        list(parse_file(LOGS / "app.jsonl", fmt="xml"))


def test_forced_format_that_does_not_fit_quarantines_with_the_format_reason() -> None:
    records = parse(LOGS / "app.jsonl", fmt="access")
    assert reasons(records) == ["not a common/combined access log line"] * 4


# ------------------------------------------------------------------------------ bad input corpus


GOOD_JSON = '{"ts": 1700000000, "host": "h1", "message": "ok"}'


def corpus(tmp_path: Path) -> dict[str, tuple[Path, list[str | None]]]:
    """Bad files and, per line, the expected reason prefix (None = an event)."""
    out: dict[str, tuple[Path, list[str | None]]] = {}

    def add(name: str, data: bytes, expected: list[str | None]) -> None:
        path = tmp_path / name
        path.write_bytes(data)
        out[name] = (path, expected)

    garbage = random.Random(7).randbytes(8192).replace(b"\x1f\x8b", b"xx").replace(b"BZh", b"xxx")
    add("garbage.bin", garbage, ["binary or non-UTF-8 file"] * physical_lines(garbage))
    add("truncated.jsonl", f'{GOOD_JSON}\n{{"ts": 1700000000, "a": [1, 2\n'.encode(), [None, "invalid JSON"])
    long_line = '{"ts": 1700000000, "pad": "' + "x" * (MAX_LINE_BYTES + 10) + '"}'
    add("long.jsonl", f"{GOOD_JSON}\n{long_line}\n{GOOD_JSON}\n".encode(), [None, "line too long", None])
    latin = f"{GOOD_JSON}\n".encode() + '{"ts": 1700000000, "message": "café"}\n'.encode("latin-1")
    add("latin1.jsonl", latin, [None, "invalid UTF-8"])
    impossible = "\n".join(
        [
            GOOD_JSON,
            '{"ts": "2023-13-01T00:00:00Z"}',
            '{"ts": "99999-01-01T00:00:00Z"}',
            '{"ts": -1700000000}',
        ]
    )
    add(
        "impossible.jsonl",
        impossible.encode(),
        [None, "impossible date/time", "unparseable timestamp", "negative epoch"],
    )
    add(
        "empty_lines.jsonl",
        f"\n{GOOD_JSON}\n   \n\n{GOOD_JSON}\n".encode(),
        ["empty line", None, "empty line", "empty line", None],
    )
    add("crlf.jsonl", f"{GOOD_JSON}\r\n{GOOD_JSON}\r\n\r\n".encode(), [None, None, "empty line"])
    text = f"{GOOD_JSON}\n{{broken\n{GOOD_JSON}\n".encode()
    add("c.jsonl.gz", gzip.compress(text), [None, "invalid JSON", None])
    add("c.jsonl.bz2", bz2.compress(text), [None, "invalid JSON", None])
    add("gzip_named_plain.log", gzip.compress(text), [None, "invalid JSON", None])
    add("nul.log", b"\x00\x00\x00\n\x00\x01\x02\n", ["binary or non-UTF-8 file"] * 2)
    add("empty.log", b"", [])
    return out


def test_bad_input_corpus_one_specific_record_per_line(tmp_path: Path) -> None:
    for name, (path, expected) in corpus(tmp_path).items():
        records = parse(path)
        assert len(records) == len(expected), name
        for record, want in zip(records, expected, strict=True):
            if want is None:
                assert record.kind == "event", (name, record)
            elif name == "garbage.bin":
                assert record.kind == "quarantine", (name, record)
                assert record.data["reason"] == "invalid UTF-8" or record.data["reason"].startswith(want), (
                    name,
                    record,
                )
            else:
                assert record.kind == "quarantine" and record.data["reason"].startswith(want), (
                    name,
                    record,
                    want,
                )


def test_long_line_keeps_its_length_and_only_a_head(tmp_path: Path) -> None:
    path, _ = corpus(tmp_path)["long.jsonl"]
    record = parse(path, max_raw_chars=100)[1]
    length = MAX_LINE_BYTES + 10 + len('{"ts": 1700000000, "pad": ""}')
    assert record.data["reason"] == f"line too long ({length} bytes)" and record.data["raw_length"] == length
    assert len(record.data["raw"]) == 100


def test_truncated_gzip_records_what_it_read_then_the_damage(tmp_path: Path) -> None:
    lines = [
        json.dumps({"ts": 1700000000 + i, "host": f"h{i % 3}", "message": "x" * 50 + str(i)})
        for i in range(2000)
    ]
    full = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    records = list(parse_file(path))
    assert len(records) == sum(1 for _ in open_lines(path))
    assert records[-1].kind == "quarantine"
    assert records[-1].data["reason"].startswith("truncated or corrupt compressed stream")
    assert 0 < len(events(records)) < 2000
    assert [r.line_no for r in records] == list(range(1, len(records) + 1))


def test_every_fixture_keeps_the_line_invariant() -> None:
    for path in iter_input_files([LOGS]):
        opts = nsl_kdd_options() if path.name.startswith("kdd") else FormatOptions(year=2023)
        records = parse(path, options=opts)
        assert events(records), path.name
