"""Spark-free tests of :mod:`loganomaly.ingest.formats.syslog`."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from loganomaly.ingest.formats import (
    FormatOptions,
)
from tests.ingest.formats.helpers import LOGS, UTC, events, parse, reasons, write


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
