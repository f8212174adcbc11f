"""The autoencoder, the normaliser and the model bundle, on small synthetic windows (CPU, no Spark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.errors import ModelError
from loganomaly.models.autoencoder import LSTMAutoencoder, LSTMAutoencoderConfig, window_errors
from loganomaly.models.bundle import META, WEIGHTS, load_bundle, save_bundle
from loganomaly.models.window import ModelBundle
from loganomaly.models.normaliser import STD_FLOOR, Normaliser
from loganomaly.runtime.device import pick_device

T, F = 12, 3


def periodic_windows(n: int, seed: int = 0) -> np.ndarray:
    """Smooth daily-like curves with a random phase per window, on very different scales."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    angle = 2 * np.pi * np.arange(T)[None, :] / T + phase
    counts = 50 + 20 * np.sin(angle) + rng.normal(0, 1, (n, T))
    log_bytes = 9 + np.cos(angle) + rng.normal(0, 0.05, (n, T))
    ports = 4 + 0.5 * np.sin(2 * angle) + rng.normal(0, 0.05, (n, T))
    return np.stack([counts, log_bytes, ports], axis=-1).astype(np.float32)


def small_cfg() -> LSTMAutoencoderConfig:
    return LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)


def make_bundle(seed: int = 0) -> tuple[ModelBundle, np.ndarray]:
    torch.manual_seed(seed)
    cfg = small_cfg()
    raw = periodic_windows(64, seed)
    normaliser = Normaliser.fit(raw)
    bundle = ModelBundle(
        model_cfg=cfg,
        state_dict=LSTMAutoencoder(cfg).state_dict(),
        normaliser=normaliser,
        threshold=0.25,
        feature_names=["conn_count", "log_bytes", "distinct_ports"],
        features={"step_seconds": 300, "window_steps": T, "stride_steps": 3},
        metrics={"best_val_loss": 0.1, "val_feature_error": [0.1, 0.2, 0.3], "n": np.float32(1.5)},
        training={"run_id": "train-test", "sequences_version": 4, "history": [{"epoch": 0, "val_loss": 0.5}]},
    )
    return bundle, raw


# --- model ------------------------------------------------------------------------------------


def test_forward_shape_and_config_round_trip() -> None:
    cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8, num_layers=2, dropout=0.1)
    model = LSTMAutoencoder(cfg)
    out = model(torch.zeros(5, T, F))
    assert out.shape == (5, T, F)
    assert LSTMAutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    # Windows of another length still run: the latent is repeated to the input's length.
    assert model(torch.zeros(2, 4, F)).shape == (2, 4, F)


def test_config_rejects_unknown_missing_and_invalid_keys() -> None:
    with pytest.raises(ModelError, match="unknown model config keys"):
        LSTMAutoencoderConfig.from_dict({"n_features": 3, "window_steps": 12, "heads": 4})
    with pytest.raises(ModelError, match="incomplete"):
        LSTMAutoencoderConfig.from_dict({"n_features": 3})
    with pytest.raises(ModelError, match="hidden_size"):
        LSTMAutoencoderConfig(n_features=3, window_steps=12, hidden_size=0)
    with pytest.raises(ModelError, match="dropout"):
        LSTMAutoencoderConfig(n_features=3, window_steps=12, dropout=1.5)


def test_xavier_init_and_zero_biases() -> None:
    model = LSTMAutoencoder(small_cfg())
    for name, param in model.named_parameters():
        if "bias" in name:
            assert torch.count_nonzero(param) == 0, name
        else:
            fan_out, fan_in = param.shape
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert param.abs().max() <= bound + 1e-6, name
            assert param.std() > 0, name


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ModelError, match="auto, cpu, cuda"):
        pick_device("tpu")


def test_window_errors_shapes_and_batching() -> None:
    torch.manual_seed(0)
    model = LSTMAutoencoder(small_cfg())
    x = Normaliser.fit(periodic_windows(50)).transform(periodic_windows(50))
    score, per_feature = window_errors(model, x, batch_size=1024)
    assert score.shape == (50,) and per_feature.shape == (50, F)
    assert score.dtype == np.float64
    # The score is the mean of the per-feature errors (equal step counts per feature).
    np.testing.assert_allclose(score, per_feature.mean(axis=1), rtol=1e-5)
    with torch.no_grad():
        direct = ((model(torch.from_numpy(x)) - torch.from_numpy(x)) ** 2).mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(score, direct, rtol=1e-5)
    small_batches, _ = window_errors(model, x, batch_size=7)
    np.testing.assert_allclose(small_batches, score, rtol=1e-5)
    empty, empty_pf = window_errors(model, x[:0])
    assert empty.shape == (0,) and empty_pf.shape == (0, F)
    with pytest.raises(ModelError, match=r"\[N, T, F\]"):
        window_errors(model, x[0])


# --- normaliser -------------------------------------------------------------------------------


def test_normaliser_fit_transform() -> None:
    raw = periodic_windows(200)
    norm = Normaliser.fit(raw)
    z = norm.transform(raw)
    assert z.dtype == np.float32 and z.shape == raw.shape
    flat = z.reshape(-1, F)
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(axis=0), 1, atol=1e-3)
    assert Normaliser.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm


def test_normaliser_floors_constant_features() -> None:
    raw = periodic_windows(20)
    raw[..., 2] = 7.0
    norm = Normaliser.fit(raw)
    assert norm.std[2] == STD_FLOOR
    z = norm.transform(raw)
    assert np.isfinite(z).all() and np.all(z[..., 2] == 0)
    bumped = raw.copy()
    bumped[0, 0, 2] = 8.0
    assert norm.transform(bumped)[0, 0, 2] == pytest.approx(1 / STD_FLOOR)


def test_normaliser_refuses_bad_input() -> None:
    with pytest.raises(ModelError, match="shape"):
        Normaliser.fit(np.zeros((0, T, F)))
    bad = periodic_windows(4)
    bad[1, 2, 0] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        Normaliser.fit(bad)
    with pytest.raises(ModelError, match="features"):
        Normaliser.fit(periodic_windows(4)).transform(np.zeros((1, T, F + 1)))
    with pytest.raises(ModelError, match="invalid normaliser"):
        Normaliser.from_dict({"mean": [0.0]})


# --- bundle -----------------------------------------------------------------------------------


def test_bundle_round_trip_scores_identically_and_version_is_stable(tmp_path: Path) -> None:
    bundle, raw = make_bundle()
    save_bundle(tmp_path / "a", bundle)
    version = bundle.version
    assert len(version) == 12
    loaded = load_bundle(tmp_path / "a")
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
