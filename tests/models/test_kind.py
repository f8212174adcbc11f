"""The scoring result of a kind as Arrow: explained rows carry their names and text, the rest cost nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loganomaly.models.kind import RESULT_SCHEMA, result_arrays, scored_batch


def test_scored_batch_explains_only_the_flagged_rows() -> None:
    score = np.array([0.1, 5.0, 0.2, 7.5, 0.3])
    batch = scored_batch(score, np.array([1, 3]), [["bytes", "ports"], ["fails"]],
                         ["bytes=5 at step 2 (normal ~1)", "fails=ünïcode at step 1"])
    assert batch.schema == RESULT_SCHEMA
    assert batch.column("score").to_pylist() == score.tolist()
    assert batch.column("top_features").to_pylist() == [[], ["bytes", "ports"], [], ["fails"], []]
    assert batch.column("explanation").to_pylist() == ["", "bytes=5 at step 2 (normal ~1)", "",
                                                       "fails=ünïcode at step 1", ""]
    batch.validate(full=True)


def test_scored_batch_with_nothing_flagged_or_no_rows() -> None:
    none = scored_batch(np.array([0.1, 0.2]), np.zeros(0, np.int64), [], [])
    assert none.column("top_features").to_pylist() == [[], []]
    assert none.column("explanation").to_pylist() == ["", ""]
    assert scored_batch(np.zeros(0), np.zeros(0, np.int64), [], []).num_rows == 0
    with pytest.raises(ValueError, match="2 flagged rows, 1 feature lists"):
        scored_batch(np.zeros(3), np.array([0, 1]), [["a"]], ["x", "y"])


def test_result_arrays_take_a_kind_s_pandas_result_too() -> None:
    """A kind written outside the package may still return a DataFrame; it converts to the same arrays."""
    frame = pd.DataFrame({"score": [0.5, 2.0], "top_features": [[], ["a"]], "explanation": ["", "a high"]})
    arrays = result_arrays(frame)
    same = result_arrays(scored_batch(np.array([0.5, 2.0]), np.array([1]), [["a"]], ["a high"]))
    assert [a.to_pylist() for a in arrays] == [a.to_pylist() for a in same]
    assert [a.type for a in arrays] == [f.type for f in RESULT_SCHEMA]
