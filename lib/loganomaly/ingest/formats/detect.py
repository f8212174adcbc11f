"""Which format a file is in, and its parsing: every registered format asked, none named here.

:func:`detect` asks each format of :data:`loganomaly.registry.LOG_FORMATS` (or of an explicit
``formats`` mapping, which is how the ingest stage ships them to its tasks) for a score and takes
the highest; a tie goes to the format listed first. :func:`parse_file` keeps the contract of the
package: exactly one record per physical line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

from loganomaly.errors import ConfigError, ParseError
from loganomaly.ingest.formats.base import (
    CERTAIN,
    HEADER_REASON,
    EventColumns,
    FormatOptions,
    LineParser,
    LogFormat,
    ParsedRecord,
    _default_options,
    _sample,
    open_lines,
)
from loganomaly.ingest.formats.values import check_int_ranges
from loganomaly.registry import LOG_FORMATS

log = logging.getLogger(__name__)


def registered_formats() -> dict[str, LogFormat]:
    """The formats of :data:`loganomaly.registry.LOG_FORMATS`, in detection order, imported."""
    return dict(LOG_FORMATS.items())


def _unknown(name: str, formats: Mapping[str, LogFormat]) -> ConfigError:
    return ConfigError(f"unknown log format {name!r}; valid: {', '.join(formats)}")


class Detection(NamedTuple):
    """What :func:`detect` found: the format and its variant (for ``loghub``, the line pattern)."""

    format: str
    pattern: str | None = None


def detect(
    path: str | Path,
    options: FormatOptions | None = None,
    sampled: tuple[list[str], int] | None = None,
    *,
    formats: Mapping[str, LogFormat] | None = None,
) -> Detection:
    """Detect the format of ``path`` from its first lines and its name; ParseError if none fits.

    Every format scores the sample (:meth:`LogFormat.detect`); the highest score wins and a tie
    goes to the format listed first, so precedence is each format's own evidence, then the
    registry's order. ``options.format`` skips detection (the variant, e.g. a Loghub pattern
    not given in the options, is still found).

    Args:
        sampled: the file's sample and its count of unreadable lines, when already read.
        formats: name -> format, in detection order; default the registry's.
    """
    opts = options or _default_options()
    formats = registered_formats() if formats is None else formats
    path = Path(path)
    lines, bad = sampled if sampled is not None else _sample(path, opts.sample_lines)
    if opts.format is not None:
        if opts.format not in formats:
            raise _unknown(opts.format, formats)
        return Detection(opts.format, formats[opts.format].variant(path, lines, opts))
    if not lines:
        if bad:
            raise ParseError("binary or non-UTF-8 file: no readable text line to detect its format")
        raise ParseError("empty file: nothing to detect a format from")
    best: str | None = None
    best_score = 0.0
    for name, log_format in formats.items():
        score = float(log_format.detect(path, lines, opts))
        if score > best_score:
            best, best_score = name, score
            if score >= CERTAIN:
                break  # nothing can score higher, and a tie would go to this earlier format
    if best is not None:
        return Detection(best, formats[best].variant(path, lines, opts))
    if bad > len(lines):
        raise ParseError("binary or non-UTF-8 file: most sampled lines are not text")
    raise ParseError(f"unrecognised log format (supported: {', '.join(formats)})")


def detect_format(path: str | Path, sample_lines: int = 50) -> str:
    """The format name of ``path`` (see :func:`detect`; use it to also get the Loghub pattern)."""
    return detect(path, FormatOptions(sample_lines=sample_lines)).format


def make_parser(
    path: str | Path,
    options: FormatOptions | None = None,
    detection: Detection | None = None,
    *,
    formats: Mapping[str, LogFormat] | None = None,
) -> LineParser:
    """A fresh parser for ``path`` (detecting its format unless ``detection`` is given).

    Raises ParseError when the format cannot be detected, ConfigError when options do not fit.
    """
    opts = options or _default_options()
    formats = registered_formats() if formats is None else formats
    path = Path(path)
    sample, bad = _sample(path, opts.sample_lines)
    if detection is None:
        detection = detect(path, opts, (sample, bad), formats=formats)
    if detection.format not in formats:
        raise _unknown(detection.format, formats)
    return formats[detection.format].make_parser(path, opts, sample, detection.pattern)


def _original_length(text: str, problem: str | None) -> int:
    """Bytes of the original line; for an over-long line ``text`` is only its head."""
    if problem is not None and problem.startswith("line too long ("):
        return int(problem[len("line too long (") :].split(" ", 1)[0])
    return len(text.encode("utf-8", errors="replace"))


def _open_parsed(
    path: str | Path,
    fmt: str | None,
    options: FormatOptions | None,
    formats: Mapping[str, LogFormat] | None,
    byte_range: tuple[int, int | None, int] | None,
) -> tuple[LineParser | None, str | None, str | None, Iterator[tuple[int, str, str | None]]]:
    """The set-up :func:`parse_file` and :func:`parse_file_blocks` share: the file's parser (None
    with the reason every line is quarantined for, when no format fits), its format name and the
    file's lines (of ``byte_range`` only, when given)."""
    opts = options or _default_options()
    formats = registered_formats() if formats is None else formats
    if fmt is not None and fmt != opts.format:
        if fmt not in formats:
            raise _unknown(fmt, formats)
        opts = dataclasses.replace(opts, format=fmt)
    reason_all: str | None = None
    parser: LineParser | None = None
    try:
        parser = make_parser(path, opts, formats=formats)
    except ParseError as exc:
        reason_all = str(exc)
    fmt_name = parser.format if parser is not None else opts.format
    lines = open_lines(path) if byte_range is None else open_lines(path, *byte_range)
    return parser, fmt_name, reason_all, lines


