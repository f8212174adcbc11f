"""What every log format shares: options, reading files, the parser and format protocols.

A log format (:class:`LogFormat`) is registered in :data:`loganomaly.registry.LOG_FORMATS`; it
recognises its files (:meth:`LogFormat.detect`, a score on the detection scale below) and builds
a :class:`LineParser` per file. Spark-free, like the whole package.
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import io
import logging
import math
import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import count, repeat
from pathlib import Path
from typing import IO, Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from loganomaly.errors import ConfigError, StageInputError
from loganomaly.ingest.formats.timestamps import _UTC, TimeFormat, _Clock
from loganomaly.registry import LOG_FORMATS

log = logging.getLogger(__name__)

#: Lines longer than this are quarantined without parsing (their head is kept as raw text).
MAX_LINE_BYTES = 1024 * 1024
#: Quarantine reason of header lines (Zeek ``#`` lines, CSV header rows): counted, never lost.
HEADER_REASON = "header line (not an event)"
#: Timestamp keys tried, in order, in JSON records and CSV headers (override: FormatOptions).
TIMESTAMP_FIELDS = (
    "ts",
    "timestamp",
    "@timestamp",
    "time",
    "date",
    "datetime",
    "eventTime",
    "event_time",
    "EventTime",
    "TimeCreated",
    "time_stamp",
    "Timestamp",
)

# ------------------------------------------------------------------------------ detection scale

# What :meth:`LogFormat.detect` returns: the highest score wins, a tie goes to the format listed
# first in ``LOG_FORMATS``. The levels name the kind of evidence a format has.

#: The file says what it is (Zeek's ``#fields`` header). ``True`` from ``detect`` counts as this.
CERTAIN = 1.0
#: Strong evidence: the lines' structure (JSON objects), or a name given by the user or carried by
#: the file that the lines agree with (a custom Loghub pattern, ``HDFS_2k.log``).
STRONG = 0.8
#: Most lines start with a head few other formats have (syslog's ``<PRI>``, access logs' ``[dd/Mon/yyyy:``).
LIKELY = 0.5
#: Most lines fit a generic shape (RFC 3164 without PRI, some Loghub pattern, a table).
POSSIBLE = 0.2

# ------------------------------------------------------------------------------ options


@dataclass
class FormatOptions:
    """How to read one file (or a set of files of one kind); every field is optional.

    ``format``: a name in :data:`loganomaly.registry.LOG_FORMATS`, None = detect per file.
    ``pattern``: a name of :data:`loganomaly.ingest.formats.loghub.LOGHUB_PATTERNS` or a custom
    logpai-style pattern (``<Date> <Time> <Level>: <Content>``; literal text is a regex fragment,
    runs of spaces match any whitespace; ``<Name:regex>`` constrains a field). ``columns``: column
    names of a headerless CSV (a list, or a name of
    :data:`loganomaly.ingest.formats.csv.COLUMN_PRESETS` such as ``"nsl_kdd"``) or of a
    header-less Zeek TSV.
    ``has_header``/``delimiter``: CSV (None = detect). ``timestamp_fields``: keys/columns/pattern fields holding the time (joined
    by a space when several). ``timestamp_format``: a strptime-style format (subset, see
    :class:`TimeFormat`; ``"epoch"`` for epoch numbers). ``timezone``: IANA name applied to
    times that carry no zone (else UTC). ``year``: for formats without a year (RFC 3164, several
    Loghub systems); default the file's mtime year. ``entity_field``/``label_field``/
    ``level_field``/``message_field``: which field fills that column. ``default_entity``: the
    entity of events whose format has none. ``synthetic_time_start`` (ISO time) and
    ``synthetic_time_step_seconds``: for tables without a time column (NSL-KDD), each row gets
    ``start + line_no * step`` — deterministic and ordered, but not a real time.
    ``sample_lines``: lines read to detect format, pattern, CSV header and delimiter.
    """

    format: str | None = None
    pattern: str | None = None
    columns: Sequence[str] | None = None
    has_header: bool | None = None
    delimiter: str | None = None
    timestamp_fields: Sequence[str] | None = None
    timestamp_format: str | None = None
    timezone: str | None = None
    year: int | None = None
    entity_field: str | None = None
    label_field: str | None = None
    level_field: str | None = None
    message_field: str | None = None
    default_entity: str | None = None
    synthetic_time_start: str | dt.datetime | None = None
    synthetic_time_step_seconds: float = 1.0
    sample_lines: int = 50

    def __post_init__(self) -> None:
        # Derived values are plain attributes, not dataclass fields, so that
        # ``dataclasses.fields(FormatOptions)`` lists exactly the settings a user may give.
        self.tz: dt.tzinfo | None = None
        self.synthetic_start: dt.datetime | None = None
        if self.format is not None and self.format not in LOG_FORMATS:
            raise ConfigError(f"unknown log format {self.format!r}; valid: {', '.join(LOG_FORMATS.names())}")
        # Options a format owns (Loghub's pattern, CSV's column presets) are checked by that format.
        for _, log_format in LOG_FORMATS.items():
            log_format.check_options(self)
        if self.columns is not None:
            cols = list(self.columns)
            if not cols or not all(isinstance(c, str) and c for c in cols):
                raise ConfigError("columns must be a non-empty list of non-empty names")
            if len(set(cols)) != len(cols):
                raise ConfigError(
                    f"columns has duplicate names: {sorted({c for c in cols if cols.count(c) > 1})}"
                )
            self.columns = tuple(cols)
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ConfigError(f"delimiter must be one character, got {self.delimiter!r}")
        if self.timestamp_fields is not None:
            if isinstance(self.timestamp_fields, str):
                self.timestamp_fields = (self.timestamp_fields,)
            if not self.timestamp_fields or not all(isinstance(f, str) and f for f in self.timestamp_fields):
                raise ConfigError("timestamp_fields must be a non-empty list of names")
            self.timestamp_fields = tuple(self.timestamp_fields)
        if self.timestamp_format is not None:
            TimeFormat.compile(self.timestamp_format)
        if self.timezone is not None:
            try:
                self.tz = ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(
                    f"unknown timezone {self.timezone!r}; use an IANA name such as 'Europe/Paris'"
                ) from None
        if self.year is not None and (
            isinstance(self.year, bool) or not isinstance(self.year, int) or not 1970 <= self.year <= 2099
        ):
            raise ConfigError(f"year must be an integer in 1970..2099, got {self.year!r}")
        if (
            isinstance(self.synthetic_time_step_seconds, bool)
            or not isinstance(self.synthetic_time_step_seconds, (int, float))
            or not (math.isfinite(self.synthetic_time_step_seconds) and self.synthetic_time_step_seconds > 0)
        ):
            raise ConfigError(
                f"synthetic_time_step_seconds must be > 0, got {self.synthetic_time_step_seconds!r}"
            )
        if self.synthetic_time_start is not None:
            start = self.synthetic_time_start
            if isinstance(start, str):
                try:
                    start = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
                except ValueError:
                    raise ConfigError(f"synthetic_time_start is not an ISO time: {start!r}") from None
            if not isinstance(start, dt.datetime):
                raise ConfigError(f"synthetic_time_start must be an ISO string or datetime, got {start!r}")
            if start.tzinfo is None:
                start = start.replace(tzinfo=self.tz or _UTC)
            self.synthetic_start = start.astimezone(_UTC)
        if (
            isinstance(self.sample_lines, bool)
            or not isinstance(self.sample_lines, int)
            or self.sample_lines < 1
        ):
            raise ConfigError(f"sample_lines must be a positive integer, got {self.sample_lines!r}")


_DEFAULT_OPTIONS: FormatOptions | None = None


def _default_options() -> FormatOptions:
    global _DEFAULT_OPTIONS
    if _DEFAULT_OPTIONS is None:
        _DEFAULT_OPTIONS = FormatOptions()
    return _DEFAULT_OPTIONS


# ------------------------------------------------------------------------------ reading


def _open_binary(path: Path) -> IO[bytes]:
    """Open by content (gzip/bz2 magic bytes), not only by name: a ``.log`` may be compressed."""
    with open(path, "rb") as fh:
        magic = fh.read(3)
    if magic[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if magic == b"BZh":
        return cast(IO[bytes], bz2.open(path, "rb"))
    return open(path, "rb")


def open_lines(
    path: str | Path, start: int = 0, end: int | None = None, first_line: int = 1
) -> Iterator[tuple[int, str, str | None]]:
    """Stream ``(line_no, text, problem)`` for every line of a plain, gzip or bz2 file.

    ``text`` has no line ending (``\\n`` or ``\\r\\n``). ``problem`` is None for a clean line,
    ``"invalid UTF-8"`` when bytes had to be replaced, ``"line too long (N bytes)"`` past
    :data:`MAX_LINE_BYTES` (then ``text`` is only the head of the line). A compressed file that
    ends early yields what it could read, then one last line with problem
    ``"truncated or corrupt compressed stream: ..."`` so the damage is recorded, not hidden.

    ``start``/``end`` read one byte range of an uncompressed file, so that several tasks can share
    a large one: the range owns the lines that *start* in ``[start, end)`` (``end`` None: to the
    end of the file, however long it has grown), the first numbered ``first_line``. A line
    crossing ``end`` is read to its end; one crossing ``start`` belongs to the range before. So
    ranges that tile a file yield each line exactly once, as the whole file would.

    A UTF-8 byte-order mark at the start of the file is dropped (Windows tools write one before a
    CSV or JSON export; left in, it hid the first line's ``{`` from detection and renamed a CSV's
    first column); anywhere else it stays, and a line starting with it is that parser's to judge.
    A file that starts with a UTF-16 byte-order mark (Windows PowerShell 5's ``>`` and
    ``Out-File`` write UTF-16LE) is decoded as UTF-16 (:func:`is_utf16`), whole, never by range.
    """
    path = Path(path)
    compressed, utf16 = _sniff(path)
    if start == 0 and end is None:
        if utf16:
            yield from _read_utf16(path, first_line)
        elif compressed:
            with _open_binary(path) as fh:
                yield from _read_lines(fh, first_line, None, bom=True)
        else:
            with open(path, "rb") as fh:
                yield from _read_chunks(fh, first_line, None, skip_bom(fh))
        return
    if compressed or utf16:
        raise StageInputError(f"{path}: a compressed or UTF-16 file is read whole, not by byte range")
    with open(path, "rb") as fh:
        skipped = 0
        if start > 0:
            fh.seek(start - 1)
            if fh.read(1) != b"\n":  # mid-line: that line belongs to the range before
                while (more := fh.readline(MAX_LINE_BYTES)) and not more.endswith(b"\n"):
                    pass
        else:
            skipped = skip_bom(fh)
        if end is None:
            budget = None
        elif skipped and end > 0:
            # Line 1 starts at 0, before its mark: the range owns it however little it covers.
            budget = max(end, skipped + 1)
        else:
            budget = end - fh.tell()
        yield from _read_chunks(fh, first_line, budget, skipped)


#: The UTF-8 byte-order mark.
BOM = b"\xef\xbb\xbf"


def skip_bom(fh: IO[bytes]) -> int:
    """Move past a byte-order mark at the start of ``fh`` (at its start now): the bytes skipped."""
    if fh.read(len(BOM)) == BOM:
        return len(BOM)
    fh.seek(0)
    return 0


def _read_lines(
    fh: IO[bytes], first_line: int, budget: int | None, bom: bool = False
) -> Iterator[tuple[int, str, str | None]]:
    """The lines of ``fh`` from its position; with ``budget``, only those starting within that many bytes.
    ``bom``: ``fh`` is at the file's start; drop a byte-order mark there (read inside the guard, so
    that a corrupt compressed stream still ends in its quarantine row rather than an error)."""
    line_no = first_line - 1
    try:
        if bom:
            skip_bom(fh)  # the file's start: as for plain files, the line is what follows the mark
        while budget is None or budget > 0:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            line_no += 1
            if budget is not None:
                budget -= len(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                # Drain the rest of the long line without holding it in memory.
                total = len(raw)
                while True:
                    more = fh.readline(MAX_LINE_BYTES)
                    total += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                if budget is not None:
                    budget -= total - len(raw)
                length = total - (1 if more.endswith(b"\n") else 0)
                yield (
                    line_no,
                    raw[:4096].decode("utf-8", errors="replace"),
                    f"line too long ({length} bytes)",
                )
                continue
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            try:
                yield line_no, raw.decode("utf-8"), None
            except UnicodeDecodeError:
                yield line_no, raw.decode("utf-8", errors="replace"), "invalid UTF-8"
    except (EOFError, OSError, zlib.error) as exc:
        line_no += 1
        yield line_no, "", f"truncated or corrupt compressed stream: {exc}"


#: Byte-order marks of UTF-16 text (little-endian, big-endian).
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def is_utf16(path: str | Path) -> bool:
    """Whether the file's text (a compressed file's, once decompressed) starts with a UTF-16
    byte-order mark. Such bytes are never valid UTF-8, so no UTF-8 file is taken for one."""
    return _sniff(Path(path))[1]


def read_whole(path: str | Path) -> bool:
    """Whether the file is read whole, never in byte ranges: compressed, or UTF-16 (whose newline
    bytes do not mark lines)."""
    return any(_sniff(Path(path)))


def _sniff(path: Path) -> tuple[bool, bool]:
    """(compressed, UTF-16) from one look at the file's head; only a compressed file is opened
    again, to look at its text. Raises ``OSError`` (``FileNotFoundError``) if the file is gone."""
    with open(path, "rb") as fh:
        magic = fh.read(3)
    if not _compressed(magic):
        return False, magic[:2] in UTF16_BOMS
    try:
        with _open_binary(path) as fh:
            return True, fh.read(2) in UTF16_BOMS
    except (EOFError, OSError, zlib.error):
        return True, False  # a broken compressed stream: the UTF-8 reader records the damage


def _read_utf16(path: Path, first_line: int) -> Iterator[tuple[int, str, str | None]]:
    """:func:`open_lines` of a UTF-16 file: the same lines, numbers and problems as its UTF-8
    twin would give (lines end at ``\\n``, trailing ``\\r`` dropped, ``line too long (N bytes)``
    counted in UTF-8 bytes past :data:`MAX_LINE_BYTES`), plus ``invalid UTF-16`` for a line with a
    byte sequence the codec had to replace (also, rarely, a line holding a real U+FFFD)."""
    line_no = first_line - 1
    try:
        with _open_binary(path) as raw, io.TextIOWrapper(raw, encoding="utf-16", errors="replace", newline="\n") as fh:
            while True:
                text = fh.readline(MAX_LINE_BYTES + 1)
                if not text:
                    break
                line_no += 1
                complete = text.endswith("\n")
                body = text[:-1] if complete else text
                size = len(body.encode("utf-8"))
                if size > MAX_LINE_BYTES:  # drain the rest of the line, keep its head
                    head = body
                    while not complete and (more := fh.readline(MAX_LINE_BYTES)):
                        complete = more.endswith("\n")
                        size += len((more[:-1] if complete else more).encode("utf-8"))
                    yield line_no, _head(head.encode("utf-8")), f"line too long ({size} bytes)"
                    continue
                text = body.rstrip("\r")
                yield line_no, text, "invalid UTF-16" if "\ufffd" in text else None
    except (EOFError, OSError, zlib.error) as exc:
        line_no += 1
        yield line_no, "", f"truncated or corrupt compressed stream: {exc}"


#: Bytes :func:`_read_chunks` reads at a time.
_CHUNK_BYTES = 1 << 20


def long_line(raw: bytes) -> tuple[str, str]:
    """What :func:`open_lines` yields for a line over :data:`MAX_LINE_BYTES` (``raw``: all its
    bytes, without the ``\\n``)."""
    return _head(raw), f"line too long ({len(raw)} bytes)"


def _head(raw: bytes) -> str:
    """The raw text kept of a line over the limit (what :func:`_read_lines` keeps)."""
    return raw[:min(4096, MAX_LINE_BYTES + 1)].decode("utf-8", errors="replace")


def decode_lines(body: bytes) -> tuple[list[str], list[str | None]] | list[str]:
    """The lines of ``body`` (whole lines joined by ``\\n``, none holding it at its end), as
    :func:`open_lines` decodes them: a list of texts when every line is clean, else texts and
    their problems (invalid UTF-8, over :data:`MAX_LINE_BYTES`).

    The clean case, nearly every chunk of a log, is one UTF-8 decode and one split in C: a valid
    chunk is valid line by line, as ``\\n`` never occurs inside a multi-byte character.
    """
    if len(body) <= MAX_LINE_BYTES or max(map(len, body.split(b"\n"))) <= MAX_LINE_BYTES:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            lines = text.split("\n")
            return [line.rstrip("\r") for line in lines] if "\r" in text else lines
    texts: list[str] = []
    problems: list[str | None] = []
    for raw in body.split(b"\n"):
        if len(raw) > MAX_LINE_BYTES:
            text, problem = long_line(raw)
            texts.append(text)
            problems.append(problem)
            continue
        raw = raw.rstrip(b"\r")
        try:
            texts.append(raw.decode("utf-8"))
            problems.append(None)
        except UnicodeDecodeError:
            texts.append(raw.decode("utf-8", errors="replace"))
            problems.append("invalid UTF-8")
    return texts, problems


def _read_chunks(
    fh: IO[bytes], first_line: int, budget: int | None, skipped: int = 0
) -> Iterator[tuple[int, str, str | None]]:
    """:func:`_read_lines` of an uncompressed file, a chunk at a time: the same lines, numbers and
    problems, without a ``readline`` and a decode per line (a sixth of a CSV task's time, profiled).

    With ``budget``, only the lines starting within that many bytes of the position (``skipped``:
    bytes of a byte-order mark already read past, counted in ``budget``): a chunk is
    cut after the line holding byte ``budget - 1``. A line longer than :data:`MAX_LINE_BYTES`
    with no end in sight is drained without being held, as :func:`_read_lines` does.
    """
    line_no = first_line - 1
    at = skipped  # offset of data[0] from the start position (past a byte-order mark ``skipped``)
    data = b""
    while budget is None or at < budget:
        more = fh.read(_CHUNK_BYTES)
        data = data + more if data else more
        if not data:
            return
        last = not more
        cut = data.rfind(b"\n")
        if budget is not None and cut >= budget - at:  # the range ends in this chunk
            cut = data.find(b"\n", budget - 1 - at)
            last = True
        elif last:
            # The file's last line has no newline: it is a line if it starts within the range.
            if cut < len(data) - 1 and (budget is None or cut + 1 < budget - at):
                cut = len(data)
        elif cut < 0:
            if len(data) <= MAX_LINE_BYTES:
                continue
            length = len(data)  # a line over the limit: drain the rest, keep its head
            while (tail := fh.read(_CHUNK_BYTES)) and (end := tail.find(b"\n")) < 0:
                length += len(tail)
            line_no += 1
            if tail:
                length += end
            yield line_no, _head(data), f"line too long ({length} bytes)"
            if not tail:
                return
            at += length + 1
            data = tail[end + 1:]
            continue
        if cut >= 0:
            lines = decode_lines(data[:cut])
            if type(lines) is list:
                yield from zip(count(line_no + 1), lines, repeat(None))
                line_no += len(lines)
            else:
                texts, problems = lines
                yield from zip(count(line_no + 1), texts, problems)
                line_no += len(texts)
        if last:
            return
        at += cut + 1
        data = data[cut + 1:]


def count_line_starts(path: str | Path, start: int, end: int, chunk: int = 8 << 20) -> int:
    """How many lines of an uncompressed file start in ``[start, end)``: the lines
    :func:`open_lines` yields for that range, counted from newline bytes alone (``bytes.count``
    runs at memory speed, parsing does not), so that a later range knows its first line number.
    """
    n = 1 if start == 0 and end > 0 else 0
    # A line starts at 0 and one byte after every newline; those in range follow newlines in [start-1, end-1).
    pos = max(start - 1, 0)
    stop = end - 1
    with open(path, "rb") as fh:
        fh.seek(pos)
        while pos < stop:
            data = fh.read(min(chunk, stop - pos))
            if not data:
                break
            n += data.count(b"\n")
            pos += len(data)
    return n


def _compressed(magic: bytes) -> bool:
    """Whether a file's first three bytes are gzip's or bz2's magic."""
    return magic[:2] == b"\x1f\x8b" or magic == b"BZh"


def _sample(path: str | Path, n: int) -> tuple[list[str], int]:
    """First ``n`` clean non-empty lines, and how many lines were unreadable (binary, bad UTF-8)."""
    lines: list[str] = []
    bad = 0
    for _, text, problem in open_lines(path):
        if problem is not None or "\x00" in text:
            bad += 1
            if bad >= n:
                break
            continue
        if not text or text.isspace():
            continue
        lines.append(text)
        if len(lines) >= n:
            break
    return lines, bad


def iter_input_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (recursively, sorted; hidden files and labels.csv skipped)."""
    found: list[Path] = []
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise StageInputError(f"input path does not exist: {p}")
        if p.is_file():
            found.append(p)
            continue
        for child in sorted(p.rglob("*")):
            rel = child.relative_to(p).parts
            if (
                child.is_file()
                and not any(part.startswith(".") for part in rel)
                and child.name != "labels.csv"
            ):
                found.append(child)
    if not found:
        raise StageInputError(f"no input files under {', '.join(map(str, paths))}")
    return found


def _majority(lines: Sequence[str], test: Callable[[str], Any]) -> bool:
    return bool(lines) and sum(1 for line in lines if test(line)) * 2 > len(lines)


def _file_year(path: Path) -> int:
    try:
        return dt.datetime.fromtimestamp(os.stat(path).st_mtime, _UTC).year
    except (OSError, ValueError, OverflowError):
        return dt.datetime.now(_UTC).year


def _file_clock(path: Path, opts: FormatOptions) -> _Clock:
    """The clock of one file: the options' zone, and their year or else the file's mtime year."""
    return _Clock(opts.tz, opts.year or _file_year(path))


# ------------------------------------------------------------------------------ parsers and formats


class LineParser:
    """Parses the lines of one file. ``parse(text, line_no)`` returns an event dict, or None for
    a header line (quarantined with :data:`HEADER_REASON`), or raises ParseError whose text is
    the reason. ``line_no`` is the physical line number (synthetic CSV times use it).

    Parsers are stateful per file (Zeek and CSV headers, the year of year-less formats), so
    :meth:`LogFormat.make_parser` builds a fresh one for every file.
    """

    format: str = ""
    #: Whether a line parses the same whatever lines of the file came before it (all the parser's
    #: state comes from the file's head, read when it is made), so that a large file may be read
    #: by several tasks, each from its own byte range (:func:`open_lines`). False, the safe
    #: default, where earlier lines change the state: Zeek and CSV headers, and the year of
    #: year-less times, which moves on at a December -> January step.
    splittable: bool = False

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any] | None:
        raise NotImplementedError

    def parse_block(self, texts: Sequence[str]) -> EventColumns | None:
        """Events of several clean, non-empty lines at once, as columns, for the lines whose rows
        :meth:`parse` would give exactly (and :func:`loganomaly.ingest.formats.check_int_ranges`
        would pass); the caller then parses the other lines one by one with :meth:`parse`, in the
        block's order (Zeek and CSV parsers take the data lines after a header line of the block
        under the state that header gives, which :meth:`parse` sets when it reaches it). None:
        no block path (the default), every line goes to :meth:`parse`.
        """
        return None


@dataclass(slots=True)
class EventColumns:
    """Events built column-wise by :meth:`LineParser.parse_block`.

    ``positions``: the indices, into the block's lines, of the lines these events are (ascending
    within each shape, not overall). ``arrays``: event column name -> Arrow array of the
    ``events`` table's type, one value per position; columns not given are null.
    """

    positions: list[int]
    arrays: dict[str, Any]


@dataclass(slots=True)
class ParsedRecord:
    """One line's outcome: an event, or a quarantine record with the reason."""

    kind: Literal["event", "quarantine"]
    line_no: int
    data: dict[str, Any]


