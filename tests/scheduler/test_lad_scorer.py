"""The per-server LAD scorer: shapes at any size, masking, equivariance, the warm start, one path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dedgeai.scheduler.config import EnvConfig, Switches
from dedgeai.scheduler.errors import CheckpointError, ConfigurationError, CorruptCheckpointError
from dedgeai.scheduler.lad_scorer import N_FEATURES, LADScorer, features, synthetic
from dedgeai.scheduler.online import ClusterScheduler, ClusterState, TaskSpec
from dedgeai.scheduler.policy import OnlinePolicy
from dedgeai.scheduler.twin import Twin, simulate
from dedgeai.scheduler.twin_policies import Scorer, make_policy
from dedgeai.scheduler.twin_scenarios import paper

WARM_STEPS = 200  # seconds; 1,500 on clusters of 4-64 boxes in the benchmark


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> tuple[LADScorer, Path]:
    scorer = LADScorer(seed=1)
    scorer.warm_start(steps=WARM_STEPS, batch=64, sizes=(4, 8, 16, 32))  # held out: 64, 512
    path = tmp_path_factory.mktemp("scorer") / "lad-scorer.pt"
    scorer.save(path)
    return scorer, path


def _state(rng: np.random.Generator, B: int) -> tuple[TaskSpec, ClusterState]:
    cap = rng.uniform(4, 20, B)
    up = rng.uniform(size=B) > 0.2
    up[0] = True
    backlog = np.where(rng.uniform(size=B) < 0.4, 0.0, rng.uniform(0, 60, B) * cap)
    load = rng.uniform(0, 2, B) * cap
    transfer = rng.uniform(0.002, 0.01, B)
    transfer[0] = 0.0
    return TaskSpec(14.0, 0.02), ClusterState(0, backlog, load, cap, up, transfer)


@pytest.mark.parametrize("B", [3, 200])
def test_shapes_at_any_size(B: int) -> None:
    scorer = LADScorer(seed=0)  # untrained: shapes do not depend on the weights
    phi, finish, ok = synthetic(np.random.default_rng(0), 5, B)
    assert phi.shape == (5, B, N_FEATURES) and phi.dtype == np.float32
    assert finish.shape == ok.shape == (5, B)
    assert np.isfinite(phi).all()
    assert scorer.latent(phi).shape == (5, B)
    probs = scorer.probs(phi, ok)
    assert probs.shape == (5, B)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_masked_servers_get_zero_probability_and_are_never_chosen(
    warm: tuple[LADScorer, Path],
) -> None:
    scorer, path = warm
    rng = np.random.default_rng(2)
    task, state = _state(rng, 16)
    assert not state.available.all()
    probs = scorer.state_probs(task, state)
    assert (probs[~state.available] == 0.0).all() and probs[state.available].sum() > 0.999
    box = ClusterScheduler("lad", 16, 0, seed=5, checkpoint=path, actor="scorer")
    targets = {box.decide(task, state).target for _ in range(300)}
    assert targets <= set(np.flatnonzero(state.available).tolist())


def test_permuting_servers_permutes_pi(warm: tuple[LADScorer, Path]) -> None:
    scorer, _ = warm
    rng = np.random.default_rng(3)
    task, s = _state(rng, 40)
    perm = rng.permutation(40)
    moved = ClusterState(
        int(np.flatnonzero(perm == s.self_index)[0]),
        s.backlog_steps[perm],
        s.interval_load_steps[perm],
        s.capacity_steps_per_s[perm],
        s.available[perm],
        s.transfer()[perm],
    )
    np.testing.assert_allclose(
        scorer.state_probs(task, moved), scorer.state_probs(task, s)[perm], rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("B", [8, 64, 512])
def test_warm_start_agrees_with_greedy_on_held_out_states(
    warm: tuple[LADScorer, Path], B: int
) -> None:
    scorer, _ = warm
    held_out = np.random.default_rng(12345)  # not the warm start's stream
    agreement = scorer.agreement(*synthetic(held_out, 200 if B < 512 else 40, B))
    assert agreement > 0.8, f"argmax π = greedy's choice on {agreement:.2f} of states (B = {B})"
    untrained = LADScorer(seed=1).agreement(*synthetic(np.random.default_rng(12345), 200, B))
    assert untrained < 0.5


def test_same_seed_same_actor_and_decisions() -> None:
    a, b = LADScorer(seed=4), LADScorer(seed=4)
    assert a.warm_start(steps=20) == b.warm_start(steps=20)
    for pa, pb in zip(a.net.parameters(), b.net.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert not torch.equal(LADScorer(seed=5).net.l1.weight, a.net.l1.weight)
    task, state = _state(np.random.default_rng(5), 12)
    boxes = [
        ClusterScheduler(
            "lad", 12, 0, seed=7, actor="scorer", warm_start_steps=20, packaged_default=False
        )
        for _ in range(2)
    ]
    draws = [[box.decide(task, state).target for _ in range(50)] for box in boxes]
    assert draws[0] == draws[1]
    assert len(set(draws[0])) > 1  # drawn from π, not a constant


def test_numpy_chain_is_the_torch_chain(warm: tuple[LADScorer, Path]) -> None:
    scorer, _ = warm
    rng = np.random.default_rng(6)
    phi, _, _ = synthetic(rng, 4, 10)
    x_start = rng.standard_normal((4, 10)).astype(np.float32)
    noise = rng.standard_normal((scorer.cfg.denoising_steps - 1, 4, 10)).astype(np.float32)
    with torch.no_grad():
        expected = scorer.net.chain(
            torch.as_tensor(phi), torch.as_tensor(x_start), torch.as_tensor(noise)
        )
    got = scorer.latent(phi, x_start=x_start, noise=noise)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_twin_policy_decides_as_the_daemon(warm: tuple[LADScorer, Path]) -> None:
    """The twin's batched π equals ``ClusterScheduler(actor="scorer").decide``'s (loaded
    from the saved checkpoint) on the same gossip views, mid-run."""
    _, path = warm
    sc = paper(8, load=0.9, n_tasks=400)
    policy = make_policy("lad-scorer", {"lad-scorer": path}, seed=0)
    assert isinstance(policy, Scorer)
    twin = Twin(sc, policy, seed=0)
    twin.run()
    origins, tasks = np.array([0, 3, 5, 3]), np.array([10, 11, 12, 13])
    now = float(twin.t_at[200])
    batch = policy.probs_batch(twin, origins, tasks, now)
    for r, (o, k) in enumerate(zip(origins.tolist(), tasks.tolist(), strict=True)):
        box = ClusterScheduler("lad", 8, o, checkpoint=path, actor="scorer")
        placement = box.decide(twin.task_spec(k), twin.view_state(o, k, now))
        np.testing.assert_allclose(placement.probs, batch[r], rtol=1e-5, atol=1e-7)


def test_scorer_runs_the_twin_with_and_without_probes(warm: tuple[LADScorer, Path]) -> None:
    _, path = warm
    sc = paper(32, load=0.8, n_tasks=1500)
    ideal = simulate(sc, make_policy("omniscient"), seed=1).mean_s
    for name in ("lad-scorer", "lad-scorer-pod2"):
        result = simulate(sc, make_policy(name, {"lad-scorer": path}, seed=1), seed=1)
        assert result.done == 1500 and result.duplicates == 0
        assert ideal <= result.mean_s < 2.0 * ideal, f"{name}: {result.mean_s / ideal:.2f}"


def test_scorer_actor_refuses_what_it_does_not_do() -> None:
    with pytest.raises(ConfigurationError):
        ClusterScheduler("greedy", 4, 0, actor="scorer")
    with pytest.raises(ConfigurationError):
        ClusterScheduler("lad", 4, 0, actor="transformer")


def test_features_are_scale_free() -> None:
    """A cluster twice as fast with half the backlog times looks the same, but for log f_min."""
    rng = np.random.default_rng(8)
    phi, _, ok = synthetic(rng, 1, 6)
    args = (
        np.array([20.0]),
        np.array([0.02]),
        rng.uniform(0, 100, (1, 6)),
        rng.uniform(0, 10, (1, 6)),
        rng.uniform(5, 20, (1, 6)),
        ok,
        np.zeros((1, 6)),
        np.array([0]),
    )
    a, _ = features(*args)
    b, _ = features(*args[:4], args[4] * 2.0, *args[5:])
    np.testing.assert_allclose(np.delete(a, 8, axis=2), np.delete(b, 8, axis=2), rtol=1e-5)


def test_checkpoint_round_trip_and_refusals(warm: tuple[LADScorer, Path], tmp_path: Path) -> None:
    scorer, path = warm
    loaded = LADScorer.load(path)
    phi, _, ok = synthetic(np.random.default_rng(9), 3, 20)
    np.testing.assert_array_equal(loaded.probs(phi, ok), scorer.probs(phi, ok))
    assert loaded.cloned == scorer.cloned and loaded.cloned["steps"] == WARM_STEPS
    other = tmp_path / "lad.pt"
    OnlinePolicy("lad", EnvConfig(n_servers=4), 0, Switches(eps_softmax=False), seed=0).save(other)
    with pytest.raises(CheckpointError, match="not lad-scorer"):
        LADScorer.load(other)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptCheckpointError):
        LADScorer.load(broken)
    with torch.no_grad():
        loaded.net.l2.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        loaded.save(tmp_path / "nan.pt")
    assert not (tmp_path / "nan.pt").exists()