def parse_file(
    path: str | Path,
    fmt: str | None = None,
    max_raw_chars: int = 2048,
    *,
    options: FormatOptions | None = None,
    formats: Mapping[str, LogFormat] | None = None,
    byte_range: tuple[int, int | None, int] | None = None,
) -> Iterator[ParsedRecord]:
    """Parse every line of ``path``; exactly one record per physical line (see the package docstring).

    ``fmt`` (or ``options.format``) forces a format, else it is detected per file. A file whose
    format cannot be detected yields every line as quarantine with the detection's reason. An
    unknown ``fmt`` or options that contradict the file's columns raise ConfigError (a setting
    to fix, not a property of the data). ``formats``: name -> format in detection order, default
    the registry's (a Spark task gets the driver's, see :mod:`loganomaly.ingest.stage`).
    ``byte_range``: ``(start, end, first line number)``, only the lines starting in that range
    of an uncompressed file (:func:`open_lines`); the parser is made from the file's head as
    for the whole file, so a range of a file whose parser is ``splittable`` gives the records
    the whole file gives for those lines.
    """
    parser, fmt_name, reason_all, lines = _open_parsed(path, fmt, options, formats, byte_range)
    parse = parser.parse if parser is not None else None
    for line_no, text, problem in lines:
        yield parse_line(parse, fmt_name, reason_all, line_no, text, problem, max_raw_chars, path)


@dataclass(slots=True)
class ParsedBlock:
    """Consecutive lines of one file, as :func:`parse_file_blocks` gives them.

    ``line_nos`` and ``kinds`` (``"event"``/``"quarantine"``) have one entry per line; ``rows``
    holds each line's record data as :func:`parse_file` gives it, except None at the positions
    ``columns`` holds (events built column-wise by the parser's :meth:`LineParser.parse_block`).
    """

    line_nos: list[int]
    kinds: list[str]
    rows: list[dict[str, Any] | None]
    columns: EventColumns | None


