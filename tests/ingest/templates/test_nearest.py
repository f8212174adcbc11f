"""Nearest-template matching for drifted messages (``nearest_min_similarity``): pure Python, no Spark."""

from __future__ import annotations

import pytest

from loganomaly.errors import ConfigError
from loganomaly.ingest.templates.miner import (
    UNKNOWN_TEMPLATE_ID,
    NearestMatch,
    TemplateConfig,
    TemplateMatch,
    Templates,
)

# Masking off so that the "variable part" below is a constant to Drain: it is what drift looks
# like when a release adds or rewords a field no mask covers.
PLAIN = TemplateConfig(masking=())
TRAIN = [
    "torus receiver x+ input pipe error detected and corrected",
    "torus receiver x+ input pipe error detected and corrected",
    "instruction cache parity error corrected",
    "instruction cache parity error corrected",
    "ciod: LOGIN chdir(/p/gb2/run1) failed: No such file or directory",
    "ciod: LOGIN chdir(/p/gb2/run2) failed: No such file or directory",
]


def _fit(min_similarity: float) -> Templates:
    return Templates(PLAIN.replace(nearest_min_similarity=min_similarity)).fit(TRAIN)


def test_a_drifted_variable_part_lands_on_its_relative() -> None:
    t = _fit(0.6)
    exact = t.match("instruction cache parity error corrected")
    drifted = t.match_many(["torus receiver y+ input pipe error detected and corrected",
                            "ciod: LOGIN chdir(/home/alice/job) failed: No such file or directory",
                            "instruction cache parity error corrected"])
    torus = next(x for x in t.templates if x.template.startswith("torus"))
    assert isinstance(drifted[0], NearestMatch) and drifted[0].template_id == torus.template_id
    assert drifted[0].template == torus.template
    # Drain made the path a wildcard while learning: a new path is an exact fit, not a nearest one.
    assert drifted[1].template == "ciod: LOGIN <*> failed: No such file or directory"
    assert not isinstance(drifted[1], NearestMatch)
    assert not isinstance(drifted[2], NearestMatch) and drifted[2] == exact
    assert t.nearest_lines == 1  # counted per line; exact fits are not among them
    # Still a 3-tuple: every caller that unpacks (id, text, params) keeps working.
    template_id, text, params = drifted[0]
    assert isinstance(drifted[0], TemplateMatch) and template_id == torus.template_id and params == ()


def test_a_message_with_no_close_relative_stays_unknown() -> None:
    t = _fit(0.7)
    r = t.match_many(["idoproxydb hit ASSERT condition: ASSERT expression=0",
                      # 4 constants shared of 5, 1 token not a constant: 4 / 6 = 0.67
                      "instruction cache parity error detected"])
    assert [x.template_id for x in r] == [UNKNOWN_TEMPLATE_ID, UNKNOWN_TEMPLATE_ID]
    assert t.nearest_lines == 0
    # The same message goes to its relative once the minimum similarity allows 0.67.
    relative = _fit(0.65).match("instruction cache parity error detected")
    assert relative.template == "instruction cache parity error corrected"
    assert _fit(0.65).match("instruction cache parity error").template_id != UNKNOWN_TEMPLATE_ID  # 4 / 5


def test_wildcards_absorb_the_values_they_stand_for() -> None:
    # Drain generalised the chdir path to <*>. A message with a new path and one extra word: 8
    # constants shared, 2 tokens that are not constants, one absorbed by the wildcard: 8 / 9.
    t = _fit(0.8)
    chdir = next(x for x in t.templates if x.template.startswith("ciod"))
    assert "<*>" in chdir.tokens
    r = t.match("ciod: LOGIN chdir(/x) failed: No such file or directory here")
    assert r.template_id == chdir.template_id and isinstance(r, NearestMatch)


def test_off_by_default_and_the_state_version_is_unchanged() -> None:
    off = Templates(PLAIN).fit(TRAIN)
    assert off.match("torus receiver y+ input pipe error detected and corrected").template_id == UNKNOWN_TEMPLATE_ID
    assert "nearest_min_similarity" not in off.to_dict()["config"]
    on = _fit(0.6)
    assert on.to_dict()["config"]["nearest_min_similarity"] == 0.6
    assert on.version != off.version  # the setting changes what the state matches, so its version


def test_the_setting_survives_the_json_state() -> None:
    t = _fit(0.6)
    loaded = Templates.from_json(t.to_json())
    message = "torus receiver z- input pipe error detected and corrected"
    assert loaded.match(message) == t.match(message) and isinstance(loaded.match(message), NearestMatch)
    assert loaded.version == t.version


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.5"])
def test_bad_minimum_similarity_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="nearest_min_similarity"):
        TemplateConfig(nearest_min_similarity=bad)  # type: ignore[arg-type]


def test_the_setting_comes_from_templates_options() -> None:
    from loganomaly.config import TemplatesConfig
    from loganomaly.ingest.templates.store import template_config

    cfg = template_config(TemplatesConfig(preset="BGL", options={"nearest_min_similarity": 0.6}))
    assert cfg.nearest_min_similarity == 0.6 and cfg.depth == 6  # the preset's other settings stay
    with pytest.raises(ConfigError, match="nearest_min_similarity"):
        template_config(TemplatesConfig(options={"nearest_min_similarity": 2}))
