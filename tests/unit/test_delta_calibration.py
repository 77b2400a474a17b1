"""δ calibration (benchmarks/delta_calibration.py): nearest-other similarity and the suggested gate."""

import numpy as np
import pytest

from benchmarks.delta_calibration import nearest_other, suggest_delta


def _unit(rows):
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_nearest_other_ignores_self_and_counts_duplicates():
    v = _unit([[1, 0], [1, 0], [0, 1], [1, 1]])
    got = nearest_other(v)
    # rows 0 and 1 are the same text: similarity 1 to each other; rows 2 and 3 are 45° from their nearest (cos 0.7071)
    np.testing.assert_allclose(got, [1.0, 1.0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)


def test_nearest_other_needs_two_tasks():
    with pytest.raises(ValueError, match="two tasks"):
        nearest_other(_unit([[1, 0]]))


def test_suggest_delta_is_the_quantile_to_a_hundredth():
    nearest = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert suggest_delta(nearest, 0.5) == 0.55  # numpy's linear interpolation between 0.5 and 0.6
    assert suggest_delta(nearest, 1.0) == 1.0
    assert suggest_delta(np.array([0.9217, 0.5]), 1.0) == 0.92
