"""The native (Spark SQL) ingest path against the Python parsers: the same files give the same rows."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import pytest

from loganomaly.config import Config
from loganomaly.ingest import native
from loganomaly.ingest import stage as ingest
from loganomaly.ingest.formats import open_lines, registered_formats
from loganomaly.lake.tables import Lake

#: Lines that exercise every rule of the JSON mapping, good and bad (one per line).
TRICKY = [
    '{"ts":1677664800.25,"uid":"C1","id.orig_h":"10.0.0.1","id.orig_p":50111,"id.resp_h":"10.0.0.2","id.resp_p":53,'
    '"proto":"udp","service":"dns","duration":0.0125,"orig_bytes":44,"resp_bytes":120,"conn_state":"SF",'
    '"local_orig":true,"orig_pkts":1,"resp_pkts":1,"label":"Benign","detailed-label":"-"}',
    '{"ts":1677664801,"id.orig_h":"-","id.orig_p":0,"id.resp_h":"(empty)","proto":"","conn_state":"-","status":"x"}',
    '{"ts":1677664802,"id.orig_h":"fe80::1","id.orig_p":5353,"id.resp_h":"fd2d:ab8c:225:0:1e6f:65ff:fec0:4392",'
    '"id.resp_p":443,"proto":"tcp","service":"ssl","conn_state":"SF"}',
    '{"ts":"1677664801","host":"h1","level":"WARN","msg":"disk 93% full","latency":12.50,"ok":false,"n":null}',
    '{"timestamp":1683194400123,"severity":"error","msg":"db timeout","host":"app-2","latency_ms":30000}',
    '{"time":1683194400123456,"hostname":"a","message":"us epoch"}',
    '{"@timestamp":1683194400123456789,"hostname":"a","message":"ns epoch"}',
    '{"ts":"2023-05-04T12:00:00+02:00","level":"Information","message":"iso with zone"}',
    '{"ts":"2023-05-04 12:00:00.123","level":" info ","message":"iso without zone"}',
    '{"ts":"2023-05-04T12:00:00Z","message":1.5e3}',
    '{"ts":"2023-02-30T12:00:00Z","message":"impossible day"}',
    '{"ts":"2023-05-04T24:00:00Z","message":"hour 24"}',
    '{"ts":-5,"host":"x"}',
    '{"ts":5000000000,"host":"x","message":"past 2099"}',
    '{"ts":null,"timestamp":1700000000,"host":"x","ts2":"kept"}',
    '{"host":"x","message":"no time"}',
    '{"ts":1700000000,"orig_bytes":-3,"host":"x"}',
    '{"ts":1700000000,"id.orig_p":70000,"host":"x"}',
    '{"ts":1700000000,"orig_bytes":"123","resp_bytes":"-","duration":"0.5","host":"x"}',
    '{"ts":1700000000,"orig_bytes":1.0,"host":"x"}',
    '{"ts":1700000000,"orig_bytes":"12a","host":"x"}',
    '{"ts":1700000000,"orig_bytes":true,"host":"x"}',
    '{"ts":1700000000,"duration":"nan","host":"x"}',
    '{"ts":1700000000,"id.orig_h":"10.0.0.9","method":"GET","host":"www.example.com","uri":"/","status_code":200}',
    '{"ts":1700000000,"_path":"weird","name":"bad_TCP_checksum","id.orig_h":"10.0.0.9"}',
    '{"ts":1700000000,"_path":"weird","name":"x","peer":"w"}',
    '{"ts":1700000000,"_path":"notice","note":"Scan::Port_Scan","src":"1.2.3.4"}',
    '{"ts":1700000000,"note":"SSH::Password_Guessing","src":"1.2.3.5","id.orig_h":"-"}',
    '{"ts":1700000000,"msg":"compiled","src":"main.go:42"}',
    '{"ts":1700000000,"_path":"-","a":1,"b":2.0,"c":"three","d":true,"e":null,"f":0.1,"g":100.250,"h":-0.5,"i":9}',
    '{"ts":1700000000,"detailed_label":"x","label":"Malicious","entity":3}',
    '{"ts":1700000000,"detailed-label":"PartOfAHorizontalPortScan","label":"Malicious","src_ip":"1.1.1.1"}',
    '{"ts":1700000000,"detailed-label":"a","detailed_label":"b"}',
    '{"ts":1700000000,"ts":1700000001,"host":"dup"}',
    '{"ts":1700000000,"nested":{"a":1},"host":"n"}',
    '{"ts":1700000000,"list":[1,2],"host":"n"}',
    '{"ts":1700000000,"esc":"a\\"b","host":"n"}',
    '{"ts":1700000000,"big":12345678901234567890123,"tiny":0.00001,"long":1.23456789012345678,"host":"n"}',
    '{"ts":1700000000,"neg0":-0,"host":"n"}',
    '{"ts":1700000000,"level":3,"host":7,"message":false}',
    '{"ts":1700000000,"level":"-","component":"c","service":"-","host":"h"}',
    '{"ts":1700000000,"level":"Ärger","host":"h"}',
    '{"ts":1700000000,"caf\u00e9":"\u00fcber","host":"h\u00e9"}',
    '  { "ts" : 1700000000 , "host" : "spaced" }  ',
    '{"ts":1700000000}',
    '{}',
    '[1,2]',
    '{"ts":1700000000,"host":"h","x":NaN}',
    "{\"ts\": 1709510400, \"host\": \"h1\", \"proto\": \"tc",
    "",
    "   ",
    "\x00\x01\x02 binary",
    '{"ts":1700000000.1234567,"host":"more than six decimals"}',
    '{"ts":"1700000000.5","host":"text float"}',
    '{"ts":1700000000,"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10}',
]
#: Lines for what the from_json mapping could get wrong: Spark's lenient JSON, text after the
#: object, escapes and surrogates, how the variant types numbers, nested objects (line 54 on).
FROM_JSON = [
    '{"ts":1700000000,"host":"h","x":Infinity}',
    "{'ts':1700000000,'host':'single quotes'}",
    '{"ts":1700000000,"host":"h"} trailing',
    '{"ts":1700000000,"host":"h"}{"ts":1}',
    '{"ts":1700000000,"host":"h","m":"a}b"} }',
    '{"ts":1700000000,"host":"h","m":"{braces} in text"}',
    '{"ts":1700000000,"host":"h","s":"\\ud800"}',
    '{"ts":1700000000,"host":"h","s":"\\ud83d\\ude00 \\u2028 \\t \\" \\\\ \\/"}',
    '\ufeff{"ts":1700000000,"host":"bom"}',
    '{"ts":1700000000,"host":"h","f":2.0,"g":-0.0,"z":0.0}',
    '{"ts":1700000000,"host":"h","f":2.0,"z":0.0}',
    '{"ts":1700000000,"host":"h","s":"12.50","n":12.50,"e":1E2}',
    '{"ts":1700000000,"host":"h","s":"12.50","n":12.50,"b":"true","t":true}',
    '{"ts":1700000000.000000,"host":"h","duration":0.000000,"orig_bytes":3.0}',
    '{"ts":1700000000.000000,"host":"h","duration":0.000000}',
    '{"ts":"2023-05-04T12:00:00Z","id":{"orig_h":"10.1.1.1","orig_p":5,"resp_h":"10.1.1.2","resp_p":80},"proto":"tcp"}',
    '{"ts":1700000000,"host":{"name":"n1"},"req":{"a":1,"b":2}}',
    '{"ts":1700000000,"host":{"name":"n1"},"req":{"a":1}}',
    '{"ts":1700000000,"a.b":1,"a":{"b":2}}',
    '{"ts":1700000000,"a":{"b":{"c":1}}}',
    '{"ts":1700000000,"a":{},"host":"h"}',
    '{"ts":{"sec":1},"timestamp":1700000000,"host":"x"}',
    '{"ts":1700000000,"host":"h","x":"tab\there"}',
    '{"ts":1700000000,"host":"h",}',
    '{"ts":01700000000,"host":"h"}',
    '{"ts":1700000000,"big":123456789012345678901234567890,"host":"h"}',
    '{"ts":1700000000,"host":"h","message":{"text":"nested msg"}}',
    '{"ts":1700000000,"msg":"with a message","b":1,"a":2,"c":{"d":3}}',
    '{"ts":1700000000,"b":1,"a":2.5,"c":{"d":3},"e":null}',
    '{"ts":1700000000,"host":"h","level":{"name":"warn"}}',
    '{"ts":"1700000000","host":"h","label":null,"Label":"x"}',
    '{"ts":1700000000,"host":"h","arr":[]}',
]
TRICKY += FROM_JSON


def write_corpus(root: Path, resources: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("app.jsonl", "zeek_json.log", "weird.log", "out_of_range.jsonl"):
        shutil.copy(resources / "logs" / name, root / name)
    body = "\n".join(TRICKY).encode()
    (root / "tricky.jsonl").write_bytes(body + b"\n")
    (root / "tricky_crlf.jsonl").write_bytes(body.replace(b"\n", b"\r\n") + b"\r\n\r\r\n")  # last: only \r
    with gzip.open(root / "tricky.jsonl.gz", "wb") as fh:
        fh.write(body)  # no final newline
    with (root / "bytes.jsonl").open("wb") as fh:
        fh.write(TRICKY[0].encode() + b"\n")
        fh.write(b'{"ts": 1709510400, "host": "caf\xe9"}\n')
        fh.write(b'{"ts": 1709510400, "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}\n')
        fh.write(TRICKY[2].encode())


def table_rows(lake: Lake, name: str) -> list[tuple[Any, ...]]:
    """Every row, all columns but the run id, attributes as sorted pairs; sorted."""
    rows = []
    for r in lake.read(name).collect():
        d = r.asDict()
        d.pop("run_id")
        d["file"] = Path(d["file"]).name
        rows.append(tuple((k, sorted(v.items()) if isinstance(v, dict) else v) for k, v in sorted(d.items())))
    return sorted(rows, key=repr)


@pytest.mark.spark
@pytest.mark.parametrize("templates", [False, True], ids=["plain", "templates"])
def test_native_and_python_paths_give_the_same_events_and_quarantine_rows(  # type: ignore[no-untyped-def]
    spark, tmp_path, resources, templates
) -> None:
    raw = tmp_path / "raw"
    write_corpus(raw, resources)
    results = {}
    for native_path in (True, False):
        # the same file paths on both sides (event ids hash the path), in separate lakes
        lake = Lake(spark, tmp_path / f"lake_{native_path}", engine="deltars")
        cfg = Config()
        cfg.ingest.native = native_path
        cfg.templates.enabled = templates
        summary = ingest.run(spark, cfg, [str(raw)], lake=lake)
        results[native_path] = (summary, table_rows(lake, "events"), table_rows(lake, "quarantine"))
        ledger = {Path(r.path).name: (r.lines, r.events, r.quarantined, r.format) for r in lake.read("ingested_files").collect()}
        results[native_path] += (ledger,)
    native_run, python_run = results[True], results[False]
    assert (native_run[0].events, native_run[0].quarantined) == (python_run[0].events, python_run[0].quarantined)
    assert native_run[3] == python_run[3]
    assert len(native_run[1]) == len(python_run[1]) and native_run[1] == python_run[1]
    assert native_run[2] == python_run[2]
    assert python_run[0].quarantined > 20 and python_run[0].events > 60
    if templates:  # each event's template look-ups are counted, wherever its line was parsed
        for summary in (native_run[0], python_run[0]):
            assert summary.template_cache_hits + summary.template_cache_misses >= summary.events


@pytest.mark.spark
def test_most_flat_lines_are_parsed_in_the_jvm(spark, tmp_path, resources) -> None:  # type: ignore[no-untyped-def]
    """The equality above must not come from sending every line back to Python."""
    from loganomaly.ingest.formats import FormatOptions

    raw = tmp_path / "raw"
    write_corpus(raw, resources)
    path = str(raw / "tricky.jsonl")
    lines = spark.createDataFrame(
        [r for b in native.cut_lines(path) for r in zip(*b.to_pydict().values(), strict=True)], native.LINES_DDL
    )
    # (filtered here, not in Spark: a filter on _ok pushed down through the dozen projection steps
    # inlines every step into one expression tree, far larger than the steps themselves)
    ok = {r.line_no for r in native.json_events(lines, FormatOptions()).select("line_no", "_ok").collect() if r._ok}
    # line numbers of TRICKY (1-based; line 3 an IPv6 connection; 30-31 notices about their src): all but exponents, bad or out-of-range times and numbers,
    # two detailed labels, duplicate keys, nesting, arrays, escapes, long floats, -0, non-ASCII
    # levels, no time, no object, NaN, broken JSON, blank lines, binary, 7 decimals; from line 56
    # (FROM_JSON): Spark's leniencies, text after the object, \\uD8xx escapes (even a valid pair),
    # exponents, -0.0, 3.0 as a count, arrays, deep nesting, a flattened key clash, two attributes
    # from one nested object
    assert ok == {1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 18, 19, 24, 25, 26, 27, 28, 29, 30, 31, 32, 35, 37, 39, 40, 41, 43, 44, 45, 54, 55, 61, 66, 68, 70, 71, 73, 76, 77, 82, 83, 84, 85, 86}

    # A Zeek JSON log without _path: the file's name gives the log, in the JVM too.
    weird = str(raw / "weird.log")
    found = native.native_format(weird, FormatOptions(), registered_formats())
    assert found is not None and found.pattern == "weird"
    lines = spark.createDataFrame(
        [r for b in native.cut_lines(weird) for r in zip(*b.to_pydict().values(), strict=True)], native.LINES_DDL
    )
    rows = native.json_events(lines, FormatOptions(), {weird: "weird"}).select("line_no", "_ok", "component", "level").collect()
    native_rows = {r.line_no: (r.component, r.level) for r in rows if r._ok}
    assert native_rows[1] == ("weird", "warning") and native_rows[5] == ("notice", "warning")
    assert len(native_rows) >= 6


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_cutting_numbers_and_decodes_lines_as_open_lines_does(tmp_path, monkeypatch, chunk) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(native, "CHUNK_BYTES", chunk)
    data = (
        b'\xef\xbb\xbf{"a":1}\r\n\r\nplain\n\xff\xfe bad utf-8\r\nlast\r\r\n'
        + b"y" * (1024 * 1024 + 5)
        + b"\r\n\xc3\xa9t\xc3\xa9\nno newline at end"
    )
    path = tmp_path / "x.log"
    path.write_bytes(data)
    got = [
        (r["line_no"], r["text"], r["problem"])
        for b in native.cut_lines(str(path))
        for r in b.to_pylist()
    ]
    assert got == list(open_lines(path))
    assert got[0][1] == '{"a":1}'  # the byte-order mark before line 1 is no part of it
    ids = [r["event_id"] for b in native.cut_lines(str(path), 2) for r in b.to_pylist()]
    assert ids == [ingest.event_id(str(path), n, 2) for n in range(1, len(got) + 1)]

    gz = tmp_path / "x.log.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(data)
    assert [(r["line_no"], r["text"], r["problem"]) for b in native.cut_lines(str(gz)) for r in b.to_pylist()] == list(
        open_lines(gz)
    )
    wide = tmp_path / "x16.log"
    wide.write_bytes(data.replace(b"\xff\xfe", b"").decode("utf-8").encode("utf-16"))
    assert [(r["line_no"], r["text"], r["problem"]) for b in native.cut_lines(str(wide)) for r in b.to_pylist()] == list(
        open_lines(wide)
    )
    assert list(native.cut_lines(str(tmp_path / "gone.log"))) == []


def test_the_ingest_stage_imports_neither_torch_nor_sklearn_nor_matplotlib() -> None:
    import subprocess
    import sys

    code = (
        "import sys, loganomaly.ingest.stage, loganomaly.ingest.native\n"
        "bad = [m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.spark
def test_the_native_session_restores_the_settings_it_changes(spark) -> None:  # type: ignore[no-untyped-def]
    key = "spark.sql.codegen.wholeStage"
    spark.conf.set(key, "true")
    with native.native_session(spark):
        assert spark.conf.get(key) == native.NATIVE_CONF[key]
    assert spark.conf.get(key) == "true"
    spark.conf.unset(key)
    with pytest.raises(RuntimeError), native.native_session(spark):
        raise RuntimeError("a failing job")
    assert spark.conf.get(key) == "true"  # unset again: back to Spark's default
