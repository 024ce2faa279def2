"""Sanity bounds of a ClusterState: the per-float path and the vectorised path agree."""

from __future__ import annotations

import numpy as np
import pytest

from dedgeai.scheduler import state_checks
from dedgeai.scheduler.cluster_state import ClusterState

BROKEN = {
    "backlog_steps": [np.nan, -1.0, np.inf, 2e9],
    "interval_load_steps": [np.nan, -0.5, 2e9],
    "capacity_steps_per_s": [0.0, np.nan, 1e7, -3.0],
}


def _cluster(n: int, seed: int = 0) -> ClusterState:
    rng = np.random.default_rng(seed)
    return ClusterState(
        self_index=0,
        backlog_steps=rng.uniform(0, 500, n),
        interval_load_steps=rng.uniform(0, 50, n),
        capacity_steps_per_s=rng.uniform(10, 50, n),
        available=np.ones(n, dtype=bool),
        transfer_s=rng.uniform(0, 2, n),
    )


def _broken(cluster: ClusterState, field: str, index: int, value: float) -> ClusterState:
    values = np.array(getattr(cluster, field), dtype=np.float64)
    values[index] = value
    return ClusterState(
        **{**cluster.__dict__, field: values}  # a frozen dataclass: rebuilt, not mutated
    )


@pytest.mark.parametrize("n", [3, state_checks.PLAIN_FLOAT_SERVERS + 1, 1024])
def test_a_sane_cluster_has_no_problems(n):
    assert state_checks.state_problems(_cluster(n)) == []


@pytest.mark.parametrize("n", [3, state_checks.PLAIN_FLOAT_SERVERS + 1, 1024])
@pytest.mark.parametrize(("field", "value"), [(f, v) for f, vs in BROKEN.items() for v in vs])
def test_every_broken_value_is_named_whatever_the_cluster_size(n, field, value):
    index = n - 1  # the last server: a check that stops early would miss it
    problems = state_checks.state_problems(_broken(_cluster(n), field, index, value))
    assert problems and problems[0].startswith(f"server {index}: ")


def test_a_queue_too_long_for_its_speed_is_a_problem_on_both_paths():
    for n in (3, 1024):
        cluster = _broken(_cluster(n), "backlog_steps", 1, 1e8)
        cluster = _broken(cluster, "capacity_steps_per_s", 1, 1.0)  # 1e8 s of work
        assert state_checks.state_problems(cluster) == ["server 1: 1e+08 s of queued work"]


def test_a_negative_transfer_time_is_a_problem_on_both_paths():
    for n in (3, 1024):
        cluster = _broken(_cluster(n), "transfer_s", 2, -1.0)
        assert state_checks.state_problems(cluster) == ["server 2: transfer_s -1"]
