"""The daemon's one-task decisions run on NumPy views of the learner's parameters."""

import numpy as np
import pytest
import torch

from dedgeai.scheduler.config import Switches, get_preset
from dedgeai.scheduler.learner import latent_to_memory
from dedgeai.scheduler.numpy_actor import NumpyActor, latent_to_memory_np
from dedgeai.scheduler.policy import OnlinePolicy

ENV = get_preset("paper").env
B = ENV.n_servers


def _states(policy: OnlinePolicy, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return policy.build_states(
        rng.uniform(2, 5, k),
        rng.uniform(0.2, 4, k),
        rng.uniform(0, 100, B),
        rng.uniform(0, 40, B),
        np.full(B, 30.0),
    )


def _torch_scores(policy: OnlinePolicy, state: np.ndarray, x: np.ndarray, noise: np.ndarray):
    learner = policy.learner
    s = torch.from_numpy(state)[None, None]
    with torch.no_grad():
        if policy.method == "lad":
            return learner.actor.chain(
                s,
                torch.from_numpy(x)[None, None],
                learner.generator,
                torch.from_numpy(noise)[:, None, None],
            )[0, 0].numpy()
        net = learner.actor if policy.method == "sac" else learner.q
        return net(s)[0, 0].numpy()


@pytest.mark.parametrize(
    ("method", "eps_softmax"), [("lad", True), ("lad", False), ("sac", True), ("dqn", True)]
)
def test_numpy_scores_equal_the_torch_networks(method: str, eps_softmax: bool) -> None:
    switches = Switches(eps_softmax=eps_softmax)
    policy = OnlinePolicy(method, ENV, agent=2, switches=switches, seed=5)
    actor = NumpyActor(policy.learner, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for state in _states(policy, 20):
        x = rng.standard_normal(B).astype(np.float32)
        noise = rng.standard_normal((policy.learn_cfg.denoising_steps - 1, B)).astype(np.float32)
        expected = _torch_scores(policy, state, x, noise)
        np.testing.assert_allclose(actor.scores(state, x, noise), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["lad", "sac", "dqn"])
def test_numpy_views_follow_training_and_checkpoint_loads(method: str, tmp_path) -> None:
    policy = OnlinePolicy(method, ENV, agent=0, seed=6)
    other = OnlinePolicy(method, ENV, agent=0, seed=7)
    state = _states(policy, 1)[0]
    x = np.full(B, 1.0 / B, dtype=np.float32)
    noise = np.zeros((policy.learn_cfg.denoising_steps - 1, B), dtype=np.float32)
    actor = policy._numpy_actor
    before = actor.scores(state, x, noise)
    with torch.no_grad():  # an in-place update, as Adam makes
        for param in (policy.learner.q if method == "dqn" else policy.learner.actor).parameters():
            param.mul_(1.5)
    changed = actor.scores(state, x, noise)
    assert not np.allclose(changed, before)
    np.testing.assert_allclose(
        changed, _torch_scores(policy, state, x, noise), rtol=1e-4, atol=1e-5
    )
    other.save(tmp_path / "other.pt")
    policy.learner.load_networks_state(
        OnlinePolicy.load(tmp_path / "other.pt", 0).learner.networks_state()
    )
    np.testing.assert_allclose(
        actor.scores(state, x, noise), _torch_scores(other, state, x, noise), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("method", ["lad", "sac", "dqn"])
def test_one_task_argmax_matches_the_batched_path(method: str) -> None:
    """SAC/DQN are pure functions: the NumPy decision equals the torch one, probs included.
    LAD's chain draws noise, so there: the choice is argmax of its own π, masked."""
    fast = OnlinePolicy(method, ENV, agent=1, seed=8)
    batched = OnlinePolicy(method, ENV, agent=1, seed=8)
    mask = np.ones(B, dtype=bool)
    mask[[0, 4]] = False
    states = _states(fast, 50, seed=3)
    slow = batched.decide(states, mask=mask, task_index=np.zeros(50), greedy=True)
    for k, state in enumerate(states):
        one = fast.decide(state, mask=mask, task_index=np.array([0]), greedy=True)
        assert one.actions.shape == (1,) and one.probs.shape == (1, B)
        assert mask[one.actions[0]] and np.all(one.probs[0, ~mask] == 0.0)
        assert one.probs[0, one.actions[0]] == pytest.approx(one.probs[0].max())
        if method != "lad":
            assert one.actions[0] == slow.actions[k]
            np.testing.assert_allclose(one.probs[0], slow.probs[k], atol=1e-5)


def test_lad_one_task_decision_updates_its_memory_and_records_the_transition() -> None:
    policy = OnlinePolicy("lad", ENV, agent=0, seed=9)
    rows = policy.learner._memory_rows(0)
    before = rows[0, 3].clone()
    states = _states(policy, 2)
    policy.decide(states[0], task_index=np.array([3]), task_ids=["a"], greedy=True)
    after = rows[0, 3].clone()
    assert not torch.equal(before, after)
    assert after.sum().item() == pytest.approx(1.0, abs=1e-5)  # post-softmax memory (default)
    policy.decide(states[1], task_index=np.array([4]), task_ids=["b"], greedy=True)
    assert policy.complete("a", 3.0)  # its next state is b's: the transition is complete
    assert policy.buffered == 1


def test_memory_transform_matches_torch() -> None:
    x0 = np.random.default_rng(2).standard_normal(B).astype(np.float32) * 5
    for pre in (False, True):
        expected = latent_to_memory(torch.from_numpy(x0), pre).numpy()
        np.testing.assert_allclose(latent_to_memory_np(x0, pre), expected, rtol=1e-5, atol=1e-6)


def test_one_task_state_equals_the_batched_state() -> None:
    policy = OnlinePolicy("lad", ENV, agent=0, seed=1)
    rng = np.random.default_rng(5)
    backlog, load, capacity = rng.uniform(0, 100, B), rng.uniform(0, 40, B), rng.uniform(10, 50, B)
    both = policy.build_states(np.array([3.0, 4.0]), np.array([1.5, 2.0]), backlog, load, capacity)
    one = policy.build_states(np.array([3.0]), np.array([1.5]), backlog, load, capacity)
    assert one.shape == (1, policy.layout.state_dim)
    np.testing.assert_allclose(one[0], both[0], rtol=1e-6)


@pytest.mark.parametrize("method", ["lad", "sac", "dqn"])
def test_one_task_drawn_decisions_follow_pi_and_never_pick_a_masked_server(method: str) -> None:
    """``mean_path`` deployment: drawn from π of the noiseless chain (DQN: argmax of Q)."""
    policy = OnlinePolicy(method, ENV, agent=1, switches=Switches(eps_softmax=False), seed=4)
    mask = np.ones(B, dtype=bool)
    mask[[1, 5]] = False
    state = _states(policy, 1, seed=6)[0]
    x = policy._memory_view[0].copy() if policy._memory_view is not None else None
    counts = np.zeros(B)
    for _ in range(3000):
        if x is not None:
            policy._memory_view[0] = x  # the same X_b[0] every time: one π to sample
        decision = policy.decide(state, mask=mask, task_index=np.array([0]), mean_path=True)
        counts[decision.actions[0]] += 1
    probs = decision.probs[0]
    assert np.all(counts[~mask] == 0) and np.all(probs[~mask] == 0.0)
    if method == "dqn":
        assert counts[np.argmax(probs)] == 3000
    else:  # 3000 draws: every frequency within ~4 standard errors of π
        np.testing.assert_allclose(counts / 3000, probs, atol=0.04)
