"""Deployment mode: a learned policy takes argmax of π (masked), with optional ε exploration."""

import numpy as np
import pytest

from dedgeai.scheduler.config import get_preset
from dedgeai.scheduler.online import ClusterScheduler, ClusterState, TaskSpec
from dedgeai.scheduler.policy import OnlinePolicy

B = 4
DOWN = [1, 3, 5, 7]


def _states(policy: OnlinePolicy, k: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return policy.build_states(
        rng.uniform(2, 5, k),
        rng.uniform(0.2, 4, k),
        rng.uniform(0, 100, n),
        rng.uniform(0, 40, n),
        np.full(n, 30.0),
    )


@pytest.mark.parametrize("method", ["lad", "sac", "dqn"])
def test_argmax_picks_the_most_likely_allowed_server(method: str) -> None:
    env = get_preset("paper").env
    policy = OnlinePolicy(method, env, agent=3, seed=1)
    states = _states(policy, 200, env.n_servers)
    mask = np.ones(env.n_servers, dtype=bool)
    mask[DOWN] = False
    decision = policy.decide(states, mask=mask, task_index=np.arange(200), greedy=True)
    assert not np.isin(decision.actions, DOWN).any()
    assert np.all(decision.probs[:, ~mask] == 0.0)
    chosen = decision.probs[np.arange(200), decision.actions]
    assert np.all(chosen >= decision.probs.max(axis=1) - 1e-7)


def test_argmax_differs_from_sampling_and_sampling_is_the_default() -> None:
    env = get_preset("paper").env
    a, b = (OnlinePolicy("sac", env, agent=0, seed=2) for _ in range(2))
    states = _states(a, 300, env.n_servers)
    sampled = a.decide(states)
    argmax = b.decide(states, greedy=True)
    np.testing.assert_allclose(sampled.probs, argmax.probs, atol=1e-6)
    assert np.all(argmax.actions == argmax.probs.argmax(axis=1))
    assert np.any(sampled.actions != sampled.probs.argmax(axis=1))  # sampling still samples


@pytest.mark.parametrize("method", ["lad", "sac", "dqn"])
def test_exploration_stays_on_live_servers(method: str) -> None:
    env = get_preset("paper").env
    policy = OnlinePolicy(method, env, agent=0, seed=3)
    states = _states(policy, 400, env.n_servers)
    mask = np.ones(env.n_servers, dtype=bool)
    mask[DOWN] = False
    greedy = policy.decide(states, mask=mask, task_index=np.arange(400), greedy=True)
    explored = policy.decide(
        states, mask=mask, task_index=np.arange(400), greedy=True, explore_epsilon=0.5
    )
    assert not np.isin(explored.actions, DOWN).any()
    if method != "lad":  # LAD's memory X_b[n] moves between calls; others are a pure function
        differs = np.mean(explored.actions != greedy.actions)
        assert 0.2 < differs < 0.6


def test_cluster_scheduler_argmax_mode(quick_warm_start: None) -> None:
    rng = np.random.default_rng(4)
    available = np.array([True, False, True, True])
    scheduler = ClusterScheduler("lad", B, 0, seed=1, deterministic=True, explore_epsilon=0.0)
    for i in range(40):
        capacity = rng.uniform(10, 50, B)
        cluster = ClusterState(
            0,
            rng.uniform(0, 20, B) * capacity,
            rng.uniform(0, 3, B) * capacity,
            capacity,
            available,
        )
        placement = scheduler.decide(TaskSpec(float(rng.uniform(5, 40)), 0.01), cluster, f"t{i}")
        assert available[placement.target]
        assert placement.probs[placement.target] == pytest.approx(placement.probs.max())
        assert placement.reason.startswith("argmax")
    with pytest.raises(ValueError, match="explore_epsilon"):
        ClusterScheduler("greedy", B, 0, deterministic=True, explore_epsilon=1.5)
