"""``sequences.features`` layouts: binary float32 tensors (new tables) and ``array<float>`` (older ones)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from loganomaly.errors import StageInputError
from loganomaly.features import layout
from loganomaly.features.layout import (
    decode_windows,
    encode_windows,
    features_array_sql,
    layout_of,
    window_bytes,
)

T, F = 3, 4


def _windows(n: int) -> np.ndarray:
    return (np.arange(n * T * F, dtype=np.float32).reshape(n, T, F) - 7) / 3


def test_encoded_windows_decode_to_the_same_values_as_views() -> None:
    x = _windows(9)
    column = encode_windows(x)
    assert column.type == pa.binary() and len(column) == 9
    assert column.to_pylist() == [window_bytes(w) for w in x]  # the bytes featurize writes row by row
    got = decode_windows(column, T, F)
    np.testing.assert_array_equal(got, x)
    assert not got.flags.owndata  # a view of the Arrow buffer
    np.testing.assert_array_equal(decode_windows(column.chunk(0).slice(4, 3), T, F), x[4:7])
    as_list = pa.ListArray.from_arrays(pa.array(np.arange(10, dtype=np.int32) * T * F), pa.array(x.reshape(-1)))
    np.testing.assert_array_equal(decode_windows(as_list, T, F), x)
    np.testing.assert_array_equal(decode_windows(as_list.slice(2, 5), T, F), x[2:7])


def test_encoding_splits_chunks_below_the_binary_offset_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "_MAX_CHUNK_BYTES", T * F * 4 * 4)  # four windows a chunk
    x = _windows(10)
    column = encode_windows(x)
    assert [len(c) for c in column.chunks] == [4, 4, 2]
    np.testing.assert_array_equal(decode_windows(column, T, F), x)


def test_rows_of_the_wrong_length_or_type_are_refused() -> None:
    x = _windows(2)
    with pytest.raises(StageInputError, match="not all 48 bytes"):
        decode_windows(pa.array([x[0].tobytes(), x[1].tobytes() + b"\0\0\0\0"], pa.binary()), T, F)
    # two rows whose lengths add up to the right total are still refused
    uneven = pa.array([x[0].reshape(-1)[:-1], np.append(x[1].reshape(-1), 1.0)], pa.list_(pa.float32()))
    with pytest.raises(StageInputError, match=r"features of \[11, 13\] values"):
        decode_windows(uneven, T, F)
    with pytest.raises(StageInputError, match="1 windows without features"):
        decode_windows(pa.array([x[0].tobytes(), None], pa.binary()), T, F)
    with pytest.raises(StageInputError, match="neither"):
        decode_windows(pa.array(["a"]), T, F)


def test_layout_of_spark_types() -> None:
    assert layout_of("binary") == "binary" and layout_of("array<float>") == "list"
    with pytest.raises(StageInputError, match="array<string>"):
        layout_of("array<string>")


@pytest.mark.spark
def test_the_sql_expression_decodes_the_binary_layout(spark) -> None:  # type: ignore[no-untyped-def]
    odd = np.array([0.0, -0.0, 1.5, -2.25, 1e-40, -1e-45, 3.4e38, np.inf, np.nan, 1.17549435e-38, 0.1, -12345.678],
                   np.float32).reshape(1, T, F)
    x = np.concatenate([odd, _windows(3)])
    rows = [(window_bytes(w), T, F) for w in x]
    df = spark.createDataFrame(rows, "features binary, n_steps int, n_features int")
    got = [r["f"] for r in df.selectExpr(f"{features_array_sql()} AS f").collect()]
    assert df.selectExpr(f"{features_array_sql()} AS f").schema["f"].dataType.simpleString() == "array<float>"
    np.testing.assert_array_equal(np.array(got, np.float32), x.reshape(len(x), -1))  # NaN == NaN here


# ---------------------------------------------------------------- a lake in the older layout
def _to_list_layout(lake) -> None:  # type: ignore[no-untyped-def]
    """Rewrite ``sequences`` with ``features`` as ``array<float>``: a lake featurized before the binary layout."""
    from pyspark.sql import functions as F

    table = lake.read("sequences")
    old = table.withColumn("features", F.expr(features_array_sql())).select(*table.columns)
    lake.write("sequences", old.localCheckpoint(), mode="overwrite", partition_by=("date",))
    assert layout_of(lake.read("sequences").schema["features"].dataType) == "list"


def _windows_of_table(lake) -> dict[tuple[str, object], np.ndarray]:  # type: ignore[no-untyped-def]
    rows = lake.read("sequences").collect()
    return {(r.entity, r.window_start): decode_windows(pa.array([r.features]), r.n_steps, r.n_features)[0]
            for r in rows}


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.parametrize("engine", ["deltars", "delta"])
def test_featurize_keeps_an_existing_tables_layout(spark, tmp_path, engine: str) -> None:  # type: ignore[no-untyped-def]
    """A new table gets binary tensors; a table in the older ``array<float>`` layout keeps it on a
    full rebuild and on ``--since``, with the same windows (old lakes are never rewritten under their readers)."""
    from loganomaly.features import stage as featurize
    from loganomaly.lake.tables import Lake
    from tests.conftest import require_engine
    from tests.features.test_stage import DAY1, DAY2, config, day_events, write_events

    require_engine(spark, engine)
    lake = Lake(spark, tmp_path / "lake", engine=engine)
    cfg = config(str(lake.root))
    cfg.lake.engine = engine
    write_events(spark, lake, day_events(DAY1, {"TA": 5, "TB": 3}, 0) + day_events(DAY2, {"TA": 2, "TC": 4}, 100))
    featurize.run(spark, cfg, lake=lake, top_templates=2)
    assert lake.read("sequences").schema["features"].dataType.simpleString() == "binary"
    assert featurize.table_layout(lake) == "binary"
    windows = _windows_of_table(lake)
    assert windows and all(w.shape == (4, len(lake.read("sequences").first().feature_names)) for w in windows.values())
    featurize.run(spark, cfg, lake=lake, since=DAY2.date().isoformat())  # replace_where into a binary table
    assert lake.read("sequences").schema["features"].dataType.simpleString() == "binary"
    nightly = _windows_of_table(lake)
    assert nightly.keys() == windows.keys() and all(np.array_equal(nightly[k], windows[k]) for k in windows)

    _to_list_layout(lake)
    featurize.run(spark, cfg, lake=lake, top_templates=2)  # a full rebuild
    assert lake.read("sequences").schema["features"].dataType.simpleString() == "array<float>"
    again = _windows_of_table(lake)
    assert again.keys() == windows.keys() and all(np.array_equal(again[k], windows[k]) for k in windows)
    featurize.run(spark, cfg, lake=lake, since=DAY2.date().isoformat())  # the nightly replace_where
    assert lake.read("sequences").schema["features"].dataType.simpleString() == "array<float>"
    nightly = _windows_of_table(lake)
    assert nightly.keys() == windows.keys() and all(np.array_equal(nightly[k], windows[k]) for k in windows)


@pytest.mark.slow
@pytest.mark.spark
def test_a_lake_in_the_older_layout_trains_and_scores_as_the_binary_one(spark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same windows in either layout: a model scores them identically, and a model trains from the old one."""
    from pathlib import Path

    from loganomaly.config import load_config
    from loganomaly.features import stage as featurize
    from loganomaly.ingest import stage as ingest
    from loganomaly.ingest import synthetic
    from loganomaly.lake.tables import Lake
    from loganomaly.scoring import stage as score
    from loganomaly.training import stage as train

    conf = Path(__file__).resolve().parents[2] / "conf"
    cfg = load_config(profile="test", overrides=[f"lake.root={tmp_path / 'lake'}", "lake.engine=deltars",
                                                 "train.epochs=2"], conf_dir=conf)
    synthetic.generate(tmp_path / "raw", cfg.generate)
    lake = Lake(spark, cfg.lake.root, "deltars")
    ingest.run(spark, cfg, [str(tmp_path / "raw")], lake=lake)
    featurize.run(spark, cfg, lake=lake)
    assert featurize.table_layout(lake) == "binary"
    binary_model = train.run(spark, cfg, tmp_path / "model-binary", lake=lake)
    score.run(spark, cfg, tmp_path / "model-binary", lake=lake)

    def scores() -> list[tuple[object, ...]]:
        rows = lake.read("scores").select("entity", "window_start", "score", "is_anomaly", "explanation").collect()
        return sorted(tuple(r) for r in rows)

    from_binary = scores()
    _to_list_layout(lake)
    assert featurize.table_layout(lake) == "list"
    score.run(spark, cfg, tmp_path / "model-binary", lake=lake)
    assert scores() == from_binary  # same windows, same model: the same scores and explanations
    list_model = train.run(spark, cfg, tmp_path / "model-list", lake=lake)
    assert (list_model.details["train_windows"], list_model.details["validation_windows"]) == (
        binary_model.details["train_windows"], binary_model.details["validation_windows"])
    summary = score.run(spark, cfg, tmp_path / "model-list", lake=lake)
    assert summary.windows == len(from_binary) and summary.model_version == list_model.model_version
