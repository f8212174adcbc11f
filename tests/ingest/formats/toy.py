"""A toy log format defined outside the package, as a user's plug-in would be.

Lines are ``TOY|<epoch seconds>|<entity>|<message>``. Nothing in ``loganomaly`` names it: the tests
register it in ``LOG_FORMATS`` and show that detection, ``parse_file``, the options and the
ingest stage's Spark tasks all pick it up. Such lines also split into four ``|``-separated
columns, so CSV claims them as well, with the same score: the registry's order decides.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loganomaly.errors import ParseError
from loganomaly.ingest.formats import FormatOptions, LineParser, LogFormat, parse_epoch
from loganomaly.ingest.formats.base import POSSIBLE
from loganomaly.registry import LOG_FORMATS

#: Three good lines and one whose time does not parse (quarantined with the reason).
LINES = [
    "TOY|1700000000|web-1|user alice logged in",
    "TOY|1700000060|web-2|user bob logged in",
    "TOY|yesterday|web-1|clock went wrong",
    "TOY|1700000120|web-1|user alice logged out",
]


class ToyParser(LineParser):
    format = "toy"

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any]:
        parts = text.split("|", 3)
        if len(parts) != 4 or parts[0] != "TOY":
            raise ParseError("not a toy line")
        _, ts, entity, message = parts
        return {
            "ts": parse_epoch(ts),
            "format": "toy",
            "entity": entity,
            "level": "info",
            "message": message,
            "attributes": {"line": str(line_no)},
        }


class ToyFormat(LogFormat):
    name = "toy"

    def detect(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> float:
        return POSSIBLE if sum(line.startswith("TOY|") for line in lines) * 2 > len(lines) else 0.0

    def make_parser(
        self, path: Path, opts: FormatOptions, sample: Sequence[str], variant: str | None = None
    ) -> LineParser:
        return ToyParser()


@contextmanager
def registered(before: str | None = None) -> Iterator[ToyFormat]:
    """``toy`` in ``LOG_FORMATS`` for the duration (before ``before``, else last)."""
    toy = ToyFormat()
    LOG_FORMATS.register("toy", toy, before=before)
    try:
        yield toy
    finally:
        LOG_FORMATS.unregister("toy")
