"""Fuzzing every registered format with random and structured bad lines (issue 16).

Each example is a file: the format's header (if it has one), a good line, then lines drawn from
the strategies below, forced to that format. It goes through the Spark-free per-file path that
ingest's tasks run (:func:`loganomaly.ingest.stage.parse_files_to_batches`, Arrow conversion
included), and must come back with no exception and exactly one row per physical line: lines =
events + quarantined, every quarantine row with a reason.
"""

from __future__ import annotations

import json
import os
import tempfile

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loganomaly.ingest import stage as ingest
from loganomaly.ingest.formats import MAX_LINE_BYTES, FormatOptions, registered_formats

ZEEK_HEADER = (
    "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\torig_bytes\tduration\n"
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tinterval\n"
)
#: Per format: (header lines, a good line, the field delimiter, options).
SEEDS: dict[str, tuple[str, str, str, FormatOptions]] = {
    "json": (
        "",
        json.dumps({"ts": 1709510400, "host": "h1", "id.orig_h": "10.0.0.1", "id.resp_p": 443,
                    "orig_bytes": 100, "proto": "tcp", "level": "info", "message": "ok"}),
        ",",
        FormatOptions(format="json"),
    ),
    "zeek": (ZEEK_HEADER, "1709510400.25\tC1\t10.0.0.1\t5000\t10.0.0.2\t443\ttcp\t100\t1.5", "\t",
             FormatOptions(format="zeek")),
    "syslog": ("", "<34>Oct 11 22:14:15 mymachine su[12]: 'su root' failed for lonvick", " ",
               FormatOptions(format="syslog", year=2024)),
    "access": ("", '203.0.113.7 - frank [10/Oct/2000:13:55:36 -0700] "GET /a?x=1 HTTP/1.0" 200 2326 "-" "curl/8"',
               " ", FormatOptions(format="access")),
    "loghub": ("", "081110 101502 412 INFO dfs.DataNode$DataXceiver: Receiving block blk_-44115 src: /10.0.0.1:5",
               " ", FormatOptions(format="loghub", pattern="HDFS")),
    "csv": ("timestamp,host,cpu,bytes_in,label\n", "2024-02-01T00:00:00Z,web-1,0.42,1200,", ",",
            FormatOptions(format="csv", has_header=True)),
}  # fmt: skip

BAD_VALUES = [
    "1" * 40, "-" + "9" * 30, "1e309", "-1e309", "NaN", "nan", "inf", "-Infinity", "1e-400", "0x7fffffff",
    "99999999999", "100000000000000000000", "2147483648", "-2147483649", "9223372036854775808",
    "", " ", "\x00", "\x1b[31m", "\t\t", "\r", "\u2028", "\ufeff", "é" * 50, "null", "true", "[]", "{}",
    '"', "\\", "%s%n", "2150-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "Feb 30 25:61:61",
]  # fmt: skip

text_value = st.one_of(st.sampled_from(BAD_VALUES), st.text(max_size=40), st.integers().map(str),
                       st.floats(allow_nan=True, allow_infinity=True).map(repr))  # fmt: skip


def _json_values() -> st.SearchStrategy[object]:
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.sampled_from(BAD_VALUES),
    )  # fmt: skip
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)


def _mutated(fmt: str) -> st.SearchStrategy[bytes]:
    """The good line with fields replaced, dropped or repeated (wrong field counts)."""
    _, good, sep, _ = SEEDS[fmt]

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        if fmt == "json":
            record = json.loads(good)
            for key in draw(st.lists(st.sampled_from([*record, "ts", "orig_bytes", "id.resp_p", "extra"]), max_size=4)):
                record[key] = draw(_json_values())
            return json.dumps(record).encode()  # NaN/Infinity written as JSON's non-standard tokens
        fields = good.split(sep)
        for _ in range(draw(st.integers(0, 3))):
            i = draw(st.integers(0, len(fields) - 1))
            fields[i] = draw(text_value).replace("\n", " ")
        cut = draw(st.integers(-3, 3))
        fields = fields[: len(fields) + cut] if cut < 0 else fields + fields[:cut]
        return sep.join(fields).encode("utf-8", errors="surrogatepass")

    return build()


STRUCTURED = [
    b"", b"\r", b" ", b"\x00" * 10, b"\xff\xfe\xfd invalid utf-8 \xc3\x28", b"\xed\xa0\x80",
    b"[" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b'{"ts": 1709510400, "a": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b"#fields\tts", b"#close\t2024", b"\t" * 50, b"," * 50, b'"unterminated, quote', b"x" * (MAX_LINE_BYTES + 1),
    b"\x1b[2J\x07\x08", "\u2028\u2029\x85".encode(),
]  # fmt: skip


def _line(fmt: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        _mutated(fmt),
        st.sampled_from(STRUCTURED),
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", errors="surrogatepass")),
        st.builds(lambda v: json.dumps(v).encode(), _json_values()),
    ).map(lambda b: b.replace(b"\n", b" "))


def _physical_lines(data: bytes) -> int:
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


def _check(fmt: str, lines: list[bytes], final_newline: bool) -> None:
    header, good, _, options = SEEDS[fmt]
    data = header.encode() + good.encode() + b"\n" + b"\n".join(lines) + (b"\n" if final_newline else b"")
    fd, path = tempfile.mkstemp(suffix=".log")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        batches = list(ingest.parse_files_to_batches([path], "fuzz", 200, sources={path: ("fuzz", options)}))
    finally:
        os.unlink(path)
    table = pa.Table.from_batches(batches, schema=ingest.PARSED_ARROW)
    kinds = table.column(ingest.KIND).to_pylist()
    assert len(kinds) == _physical_lines(data)  # lines = events + quarantined
    assert sorted(table.column("line_no").to_pylist()) == list(range(1, len(kinds) + 1))
    reasons = table.column("reason").to_pylist()
    assert all(k == "event" or (k == "quarantine" and r) for k, r in zip(kinds, reasons, strict=True))
    assert kinds[len(header.splitlines())] == "event"  # the good line still parses among the bad


@pytest.mark.parametrize("fmt", sorted(SEEDS))
# derandomize: the same 100 examples per format on every run, so CI is reproducible (a random run
# found the CSV delimiter defect fixed in formats/csv.py); to explore new inputs locally, run with
# `--hypothesis-seed=<n>` after setting derandomize to False.
@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_no_bad_line_escapes_and_every_line_is_counted(fmt: str, data: st.DataObject) -> None:
    lines = data.draw(st.lists(_line(fmt), min_size=1, max_size=12), label="lines")
    _check(fmt, lines, data.draw(st.booleans(), label="final newline"))


def test_every_registered_format_is_fuzzed() -> None:
    assert set(SEEDS) == set(registered_formats())
