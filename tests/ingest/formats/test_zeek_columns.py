"""The column-wise Zeek TSV path (``ZeekParser.parse_block``) gives exactly the per-line path's batches.

Every test writes a file and runs it through the ingest task's parsing
(:func:`loganomaly.ingest.stage.parse_files_to_batches`) twice: block by block (the default) and
line by line (``columnar=False``, the reference), then compares every column of every row, the
quarantine reasons included. They also check that the block path took lines, so that an equality
is not the per-line path compared with itself.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from loganomaly.ingest import stage
from loganomaly.ingest.formats import FormatOptions, parse_file_blocks
from loganomaly.ingest.formats import zeek as zeek_format
from tests.ingest.formats.helpers import LOGS, assert_same_batches, batches_text, lines_taken

ROOT = Path(__file__).resolve().parents[3]
ZEEK = FormatOptions(format="zeek")
T0 = 1709510400


def _batches(path: Path, columnar: bool, options: FormatOptions = ZEEK) -> list[str]:
    return batches_text(path, columnar, options)


def _taken(path: Path, options: FormatOptions = ZEEK) -> int:
    return lines_taken(path, options)


def _assert_same(path: Path, options: FormatOptions = ZEEK) -> None:
    assert_same_batches(path, options)


def _header(path: str = "conn", fields: list[str] | None = None, types: list[str] | None = None) -> list[str]:
    fields = fields or ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
                        "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "orig_pkts",
                        "resp_pkts", "tunnel_parents", "label"]  # fmt: skip
    types = types or ["time", "string", "addr", "port", "addr", "port", "enum", "string", "interval", "count",
                      "count", "string", "bool", "count", "count", "set[string]", "string"]  # fmt: skip
    return ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-", f"#path\t{path}",
            "#open\t2024-03-04-00-00-00", "#fields\t" + "\t".join(fields), "#types\t" + "\t".join(types)]  # fmt: skip


def _odd(rng: random.Random, kind: str, plain: str) -> str:
    """``plain`` mostly; sometimes a value the per-line parser converts otherwise or refuses."""
    if rng.random() > 0.1:
        return plain
    common = ["-", "(empty)", "", "é", "x y"]
    return rng.choice(
        {
            "ts": [*common, "1709510400", "1709510400123", "1709510400123.5", "-5", "4102444800.0", "1e9", "nan",
                   " 1709510400.5", "1709510400.5 ", "١٧٠٩٥١٠٤٠٠.5", "99999999999.999999"],
            "port": [*common, "70000", str(2**31), "-1", "+80", "80.0", " 80", "٨٠", "0"],
            "count": [*common, "-3", str(2**63), str(2**63 - 1), "12abc", "1e3", "007", "3.0"],
            "duration": [*common, "inf", "nan", "1e-5", "-0.5", ".5", "5.", "1_000.5", "0.1000000000000000055511",
                         "12345678901234567890.5"],
            "addr": [*common, "::1", "fe80::1%eth0"],
            "bool": [*common, "T", "F", "true", "X"],
            "set": [*common, "a,b", "a,,b", ","],
            "text": [*common, "café ü", "SF", "\u2028", "🙂"],
        }[kind]
    )  # fmt: skip


_KINDS = ["ts", "text", "addr", "port", "addr", "port", "text", "text", "duration", "count", "count", "text", "bool",
          "count", "count", "set", "text"]  # fmt: skip


def _row(rng: random.Random, i: int) -> list[str]:
    plain = [f"{T0 + i * 0.05:.6f}", f"C{rng.getrandbits(48):012x}", f"10.0.0.{rng.randint(1, 9)}",
             str(rng.randint(1024, 65535)), f"10.1.0.{rng.randint(1, 9)}", rng.choice(["53", "80", "443"]),
             rng.choice(["tcp", "udp"]), rng.choice(["dns", "-", "http"]), f"{rng.expovariate(2.0):.6f}",
             str(rng.randint(0, 5000)), str(rng.randint(0, 50000)), rng.choice(["SF", "S0", "REJ"]),
             rng.choice(["T", "F"]), str(rng.randint(1, 40)), str(rng.randint(0, 60)), "(empty)",
             rng.choice(["benign", "Malicious", "-"])]  # fmt: skip
    return [_odd(rng, kind, value) for kind, value in zip(_KINDS, plain, strict=True)]


def _corpus(rng: random.Random, n: int) -> list[str]:
    """The bench's conn lines with odd values, bad lines (wrong field counts, stray text) between
    them, both addresses unset now and then, and headers that change midway (another path,
    http-like fields with ``host``/``uri``, a ``weird`` log that the block path leaves whole)."""
    lines = _header()
    i = 0
    while len(lines) < n:
        i += 1
        r = rng.random()
        if r < 0.02:
            lines.append(rng.choice(["garbage", "a\tb", "\t".join(["1"] * 30), "#close\t2024-03-04", "   "]))
        elif r < 0.025:
            row = _row(rng, i)
            row[2] = row[4] = rng.choice(["-", "(empty)"])
            lines.append("\t".join(row))
        elif r < 0.027:
            lines.extend(rng.choice([
                _header(),
                _header("http", ["ts", "uid", "id.orig_h", "host", "uri", "method", "status_code", "level", "msg"],
                        ["time", "string", "addr", "string", "string", "string", "count", "string", "string"]),
                _header("weird", ["ts", "name", "id.orig_h", "peer"], ["time", "string", "addr", "string"]),
                _header("conn"),
            ]))  # fmt: skip
        else:
            lines.append("\t".join(_row(rng, i)))
    return lines


def _write_mixed(path: Path, rng: random.Random, n: int) -> None:
    """The corpus, but lines under an http or weird header get rows of their own width."""
    out = []
    width = 17
    for line in _corpus(rng, n):
        if line.startswith("#fields"):
            width = line.count("\t")
        if not line.startswith("#") and line.count("\t") == 16 and width != 17:
            cells = line.split("\t")[:width]
            if width == 9:
                cells[3] = rng.choice(["example.com", "-", "(empty)"])
                cells[4] = rng.choice(["/a", "-"])
                cells[5] = rng.choice(["GET", "-"])
                cells[7] = rng.choice(["INFO", "warn", "-", "(empty)", " Error "])
            line = "\t".join(cells)
        out.append(line)
    crlf = rng.random() < 0.5
    path.write_bytes(("\r\n" if crlf else "\n").join(out).encode() + b"\n\xff\xfe bad utf8\n")


@pytest.mark.parametrize("seed", range(4))
def test_generated_corpus_gives_the_per_line_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    # Small blocks: headers, segments and block boundaries fall everywhere.
    monkeypatch.setattr(stage, "BATCH_ROWS", 700)
    path = tmp_path / "conn.log"
    _write_mixed(path, random.Random(seed), 4000)
    _assert_same(path)
    assert _taken(path) > 800  # many lines went through the block path (weird logs stay per line)


@pytest.mark.parametrize("min_segment", [1, zeek_format.MIN_SEGMENT])
@pytest.mark.parametrize("name", ["zeek_dns.log", "zeek_conn_iot23.log", "zeek_out_of_range.log"])
def test_fixture_logs_give_the_per_line_batches(
    monkeypatch: pytest.MonkeyPatch, name: str, min_segment: int
) -> None:
    """The fixture files, as they are (short, so per line) and with every segment taken."""
    monkeypatch.setattr(zeek_format, "MIN_SEGMENT", min_segment)
    _assert_same(LOGS / name)


def test_fixture_dns_log_is_taken_with_small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zeek_format, "MIN_SEGMENT", 1)
    assert _taken(LOGS / "zeek_dns.log") > 0


def test_bench_generator_is_taken_whole(tmp_path: Path) -> None:
    """bench/ingest.py's conn lines map column-wise entirely, across a block boundary."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from ingest import generate
    finally:
        sys.path.remove(str(ROOT / "bench"))
    [path] = generate(tmp_path, "zeek", stage.BATCH_ROWS + 600, 1)
    _assert_same(path)
    assert _taken(path) == stage.BATCH_ROWS + 600 - 8  # all but the 8 header lines


