"""How the template miner is set up: its typed config, the masking rules and per-system presets.

Masking replaces the values a message varies in (addresses, ids, numbers, paths) by named tokens
before Drain sees it, so ``Accepted password for root from 10.0.0.1 port 22`` and the same line from
another address fall into one template. The presets were chosen on the Loghub 2k samples
(``bench/templates.py``); :class:`TemplateConfig` validates a user's own rules (a regex that cannot
compile, or a back-reference that would make masking order-dependent, is a ConfigError).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loganomaly.errors import ConfigError

log = logging.getLogger(__name__)

# The regex parser of the standard library (private; only used to speed masking up, see _first_chars).
_sre_parser: Any
_sre_constants: Any
try:
    _sre_parser = importlib.import_module("re._parser")
    _sre_constants = importlib.import_module("re._constants")
except ImportError:  # Python 3.10
    _sre_parser = importlib.import_module("sre_parse")
    _sre_constants = importlib.import_module("sre_constants")

#: Match strategies of drain3's ``match`` (see the module docstring for the choice).
MATCH_STRATEGIES = ("never", "fallback", "always")
_MASK_NAME = re.compile(r"[A-Za-z0-9_]+|\*")
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")

# Building blocks of the default masks. ``_L``/``_R`` keep a mask from starting or ending inside a word.
_L = r"(?<![A-Za-z0-9])"
_R = r"(?![A-Za-z0-9])"
_H = r"[0-9A-Fa-f]"
_IPV4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
_H4 = _H + "{1,4}"
_IPV6 = (
    rf"(?:(?:{_H4}:){{7}}{_H4}"  # full form
    rf"|(?:{_H4}(?::{_H4})*)?::(?:{_H4}(?::{_H4})*)?(?:(?<=:){_IPV4})?"  # compressed, optional v4 tail
    r")"
)

#: Default masking rules ``(regex, mask name)`` for network and system logs, in priority order (at one
#: position the earlier rule wins). Each masked value becomes a param; the token reads ``<NAME>``.
DEFAULT_MASKING: tuple[tuple[str, str], ...] = (
    (rf"{_L}{_H}{{8}}-{_H}{{4}}-{_H}{{4}}-{_H}{{4}}-{_H}{{12}}{_R}", "UUID"),
    (r"(?<![A-Za-z0-9_])blk_-?\d+" + _R, "BLK"),
    (rf"{_L}{_H}{{2}}(?:[:-]{_H}{{2}}){{5}}{_R}", "MAC"),
    (rf"\[{_IPV6}\](?::\d{{1,5}})?{_R}", "IP"),  # [v6]:port
    (rf"{_L}{_IPV4}(?::\d{{1,5}})?{_R}", "IP"),  # v4 with optional port
    (rf"(?<![A-Za-z0-9:.]){_IPV6}(?![A-Za-z0-9:.])", "IP"),
    (rf"{_L}0[xX]{_H}+{_R}", "HEX"),
    (r"(?<![^\s=:'\"(\[])(?:/[\w.@~+-]+){2,}/?(?![\w/])", "PATH"),
    (rf"{_L}[-+]?\d+(?:\.\d+)?{_R}", "NUM"),
)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"templates: {message}")


@dataclass(frozen=True)
class TemplateConfig:
    """Settings of the Drain miner and of masking; part of the saved state (and of its version).

    Attributes:
        depth: depth of Drain's prefix tree (>= 3): root, token count, then ``depth - 2`` leading tokens
            route a message to its candidate clusters. Deeper separates templates that differ early.
        sim_th: similarity threshold in (0, 1]: a message joins a cluster when at least this fraction of
            the template's constant tokens is equal; lower merges more.
        max_children: most children of an inner tree node before tokens go to a ``<*>`` child (>= 2).
        max_clusters: most clusters kept while learning (LRU eviction), ``None`` for unlimited.
        extra_delimiters: strings split like whitespace (after masking), e.g. ``("=", ",")``.
        masking: ``(regex, mask name)`` rules in priority order; a mask name is ``[A-Za-z0-9_]+`` (the
            token reads ``<NAME>``) or ``*`` (the token reads ``<*>``, a Drain wildcard, as the logpai
            benchmark does). Rules must not match the empty string nor use numbered back-references.
        parametrize_numeric_tokens: route tokens containing a digit to the ``<*>`` branch of the tree.
        match_strategy: drain3 ``full_search_strategy`` used by :meth:`Templates.match`.
        nearest_min_similarity: a message no template fits exactly goes to its most similar known
            template when their token similarity (see :meth:`Templates.match`) is at least this, in
            (0, 1]; 0 (the default) turns this off and such a message is unknown. Why: a later
            release of the same software reworded or added a variable part, and that line is the
            same event to a model, not a new anomaly.
    """

    depth: int = 4
    sim_th: float = 0.4
    max_children: int = 100
    max_clusters: int | None = None
    extra_delimiters: tuple[str, ...] = ()
    masking: tuple[tuple[str, str], ...] = DEFAULT_MASKING
    parametrize_numeric_tokens: bool = True
    match_strategy: str = "fallback"
    nearest_min_similarity: float = 0.0

    def __post_init__(self) -> None:
        # Accept lists (YAML, JSON) but store tuples so the config is hashable and immutable.
        object.__setattr__(self, "extra_delimiters", tuple(self.extra_delimiters))
        try:
            masking = tuple((rule[0], rule[1]) for rule in self.masking if len(rule) == 2)
            _check(len(masking) == len(self.masking), "each masking rule must be a (regex, mask name) pair")
        except (TypeError, IndexError, KeyError):
            raise ConfigError("templates: masking must be a list of (regex, mask name) pairs") from None
        object.__setattr__(self, "masking", masking)
        self._validate()

    def _validate(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        _check(is_int(self.depth) and self.depth >= 3, f"depth must be an integer >= 3, got {self.depth!r}")
        _check(
            isinstance(self.sim_th, (int, float)) and not isinstance(self.sim_th, bool) and 0 < self.sim_th <= 1,
            f"sim_th must be a number in (0, 1], got {self.sim_th!r}",
        )
        _check(is_int(self.max_children) and self.max_children >= 2,
               f"max_children must be an integer >= 2, got {self.max_children!r}")
        _check(self.max_clusters is None or (is_int(self.max_clusters) and self.max_clusters >= 1),
               f"max_clusters must be null or an integer >= 1, got {self.max_clusters!r}")
        _check(isinstance(self.parametrize_numeric_tokens, bool),
               f"parametrize_numeric_tokens must be true or false, got {self.parametrize_numeric_tokens!r}")
        _check(self.match_strategy in MATCH_STRATEGIES,
               f"match_strategy must be one of {', '.join(MATCH_STRATEGIES)}, got {self.match_strategy!r}")
        _check(isinstance(self.nearest_min_similarity, (int, float)) and not isinstance(self.nearest_min_similarity, bool)
               and 0 <= self.nearest_min_similarity <= 1,
               f"nearest_min_similarity must be a number in [0, 1] (0 = off), got {self.nearest_min_similarity!r}")
        placeholders = []
        for i, (pattern, name) in enumerate(self.masking):
            _check(isinstance(pattern, str) and isinstance(name, str),
                   f"masking rule {i} must be (regex string, mask name string), got {(pattern, name)!r}")
            _check(bool(_MASK_NAME.fullmatch(name)), f"masking rule {i}: mask name {name!r} must match "
                   "[A-Za-z0-9_]+ or be '*'")
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"templates: masking rule {i} ({name}): bad regex {pattern!r}: {e}") from None
            _check(rx.fullmatch("") is None, f"masking rule {i} ({name}): regex {pattern!r} matches the empty string")
            _check(_BACKREF.search(pattern) is None, f"masking rule {i} ({name}): back-references are not "
                   "supported (rules are combined into one regex)")
            placeholders.append(f"<{name}>")
        try:
            combined_mask_regex(self.masking)
        except re.error as e:
            raise ConfigError(f"templates: masking rules cannot be combined (duplicate group names?): {e}") from None
        for d in self.extra_delimiters:
            _check(isinstance(d, str) and d != "" and not d.isspace(),
                   f"extra delimiters must be non-empty, non-blank strings, got {d!r}")
            _check("<" not in d and ">" not in d and not any(d in p for p in placeholders),
                   f"extra delimiter {d!r} would split a mask token like {placeholders[:1] or ['<NAME>']}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists instead of tuples)."""
        d = dataclasses.asdict(self)
        if not self.nearest_min_similarity:
            # Off: the state (and its version) stays what it was before the setting existed.
            del d["nearest_min_similarity"]
        d["extra_delimiters"] = list(self.extra_delimiters)
        d["masking"] = [list(rule) for rule in self.masking]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TemplateConfig:
        """Build from a mapping (YAML profile, JSON state); unknown keys are refused, missing keys default.

        Raises:
            ConfigError: unknown key or invalid value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"templates: config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _check(not unknown, f"unknown config key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> TemplateConfig:
        """Copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def combined_mask_regex(masking: Sequence[tuple[str, str]]) -> re.Pattern[str] | None:
    """All rules in one regex, one named group each, behind a first-character look-ahead when possible.

    The look-ahead (the union of the characters any rule can start with) lets the engine skip most
    positions without trying every alternative: about twice as fast on loghub lines with the default rules.
    """
    if not masking:
        return None
    body = "|".join(f"(?P<m{i}>{pattern})" for i, (pattern, _) in enumerate(masking))
    starts: list[str] = []
    for pattern, _ in masking:
        first = first_chars(pattern)
        if first is None:
            return re.compile(body)
        starts.extend(first)
    return re.compile(f"(?=[{''.join(dict.fromkeys(starts))}])(?:{body})")


