"""Log template mining with Drain (PyPI ``drain3``), with a safe, versioned JSON state.

Why this module exists: models learn over sequences of *event types*, not raw text. Drain turns a
message such as ``Received block blk_-123 of size 67108864 from /10.0.0.1`` into a template
(``Received block <BLK> of size <NUM> from /<IP>``), a stable id for it and the varying values
(``["blk_-123", "67108864", "10.0.0.1"]``; the block id is the HDFS session key).

Life cycle:

1. :meth:`Templates.fit` learns clusters on the configured training window (drain3 learning mode).
2. The learned state goes to JSON (:meth:`Templates.to_json`, :meth:`Templates.save`), stored beside
   the Delta tables and shipped with the model; :attr:`Templates.version` (a content hash) is recorded
   by every table or bundle built from it.
3. Later data is matched *without learning* (:meth:`Templates.match`, :meth:`Templates.match_many`);
   a message no template covers gets :data:`UNKNOWN_TEMPLATE_ID`, because at scoring time an unseen
   template is itself a signal. With ``nearest_min_similarity`` set, such a message first goes to its
   most similar known template when they are close enough (a relative whose variable parts moved),
   so drift in wording does not read as a new event type.

Design choices (and why):

* **No pickle, no jsonpickle.** drain3's own persistence is jsonpickle, which can instantiate arbitrary
  objects on load; the project forbids loading untrusted pickles. The state is plain JSON (config +
  final templates + sizes) and the matcher is rebuilt from it.
* **Canonical matcher.** Drain's prefix tree records the *first* message of each cluster, not the final
  template, so it depends on the fitting history. After fitting we throw that tree away and build the
  matching tree from the final templates only (inserted in template-id order with drain3's
  ``add_seq_to_prefix_tree``). The fitted instance and an instance loaded from JSON use the very same
  code path, so they give identical results by construction (and the tests check it).
* **Match strategy ``fallback``** (drain3 ``match(..., full_search_strategy="fallback")``, configurable):
  a prefix-tree search first (a few dict look-ups), and only when that finds no exact match a linear
  scan of the templates with the same token count. ``never`` misses messages whose token in a tree
  position was generalised to ``<*>`` while the tree kept the constant (false unknowns, which would read
  as anomalies); ``always`` scans every same-length template for every new message, slower for the same
  grouping in practice (see ``bench/templates.py``). Misses are rare and cached, so ``fallback`` costs
  almost nothing over ``never``.
* **Stable template ids.** ``"T" + sha256(template text)[:12]``: the id depends only on the template's
  own text, not on the fitting order of unrelated clusters, so refitting on a new window keeps the id of
  every template that comes out the same. Two Drain clusters that end with the *same* template text get
  the same id: downstream consumers only see the text, so they are the same event type (and a model
  vocabulary should not split them). In the (astronomically rare) case that two different texts share
  the 12-digit prefix, both get a longer prefix, chosen deterministically from the set of texts.
* **Own masking, one pass.** Masking rules are combined into one regex with a named group per rule and
  applied in one left-to-right pass (at a given position the earlier rule wins). Compared with drain3's
  rule-by-rule substitution this is one scan instead of N, lookbehinds see the raw text, and the masked
  values come out in message order, which gives the ``params``.
* **Caches.** Logs repeat a lot: :meth:`Templates.match` is memoised per instance (``functools``' C LRU),
  and fitting memoises masking/tokenising of repeated lines. Raw messages mostly do not repeat (an
  address, a port, a block id in each), their masked texts do: a new message whose masked text was
  seen takes that form's template and a recipe for its params (``Templates._match_form``), so
  matching it costs the masking regex and a look-up.

This module is Spark-free; Spark stages broadcast :meth:`Templates.to_json` and call
:func:`templates_from_state` once per Python worker.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import operator
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, repeat
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from drain3.drain import Drain, LogCluster
from drain3.template_miner import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig

from loganomaly.errors import ConfigError, ModelError
from loganomaly.ingest.templates.masking import (
    DEFAULT_MASKING,
    MATCH_STRATEGIES,
    PRESETS,
    TemplateConfig,
    combined_mask_regex,
    preset,
    token_local,
)
from loganomaly.lake.schemas import UNKNOWN_TEMPLATE_ID

log = logging.getLogger(__name__)
#: Version of the JSON layout written by :meth:`Templates.to_json`; :meth:`Templates.from_json`
#: refuses any other.
STATE_FORMAT = "loganomaly.ingest.templates.miner"
STATE_FORMAT_VERSION = 1

#: Drain's wildcard token.
PARAM_STR = "<*>"


_ID_HEX = 12
_TOKEN = re.compile(r"\S+")

class TemplateMatch(NamedTuple):
    """Result of matching one message. Immutable, because results are shared through the cache.

    Attributes:
        template_id: stable id (``T`` + hash of the template text) or :data:`UNKNOWN_TEMPLATE_ID`.
        template: the template text, ``None`` for an unknown message.
        params: values at the template's ``<*>`` positions and masked values, in message order
            (for an unknown message: the masked values).
    """

    template_id: str
    template: str | None
    params: tuple[str, ...]


class NearestMatch(TemplateMatch):
    """A :class:`TemplateMatch` found by similarity, not by an exact fit (still a 3-tuple).

    Its own type only so that :meth:`Templates.match_many` can count such lines without changing
    what callers unpack; ``params`` are the message's masked values, as for an unknown message.
    """

    __slots__ = ()


class TemplateInfo(NamedTuple):
    """One learned template: its stable id, text, tokens and number of training messages."""

    template_id: str
    template: str
    tokens: tuple[str, ...]
    size: int


def template_ids(texts: Iterable[str]) -> dict[str, str]:
    """Stable id of each distinct template text: ``T`` + the first 12 hex digits of its SHA-256.

    Texts whose 12-digit prefixes collide get the shortest longer prefix that separates them from every
    other text; the result depends only on the set of texts, never on their order.
    """
    digests = {t: hashlib.sha256(t.encode("utf-8")).hexdigest() for t in set(texts)}
    by_prefix: dict[str, list[str]] = {}
    for t, h in digests.items():
        by_prefix.setdefault(h[:_ID_HEX], []).append(t)
    out: dict[str, str] = {}
    for prefix, group in by_prefix.items():
        if len(group) == 1:
            out[group[0]] = "T" + prefix
            continue
        n = _ID_HEX
        while len({digests[t][:n] for t in group}) < len(group) and n < 64:
            n += 4
        for t in group:
            out[t] = "T" + digests[t][:n]
    return out


#: Bounds of :class:`_Preprocessor`'s token cache: entries (cleared when a block would overfill
#: it) and the longest token kept (longer ones, rare, are masked each time they come).
_TOKEN_CACHE_SIZE = 200_000
_TOKEN_CACHE_CHARS = 256
#: Fewer messages than this in a :meth:`Templates.match_many` call are matched one by one.
_BLOCK_MIN = 16


class _Preprocessor:
    """Masking and tokenising, shared by learning and matching so both see identical tokens.

    ``__call__`` gives the tokens Drain sees, every masked value in message order, and per token with
    masks ``(its masked values, its raw text or None)``. A message without ``<`` (nearly all) takes a
    fast path: one ``re.sub`` and ``str.split``, a masked token's values found by counting ``<`` (each
    mask token has exactly one, delimiters may not contain one). A message with ``<`` could hold text
    that looks like a mask token, so it takes the exact path that tracks offsets.
    """

    def __init__(self, config: TemplateConfig) -> None:
        self.regex = combined_mask_regex(config.masking)
        self.placeholders = {f"m{i}": f"<{name}>" for i, (_, name) in enumerate(config.masking)}
        #: Token -> (masked token, its masked values), for :meth:`mask_block`; None unless the rules
        #: are token-local.
        self.token_cache: dict[str, tuple[str, tuple[str, ...]]] | None = (
            {} if self.regex is not None and token_local(config.masking) else None
        )
        names = sorted(set(self.placeholders.values()), key=len, reverse=True)
        self.placeholder_regex = re.compile("|".join(re.escape(n) for n in names)) if names else None
        # Same-length blanks keep offsets of masked values valid after splitting on delimiters.
        self.delimiters = [(d, " " * len(d)) for d in config.extra_delimiters]

    def tokens(self, message: str) -> list[str]:
        """Tokens only (learning needs no values)."""
        masked = message
        if self.regex is not None:
            placeholders = self.placeholders
            masked = self.regex.sub(lambda m: placeholders[m.lastgroup], message)  # type: ignore[index]
        for d, blank in self.delimiters:
            masked = masked.replace(d, blank)
        return masked.split()

    def unmask(self, token: str, values: Sequence[str]) -> str:
        """Raw text of a masked token of the fast path (its mask tokens replaced by their values)."""
        it = iter(values)
        assert self.placeholder_regex is not None
        return self.placeholder_regex.sub(lambda _: next(it), token)

    def mask(self, message: str) -> tuple[str, list[str]]:
        """The masked text of a message without ``<`` and its masked values in order (needs masking rules)."""
        values: list[str] = []
        append = values.append
        placeholders = self.placeholders

        def replace(m: re.Match[str]) -> str:
            append(m.group())
            return placeholders[m.lastgroup]  # type: ignore[index]

        return self.regex.sub(replace, message), values  # type: ignore[union-attr]

    def mask_block(self, messages: list[str] | pa.Array) -> tuple[pa.StringArray, pa.ListArray]:
        """:meth:`mask` of many messages without ``<`` as Arrow arrays (masked texts, lists of
        masked values), each distinct token masked once.

        Needs token-local rules (:attr:`token_cache` set; see
        :func:`~loganomaly.ingest.templates.masking.token_local`): masking a message then equals
        masking each of its space-separated tokens, and a log's tokens repeat (words, names, its
        hosts and ports) far more than its messages do. Arrow splits the messages, finds the
        distinct tokens and joins the masked ones back in C++; Python masks only tokens it has not
        seen (kept in :attr:`token_cache` across blocks) and gathers each message's values. The
        per-message regex pass was most of what matching cost (7-13 us a message on the
        generated syslog, Zeek and HDFS lines; ``bench/parse.py --templates`` has the end result).
        """
        import pyarrow.compute as pc

        cache = self.token_cache
        assert cache is not None
        texts = messages if isinstance(messages, pa.Array) else pa.array(messages, pa.string())
        lists = pc.split_pattern(texts, " ")
        encoded = pc.dictionary_encode(lists.values)
        distinct = encoded.dictionary.to_pylist()
        if len(cache) + len(distinct) > _TOKEN_CACHE_SIZE:
            cache.clear()  # bounded memory, as the other caches
        hits = list(map(cache.get, distinct))
        new = [k for k, hit in enumerate(hits) if hit is None] if None in hits else []
        if new:
            # The new tokens in one regex pass: the rules being token-local, masking them joined
            # by spaces masks each alone, and a masked token holds one "<" per value (they hold none).
            # Each step over them is one C-level pass (map, accumulate, zip): on logs with an id or
            # number in every line (HDFS) most of a block's tokens are new.
            new_tokens = [distinct[k] for k in new]
            text, found = self.mask(" ".join(new_tokens))
            masked_tokens = text.split(" ")
            counts = list(map(str.count, masked_tokens, repeat("<")))
            ends = list(accumulate(counts))
            values = [tuple(found[a:b]) for a, b in zip(map(operator.sub, ends, counts), ends, strict=True)]
            entries = list(zip(masked_tokens, values, strict=True))
            for k, entry in zip(new, entries, strict=True):
                hits[k] = entry
            if len(cache) + len(new) > _TOKEN_CACHE_SIZE or max(map(len, new_tokens)) > _TOKEN_CACHE_CHARS:
                for token, entry in zip(new_tokens, entries, strict=True):
                    if len(token) <= _TOKEN_CACHE_CHARS and len(cache) < _TOKEN_CACHE_SIZE:
                        cache[token] = entry
            else:
                cache.update(zip(new_tokens, entries, strict=True))
        done: list[tuple[str, tuple[str, ...]]] = hits  # type: ignore[assignment]  # every entry set above
        indices = encoded.indices
        masked = pc.binary_join(
            pa.ListArray.from_arrays(lists.offsets, pa.array([h[0] for h in done], pa.string()).take(indices)), " "
        )
        # Each message's values: its tokens' value lists, concatenated (list offsets, in C++).
        token_values = pa.array([h[1] for h in done], pa.list_(pa.string())).take(indices)
        per_token = token_values.offsets.to_numpy()
        bounds = per_token[lists.offsets.to_numpy()]
        values = pa.ListArray.from_arrays(pa.array(bounds, pa.int32()), token_values.values)
        return masked, values

    def __call__(self, message: str) -> tuple[list[str], tuple[str, ...], dict[int, tuple[tuple[str, ...], str | None]]]:
        if self.regex is None:
            return self.tokens(message), (), {}
        if "<" in message:
            return self._exact(message)
        masked, values = self.mask(message)
        for d, blank in self.delimiters:
            masked = masked.replace(d, blank)
        tokens = masked.split()
        if not values:
            return tokens, (), {}
        info: dict[int, tuple[tuple[str, ...], str | None]] = {}
        k = 0
        for i, token in enumerate(tokens):
            if "<" in token:
                n = token.count("<")
                info[i] = (tuple(values[k:k + n]), None)
                k += n
        return tokens, tuple(values), info

    def _exact(self, message: str) -> tuple[list[str], tuple[str, ...], dict[int, tuple[tuple[str, ...], str | None]]]:
        assert self.regex is not None
        spans: list[tuple[int, int, str]] = []  # mask token start, end (in the masked text), raw value
        pieces: list[str] = []
        pos = mpos = 0
        for m in self.regex.finditer(message):
            a, b = m.span()
            if a > pos:
                pieces.append(message[pos:a])
                mpos += a - pos
            ph = self.placeholders[m.lastgroup]  # type: ignore[index]
            pieces.append(ph)
            spans.append((mpos, mpos + len(ph), m.group()))
            mpos += len(ph)
            pos = b
        pieces.append(message[pos:])
        masked = "".join(pieces)
        for d, blank in self.delimiters:
            masked = masked.replace(d, blank)
        tokens: list[str] = []
        info: dict[int, tuple[tuple[str, ...], str | None]] = {}
        k, n = 0, len(spans)
        for t in _TOKEN.finditer(masked):
            ts, te = t.span()
            if k < n and spans[k][0] < te:
                raw: list[str] = []
                values: list[str] = []
                cur = ts
                while k < n and spans[k][0] < te:
                    s, e, v = spans[k]
                    raw.append(masked[cur:s])
                    raw.append(v)
                    values.append(v)
                    cur = e
                    k += 1
                raw.append(masked[cur:te])
                info[len(tokens)] = (tuple(values), "".join(raw))
            tokens.append(t.group())
        return tokens, tuple(s[2] for s in spans), info


class _Matcher:
    """drain3 prefix tree rebuilt from final templates; inference only (never learns)."""

    def __init__(self, config: TemplateConfig, templates: Sequence[TemplateInfo]) -> None:
        self.strategy = config.match_strategy
        self.drain = Drain(depth=config.depth, sim_th=config.sim_th, max_children=config.max_children,
                           max_clusters=None, extra_delimiters=(), param_str=PARAM_STR,
                           parametrize_numeric_tokens=config.parametrize_numeric_tokens)
        # cluster id -> (template id, template text, wildcard positions, tokens)
        self.info: dict[int, tuple[str, str, tuple[int, ...], tuple[str, ...]]] = {}
        for cid, t in enumerate(templates, start=1):
            cluster = LogCluster(list(t.tokens), cid)
            cluster.size = t.size
            self.drain.id_to_cluster[cid] = cluster
            self.drain.add_seq_to_prefix_tree(self.drain.root_node, cluster)
            wild = tuple(i for i, tok in enumerate(t.tokens) if tok == PARAM_STR)
            self.info[cid] = (t.template_id, t.template, wild, t.tokens)
        self.drain.clusters_counter = len(templates)
        # Same order as drain3's own full search (tree traversal), precomputed once per length.
        self.by_length = {n: self.drain.get_clusters_ids_for_seq_len(n) for n in {len(t.tokens) for t in templates}}
        # Nearest-template fallback: each template's constant tokens and wildcard count, and an
        # inverted index token -> templates, so a miss only compares templates sharing a token.
        self.min_similarity = config.nearest_min_similarity
        self.templates = tuple(templates)
        self.constants = [frozenset(tok for tok in t.tokens if tok != PARAM_STR) for t in templates]
        self.wildcards = [sum(tok == PARAM_STR for tok in t.tokens) for t in templates]
        self.index: dict[str, list[int]] = {}
        for k, consts in enumerate(self.constants):
            for tok in consts:
                self.index.setdefault(tok, []).append(k)

    def nearest(self, tokens: Sequence[str]) -> TemplateInfo | None:
        """The known template most similar to ``tokens``, if at least ``min_similarity``.

        Similarity is Jaccard on masked tokens where each of a template's ``<*>`` may absorb one
        message token it lacks: ``shared / (constants + max(0, extra - wildcards))``, with
        ``shared`` the template's constant tokens present in the message and ``extra`` the
        message's distinct tokens that are not constants of the template. Ties go to the larger
        template (more training lines), then the smaller id, so the choice is deterministic.
        """
        if not self.min_similarity:
            return None
        seen = set(tokens)
        shared: dict[int, int] = {}
        for tok in seen:
            for k in self.index.get(tok, ()):
                shared[k] = shared.get(k, 0) + 1
        best: tuple[float, int, str] | None = None
        best_k = -1
        for k, n in shared.items():
            extra = len(seen) - n
            sim = n / (len(self.constants[k]) + max(0, extra - self.wildcards[k]))
            t = self.templates[k]
            key = (sim, t.size, t.template_id)
            if best is None or (key[0], key[1]) > (best[0], best[1]) or (
                    (key[0], key[1]) == (best[0], best[1]) and key[2] < best[2]):
                best, best_k = key, k
        if best is None or best[0] < self.min_similarity:
            return None
        return self.templates[best_k]

    def find(self, tokens: list[str]) -> LogCluster | None:
        """Same result as drain3 ``Drain.match(" ".join(tokens), strategy)``, without re-splitting."""
        drain = self.drain
        if self.strategy != "always":
            cluster = drain.tree_search(drain.root_node, tokens, 1.0, True)
            if cluster is not None or self.strategy == "never":
                return cluster
        return drain.fast_match(self.by_length.get(len(tokens), ()), tokens, 1.0, True)


_NOT_SEARCHED = object()


class _Picks(NamedTuple):
    """A recipe of values and constants only: ``pick(values + constants)`` is the params tuple, taken
    by :func:`operator.itemgetter` in C (the common recipe: masked values around constant tokens).
    ``positions`` are what ``pick`` takes (``< n_values``: a masked value, else constant ``i - n_values``),
    kept for :func:`_take_params`, which applies the recipe to many rows at once."""

    pick: Callable[[list[str]], tuple[str, ...]]
    constants: tuple[str, ...]
    positions: tuple[int, ...]
    n_values: int


def _picks(items: list[Any], n_values: int) -> Any:
    """``items`` as a :class:`_Picks` where it holds only value indexes and constant tokens."""
    if any(type(item) not in (int, str) for item in items):
        return items
    constants = tuple(item for item in items if type(item) is str)
    index: list[int] = []
    c = n_values
    for item in items:
        if type(item) is int:
            index.append(item)
        else:
            index.append(c)
            c += 1
    if len(index) == 1:
        only = index[0]
        return _Picks(lambda values: (values[only],), constants, tuple(index), n_values)
    return _Picks(operator.itemgetter(*index), constants, tuple(index), n_values)


def _take_params(values: pa.ListArray, rows: np.ndarray, recipes: list[Any], form_of: np.ndarray) -> pa.ListArray:
    """Params of ``rows`` of a block whose forms' recipes are constants (a tuple) or picks
    (:class:`_Picks`), as one list array in the order of ``rows``, without a Python object per row.

    ``values`` holds every row's masked values, ``form_of[j]`` indexes ``recipes`` for ``rows[j]``.
    Each param is a take from the values' strings followed by a pool of the recipes' constants:
    per form, the take indices of its rows are their value offsets plus the recipe's value indexes
    (one numpy broadcast), its constants one fixed pool position each. Zeek TSV and CSV forms are
    mostly of these kinds (values picked around constant tokens; no values at all), and building
    their params row by row was about a sixth of a CSV task's time.
    """
    child = values.values
    start = values.offsets.to_numpy()[rows].astype(np.int64)
    pool: list[str] = []
    specs: list[np.ndarray] = []
    for recipe in recipes:
        if type(recipe) is tuple:  # the same params for every row: all from the pool
            spec = -1 - np.arange(len(pool), len(pool) + len(recipe), dtype=np.int64)
            pool.extend(recipe)
        else:
            index = np.asarray(recipe.positions, np.int64)
            spec = np.where(index < recipe.n_values, index, -1 - (len(pool) + index - recipe.n_values))
            pool.extend(recipe.constants)
        specs.append(spec)
    spec_lengths = np.array([len(s) for s in specs], np.int64)
    spec_starts = np.zeros(len(specs), np.int64)
    np.cumsum(spec_lengths[:-1], out=spec_starts[1:])
    flat = np.concatenate(specs) if specs else np.zeros(0, np.int64)
    lengths = spec_lengths[form_of]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Each param's row and place in it, then its spec entry: a value offset or a pool position
    # (a loop over forms cost ~25 us a form, most of a block's time where most forms are new).
    row_of = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    place = np.arange(int(offsets[-1]), dtype=np.int64) - offsets[row_of]
    spec = flat[spec_starts[form_of[row_of]] + place]
    take = np.where(spec >= 0, start[row_of] + spec, len(child) - 1 - spec)
    strings = pa.concat_arrays([child, pa.array(pool, pa.string())]) if pool else child
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), strings.take(pa.array(take)))


def _params(recipe: list[Any], values: list[str]) -> tuple[str, ...]:
    """Params of one message from its form's recipe (:meth:`Templates._form`): an int is a masked
    value by index, a str a token every message of the form has, ``(pieces, k)`` a wildcard token
    holding masked values: the literal pieces around them joined with values ``k, k+1, ...``."""
    out: list[str] = []
    for item in recipe:
        kind = type(item)
        if kind is int:
            out.append(values[item])
        elif kind is str:
            out.append(item)
        else:
            pieces, k = item
            parts = [pieces[0]]
            for j, piece in enumerate(pieces[1:]):
                parts.append(values[k + j])
                parts.append(piece)
            out.append("".join(parts))
    return tuple(out)


def _columns(matches: Sequence[TemplateMatch | None]) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Id, text and params columns of matches (None: a null row)."""
    return (
        pa.array([m[0] if m else None for m in matches], pa.string()),
        pa.array([m[1] if m else None for m in matches], pa.string()),
        pa.array([m[2] if m else None for m in matches], pa.list_(pa.string())),
    )


