"""Template mining (Drain) with our JSON state: pure Python, no Spark, no shared data."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys

import pytest

from loganomaly.errors import ModelError
from loganomaly.ingest.templates import masking
from loganomaly.ingest.templates import miner as tpl
from loganomaly.ingest.templates.miner import (
    PRESETS,
    UNKNOWN_TEMPLATE_ID,
    TemplateConfig,
    TemplateMatch,
    Templates,
    template_ids,
)


def _corpus(seed: int = 0, n: int = 400) -> list[str]:
    """HDFS-, sshd- and kernel-like lines with varying ids, addresses and numbers."""
    rng = random.Random(seed)
    users = ["root", "admin", "alice", "bob", "oracle"]
    out = []
    for _ in range(n):
        blk = f"blk_{rng.choice(['', '-'])}{rng.randrange(10**17, 10**18)}"
        ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        kind = rng.randrange(7)
        if kind == 0:
            out.append(f"Receiving block {blk} src: /{ip}:{rng.randrange(1024, 65535)} dest: /{ip}:50010")
        elif kind == 1:
            out.append(f"PacketResponder {rng.randrange(3)} for block {blk} terminating")
        elif kind == 2:
            out.append(f"Received block {blk} of size {rng.randrange(1, 10**8)} from /{ip}")
        elif kind == 3:
            out.append(f"Accepted password for {rng.choice(users)} from {ip} port {rng.randrange(1024, 65535)} ssh2")
        elif kind == 4:
            out.append(f"Failed password for invalid user {rng.choice(users)} from {ip} port {rng.randrange(1024, 65535)}")
        elif kind == 5:
            out.append(f"session opened for user {rng.choice(users)} by (uid={rng.randrange(1000)})")
        else:
            out.append(f"kernel: eth0 link up at 0x{rng.randrange(16**6):06x} speed {rng.choice([100, 1000])} Mbps")
    return out


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus()


@pytest.fixture(scope="module")
def fitted(corpus: list[str]) -> Templates:
    return Templates().fit(corpus)


def _probe_messages(corpus: list[str]) -> list[str]:
    """Training lines, fresh lines of the same kinds, and lines no template covers."""
    return corpus + _corpus(seed=1, n=200) + [
        "",
        "   ",
        "totally new message from 10.9.8.7 with 12 things",
        "PacketResponder 1 for block blk_1 terminating now",
        "Accepted publickey for root from 10.0.0.1 port 22 ssh2",
        "kernel: eth1 link down",
    ]


# ------------------------------------------------------------------------------------------ matching
def test_fit_learns_one_template_per_kind(fitted: Templates) -> None:
    texts = {t.template for t in fitted.templates}
    assert "PacketResponder <NUM> for block <BLK> terminating" in texts
    assert "Received block <BLK> of size <NUM> from /<IP>" in texts
    assert "Receiving block <BLK> src: /<IP> dest: /<IP>" in texts
    assert "Accepted password for <*> from <IP> port <NUM> ssh2" in texts
    assert len(fitted) == 7
    assert sum(t.size for t in fitted.templates) == 400
    for t in fitted.templates:
        assert t.template_id.startswith("T") and len(t.template_id) == 13
        assert fitted.template(t.template_id) == t.template
    assert fitted.template(UNKNOWN_TEMPLATE_ID) is None


def test_match_known_message_gives_template_and_params(fitted: Templates) -> None:
    m = fitted.match("PacketResponder 2 for block blk_-42 terminating")
    assert isinstance(m, TemplateMatch)
    assert m.template == "PacketResponder <NUM> for block <BLK> terminating"
    assert m.template_id == template_ids([m.template])[m.template]
    assert m.params == ("2", "blk_-42")


def test_hdfs_block_id_is_a_param_in_order(fitted: Templates) -> None:
    m = fitted.match("Receiving block blk_-1608999687919862906 src: /10.250.19.102:54106 dest: /10.250.19.102:50010")
    assert m.template == "Receiving block <BLK> src: /<IP> dest: /<IP>"
    assert m.params == ("blk_-1608999687919862906", "10.250.19.102:54106", "10.250.19.102:50010")
    m = fitted.match("Received block blk_7 of size 91178 from /10.251.71.16")
    assert m.params == ("blk_7", "91178", "10.251.71.16")


def test_wildcard_params_keep_message_order(fitted: Templates) -> None:
    m = fitted.match("Accepted password for mallory from 192.168.1.5 port 4242 ssh2")
    assert m.template == "Accepted password for <*> from <IP> port <NUM> ssh2"
    assert m.params == ("mallory", "192.168.1.5", "4242")
    m = fitted.match("session opened for user carol by (uid=7)")
    assert m.template_id != UNKNOWN_TEMPLATE_ID
    assert "carol" in m.params and m.params.index("carol") < len(m.params) - 1


def test_unknown_message_gets_unknown_id_and_masked_params(fitted: Templates) -> None:
    m = fitted.match("disk /dev/sda1 failed at 10.1.2.3:8080 after 12 retries")
    assert m == TemplateMatch(UNKNOWN_TEMPLATE_ID, None, ("/dev/sda1", "10.1.2.3:8080", "12"))
    # same length and first tokens as a template, but a constant token differs: no exact match
    assert fitted.match("PacketResponder 1 for block blk_1 exploded").template_id == UNKNOWN_TEMPLATE_ID
    assert fitted.match(None) == TemplateMatch(UNKNOWN_TEMPLATE_ID, None, ())  # type: ignore[arg-type]
    assert Templates().match("anything 1").template_id == UNKNOWN_TEMPLATE_ID  # unfitted: all unknown


def test_default_masks() -> None:
    t = Templates()
    msg = ("conn 10.0.0.1:80 [2001:db8::1]:443 fe80::1ff:fe23:4567:890a blk_-5 0x1F uuid "
           "123e4567-e89b-12d3-a456-426614174000 mac 00:1a:2b:3c:4d:5e took -42 and 3.5 /var/log/syslog")
    m = t.match(msg)
    assert m.params == ("10.0.0.1:80", "[2001:db8::1]:443", "fe80::1ff:fe23:4567:890a", "blk_-5", "0x1F",
                        "123e4567-e89b-12d3-a456-426614174000", "00:1a:2b:3c:4d:5e", "-42", "3.5",
                        "/var/log/syslog")
    t.fit([msg])
    assert t.templates[0].template == ("conn <IP> <IP> <IP> <BLK> <HEX> uuid <UUID> mac <MAC> took <NUM> and "
                                       "<NUM> <PATH>")
    # words with digits, times and versions are not masked as addresses
    assert Templates().match("v2 12:34:56 host1 ab12").params == ("12", "34", "56")


def test_extra_delimiters_and_star_masks() -> None:
    config = TemplateConfig(extra_delimiters=("=", ","), masking=((r"\d+", "*"),))
    t = Templates(config).fit(["a=1,b=2 done", "a=3,b=4 done"])
    assert [x.template for x in t.templates] == ["a <*> b <*> done"]
    assert t.match("a=10,b=20 done").params == ("10", "20")


# ------------------------------------------------------------------------------------------ state
def test_json_round_trip_matches_identically(fitted: Templates, corpus: list[str]) -> None:
    again = Templates.from_json(fitted.to_json())
    assert again.version == fitted.version
    assert again.to_json() == fitted.to_json()
    probes = _probe_messages(corpus)
    assert again.match_many(probes) == fitted.match_many(probes)
    unknown = sum(m.template_id == UNKNOWN_TEMPLATE_ID for m in fitted.match_many(probes))
    assert 0 < unknown < len(probes)


@pytest.mark.parametrize("strategy", ["never", "fallback", "always"])
def test_matcher_equals_drain3_match(fitted: Templates, corpus: list[str], strategy: str) -> None:
    """Our tokens-in matcher gives what drain3's own ``Drain.match`` gives on the same tree."""
    t = Templates.from_json(fitted.to_json().replace('"fallback"', f'"{strategy}"'))
    matcher = t._matcher
    for message in _probe_messages(corpus):
        tokens = t._pre(message)[0]
        ours = matcher.find(tokens)
        theirs = matcher.drain.match(" ".join(tokens), full_search_strategy=strategy)
        assert (ours.cluster_id if ours else None) == (theirs.cluster_id if theirs else None)