def parse_file_blocks(
    path: str | Path,
    max_raw_chars: int = 2048,
    *,
    options: FormatOptions | None = None,
    formats: Mapping[str, LogFormat] | None = None,
    byte_range: tuple[int, int | None, int] | None = None,
    block_lines: int = 8192,
) -> Iterator[ParsedBlock]:
    """:func:`parse_file`'s records, ``block_lines`` lines at a time, with the lines the file's
    parser maps column-wise (:meth:`LineParser.parse_block`) as columns instead of dicts.

    The same records as :func:`parse_file` (the column-wise events are the events ``parse``
    would give, checked by the tests), the same contract: one entry per physical line. Lines
    with a byte problem, empty lines and files without a parser never reach ``parse_block``.
    """
    parser, fmt_name, reason_all, lines = _open_parsed(path, None, options, formats, byte_range)
    parse = parser.parse if parser is not None else None
    while block := list(islice(lines, block_lines)):
        yield _parse_block(parser, parse, fmt_name, reason_all, block, max_raw_chars, path)


def _parse_block(
    parser: LineParser | None,
    parse: Callable[[str, int], dict[str, Any] | None] | None,
    fmt_name: str | None,
    reason_all: str | None,
    block: list[tuple[int, str, str | None]],
    max_raw_chars: int,
    path: str | Path,
) -> ParsedBlock:
    # The block's columns in one C-level pass each: a Python loop over its lines, as this used
    # to run three times, cost about as much as the Arrow column path of a Zeek TSV block.
    line_nos, texts, problems = (list(column) for column in zip(*block, strict=True))
    n = len(block)
    columns: EventColumns | None = None
    if parser is not None and reason_all is None:
        clean: list[int] | None = None  # None: every line (no byte problem, none blank)
        if problems.count(None) != n or "" in texts or any(map(str.isspace, texts)):
            clean = [i for i in range(n) if problems[i] is None and texts[i] and not texts[i].isspace()]
        given = texts if clean is None else [texts[i] for i in clean]
        try:
            columns = parser.parse_block(given) if given else None
        except Exception as exc:  # noqa: BLE001 - the per-line path is the reference: use it
            log.warning("%s: block parse failed (%r); parsing its lines one by one", path, exc)
            columns = None
        if columns is not None and clean is not None:
            columns.positions = [clean[p] for p in columns.positions]
    kinds = ["event"] * n
    rows: list[dict[str, Any] | None] = [None] * n
    rest: Iterable[int] = (
        range(n)
        if columns is None
        else ()  # positions are distinct lines of the block: all of them
        if len(columns.positions) == n
        else sorted(set(range(n)).difference(columns.positions))
    )
    for i in rest:
        record = parse_line(parse, fmt_name, reason_all, line_nos[i], texts[i], problems[i], max_raw_chars, path)
        kinds[i] = record.kind
        rows[i] = record.data
    return ParsedBlock(line_nos, kinds, rows, columns)


def parse_line(
    parse: Callable[[str, int], dict[str, Any] | None] | None,
    fmt_name: str | None,
    reason_all: str | None,
    line_no: int,
    text: str,
    problem: str | None,
    max_raw_chars: int,
    path: str | Path = "",
) -> ParsedRecord:
    """One line's record, exactly as :func:`parse_file` makes it: the ingest stage's native path
    sends the lines Spark cannot parse here one by one, so both paths share this one rule.

    Args:
        parse: the file's parser (None when the file could not be given one: ``reason_all`` says why).
        problem: what :func:`open_lines` found wrong with the line's bytes, if anything.
    """
    reason = problem or reason_all
    if reason is None:
        if not text or text.isspace():
            reason = "empty line"
        else:
            assert parse is not None
            try:
                event = parse(text, line_no)
                if event is not None:
                    check_int_ranges(event)
            except ParseError as exc:
                reason = str(exc)
            except Exception as exc:  # a parser bug must lose neither the line nor the file
                log.warning("%s line %d: parser error %r", path, line_no, exc)
                reason = f"parser error: {type(exc).__name__}: {str(exc)[:200]}"
            else:
                if event is not None:
                    return ParsedRecord("event", line_no, event)
                reason = HEADER_REASON
    return ParsedRecord(
        "quarantine",
        line_no,
        {
            "format": fmt_name,
            "reason": reason,
            "raw": text[:max_raw_chars],
            "raw_length": _original_length(text, problem),
        },
    )
