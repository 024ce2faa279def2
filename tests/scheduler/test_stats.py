"""The one percentile: nearest rank, the same on lists and numpy arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dedgeai.scheduler.stats import percentile


def test_nearest_rank_by_hand() -> None:
    values = [3.0, 1.0, 2.0, 4.0]
    assert percentile(values, 50) == 2.0  # rank ceil(0.5 * 4) = 2: an observed value
    assert percentile(values, 51) == 3.0
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    hundred = [float(v) for v in range(1, 101)]
    assert percentile(hundred, 95) == 95.0 and percentile(hundred, 99) == 99.0
    assert percentile(list(range(1, 1001)), 99.9) == 999.0  # no float noise in the rank


def test_empty_is_nan_and_bad_q_raises() -> None:
    assert math.isnan(percentile([], 95))
    assert math.isnan(percentile(np.array([]), 95))
    for q in (-1, 100.5):
        with pytest.raises(ValueError, match="0..100"):
            percentile([1.0], q)


@pytest.mark.parametrize("n", [1, 2, 7, 20, 99, 100, 101, 5000])
def test_lists_arrays_and_numpy_inverted_cdf_agree(n: int) -> None:
    values = np.random.default_rng(n).exponential(2.0, size=n)
    for q in (0, 1, 10, 50, 90, 95, 99, 100):
        expected = float(np.percentile(values, q, method="inverted_cdf"))
        assert percentile(values, q) == expected
        assert percentile(values.tolist(), q) == expected


def test_differs_from_linear_interpolation_where_it_should() -> None:
    """The p50 of two values is the lower one, not their mean (numpy's default)."""
    assert percentile([1.0, 3.0], 50) == 1.0
    assert float(np.percentile([1.0, 3.0], 50)) == 2.0