def token_local(masking: Sequence[tuple[str, str]]) -> bool:
    """Whether masking a message equals masking each of its space-separated tokens on its own.

    True when no rule can match a space (not even inside a look-around) and none anchors to the
    start or end of the text (``^``, ``$``, ``\\A``, ``\\Z``). Then no match spans two tokens, and at
    a token's edge every look-around and ``\\b`` sees the space as it sees the end of the text: a
    look-around body that would have to match the space fails on both, one that matches empty
    succeeds on both. Each distinct token can then be masked once and its result reused
    (:meth:`loganomaly.ingest.templates.miner._Preprocessor.mask_block`). ``False`` when unsure (a
    construct not handled), which keeps the whole-message pass, always correct. Every built-in
    rule qualifies except two of the Proxifier preset's, whose values hold a space
    (``"1190 bytes (1.16 KB)"``, ``"<5 sec"``).
    """
    try:
        return all(_space_free(list(_sre_parser.parse(pattern))) for pattern, _ in masking)
    except Exception:  # private module of the standard library: never let it break masking
        log.debug("templates: masking rules not known to be token-local", exc_info=True)
        return False


def _space_in_class(items: Any) -> bool | None:
    """Whether a parsed character class (``IN``) holds the space, ``None`` if unknown."""
    c = _sre_constants
    spaces = {c.CATEGORY_SPACE: True, c.CATEGORY_NOT_SPACE: False, c.CATEGORY_DIGIT: False,
              c.CATEGORY_NOT_DIGIT: True, c.CATEGORY_WORD: False, c.CATEGORY_NOT_WORD: True}
    negate, found = False, False
    for op, av in items:
        if op == c.NEGATE:
            negate = True
        elif op == c.LITERAL:
            found = found or av == 32
        elif op == c.RANGE:
            found = found or av[0] <= 32 <= av[1]
        elif op == c.CATEGORY and av in spaces:
            found = found or spaces[av]
        else:
            return None
    return found != negate