def test_odd_values_go_line_by_line(tmp_path: Path) -> None:
    """Rows the block path does not map for sure are left to the per-line parser and get its reasons."""
    good = [f"{T0 + i}.5\tC{i}\t10.0.0.1\t{1000 + i}\t10.0.0.2\t80\ttcp\t{i}\t{i}" for i in range(20)]
    odd = [
        f"{T0}.5\tCx\t10.0.0.1\t1000\t10.0.0.2\t80\ttcp\t-4\t1",  # negative count
        f"{T0}.5\tCx\t10.0.0.1\t1000\t10.0.0.2\t80\ttcp\t{2**63}\t1",  # past int64
        "-\tCx\t10.0.0.1\t1000\t10.0.0.2\t80\ttcp\t1\t1",  # unset time
        f"{T0}.5\tCx\t10.0.0.1\t1000\t10.0.0.2\t80\ttcp\tlots\t1",  # not a count
        f"{T0}.5\tCx\t10.0.0.1\t1000\t10.0.0.2\t80\ttcp\t1",  # a field short
        f"{T0}\tCx\t10.0.0.1\t1000\t10.0.0.2\t80\ttcp\t+12\t1",  # text the reference converts
    ]
    header = _header("conn", ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "orig_bytes",
                              "orig_pkts"],
                     ["time", "string", "addr", "port", "addr", "port", "enum", "count", "count"])  # fmt: skip
    path = tmp_path / "odd.log"
    path.write_text("\n".join(header + good[:10] + odd + good[10:]) + "\n")
    [block] = list(parse_file_blocks(path, 300, options=ZEEK))
    assert block.columns is not None
    h = len(header)
    assert sorted(block.columns.positions) == [*range(h, h + 10), *range(h + 16, h + 26)]
    assert [block.rows[i]["reason"] for i in range(h + 10, h + 15)] == [  # type: ignore[index]
        "field bytes_out is negative: -4",
        "bytes_out 9223372036854775808 out of int64 range",
        "zeek line has no ts value",
        "field orig_bytes is not an integer: 'lots'",
        "zeek line has 8 fields, header has 9",
    ]
    assert block.kinds[h + 15] == "event" and block.rows[h + 15]["bytes_out"] == 12  # type: ignore[index]
    _assert_same(path)


