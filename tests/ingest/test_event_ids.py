"""``event_ids`` (the batch form the parsing tasks use) gives :func:`event_id`'s ids, Spark-free."""

from __future__ import annotations

import pytest

from loganomaly.ingest.stage import event_id, event_ids


@pytest.mark.parametrize("generation", [0, 1, 7])
def test_batch_ids_are_the_per_line_ids(generation: int) -> None:
    path = "/data/logs/café/app.log"
    lines = [1, 2, 3, 10, 99999, 2**40]
    is_event = [True, False, True, True, False, True]
    assert event_ids(path, lines, is_event, generation) == [
        event_id(path, n, generation) if e else None for n, e in zip(lines, is_event, strict=True)
    ]
    assert len(set(filter(None, event_ids(path, lines, [True] * 6, generation)))) == 6
