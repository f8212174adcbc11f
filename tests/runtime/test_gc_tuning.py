"""The collector's thresholds are raised while parsing and always restored."""

from __future__ import annotations

import gc

import pytest

from loganomaly.runtime.gc_tuning import PARSE_THRESHOLDS, relaxed_gc


@pytest.fixture(autouse=True)
def _restore():  # type: ignore[no-untyped-def]
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_thresholds_are_raised_inside_and_restored_after() -> None:
    gc.set_threshold(700, 10, 10)
    with relaxed_gc():
        assert gc.get_threshold() == PARSE_THRESHOLDS
        assert gc.isenabled()  # raised, never turned off
    assert gc.get_threshold() == (700, 10, 10)


def test_restored_when_the_work_fails() -> None:
    gc.set_threshold(700, 10, 10)
    with pytest.raises(RuntimeError), relaxed_gc():
        raise RuntimeError("parse failed")
    assert gc.get_threshold() == (700, 10, 10)


def test_higher_thresholds_set_by_the_application_are_kept() -> None:
    gc.set_threshold(200_000, 5, 50)
    with relaxed_gc():
        assert gc.get_threshold() == (200_000, 20, 50)
        with relaxed_gc((1000, 1, 1)):  # nested: the larger of each stays
            assert gc.get_threshold() == (200_000, 20, 50)
    assert gc.get_threshold() == (200_000, 5, 50)
