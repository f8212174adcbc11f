"""The column-wise JSON path (``formats/json_columns.py``) gives exactly the per-line path's batches.

Every test writes lines to a file and runs it through the ingest task's parsing
(:func:`loganomaly.ingest.stage.parse_files_to_batches`) twice: block by block (the default) and
line by line (``columnar=False``, the reference), then compares every column of every row, the
quarantine reasons included. They also check that the block path really took lines, so that an
equality is not the per-line path compared with itself.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loganomaly.ingest import stage
from loganomaly.ingest.formats import FormatOptions, json_columns, parse_file, parse_file_blocks
from loganomaly.ingest.formats import json as json_format
from tests.ingest.formats.helpers import LOGS, assert_same_batches, batches_text, lines_taken

JSON = FormatOptions(format="json")
T0 = 1709510400


def _batches(path: Path, columnar: bool, options: FormatOptions = JSON) -> list[str]:
    return batches_text(path, columnar, options)


def _taken(path: Path, options: FormatOptions = JSON) -> int:
    return lines_taken(path, options)


def _assert_same(path: Path, options: FormatOptions = JSON) -> None:
    assert_same_batches(path, options)


# ------------------------------------------------------------------ a corpus of odd and ordinary lines

_HOSTS = ["10.0.0.1", "2001:db8::7", "192.168.1.9", "-", "", "(empty)", None]
_ODD_FLOATS = [1.0, 1e-05, 0.1, 1e16, -0.0, 1.5e300, 2.5, 123456.789, 1e-7, 9007199254740993.0]


def _value(rng: random.Random, kind: str) -> Any:
    """A value for a key of ``kind``: mostly ordinary, sometimes odd (null, "-", wrong type, out of range)."""
    odd = rng.random() < 0.15
    if kind == "ts":
        if odd:
            return rng.choice(
                [None, "-", True, -5, 1.7e12, 1709510400123, "2024-03-04T00:00:01Z", "2024-03-04 00:00:01+02:00",
                 4102444800, 4102444799.9999995, 1e11, "not a time", 0, 0.0]
            )  # fmt: skip
        return rng.choice([T0 + rng.random() * 86400, T0 + rng.randint(0, 86400), round(T0 + rng.random() * 1000, 6)])
    if kind == "addr":
        return rng.choice(_HOSTS + [5, True]) if odd else rng.choice(_HOSTS[:3])
    if kind == "port":
        return rng.choice([None, "-", "80", 70000, 2**31, -1, 0, True, 1.0, 80.5]) if odd else rng.randint(1, 65535)
    if kind == "count":
        return (
            rng.choice([None, "-", "(empty)", -1, 2**63 - 1, 2**63, 2**64 + 1, "12", 3.0, False])
            if odd
            else rng.randint(0, 10**6)
        )
    if kind == "duration":
        return rng.choice([None, "-", 3, "0.5", "x", True, 1e308]) if odd else rng.choice(_ODD_FLOATS)
    if kind == "text":
        return rng.choice([None, "-", "", "(empty)", 7, 1.0, True, ["a", 1], "café ü", "a\tb"]) if odd else rng.choice(
            ["SF", "S0", "REJ", "dns", "http", "ok", "x y"]
        )
    if kind == "level":
        return rng.choice([None, "-", "", 3, "W", "SEVERE", " Warning ", "odd"]) if odd else rng.choice(["info", "ERROR"])
    if kind == "attr":
        return rng.choice(
            [None, True, False, 0, -3, 2**70, 1.0, 1e-05, 0.1, 1e16, [1, [2, 3.5]], [], "-", "", "ü\u2028", {"k": 1}]
        )
    return rng.choice(["x", "y"])


#: Record shapes: (key, kind) in key order. Each block mixes several, with odd values among them.
_SHAPES: list[list[tuple[str, str]]] = [
    # Zeek conn as Zeek's JSON writer prints it (flat, dotted keys)
    [("ts", "ts"), ("uid", "text"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
     ("id.resp_p", "port"), ("proto", "text"), ("service", "text"), ("duration", "duration"),
     ("orig_bytes", "count"), ("resp_bytes", "count"), ("conn_state", "text"), ("local_orig", "attr"),
     ("missed_bytes", "attr"), ("orig_pkts", "count"), ("resp_pkts", "count")],
    # nested id object
    [("ts", "ts"), ("uid", "text"), ("id", "id"), ("proto", "text"), ("duration", "duration"),
     ("orig_bytes", "count"), ("conn_state", "text")],
    # Zeek http: "host" is the server, not the entity
    [("ts", "ts"), ("id.orig_h", "addr"), ("id.resp_h", "addr"), ("method", "text"), ("host", "addr"),
     ("uri", "text"), ("status_code", "attr"), ("user_agent", "text")],
    # weird and notice, with _path
    [("_path", "path"), ("ts", "ts"), ("name", "text"), ("id.orig_h", "addr"), ("peer", "text")],
    [("ts", "ts"), ("_path", "path"), ("note", "text"), ("msg", "text"), ("src", "addr")],
    # application logs: levels, messages, entities, several keys of one list
    [("timestamp", "ts"), ("level", "level"), ("severity", "level"), ("message", "text"), ("msg", "text"),
     ("hostname", "addr"), ("host", "addr"), ("app", "text"), ("service", "text"), ("score", "attr")],
    [("@timestamp", "ts"), ("ts", "ts"), ("log.level", "level"), ("log", "attr"), ("entity", "attr"),
     ("status", "text"), ("conn_state", "text"), ("status_code", "attr"), ("component", "text")],
    # labels (CTU style) and detailed labels
    [("ts", "ts"), ("id.orig_h", "addr"), ("id.resp_h", "addr"), ("label", "text"), ("detailed-label", "text"),
     ("x", "attr")],
    [("ts", "ts"), ("Label", "attr"), ("detailed_label", "text"), ("src_ip", "addr"), ("client_ip", "addr"),
     ("a", "attr"), ("b", "attr"), ("c", "attr"), ("d", "attr"), ("e", "attr"), ("f", "attr"), ("g", "attr"),
     ("h", "attr"), ("i", "attr")],
    # no time key at all, and only attributes
    [("when", "text"), ("v", "attr")],
    [("ts", "ts"), ("k1", "attr"), ("k2", "attr"), ("k3", "text")],
    # dotted keys beside nested objects of the same name, and an empty object
    [("ts", "ts"), ("a.b", "attr"), ("a", "ab"), ("e", "empty")],
]  # fmt: skip

_BAD_LINES = [
    "",
    "   ",
    "not json",
    "[1, 2]",
    '{"ts": NaN}',
    '{"ts": 1709510400, "v": 18446744073709551616}',
    '{"ts": 1709510400, "v": 1e400}',
    '{"ts": 1709510400, "a": 1, "a": 2}',
    '{"ts": 1709510400} trailing',
    '{"ts": 1709510400, "msg": "\\ud800"}',
    '"just a string"',
]


def _record(rng: random.Random, shape: list[tuple[str, str]]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for key, kind in shape:
        if kind == "id":
            rec[key] = {"orig_h": _value(rng, "addr"), "orig_p": _value(rng, "port"),
                        "resp_h": _value(rng, "addr"), "resp_p": _value(rng, "port")}  # fmt: skip
        elif kind == "ab":
            rec[key] = {"b": _value(rng, "attr")}
        elif kind == "empty":
            rec[key] = {}
        elif kind == "path":
            rec[key] = rng.choice(["conn", "weird", "notice", "", "-", None, 3])
        else:
            rec[key] = _value(rng, kind)
    return rec


def _corpus(rng: random.Random, n: int) -> list[str]:
    """Blocks of a few shapes each (runs of one shape, as logs are), with bad lines between."""
    lines: list[str] = []
    while len(lines) < n:
        shape = rng.choice(_SHAPES)
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.05:
                lines.append(rng.choice(_BAD_LINES))
            else:
                compact = rng.random() < 0.5
                lines.append(json.dumps(_record(rng, shape), separators=(",", ":") if compact else None,
                                        ensure_ascii=rng.random() < 0.5))  # fmt: skip
    return lines


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_generated_corpus_gives_the_per_line_batches(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(_corpus(rng, 3000)) + "\n", encoding="utf-8")
    _assert_same(path)
    assert _taken(path) > 1000  # most lines went through the block path


@pytest.mark.parametrize("min_group", [1, json_columns.MIN_GROUP])
@pytest.mark.parametrize("name", ["zeek_json.log", "weird.log", "app.jsonl", "out_of_range.jsonl"])
def test_fixture_logs_give_the_per_line_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, min_group: int
) -> None:
    """The fixture files, once as they are (their shapes are few lines each, so with the block
    path's group minimum most go line by line) and once with every group taken."""
    monkeypatch.setattr(json_columns, "MIN_GROUP", min_group)
    _assert_same(LOGS / name)
    if min_group == 1:
        assert _taken(LOGS / name) > 0


def test_bench_generators_are_taken_whole(tmp_path: Path) -> None:
    """Records like those the throughput bench measures (flat Zeek conn, nested ``id``) map
    column-wise entirely, across a block boundary inside the file."""
    rng = random.Random(1)
    for nested in (False, True):
        lines = []
        for i in range(stage.BATCH_ROWS + 500):
            ends = {"orig_h": rng.choice(_HOSTS[:3]), "orig_p": rng.randint(1024, 65535),
                    "resp_h": rng.choice(_HOSTS[:3]), "resp_p": rng.choice([53, 80, 443])}  # fmt: skip
            rec: dict[str, Any] = {"ts": round(T0 + i * 0.05, 6), "uid": f"C{rng.getrandbits(48):012x}"}
            if nested:
                rec["id"] = ends
            else:
                rec.update({f"id.{k}": v for k, v in ends.items()})
            rec.update({"proto": rng.choice(["tcp", "udp"]), "service": rng.choice(["dns", "-"]),
                        "duration": round(rng.expovariate(2.0), 6), "orig_bytes": rng.randint(0, 5000),
                        "conn_state": rng.choice(["SF", "S0"]), "resp_pkts": rng.randint(0, 60)})  # fmt: skip
            lines.append(json.dumps(rec, separators=(",", ":")))
        path = tmp_path / f"bench-{nested}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        assert _taken(path) == len(lines)
        _assert_same(path)


def test_odd_values_go_line_by_line(tmp_path: Path) -> None:
    """Records the block path does not map for sure are left to the per-line parser, whose
    quarantine reason they get."""
    good = [json.dumps({"ts": T0 + i, "id.orig_h": "10.0.0.1", "orig_bytes": i}) for i in range(20)]
    odd = [
        json.dumps({"ts": T0, "id.orig_h": "10.0.0.1", "orig_bytes": -4}),  # negative count
        json.dumps({"ts": T0, "id.orig_h": "10.0.0.1", "orig_bytes": 2**63}),  # past int64
        json.dumps({"ts": None, "id.orig_h": "10.0.0.1", "orig_bytes": 1}),  # no time in the first key
        json.dumps({"ts": "soon", "id.orig_h": "10.0.0.1", "orig_bytes": 1}),  # a time the reference refuses
        json.dumps({"ts": T0, "id.orig_h": "10.0.0.1", "orig_bytes": "12"}),  # text the reference converts
    ]
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join(good[:10] + odd + good[10:]) + "\n")
    blocks = list(parse_file_blocks(path, 300, options=JSON))
    [block] = blocks
    assert block.columns is not None
    assert sorted(block.columns.positions) == [*range(10), *range(15, 25)]
    assert [block.rows[i]["reason"] for i in range(10, 14)] == [  # type: ignore[index]
        "field bytes_out is negative: -4",
        "bytes_out 9223372036854775808 out of int64 range",
        "no timestamp field (tried ts, timestamp, @timestamp, time, date, datetime, eventTime, event_time, "
        "EventTime, TimeCreated, time_stamp, Timestamp)",
        "unparseable timestamp: 'soon'",
    ]
    assert block.kinds[14] == "event" and block.rows[14]["bytes_out"] == 12  # type: ignore[index]
    _assert_same(path)


