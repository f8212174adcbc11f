"""Bundles written before the layered package (commit bb2cf15) still load and score the same.

``tests/resources/bundles`` holds one bundle per kind saved by that release's ``save_bundle``, with
the scores its ``score_arrays`` / ``score_template_sessions`` gave on fixed inputs
(``expected.json``). The bundle format is unchanged: same versions (content hashes), same scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from loganomaly.models.bundle import kind_of, load_bundle, save_bundle
from loganomaly.models.kind import RESULT_SCHEMA

BUNDLES = Path(__file__).resolve().parents[1] / "resources" / "bundles"
EXPECTED = json.loads((BUNDLES / "expected.json").read_text())


@pytest.mark.parametrize("kind", ["autoencoder", "classifier", "deeplog"])
def test_old_bundles_load_with_their_version(kind: str) -> None:
    bundle = load_bundle(BUNDLES / kind)
    assert bundle.version == EXPECTED[kind]["version"]
    assert kind_of(bundle.kind).name == kind


@pytest.mark.parametrize("kind", ["autoencoder", "classifier"])
def test_old_window_bundles_score_as_before(kind: str) -> None:
    bundle = load_bundle(BUNDLES / kind)
    x = np.asarray(EXPECTED["windows"], dtype=np.float32)
    scored = kind_of(bundle.kind).score_windows(bundle, bundle.build_model(), torch.device("cpu"), x, 2).to_pandas()
    np.testing.assert_allclose(scored["score"].to_numpy(), EXPECTED[kind]["scores"], rtol=1e-5, atol=1e-7)
    if kind == "autoencoder":  # the classifier explains only what it flags
        assert [list(t) for t in scored["top_features"]] == EXPECTED[kind]["top_features"]
    # The scoring stage's path: the Arrow features column of the same windows, batch by batch.
    column = pa.array(list(x.reshape(len(x), -1)), pa.list_(pa.float32()))
    batch = kind_of(bundle.kind).score_batch(bundle, bundle.build_model(), torch.device("cpu"), column, 2)
    assert batch.schema == RESULT_SCHEMA
    np.testing.assert_allclose(batch.column("score").to_numpy(), scored["score"].to_numpy())


def test_old_deeplog_bundle_scores_sessions_as_before() -> None:
    bundle = load_bundle(BUNDLES / "deeplog")
    sessions = EXPECTED["deeplog"]["sessions"]
    column = pa.array(sessions, pa.list_(pa.string()))
    scored = kind_of(bundle.kind).score_batch(bundle, bundle.build_model(), torch.device("cpu"), column, 2)
    assert scored["score"].tolist() == EXPECTED["deeplog"]["scores"]
    assert list(scored["explanation"]) == EXPECTED["deeplog"]["explanations"]


@pytest.mark.parametrize("kind", ["autoencoder", "classifier", "deeplog"])
def test_resaving_an_old_bundle_writes_the_same_files(kind: str, tmp_path: Path) -> None:
    bundle = load_bundle(BUNDLES / kind)
    version = bundle.version
    save_bundle(tmp_path, bundle)
    assert bundle.version == version
    assert json.loads((tmp_path / "model.json").read_text()) == json.loads((BUNDLES / kind / "model.json").read_text())