def test_training_messages_all_match_a_template(fitted: Templates, corpus: list[str]) -> None:
    assert all(m.template_id != UNKNOWN_TEMPLATE_ID for m in fitted.match_many(corpus))


def test_version_changes_with_state_only(corpus: list[str]) -> None:
    a = Templates().fit(corpus)
    assert Templates().fit(corpus).version == a.version  # same input, same state
    assert Templates(cache_size=0).fit(corpus).version == a.version  # the cache is not state
    assert Templates().fit(corpus[:300]).version != a.version  # sizes differ
    assert Templates().fit(corpus + ["brand new line"]).version != a.version
    assert Templates(TemplateConfig(sim_th=0.5)).fit(corpus).version != a.version
    a.match_many(corpus)
    assert a.version == Templates().fit(corpus).version  # matching never learns


def test_fitting_twice_gives_the_same_ids(corpus: list[str]) -> None:
    t = Templates()
    first = t.fit_predict(corpus)
    second = t.fit_predict(corpus)
    assert first == second
    assert set(first) == {x.template_id for x in t.templates}


def test_ids_do_not_depend_on_order_of_unrelated_clusters(corpus: list[str]) -> None:
    hdfs = [m for m in corpus if "block" in m]
    other = [m for m in corpus if "block" not in m]
    a = Templates().fit(hdfs + other)
    b = Templates().fit(other + hdfs)
    assert {(x.template_id, x.template) for x in a.templates} == {(x.template_id, x.template) for x in b.templates}
    assert a.version == b.version


