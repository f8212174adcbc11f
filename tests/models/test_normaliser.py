"""The per-feature normaliser: fitted on training windows only, alone or across ranks (no torch model, no Spark)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loganomaly.errors import ModelError
from loganomaly.models.normaliser import STD_FLOOR, Normaliser, fit_normaliser
from loganomaly.runtime.collective import Collective
from tests.models.test_autoencoder import F, T, periodic_windows
from tests.training.readers.test_arrow import windows


def test_normaliser_fit_transform() -> None:
    raw = periodic_windows(200)
    norm = Normaliser.fit(raw)
    z = norm.transform(raw)
    assert z.dtype == np.float32 and z.shape == raw.shape
    flat = z.reshape(-1, F)
    np.testing.assert_allclose(flat.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(axis=0), 1, atol=1e-3)
    assert Normaliser.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    # float32 arithmetic (the scoring path): within a float32 rounding or two of the float64 result,
    # for float64 input as well
    exact = (raw.astype(np.float64) - np.asarray(norm.mean)) / np.asarray(norm.std)
    np.testing.assert_allclose(z, exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(norm.transform(raw.astype(np.float64)), z)


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


def test_a_higher_std_floor_caps_rare_features_and_leaves_spread_ones_alone() -> None:
    # Feature 2 is a one-hot count that one window in 500 holds (std ~0.03): under the default
    # floor its rare value reads as ~22 standard deviations; under 0.1 as ~7. Feature 0 spreads
    # more than either floor and keeps its own std.
    raw = periodic_windows(500)
    raw[..., 2] = 0.0
    raw[7, :, 2] = np.log1p(1.0)
    default, raised = Normaliser.fit(raw), Normaliser.fit(raw, std_floor=0.1)
    assert STD_FLOOR < default.std[2] < 0.1 and raised.std[2] == 0.1
    assert raised.std[0] == default.std[0] > 0.1
    assert default.transform(raw)[7, 0, 2] > 20 and 6 < raised.transform(raw)[7, 0, 2] < 7
    across = fit_normaliser(raw, _Recording(), std_floor=0.1)
    np.testing.assert_allclose(across.std, raised.std, rtol=1e-8)


@pytest.mark.parametrize("floor", [0.0, -1.0, float("nan"), float("inf")])
def test_normaliser_refuses_a_floor_that_is_not_positive(floor: float) -> None:
    with pytest.raises(ModelError, match="std floor must be a finite number > 0"):
        Normaliser.fit(periodic_windows(4), std_floor=floor)
    with pytest.raises(ModelError, match="std floor must be a finite number > 0"):
        fit_normaliser(periodic_windows(4), _Recording(), std_floor=floor)


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


class _Recording(Collective):
    """Fakes a gather across ranks: first records each rank's vector, then returns them all."""

    def __init__(self, parts: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.parts, self.recorded = parts, torch.empty(0)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        self.recorded = t
        return torch.stack(self.parts) if self.parts is not None else t.unsqueeze(0)


def test_normaliser_fitted_across_ranks_equals_the_fit_on_all_windows() -> None:
    x = windows(50, seed=4) * np.array([1.0, 100.0, 0.001], np.float32)
    pieces = [x[:7], x[7:30], x[30:]]
    locals_ = []
    for piece in pieces:
        comm = _Recording()
        fit_normaliser(piece, comm)
        locals_.append(comm.recorded)
    combined = fit_normaliser(pieces[0], _Recording(locals_))
    direct = Normaliser.fit(x)
    np.testing.assert_allclose(combined.mean, direct.mean, rtol=1e-10)
    np.testing.assert_allclose(combined.std, direct.std, rtol=1e-8)
