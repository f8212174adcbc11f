"""Model bundles of every kind: save, load by the recorded kind, version hashes, refusals (CPU, no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.errors import ModelError
from loganomaly.models import autoencoder, classifier, deeplog
from loganomaly.models import bundle as bundle_module
from loganomaly.models.autoencoder import LSTMAutoencoderConfig, window_errors
from loganomaly.models.bundle import META, WEIGHTS, load_bundle, save_bundle, worker_model
from loganomaly.models.deeplog import DeepLogBundle
from loganomaly.models.nextevent import DeepLog, DeepLogConfig
from loganomaly.models.vocabulary import Vocabulary
from loganomaly.models.window import ModelBundle
from tests.models.test_autoencoder import F, T, make_bundle

# --- window bundles (the autoencoder) ---------------------------------------------------------


def test_bundle_round_trip_scores_identically_and_version_is_stable(tmp_path: Path) -> None:
    bundle, raw = make_bundle()
    save_bundle(tmp_path / "a", bundle)
    version = bundle.version
    assert len(version) == 12
    loaded = load_bundle(tmp_path / "a")
    assert isinstance(loaded, ModelBundle) and loaded.kind == "lstm_autoencoder"
    assert loaded.version == version
    assert loaded.model_cfg == bundle.model_cfg and loaded.normaliser == bundle.normaliser
    assert loaded.threshold == bundle.threshold and loaded.feature_names == bundle.feature_names
    assert loaded.training["sequences_version"] == 4
    # numpy scalars are stored as plain JSON values.
    assert loaded.metrics["n"] == "1.5"
    before, before_pf = window_errors(bundle.build_model(), bundle.normaliser.transform(raw))
    after, after_pf = window_errors(loaded.build_model(), loaded.normaliser.transform(raw))
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(before_pf, after_pf)
    assert not loaded.build_model().training

    # Same content, same version, wherever and however often it is saved; other content, another.
    save_bundle(tmp_path / "b", loaded)
    assert loaded.version == version
    assert (tmp_path / "a" / META).read_text() == (tmp_path / "b" / META).read_text()
    other, _ = make_bundle(seed=1)
    save_bundle(tmp_path / "c", other)
    assert other.version != version
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([WEIGHTS, META])  # no temp files left


def test_worker_model_loads_shipped_bytes_once_and_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, raw = make_bundle(seed=3)
    save_bundle(tmp_path / "m", bundle)
    files = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(bundle_module.tempfile, "tempdir", str(temp))
    monkeypatch.setattr(bundle_module, "_WORKER_MODELS", {})
    loaded, model, _device = worker_model(bundle.version, files)
    assert loaded.version == bundle.version
    np.testing.assert_array_equal(window_errors(model, loaded.normaliser.transform(raw))[0],
                                  window_errors(bundle.build_model(), bundle.normaliser.transform(raw))[0])
    assert worker_model(bundle.version, files)[1] is model  # cached per worker
    assert list(temp.iterdir()) == []  # an executor's temp folder does not fill up, model by model
    with pytest.raises(ModelError, match="expected"):
        worker_model("0" * 12, files)
    assert list(temp.iterdir()) == []


@pytest.mark.parametrize("missing", [WEIGHTS, META])
def test_load_bundle_missing_file(tmp_path: Path, missing: str) -> None:
    bundle, _ = make_bundle()
    save_bundle(tmp_path, bundle)
    (tmp_path / missing).unlink()
    with pytest.raises(ModelError, match=f"missing {missing}"):
        load_bundle(tmp_path)
    with pytest.raises(ModelError, match="no complete model bundle"):
        load_bundle(tmp_path / "nowhere")


def test_load_bundle_detects_tampering(tmp_path: Path) -> None:
    bundle, _ = make_bundle()
    save_bundle(tmp_path, bundle)
    meta_path, weights_path = tmp_path / META, tmp_path / WEIGHTS
    pristine_meta, pristine_weights = meta_path.read_text(), weights_path.read_bytes()

    meta = json.loads(pristine_meta)
    meta["threshold"] = 99.0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="was modified"):
        load_bundle(tmp_path)

    meta_path.write_text(pristine_meta)
    data = bytearray(pristine_weights)
    data[-5] ^= 0xFF  # flip bits inside the last tensor's data
    weights_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="was modified"):
        load_bundle(tmp_path)

    weights_path.write_bytes(pristine_weights[:100])
    with pytest.raises(ModelError, match="cannot be read"):
        load_bundle(tmp_path)

    weights_path.write_bytes(pristine_weights)
    meta_path.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_bundle(tmp_path)

    meta = json.loads(pristine_meta)
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="unsupported bundle format 99"):
        load_bundle(tmp_path)

    meta_path.write_text(pristine_meta)
    assert load_bundle(tmp_path).version == bundle.version


def test_files_from_different_saves_are_refused(tmp_path: Path) -> None:
    # What a crash between the two renames of a re-save would leave behind.
    first, _ = make_bundle(seed=0)
    second, _ = make_bundle(seed=1)
    save_bundle(tmp_path / "one", first)
    save_bundle(tmp_path / "two", second)
    (tmp_path / "one" / WEIGHTS).write_bytes((tmp_path / "two" / WEIGHTS).read_bytes())
    with pytest.raises(ModelError, match="different saves"):
        load_bundle(tmp_path / "one")


def test_weights_that_do_not_fit_the_config(tmp_path: Path) -> None:
    bundle, _ = make_bundle()
    bundle.model_cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=16)
    with pytest.raises(ModelError, match="do not match the model config"):
        save_bundle(tmp_path, bundle)
    bundle, _ = make_bundle()
    bundle.feature_names = ["only_one"]
    with pytest.raises(ModelError, match="feature names"):
        save_bundle(tmp_path, bundle)


def test_load_refuses_consistently_hashed_weights_of_another_shape(tmp_path: Path) -> None:
    # A forged bundle whose hash is right but whose weights belong to a bigger model: the
    # mismatch must surface at load (on the driver), not later inside a Spark task.
    from loganomaly.models.bundle import _content_version

    bundle, _ = make_bundle()
    save_bundle(tmp_path, bundle)
    meta = json.loads((tmp_path / META).read_text())
    meta["model"]["hidden_size"] = 4
    del meta["version"]
    state = {k: v.contiguous() for k, v in bundle.state_dict.items()}
    meta["version"] = _content_version(state, meta)
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / WEIGHTS), metadata={"version": meta["version"]})
    (tmp_path / META).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not match the model config"):
        load_bundle(tmp_path)


# --- DeepLog bundles, and the kind a loader expects ----------------------------------------------


def make_deeplog_bundle(templates: dict | None = None) -> DeepLogBundle:  # type: ignore[type-arg]
    vocab = Vocabulary(["T1", "T2", "T3"])
    cfg = DeepLogConfig(vocab_size=vocab.size, window=3, embedding_dim=4, hidden_size=8, num_layers=1, top_g=2)
    torch.manual_seed(0)
    model = DeepLog(cfg)
    return DeepLogBundle(model_cfg=cfg, state_dict=model.state_dict(), vocabulary=vocab, nll_threshold=1.5,
                         metrics={"best_val_loss": 0.1}, training={"sessions_version": 3}, templates=templates)


def test_deeplog_bundle_round_trip_and_kind_checks(tmp_path: Path) -> None:
    bundle = make_deeplog_bundle()
    save_bundle(tmp_path / "a", bundle)
    loaded = load_bundle(tmp_path / "a")
    assert isinstance(loaded, DeepLogBundle) and loaded.version == bundle.version
    assert loaded.model_cfg == bundle.model_cfg and loaded.vocabulary == bundle.vocabulary
    assert loaded.top_g == 2 and loaded.nll_threshold == 1.5 and loaded.templates is None
    assert load_bundle(tmp_path / "a", deeplog.KIND).version == bundle.version
    # A loader that expects a window model refuses it.
    for window_kind in (autoencoder.KIND, classifier.KIND):
        with pytest.raises(ModelError, match="holds a deeplog bundle"):
            load_bundle(tmp_path / "a", window_kind)
    assert "templates" not in json.loads((tmp_path / "a" / META).read_text())

    # The template state is part of the content hash.
    with_state = make_deeplog_bundle(templates={"format": "x", "templates": []})
    save_bundle(tmp_path / "b", with_state)
    assert with_state.version != bundle.version
    assert load_bundle(tmp_path / "b", deeplog.KIND).templates == {"format": "x", "templates": []}

    meta = json.loads((tmp_path / "a" / META).read_text())
    meta["model"]["top_g"] = 5
    (tmp_path / "a" / META).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="was modified"):
        load_bundle(tmp_path / "a")
    meta["kind"] = "transformer"
    (tmp_path / "a" / META).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="unknown bundle kind 'transformer'"):
        load_bundle(tmp_path / "a")


def test_autoencoder_bundle_is_not_a_deeplog_bundle(tmp_path: Path) -> None:
    bundle, _ = make_bundle()
    save_bundle(tmp_path, bundle)
    assert isinstance(load_bundle(tmp_path), ModelBundle)
    with pytest.raises(ModelError, match="not a deeplog one"):
        load_bundle(tmp_path, deeplog.KIND)
