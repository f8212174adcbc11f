"""Matching many messages at once (``Templates.match_many`` with token-local rules) against the
token-by-token reference.

With rules that cannot match a space (:func:`token_local`), ``match_many`` masks each distinct
token of a block once (``_Preprocessor.mask_block``) instead of running the masking regex over
every message. These tests check that the rules are classified right, that the block path is the
one taken, and that it gives the reference's result on every preset, the fixture logs and random
messages (spaces doubled, empty messages, ``None``, messages holding ``<``).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loganomaly.ingest.templates import miner
from loganomaly.ingest.templates.masking import DEFAULT_MASKING, PRESETS, TemplateConfig, token_local
from loganomaly.ingest.templates.miner import Templates
from tests.ingest.templates.test_forms import _TOKENS, CONFIGS, _messages

LOGS = Path(__file__).resolve().parents[2] / "resources" / "logs"


def _check(templates: Templates, messages: list[str | None]) -> None:
    """``match_many`` and ``match_columns`` (every third row not an event) against the reference."""
    want = [templates.match(None) if m is None else templates._match_reference(m) for m in messages]
    got = templates.match_many(messages)
    assert len(got) == len(want)
    for message, g, w in zip(messages, got, want, strict=True):
        assert (type(g), g) == (type(w), w), message
    is_event = [i % 3 != 1 for i in range(len(messages))]
    ids, texts, params = templates.match_columns(messages, is_event)
    rows = list(zip(ids.to_pylist(), texts.to_pylist(), params.to_pylist(), strict=True))
    expected = [(w[0], w[1], list(w[2])) if event else (None, None, None) for w, event in zip(want, is_event, strict=True)]
    assert rows == expected
    # The same messages as an Arrow column (a block parser's): the same three columns.
    arrow = templates.match_columns(pa.array(messages, pa.string()), is_event)
    assert [c.to_pylist() for c in arrow] == [ids.to_pylist(), texts.to_pylist(), params.to_pylist()]


@pytest.mark.parametrize(
    ("pattern", "local"),
    [
        (r"(?<![A-Za-z0-9])\d+(?![A-Za-z0-9])", True),
        (r"\bfoo\b", True),
        (r"\S+x", True),
        (r"(?<![^ ])x", True),  # "not preceded by a non-space": the edge and the space agree
        (r"(?=\d)\w+", True),
        (r"\d+ bytes", False),  # a literal space
        (r"\s\d", False),
        (r"a.b", False),  # "." matches a space
        (r"[^a]+", False),  # a negated class holding the space
        (r"[\x00-\x7f]", False),
        (r"\W", False),
        (r"^x", False),  # anchored to the text's start, not a token's
        (r"x$", False),
        (r"(?<= )x", False),  # a look-behind that needs the space
        (r"(a)\1", False),  # not handled: unsure, so not local
    ],
)
def test_token_local_rules(pattern: str, local: bool) -> None:
    assert token_local([(pattern, "X")]) is local


def test_built_in_rules() -> None:
    assert token_local(DEFAULT_MASKING)
    assert {name for name, config in PRESETS.items() if not token_local(config.masking)} == {"Proxifier"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_block_matches_the_reference(name: str) -> None:
    templates = Templates(CONFIGS[name]).fit(_messages(0, 300))
    messages: list[str | None] = list(_messages(1, 400))
    messages[::37] = [None] * len(messages[::37])
    _check(templates, messages)
    _check(templates, messages)  # now from the token and form caches
    assert (templates._pre.token_cache is not None) == (
        templates._pre.regex is not None and token_local(CONFIGS[name].masking)
    )


@pytest.mark.parametrize("columns", [False, True])
def test_block_path_is_taken_and_counted(columns: bool) -> None:
    templates = Templates().fit(_messages(0, 300))
    messages = _messages(1, 400)
    if columns:
        templates.match_columns(messages, [True] * len(messages))
    else:
        templates.match_many(messages)
    assert templates._pre.token_cache  # the block path filled it
    hits, searches = templates.cache_counts()
    assert hits + searches == len(messages)
    assert searches < len(messages) // 4


def test_block_mixes_every_recipe_kind() -> None:
    """One block whose rows' forms take params in all three ways of ``_block_columns`` (the masked
    values as they are, a take of values and constants, rows built one by one), interleaved: the
    columns equal the reference, so the vectorised take and the reassembly of the three groups in
    row order are both checked."""
    for config in CONFIGS.values():
        templates = Templates(config).fit(_messages(0, 300))
        messages: list[str | None] = list(_messages(1, 400))
        _check(templates, messages)
        kinds = {miner._recipe_kind(form[3]) for form in templates._forms.values()}
        if kinds == {0, 1, 2}:
            return
    pytest.fail("no test config gives forms of all three kinds in one block")


def test_nearest_lines_are_counted_alike() -> None:
    config = TemplateConfig(nearest_min_similarity=0.5)
    fitted = Templates(config).fit(_messages(0, 300)).to_json()
    messages = [m + " extra words" for m in _messages(1, 300)]
    by_rows, by_columns = Templates.from_json(fitted), Templates.from_json(fitted)
    by_rows.match_many(messages)
    by_columns.match_columns(messages, [True] * len(messages))
    assert by_rows.nearest_lines > 0
    assert by_columns.nearest_lines == by_rows.nearest_lines
    assert by_columns.cache_counts() == by_rows.cache_counts()


def test_space_holding_rules_keep_the_whole_message_pass() -> None:
    """Proxifier's size rule matches across a space: splitting would change its values."""
    templates = Templates(PRESETS["Proxifier"]).fit(["x 1190 bytes (1.16 KB) sent"] * 3)
    messages = [f"proxy {n} bytes ({n / 1000:.2f} KB) sent to h{n % 7}:{n}" for n in range(1000, 1100)]
    assert templates._pre.token_cache is None
    _check(templates, messages)
    assert templates.match_many(messages)[0].params[0] == "1000 bytes (1.00 KB)"


def test_fixture_logs() -> None:
    for path in sorted(LOGS.glob("*.log")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        templates = Templates().fit(lines[: len(lines) // 2])
        _check(templates, list(lines))


@pytest.mark.parametrize("size", [40, 400])
def test_bounded_token_cache(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """A full cache is cleared and long tokens are not kept; with room, the tokens kept by one
    block are the ones the next block reads from the cache (400: kept across blocks)."""
    monkeypatch.setattr(miner, "_TOKEN_CACHE_SIZE", size)
    monkeypatch.setattr(miner, "_TOKEN_CACHE_CHARS", 6)
    templates = Templates().fit(_messages(0, 300))
    messages = _messages(1, 400)
    for start in range(0, len(messages), 50):
        _check(templates, messages[start:start + 50])
        assert len(templates._pre.token_cache or {}) <= size
    assert all(len(token) <= 6 for token in templates._pre.token_cache or {})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.none(), st.lists(st.one_of(_TOKENS, st.just("")), max_size=8).map(" ".join)),
        min_size=16,
        max_size=60,
    )
)
def test_random_messages(messages: list[str | None]) -> None:
    for config in (TemplateConfig(), TemplateConfig(extra_delimiters=("=", ":")), PRESETS["HDFS"]):
        templates = Templates(config).fit([m for m in messages[::2] if m is not None])
        _check(templates, messages)
