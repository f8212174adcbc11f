"""Spark-free tests of :mod:`loganomaly.ingest.formats.access`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from loganomaly.errors import ConfigError
from loganomaly.ingest.formats import (
    FormatOptions,
    parse_file,
)
from tests.ingest.formats.helpers import LOGS, UTC, events, parse, reasons, write


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
