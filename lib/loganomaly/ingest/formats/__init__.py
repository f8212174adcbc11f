"""Spark-free reading and parsing of log files into event dicts, one module per log format.

Spark calls :func:`parse_file` from its tasks (see :mod:`loganomaly.ingest.stage`); everything here
unit-tests without a JVM. The contract that makes ingestion loss-free: :func:`parse_file` yields
exactly one record per physical line of the file, either an event or a quarantine record with
its reason, whatever the bytes are (binary garbage, invalid UTF-8, a 1 MB line, a truncated
compressed file). Header lines of formats that have them (Zeek ``#...`` lines, a CSV header row)
are physical lines too: they come back as quarantine records with reason
:data:`HEADER_REASON`, so ``lines == events + quarantined`` always holds and nothing is hidden.

Formats are the entries of :data:`loganomaly.registry.LOG_FORMATS`, detected per file from its
first lines and its name (:func:`detect`), or forced through :class:`FormatOptions`:

``json``    JSON lines, nested and varying schemas; Zeek JSON logs of any type map to columns.
``zeek``    Zeek tab-separated logs (``#separator``/``#fields``/``#types`` headers), any log type.
``syslog``  RFC 5424, and RFC 3164 with or without ``<PRI>`` (``/var/log/messages`` style).
``access``  Apache/Nginx common and combined access logs.
``loghub``  Application logs through logpai-style line patterns (``loghub.LOGHUB_PATTERNS``).
``csv``     Tables: metric time series with a header, or headerless rows with given columns.

A new format is a module with a :class:`LogFormat` and one line in the registry (or a
``LOG_FORMATS.register`` call). Shared pieces: :mod:`.base` (options, reading, the protocols),
:mod:`.timestamps`, :mod:`.values`, :mod:`.records` (the JSON/Zeek record mapping), :mod:`.detect`.

Event dicts carry a subset of :data:`loganomaly.lake.schemas.EVENT_COLUMNS`; ingest adds the rest
(event id, date, file, line number, run id, source) and templates are mined later.

Speed matters (tens of thousands of lines per second per core end to end), hence: patterns are
compiled once per file (and cached across files), timestamps go through a small compiled subset
of strptime (:class:`TimeFormat`) with a one-entry cache of the last timestamp text, and constant
tables are module-level.
"""

from __future__ import annotations

from loganomaly.ingest.formats.base import (
    HEADER_REASON,
    MAX_LINE_BYTES,
    TIMESTAMP_FIELDS,
    EventColumns,
    FormatOptions,
    LineParser,
    LogFormat,
    ParsedRecord,
    count_line_starts,
    is_utf16,
    iter_input_files,
    open_lines,
    read_whole,
)
from loganomaly.ingest.formats.detect import (
    Detection,
    ParsedBlock,
    detect,
    detect_format,
    make_parser,
    parse_file,
    parse_file_blocks,
    registered_formats,
)
from loganomaly.ingest.formats.timestamps import TimeFormat, parse_epoch, parse_timestamp
from loganomaly.ingest.formats.values import normalize_level

__all__ = [
    "HEADER_REASON",
    "MAX_LINE_BYTES",
    "TIMESTAMP_FIELDS",
    "Detection",
    "EventColumns",
    "FormatOptions",
    "LineParser",
    "LogFormat",
    "ParsedBlock",
    "ParsedRecord",
    "TimeFormat",
    "count_line_starts",
    "detect",
    "detect_format",
    "is_utf16",
    "iter_input_files",
    "make_parser",
    "normalize_level",
    "open_lines",
    "parse_epoch",
    "parse_file",
    "parse_file_blocks",
    "parse_timestamp",
    "read_whole",
    "registered_formats",
]
