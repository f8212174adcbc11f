"""Retraining as a nightly job runs it: ``train --until`` day after day into one model directory.

Each run is screened by the model it replaces and held steady against its threshold, and the
bundle says what was screened (issue 13 point 7).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from loganomaly.config import Config
from loganomaly.features.split import write_windows
from loganomaly.features.windows import FEATURE_NAMES
from loganomaly.lake.tables import Lake
from loganomaly.models.bundle import load_bundle
from loganomaly.training import stage as train

pytestmark = pytest.mark.spark

START = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)


def test_retraining_into_one_model_dir_is_screened_and_held_steady(spark: object, tmp_path: Path) -> None:
    lake = Lake(spark, tmp_path / "lake", engine="deltars")  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    n = 4 * 96  # four days of 15-minute windows
    x = rng.normal(3.0, 0.5, (n, 4, len(FEATURE_NAMES))).astype(np.float32)
    x[150:170] += 25.0  # an incident on day 2, inside the unlabelled training period of later runs
    write_windows(lake.path("sequences"), x, START.timestamp() + np.arange(n) * 900.0, 225.0, max_rows_per_group=64)
    cfg = Config()
    cfg.model.hidden_size = 4
    cfg.train = replace(cfg.train, backend="local", epochs=2, batch_size=32, device="cpu",
                        train_until=(START + dt.timedelta(days=2)).date().isoformat())
    model = tmp_path / "model"

    first = train.run(spark, cfg, model, lake=lake)  # type: ignore[arg-type]
    assert first.previous_threshold is None and first.threshold_ratio is None
    meta = json.loads((model / "model.json").read_text())
    screening = meta["metrics"]["screening"]
    assert screening["validation_windows"] == first.validation_windows
    assert screening["kept"] + screening["screened_robust"] + screening["screened_previous"] == first.validation_windows
    assert screening["mad_k"] == cfg.train.screen_mad_k and "threshold_stability" not in meta["metrics"]
    assert "lineage" not in meta["metrics"]

    # the next night: everything up to day 3, into the same directory
    cfg.train = replace(cfg.train, train_until=(START + dt.timedelta(days=3)).date().isoformat())
    second = train.run(spark, cfg, model, lake=lake)  # type: ignore[arg-type]
    assert second.previous_threshold == pytest.approx(first.threshold)
    stability = load_bundle(model).metrics["threshold_stability"]  # type: ignore[attr-defined]
    assert second.threshold_ratio == pytest.approx(stability["ratio"])
    assert second.threshold == pytest.approx(stability.get("unclamped_threshold", second.threshold))
    meta = json.loads((model / "model.json").read_text())
    assert meta["metrics"]["screening"]["previous_version"] == first.model_version
    assert meta["metrics"]["lineage"] == [first.model_version]  # the per-entity baselines' history
    assert second.validation_windows > first.validation_windows

    # the same night again: the same windows, screened by the model they made, give the same threshold
    again = train.run(spark, cfg, model, lake=lake)  # type: ignore[arg-type]
    assert again.threshold_ratio == pytest.approx(1.0) and again.threshold == pytest.approx(second.threshold)

    # a tight limit clamps the move of the next night's model and says so
    cfg.train = replace(cfg.train, threshold_max_ratio=1.000001, train_until=(START + dt.timedelta(days=4)).isoformat())
    third = train.run(spark, cfg, model, lake=lake)  # type: ignore[arg-type]
    lineage = json.loads((model / "model.json").read_text())["metrics"]["lineage"]
    assert lineage[0] == again.model_version and lineage[-1] == first.model_version
    assert len(lineage) == len(set(lineage)) == len({first.model_version, second.model_version, again.model_version})
    assert third.threshold_clamped
    assert abs(np.log(third.threshold / second.threshold)) <= np.log(1.000001) + 1e-9
