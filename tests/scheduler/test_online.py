"""The daemon-side cluster scheduler: heuristics, learned policies, masking, delayed rewards."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dedgeai.scheduler.checkpoints import save_trained
from dedgeai.scheduler.config import LearnConfig, Switches, get_preset
from dedgeai.scheduler.errors import CheckpointError, ConfigurationError, WarmStartCancelled
from dedgeai.scheduler.online import (
    POLICIES,
    WARM_START_SAMPLES,
    ClusterScheduler,
    ClusterState,
    TaskSpec,
    estimated_finish_s,
    soft_greedy,
)
from dedgeai.scheduler.simulate import train

B = 4


def _cluster(rng: np.random.Generator, available: np.ndarray | None = None) -> ClusterState:
    capacity = rng.uniform(10, 50, B)
    return ClusterState(
        self_index=1,
        backlog_steps=rng.uniform(0, 20, B) * capacity,
        interval_load_steps=rng.uniform(0, 3, B) * capacity,
        capacity_steps_per_s=capacity,
        available=np.ones(B, dtype=bool) if available is None else available,
    )


def test_greedy_is_earliest_estimated_finish() -> None:
    cluster = ClusterState(
        0,
        np.array([100.0, 0.0, 50.0, 0.0]),
        np.zeros(B),
        np.array([10.0, 10.0, 10.0, 40.0]),
        np.ones(B, bool),
    )
    placement = ClusterScheduler("greedy", B, 0).decide(TaskSpec(20.0, 0.01), cluster)
    assert placement.target == 3  # idle and fastest
    assert estimated_finish_s(TaskSpec(20.0, 0.01), cluster)[3] == pytest.approx(0.5)


def test_round_robin_skips_down_servers_and_local_falls_back() -> None:
    available = np.array([True, False, True, True])
    rng = np.random.default_rng(0)
    rr = ClusterScheduler("round-robin", B, 1)
    targets = [rr.decide(TaskSpec(10, 0.01), _cluster(rng, available)).target for _ in range(6)]
    assert targets == [2, 3, 0, 2, 3, 0]
    local = ClusterScheduler("local", B, 1).decide(TaskSpec(10, 0.01), _cluster(rng, available))
    assert local.target != 1 and "down" in local.reason


@pytest.mark.parametrize("policy", POLICIES)
def test_no_policy_picks_a_down_server(policy: str, quick_warm_start: None) -> None:
    rng = np.random.default_rng(3)
    available = np.array([True, False, True, False])
    scheduler = ClusterScheduler(policy, B, 0, seed=1, learn=True)
    for i in range(60):
        placement = scheduler.decide(
            TaskSpec(float(rng.uniform(5, 40)), 0.01), _cluster(rng, available), f"t{i}"
        )
        assert available[placement.target]
        assert placement.probs[~available].sum() == 0.0


def test_learned_policy_records_rewards_and_trains(tmp_path: Path, quick_warm_start: None) -> None:
    scheduler = ClusterScheduler("lad", B, 2, seed=0, learn=True)
    rng = np.random.default_rng(0)
    for i in range(400):
        if i % 20 == 0:
            scheduler.start_interval()
        scheduler.decide(TaskSpec(float(rng.uniform(5, 40)), 0.01), _cluster(rng), f"task-{i}")
        assert scheduler.complete(f"task-{i}", float(rng.uniform(0.5, 5)))
    metrics = scheduler.train_step()
    assert metrics is not None and scheduler.trained_steps == 1
    assert scheduler.save(tmp_path / "policy.pt")
    reloaded = ClusterScheduler("lad", B, 2, checkpoint=tmp_path / "policy.pt", learn=True)
    assert reloaded.trained_steps == 1


def test_the_configured_warm_up_wins_over_the_checkpoints_own(
    tmp_path: Path, quick_warm_start: None
) -> None:
    """An agent's ``learn_warmup`` paces learning from a saved policy too (it was ignored)."""
    saved = ClusterScheduler("lad", B, 0, seed=0, learn=True, learn_config=LearnConfig(warmup=300))
    saved.save(tmp_path / "policy.pt")
    quick = LearnConfig(warmup=4, batch_size=4)
    reloaded = ClusterScheduler(
        "lad", B, 0, checkpoint=tmp_path / "policy.pt", learn=True, learn_config=quick
    )
    rng = np.random.default_rng(3)
    for i in range(6):  # far fewer than the checkpoint's 300
        reloaded.decide(TaskSpec(float(rng.uniform(5, 40)), 0.01), _cluster(rng), f"t{i}")
        assert reloaded.complete(f"t{i}", 1.0)
    assert reloaded.train_step() is not None and reloaded.trained_steps == 1
    kept = ClusterScheduler("lad", B, 0, checkpoint=tmp_path / "policy.pt", learn=True)
    for i in range(6):  # without a config, the checkpoint's own warm-up still applies
        kept.decide(TaskSpec(float(rng.uniform(5, 40)), 0.01), _cluster(rng), f"t{i}")
        assert kept.complete(f"t{i}", 1.0)
    assert kept.train_step() is None


