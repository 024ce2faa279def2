"""One percentile for every p50/p95/p99 the project prints (no torch; numpy only if given).

The agent's ``status`` (decision times), the simulators (episode delays), the lab's load
replays and the benchmarks all report percentiles; they use this one function so that a
p95 in one table means what it means in another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float] | Any, q: float) -> float:
    """The nearest-rank ``q``-th percentile (q in 0..100) of ``values``; NaN when empty.

    Nearest rank: the smallest value with at least ``q`` % of the values at or below it
    (rank ``ceil(q / 100 * n)``, numpy's ``method="inverted_cdf"``). Chosen over numpy's
    default linear interpolation because the answer is always a delay that was observed, so
    "p95 = 4.2 s" reads as "95 % of the tasks finished within 4.2 s", and it needs no numpy
    (the client and the lab compute it on plain lists). With few samples it is coarser: the
    p99 of 50 values is the largest one.

    ``values`` is a sequence of numbers or a numpy array (selected in O(n) with
    ``np.partition`` rather than sorted).
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in 0..100, got {q!r}")
    if hasattr(values, "dtype"):  # a numpy array: no Python-level sort of a large one
        import numpy as np

        flat = np.ravel(np.asarray(values, dtype=float))
        if flat.size == 0:
            return math.nan
        rank = _rank(q, flat.size)
        return float(np.partition(flat, rank - 1)[rank - 1])
    if len(values) == 0:
        return math.nan
    return float(sorted(values)[_rank(q, len(values)) - 1])


def _rank(q: float, n: int) -> int:
    """1-based nearest rank (rounded first: 99.9 % of 1000 is rank 999, not 1000)."""
    return max(1, math.ceil(round(q * n / 100, 6)))
