"""Spark-free parts of scoring: date arguments a scheduler passes."""

from __future__ import annotations

import datetime as dt

import pytest

from loganomaly.errors import StageInputError
from loganomaly.scoring.stage import resolve_date


def test_resolve_date() -> None:
    today = dt.datetime.now(dt.timezone.utc).date()
    assert resolve_date(None) is None
    assert resolve_date("2024-03-05") == "2024-03-05"
    assert resolve_date("today") == today.isoformat()
    assert resolve_date("yesterday") == (today - dt.timedelta(days=1)).isoformat()
    with pytest.raises(StageInputError, match="YYYY-MM-DD, today or yesterday"):
        resolve_date("2024-13-01")