def test_options_the_block_path_does_not_reproduce_stay_per_line(tmp_path: Path) -> None:
    path = tmp_path / "opts.jsonl"
    path.write_text("".join(json.dumps({"ts": T0 + i, "who": f"u{i}", "t": "2024-03-04 10:00"}) + "\n" for i in range(30)))
    for options in (FormatOptions(format="json", entity_field="who"),
                    FormatOptions(format="json", timestamp_fields=["t"], timestamp_format="%Y-%m-%d %H:%M")):  # fmt: skip
        assert _taken(path, options) == 0
        _assert_same(path, options)
    # A time key the mapping also reads (here the entity's "who" is not one, "host" is).
    hosts = tmp_path / "hosts.jsonl"
    hosts.write_text("".join(json.dumps({"host": T0 + i, "ts": "x", "msg": "m"}) + "\n" for i in range(30)))
    by_host = FormatOptions(format="json", timestamp_fields=["host"])
    assert _taken(hosts, by_host) == 0
    _assert_same(hosts, by_host)
    custom = FormatOptions(format="json", timestamp_fields=["t", "ts"], default_entity="nobody", timezone="Europe/Paris")
    assert _taken(path, custom) == 30
    _assert_same(path, custom)


def test_an_unstorable_row_beside_column_wise_events(tmp_path: Path) -> None:
    """When a per-line row of a block cannot be stored, the batch is rebuilt the reference way
    (the column-wise events as rows too): the same batch as from the per-line records."""
    path = tmp_path / "unstorable.jsonl"
    lines = [json.dumps({"ts": T0 + i, "id.orig_h": "10.0.0.1", "orig_bytes": i}) for i in range(20)]
    lines[5] = json.dumps({"ts": T0, "host": "h", "orig_bytes": "7"})  # its own shape: parsed per line
    path.write_text("\n".join(lines) + "\n")
    [block] = list(parse_file_blocks(path, 300, options=JSON))
    assert block.columns is not None and 5 not in block.columns.positions
    rows = list(block.rows)
    rows[5] = {**rows[5], "bytes_in": "not an int"}  # type: ignore[dict-item]
    got = stage.records_batch("f", "s", rows, block.line_nos, list(block.kinds), "r", None, 0, block.columns)
    reference = [r.data for r in parse_file(path, options=JSON)]
    reference[5] = {**reference[5], "bytes_in": "not an int"}
    want = stage.records_batch("f", "s", reference, block.line_nos, ["event"] * 20, "r", None, 0)
    assert got.column(stage.KIND).to_pylist()[5] == "quarantine"
    assert repr(got.to_pydict()) == repr(want.to_pydict())


