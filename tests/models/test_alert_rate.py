"""The alert budget as alerts per entity-day (``train.alerts_per_entity_day``, issue 13 point 4).

A daily budget becomes a share of windows through the density of the windows it is calibrated on,
so a group of busy hosts and a group of addresses seen once a day both get about the same number
of alerts a day. Spark-free, plus one training run through Delta.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from loganomaly.config import Config, load_config
from loganomaly.errors import ConfigError, ModelError
from loganomaly.models.autoencoder import screened_threshold
from loganomaly.models.window import MAX_RATE_SHARE, Period, alert_budget, rate_share, windows_per_entity_day

CONF = Path(__file__).resolve().parents[2] / "conf"
DAY_US = 86_400_000_000
START_US = int(dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc).timestamp() * 1e6)


def windows(per_day: dict[str, int], days: int) -> tuple[np.ndarray, np.ndarray]:
    """(entity, window_start us) of entities with so many windows a day, spread over each day."""
    entity, start = [], []
    for name, n in per_day.items():
        for d in range(days):
            for i in range(n):
                entity.append(name)
                start.append(START_US + d * DAY_US + i * (DAY_US // n))
    return np.array(entity, dtype=object), np.array(start, dtype=np.int64)


def test_density_is_windows_per_entity_day_that_has_any() -> None:
    entity, start = windows({"busy": 96, "rare": 1}, days=2)
    assert windows_per_entity_day(entity, start) == pytest.approx((2 * 96 + 2) / 4)
    # a day an entity is absent does not count as one of its entity-days
    entity, start = windows({"busy": 96}, days=1)
    late = np.concatenate([start, [START_US + 5 * DAY_US]])
    assert windows_per_entity_day(np.array(["busy"] * 97, dtype=object), late) == pytest.approx(97 / 2)
    assert windows_per_entity_day(np.array([], dtype=object), np.array([], dtype=np.int64)) == 0.0
    # a period ending a quarter into its last day counts that day as a quarter of one
    entity, start = windows({"busy": 96}, days=3)
    cut = start < START_US + 2 * DAY_US + DAY_US // 4
    span = (START_US, START_US + 2 * DAY_US + DAY_US // 4)
    assert windows_per_entity_day(entity[cut], start[cut], span) == pytest.approx(96)
    assert windows_per_entity_day(entity[cut], start[cut]) == pytest.approx((2 * 96 + 24) / 3)


def test_a_period_narrows_to_a_group_of_entities() -> None:
    entity, start = windows({"busy": 96, "rare": 2}, days=2)
    period = Period(entity, start, (START_US, START_US + 2 * DAY_US))
    assert period.density() == pytest.approx(49)
    assert period.of(np.array(["rare", "rare"], dtype=object)).density() == pytest.approx(2)
    cfg = Config()
    cfg.train = replace(cfg.train, alerts_per_entity_day=0.1)
    assert period.of(np.array(["busy"], dtype=object)).budget(cfg) == pytest.approx(0.1 / 96)


def test_the_share_gives_that_many_alerts_a_day_and_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    busy = windows({"h1": 100, "h2": 100}, days=3)
    assert rate_share(0.5, *busy) == pytest.approx(0.005)
    rare = windows({"a": 1, "b": 1}, days=3)
    assert rate_share(0.1, *rare) == pytest.approx(0.1)  # one window a day: a tenth of them
    with caplog.at_level(logging.WARNING, logger="loganomaly.models.window"):
        assert rate_share(2.0, *rare) == MAX_RATE_SHARE
    assert "capped" in caplog.text
    with pytest.raises(ModelError, match="no windows to turn"):
        rate_share(0.1, np.array([], dtype=object), np.array([], dtype=np.int64))


def test_alert_budget_takes_the_rate_only_where_it_is_set() -> None:
    cfg = Config()
    entity, start = windows({"h": 50}, days=2)
    assert alert_budget(cfg) == alert_budget(cfg, entity, start) == pytest.approx(1 - cfg.train.threshold_quantile)
    cfg.train = replace(cfg.train, alerts_per_entity_day=0.25)
    assert alert_budget(cfg, entity, start) == pytest.approx(0.005)
    assert alert_budget(cfg) == pytest.approx(1 - cfg.train.threshold_quantile)  # no windows: the quantile's


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.alerts_per_entity_day=0"], "must be a number > 0"),
        (["train.alerts_per_entity_day=-1"], "must be a number > 0"),
        (["train.alerts_per_entity_day=0.1", "train.alert_budget=0.01"], "not both"),
        (["train.alerts_per_entity_day=0.1", "model.kind=deeplog"], "its own"),
    ],
)
def test_bad_settings_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(conf_dir=CONF, overrides=overrides)


def test_a_sparse_group_gets_the_same_alerts_a_day_as_a_dense_one() -> None:
    """Each group's threshold at its own share: flagged windows per entity-day come out near the rate
    for both, where one share for all would give the dense group 100 times the sparse one's alerts."""
    cfg = Config()
    cfg.train = replace(cfg.train, alerts_per_entity_day=0.02, screen_mad_k=None)
    rng = np.random.default_rng(3)
    dense = windows({f"h{i}": 100 for i in range(50)}, days=20)  # 100 windows per entity-day
    sparse = windows({f"x{i}": 1 for i in range(2000)}, days=5)  # 1 window per entity-day
    per_day = {}
    for name, (entity, start) in {"dense": dense, "sparse": sparse}.items():
        scores = rng.lognormal(0.0, 0.5, len(entity))
        budget = alert_budget(cfg, entity, start)
        threshold, _ = screened_threshold(scores, cfg, None, budget)
        fresh = rng.lognormal(0.0, 0.5, len(entity))  # new benign windows of the same density
        pairs = len(set(zip(entity.tolist(), (start // DAY_US).tolist(), strict=True)))
        per_day[name] = float((fresh > threshold).sum()) / pairs
    assert per_day["dense"] == pytest.approx(0.02, rel=0.5)
    assert per_day["sparse"] == pytest.approx(0.02, rel=0.5)
    assert 1 / 3 < per_day["dense"] / per_day["sparse"] < 3


@pytest.mark.spark
def test_training_records_the_rate_and_the_share_it_came_to(spark: object, tmp_path: Path) -> None:
    from loganomaly.features.split import write_windows
    from loganomaly.features.windows import FEATURE_NAMES
    from loganomaly.lake.tables import Lake
    from loganomaly.training import stage as train

    lake = Lake(spark, tmp_path / "lake", engine="deltars")  # type: ignore[arg-type]
    entity, start = windows({"busy": 96, "quiet": 4}, days=4)
    x = np.random.default_rng(0).normal(3.0, 0.5, (len(entity), 4, len(FEATURE_NAMES))).astype(np.float32)
    write_windows(lake.path("sequences"), x, start / 1e6, 225.0, entities=entity.tolist())
    cfg = Config()
    cfg.model.hidden_size = 4
    cfg.train = replace(cfg.train, backend="local", epochs=2, batch_size=32, device="cpu", alerts_per_entity_day=0.5)
    model = tmp_path / "model"
    summary = train.run(spark, cfg, model, lake=lake)  # type: ignore[arg-type]
    rate = json.loads((model / "model.json").read_text())["metrics"]["alert_rate"]
    assert rate["alerts_per_entity_day"] == 0.5
    # 100 windows a day over two entities, over the whole training period (not the validation slices of it)
    assert rate["windows_per_entity_day"] == pytest.approx(50, rel=0.05)
    assert rate["share"] == pytest.approx(0.5 / rate["windows_per_entity_day"])
    screening = json.loads((model / "model.json").read_text())["metrics"]["screening"]
    assert screening["budget"] == pytest.approx(rate["share"])
    assert summary.threshold > 0
