"""A policy never chooses a masked (down) server, in simulation or through the daemon API."""

import numpy as np
import pytest

from dedgeai.scheduler.config import Switches, get_preset
from dedgeai.scheduler.env import ArrivalStream, make_system
from dedgeai.scheduler.heuristics import SlotView
from dedgeai.scheduler.policy import OnlinePolicy
from dedgeai.scheduler.simulate import METHODS, make_method

DOWN = [0, 2]


@pytest.mark.parametrize("method", METHODS)
def test_slot_decisions_avoid_masked_servers(method: str) -> None:
    preset = get_preset("small")
    system = make_system(preset.env)
    episode = ArrivalStream(preset.env, 0).next_episode()
    available = np.ones(preset.env.n_servers, dtype=bool)
    available[DOWN] = False
    scheduler = make_method(method, preset, Switches(), seed=0)
    backlog = np.zeros(preset.env.n_servers)
    for t in range(5):
        view = SlotView(
            t, system, backlog, backlog, episode.task_mbit[t], episode.valid[t], available
        )
        actions = scheduler.act(view)
        assert not np.isin(actions[episode.valid[t]], DOWN).any()


@pytest.mark.parametrize("method", ["lad", "d2sac", "sac", "dqn"])
def test_online_policy_respects_mask_and_gives_zero_probability(method: str) -> None:
    env = get_preset("paper").env
    policy = OnlinePolicy(method, env, agent=3, seed=1)
    rng = np.random.default_rng(0)
    states = policy.build_states(
        rng.uniform(2, 5, 200),
        rng.uniform(0.2, 4, 200),
        rng.uniform(0, 100, 20),
        rng.uniform(0, 40, 20),
        np.full(20, 30.0),
    )
    mask = np.ones(20, dtype=bool)
    mask[[1, 3, 5, 7]] = False
    decision = policy.decide(states, mask=mask, task_index=np.arange(200))
    assert not np.isin(decision.actions, [1, 3, 5, 7]).any()
    assert np.all(decision.probs[:, ~mask] == 0.0)
    assert np.allclose(decision.probs.sum(axis=1), 1.0, atol=1e-5)


def test_everything_masked_is_an_error() -> None:
    policy = OnlinePolicy("lad", get_preset("small").env, agent=0)
    states = policy.build_states(
        np.array([3.0]), np.array([1.0]), np.zeros(4), np.zeros(4), np.full(4, 20.0)
    )
    with pytest.raises(ValueError, match="masked"):
        policy.decide(states, mask=np.zeros(4, dtype=bool))