def test_options_the_block_path_does_not_reproduce_stay_per_line(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from ingest import generate
    finally:
        sys.path.remove(str(ROOT / "bench"))
    [path] = generate(tmp_path, "zeek", 200, 1)
    options = FormatOptions(format="zeek", entity_field="uid")
    assert _taken(path, options) == 0
    _assert_same(path, options)


def test_http_shape_with_sets_bools_levels_and_messages(tmp_path: Path) -> None:
    """``host`` beside ``uri``/``method`` (the server, not the entity, where either is set), a
    level and a message column, sets and bools: unset and empty values in each."""
    header = _header("http", ["ts", "uid", "id.orig_h", "host", "uri", "method", "status_code", "level", "msg",
                              "tags", "ok"],
                     ["time", "string", "addr", "string", "string", "string", "count", "string", "string",
                      "set[string]", "bool"])  # fmt: skip
    rng = random.Random(1)
    rows = [
        "\t".join([f"{T0 + i}.25", f"C{i}", rng.choice(["10.0.0.1", "-"]), rng.choice(["ex.com", "-", "(empty)"]),
                   rng.choice(["/a", "-"]), rng.choice(["GET", "-"]), rng.choice(["200", "-", "404"]),
                   rng.choice(["INFO", "-", "(empty)", " Warn "]), rng.choice(["hello", "-", "(empty)", "x=1"]),
                   rng.choice(["a,b", "-", "(empty)", "c"]), rng.choice(["T", "F", "-"])])  # fmt: skip
        for i in range(300)
    ]
    path = tmp_path / "http.log"
    path.write_text("\n".join(header + rows) + "\n")
    _assert_same(path)
    assert _taken(path) > 50


def test_other_separator_and_markers(tmp_path: Path) -> None:
    """``#separator``, ``#set_separator``, ``#unset_field`` and ``#empty_field`` of the file's own."""
    header = ["#separator \\x7c", "#set_separator|;", "#empty_field|EMPTY", "#unset_field|NULL", "#path|conn",
              "#fields|ts|id.orig_h|id.resp_h|orig_bytes|service|tags|note_text",
              "#types|time|addr|addr|count|string|set[string]|string"]  # fmt: skip
    rng = random.Random(3)
    values = ["NULL", "EMPTY", "-", "(empty)", "", "x"]
    rows = [
        "|".join([f"{T0 + i}.75", rng.choice(["10.0.0.1", *values]), rng.choice(["10.0.0.2", *values]),
                  rng.choice(["12", "NULL", "EMPTY", "-", ""]), rng.choice(["dns", *values]),
                  rng.choice(["a;b", *values]), rng.choice(["t", *values])])  # fmt: skip
        for i in range(400)
    ]
    path = tmp_path / "pipe.log"
    path.write_text("\n".join(header + rows) + "\n")
    _assert_same(path)
    assert _taken(path) > 100


_PIECES = ["0", "1", "9", ".", "-", "+", "e", " ", "\u00a0", "T", "F", ",", "(empty)", "é", "٣", "\x1f", "nan", "inf"]


@pytest.mark.parametrize("seed", range(3))
def test_random_cells_give_the_per_line_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Cells glued from pieces that trip number, time, bool and marker rules, in every column."""
    monkeypatch.setattr(zeek_format, "MIN_SEGMENT", 1)
    rng = random.Random(seed)
    header = _header()
    width = len(_KINDS)

    def cell(kind: str, plain: str) -> str:
        if rng.random() < 0.95:
            return plain
        return "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 4)))

    rows = []
    for i in range(1500):
        plain = _row(random.Random(i), i)
        rows.append("\t".join(cell(kind, value) for kind, value in zip(_KINDS, plain, strict=True)))
    assert all(r.count("\t") == width - 1 for r in rows)
    path = tmp_path / "fuzz.log"
    path.write_text("\n".join(header + rows) + "\n", encoding="utf-8")
    _assert_same(path)
    assert _taken(path) > 300


def test_a_hosts_connections_to_one_service_share_one_message(tmp_path: Path) -> None:
    """The originator's ephemeral port stays in ``src_port`` and out of the message, on both paths:
    with it every connection's message was new, so masking and template matching ran per line
    instead of once per distinct message. The service port stays in it (a port 0 reads ``?``),
    after an IPv6 destination in brackets; and a full IPv6 address masks as one ``<IP>``."""
    v6 = "fd2d:ab8c:225:0:1e6f:65ff:fec0:4392"
    rows = [
        f"{T0 + i}.5\tC{i}\t10.0.0.7\t{49152 + i}\t{v6 if i % 3 == 0 else '10.0.1.9'}\t{443 if i % 2 else 0}\t"
        "tcp\tssl\t0.5\t10\t20\tSF\tT\t3\t4\t-\tBenign"
        for i in range(60)
    ]
    path = tmp_path / "conn.log"
    path.write_text("\n".join([*_header(), *rows]) + "\n")
    assert _taken(path) == 60
    _assert_same(path)
    from loganomaly.ingest import stage as ingest_stage

    events = [
        row
        for batch in ingest_stage.parse_files_to_batches([str(path)], "run", 300, sources={str(path): ("src", ZEEK)})
        for row in batch.to_pylist()
        if row["src_addr"] is not None
    ]
    assert [e["src_port"] for e in events] == [49152 + i for i in range(60)]
    assert {e["message"] for e in events} == {
        "tcp ssl 10.0.0.7 -> 10.0.1.9:? SF",
        "tcp ssl 10.0.0.7 -> 10.0.1.9:443 SF",
        f"tcp ssl 10.0.0.7 -> [{v6}]:? SF",
        f"tcp ssl 10.0.0.7 -> [{v6}]:443 SF",
    }
    from loganomaly.ingest.templates.masking import TemplateConfig
    from loganomaly.ingest.templates.miner import _Preprocessor

    tokens = _Preprocessor(TemplateConfig()).tokens
    assert tokens(f"tcp ssl 10.0.0.7 -> [{v6}]:443 SF") == tokens("tcp ssl 10.0.0.7 -> 10.0.1.9:443 SF")


def test_key_lists_and_messages_built_from_attributes(tmp_path: Path) -> None:
    """A log without addresses whose header holds several keys of one list (status, level,
    entity, message): the reference takes the first with a value and pops every status key it
    tried but only the chosen level, entity or message key; a record with no message gets its
    first eight attributes as ``key=value``. Values unset, empty or ``-`` in every column."""
    fields = ["ts", "fuid", "conn_state", "status_code", "status", "level", "severity", "hostname", "src_ip",
              "client_ip", "msg", "message", "mime_type", "filename", "seen_bytes", "depth", "analyzers", "is_orig",
              "component", "detailed_label", "Label", "extra_a", "extra_b", "extra_c"]  # fmt: skip
    types = ["time", "string", "string", "count", "string", "string", "string", "string", "addr", "addr", "string",
             "string", "string", "string", "count", "count", "set[string]", "bool", "string", "string", "string",
             "string", "string", "string"]  # fmt: skip
    rng = random.Random(7)

    def value(plain: str) -> str:
        return rng.choice([plain, plain, plain, "-", "(empty)", "", "-"])

    rows = []
    for i in range(400):
        cells = [f"{T0 + i}.125", f"F{i}", value("SF"), value("200"), value("ok"), value("WARN"), value("err"),
                 value(f"h{i % 5}"), value("10.0.0.1"), value("10.0.0.2"), value(f"m{i % 3}"), value("hello"),
                 value("text/plain"), value("a b.txt"), value(str(i)), value("0"), value("PE,MD5"),
                 rng.choice(["T", "F", "-"]), value("files"), value("C&C"), value("Malicious"), value("x"),
                 value("y"), value("z")]  # fmt: skip
        rows.append("\t".join(cells))
    path = tmp_path / "files.log"
    path.write_text("\n".join(_header("files", fields, types) + rows) + "\n")
    _assert_same(path)
    assert _taken(path) > 300
    messages = [
        row["message"]
        for batch in stage.parse_files_to_batches([str(path)], "run", 300, sources={str(path): ("src", ZEEK)})
        for row in batch.to_pylist()
    ]
    built = [m for m in messages if m is not None and m.startswith("fuid=")]
    assert built and max(m.count("=") for m in built) == 8
