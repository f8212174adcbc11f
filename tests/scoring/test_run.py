"""The ``score`` stage on a small lake: reruns change nothing, refused rows stop it before any write."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.config import Config, LakeConfig
from loganomaly.errors import ModelError, StageInputError
from loganomaly.features.layout import window_bytes
from loganomaly.lake.schemas import TABLES
from loganomaly.models.autoencoder import LSTMAutoencoder, LSTMAutoencoderConfig, window_errors
from loganomaly.models.bundle import load_bundle, save_bundle
from loganomaly.models.normaliser import Normaliser
from loganomaly.models.window import ModelBundle
from loganomaly.scoring import stage

pytestmark = [pytest.mark.spark, pytest.mark.slow]

T, F = 4, 3
NAMES = ["conn_count", "log_bytes", "distinct_ports"]
DAYS = [dt.date(2024, 3, 4), dt.date(2024, 3, 5)]


def _windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (2 + np.sin(np.arange(T))[None, :, None] + rng.normal(0, 0.3, (n, T, F))).astype(np.float32)
    x[::9, 2, 1] += 6.0  # a few bursts, so some windows are flagged and explained
    return x


#: ``sequences`` in the older layout (``features`` as ``array<float>``), which lakes featurized before
#: the binary layout keep.
LIST_DDL = TABLES["sequences"].ddl.replace("`features` binary", "`features` array<float>")


def _rows(x: np.ndarray, names: list[str] = NAMES, steps: int = T, layout: str = "binary") -> list[tuple]:  # type: ignore[type-arg]
    rows = []
    for i, window in enumerate(x):
        day = DAYS[i % len(DAYS)]
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=5 * i)
        rows.append((f"host-{i % 3}", start, start + dt.timedelta(minutes=20), day, steps, len(names), names,
                     window_bytes(window) if layout == "binary" else window.reshape(-1).tolist(), 10, 0, start,
                     start, "featurize-test"))
    return rows


@pytest.fixture(params=["binary"])
def scored_lake(spark, lake, tmp_path: Path, request):  # type: ignore[no-untyped-def]
    return make_scored_lake(spark, lake, tmp_path, request.param)


def make_scored_lake(spark, lake, tmp_path: Path, layout: str = "binary"):  # type: ignore[no-untyped-def]
    """``sequences`` of 60 windows over two dates in ``lake`` and a small autoencoder bundle for them."""
    x = _windows(60)
    ddl = TABLES["sequences"].ddl if layout == "binary" else LIST_DDL
    lake.write("sequences", spark.createDataFrame(_rows(x, layout=layout), ddl), partition_by=("date",))
    torch.manual_seed(0)
    model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=4)
    model = LSTMAutoencoder(model_cfg)
    normaliser = Normaliser.fit(x)
    scores, per_feature = window_errors(model, normaliser.transform(x))
    save_bundle(tmp_path / "model", ModelBundle(
        model_cfg=model_cfg, state_dict=model.state_dict(), normaliser=normaliser,
        threshold=float(np.quantile(scores, 0.8)), feature_names=NAMES,
        features={"step_seconds": 300, "window_steps": T, "transform": "log1p"},
        metrics={"val_feature_error": per_feature.mean(axis=0).tolist()}))
    cfg = Config(lake=LakeConfig(root=str(lake.root), engine=lake.engine))
    return lake, cfg, tmp_path / "model", x


def _table(lake, name: str) -> list[tuple]:  # type: ignore[no-untyped-def, type-arg]
    rows = lake.read(name).drop("run_id").collect()
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in r) for r in rows)


@pytest.mark.parametrize("scored_lake", ["binary", "list"], indirect=True)
def test_scoring_twice_leaves_the_tables_unchanged(spark, scored_lake) -> None:  # type: ignore[no-untyped-def]
    lake, cfg, model_dir, x = scored_lake
    first = stage.run(spark, cfg, model_dir, lake=lake)
    assert first.windows == len(x) and first.dates == [d.isoformat() for d in DAYS]
    scores, anomalies = _table(lake, "scores"), _table(lake, "anomalies")
    assert len(scores) == len(x) and 0 < len(anomalies) == first.anomalies < len(x)
    assert [r for r in scores if r[6]] == anomalies  # is_anomaly rows are the anomalies table
    assert all((r[7] != "") == r[6] and bool(r[8]) == r[6] for r in scores)  # only flagged rows explained
    again = stage.run(spark, cfg, model_dir, lake=lake)
    assert (again.windows, again.anomalies) == (first.windows, first.anomalies)
    assert _table(lake, "scores") == scores and _table(lake, "anomalies") == anomalies
    day = stage.run(spark, cfg, model_dir, date=DAYS[1].isoformat(), lake=lake)
    assert day.dates == [DAYS[1].isoformat()] and day.windows == len(x) // 2
    assert _table(lake, "scores") == scores and _table(lake, "anomalies") == anomalies


@pytest.mark.parametrize("local_max_bytes", [None, 0], ids=["driver", "spark"])
@pytest.mark.parametrize("bad", ["shape", "names", "span"])
def test_refused_rows_stop_the_stage_before_any_write(spark, scored_lake, bad: str, local_max_bytes) -> None:  # type: ignore[no-untyped-def]
    lake, cfg, model_dir, x = scored_lake
    if local_max_bytes is not None:  # the Spark path (the default scores these 60 windows in the driver)
        cfg.score.local_max_bytes = local_max_bytes
    stage.run(spark, cfg, model_dir, lake=lake)
    versions = (lake.version("scores"), lake.version("anomalies"))
    # one more row, on one date, that the model cannot judge
    first = _rows(x[:1])[0]
    odd = {
        "names": _rows(x[:1], names=["conn_count", "log_bytes", "other"]),
        "shape": [(*first[:4], 2, F, NAMES, window_bytes(x[0, :2]), 10, 0, *first[10:])],
        # the model's steps and names, but hourly steps (featurize re-run with another step size)
        "span": [(first[0], first[1], first[1] + dt.timedelta(hours=T), *first[3:])],
    }[bad]
    lake.write("sequences", spark.createDataFrame(odd, TABLES["sequences"].ddl))
    message = {"shape": "do not match the model", "names": "feature names differ",
               "span": r"span 14400 s, model \w+ was trained on windows of 4 steps of 300 s"}[bad]
    with pytest.raises(ModelError, match=message):
        stage.run(spark, cfg, model_dir, lake=lake)
    assert (lake.version("scores"), lake.version("anomalies")) == versions
    assert not list(Path(lake.root, stage.STAGING_FOLDER).glob("*/*"))  # no staged file left behind
    # the other date holds no refused row: it scores
    assert stage.run(spark, cfg, model_dir, date=DAYS[1].isoformat(), lake=lake).windows == len(x) // 2


def test_a_date_range_scores_only_its_dates_and_reruns_change_nothing(spark, scored_lake) -> None:  # type: ignore[no-untyped-def]
    lake, cfg, model_dir, x = scored_lake
    first_day = stage.run(spark, cfg, model_dir, date=DAYS[0].isoformat(), lake=lake)
    before = {r["date"]: r["run_id"] for r in lake.read("scores").select("date", "run_id").distinct().collect()}
    assert list(before) == [DAYS[0]]
    one = stage.run(spark, cfg, model_dir, date_range=(DAYS[1].isoformat(), DAYS[1].isoformat()), lake=lake)
    assert one.dates == [DAYS[1].isoformat()] and one.windows == len(x) // 2
    runs = {r["date"]: r["run_id"] for r in lake.read("scores").select("date", "run_id").distinct().collect()}
    assert runs == {DAYS[0]: first_day.run_id, DAYS[1]: one.run_id}  # the date outside the range was not re-scored
    scores, anomalies = _table(lake, "scores"), _table(lake, "anomalies")
    assert len(scores) == len(x)
    both = stage.run(spark, cfg, model_dir, date_range=(DAYS[0].isoformat(), DAYS[1].isoformat()), lake=lake)
    assert both.dates == [d.isoformat() for d in DAYS] and both.windows == len(x)
    assert _table(lake, "scores") == scores and _table(lake, "anomalies") == anomalies  # twice = unchanged
    # A date of the range whose windows are gone loses its old results too (as --date does).
    empty = spark.createDataFrame([], TABLES["sequences"].ddl)
    lake.write("sequences", empty, mode="overwrite", partition_by=("date",), replace_where={"date": [DAYS[1]]})
    again = stage.run(spark, cfg, model_dir, date_range=(DAYS[0].isoformat(), DAYS[1].isoformat()), lake=lake)
    assert again.dates == [d.isoformat() for d in DAYS] and again.windows == len(x) // 2
    assert {r["date"] for r in lake.read("scores").select("date").distinct().collect()} == {DAYS[0]}


def test_a_bad_range_is_refused_before_anything_is_written(spark, scored_lake) -> None:  # type: ignore[no-untyped-def]
    lake, cfg, model_dir, _ = scored_lake
    with pytest.raises(StageInputError, match="ends .* before it starts"):
        stage.run(spark, cfg, model_dir, date_range=(DAYS[1].isoformat(), DAYS[0].isoformat()), lake=lake)
    with pytest.raises(StageInputError, match="not YYYY-MM-DD"):
        stage.run(spark, cfg, model_dir, date_range=("2024-03-xx", DAYS[0].isoformat()), lake=lake)
    with pytest.raises(StageInputError, match="no windows to score"):
        stage.run(spark, cfg, model_dir, date_range=("2023-01-01", "2023-01-31"), lake=lake)
    assert not lake.exists("scores")


def test_the_spark_path_stages_its_flagged_rows_and_leaves_no_file(spark, scored_lake) -> None:  # type: ignore[no-untyped-def]
    """``anomalies`` comes from the files the scoring tasks staged; the run removes them, and a
    folder a killed run left behind is removed by the next run."""
    lake, cfg, model_dir, x = scored_lake
    cfg.score.local_max_bytes = 0
    stale = Path(lake.root, stage.STAGING_FOLDER, "score-20240101T000000Z-dead00")
    stale.mkdir(parents=True)
    (stale / "part-0.parquet").write_bytes(b"left by a killed run")
    summary = stage.run(spark, cfg, model_dir, lake=lake)
    scores, anomalies = _table(lake, "scores"), _table(lake, "anomalies")
    assert summary.windows == len(scores) == len(x)
    assert [r for r in scores if r[6]] == anomalies and summary.anomalies == len(anomalies) > 0
    assert not stale.exists() and not list(Path(lake.root, stage.STAGING_FOLDER).iterdir())
    # a model that flags nothing on a date: that date's old anomalies go (no file staged, an empty replace)
    quiet = model_dir.parent / "quiet-model"
    save_bundle(quiet, dataclasses.replace(load_bundle(model_dir), threshold=1e30))
    assert stage.run(spark, cfg, quiet, date=DAYS[0].isoformat(), lake=lake).anomalies == 0
    assert [r for r in _table(lake, "anomalies") if r[3] == DAYS[0]] == []
    assert [r for r in _table(lake, "anomalies") if r[3] == DAYS[1]] == [r for r in anomalies if r[3] == DAYS[1]]


@pytest.mark.parametrize("local_max_bytes", [None, 0], ids=["driver", "spark"])
def test_a_bundle_of_several_members_scores_the_mean_of_their_errors(spark, scored_lake, local_max_bytes) -> None:  # type: ignore[no-untyped-def]
    """``model.members``: the scoring tasks rebuild every member from the bundle and score the mean error."""
    lake, cfg, model_dir, x = scored_lake
    if local_max_bytes is not None:
        cfg.score.local_max_bytes = local_max_bytes
    one = load_bundle(model_dir)
    torch.manual_seed(1)
    model_cfg = dataclasses.replace(one.model_cfg, members=2)
    model = LSTMAutoencoder(model_cfg)
    expected, _ = window_errors(model, one.normaliser.transform(x))
    ensemble = model_dir.parent / "ensemble-model"
    save_bundle(ensemble, dataclasses.replace(one, model_cfg=model_cfg, state_dict=model.state_dict(),
                                              threshold=float(np.quantile(expected, 0.8))))
    summary = stage.run(spark, cfg, ensemble, lake=lake)
    assert summary.windows == len(x) and 0 < summary.anomalies < len(x)
    got = sorted(r["score"] for r in lake.read("scores").collect())
    np.testing.assert_allclose(got, np.sort(expected), rtol=1e-5)