class LogFormat(ABC):
    """One log format: how to recognise its files and how to parse their lines.

    An instance is registered in :data:`loganomaly.registry.LOG_FORMATS` under :attr:`name`
    (the ``format`` option and the ``format`` column of its events). Detection asks every
    registered format for a score and never asks which format it holds. A worked example is in
    the README ("A new log format"); ``tests/ingest/formats/toy.py`` is one defined outside the
    package.
    """

    name: str = ""

    @abstractmethod
    def detect(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> float:
        """How surely the file is in this format: 0 (no) up to :data:`CERTAIN` (a bool is fine too).

        Args:
            path: the file (its name may be a hint).
            lines: its first clean non-empty lines (``opts.sample_lines`` of them at most; never empty).
            opts: the options of the file (``format`` is None: detection is running).
        """

    def variant(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> str | None:
        """Which variant of the format the file is, once the format is chosen (forced or detected);
        :class:`loganomaly.ingest.formats.detect.Detection` reports it. None for formats without
        variants (Loghub's are its line patterns).

        Raises:
            ParseError: no variant fits (every line is then quarantined with this reason).
        """
        return None

    def check_options(self, opts: FormatOptions) -> None:
        """Validate (and normalise) the options this format owns; called on every new FormatOptions
        for every registered format, so a wrong value fails when the config is read.

        Raises:
            ConfigError: an option value this format cannot use.
        """
        return None  # most formats own no option of their own

    @abstractmethod
    def make_parser(
        self, path: Path, opts: FormatOptions, sample: Sequence[str], variant: str | None = None
    ) -> LineParser:
        """A fresh parser for ``path``.

        Args:
            sample: the file's first clean non-empty lines (may be empty for a forced format).
            variant: what :meth:`variant` said (None if the caller's Detection has none).

        Raises:
            ParseError: the file cannot be read in this format (all its lines are quarantined).
            ConfigError: the options contradict the file.
        """
