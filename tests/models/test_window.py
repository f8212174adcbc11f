"""``windows_of``: the Arrow ``features`` column as ``[N, T, F]`` windows, a view of its buffers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from loganomaly.errors import ModelError
from loganomaly.models.window import windows_of

T, F = 3, 4


def _windows(n: int) -> np.ndarray:
    return np.arange(n * T * F, dtype=np.float32).reshape(n, T, F) / 7


def test_list_column_and_its_slices_are_views() -> None:
    x = _windows(10)
    column = pa.ListArray.from_arrays(pa.array(np.arange(11, dtype=np.int32) * T * F), pa.array(x.reshape(-1)))
    np.testing.assert_array_equal(windows_of(column, T, F), x)
    part = windows_of(column.slice(3, 4), T, F)
    np.testing.assert_array_equal(part, x[3:7])
    assert not part.flags.owndata  # a view of the Arrow buffer, not a copy
    np.testing.assert_array_equal(windows_of(pa.chunked_array([column.slice(0, 2), column.slice(2)]), T, F), x)


@pytest.mark.parametrize("kind", [pa.binary(), pa.large_binary(), pa.binary(T * F * 4)])
def test_binary_tensor_column(kind: pa.DataType) -> None:
    x = _windows(6)
    column = pa.array([row.astype("<f4").tobytes() for row in x], kind)
    np.testing.assert_array_equal(windows_of(column, T, F), x)
    np.testing.assert_array_equal(windows_of(column.slice(2, 3), T, F), x[2:5])
    assert windows_of(column.slice(6), T, F).shape == (0, T, F)


def test_bad_rows_are_refused() -> None:
    x = _windows(2)
    with pytest.raises(ModelError, match="1 windows without features"):
        windows_of(pa.array([x[0].reshape(-1), None], pa.list_(pa.float32())), T, F)
    with pytest.raises(ModelError, match=r"features of \[11\] values, expected n_steps \* n_features = 12"):
        windows_of(pa.array([x[0].reshape(-1), x[1].reshape(-1)[:-1]], pa.list_(pa.float32())), T, F)
    with pytest.raises(ModelError, match="not all 48 bytes"):
        windows_of(pa.array([x[0].tobytes(), x[1].tobytes()[:-4]], pa.binary()), T, F)
    with pytest.raises(ModelError, match="features of 44 bytes"):
        windows_of(pa.array([x[0].tobytes()[:-4]], pa.binary(44)), T, F)
