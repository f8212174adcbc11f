"""The column-wise CSV path (``CsvParser.parse_block``) gives exactly the per-line path's batches.

Every test writes a file and runs it through the ingest task's parsing
(:func:`loganomaly.ingest.stage.parse_files_to_batches`) twice: block by block (the default) and
line by line (``columnar=False``, the reference), then compares every column of every row, the
quarantine reasons included. They also check that the block path took lines.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest

from loganomaly.ingest import stage
from loganomaly.ingest.formats import FormatOptions, parse_file_blocks
from loganomaly.ingest.formats import csv as csv_format
from tests.ingest.formats.helpers import LOGS, assert_same_batches, batches_text, lines_taken

ROOT = Path(__file__).resolve().parents[3]
CSV = FormatOptions(format="csv")
T0 = 1709510400


def _batches(path: Path, columnar: bool, options: FormatOptions = CSV) -> list[str]:
    return batches_text(path, columnar, options)


def _taken(path: Path, options: FormatOptions = CSV) -> int:
    return lines_taken(path, options)


def _assert_same(path: Path, options: FormatOptions = CSV) -> None:
    assert_same_batches(path, options)


HEADER = ["timestamp", "host", "cpu", "duration", "bytes_in", "bytes_out", "src_port", "proto", "service", "flag",
          "level", "label", "note"]  # fmt: skip

_ODD: dict[str, list[str]] = {
    "time": ["", "-", "2024-03-04T00:00:01+01:00", "2024-02-30T00:00:00Z", "2024-01-32T00:00:00Z", "1969-12-31T23:59:59Z",
             "2100-01-01T00:00:00Z", "2099-12-31T23:59:59.999999Z", "1709510400", "2024-03-04T00:00:00.5Z",
             "2024-03-04T00:00:00.1234567Z", "2024-03-04 00:00:00", "2024-03-04T00:00:00z", "2024-03-04T24:00:00Z",
             "2024-03-04T23:59:60Z", "2024-03-04T12:30:60Z", " 2024-03-04T00:00:00Z", "2024-03-04", "now", "٢٠٢٤-03-04T00:00:00Z"],
    "float": ["", "-", "(empty)", "inf", "nan", "1e3", "-0.5", ".5", "5.", " 1.5", "1_0.5", "0.1000000000000000055511",
              "123456789012345678901.5", "x"],
    "int": ["", "-", "(empty)", "-3", str(2**63), str(2**63 - 1), "12abc", "1e3", "007", "3.0", " 12", "+5", "٣"],
    "port": ["", "-", "70000", str(2**31), str(2**31 - 1), "-1", "80.0"],
    "text": ["", "-", "(empty)", " padded ", "\u2003em", "x\x1f", "café ü", "🙂", "a;b"],
    "level": ["", "-", "W", "SEVERE", " Warning ", "odd", "ERROR"],
}  # fmt: skip


def _row(rng: random.Random, i: int) -> list[str]:
    plain = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + i)),
        "host": f"host-{i % 7}", "cpu": f"{rng.uniform(0, 100):.3f}", "duration": f"{rng.expovariate(2):.6f}",
        "bytes_in": str(rng.randint(0, 10**6)), "bytes_out": str(rng.randint(0, 10**6)),
        "src_port": str(rng.randint(1, 65535)), "proto": rng.choice(["tcp", "udp"]),
        "service": rng.choice(["http", "dns", ""]), "flag": rng.choice(["SF", "REJ", "-"]),
        "level": rng.choice(["info", "warn"]), "label": rng.choice(["", "normal", "attack"]),
        "note": rng.choice(["", "a note", "x"]),
    }  # fmt: skip
    kinds = {"time": "time", "host": "text", "cpu": "float", "duration": "float", "bytes_in": "int",
             "bytes_out": "int", "src_port": "port", "proto": "text", "service": "text", "flag": "text",
             "level": "level", "label": "text", "note": "text"}  # fmt: skip
    return [rng.choice(_ODD[kinds[k]]) if rng.random() < 0.07 else v for k, v in plain.items()]


def _corpus(rng: random.Random, n: int, delimiter: str = ",") -> list[str]:
    lines = [delimiter.join(HEADER)]
    for i in range(n):
        r = rng.random()
        if r < 0.02:
            lines.append(rng.choice(["garbage", "a,b", '"quoted, cell",1,2', "", "   ", ",,,,,,,,,,,,,,"]))
        else:
            cells = _row(rng, i)
            if rng.random() < 0.02:
                cells[7] = f'"{cells[7]}"'  # quoted: csv.reader's reading, per line
            lines.append(delimiter.join(cells))
    return lines


def _write(path: Path, lines: list[str], crlf: bool) -> None:
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode() + b"\n2024-03-04T00:00:00Z,\xff\xfe\n")


@pytest.mark.parametrize("seed", range(4))
def test_generated_corpus_gives_the_per_line_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(stage, "BATCH_ROWS", 700)
    rng = random.Random(seed)
    path = tmp_path / "metrics.csv"
    _write(path, _corpus(rng, 3000), crlf=seed % 2 == 1)
    _assert_same(path)
    assert _taken(path) > 1000


@pytest.mark.parametrize(
    "options",
    [
        FormatOptions(format="csv", default_entity="dflt"),
        FormatOptions(format="csv", timezone="Europe/Paris"),
        FormatOptions(format="csv", delimiter=";"),
        FormatOptions(format="csv", columns=HEADER, has_header=False),
        FormatOptions(format="csv", columns=HEADER),
        FormatOptions(format="csv", entity_field="note", label_field="flag", level_field="proto", message_field="note"),
    ],
    ids=["default_entity", "timezone", "semicolon", "columns_no_header", "columns_header_detected", "fields"],
)
def test_options_give_the_per_line_batches(tmp_path: Path, options: FormatOptions) -> None:
    rng = random.Random(5)
    delimiter = options.delimiter or ","
    lines = _corpus(rng, 1500, delimiter)
    if options.has_header is False:
        lines = lines[1:]
    path = tmp_path / "t.csv"
    _write(path, lines, crlf=False)
    _assert_same(path, options)
    assert _taken(path, options) > 500


@pytest.mark.parametrize("default_entity", [None, "dflt"])
def test_a_table_without_an_entity_column_gives_the_per_line_batches(tmp_path: Path, default_entity: str | None) -> None:
    """No entity column: every row is the file's series (or default_entity) on both paths."""
    rng = random.Random(7)
    drop = HEADER.index("host")
    lines = [",".join(c for j, c in enumerate(line.split(",")) if j != drop) for line in _corpus(rng, 1500)]
    path = tmp_path / "cpu_util.csv"
    _write(path, lines, crlf=False)
    options = FormatOptions(format="csv", default_entity=default_entity)
    _assert_same(path, options)
    assert _taken(path, options) > 500
    assert f"'{default_entity or 'cpu_util'}'" in "".join(_batches(path, True, options))  # the entity column's value