def _space_free(items: list[Any]) -> bool:
    """No element of a parsed sequence (look-arounds included) can match a space or an anchor."""
    c = _sre_constants
    repeats = {c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", c.MAX_REPEAT)}
    for op, av in items:
        if op == c.LITERAL:
            ok = av != 32
        elif op == c.NOT_LITERAL:
            ok = av == 32
        elif op == c.IN:
            ok = _space_in_class(av) is False
        elif op == c.AT:
            ok = av in (c.AT_BOUNDARY, c.AT_NON_BOUNDARY)
        elif op in (c.ASSERT, c.ASSERT_NOT):
            ok = _space_free(list(av[1]))
        elif op == c.SUBPATTERN:
            ok = _space_free(list(av[-1]))
        elif op == getattr(c, "ATOMIC_GROUP", None):
            ok = _space_free(list(av))
        elif op in repeats:
            ok = _space_free(list(av[2]))
        elif op == c.BRANCH:
            ok = all(_space_free(list(branch)) for branch in av[1])
        else:  # ANY (``.``), group references, conditionals, what this does not know
            ok = False
        if not ok:
            return False
    return True


def _class_char(code: int) -> str:
    c = chr(code)
    if c.isascii() and c.isalnum():
        return c
    return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def first_chars(pattern: str) -> list[str] | None:
    """Character-class items for the first character any match of ``pattern`` can start with.

    ``None`` when unsure (any character, case-insensitive flags, a rule that may match nothing, a
    construct not handled): the caller then uses no look-ahead, which is always correct.
    """
    try:
        parsed = _sre_parser.parse(pattern)
        if parsed.state.flags & re.IGNORECASE:
            return None
        result = _first_of_sequence(list(parsed))
    except Exception:  # private module of the standard library: never let it break masking
        log.debug("templates: no first-character filter for %r", pattern, exc_info=True)
        return None
    if result is None or result[1]:
        return None
    return result[0]


def _first_of_sequence(items: list[Any]) -> tuple[list[str], bool] | None:
    """(first-character class items, may match empty) of a parsed sequence, ``None`` if unknown."""
    c = _sre_constants
    categories = {c.CATEGORY_DIGIT: r"\d", c.CATEGORY_NOT_DIGIT: r"\D", c.CATEGORY_WORD: r"\w",
                  c.CATEGORY_NOT_WORD: r"\W", c.CATEGORY_SPACE: r"\s", c.CATEGORY_NOT_SPACE: r"\S"}
    repeats = {c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", c.MAX_REPEAT)}
    out: list[str] = []
    for op, av in items:
        first: tuple[list[str], bool] | None
        if op in (c.AT, c.ASSERT, c.ASSERT_NOT):
            first = ([], True)
        elif op == c.LITERAL:
            first = ([_class_char(av)], False)
        elif op == c.IN:
            parts = []
            for iop, iav in av:
                if iop == c.LITERAL:
                    parts.append(_class_char(iav))
                elif iop == c.RANGE:
                    parts.append(f"{_class_char(iav[0])}-{_class_char(iav[1])}")
                elif iop == c.CATEGORY and iav in categories:
                    parts.append(categories[iav])
                else:
                    return None  # negated class, unicode-case tricks: give up
            first = (parts, False)
        elif op == c.SUBPATTERN:
            if av[1] & re.IGNORECASE:
                return None
            first = _first_of_sequence(list(av[-1]))
        elif op == getattr(c, "ATOMIC_GROUP", None):
            first = _first_of_sequence(list(av))
        elif op in repeats:
            sub = _first_of_sequence(list(av[2]))
            first = None if sub is None else (sub[0], av[0] == 0 or sub[1])
        elif op == c.BRANCH:
            parts, empty = [], False
            for branch in av[1]:
                sub = _first_of_sequence(list(branch))
                if sub is None:
                    return None
                parts.extend(sub[0])
                empty = empty or sub[1]
            first = (parts, empty)
        else:
            return None
        if first is None:
            return None
        out.extend(first[0])
        if not first[1]:
            return out, False
    return out, True


# Per-system presets in the spirit of the logpai Drain benchmark (per-system masks, similarity threshold,
# depth), written and tuned here against loghub_2k (see bench/templates.py for the accuracy they give).
# Masks named "*" become Drain wildcards, as in the benchmark; the default masks are kept where they help.
_W = r"(?<![\w.-])"  # not inside a word or dotted name
_WR = r"(?![\w.-])"
_DOTTED = rf"{_W}(?:[\w-]+\.){{2,}}[\w-]+{_WR}"  # host names, Java classes
_V4PORT = rf"{_L}\d{{1,3}}(?:\.\d{{1,3}}){{3}}(?::\d+)?{_R}"
_NUMBER = rf"{_L}[-+]?\d+{_R}"

PRESETS: dict[str, TemplateConfig] = {
    "default": TemplateConfig(),
    # Numbers masked too (sizes, responder indices): Drain makes them wildcards anyway, but unmasked
    # they made nearly every size-bearing line a new masked form, each a Drain search when matching
    # (40 % of generated HDFS lines; grouping accuracy on HDFS_2k the same, 0.9975, with or without).
    "HDFS": TemplateConfig(sim_th=0.5, depth=4, masking=((r"blk_-?\d+", "BLK"), (_V4PORT, "IP"), (_NUMBER, "NUM"))),
    "Hadoop": TemplateConfig(sim_th=0.5, depth=4),
    "Spark": TemplateConfig(sim_th=0.45, depth=5, masking=(
        (_V4PORT, "IP"), (r"\b[KGTM]?B\b", "*"), (_DOTTED, "*"))),
    "Zookeeper": TemplateConfig(sim_th=0.7, depth=4),
    "BGL": TemplateConfig(sim_th=0.4, depth=6, masking=((r"core\.\d+", "*"),)),
    "HPC": TemplateConfig(sim_th=0.55, depth=4, masking=((r"(?<==)\d+", "*"),)),
    "Thunderbird": TemplateConfig(sim_th=0.5, depth=5, masking=((_V4PORT, "IP"),)),
    "Windows": TemplateConfig(sim_th=0.7, depth=5, masking=((r"0x\S*", "*"),)),
    "Linux": TemplateConfig(sim_th=0.45, depth=6, masking=((_V4PORT, "IP"), (r"\d{2}:\d{2}:\d{2}", "*"))),
    "Android": TemplateConfig(sim_th=0.4, depth=5, masking=(
        (r"(?:/[\w-]+)+", "*"), (_DOTTED, "*"),
        (rf"{_L}[-+]?\d+{_R}|{_L}0[Xx][a-fA-F\d]+{_R}|{_L}[a-fA-F\d]{{4,}}{_R}", "*"))),
    "HealthApp": TemplateConfig(sim_th=0.75, depth=4),
    "Apache": TemplateConfig(sim_th=0.5, depth=4, masking=((_V4PORT, "IP"),)),
    # "1190 bytes (1.16 KB)" is one value: without this mask the same event has four token counts. Sizes
    # and durations are named masks (constant tokens for Drain's similarity): as "<*>" the close event
    # would be half wildcards, below sim_th against its own template, and Drain would open a new cluster
    # for nearly every line (right grouping by text, but learning slows down to a few thousand lines/s).
    "Proxifier": TemplateConfig(sim_th=0.6, depth=3, masking=(
        (r"\d+ bytes(?: \([\d.]+ [KMGT]?B\))?", "SIZE"), (r"<\d+\ssec", "DURATION"),
        (_W + r"(?:[\w-]+\.)+[\w-]+(?::\d+)?", "*"), (r"\d{2}:\d{2}(?::\d{2})*", "DURATION"),
        (r"[KGTM]B", "*"))),
    "OpenSSH": TemplateConfig(sim_th=0.7, depth=5, masking=((_V4PORT, "IP"), (_DOTTED, "*"))),
    "OpenStack": TemplateConfig(sim_th=0.6, depth=4, masking=(
        (r"(?:\d+\.){3}\d+(?:,(?:\d+\.){3}\d+)*,?", "*"), (r"/\S+", "*"), (r"\d+", "*"))),
    "Mac": TemplateConfig(sim_th=0.7, depth=3, masking=((_DOTTED, "*"),)),
}


def preset(name: str) -> TemplateConfig:
    """The named preset of :data:`PRESETS` (``"default"`` or a loghub system name).

    Raises:
        ConfigError: unknown name.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"templates: unknown preset {name!r}; known: {sorted(PRESETS)}") from None
