"""Peer groups in window bundles: per-group normaliser and alert-budget threshold (CPU, no Spark).

Windows carry their group as one-hot features; a bundle with ``peers`` standardises each window
with its group's statistics and judges it by its group's threshold, and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loganomaly.errors import ModelError
from loganomaly.features.windows import feature_names_for
from loganomaly.models.autoencoder import KIND, LSTMAutoencoder, LSTMAutoencoderConfig, explain, window_errors
from loganomaly.models.bundle import load_bundle, save_bundle
from loganomaly.models.normaliser import Normaliser, PeerGroups, fit_group_normalisers, group_index
from loganomaly.models.window import ModelBundle
from loganomaly.runtime.collective import Collective

GROUPS = ["internal", "external", "default"]
NAMES = feature_names_for([], (), GROUPS)
F, T = len(NAMES), 4


def windows(n: int, group: str, level: float, seed: int) -> np.ndarray:
    """``n`` windows of one group whose features sit around ``level`` (log units); the last step is empty."""
    rng = np.random.default_rng(seed)
    x = (level + rng.normal(0, 0.1, (n, T, F))).astype(np.float32)
    for g in GROUPS:
        x[:, :, NAMES.index("group:" + g)] = 1.0 if g == group else 0.0
    x[:, -1, :] = 0.0  # a silent step: zeros, no group set
    return x


def test_group_index_reads_the_one_hot_over_busy_steps() -> None:
    x = np.concatenate([windows(3, "external", 1.0, 0), windows(2, "internal", 1.0, 1), np.zeros((1, T, F), "f4")])
    cols = [NAMES.index("group:" + g) for g in GROUPS]
    assert group_index(x, cols).tolist() == [1, 1, 1, 0, 0, -1]


def test_each_group_is_standardised_with_its_own_statistics_else_the_global_ones() -> None:
    cols = [NAMES.index("group:" + g) for g in GROUPS]
    inside, outside = windows(40, "internal", 1.0, 0), windows(40, "external", 5.0, 1)
    few = windows(3, "default", 9.0, 2)
    x = np.concatenate([inside, outside, few])
    own = fit_group_normalisers(x, group_index(x, cols), GROUPS, 30, Collective())
    assert sorted(own) == ["external", "internal"]  # three default windows are too few
    glob = Normaliser.fit(x)
    peers = PeerGroups(GROUPS, cols, own, {"external": 2.0}, 0.01, 6)
    z = peers.transform(x, glob)
    f = NAMES.index("connections")
    np.testing.assert_allclose(z[:40], own["internal"].transform(inside), rtol=1e-6)
    np.testing.assert_allclose(z[40:80], own["external"].transform(outside), rtol=1e-6)
    # each group nearer its own level than the mixture's global statistics put it
    for part in (slice(0, 40), slice(40, 80)):
        assert abs(z[part, :-1, f].mean()) < abs(glob.transform(x[part])[:, :-1, f].mean())
    np.testing.assert_allclose(z[80:], glob.transform(few), rtol=1e-6)
    assert peers.thresholds_of(group_index(x, cols)[[0, 40, 80]], 0.5).tolist() == [0.5, 2.0, 0.5]
    again = PeerGroups.from_dict(json.loads(json.dumps(peers.to_dict())))
    assert again == peers
    with pytest.raises(ModelError, match="unknown groups"):
        PeerGroups(GROUPS, cols, {}, {"servers": 1.0}, 0.01, 6)


def test_scores_are_judged_by_the_group_threshold_and_explanations_say_which(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    model = LSTMAutoencoder(cfg)
    cols = [NAMES.index("group:" + g) for g in GROUPS]
    inside, outside = windows(40, "internal", 1.0, 0), windows(40, "external", 5.0, 1)
    x = np.concatenate([inside, outside])
    own = fit_group_normalisers(x, group_index(x, cols), GROUPS, 30, Collective())
    glob = Normaliser.fit(x)
    peers = PeerGroups(GROUPS, cols, own, {}, 0.05, 2)
    raw, _ = window_errors(model, peers.transform(x, glob))
    # The external group tolerates more: its threshold sits above all its windows, internal's below half.
    peers.thresholds = {"internal": float(np.median(raw[:40])), "external": float(raw[40:].max() * 2)}
    bundle = ModelBundle(model_cfg=cfg, state_dict=model.state_dict(), normaliser=glob, threshold=1.0,
                         feature_names=NAMES, features={"step_seconds": 300, "window_steps": T, "stride_steps": 2},
                         metrics={"val_feature_error": [0.1] * F}, peers=peers)
    scored = KIND.score_windows(bundle, model, torch.device("cpu"), x, 3).to_pandas()
    flagged = scored["score"].to_numpy() > bundle.threshold
    assert 0 < flagged[:40].sum() < 40 and not flagged[40:].any()
    # the score is the error in units of the group threshold (scaled to the global one)
    np.testing.assert_allclose(scored["score"].to_numpy()[:40], raw[:40] / peers.thresholds["internal"], rtol=1e-6)
    text = scored["explanation"][int(np.flatnonzero(flagged)[0])]
    assert text.startswith("peer group internal (own threshold ") and "baseline: own history" in text

    # stored with the model and back: same scores; a bundle without peers has no key at all
    save_bundle(tmp_path / "m", bundle)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["peers"]["thresholds"] == pytest.approx(peers.thresholds)
    loaded = load_bundle(tmp_path / "m")
    again = KIND.score_windows(loaded, loaded.build_model(), torch.device("cpu"), x, 3).to_pandas()
    np.testing.assert_allclose(again["score"].to_numpy(), scored["score"].to_numpy(), rtol=1e-6)
    bundle.peers = None
    save_bundle(tmp_path / "plain", bundle)
    assert "peers" not in json.loads((tmp_path / "plain" / "model.json").read_text())


def test_explanations_of_entity_features_are_in_user_units() -> None:
    x = np.zeros((1, T, F), np.float32)
    x[0, 1, NAMES.index("new_ports")] = np.log1p(3)
    x[0, 2, NAMES.index("inbound_connections")] = np.log1p(12)
    x[0, 2, NAMES.index("rel:inbound_connections")] = np.log1p(12) - np.log1p(2)
    x[0, 2, NAMES.index("history_steps")] = np.log1p(1)
    err = np.zeros((1, T, F))
    err[0, 1, NAMES.index("new_ports")] = 5.0
    err[0, 2, NAMES.index("rel:inbound_connections")] = 9.0
    _, texts = explain(x, err, np.ones(F), np.zeros(F), NAMES, 2, prefixes=["peer group external"])
    assert texts[0] == ("peer group external: inbound_connections 12 vs baseline 2 at step 3; "
                        "3 new destination ports (first seen) at step 2")


def test_explanations_of_network_indicators_are_counts() -> None:
    from loganomaly.features.windows import feature_names_for

    names = feature_names_for([], indicators=True)
    f = len(names)
    x = np.zeros((1, T, f), np.float32)
    x[0, 3, names.index("repeated_failures")] = np.log1p(40)
    err = np.zeros((1, T, f))
    err[0, 3, names.index("repeated_failures")] = 7.0
    mean = np.zeros(f)
    mean[names.index("repeated_failures")] = np.log1p(0.5)
    _, texts = explain(x, err, np.ones(f), mean, names, 1)
    assert texts[0] == "40 repeated failed attempts to one peer and port at step 4 (normal ~0.5)"


def test_the_rank_work_fits_group_normalisers_and_hands_them_to_the_bundle(tmp_path: Path) -> None:
    from loganomaly.config import TrainConfig
    from loganomaly.models.autoencoder import AutoencoderWork
    from tests.models.fitting import snapshot_plans

    x = np.concatenate([windows(60, "internal", 1.0, 0), windows(60, "external", 5.0, 1), windows(4, "default", 9.0, 2)])
    x = x[np.random.default_rng(3).permutation(len(x))]  # both groups in training and validation blocks
    train, val = snapshot_plans(tmp_path, x)
    cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    work = AutoencoderWork(train, val, cfg, group_names=GROUPS,
                           group_columns=[NAMES.index("group:" + g) for g in GROUPS], group_min_windows=20)
    settings = TrainConfig(epochs=1, batch_size=16, seed=5, device="cpu")
    data = work.read(settings, Collective())
    assert sorted(data.group_normalisers) == ["external", "internal"]
    _, extras = work.build_task(settings, Collective())
    own = {k: Normaliser.from_dict(v) for k, v in extras["group_normalisers"].items()}
    peers = PeerGroups(GROUPS, work.group_columns, own, {}, 0.01, 6)
    np.testing.assert_allclose(data.train_x, peers.transform(data.shard.x, data.normaliser), rtol=1e-6)


def test_explanations_of_category_counts_name_the_field_and_value() -> None:
    names = feature_names_for([], (), None, {"status": ["S0"]})
    f = len(names)
    x = np.zeros((1, 2, f), np.float32)
    x[0, 1, names.index("cat:status=S0")] = np.log1p(40)
    x[0, 0, names.index("cat:status=<other>")] = np.log1p(3)
    err = np.zeros((1, 2, f))
    err[0, 1, names.index("cat:status=S0")] = 9.0
    err[0, 0, names.index("cat:status=<other>")] = 4.0
    _, texts = explain(x, err, np.ones(f), np.zeros(f), names, 2)
    assert texts[0] == ("40 events with status=S0 at step 2 (normal ~0); "
                        "3 events with another status at step 1 (normal ~0)")


def test_the_rank_work_floors_every_normaliser_at_its_std_floor(tmp_path: Path) -> None:
    from loganomaly.config import TrainConfig
    from loganomaly.models.autoencoder import AutoencoderWork
    from tests.models.fitting import snapshot_plans

    x = np.concatenate([windows(60, "internal", 1.0, 0), windows(60, "external", 5.0, 1)])
    x = x[np.random.default_rng(3).permutation(len(x))]
    rare = NAMES.index("new_ports")
    x[:, :, rare] = 0.0
    x[::40, 0, rare] = np.log1p(1.0)  # a value a few training windows hold: std well under 0.5
    train, val = snapshot_plans(tmp_path, x)
    cfg = LSTMAutoencoderConfig(n_features=F, window_steps=T, hidden_size=8)
    settings = TrainConfig(epochs=1, batch_size=16, seed=5, device="cpu")
    columns = [NAMES.index("group:" + g) for g in GROUPS]
    stats = {}
    for floor in (0.01, 0.5):
        work = AutoencoderWork(train, val, cfg, group_names=GROUPS, group_columns=columns, group_min_windows=20,
                               std_floor=floor)
        data = work.read(settings, Collective())
        stats[floor] = [data.normaliser, *data.group_normalisers.values()]
    assert len(stats[0.5]) == 3  # the global one and both groups'
    for low, high in zip(stats[0.01], stats[0.5], strict=True):
        assert low.std[rare] < 0.5 and high.std[rare] == 0.5
        assert min(high.std) == 0.5
        # features spread wider than the floor keep their own std
        wide = np.asarray(low.std) > 0.5
        np.testing.assert_allclose(np.asarray(high.std)[wide], np.asarray(low.std)[wide])