@pytest.mark.parametrize("min_rows", [1, csv_format._MIN_ROWS])
def test_fixture_gives_the_per_line_batches(monkeypatch: pytest.MonkeyPatch, min_rows: int) -> None:
    monkeypatch.setattr(csv_format, "_MIN_ROWS", min_rows)
    _assert_same(LOGS / "metrics.csv")


def test_kdd_fixture_with_synthetic_times_stays_per_line() -> None:
    """Synthetic times need each line's number, which a block does not carry."""
    options = csv_format.nsl_kdd_options()
    assert _taken(LOGS / "kdd_sample.txt", options) == 0
    _assert_same(LOGS / "kdd_sample.txt", options)


def test_bench_generator_is_taken_whole(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from ingest import generate
    finally:
        sys.path.remove(str(ROOT / "bench"))
    [path] = generate(tmp_path, "csv", stage.BATCH_ROWS + 600, 1)
    _assert_same(path)
    assert _taken(path) == stage.BATCH_ROWS + 600 - 1  # all but the header


def test_odd_values_go_line_by_line(tmp_path: Path) -> None:
    good = [f"2024-03-04T00:00:{i:02d}Z,h{i},{i},{i}" for i in range(20)]
    odd = [
        "2024-03-04T00:00:00Z,h,-4,1",  # negative count
        f"2024-03-04T00:00:00Z,h,{2**63},1",  # past int64
        "2024-02-30T00:00:00Z,h,1,1",  # no such day
        "2024-03-04T00:00:00Z,h,1",  # a column short
        "2024-03-04T00:00:00Z,h, 12 ,1",  # text the reference strips and converts
    ]
    path = tmp_path / "odd.csv"
    path.write_text("\n".join(["timestamp,host,bytes_in,bytes_out", *good[:10], *odd, *good[10:]]) + "\n")
    [block] = list(parse_file_blocks(path, 300, options=CSV))
    assert block.columns is not None
    assert sorted(block.columns.positions) == [*range(1, 11), *range(16, 26)]
    assert [block.rows[i]["reason"] for i in range(11, 15)] == [  # type: ignore[index]
        "field bytes_in is negative: -4",
        "bytes_in 9223372036854775808 out of int64 range",
        "impossible date/time '2024-02-30T00:00:00Z' (day is out of range for month)",
        "csv row has 3 columns, expected 4",
    ]
    assert block.kinds[15] == "event" and block.rows[15]["bytes_in"] == 12  # type: ignore[index]
    _assert_same(path)


def test_synthetic_metrics_give_the_per_line_batches(tmp_path: Path) -> None:
    """The package's own metric series (``generate_metrics``: labelled incidents, drift)."""
    from loganomaly.ingest.synthetic import MetricDrift, generate_metrics

    generate_metrics(tmp_path, hosts=3, days=2, anomalies=2, seed=3, drift=MetricDrift())
    path = tmp_path / "metrics.csv"
    _assert_same(path)
    assert _taken(path) > 8000


def test_long_decimals_convert_as_python_floats(tmp_path: Path) -> None:
    """Arrow's cast of a decimal string is the correctly rounded float, as ``float()``: checked on
    long and halfway-looking decimals in a float column."""
    rng = random.Random(11)

    def decimal() -> str:
        whole = str(rng.randint(0, 10 ** rng.randint(0, 19)))
        frac = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 20)))
        return rng.choice([f"{whole}.{frac}", whole, f"{whole}.5", f"0.{frac}", f"9007199254740993.{frac[:3]}"])

    lines = ["timestamp,host,duration"] + [f"2024-03-04T00:00:00Z,h,{decimal()}" for _ in range(3000)]
    path = tmp_path / "floats.csv"
    path.write_text("\n".join(lines) + "\n")
    _assert_same(path)
    assert _taken(path) == 3000