def test_template_ids_resolve_prefix_collisions_deterministically(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tpl, "_ID_HEX", 1)  # one hex digit: 40 texts must collide
    texts = [f"template {i}" for i in range(40)]
    ids = template_ids(texts)
    assert len(set(ids.values())) == 40
    assert template_ids(reversed(texts)) == ids
    assert template_ids(texts + texts) == ids


def test_save_load_atomic(tmp_path, fitted: Templates, corpus: list[str]) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "state" / "templates.json"
    assert fitted.save(path) == fitted.version
    assert os.listdir(path.parent) == ["templates.json"]  # no temp file left behind
    loaded = Templates.load(path)
    assert loaded.version == fitted.version
    assert loaded.match_many(corpus[:50]) == fitted.match_many(corpus[:50])
    fitted.save(path)  # overwrite in place
    assert Templates.load(path).version == fitted.version


def test_load_refuses_bad_files(tmp_path, fitted: Templates) -> None:  # type: ignore[no-untyped-def]
    state = json.loads(fitted.to_json())
    cases = {
        "missing.json": None,
        "garbage.json": "not json {",
        "other.json": json.dumps({"format": "something else"}),
        "future.json": json.dumps({**state, "format_version": 99}),
        "noversion.json": json.dumps({k: v for k, v in state.items() if k != "format_version"}),
        "badconfig.json": json.dumps({**state, "config": {**state["config"], "depth": 1}}),
        "tampered.json": json.dumps({**state, "templates": [{**state["templates"][0], "tokens": ["x"]}]}),
        "badentry.json": json.dumps({**state, "templates": [{"id": "T1"}]}),
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ModelError):
            Templates.load(path)
    with pytest.raises(ModelError, match="format version 99"):
        Templates.load(tmp_path / "future.json")


def test_pickle_goes_through_json(fitted: Templates, corpus: list[str]) -> None:
    clone = pickle.loads(pickle.dumps(fitted))
    assert clone.version == fitted.version
    assert clone.match_many(corpus[:50]) == fitted.match_many(corpus[:50])


def test_templates_from_state_is_reused(fitted: Templates) -> None:
    state = fitted.to_json()
    assert tpl.templates_from_state(state) is tpl.templates_from_state(state)


