"""A metric series as public benchmarks ship it (``timestamp,value``, one series per file) goes from
ingest to windows; events no window can hold (no entity) are reported, not dropped in silence."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest

from loganomaly.config import load_config
from loganomaly.features import stage as featurize
from loganomaly.ingest import stage as ingest
from loganomaly.lake.tables import Lake

pytestmark = pytest.mark.spark

CONF = Path(__file__).resolve().parents[2] / "conf"


def five_minute_series(tmp_path: Path, points: int) -> Path:
    """``raw/cpu_util.csv``: ``timestamp,value`` every 5 minutes, as public benchmarks ship a series."""
    raw = tmp_path / "raw"
    raw.mkdir()
    t0 = dt.datetime(2014, 2, 14, 14, 30)
    rows = [f"{(t0 + dt.timedelta(minutes=5 * i)):%Y-%m-%d %H:%M:%S},{50 + i % 7}" for i in range(points)]
    (raw / "cpu_util.csv").write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    return raw


def test_a_timestamp_value_file_is_one_windowed_series(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raw = five_minute_series(tmp_path, 120)
    cfg = load_config(profile="metrics", conf_dir=CONF, overrides=[
        f"lake.root={tmp_path / 'lake'}", "lake.engine=deltars", "features.metrics=[value]", "features.step_seconds=300",
        "train.train_until=2014-02-14T22:00:00Z"])
    lake = Lake(spark, str(tmp_path / "lake"), "deltars")
    loaded = ingest.run(spark, cfg, [str(raw)], lake=lake)
    assert (loaded.events, loaded.quarantined) == (120, 1)  # the header
    summary = featurize.run(spark, cfg, lake=lake)
    assert summary.windows > 10 and summary.entities == 1
    assert {r.entity for r in lake.read("sequences").select("entity").distinct().collect()} == {"cpu_util"}


@pytest.mark.parametrize(("step", "warned"), [(60, True), (300, False)])
def test_steps_finer_than_the_sampling_are_warned_about_with_settings_that_fit(  # type: ignore[no-untyped-def]
        spark, tmp_path: Path, caplog, step: int, warned: bool) -> None:
    """A 5-minute series under 1-minute steps leaves four steps in five empty (read as 0): the
    log says so and names the settings that fit; under 5-minute steps it says nothing."""
    raw = five_minute_series(tmp_path, 60)
    cfg = load_config(profile="metrics", conf_dir=CONF, overrides=[
        f"lake.root={tmp_path / 'lake'}", "lake.engine=deltars", "features.metrics=[value]",
        f"features.step_seconds={step}"])
    lake = Lake(spark, str(tmp_path / "lake"), "deltars")
    ingest.run(spark, cfg, [str(raw)], lake=lake)
    with caplog.at_level(logging.WARNING, logger="loganomaly.features.stage"):
        featurize.run(spark, cfg, lake=lake)
    messages = [r.getMessage() for r in caplog.records if "hold a sample" in r.getMessage()]
    if warned:
        assert len(messages) == 1
        assert "only 60 of 296 steps hold a sample (20%)" in messages[0]
        assert "every 300 s" in messages[0] and "features.step_seconds=300" in messages[0]
        assert "features.window_steps=3" in messages[0] and "features.baseline_steps=12" in messages[0]
    else:
        assert messages == []


def test_events_without_an_entity_are_reported_when_no_window_is_made(  # type: ignore[no-untyped-def]
        spark, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "app.jsonl").write_text("".join(json.dumps({"ts": 1700000000 + 60 * i, "msg": "tick"}) + "\n"
                                           for i in range(30)))
    cfg = load_config(conf_dir=CONF, overrides=[f"lake.root={tmp_path / 'lake'}", "lake.engine=deltars",
                                                "features.step_seconds=60"])
    lake = Lake(spark, str(tmp_path / "lake"), "deltars")
    ingest.run(spark, cfg, [str(raw)], lake=lake)
    with caplog.at_level(logging.WARNING, logger="loganomaly.features.stage"):
        summary = featurize.run(spark, cfg, lake=lake)
    assert summary.windows == 0
    assert "no windows from 30 events: 30 have no entity, 0 no time" in caplog.text
