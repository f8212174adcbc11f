"""The template miner's config, masking rules and presets (Spark-free)."""

from __future__ import annotations

import json
import random

import pytest

from loganomaly.errors import ConfigError
from loganomaly.ingest.templates.masking import PRESETS, TemplateConfig, preset, token_local
from loganomaly.ingest.templates.miner import Templates, _Preprocessor
from tests.ingest.templates.test_miner import _corpus


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"depth": 2}, "depth"),
        ({"depth": 4.0}, "depth"),
        ({"sim_th": 0}, "sim_th"),
        ({"sim_th": 1.5}, "sim_th"),
        ({"max_children": 1}, "max_children"),
        ({"max_clusters": 0}, "max_clusters"),
        ({"parametrize_numeric_tokens": "yes"}, "parametrize_numeric_tokens"),
        ({"match_strategy": "sometimes"}, "match_strategy"),
        ({"masking": [("(unclosed", "X")]}, "bad regex"),
        ({"masking": [(r"\d*", "NUM")]}, "empty string"),
        ({"masking": [(r"\d+", "bad name")]}, "mask name"),
        ({"masking": [(r"(a)\1", "X")]}, "back-references"),
        ({"masking": [(r"(?P<m1>a)", "X"), ("b", "Y")]}, "combined"),
        ({"masking": [("a", "X", "extra")]}, "pair"),
        ({"extra_delimiters": ["<"]}, "delimiter"),
        ({"extra_delimiters": [""]}, "delimiter"),
        ({"extra_delimiters": ["U"], "masking": [("x", "UID")]}, "delimiter"),
    ],
)
def test_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TemplateConfig.from_dict(changes)


def test_config_dict_round_trip_and_unknown_keys() -> None:
    config = TemplateConfig(depth=5, sim_th=0.6, extra_delimiters=["="], masking=[(r"\d+", "NUM")])  # type: ignore[arg-type]
    assert config.extra_delimiters == ("=",) and config.masking == ((r"\d+", "NUM"),)
    assert TemplateConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="unknown config key"):
        TemplateConfig.from_dict({"depht": 4})
    with pytest.raises(ConfigError):
        Templates(cache_size=-1)


def test_presets_are_valid() -> None:
    assert preset("HDFS") is PRESETS["HDFS"]
    assert len(PRESETS) == 17
    for config in PRESETS.values():
        Templates(config).fit(["a 1 b", "a 2 b"])
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("NoSuchSystem")
    hdfs = Templates(preset("HDFS")).fit(_corpus(n=100))
    m = hdfs.match("PacketResponder 0 for block blk_-99 terminating")
    assert "blk_-99" in m.params


def test_token_local_rules_are_recognised() -> None:
    """Rules that can match a space, anchor at the text's edges, match the empty string or read a
    space differently from the text's edge are not token-local; the defaults and presets are."""
    assert token_local(TemplateConfig().masking)
    assert all(token_local(cfg.masking) for name, cfg in PRESETS.items() if name != "Proxifier")
    assert not token_local(PRESETS["Proxifier"].masking)  # "<\d+\ssec" spans a space
    for pattern in (r"a b", r"^\d+", r"\d+$", r"[^x]+", r"\d+\s?ms", r".+", r"(?<= )\d+", r"(?<=[\s:])\d+",
                    r"\D+", r"\W+", r"x\Z", r"(?=\s)\d"):
        assert not token_local([(pattern, "A")]), pattern
    for pattern in (r"\bfoo\b", r"(?<![\w.])\d+(?![\w.])", r"0x\S+", r"[^\s=]+=\d+", r"\Bx"):
        assert token_local([(pattern, "A")]), pattern


_PIECES = ["10.0.0.1", "10.0.0.1:443", "[::1]:22", "fe80::1", "user7", "-5", "+3.5", "0x1F", "/var/log/x.log",
           "blk_-123", "00:1a:2b:3c:4d:5e", "3e4f2a1b-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "port", "=", "a=1", "(x)", "ü9",
           "٣4", "12:34:56", "core.12", "x\ty", "", "id=42,", "'/a/b'", "KB", "1.16", "e.g.", "0", "255.256.1.1"]  # fmt: skip


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if n != "Proxifier"))
def test_piece_masking_equals_whole_message_masking(name: str) -> None:
    """Masking piece by piece through the cache gives the whole-message result, values included,
    on every token-local preset, for messages with repeated, new, odd and empty pieces."""
    rng = random.Random(name)
    pre = _Preprocessor(PRESETS[name])
    assert pre.pieces is not None
    for _ in range(3000):
        message = " ".join(rng.choice(_PIECES) + rng.choice(["", "", str(rng.randrange(10**6))]) for _ in range(rng.randrange(1, 9)))
        assert pre.mask(message) == pre._mask_whole(message), message
    assert len(pre.pieces) > len(_PIECES)


def test_piece_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Preprocessor, "PIECE_CACHE_SIZE", 50)
    pre = _Preprocessor(TemplateConfig())
    for i in range(500):
        assert pre.mask(f"port {i} from 10.0.0.{i % 250}") == pre._mask_whole(f"port {i} from 10.0.0.{i % 250}")
        assert pre.pieces is not None and len(pre.pieces) <= 50
