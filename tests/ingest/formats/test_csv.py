"""Spark-free tests of :mod:`loganomaly.ingest.formats.csv`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from loganomaly.ingest.formats import (
    HEADER_REASON,
    FormatOptions,
)
from loganomaly.ingest.formats.csv import NSL_KDD_COLUMNS, nsl_kdd_options
from tests.ingest.formats.helpers import LOGS, UTC, events, parse, reasons, write


def test_csv_metrics_with_header() -> None:
    records = parse(LOGS / "metrics.csv")
    assert records[0].kind == "quarantine" and records[0].data["reason"] == HEADER_REASON
    first, second = events(records)
    assert first["ts"] == dt.datetime(2024, 2, 1, tzinfo=UTC) and first["entity"] == "web-1"
    assert (first["bytes_in"], first["bytes_out"]) == (1200, 3400) and first["label"] is None
    assert first["attributes"] == {"cpu": "0.42", "mem": "0.61", "bytes_in": "1200", "bytes_out": "3400"}
    assert second["ts"] == dt.datetime(2024, 1, 31, 23, 1, tzinfo=UTC) and second["label"] == "spike"
    assert reasons(records)[-1] == "field bytes_in is not an integer: '12.5'"


def test_a_single_series_file_is_one_entity_named_after_the_file(tmp_path: Path) -> None:
    """timestamp,value (a metric series as public benchmarks ship it): no entity column, so each row is
    the file's series, without its folder and suffixes; default_entity names it instead when set."""
    text = "timestamp,value\n2014-02-14 14:30:00,52.5\n2014-02-14 14:35:00,53.1\n"
    path = write(tmp_path, "machine_temperature.csv.gz", text)
    assert {e["entity"] for e in events(parse(path, options=FormatOptions(format="csv")))} == {"machine_temperature"}
    named = parse(path, options=FormatOptions(format="csv", default_entity="sensor-1"))
    assert {e["entity"] for e in events(named)} == {"sensor-1"}
    assert events(named)[0]["attributes"] == {"value": "52.5"}
    # an entity column that is empty on a row keeps the default (None), as before
    blank = write(tmp_path, "hosts.csv", "timestamp,host,cpu\n2024-02-01T00:00:00Z,,0.5\n2024-02-01T00:01:00Z,h1,0.6\n")
    assert [e["entity"] for e in events(parse(blank, options=FormatOptions(format="csv")))] == [None, "h1"]


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
    text = "when;node;value\n01.02.2024 10:00;n1;5\n01.02.2024 10:01;n2\nwhat\n01.02.2024 10:02;n3;6\n"
    opts = FormatOptions(timestamp_fields=["when"], timestamp_format="%d.%m.%Y %H:%M", entity_field="node")
    records = parse(write(tmp_path, "m.csv", text), options=opts)
    event, _ = events(records)
    assert event["ts"] == dt.datetime(2024, 2, 1, 10, tzinfo=UTC) and event["entity"] == "n1"
    assert event["attributes"] == {"value": "5"}
    assert reasons(records) == [HEADER_REASON, "csv row has 2 columns, expected 3", "csv row has 1 column, expected 3"]
    records = parse(write(tmp_path, "q.csv", 'timestamp,host,v\n1700000000,"x",a\rb\n1700000001,h2,3\n'))
    assert reasons(records)[1].startswith("malformed CSV line") and events(records)[0]["entity"] == "h2"


def test_bad_lines_below_the_header_do_not_change_the_delimiter() -> None:
    # Found by the parser fuzzing: three tab-separated bad lines outvoted the comma header and its row.
    from loganomaly.ingest.formats.csv import _sniff_delimiter

    sample = ["timestamp,host,cpu", "2024-02-01T00:00:00Z,web-1,0.4", "#fields\tts", "#fields\tts", "#fields\tts"]
    assert _sniff_delimiter(sample) == ","
    assert _sniff_delimiter(["a title", "x\ty\tz", "1\t2\t3"]) == "\t"  # no split first line: the majority
