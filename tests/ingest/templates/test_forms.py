"""Matching by masked form (``Templates._match_form``) against token-by-token matching (the reference).

A new message whose masked text was seen before takes its form's template and a params recipe;
these tests check that this gives the reference's result, class included, on every preset, with
extra delimiters, nearest matching, the fixture logs and random messages, and that every kind of
recipe is exercised (so a wrong recipe would show).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loganomaly.ingest.templates.masking import PRESETS, TemplateConfig
from loganomaly.ingest.templates.miner import Templates, _Picks
from tests.ingest.templates.test_miner import _corpus

LOGS = Path(__file__).resolve().parents[2] / "resources" / "logs"


def _messages(seed: int, n: int) -> list[str]:
    """The miner tests' corpus plus lines whose variable parts sit inside wildcard tokens, share a
    token with literal text, or carry a delimiter, so forms need each kind of recipe."""
    rng = random.Random(seed)
    out = _corpus(seed, n)
    for _ in range(n):
        ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        port = rng.randrange(1024, 65535)
        pick = rng.randrange(8)
        if pick == 0:
            out.append(f"tcp {rng.choice(['conn', 'dns', 'http'])} {ip}:{port} -> 10.0.1.{rng.randrange(9)}:53 "
                       f"{rng.choice(['SF', 'REJ', 'S0'])}")
        elif pick == 1:
            out.append(f"connect from {rng.choice(['host', 'peer', 'node'])}/{ip}:{port} "
                       f"id={rng.randrange(10**6)} user={rng.choice(['a', 'b'])}")
        elif pick == 2:
            out.append(f"job {rng.choice(['x', 'y'])}{rng.randrange(99)} took {rng.random() * 99:.2f}s "
                       f"on {rng.choice(['n1', 'n2', 'n3'])}")
        elif pick == 3:
            out.append(f"Receiving block blk_{rng.randrange(10**9)} src: /{ip}:{port} dest: /{ip}:50010")
        elif pick == 4:
            out.append(f"GET /a/{rng.randrange(9)}/b/{rng.choice(['c', 'd'])} from {ip} status={rng.choice([200, 404])}")
        elif pick == 5:
            out.append(f"<{rng.choice(['IP', 'NUM'])}> literal {ip} and <x>")  # the reference path
        elif pick == 6:
            out.append(f"value {rng.randrange(-99, 99)}:{rng.randrange(99)},{rng.randrange(9)} mac "
                       f"{':'.join(f'{rng.randrange(256):02x}' for _ in range(6))}")
        else:
            out.append(f"worker{rng.randrange(4)} 0x{rng.randrange(16**4):x}/{rng.randrange(9)} done")
    rng.shuffle(out)
    return out


def _check(templates: Templates, messages: list[str]) -> None:
    for message in messages:
        got = templates.match(message)
        want = templates._match_reference(message)
        assert (type(got), got) == (type(want), want), message


CONFIGS = {
    **{f"preset {name}": config for name, config in PRESETS.items()},
    "delimiters": TemplateConfig(extra_delimiters=("=", ",", ":")),
    "nearest": TemplateConfig(nearest_min_similarity=0.5),
    "wildcard masks": TemplateConfig(masking=((r"\d+", "*"), (r"[a-f]{2,}", "HEX"))),
    "numeric tokens kept": TemplateConfig(parametrize_numeric_tokens=False, sim_th=0.3),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forms_match_the_reference(name: str) -> None:
    templates = Templates(CONFIGS[name]).fit(_messages(0, 300))
    _check(templates, _messages(1, 400))
    _check(templates, _messages(1, 400))  # now from the message cache


def test_every_recipe_kind_is_exercised() -> None:
    """Forms with all values as params, constant params, picks and wildcard tokens holding values
    all occur (and matched the reference above); a recipe bug in any of them would fail there."""
    kinds: set[str] = set()
    for config in CONFIGS.values():
        templates = Templates(config).fit(_messages(0, 300))
        for message in _messages(1, 400):
            templates.match(message)
        for _, _, _, recipe in templates._forms.values():
            kinds.add("all values" if recipe is None else "constant" if isinstance(recipe, tuple) and
                      not isinstance(recipe, _Picks) else "picks" if isinstance(recipe, _Picks) else "pieces")
    assert kinds == {"all values", "constant", "picks", "pieces"}


def test_fixture_logs() -> None:
    for path in sorted(LOGS.glob("*.log")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        templates = Templates().fit(lines[: len(lines) // 2])
        _check(templates, lines)


def test_cache_counts_and_sizes() -> None:
    """A form seen before counts as a hit without a search; the form cache stays bounded."""
    templates = Templates(cache_size=50).fit(_corpus(0, 200))
    messages = _corpus(1, 300)
    for message in messages:
        templates.match(message)
    hits, searches = templates.cache_counts()
    assert hits + searches == len(messages)
    assert searches < 20 and len(templates._forms) <= 50
    uncached = Templates(cache_size=0).fit(_corpus(0, 200))
    assert [uncached.match(m) for m in messages] == [templates.match(m) for m in messages]
    assert not uncached._forms


_TOKENS = st.sampled_from([
    "a", "b", "user", "=", "x=1", "id=42", "10.0.0.1", "10.0.0.1:80", "/10.1.2.3:5", "[::1]:22", "fe80::1",
    "0xff", "0x1a/2", "blk_-5", "blk_7", "3.5", "-7", "+2", "/usr/lib/x", "a/b/c", "de:ad:be:ef:00:01",
    "123e4567-e89b-12d3-a456-426614174000", "(uid=0)", "x:1,2", "é", "\u00a0", "\x1c", "tab\tsep", "<", ">", "<NUM>",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_TOKENS, min_size=1, max_size=8).map(" ".join), min_size=1, max_size=30))
def test_random_messages(messages: list[str]) -> None:
    for config in (TemplateConfig(), TemplateConfig(extra_delimiters=("=", ":")), PRESETS["HDFS"]):
        templates = Templates(config).fit(messages[::2])
        _check(templates, messages)
