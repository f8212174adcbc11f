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


def test_a_zeek_log_gives_the_same_events_from_its_tsv_and_its_json_writer(tmp_path: Path) -> None:
    """A sensor may write either (``LogAscii::use_json``): the events, and so the features and the
    model's view, must not depend on which. The JSON lines are what Zeek prints for the same
    records: dotted keys, typed values, unset fields left out, sets as lists, ``(empty)`` as ``""``."""
    fields = (
        "ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto service duration orig_bytes resp_bytes conn_state "
        "local_orig local_resp history orig_pkts resp_pkts tunnel_parents label detailedlabel"
    ).split()
    types = (
        "time string addr port addr port enum string interval count count string bool bool string count count "
        "set[string] string string"
    ).split()
    rows = [
        "1655071198.444458 C1 147.32.81.167 62771 40.74.108.123 443 tcp ssl 1.135424 1596 4039 SF T F ShADdaFf 14 16 "
        "(empty) Benign Microsoft",
        "1655071199.000001 C2 203.0.113.9 40000 147.32.81.167 3389 tcp - - - - S0 F T S 1 0 Ca,Cb Malicious -",
        "1655071200.5 C3 fe80::1 5353 ff02::fb 5353 udp dns 0.000001 0 0 S0 T F D 1 0 (empty) Background (empty)",
    ]
    head = "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
    tsv = head + "#fields\t" + "\t".join(fields) + "\n#types\t" + "\t".join(types) + "\n"
    tsv += "".join("\t".join(row.split()) + "\n" for row in rows)
    as_json = [
        {"ts": 1655071198.444458, "uid": "C1", "id.orig_h": "147.32.81.167", "id.orig_p": 62771,
         "id.resp_h": "40.74.108.123", "id.resp_p": 443, "proto": "tcp", "service": "ssl", "duration": 1.135424,
         "orig_bytes": 1596, "resp_bytes": 4039, "conn_state": "SF", "local_orig": True, "local_resp": False,
         "history": "ShADdaFf", "orig_pkts": 14, "resp_pkts": 16, "tunnel_parents": [], "label": "Benign",
         "detailedlabel": "Microsoft"},
        {"ts": 1655071199.000001, "uid": "C2", "id.orig_h": "203.0.113.9", "id.orig_p": 40000,
         "id.resp_h": "147.32.81.167", "id.resp_p": 3389, "proto": "tcp", "conn_state": "S0", "local_orig": False,
         "local_resp": True, "history": "S", "orig_pkts": 1, "resp_pkts": 0, "tunnel_parents": ["Ca", "Cb"],
         "label": "Malicious"},
        {"ts": 1655071200.5, "uid": "C3", "id.orig_h": "fe80::1", "id.orig_p": 5353, "id.resp_h": "ff02::fb",
         "id.resp_p": 5353, "proto": "udp", "service": "dns", "duration": 1e-06, "orig_bytes": 0, "resp_bytes": 0,
         "conn_state": "S0", "local_orig": True, "local_resp": False, "history": "D", "orig_pkts": 1,
         "resp_pkts": 0, "tunnel_parents": [], "label": "Background", "detailedlabel": ""},
    ]  # fmt: skip
    from_tsv = events(parse(write(tmp_path, "conn.log", tsv)))
    (tmp_path / "json").mkdir()
    from_json = events(parse(write(tmp_path / "json", "conn.log", "".join(json.dumps(r) + "\n" for r in as_json))))
    assert len(from_tsv) == len(from_json) == 3
    for a, b in zip(from_tsv, from_json, strict=True):
        assert (a.pop("format"), b.pop("format")) == ("zeek", "json")
        assert a == b
    assert from_json[1]["component"] == "conn"  # no service: the log's name, from #path or the file's name
