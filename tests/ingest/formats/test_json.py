"""Spark-free tests of :mod:`loganomaly.ingest.formats.json`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from loganomaly.ingest.formats import (
    FormatOptions,
)
from loganomaly.ingest.formats.json import zeek_log_name
from loganomaly.ingest.formats.json_columns import MIN_GROUP
from tests.ingest.formats.helpers import LOGS, UTC, assert_same_batches, events, lines_taken, parse, write


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
    # The source's (ephemeral) port is left out of the message, so one host's connections to one
    # service repeat it; it stays in src_port.
    assert conn["message"] == "udp dns 10.9.0.4 -> 10.9.0.1:53 SF"
    assert conn["attributes"]["uid"] == "CJ1" and conn["attributes"]["local_orig"] == "true"
    assert "detailed_label" not in conn["attributes"]  # "-" means none
    # HTTP "host" is the Host header (the server), so the entity stays the client.
    assert http["entity"] == "10.9.0.4" and http["attributes"]["host"] == "www.example.com"
    assert http["status"] == "200"
    assert notice["level"] == "warning" and notice["message"].startswith(
        "198.51.100.3 appears to be guessing"
    )


def test_a_notice_without_a_connection_is_about_its_src_host(tmp_path: Path) -> None:
    """Zeek raises scan and password-guessing notices without a connection: no ``id.orig_h``, the
    scanner or guesser in ``src``. Those are the host's events; in any other record ``src`` is only
    an attribute (a source file, a script)."""
    lines = [
        '{"ts":1599797684.6,"note":"SSH::Password_Guessing","msg":"45.141.84.126 appears to be guessing SSH '
        'passwords (seen in 30 connections).","sub":"Sampled servers:  192.168.1.194","src":"45.141.84.126"}',
        '{"ts":1599797685.0,"note":"Scan::Port_Scan","msg":"198.51.100.7 scanned at least 15 unique ports",'
        '"src":"198.51.100.7","dst":"10.0.0.5"}',
        '{"ts":1599797686.0,"id.orig_h":"10.0.0.9","id.orig_p":5,"id.resp_h":"10.0.0.5","id.resp_p":22,'
        '"note":"SSH::Interesting_Hostname_Login","msg":"x","src":"10.0.0.9"}',
        '{"ts":1599797687.0,"note":"CaptureLoss::Too_Much_Loss","msg":"loss"}',
        '{"ts":1599797688.0,"level":"info","msg":"compiled","src":"main.go:42"}',
    ]
    path = write(tmp_path, "notice.log", "\n".join(lines) + "\n")
    guess, scan, login, loss, app = events(parse(path))
    assert (guess["entity"], scan["entity"], login["entity"]) == ("45.141.84.126", "198.51.100.7", "10.0.0.9")
    assert "src" not in guess["attributes"] and scan["attributes"]["dst"] == "10.0.0.5"
    assert login["attributes"]["src"] == "10.0.0.9"  # id.orig_h named it: src stays as written
    assert loss["entity"] is None and guess["level"] == scan["level"] == "warning"
    assert app["entity"] is None and app["attributes"]["src"] == "main.go:42"
    # the block path maps the same (each shape repeated past MIN_GROUP, so it takes them column-wise)
    many = write(tmp_path, "notices.log", "".join(line + "\n" for line in lines for _ in range(MIN_GROUP)))
    assert lines_taken(many, FormatOptions()) == len(lines) * MIN_GROUP
    assert_same_batches(many, FormatOptions())


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
        ('{"ts": 1700000000, "a": "open', "invalid JSON: Unterminated string starting at char 24"),
        ('{"ts": 1700000000} x', "invalid JSON: Extra data at char 19"),
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


def test_a_zeek_json_log_without_path_is_the_log_its_file_name_says(tmp_path: Path) -> None:
    """Zeek's own JSON writer names the file, not the record: ``weird.log`` rows are warnings
    with the weird's name as message, a record's own ``_path`` still wins, and the same lines
    in a file of another name get no Zeek log."""
    records = parse(LOGS / "weird.log")
    rows = events(records)
    assert [r["component"] for r in rows] == ["weird", "weird", "weird", "weird", "notice", "5", "http", "weird"]
    assert {r["level"] for r in rows} == {"warning"}
    assert rows[0]["message"] == "weird data_before_established"
    assert rows[4]["message"].startswith("198.51.100.3 appears")
    assert [r.kind for r in records].count("quarantine") == 2

    renamed = write(tmp_path, "sensor.jsonl", (LOGS / "weird.log").read_text())
    plain = events(parse(renamed))
    assert [r["component"] for r in plain] == [None, None, None, None, "notice", "5", "http", None]
    assert plain[0]["level"] == "info" and plain[0]["message"] == "10.9.0.4 -> 93.184.216.34:443"


@pytest.mark.parametrize(
    ("name", "lines", "log"),
    [
        ("ssl.log", ['{"ts": 1.5, "uid": "C1"}'], "ssl"),
        ("conn.00:00:00-01:00:00.log.gz", ['{"ts": "2024-01-01T00:00:00Z"}'], "conn"),
        ("DNS.log.labeled", ['not json', '{"ts": 1}'], "dns"),
        ("zeek_json.log", ['{"ts": 1, "uid": "C1"}'], None),  # not a Zeek log's name
        ("conn.log", ['{"timestamp": 1, "uid": "C1"}'], None),  # no Zeek ts
        ("weird.log", ['[1, 2]'], None),
    ],
)
def test_zeek_log_names(name: str, lines: list[str], log: str | None) -> None:
    assert zeek_log_name(Path(name), lines) == log