_PIECES = ["0", "1", "9", ".", "-", "+", "e", " ", "\u00a0", "T", "Z", ":", "(empty)", "é", "٣", "\x1f", "nan",
           "2024-03-04", "T00:00:00", "Z", ".123", "+01:00", "\u2003"]  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_random_cells_give_the_per_line_batches(tmp_path: Path, seed: int) -> None:
    """Cells glued from pieces that trip the time, number, strip and marker rules, in every column."""
    rng = random.Random(seed)
    rows = []
    for i in range(1500):
        cells = _row(random.Random(i), i)
        rows.append(",".join(
            c if rng.random() < 0.95 else "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 4))) for c in cells
        ))  # fmt: skip
    path = tmp_path / "fuzz.csv"
    path.write_text("\n".join([",".join(HEADER), *rows]) + "\n", encoding="utf-8")
    _assert_same(path)
    assert _taken(path) > 300


def test_message_from_present_cells(tmp_path: Path) -> None:
    """Without a message column the message joins the present proto, service and flag cells: every
    pattern of empty and missing cells (all three empty too) gives the per-line message."""
    rng = random.Random(7)
    cells = ["", "-", "tcp", "a b", "x  y"]
    lines = ["timestamp,host,proto,service,flag"]
    for i in range(400):
        lines.append(f"2024-03-04T00:00:{i % 60:02d}Z,h{i % 3}," + ",".join(rng.choice(cells) for _ in range(3)))
    path = tmp_path / "conn.csv"
    path.write_text("\n".join(lines) + "\n")
    _assert_same(path)
    assert _taken(path) == 400
    messages = {
        m for b in stage.parse_files_to_batches([str(path)], "r", 2048, sources={str(path): ("s", CSV)})
        for m in b.column("message").to_pylist()
    }
    assert {"", "tcp", "a b x  y", "tcp tcp tcp"} <= messages