def _positions(n: int, *groups: Sequence[int] | np.ndarray) -> pa.Array:
    """Take-indices that put ``concat(rows at groups[0], rows at groups[1], ...)`` back in row order."""
    order = np.empty(n, np.int64)
    at = 0
    for group in groups:
        order[np.asarray(group, np.int64)] = np.arange(at, at + len(group))
        at += len(group)
    return pa.array(order)


def _recipe_kind(recipe: Any) -> int:
    """0: params are the masked values in order; 1: constants or picks (:func:`_take_params`);
    2: wildcard tokens rebuilt from pieces, built row by row (:func:`_params`)."""
    if recipe is None:
        return 0
    return 1 if type(recipe) is tuple or type(recipe) is _Picks else 2


class Templates:
    """Drain template miner with a JSON state; fit once, then match without learning.

    Args:
        config: miner and masking settings (default: :class:`TemplateConfig` defaults).
        cache_size: entries of the per-instance message -> result LRU cache (0 disables it). The cache
            never changes results: matching is a pure function of the state.
    """

    def __init__(self, config: TemplateConfig | None = None, cache_size: int = 200_000) -> None:
        if cache_size < 0:
            raise ConfigError(f"templates: cache_size must be >= 0, got {cache_size}")
        self.config = config if config is not None else TemplateConfig()
        self._cache_size = cache_size
        self._pre = _Preprocessor(self.config)
        self._templates: tuple[TemplateInfo, ...] = ()
        self._messages = 0
        #: Lines :meth:`match_many` gave to their nearest template (not exact fits), since creation.
        self.nearest_lines = 0
        self._set_templates(())

    # ----------------------------------------------------------------------------------- learning
    def fit(self, messages: Iterable[str]) -> Templates:
        """Learn templates from ``messages`` (the training window), replacing any earlier state.

        Returns ``self`` for chaining. ``None`` entries are skipped.
        """
        self._fit(messages, assign=False)
        return self

    def fit_predict(self, messages: Iterable[str]) -> list[str]:
        """Learn like :meth:`fit` and return, per message, the id of the cluster it was grouped in.

        This is Drain's learning-time grouping (the logpai benchmark metric). :meth:`match` on the same
        messages may give another id for a few of them: a message whose cluster generalised later can also
        fit exactly another template; matching picks the best exact fit of the final templates.
        ``None`` entries get :data:`UNKNOWN_TEMPLATE_ID`.
        """
        assigned = self._fit(messages, assign=True)
        return assigned

    def _fit(self, messages: Iterable[str], assign: bool) -> list[str]:
        start = time.perf_counter()
        mc = TemplateMinerConfig()
        mc.drain_depth = self.config.depth
        mc.drain_sim_th = self.config.sim_th
        mc.drain_max_children = self.config.max_children
        mc.drain_max_clusters = self.config.max_clusters
        mc.drain_extra_delimiters = []  # split by our preprocessor, which also masks
        mc.masking_instructions = []
        mc.parametrize_numeric_tokens = self.config.parametrize_numeric_tokens
        mc.mask_prefix, mc.mask_suffix = "<", ">"
        miner = TemplateMiner(persistence_handler=None, config=mc)
        drain = miner.drain
        pre = self._pre

        @functools.lru_cache(maxsize=65_536)
        def content(message: str) -> str:
            return " ".join(pre.tokens(message))

        add = drain.add_log_message
        assigned: list[int] = []
        n = 0
        for message in messages:
            if message is None:
                if assign:
                    assigned.append(0)
                continue
            cluster, _ = add(content(message))
            n += 1
            if assign:
                assigned.append(cluster.cluster_id)
        clusters = list(drain.id_to_cluster.values())
        ids = template_ids(c.get_template() for c in clusters)
        merged: dict[str, list[Any]] = {}
        for c in clusters:
            text = c.get_template()
            entry = merged.setdefault(ids[text], [text, tuple(c.log_template_tokens), 0])
            entry[2] += c.size
        templates = [TemplateInfo(tid, text, toks, size) for tid, (text, toks, size) in merged.items()]
        self._messages = n
        self._set_templates(templates)
        elapsed = time.perf_counter() - start
        log.info("templates: learned %d templates (%d drain clusters) from %d messages in %.2fs (%.0f msg/s), "
                 "version %s", len(templates), len(clusters), n, elapsed, n / elapsed if elapsed else 0.0,
                 self.version)
        if not assign:
            return []
        cid_to_tid = {c.cluster_id: ids[c.get_template()] for c in clusters}
        # A cluster evicted by max_clusters has no final template: its messages read as unknown.
        return [cid_to_tid.get(cid, UNKNOWN_TEMPLATE_ID) for cid in assigned]

    def _set_templates(self, templates: Iterable[TemplateInfo]) -> None:
        # Template-id order makes the matcher independent of the order clusters were found in.
        self._templates = tuple(sorted(templates, key=lambda t: t.template_id))
        self._by_id = {t.template_id: t for t in self._templates}
        self._matcher = _Matcher(self.config, self._templates)
        self._version = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:12]
        # Masked token sequence -> what the Drain search found for it (template info, a
        # NearestMatch's template, or None): logs repeat their masked forms far more than their
        # raw text (a block id, a port, a user in every line), so the search runs once per form.
        self._by_masked: dict[tuple[str, ...], Any] = {}
        # Masked text -> (result class, template id, text, params recipe) for messages of the fast
        # path (no "<"): a new message of a known form costs its masking regex and one look-up,
        # not re-tokenising it and rebuilding its params token by token (see _match_form).
        self._forms: dict[str, tuple[type[TemplateMatch], str, str | None, Any]] = {}
        self._masked_hits = 0
        self._searches = 0
        self._cached: Callable[[str], TemplateMatch]
        if self._cache_size:
            self._cached = functools.lru_cache(maxsize=self._cache_size)(self._match_uncached)
        else:
            self._cached = self._match_uncached

    # ----------------------------------------------------------------------------------- matching
    def match(self, message: str | None) -> TemplateMatch:
        """Template of ``message`` among the learned ones, without learning.

        An exact fit comes first (every constant token equal; drain3 ``match`` semantics). With
        ``nearest_min_similarity`` set, a message no template fits goes to its most similar template
        (a :class:`NearestMatch`; similarity in :meth:`_Matcher.nearest`) when that reaches the
        setting. Any other message, and ``None``, gets :data:`UNKNOWN_TEMPLATE_ID`, template ``None``
        and the masked values as params.
        """
        if message is None:
            return TemplateMatch(UNKNOWN_TEMPLATE_ID, None, ())
        return self._cached(message)

    def match_many(self, messages: Iterable[str | None]) -> list[TemplateMatch]:
        """:meth:`match` for many messages (e.g. a pandas batch in ``mapInPandas``), cached.

        Lines given to their nearest template (``nearest_min_similarity``) are added to
        :attr:`nearest_lines` and logged per batch with the batch's size.
        """
        messages = messages if isinstance(messages, list) else list(messages)
        if self._blockwise(len(messages)):
            out = self._match_block(messages)
        else:
            out = [self.match(m) for m in messages]
        if self.config.nearest_min_similarity:
            self._log_nearest(sum(isinstance(r, NearestMatch) for r in out), len(out))
        return out

    def _blockwise(self, n: int) -> bool:
        """Whether ``n`` messages are masked together (:meth:`_Preprocessor.mask_block`): the rules
        are token-local, the caches on, and the batch large enough to outweigh Arrow's fixed costs."""
        return self._pre.token_cache is not None and bool(self._cache_size) and n >= _BLOCK_MIN

    def _log_nearest(self, near: int, lines: int) -> None:
        if near:
            self.nearest_lines += near
            log.info("templates: %d of %d lines matched no template exactly and went to their nearest "
                     "template (similarity >= %.2f)", near, lines, self.config.nearest_min_similarity)

    def match_columns(
        self, messages: Sequence[str | None] | pa.Array, is_event: Sequence[bool]
    ) -> tuple[pa.Array, pa.Array, pa.Array]:
        """Template id, text and params columns of a batch (rows not events: null), each event as
        :meth:`match_many` matches it.

        With token-local rules the events of the fast path go through Arrow from end to end: their
        masked texts (:meth:`_Preprocessor.mask_block`) are grouped by form, each form resolved once
        (:meth:`_form`), ids and texts taken per row, and params are the rows' masked values for
        the forms whose recipe is "all values in order" (most forms); only rows of other recipes
        build their params in Python. No per-row match object is made. ``messages`` may be an
        Arrow string array (a block parser's column, matched without a round trip through Python
        strings); the fast path's rows are chosen and taken in Arrow, and only the other rows'
        messages become Python strings.
        """
        import pyarrow.compute as pc

        n = len(is_event)
        texts = messages if isinstance(messages, pa.Array) else pa.array(messages, pa.string())
        plain = np.asarray(is_event, dtype=bool) & np.asarray(
            pc.fill_null(pc.invert(pc.match_substring(texts, "<")), False).to_numpy(zero_copy_only=False), dtype=bool
        )
        rows = np.flatnonzero(plain)
        others: list[int] = np.flatnonzero(~plain).tolist()
        if not self._blockwise(len(rows)):
            listed = texts.to_pylist() if isinstance(messages, pa.Array) else messages
            matches = iter(self.match_many([listed[i] for i in range(n) if is_event[i]]))
            return _columns([next(matches) if is_event[i] else None for i in range(n)])
        columns, near = self._block_columns(texts.take(pa.array(rows)))
        rest_messages = texts.take(pa.array(others, pa.int64())).to_pylist()
        rest = [self.match(m) if is_event[i] else None for i, m in zip(others, rest_messages, strict=True)]
        events = len(rows) + sum(1 for i in others if is_event[i])
        self._log_nearest(near + sum(isinstance(m, NearestMatch) for m in rest), events)
        if not others:
            return columns
        extra = _columns(rest)
        order = _positions(n, rows, others)
        return tuple(  # type: ignore[return-value]
            pa.concat_arrays([block, more]).take(order) for block, more in zip(columns, extra, strict=True)
        )

    def _block_columns(self, messages: list[str] | pa.Array) -> tuple[tuple[pa.Array, pa.Array, pa.Array], int]:
        """:meth:`match_columns` of messages of the fast path (no ``<``, not None), and how many
        went to their nearest template."""

        masked, values = self._pre.mask_block(messages)
        entries, encoded = self._resolve_forms(masked)
        index = encoded.indices.to_numpy(zero_copy_only=False)
        counts = np.bincount(index, minlength=len(entries)).tolist()
        near = sum(count for form, count in zip(entries, counts, strict=True) if form[0] is NearestMatch)
        ids = pa.array([e[1] for e in entries], pa.string()).take(encoded.indices)
        templates = pa.array([e[2] for e in entries], pa.string()).take(encoded.indices)
        kinds = np.array([_recipe_kind(e[3]) for e in entries], np.int8)[index]
        if not kinds.any():
            return (ids, templates, values), near
        groups = [np.flatnonzero(kinds == kind) for kind in (0, 1, 2)]
        plain, taken, odd = groups
        parts = [values.take(pa.array(plain))]
        if len(taken):
            forms, form_of = np.unique(index[taken], return_inverse=True)
            parts.append(_take_params(values, taken, [entries[k][3] for k in forms.tolist()], form_of))
        if len(odd):
            built = [
                self._from_form(entries[index[r]], found)[2]
                for r, found in zip(odd.tolist(), values.take(pa.array(odd)).to_pylist(), strict=True)
            ]
            parts.append(pa.array(built, pa.list_(pa.string())))
        params = pa.concat_arrays(parts).take(_positions(len(messages), *groups))
        return (ids, templates, params), near

    def _search(self, tokens: list[str]) -> Any:
        """The Drain search for masked ``tokens``: ``(False, template info)`` for an exact fit,
        ``(True, nearest template)`` or None; memoised by the masked form (a pure function of it)."""
        key = tuple(tokens)
        found = self._by_masked.get(key, _NOT_SEARCHED)
        if found is not _NOT_SEARCHED:
            self._masked_hits += 1
            return found
        self._searches += 1
        cluster = self._matcher.find(tokens)
        if cluster is not None:
            found = (False, self._matcher.info[cluster.cluster_id])
        else:
            near = self._matcher.nearest(tokens)
            found = None if near is None else (True, near)
        if self._cache_size:
            if len(self._by_masked) >= self._cache_size:
                self._by_masked.clear()  # bounded memory; the hot forms come back at once
            self._by_masked[key] = found
        return found

    def _match_uncached(self, message: str) -> TemplateMatch:
        pre = self._pre
        if pre.regex is None or not self._cache_size or "<" in message:
            return self._match_reference(message)
        return self._match_form(message)

    def _match_block(self, messages: list[str | None]) -> list[TemplateMatch]:
        """:meth:`match` of each message; those of the fast path (:meth:`_match_form`) masked
        together (:meth:`_Preprocessor.mask_block`), the others (``None``, holding ``<``) one by one."""
        unknown = TemplateMatch(UNKNOWN_TEMPLATE_ID, None, ())
        out: list[TemplateMatch] = [unknown] * len(messages)
        rows: list[int] = []
        for i, message in enumerate(messages):
            if message is None:
                continue
            if "<" in message:
                out[i] = self._cached(message)
            else:
                rows.append(i)
        if not rows:
            return out
        masked, values = self._pre.mask_block([messages[i] for i in rows])  # type: ignore[misc]
        entries, encoded = self._resolve_forms(masked)
        for i, k, found in zip(rows, encoded.indices.to_pylist(), values.to_pylist(), strict=True):
            out[i] = self._from_form(entries[k], found)
        return out

    def _resolve_forms(self, masked: pa.Array) -> tuple[list[tuple[type[TemplateMatch], str, str | None, Any]], Any]:
        """The distinct masked texts of a block (``dictionary_encode``: texts and row indices) and
        each one's form (:meth:`_form`), counted as the per-message path counts them: the first
        message of a new form searches, every other one is a hit."""
        import pyarrow.compute as pc

        encoded = pc.dictionary_encode(masked)
        texts = encoded.dictionary.to_pylist()
        counts = np.bincount(encoded.indices.to_numpy(zero_copy_only=False), minlength=len(texts)).tolist()
        forms = self._forms
        entries = []
        for text, count in zip(texts, counts, strict=True):
            form = forms.get(text)
            if form is None:
                form = self._form(text, text.count("<"))  # a mask token per value (the message has no "<")
                count -= 1
            self._masked_hits += count
            entries.append(form)
        return entries, encoded

    def _match_form(self, message: str) -> TemplateMatch:
        """:meth:`_match_reference` for a message without ``<``, by its masked text.

        Everything after masking is a function of the masked text alone (the tokens, which tokens
        hold which masked values, the template found) except the params, which take the values in
        a fixed way per form. So each form is worked out once (:meth:`_form`) into a recipe, and a
        later message of the form costs the masking regex, a look-up and building its params
        tuple; the masking regex is then most of what matching a new message costs. A parsing
        task with templates ran 1.12-1.14x faster on generated Zeek TSV, HDFS, syslog and Zeek
        JSON (``bench/parse.py --templates``); ``tests/ingest/templates/test_forms.py`` checks the
        results against the reference on every preset.
        """
        masked, values = self._pre.mask(message)
        form = self._forms.get(masked)
        if form is None:
            form = self._form(masked, len(values))
        else:
            self._masked_hits += 1
        return self._from_form(form, values)

    @staticmethod
    def _from_form(form: tuple[type[TemplateMatch], str, str | None, Any], values: list[str]) -> TemplateMatch:
        """The match of a message of ``form`` (:meth:`_form`) whose masked values are ``values``."""
        cls, template_id, text, recipe = form
        if recipe is None:
            return cls(template_id, text, tuple(values))
        kind = type(recipe)
        if kind is tuple:
            return cls(template_id, text, recipe)
        if kind is _Picks:
            values.extend(recipe.constants)
            return cls(template_id, text, recipe.pick(values))
        return cls(template_id, text, _params(recipe, values))

    def _form(self, masked: str, n_values: int) -> tuple[type[TemplateMatch], str, str | None, Any]:
        """The result of a masked text (the fast path's tokens and value layout, then the Drain search)
        with its params recipe: ``None`` for all masked values in order, a tuple for params that are
        the same for every message of the form, else a list of items (see :func:`_params`)."""
        pre = self._pre
        text_for_tokens = masked
        for d, blank in pre.delimiters:
            text_for_tokens = text_for_tokens.replace(d, blank)
        tokens = text_for_tokens.split()
        layout: dict[int, tuple[int, int]] = {}  # token -> (index of its first masked value, count)
        k = 0
        for i, token in enumerate(tokens):
            if "<" in token:
                n = token.count("<")
                layout[i] = (k, n)
                k += n
        if k != n_values:  # cannot happen: each mask token holds exactly one "<" (the message none)
            raise ModelError(f"templates: masked text {masked!r} holds {k} mask tokens for {n_values} values")
        found = self._search(tokens)
        entry: tuple[type[TemplateMatch], str, str | None, Any]
        if found is None:
            entry = (TemplateMatch, UNKNOWN_TEMPLATE_ID, None, None)
        elif found[0]:
            entry = (NearestMatch, found[1].template_id, found[1].template, None)
        else:
            template_id, text, wild, template_tokens = found[1]
            if not layout:
                entry = (TemplateMatch, template_id, text, tuple(tokens[i] for i in wild))
            else:
                items: list[Any] = []
                for i, tt in enumerate(template_tokens):
                    at = layout.get(i)
                    if tt == PARAM_STR:
                        if at is None:
                            items.append(tokens[i])
                        else:
                            pieces = pre.placeholder_regex.split(tokens[i])  # type: ignore[union-attr]
                            items.append((tuple(pieces), at[0]) if len(pieces) > 2 or any(pieces) else at[0])
                    elif at is not None:
                        items.extend(range(at[0], at[0] + at[1]))
                recipe: Any = None if items == list(range(n_values)) else _picks(items, n_values)
                entry = (TemplateMatch, template_id, text, recipe)
        if self._cache_size:
            if len(self._forms) >= self._cache_size:
                self._forms.clear()  # bounded memory, as for _by_masked
            self._forms[masked] = entry
        return entry

    def _match_reference(self, message: str) -> TemplateMatch:
        """Matching token by token: the reference, and the path of messages holding ``<`` (whose raw
        text could read as a mask token) and of configs without masking."""
        tokens, values, info = self._pre(message)
        found = self._search(tokens)
        if found is None:
            return TemplateMatch(UNKNOWN_TEMPLATE_ID, None, values)
        if found[0]:
            return NearestMatch(found[1].template_id, found[1].template, values)
        template_id, text, wild, template_tokens = found[1]
        if not info:
            return TemplateMatch(template_id, text, tuple(tokens[i] for i in wild))
        params: list[str] = []
        for i, tt in enumerate(template_tokens):
            masked = info.get(i)
            if tt == PARAM_STR:
                if masked is None:
                    params.append(tokens[i])
                else:
                    raw = masked[1]
                    params.append(raw if raw is not None else self._pre.unmask(tokens[i], masked[0]))
            elif masked is not None:
                params.extend(masked[0])
        return TemplateMatch(template_id, text, tuple(params))

    def cache_info(self) -> Any:
        """``functools`` cache statistics (hits, misses, size), or ``None`` without a cache."""
        info = getattr(self._cached, "cache_info", None)
        return info() if info is not None else None

    def cache_counts(self) -> tuple[int, int]:
        """(messages matched without a Drain search, Drain searches) since this matcher was made.

        A message seen before hits the message cache; a new message whose masked form was seen
        hits the masked-form cache; only a new masked form is searched. So hits + searches = the
        messages matched (``None`` messages aside), and the hit rate says how far matching costs
        per distinct form rather than per line.
        """
        info = self.cache_info()
        return (info.hits if info is not None else 0) + self._masked_hits, self._searches

    # ----------------------------------------------------------------------------------- inspection
    @property
    def templates(self) -> tuple[TemplateInfo, ...]:
        """Learned templates, in template-id order."""
        return self._templates

    def __len__(self) -> int:
        return len(self._templates)

    def template(self, template_id: str) -> str | None:
        """Text of a template id, ``None`` for the unknown id or an id this state does not know."""
        t = self._by_id.get(template_id)
        return t.template if t is not None else None

    @property
    def version(self) -> str:
        """Short content hash (12 hex digits) of the state: config, templates and sizes.

        Record it in every table or bundle built with this state; it changes exactly when the saved JSON
        changes.
        """
        return self._version

    # ----------------------------------------------------------------------------------- state
    def to_dict(self) -> dict[str, Any]:
        """The state as plain JSON-able data."""
        return {
            "format": STATE_FORMAT,
            "format_version": STATE_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "messages": self._messages,
            "templates": [{"id": t.template_id, "tokens": list(t.tokens), "size": t.size} for t in self._templates],
        }

    def to_json(self) -> str:
        """Canonical JSON of the state (sorted keys, compact): equal states give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, state: str | bytes, cache_size: int = 200_000) -> Templates:
        """Rebuild from :meth:`to_json` output; matches exactly like the instance that wrote it.

        Raises:
            ModelError: not JSON, another format or format version, or inconsistent content.
        """
        try:
            data = json.loads(state)
        except (ValueError, TypeError) as e:
            raise ModelError(f"template state is not valid JSON: {e}") from None
        return cls.from_dict(data, cache_size=cache_size)

    @classmethod
    def from_dict(cls, data: Any, cache_size: int = 200_000) -> Templates:
        """Rebuild from :meth:`to_dict` output (see :meth:`from_json`)."""
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ModelError(f"not a template state: expected format {STATE_FORMAT!r}")
        version = data.get("format_version")
        if version != STATE_FORMAT_VERSION:
            raise ModelError(f"template state format version {version!r} is not supported "
                             f"(this loganomaly reads version {STATE_FORMAT_VERSION}); refit the templates")
        try:
            config = TemplateConfig.from_dict(data["config"])
        except ConfigError as e:
            raise ModelError(f"template state has an invalid config: {e}") from None
        except KeyError:
            raise ModelError("template state has no config") from None
        raw = data.get("templates")
        messages = data.get("messages", 0)
        if not isinstance(raw, list) or not isinstance(messages, int):
            raise ModelError("template state: 'templates' must be a list and 'messages' an integer")
        templates: list[TemplateInfo] = []
        for i, entry in enumerate(raw):
            ok = (isinstance(entry, dict) and isinstance(entry.get("id"), str) and isinstance(entry.get("size"), int)
                  and isinstance(entry.get("tokens"), list) and all(isinstance(t, str) for t in entry["tokens"]))
            if not ok:
                raise ModelError(f"template state: entry {i} must have a string id, integer size and string tokens")
            tokens = tuple(entry["tokens"])
            templates.append(TemplateInfo(entry["id"], " ".join(tokens), tokens, entry["size"]))
        expected = template_ids(t.template for t in templates)
        if len(expected) != len(templates) or any(expected[t.template] != t.template_id for t in templates):
            raise ModelError("template state: template ids do not match their templates (edited or corrupt file)")
        obj = cls(config, cache_size=cache_size)
        obj._messages = messages
        obj._set_templates(templates)
        return obj

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the JSON state atomically (temp file in the same folder, then ``os.replace``).

        A reader never sees a half-written state. Local (or mounted) file systems only. Returns the
        :attr:`version`.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("templates: saved %d templates, version %s, to %s", len(self), self.version, target)
        return self.version

    @classmethod
    def load(cls, path: str | os.PathLike[str], cache_size: int = 200_000) -> Templates:
        """Read a state written by :meth:`save`.

        Raises:
            ModelError: missing or unreadable file, unknown format version, inconsistent content.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelError(f"cannot read template state {path}: {e}") from None
        try:
            obj = cls.from_json(text, cache_size=cache_size)
        except ModelError as e:
            raise ModelError(f"{path}: {e}") from None
        log.info("templates: loaded %d templates, version %s, from %s", len(obj), obj.version, path)
        return obj

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        # Spark may pickle a closure holding this object: go through our JSON, never drain3 objects.
        return (_from_json_for_pickle, (self.to_json(), self._cache_size))

    def __repr__(self) -> str:
        return f"Templates({len(self)} templates, version={self.version})"


def _from_json_for_pickle(state: str, cache_size: int) -> Templates:
    return Templates.from_json(state, cache_size=cache_size)


@functools.lru_cache(maxsize=4)
def templates_from_state(state: str) -> Templates:
    """The :class:`Templates` of a broadcast JSON state, built once per Python worker and reused.

    Spark calls a ``mapInPandas`` function once per partition; this cache keeps the rebuilt matcher (and
    its message cache) across partitions of the same job on one worker.
    """
    return Templates.from_json(state)


__all__ = [
    "DEFAULT_MASKING",
    "MATCH_STRATEGIES",
    "PRESETS",
    "STATE_FORMAT_VERSION",
    "TemplateConfig",
    "TemplateInfo",
    "NearestMatch",
    "TemplateMatch",
    "Templates",
    "UNKNOWN_TEMPLATE_ID",
    "preset",
    "template_ids",
    "templates_from_state",
]