def test_a_warm_start_stops_when_its_caller_says_so() -> None:
    """``should_stop`` is asked while the states are built and at every cloning step."""
    asked = 0

    def after(n: int):
        def should_stop() -> bool:
            nonlocal asked
            asked += 1
            return asked > n

        return should_stop

    with pytest.raises(WarmStartCancelled):
        ClusterScheduler("lad", B, 0, seed=0, should_stop=after(0))
    assert asked == 1  # before the first synthetic state
    asked = 0
    with pytest.raises(WarmStartCancelled):
        ClusterScheduler("sac", B, 0, seed=0, should_stop=after(WARM_START_SAMPLES // 256 + 3))
    assert asked == WARM_START_SAMPLES // 256 + 4  # three cloning steps ran, the fourth did not
    scheduler = ClusterScheduler("dqn", B, 0, seed=0, should_stop=lambda: False)
    assert scheduler.learns is False and scheduler.policy == "dqn"


def test_warm_start_beats_chance() -> None:
    """A fresh SAC actor cloned from greedy agrees with greedy far more often than at random."""
    scheduler = ClusterScheduler("sac", B, 0, seed=0)
    rng = np.random.default_rng(11)
    agree = 0
    for _ in range(300):
        cluster, task = _cluster(rng), TaskSpec(float(rng.uniform(5, 40)), 0.01)
        agree += scheduler.decide(task, cluster).target == int(
            np.argmin(estimated_finish_s(task, cluster))
        )
    assert agree / 300 > 0.45  # chance is 1/4


def _live_decisions(
    scheduler: ClusterScheduler, capacity: np.ndarray, n: int
) -> Iterator[tuple[ClusterState, TaskSpec]]:
    """States as in the cluster benchmark (8 servers, often idle, up to 8 s of backlog) and
    its tasks, with a new gossip interval every 4 decisions; the same ones every call."""
    rng = np.random.default_rng(12)
    for i in range(n):
        if i % 4 == 0:
            scheduler.start_interval()
        idle = rng.uniform(size=8) < 0.4
        backlog = np.where(idle, 0.0, rng.uniform(0, 8, 8)) * capacity
        load = np.where(rng.uniform(size=8) < 0.6, 0.0, rng.uniform(0, 2, 8)) * capacity
        cluster = ClusterState(0, backlog, load, capacity, np.ones(8, dtype=bool))
        yield cluster, TaskSpec(float(rng.integers(10, 20)), 0.002)


def test_lad_warm_started_on_measured_capacities_follows_greedy() -> None:
    """The state has backlogs in seconds but no speeds: given the measured capacities, the
    fresh LAD actor's argmax deployment (its chain's mean path) learns where the fast
    servers are. Same states, 8 servers as in the cluster benchmark."""
    capacity = np.array([20, 10, 7.2, 12.8, 11.2, 8.4, 20, 6.8])
    scheduler = ClusterScheduler("lad", 8, 0, seed=0, deterministic=True, capacities=capacity)
    agree, regret = 0, []
    for cluster, task in _live_decisions(scheduler, capacity, 300):
        finish = estimated_finish_s(task, cluster)
        target = scheduler.decide(task, cluster).target
        agree += target == int(np.argmin(finish))
        regret.append(finish[target] - finish.min())
    assert agree / 300 > 0.6  # chance is 1/8; measured ~0.8
    assert float(np.mean(regret)) < 0.5  # seconds; measured ~0.1


def test_sim_checkpoint_serves_its_row_and_wrong_size_is_refused(tmp_path: Path) -> None:
    learner, _ = train("sac", get_preset("small"), Switches(), seed=0, episodes=1)
    save_trained(tmp_path / "policy.pt", learner, "sac", 1, 0)
    scheduler = ClusterScheduler("sac", 4, 3, checkpoint=tmp_path / "policy.pt")
    assert scheduler.decide(TaskSpec(10, 0.01), _cluster(np.random.default_rng(0))).policy == "sac"
    with pytest.raises(CheckpointError, match="4 servers"):
        ClusterScheduler("sac", 6, 0, checkpoint=tmp_path / "policy.pt")
    with pytest.raises(ConfigurationError, match="not lad"):
        ClusterScheduler("lad", 4, 0, checkpoint=tmp_path / "policy.pt")


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown policy"):
        ClusterScheduler("fastest", B, 0)
    scheduler = ClusterScheduler("greedy", B, 0)
    with pytest.raises(ConfigurationError, match="exactly 4 servers"):
        scheduler.decide(
            TaskSpec(1, 0.01),
            ClusterState(0, np.zeros(3), np.zeros(3), np.ones(3), np.ones(3, bool)),
        )
    with pytest.raises(ConfigurationError, match="no server is available"):
        scheduler.decide(
            TaskSpec(1, 0.01),
            ClusterState(0, np.zeros(B), np.zeros(B), np.ones(B), np.zeros(B, bool)),
        )


def test_single_server_runs_everything_locally() -> None:
    placement = ClusterScheduler("lad", 1, 0).decide(
        TaskSpec(10, 0.01), ClusterState(0, np.zeros(1), np.zeros(1), np.ones(1), np.ones(1, bool))
    )
    assert placement.target == 0


def test_soft_greedy_prefers_the_earliest_finish_and_spreads_over_near_ties() -> None:
    finish = np.array([[1.0, 1.05, 3.0, np.inf], [10.0, 10.5, 30.0, 11.0]])
    probs = soft_greedy(finish)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 3] == 0.0  # down: never
    assert probs[0, 0] > probs[0, 1] > 0.3 > 1e-2 > probs[0, 2]  # a near-tie shares
    # The temperature is relative to the best finish: the same shape at 10x the scale.
    np.testing.assert_allclose(probs[1, :3] / probs[1, :3].sum(), probs[0, :3] / probs[0, :3].sum())


def test_fresh_lad_drawn_decisions_fit_the_soft_greedy_teacher() -> None:
    """Warm start on soft-greedy targets with ε unconstrained (B7 off): π of the mean path
    is close to the teacher, so drawn decisions cost little over it (seconds of finish)."""
    capacity = np.array([20, 10, 7.2, 12.8, 11.2, 8.4, 20, 6.8])
    scheduler = ClusterScheduler("lad", 8, 0, seed=0, mean_path=True, capacities=capacity)
    assert scheduler._learned is not None
    assert scheduler._learned.switches.eps_softmax is False
    extra, kl = [], []
    for cluster, task in _live_decisions(scheduler, capacity, 200):
        finish = estimated_finish_s(task, cluster)
        teacher = soft_greedy(finish[None])[0]
        placement = scheduler.decide(task, cluster)
        assert placement.reason.startswith("drawn ")
        pi = placement.probs
        extra.append(float(pi @ finish - teacher @ finish))
        kl.append(float(np.sum(teacher * np.log((teacher + 1e-9) / (pi + 1e-9)))))
    assert float(np.mean(kl)) < 0.25  # measured ~0.07 (B7 on: ~0.5)
    assert float(np.mean(extra)) < 0.3  # seconds; measured ~0.07 (B7 on: ~1.0)


def test_a_fresh_lad_checkpoint_reloads_with_its_switches(
    tmp_path: Path, quick_warm_start: None
) -> None:
    """The agent's fresh LAD has ε unconstrained (B7 off); its checkpoint says so, and a
    reload decides exactly as the saved actor (old checkpoints, without the key, keep B7)."""
    capacity = np.array([20.0, 10.0, 7.2, 12.8])
    saved = ClusterScheduler("lad", B, 1, seed=0, deterministic=True, capacities=capacity)
    saved.save(tmp_path / "policy.pt")
    loaded = ClusterScheduler(
        "lad", B, 1, seed=0, deterministic=True, checkpoint=tmp_path / "policy.pt"
    )
    assert loaded._learned is not None and loaded._learned.switches.eps_softmax is False
    rng = np.random.default_rng(3)
    for _ in range(20):
        cluster, task = _cluster(rng), TaskSpec(float(rng.uniform(5, 40)), 0.01)
        a, b = saved.decide(task, cluster), loaded.decide(task, cluster)
        assert a.target == b.target
        np.testing.assert_allclose(a.probs, b.probs, rtol=1e-5, atol=1e-6)
    assert Switches().eps_softmax is True  # the simulator keeps the authors' B7