# ------------------------------------------------------------------------------------------ cache
def test_cache_does_not_change_results(fitted: Templates, corpus: list[str]) -> None:
    probes = _probe_messages(corpus) * 2
    uncached = Templates.from_json(fitted.to_json(), cache_size=0)
    small = Templates.from_json(fitted.to_json(), cache_size=3)  # constant eviction
    expected = [uncached.match(m) for m in probes]
    assert uncached.match_many(probes) == expected
    assert small.match_many(probes) == expected
    assert fitted.match_many(probes) == expected
    assert fitted.cache_counts()[0] > 0  # repeated forms (match_many's block path skips the message cache)
    assert [fitted.match(m) for m in probes] == expected
    info = fitted.cache_info()
    assert info is not None and info.hits > 0
    assert uncached.cache_info() is None


def test_messages_differing_only_in_masked_values_are_searched_once(fitted: Templates, corpus: list[str]) -> None:
    # New messages (never seen raw) of forms already seen: the masked-form cache answers them, same results.
    fresh = [m.replace("1", "7").replace("2", "9") for m in _probe_messages(corpus)]
    uncached = Templates.from_json(fitted.to_json(), cache_size=0)
    cached = Templates.from_json(fitted.to_json())
    cached.match_many(_probe_messages(corpus))
    hits, searches = cached.cache_counts()
    assert cached.match_many(fresh) == [uncached.match(m) for m in fresh]
    more_hits, more_searches = cached.cache_counts()
    assert more_hits + more_searches - hits - searches == len(fresh)
    assert more_hits - hits > 0  # some fresh messages reuse a searched form
    assert uncached.cache_counts() == (0, len(fresh))  # no cache: every message is searched


# ------------------------------------------------------------------------------------------ config
def test_module_imports_without_spark() -> None:
    code = "import sys, loganomaly.ingest.templates.miner; assert 'pyspark' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------ masking paths
def test_fast_and_exact_masking_paths_agree(corpus: list[str]) -> None:
    """Messages without '<' take a fast path; it must give what the offset-tracking path gives."""
    for config in (TemplateConfig(), TemplateConfig(extra_delimiters=("=", ":")), PRESETS["Proxifier"]):
        pre = Templates(config)._pre
        for message in _probe_messages(corpus) + ["a=1:b=10.0.0.1:80 x=/usr/lib/x y=0xff"]:
            fast_tokens, fast_values, fast_info = pre(message)
            tokens, values, info = pre._exact(message)
            assert (fast_tokens, fast_values) == (tokens, values)
            assert fast_tokens == pre.tokens(message)
            assert fast_info.keys() == info.keys()
            for i, (vals, raw) in info.items():
                assert fast_info[i][0] == vals
                assert pre.unmask(tokens[i], vals) == raw


def test_literal_mask_lookalike_does_not_shift_params() -> None:
    t = Templates().fit(["got <NUM> from 10.0.0.1 port 1", "got <NUM> from 10.0.0.2 port 2"])
    assert t.match("got <NUM> from 10.0.0.3 port 3").params == ("10.0.0.3", "3")
    assert t.match("got <IP> x 7").params == ("7",)  # unknown, literal text is not a value


def test_first_character_lookahead_changes_nothing(corpus: list[str]) -> None:
    import re

    extra = ["x 1.2.3.4:5 ::1 [::1]:8 +7 -8 ٣4 /a/b blk_-1 0XAB", "core.12 =5 <1 sec 12 bytes (1.2 KB)"]
    for config in PRESETS.values():
        fast = masking.combined_mask_regex(config.masking)
        assert fast is not None or not config.masking
        if fast is None:
            continue
        plain = re.compile("|".join(f"(?P<m{i}>{p})" for i, (p, _) in enumerate(config.masking)))
        for message in _probe_messages(corpus) + extra:
            assert [(m.span(), m.lastgroup) for m in fast.finditer(message)] == \
                [(m.span(), m.lastgroup) for m in plain.finditer(message)]
    assert masking.first_chars(r".+x") is None  # any character: no look-ahead
    assert masking.first_chars(r"(?i)abc") is None
    assert masking.first_chars(r"a?b") == ["a", "b"]
