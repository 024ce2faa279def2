"""The daemon-facing policy API: delayed rewards, training steps and checkpoints."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dedgeai.scheduler.checkpoints import StateLayout, save_trained
from dedgeai.scheduler.config import LearnConfig, Switches, get_preset
from dedgeai.scheduler.errors import CheckpointError
from dedgeai.scheduler.policy import OnlinePolicy
from dedgeai.scheduler.simulate import train


def _states(policy: OnlinePolicy, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    B = policy.env.n_servers
    return policy.build_states(
        rng.uniform(2, 5, k),
        rng.uniform(0.2, 4, k),
        rng.uniform(0, 50, B),
        rng.uniform(0, 20, B),
        np.full(B, 25.0),
    )


def test_batch_of_one_and_batch_agree_in_shape() -> None:
    policy = OnlinePolicy("lad", get_preset("small").env, agent=1)
    one = policy.decide(_states(policy, 1)[0])
    many = policy.decide(_states(policy, 9))
    assert one.actions.shape == (1,) and one.probs.shape == (1, 4)
    assert many.actions.shape == (9,) and many.probs.shape == (9, 4)


def test_latent_memory_is_kept_per_task_index() -> None:
    policy = OnlinePolicy("lad", get_preset("small").env, agent=0)
    before = policy.learner.memory.clone()
    policy.decide(_states(policy, 2), task_index=np.array([5, 6]))
    changed = (policy.learner.memory != before).any(dim=-1)[0]
    assert changed[5] and changed[6] and not changed[0]


@pytest.mark.parametrize("method", ["lad", "sac", "dqn"])
def test_delayed_rewards_fill_the_buffer_and_train(method: str) -> None:
    learn = LearnConfig(warmup=20, batch_size=8)
    policy = OnlinePolicy(method, get_preset("small").env, agent=2, learn=learn)
    ids = [f"task-{i}" for i in range(40)]
    for i, task_id in enumerate(ids):
        policy.decide(_states(policy, 1, seed=i), task_index=np.array([i]), task_ids=[task_id])
    assert policy.train_step() is None  # nothing rewarded yet
    for i, task_id in enumerate(ids):
        assert policy.complete(task_id, delay_s=1.0 + 0.1 * i)
    assert not policy.complete("unknown", 1.0)
    assert policy.buffered == 39  # the last decision still waits for its next state
    metrics = policy.train_step()
    assert metrics is not None and all(np.isfinite(v) for v in metrics.values())
    assert policy.trained_steps == 1


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    policy = OnlinePolicy("lad", get_preset("small").env, agent=1, seed=3)
    policy.decide(_states(policy, 4), task_index=np.arange(4))
    policy.save(tmp_path / "p.pt")
    loaded = OnlinePolicy.load(tmp_path / "p.pt", agent=1, seed=3)
    for name, value in policy.learner.networks_state().items():
        assert torch.equal(value, loaded.learner.networks_state()[name]), name
    policy.learner.generator.manual_seed(9)
    loaded.learner.generator.manual_seed(9)
    states = _states(policy, 6, seed=4)
    assert np.array_equal(policy.decide(states).probs, loaded.decide(states).probs)


def test_sim_checkpoint_loads_one_agent_row(tmp_path: Path) -> None:
    preset = get_preset("small")
    learner, _ = train("lad", preset, Switches(), seed=0, episodes=1)
    save_trained(tmp_path / "policy.pt", learner, "lad", 1, 0)
    policy = OnlinePolicy.load(tmp_path / "policy.pt", agent=2)
    assert torch.equal(
        policy.learner.actor.eps_net.l1.weight[0], learner.actor.eps_net.l1.weight[2]
    )
    assert torch.equal(
        policy.learner.sac.critics.l1.weight[1], learner.sac.critics.l1.weight[4 + 2]
    )


def test_five_agents_with_five_denoising_steps_keep_the_shared_step_embedding(
    tmp_path: Path,
) -> None:
    """The step embedding [I, E] is shared: with I == A == 5 it must not be sliced."""
    preset = get_preset("small")
    env = replace(preset.env, n_servers=5)
    learn = replace(preset.learn, denoising_steps=5)
    learner, _ = train("lad", replace(preset, env=env, learn=learn), Switches(), seed=0, episodes=1)
    assert learner.actor.time_emb.shape[0] == learner.n_agents == 5
    save_trained(tmp_path / "policy.pt", learner, "lad", 1, 0)
    policy = OnlinePolicy.load(tmp_path / "policy.pt", agent=3)
    assert torch.equal(policy.learner.actor.time_emb, learner.actor.time_emb)
    assert torch.equal(
        policy.learner.actor.eps_net.l1.weight[0], learner.actor.eps_net.l1.weight[3]
    )


def test_checkpoint_for_another_system_is_refused(tmp_path: Path) -> None:
    OnlinePolicy("sac", get_preset("small").env, agent=0).save(tmp_path / "p.pt")
    paper_layout = StateLayout(
        n_servers=20, state_dim=42, inslot_load_in_state=True, state_scaling=True
    )
    with pytest.raises(CheckpointError, match="4 servers"):
        OnlinePolicy.load(tmp_path / "p.pt", agent=0, expect=paper_layout)


def test_corrupt_or_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable policy checkpoint"):
        OnlinePolicy.load(bad, agent=0)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        OnlinePolicy.load(tmp_path / "missing.pt", agent=0)
