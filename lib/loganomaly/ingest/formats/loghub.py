"""``loghub``: application logs through logpai-style line patterns (:data:`LOGHUB_PATTERNS`).

The 16 Loghub systems are built in; a custom pattern (``<Date> <Time> <Level>: <Content>``) reads
anything else line-shaped. The pattern is this format's variant: detection picks the built-in
pattern matching most sampled lines, preferring the system the file is named after.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from loganomaly.errors import ConfigError, ParseError
from loganomaly.ingest.formats import loghub_columns
from loganomaly.ingest.formats.base import (
    POSSIBLE,
    STRONG,
    EventColumns,
    FormatOptions,
    LineParser,
    LogFormat,
    _file_clock,
    _majority,
)
from loganomaly.ingest.formats.timestamps import _EPOCH, TimeFormat, _Clock, parse_timestamp
from loganomaly.ingest.formats.values import normalize_level


@dataclass(frozen=True)
class LoghubPattern:
    """A named application log format: a logpai-style line pattern and how to read its fields.

    ``time_fields`` are joined by a space and parsed with ``time_format`` (a :class:`TimeFormat`;
    ``"epoch"`` for epoch seconds); ``frac_field`` adds the microseconds found after the last
    ``.`` of that field (BGL: exact epoch seconds in UTC, sub-seconds from its local-time
    column). ``entity`` lists fields tried in order; ``entity_regex`` first looks for an id in
    the content (HDFS block ids, the unit its anomalies are labelled on). ``label_field``: ``-``
    means normal (label None), anything else is the alert category.
    """

    name: str
    pattern: str
    time_fields: tuple[str, ...]
    time_format: str
    entity: tuple[str, ...] = ()
    level_field: str | None = None
    component_field: str | None = None
    label_field: str | None = None
    entity_regex: str | None = None
    frac_field: str | None = None


LOGHUB_PATTERNS: dict[str, LoghubPattern] = {
    p.name: p
    for p in (
        LoghubPattern(
            "Android",
            r"<Date:\d{2}-\d{2}> <Time:\d{2}:\d{2}:\d{2}\.\d{3}> <Pid:\d+> <Tid:\d+> <Level:[VDIWEFA]> <Component:.*?>: <Content>",
            ("Date", "Time"), "%m-%d %H:%M:%S.%f", ("Pid",), "Level", "Component",
        ),
        LoghubPattern(
            "Apache",
            r"\[<Time:[A-Z][a-z]{2} [A-Z][a-z]{2} \d{2} \d{2}:\d{2}:\d{2} \d{4}>\] \[<Level:[a-z]+>\] <Content>",
            ("Time",), "%a %b %d %H:%M:%S %Y", (), "Level", None,
        ),
        LoghubPattern(
            "BGL",
            r"<Label:\S+> <Timestamp:\d+> <Date:\d{4}\.\d{2}\.\d{2}> <Node:\S+> "
            r"<Time:\d{4}-\d{2}-\d{2}-\d{2}\.\d{2}\.\d{2}\.\d+> <NodeRepeat:\S+> <Type:\S+> <Component:\S+> <Level:\S+> <Content>",
            ("Timestamp",), "epoch", ("Node",), "Level", "Component", "Label", frac_field="Time",
        ),
        LoghubPattern(
            "HDFS",
            r"<Date:\d{6}> <Time:\d{6}> <Pid:\d+> <Level:[A-Z]+> <Component:\S+?>: <Content>",
            ("Date", "Time"), "%y%m%d %H%M%S", ("Pid",), "Level", "Component", entity_regex=r"blk_-?\d+",
        ),
        LoghubPattern(
            "HPC",
            r"<LogId:\d+> <Node:\S+> <Component:\S+> <State:\S+> <Time:\d{9,10}> <Flag:-?\d+> <Content>",
            ("Time",), "epoch", ("Node",), None, "Component",
        ),
        LoghubPattern(
            "Hadoop",
            r"<Date:\d{4}-\d{2}-\d{2}> <Time:\d{2}:\d{2}:\d{2},\d{3}> <Level:[A-Z]+> \[<Process:.*?>\] <Component:\S+?>: <Content>",
            ("Date", "Time"), "%Y-%m-%d %H:%M:%S,%f", ("Component",), "Level", "Component",
        ),
        LoghubPattern(
            "HealthApp",
            r"<Time:\d{8}-\d{1,2}:\d{1,2}:\d{1,2}:\d{1,3}>\|<Component:[^|]*>\|<Pid:\d+>\|<Content>",
            ("Time",), "%Y%m%d-%H:%M:%S:%f", ("Component",), None, "Component",
        ),
        LoghubPattern(
            "Linux",
            r"<Month:[A-Z][a-z]{2}> <Date:\d{1,2}> <Time:\d{2}:\d{2}:\d{2}> <Host:\S+> <Component:[^\[:]*?>(\[<PID:\d+>\])?: <Content>",
            ("Month", "Date", "Time"), "%b %d %H:%M:%S", ("Host",), None, "Component",
        ),
        LoghubPattern(
            "Mac",
            r"<Month:[A-Z][a-z]{2}> <Date:\d{1,2}> <Time:\d{2}:\d{2}:\d{2}> <User:\S+> <Component:.*?>\[<PID:\d+>\]"
            r"( \(<Address:[^)]*>\))?: <Content>",
            ("Month", "Date", "Time"), "%b %d %H:%M:%S", ("User",), None, "Component",
        ),
        LoghubPattern(
            "OpenSSH",
            r"<Date:[A-Z][a-z]{2}> <Day:\d{1,2}> <Time:\d{2}:\d{2}:\d{2}> <Host:\S+> <Component:sshd>\[<Pid:\d+>\]: <Content>",
            ("Date", "Day", "Time"), "%b %d %H:%M:%S", ("Host",), None, "Component",
        ),
        LoghubPattern(
            "OpenStack",
            r"<Logrecord:\S+> <Date:\d{4}-\d{2}-\d{2}> <Time:\d{2}:\d{2}:\d{2}\.\d{3}> <Pid:\d+> <Level:[A-Z]+> "
            r"<Component:\S+> \[<ADDR:[^\]]*>\] <Content>",
            ("Date", "Time"), "%Y-%m-%d %H:%M:%S.%f", ("Component",), "Level", "Component",
            entity_regex=r"(?<=\[instance: )[0-9a-f-]{36}",
        ),
        LoghubPattern(
            "Proxifier",
            r"\[<Time:\d{2}\.\d{2} \d{2}:\d{2}:\d{2}>\] <Program:.*?> - <Content>",
            ("Time",), "%m.%d %H:%M:%S", ("Program",), None, "Program",
        ),
        LoghubPattern(
            "Spark",
            r"<Date:\d{2}/\d{2}/\d{2}> <Time:\d{2}:\d{2}:\d{2}> <Level:[A-Z]+> <Component:\S+?>: <Content>",
            ("Date", "Time"), "%y/%m/%d %H:%M:%S", ("Component",), "Level", "Component",
        ),
        LoghubPattern(
            "Thunderbird",
            r"<Label:\S+> <Timestamp:\d+> <Date:\d{4}\.\d{2}\.\d{2}> <User:\S+> <Month:[A-Z][a-z]{2}> <Day:\d{1,2}> "
            r"<Time:\d{2}:\d{2}:\d{2}> <Location:\S+> <Component:.*?>(\[<PID:\d+>\])?: <Content>",
            ("Timestamp",), "epoch", ("User",), None, "Component", "Label",
        ),
        LoghubPattern(
            "Windows",
            r"<Date:\d{4}-\d{2}-\d{2}> <Time:\d{2}:\d{2}:\d{2}>, <Level:[A-Za-z]+> <Component:\S+> <Content>",
            ("Date", "Time"), "%Y-%m-%d %H:%M:%S", ("Component",), "Level", "Component",
        ),
        LoghubPattern(
            "Zookeeper",
            r"<Date:\d{4}-\d{2}-\d{2}> <Time:\d{2}:\d{2}:\d{2},\d{3}> - <Level:[A-Z]+> \[<Node:.*?>:"
            r"<Component:[^:@\s]*>@<Id:\d+>\] - <Content>",
            ("Date", "Time"), "%Y-%m-%d %H:%M:%S,%f", ("Component",), "Level", "Component",
        ),
    )
}  # fmt: skip

_FIELD_TOKEN = re.compile(r"(<[A-Za-z_][A-Za-z0-9_]*(?::[^<>]+)?>)")


class CompiledPattern(NamedTuple):
    """A line pattern compiled to one regex; ``fields`` are its named fields in order."""

    regex: re.Pattern[str]
    fields: tuple[str, ...]
    specificity: int


@functools.lru_cache(maxsize=128)
def compile_pattern(pattern: str) -> CompiledPattern:
    """logpai-style ``<Field>`` pattern -> one anchored regex (cached).

    As in logpai's ``generate_logformat_regex``: literal text between fields is a regex fragment
    whose runs of spaces match any whitespace, ``<Content>`` takes the rest of the line and other
    fields match lazily. ``<Field:regex>`` constrains a field (faster and more specific, which
    is what lets detection tell formats apart). Specificity (for tie-breaking in detection)
    counts constrained fields and literal characters.
    """
    parts = _FIELD_TOKEN.split(pattern)
    regex_parts: list[str] = []
    names: list[str] = []
    specificity = 0
    for i, part in enumerate(parts):
        if i % 2 == 0:
            specificity += len(part.replace(" ", ""))
            regex_parts.append(re.sub(" +", r"\\s+", part))
            continue
        name, _, constraint = part[1:-1].partition(":")
        if name in names:
            raise ConfigError(f"pattern field <{name}> appears twice in {pattern!r}")
        names.append(name)
        if name == "Content":
            regex_parts.append(f"(?P<{name}>.*)")
        elif constraint:
            specificity += 3
            regex_parts.append(f"(?P<{name}>{constraint})")
        else:
            regex_parts.append(f"(?P<{name}>.*?)")
    if not names:
        raise ConfigError(f"pattern {pattern!r} has no <Field>; e.g. '<Date> <Time> <Level>: <Content>'")
    try:
        regex = re.compile("^" + "".join(regex_parts) + "$", re.DOTALL)
    except re.error as exc:
        raise ConfigError(f"pattern {pattern!r} is not a valid regex: {exc}") from None
    return CompiledPattern(regex, tuple(names), specificity)


_DEFAULT_ENTITY_FIELDS = ("Node", "Host", "host", "User", "Pid", "PID", "Program", "Component")


class LoghubParser(LineParser):
    """Application log lines through a named (:data:`LOGHUB_PATTERNS`) or custom line pattern.

    Content -> message; the pattern's time fields -> ts (zone-less times are read in
    ``FormatOptions.timezone`` or UTC, year-less ones get ``FormatOptions.year`` or the file's
    mtime year); entity, level, component and label fields as the pattern says (options override
    entity, label, level and the time recipe); every other field -> attributes.
    """

    format = "loghub"

    def __init__(self, opts: FormatOptions, clock: _Clock, pattern: str) -> None:
        self.opts = opts
        self.clock = clock
        spec = LOGHUB_PATTERNS.get(pattern)
        compiled = compile_pattern(spec.pattern if spec else pattern)
        self.regex = compiled.regex
        fields = compiled.fields
        self.name = spec.name if spec else "custom"
        if opts.timestamp_fields:
            time_fields: tuple[str, ...] = tuple(opts.timestamp_fields)
        elif spec:
            time_fields = spec.time_fields
        else:
            time_fields = tuple(f for f in ("Date", "Day", "Time", "Timestamp") if f in fields)
        missing = [f for f in time_fields if f not in fields]
        if missing or not time_fields:
            raise ConfigError(
                f"pattern {pattern!r} has no time field {missing or ''}; "
                f"set timestamp_fields to some of {list(fields)}"
            )
        self.time_fields = time_fields
        self.time_format: TimeFormat | None = None
        if opts.timestamp_format:
            self.time_format = TimeFormat.compile(opts.timestamp_format)
        elif spec and not opts.timestamp_fields:
            self.time_format = TimeFormat.compile(spec.time_format)
        self.frac_field = spec.frac_field if spec and not opts.timestamp_fields else None
        # A year-less time format carries the year from line to line (see LineParser.splittable).
        self.splittable = self.time_format is None or self.time_format.has_year
        if opts.entity_field:
            if opts.entity_field not in fields:
                raise ConfigError(
                    f"entity_field {opts.entity_field!r} is not a field of the pattern; valid: {list(fields)}"
                )
            self.entity_fields: tuple[str, ...] = (opts.entity_field,)
        elif spec:
            self.entity_fields = spec.entity
        else:
            self.entity_fields = tuple(f for f in _DEFAULT_ENTITY_FIELDS if f in fields)[:1]
        self.entity_regex = (
            re.compile(spec.entity_regex) if spec and spec.entity_regex and not opts.entity_field else None
        )
        self.level_field = opts.level_field or (
            spec.level_field if spec else ("Level" if "Level" in fields else None)
        )
        self.component_field = (
            spec.component_field if spec else ("Component" if "Component" in fields else None)
        )
        self.label_field = opts.label_field or (
            spec.label_field if spec else ("Label" if "Label" in fields else None)
        )
        for what, name in (("level_field", self.level_field), ("label_field", self.label_field)):
            if name is not None and name not in fields:
                raise ConfigError(f"{what} {name!r} is not a field of the pattern; valid: {list(fields)}")
        used = {*time_fields, "Content", self.level_field, self.component_field, self.label_field}
        self.attr_fields = tuple(f for f in fields if f not in used)
        self._last_time: str | None = None
        self._last_ts = _EPOCH
        self._plan = loghub_columns.plan(self)

    def parse_block(self, texts: Sequence[str]) -> EventColumns | None:
        """The lines :mod:`.loghub_columns` maps in Arrow (patterns and options it has a plan
        for); None where it has none, and every line goes to :meth:`parse`."""
        return None if self._plan is None else loghub_columns.block(self._plan, texts, self)

    def parse(self, text: str, line_no: int = 0) -> dict[str, Any]:
        match = self.regex.match(text)
        if match is None:
            raise ParseError(f"line does not match the {self.name} pattern")
        groups = match.groupdict()
        tf = self.time_fields
        time_text = groups[tf[0]] if len(tf) == 1 else " ".join(groups[f] or "" for f in tf)
        if time_text is None:
            raise ParseError("empty time field")
        if time_text == self._last_time:
            ts = self._last_ts
        else:
            ts = (
                self.time_format.parse(time_text, self.clock)
                if self.time_format
                else parse_timestamp(time_text, self.clock.tz)
            )
            self._last_time, self._last_ts = time_text, ts
        if self.frac_field is not None:
            frac = groups[self.frac_field].rpartition(".")[2]
            if frac.isdigit():
                ts = ts.replace(microsecond=int(frac[:6].ljust(6, "0")))
        content = groups["Content"] or ""
        entity = None
        entity_from = None
        if self.entity_regex is not None:
            found = self.entity_regex.search(content)
            if found is not None:
                entity = found.group(0)
        if entity is None:
            for name in self.entity_fields:
                value = groups[name]
                if value:
                    entity, entity_from = value, name
                    break
        label = None
        if self.label_field is not None:
            value = groups[self.label_field]
            label = None if value in (None, "-", "") else value
        attributes = {
            f: v for f in self.attr_fields if f != entity_from and (v := groups[f]) is not None and v != ""
        }
        return {
            "ts": ts,
            "format": "loghub",
            "entity": entity if entity is not None else self.opts.default_entity,
            "level": normalize_level(groups[self.level_field]) if self.level_field else "info",
            "component": groups[self.component_field] if self.component_field else None,
            "message": content,
            "attributes": attributes,
            "label": label,
        }


def _name_hint(path: Path) -> str | None:
    """A Loghub system named by the file (``HDFS_2k.log``, ``openssh.log.gz``), if any."""
    stem = path.name.lower()
    for name in sorted(LOGHUB_PATTERNS, key=len, reverse=True):
        if stem.startswith(name.lower()):
            return name
    return None


def best_loghub_pattern(lines: Sequence[str], prefer: str | None = None) -> tuple[str | None, int]:
    """The built-in pattern matching most ``lines`` (ties -> more specific), and its match count.

    A line counts only if its time fields also parse, so a pattern that happens to fit the
    shape of a foreign line does not win.
    """
    best: tuple[int, int, int] = (0, 0, 0)
    best_name: str | None = None
    for name, spec in LOGHUB_PATTERNS.items():
        compiled = compile_pattern(spec.pattern)
        fmt = TimeFormat.compile(spec.time_format)
        clock = _Clock(None, 2000)
        hits = 0
        for line in lines:
            match = compiled.regex.match(line)
            if match is None:
                continue
            try:
                fmt.parse(" ".join(match[f] for f in spec.time_fields), clock)
            except ParseError:
                continue
            hits += 1
        score = (hits, 1 if name == prefer else 0, compiled.specificity)
        if hits and score > best:
            best, best_name = score, name
    return best_name, best[0]


def _no_pattern_matches() -> ParseError:
    return ParseError(f"no built-in loghub pattern matches (known: {', '.join(LOGHUB_PATTERNS)})")


class LoghubFormat(LogFormat):
    """Loghub systems and custom line patterns; the pattern is the variant.

    Detection: the user's own pattern (``FormatOptions.pattern``) matching most sampled lines, or a
    Loghub system named by the file whose pattern matches half of them, is strong evidence (the
    name counts as evidence: that is how ``Linux_2k.log`` is Loghub Linux, not RFC 3164 syslog);
    otherwise the built-in pattern matching most lines is a possible match, which wins over CSV
    because HealthApp's ``|``-separated lines look like a table but are a log format.
    """

    name = "loghub"

    def check_options(self, opts: FormatOptions) -> None:
        if opts.pattern is not None:
            if not isinstance(opts.pattern, str) or not opts.pattern.strip():
                raise ConfigError("pattern must be a non-empty string")
            if opts.pattern not in LOGHUB_PATTERNS:
                if "<" not in opts.pattern:
                    raise ConfigError(
                        f"unknown loghub pattern {opts.pattern!r}; "
                        f"valid names: {', '.join(LOGHUB_PATTERNS)}, "
                        "or a custom pattern such as '<Date> <Time> <Level> <Component>: <Content>'"
                    )
                compile_pattern(opts.pattern)

    @staticmethod
    def _custom_pattern_fits(lines: Sequence[str], opts: FormatOptions) -> bool:
        return bool(
            opts.pattern
            and opts.pattern not in LOGHUB_PATTERNS
            and _majority(lines, compile_pattern(opts.pattern).regex.match)
        )

    def detect(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> float:
        if self._custom_pattern_fits(lines, opts):
            return STRONG
        hint = _name_hint(path)
        name, hits = best_loghub_pattern(lines, hint)
        if name is None:
            return 0.0
        # The file's name is evidence too: half the sample suffices.
        if hint is not None and hits * 2 >= len(lines):
            return STRONG
        return POSSIBLE if hits * 2 > len(lines) else 0.0

    def variant(self, path: Path, lines: Sequence[str], opts: FormatOptions) -> str | None:
        """The pattern: the one given (when the format is forced) or the one that fits (detected)."""
        if opts.format == self.name:
            if opts.pattern:
                return opts.pattern
        elif self._custom_pattern_fits(lines, opts):
            return opts.pattern
        name, _ = best_loghub_pattern(lines, _name_hint(path))
        if name is None:
            raise _no_pattern_matches()
        return name

    def make_parser(
        self, path: Path, opts: FormatOptions, sample: Sequence[str], variant: str | None = None
    ) -> LineParser:
        pattern = variant or opts.pattern
        if pattern is None:
            pattern, _ = best_loghub_pattern(sample, _name_hint(path))
            if pattern is None:
                raise _no_pattern_matches()
        return LoghubParser(opts, _file_clock(path, opts), pattern)


FORMAT = LoghubFormat()
