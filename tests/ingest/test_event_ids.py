"""Event ids (:mod:`loganomaly.ingest.ids`): the batch form the parsing tasks use gives the
per-line ids of each scheme, the legacy scheme stays what lakes hold, Spark-free."""

from __future__ import annotations

import numpy as np
import pytest

from loganomaly.ingest.ids import FILE_LINE, KEY_CHARS, LEGACY, LINE_CHARS, IdKey, legacy_id
from loganomaly.ingest.stage import event_id, event_ids

LINES = [1, 2, 3, 10, 99999, 2**40 - 1]


@pytest.mark.parametrize("scheme", [LEGACY, FILE_LINE])
@pytest.mark.parametrize("generation", [0, 1, 7])
def test_batch_ids_are_the_per_line_ids(generation: int, scheme: int) -> None:
    path = "/data/logs/café/app.log"
    is_event = [True, False, True, True, False, True]
    want = [event_id(path, n, generation, scheme) if e else None for n, e in zip(LINES, is_event, strict=True)]
    assert event_ids(path, LINES, is_event, generation, scheme) == want
    key = IdKey(path, generation, scheme)
    assert key.batch(np.array(LINES), is_event).null_count == 2
    assert key.batch(LINES).to_pylist() == [key.one(n) for n in LINES]
    assert len(set(filter(None, event_ids(path, LINES, [True] * 6, generation, scheme)))) == 6


def test_legacy_ids_are_the_ones_lakes_hold() -> None:
    """Lakes written before the scheme was recorded hold these: they must never change."""
    assert legacy_id("/data/logs/app.log", 7) == "002df42cd6cf8d69b84a091e"
    assert IdKey("/data/logs/app.log", 2, LEGACY).one(7) == "78e3f50f036205b70d96cdf6"


def test_file_line_ids_are_the_file_key_and_the_hex_line_number() -> None:
    key = IdKey("/data/logs/app.log", 2)
    assert key.scheme == FILE_LINE
    assert key.one(7) == "14cbd2dd346af8c4" + "0000000007"
    assert len(key.file_key) == KEY_CHARS and key.one(255).endswith("0" * (LINE_CHARS - 2) + "ff")
    # the file key depends on path and generation, so two generations or files never share ids
    others = {IdKey("/data/logs/app.log", 3).file_key, IdKey("/data/logs/app.log.1", 2).file_key}
    assert key.file_key not in others and len(others) == 2
    # past the fixed digits a line number takes more of them: still one id per line, batch or not
    wide = [2**40 - 1, 2**40, 2**44 + 5]
    ids = key.batch(wide).to_pylist()
    assert ids == [key.one(n) for n in wide] and len(set(ids)) == 3
    assert [len(i) for i in ids] == [KEY_CHARS + LINE_CHARS, KEY_CHARS + 11, KEY_CHARS + 12]


def test_a_key_refuses_an_unknown_scheme_and_a_mask_of_another_length() -> None:
    with pytest.raises(ValueError, match="unknown event id scheme"):
        IdKey("/x", 0, 9)
    with pytest.raises(ValueError, match="event flags"):
        IdKey("/x").batch([1, 2, 3], [True, False])
