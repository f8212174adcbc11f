"""Spark-free tests of :mod:`loganomaly.ingest.formats.values`."""

from __future__ import annotations

from loganomaly.ingest.formats import (
    normalize_level,
)


def test_normalize_level() -> None:
    assert [normalize_level(v) for v in ("W", "WARN", "Warning", "E", "SEVERE", "I", "V", "F", "notice")] == [
        "warning", "warning", "warning", "error", "error", "info", "debug", "fatal", "notice",
    ]  # fmt: skip
    assert normalize_level("-") is None
    assert normalize_level("Custom") == "custom"
