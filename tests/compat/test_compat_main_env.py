"""Where Petastorm cannot run (the main environment: pyarrow >= 15), choosing it is a clear error naming `make compat`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from loganomaly.config import TrainConfig
from loganomaly.errors import ConfigError
from loganomaly.features.split import Selection, plan_shards, write_windows
from loganomaly.lake.snapshot import Snapshot
from loganomaly.models.autoencoder import AutoencoderWork, LSTMAutoencoderConfig
from loganomaly.training.backends import run_backend


def petastorm_runs_here() -> bool:
    if importlib.util.find_spec("petastorm") is None:
        return False
    import pyarrow

    return int(pyarrow.__version__.split(".")[0]) < 15


@pytest.mark.skipif(petastorm_runs_here(), reason="Petastorm runs here (the compatibility environment)")
def test_petastorm_reader_outside_the_compat_env_names_make_compat(tmp_path: Path) -> None:
    path = str(tmp_path / "sequences")
    x = np.random.default_rng(0).normal(size=(40, 4, 3)).astype(np.float32)
    version = write_windows(path, x, np.arange(40) * 600.0, 60.0)
    train, val = plan_shards(Snapshot(path, version), [Selection(0.0, 1e9, 0.25, "train"),
                                                       Selection(0.0, 1e9, 0.25, "validation")], seed=1)
    cfg = TrainConfig(epochs=1, device="cpu", reader="petastorm")
    model = LSTMAutoencoderConfig(n_features=3, window_steps=4, hidden_size=4)
    for backend in ("local", "torch_distributor"):
        # refused on the driver before any rank or Spark job starts (no SparkSession needed to see it)
        with pytest.raises(ConfigError, match=r"make compat.*\.venv-compat/bin/loganomaly train --reader petastorm"):
            run_backend(None, backend, AutoencoderWork(train, val, model), cfg)
