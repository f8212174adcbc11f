"""The JSON parser decodes with orjson first and the standard library as the reference: every
line must give exactly the standard library's row or quarantine reason (:func:`formats.json.loads`).

Each case is parsed twice through the real parser: as shipped, and with the fast decoder switched
off (``_fast_loads = None``, the reference path an environment without orjson takes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loganomaly.ingest import stage
from loganomaly.ingest.formats import FormatOptions, parse_file, parse_file_blocks
from loganomaly.ingest.formats import json as json_format
from tests.ingest.formats.helpers import LOGS

TS = '"ts": 1709510400.25'


def _deep(depth: int) -> str:
    return "{" + TS + ', "x": ' + '{"a": ' * depth + "1" + "}" * depth + "}"


#: Lines orjson refuses or reads differently from the standard library, and their neighbours.
CASES = {
    "nan field": '{' + TS + ', "duration": NaN}',
    "nan attribute": '{' + TS + ', "score": NaN, "msg": "x"}',
    "infinity ts": '{"ts": Infinity}',
    "minus infinity attribute": '{' + TS + ', "v": -Infinity}',
    "float past range": '{' + TS + ', "v": 1e400}',
    "float past range in a count": '{' + TS + ', "orig_bytes": 1e400}',
    "uint64 max": '{' + TS + ', "v": 18446744073709551615}',
    "int past uint64 attribute": '{' + TS + ', "v": 18446744073709551616}',
    "int past uint64 count": '{' + TS + ', "orig_bytes": 18446744073709551616}',
    "int below int64": '{' + TS + ', "v": -9223372036854775809}',
    "int below int64 nested in a list": '{' + TS + ', "v": [1, {"w": [-9223372036854775809]}]}',
    "30-digit int": '{' + TS + ', "v": 123456789012345678901234567890}',
    "wide int ts": '{"ts": 123456789012345678901234567890}',
    "genuine large float": '{' + TS + ', "v": 1e19}',
    "escaped lone surrogate": '{' + TS + ', "msg": "a\\ud800b"}',
    "escaped reversed pair": '{' + TS + ', "msg": "\\udc00\\ud800"}',
    "escaped pair": '{' + TS + ', "msg": "\\ud83d\\ude00"}',
    "duplicate keys": '{"a": 1, ' + TS + ', "b": 2, "a": 3}',
    "duplicate ts": '{"ts": 1709510400, "ts": 1709510401.5}',
    "nested duplicate after dotted key": '{' + TS + ', "a.b": 1, "a": {"b": 2}}',
    "nested 150 deep": _deep(150),
    "nested 1010 deep": _deep(1010),
    "nested 5000 deep": _deep(5000),
    "bom": "\ufeff{" + TS + "}",
    "trailing garbage": "{" + TS + "} x",
    "control character in a string": "{" + TS + ', "msg": "a\tb"}',
    "top-level array": "[1, 2]",
    "top-level wide int": "123456789012345678901234567890",
    "top-level nan": "NaN",
    "leading zero": "{" + TS + ', "v": 01}',
    "unicode": "{" + TS + ', "msg": "caf\\u00e9 \u00e9"}',
}


def _records(tmp_path: Path, line: str) -> list[Any]:
    path = tmp_path / "case.jsonl"
    path.write_text(line + "\n", encoding="utf-8", errors="surrogatepass")
    return [(r.kind, r.data) for r in parse_file(path, options=FormatOptions(format="json"))]


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types (``1 == 1.0`` is not enough; NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("line", list(CASES.values()), ids=list(CASES))
def test_every_line_gives_the_standard_librarys_row_or_reason(tmp_path: Path, monkeypatch, line: str) -> None:  # type: ignore[no-untyped-def]
    fast = _records(tmp_path, line)
    monkeypatch.setattr(json_format, "_fast_loads", None)
    reference = _records(tmp_path, line)
    assert _same(fast, reference), (fast, reference)


def test_the_cases_are_ones_orjson_refuses_or_reads_differently() -> None:
    """The table above must exercise the fallbacks, not only lines both decoders agree on."""
    refused = differ = 0
    for line in CASES.values():
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            refused += 1
            continue
        try:
            differ += not _same(value, json.loads(line))
        except (ValueError, RecursionError):
            differ += 1
    assert refused >= 10 and differ >= 5


def test_wide_integers_keep_their_exact_value(tmp_path: Path) -> None:
    [(kind, event)] = _records(tmp_path, CASES["30-digit int"])
    assert kind == "event" and event["attributes"]["v"] == "123456789012345678901234567890"
    [(kind, row)] = _records(tmp_path, CASES["int past uint64 count"])
    assert kind == "quarantine" and row["reason"].startswith("bytes_out 18446744073709551616 out of int64 range")


def test_deep_nesting_is_refused_as_before(tmp_path: Path) -> None:
    [(kind, row)] = _records(tmp_path, CASES["nested 5000 deep"])
    assert kind == "quarantine" and row["reason"] == "invalid JSON: nested too deeply"
    [(kind, event)] = _records(tmp_path, CASES["nested 150 deep"])
    assert kind == "event" and event["attributes"] == {"x" + ".a" * 150: "1"}


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _VALUES, max_size=8))
def test_loads_equals_the_standard_library_on_random_documents(doc: dict[str, Any]) -> None:
    text = json.dumps(doc, ensure_ascii=False)
    assert _same(json_format.loads(text), json.loads(text))


def _rows() -> list[dict[str, Any]]:
    path = LOGS / "zeek_json.log"
    return [r.data for r in parse_file(path, options=FormatOptions(format="json"))]


@pytest.mark.parametrize("bad", [None, {"bytes_in": "12"}, {"ts": "2024-01-01"}, {"attributes": {"a": 1}}])
def test_one_pass_batch_equals_the_column_by_column_batch(bad: dict[str, Any] | None) -> None:
    """The struct conversion gives the reference path's batch, and an unstorable event still
    becomes the quarantine row (and reason) the reference conversion gives it."""
    rows = _rows()
    kinds = ["event"] * len(rows)
    if bad is not None:
        rows[1] = {**rows[1], **bad}
    args = ("f.log", "src", rows, list(range(1, len(rows) + 1)), kinds, "run", None, 0)
    if bad is None:
        fast = stage._build(*args, by_struct=True)  # type: ignore[arg-type]
        assert fast.equals(stage._build(*args))  # type: ignore[arg-type]
        return
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        stage._build(*args, by_struct=True)  # type: ignore[arg-type]
    try:
        stage._build("f.log", "src", rows[1:2], [2], ["event"], "run", None, 0)
    except Exception as exc:  # noqa: BLE001 - the reference conversion's error, as records_batch quotes it
        expected = f"event not storable: {type(exc).__name__}: {str(exc)[:200]}"
    batch = stage.records_batch(*args)  # type: ignore[arg-type]
    assert batch.column(stage.KIND).to_pylist()[1] == "quarantine"
    assert batch.column("reason").to_pylist()[1] == expected
    assert batch.column(stage.KIND).to_pylist().count("event") == len(rows) - 1


@pytest.mark.parametrize("line", list(CASES.values()), ids=list(CASES))
def test_every_case_in_a_block_gives_the_per_line_batch(tmp_path: Path, line: str) -> None:
    """The column-wise block path (``formats/json_columns.py``) on each case, repeated into a
    group of its own between ordinary lines: the batch of the per-line path, value for value."""
    good = [json.dumps({"ts": 1709510400 + i, "id.orig_h": "10.0.0.1", "v": 1.5}) for i in range(10)]
    path = tmp_path / "block.jsonl"
    path.write_text("\n".join(good + [line] * 10 + good) + "\n", encoding="utf-8", errors="surrogatepass")
    sources = {str(path): ("src", FormatOptions(format="json"))}
    got, want = (
        [repr(b.to_pydict()) for b in stage.parse_files_to_batches([str(path)], "r", 300, sources=sources, columnar=c)]
        for c in (True, False)
    )
    assert got == want
    blocks = list(parse_file_blocks(path, 300, options=FormatOptions(format="json")))
    assert sum(len(b.columns.positions) for b in blocks if b.columns) >= 20  # the good lines at least
