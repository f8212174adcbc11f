"""Spark-free tests of :mod:`loganomaly.ingest.formats.detect`: detection, and ``parse_file``'s contract."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from loganomaly.errors import ConfigError, ParseError
from loganomaly.ingest.formats import (
    Detection,
    FormatOptions,
    detect,
    detect_format,
    iter_input_files,
    parse_file,
    registered_formats,
)
from loganomaly.ingest.formats.csv import nsl_kdd_options
from loganomaly.registry import LOG_FORMATS
from tests.ingest.formats import toy
from tests.ingest.formats.helpers import GOOD_JSON, LOGS, events, parse, reasons, write


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


def test_unknown_fmt_argument_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown log format"):
        list(parse_file(LOGS / "app.jsonl", fmt="xml"))


def test_forced_format_that_does_not_fit_quarantines_with_the_format_reason() -> None:
    records = parse(LOGS / "app.jsonl", fmt="access")
    assert reasons(records) == ["not a common/combined access log line"] * 4


def test_parser_bug_is_quarantined_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loganomaly.ingest.formats import json as json_format

    def broken(self: Any, text: str, line_no: int = 0) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(json_format.JsonParser, "parse", broken)
    records = parse(write(tmp_path, "x.jsonl", GOOD_JSON + "\n"))
    assert reasons(records) == ["parser error: RuntimeError: boom"]


def test_every_fixture_keeps_the_line_invariant() -> None:
    for path in iter_input_files([LOGS]):
        opts = nsl_kdd_options() if path.name.startswith("kdd") else FormatOptions(year=2023)
        records = parse(path, options=opts)
        assert events(records), path.name


# ------------------------------------------------------------------------------ a format registered from outside


def test_a_registered_format_is_validated_detected_and_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, "app.log", "\n".join(toy.LINES) + "\n")
    assert detect(path) == Detection("csv")  # four "|"-separated columns
    with pytest.raises(ConfigError, match="unknown log format 'toy'"):
        FormatOptions(format="toy")
    with toy.registered(before="csv"):
        assert FormatOptions(format="toy").format == "toy"
        # Same score as CSV, listed before it: the registry's order breaks the tie.
        assert detect(path) == Detection("toy")
        records = parse(path)
        assert [r.kind for r in records] == ["event", "event", "quarantine", "event"]
        assert reasons(records) == ["unparseable timestamp: 'yesterday'"]
        first = events(records)[0]
        assert (first["format"], first["entity"], first["message"]) == (
            "toy",
            "web-1",
            "user alice logged in",
        )
        assert first["ts"] == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.timezone.utc)
        forced = parse(write(tmp_path, "other.txt", "hello\n" + toy.LINES[0] + "\n"), fmt="toy")
        assert [r.kind for r in forced] == ["quarantine", "event"] and reasons(forced) == ["not a toy line"]
        with pytest.raises(ParseError, match="supported: json, zeek, syslog, access, loghub, toy, csv"):
            detect(write(tmp_path, "notes.txt", "hello there\n"))
    assert "toy" not in LOG_FORMATS
    with toy.registered():  # after CSV, the tie goes to CSV
        assert detect(path) == Detection("csv")


def test_explicit_formats_replace_the_registry(tmp_path: Path) -> None:
    # What the ingest stage does in its tasks: detect and parse with the driver's formats.
    path = write(tmp_path, "app.log", "\n".join(toy.LINES) + "\n")
    formats = {"toy": toy.ToyFormat(), **registered_formats()}
    assert detect(path, formats=formats) == Detection("toy")
    assert [r.kind for r in parse_file(path, formats=formats)] == ["event", "event", "quarantine", "event"]
    assert "toy" not in LOG_FORMATS and detect(path) == Detection("csv")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "out_of_range.jsonl",
            {2: "bytes_out 1e+29 out of int64 range", 3: "src_port 4294967296 out of int32 range"},
        ),
        (
            "zeek_out_of_range.log",
            {6: "src_port 99999999999 out of int32 range", 7: "bytes_out 18446744073709551616 out of int64 range"},
        ),
    ],
)
def test_a_number_past_its_column_type_quarantines_its_line_only(name: str, expected: dict[int, str]) -> None:
    records = parse(LOGS / name)  # one record per physical line, checked by the helper
    bad = {r.line_no: r.data["reason"] for r in records if r.kind == "quarantine" and r.line_no in expected}
    assert bad == expected
    good = [r.data for r in records if r.kind == "event"]
    assert good and all(r.data["raw"] for r in records if r.line_no in expected)
    if name == "out_of_range.jsonl":  # the types' own limits still load
        assert (good[-1]["bytes_out"], good[-1]["dst_port"]) == (2**63 - 1, 2**31 - 1)
