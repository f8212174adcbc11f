"""Spark-free tests of :mod:`loganomaly.ingest.formats.zeek`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from loganomaly.ingest.formats import (
    HEADER_REASON,
)
from tests.ingest.formats.helpers import LOGS, UTC, events, parse, reasons, write


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
