"""The template miner's config, masking rules and presets (Spark-free)."""

from __future__ import annotations

import json

import pytest

from loganomaly.errors import ConfigError
from loganomaly.ingest.templates.masking import PRESETS, TemplateConfig, preset
from loganomaly.ingest.templates.miner import Templates
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


def test_hdfs_preset_matches_lines_that_differ_in_numbers_by_one_form() -> None:
    """HDFS lines that differ only in a size or an index share one masked form, so matching
    searches Drain once for them, not once per line (sizes left unmasked made 40 % of the bench's
    generated lines a search), and the numbers come back as params."""
    hdfs = Templates(preset("HDFS")).fit(
        [f"Received block blk_{i} of size {1000 + 7 * i} from /10.0.0.{i % 9}:{5000 + i}" for i in range(50)]
        + [f"PacketResponder {i % 3} for block blk_{i} terminating" for i in range(50)]
    )
    assert len(hdfs) == 2
    lines = [f"Received block blk_-{i} of size {67108864 - i} from /10.1.2.{i % 200}:{40000 + i}" for i in range(300)]
    matched = hdfs.match_many(lines)
    hits, searches = hdfs.cache_counts()
    assert searches == 1 and hits == 299
    assert len({m.template_id for m in matched}) == 1
    assert f"{67108864 - 5}" in matched[5].params and "blk_-5" in matched[5].params
