"""The Petastorm reader's batch decoding, without Petastorm (it runs in ``.venv-compat`` only).

Petastorm's batch reader hands each column as numpy: ``array<float>`` rows as a 2-d float array,
binary rows as an object array of ``bytes``. Both must give the same windows.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

from loganomaly.errors import StageInputError
from loganomaly.features.layout import window_bytes
from loganomaly.training.readers.petastorm import _windows

T, F = 3, 2
Batch = namedtuple("Batch", ["n_steps", "n_features", "features"])


def test_both_layouts_decode_to_the_kept_windows() -> None:
    x = np.arange(5 * T * F, dtype=np.float32).reshape(5, T, F) / 4
    keep = np.array([True, False, True, True, False])
    shape = np.full(5, T), np.full(5, F)
    as_list = Batch(*shape, x.reshape(5, -1))
    as_bytes = Batch(*shape, np.array([window_bytes(w) for w in x], dtype=object))
    for batch in (as_list, as_bytes):
        got, this = _windows(batch, keep, None)
        assert this == (T, F)
        np.testing.assert_array_equal(got, x[keep])
    with pytest.raises(StageInputError, match=r"rows of \[20\] bytes, expected 24"):
        _windows(Batch(*shape, np.array([window_bytes(w)[:-4] for w in x], dtype=object)), keep, None)