def test_without_orjson_every_line_goes_line_by_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps({"ts": T0 + i, "host": "h"}) + "\n" for i in range(30)))
    monkeypatch.setattr(json_format, "_fast_loads", None)
    assert _taken(path) == 0
    _assert_same(path)


# ------------------------------------------------------------------ random shapes and values

_KEYS = st.sampled_from(
    ["ts", "timestamp", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "duration", "orig_bytes",
     "resp_pkts", "conn_state", "status", "status_code", "service", "_path", "app", "level", "severity", "message",
     "msg", "label", "Label", "detailed-label", "host", "hostname", "src_addr", "entity", "uri", "method", "name",
     "note", "x", "y.z"]
) | st.text(max_size=5)  # fmt: skip
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**65), max_value=2**65)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["-", "", "(empty)", "weird", "info", "10.0.0.1", "x"])
    | st.text(max_size=6)
)
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3), max_leaves=6
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.lists(st.lists(st.tuples(_KEYS, st.lists(_VALUES, min_size=1, max_size=3)), max_size=8), min_size=1, max_size=3),
    ts=st.lists(st.one_of(st.floats(min_value=0, max_value=5e9), st.integers(min_value=0, max_value=5e9)), min_size=1, max_size=4),
    rows=st.integers(min_value=8, max_value=40),
)  # fmt: skip
def test_random_shapes_give_the_per_line_batches(
    tmp_path: Path, shapes: list[list[tuple[str, list[Any]]]], ts: list[float], rows: int
) -> None:
    lines = []
    for r in range(rows):
        shape = shapes[r % len(shapes)]
        rec: dict[str, Any] = {"ts": ts[r % len(ts)]}
        for key, values in shape:
            rec[key] = values[r % len(values)]
        lines.append(json.dumps(rec))
    path = tmp_path / f"random-{rows}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _assert_same(path)


def test_attributes_map_leaves_out_null_absent_and_unkept_cells_in_name_order() -> None:
    """The one map builder of every block parser: nulls always leave no entry, ``absent`` cells
    (CSV's and Loghub's ``""``, syslog's ``-``) and ``keep``-false cells neither; a row left with
    nothing is an empty map, not a null one."""
    import numpy as np
    import pyarrow as pa

    a = pa.array(["1", None, "-", ""])
    b = pa.array(["x", "y", "-", None])
    plain = json_columns.attributes_map(["a", "b"], [a, b], 4)
    assert plain.to_pylist() == [[("a", "1"), ("b", "x")], [("b", "y")], [("a", "-"), ("b", "-")], [("a", "")]]
    dashes = json_columns.attributes_map(["a", "b"], [a, b], 4, absent="-")
    assert dashes.to_pylist() == [[("a", "1"), ("b", "x")], [("b", "y")], [], [("a", "")]]
    keep = np.array([[False, True], [True, True], [True, True], [True, False]])
    empties = json_columns.attributes_map(["a", "b"], [a, b], 4, absent="", keep=keep)
    assert empties.to_pylist() == [[("b", "x")], [("b", "y")], [("a", "-"), ("b", "-")], []]
    assert empties.null_count == 0
    assert json_columns.attributes_map([], [], 3).to_pylist() == [[], [], []]
