"""A learner that cannot be poisoned: no NaN/inf reaches a network, the buffer or a file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dedgeai.scheduler import online
from dedgeai.scheduler.checkpoints import load_checkpoint
from dedgeai.scheduler.config import LearnConfig
from dedgeai.scheduler.errors import CheckpointError, CorruptCheckpointError
from dedgeai.scheduler.online import ClusterScheduler, ClusterState, TaskSpec

B, BAD = 4, 2  # servers; the one whose report goes wrong (never this agent, index 0)
CAPACITY = np.array([20.0, 10.0, 40.0, 12.0])  # the faulty server would be the fastest
INSANE = [
    ("backlog_steps", np.nan),
    ("backlog_steps", -50.0),
    ("backlog_steps", np.inf),
    ("interval_load_steps", np.nan),
    ("interval_load_steps", -1.0),
    ("interval_load_steps", 1e12),
    ("capacity_steps_per_s", np.nan),
    ("capacity_steps_per_s", 0.0),
    ("capacity_steps_per_s", -5.0),
    ("capacity_steps_per_s", np.inf),
    ("transfer_s", np.nan),
    ("transfer_s", -np.inf),
]


@pytest.fixture(autouse=True)
def _quick_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(online, "WARM_START_STEPS", 40)  # a sane clone is not what is tested


def _state(rng: np.random.Generator, field: str | None = None, value: float = 0.0) -> ClusterState:
    values = {
        "backlog_steps": rng.uniform(0, 5, B) * CAPACITY,
        "interval_load_steps": rng.uniform(0, 1, B) * CAPACITY,
        "capacity_steps_per_s": CAPACITY.copy(),
        "transfer_s": rng.uniform(0, 0.05, B),
    }
    if field is not None:
        values[field][BAD] = value
    return ClusterState(0, available=np.ones(B, dtype=bool), **values)


def _learner(policy: str = "lad") -> ClusterScheduler:
    return ClusterScheduler(
        policy,
        B,
        0,
        seed=0,
        learn=True,
        mean_path=True,
        learn_config=LearnConfig(warmup=8, batch_size=8),
    )


def _weights(scheduler: ClusterScheduler) -> dict[str, torch.Tensor]:
    assert scheduler._learned is not None
    return scheduler._learned.learner.networks_state()


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("policy", ["lad", "sac", "dqn"])
def test_an_insane_state_never_reaches_the_policy_and_later_decisions_stay_sane(
    policy: str,
) -> None:
    scheduler = _learner(policy)
    rng = np.random.default_rng(7)
    task = TaskSpec(20.0, 0.01)
    for i, (field, value) in enumerate(INSANE):
        scheduler.start_interval()  # LAD: the insane decision would take X_b[0] ...
        bad = scheduler.decide(task, _state(rng, field, value), f"bad-{i}")
        assert bad.policy == "greedy" and f"server {BAD}: " in bad.reason, bad.reason
        assert bad.reason.startswith("state rejected") and field in bad.reason
        assert bad.target != BAD and np.isfinite(bad.probs).all()
        assert not scheduler.complete(f"bad-{i}", 1.0)  # nothing was recorded for it
        scheduler.start_interval()  # ... and the clean one reads X_b[0] back
        clean = scheduler.decide(task, _state(rng), f"clean-{i}")
        assert clean.policy == policy and np.isfinite(clean.probs).all(), clean.reason
        assert scheduler.complete(f"clean-{i}", float(rng.uniform(0.5, 3.0)))
    assert scheduler.insane_states == len(INSANE)
    for _ in range(3):
        losses = scheduler.train_step()
        assert losses is not None and all(np.isfinite(v) for v in losses.values()), losses
    assert _finite(_weights(scheduler)) and scheduler.rejected_updates == 0


@pytest.mark.parametrize("policy", ["greedy", "least-loaded"])
def test_a_heuristic_does_not_send_work_to_a_nan_report(policy: str) -> None:
    """argmin over a NaN picks the NaN: the broken (or lying) peer would get every task."""
    scheduler = ClusterScheduler(policy, B, 0)
    rng = np.random.default_rng(1)
    for field in ("backlog_steps", "interval_load_steps", "capacity_steps_per_s"):
        placement = scheduler.decide(TaskSpec(20.0, 0.01), _state(rng, field, np.nan))
        assert placement.target != BAD and placement.policy == policy
        assert "state rejected" in placement.reason


def test_when_every_server_is_insane_this_one_runs_the_task() -> None:
    cluster = ClusterState(0, np.full(B, np.nan), np.zeros(B), CAPACITY, np.ones(B, dtype=bool))
    placement = ClusterScheduler("greedy", B, 0).decide(TaskSpec(float("nan"), 0.01), cluster)
    assert placement.target == 0 and np.isfinite(placement.probs).all()
    assert "task demand_steps nan" in placement.reason


def test_a_sane_state_is_left_alone() -> None:
    state = _state(np.random.default_rng(2))
    assert state.problems() == [] and TaskSpec(20.0, 0.01).problems() == []
    assert state.sanitized().available.all()
    long_queue = ClusterState(
        0, np.array([0.0, 0.0, 1e9, 0.0]), np.zeros(B), CAPACITY, state.available
    )
    assert long_queue.problems() == [f"server {BAD}: 2.5e+07 s of queued work"]


def test_only_finished_tasks_reward_and_a_non_finite_transition_is_not_buffered() -> None:
    scheduler = _learner()
    learned = scheduler._learned
    assert learned is not None
    rng = np.random.default_rng(3)
    ids = ["done", "cancelled", "nan-delay", "huge", "next"]
    for task_id in ids:
        scheduler.decide(TaskSpec(20.0, 0.01), _state(rng), task_id)
    assert scheduler.abandon("cancelled") and not scheduler.abandon("cancelled")
    assert not scheduler.complete("cancelled", 1.0)  # gone: a cancel gives no reward
    assert not scheduler.complete("nan-delay", float("nan"))
    assert not scheduler.complete("nan-delay", 1.0)  # dropped with its bad delay
    assert scheduler.complete("done", 2.0)
    assert scheduler.complete("huge", 1e300)  # −1e299 is −inf in float32: not buffered
    assert learned.buffered == 1 and scheduler.dropped_transitions == 1
    storage = learned.learner.replay.storage[0, :1]
    assert bool(torch.isfinite(storage).all())
    lo, _ = learned.learner.replay._columns["r"]
    assert float(storage[0, lo]) == pytest.approx(-0.2)  # −2 s / 10 (B6 reward scaling)


def test_a_training_step_with_nan_losses_is_rolled_back() -> None:
    scheduler = _learner()
    learned = scheduler._learned
    assert learned is not None
    rng = np.random.default_rng(4)
    for i in range(12):
        scheduler.decide(TaskSpec(20.0, 0.01), _state(rng), f"t{i}")
        scheduler.complete(f"t{i}", float(rng.uniform(0.5, 3.0)))
    assert scheduler.train_step() is not None
    before = _weights(scheduler)
    first_moment = learned.learner.actor_opt.state_dict()["state"][0]["exp_avg"].clone()
    replay = learned.learner.replay
    clean = replay.storage.clone()
    replay.storage[0, : int(replay.size[0]), 0] = float("nan")  # every sample poisons the step
    assert scheduler.train_step() is None
    assert scheduler.rejected_updates == 1 and scheduler.trained_steps == 1
    after = _weights(scheduler)
    assert all(torch.equal(before[k], after[k]) for k in before)
    restored = learned.learner.actor_opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(restored, first_moment)
    replay.storage = clean
    losses = scheduler.train_step()
    assert losses is not None and all(np.isfinite(v) for v in losses.values())
    assert scheduler.trained_steps == 2 and _finite(_weights(scheduler))


def test_nan_weights_are_never_saved_and_a_nan_checkpoint_is_refused(tmp_path: Path) -> None:
    scheduler = _learner()
    path = tmp_path / "policy.pt"
    assert scheduler.save(path)
    good = path.read_bytes()
    assert scheduler._learned is not None
    with torch.no_grad():
        next(scheduler._learned.learner.actor.parameters())[0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="not saved: 1 tensor"):
        scheduler.save(path)
    assert path.read_bytes() == good  # the last good checkpoint stays
    config, state = load_checkpoint(path)
    state = {k: v.clone() for k, v in state.items()}
    for name in list(state)[:3]:
        state[name].view(-1)[0] = float("inf")
    poisoned = tmp_path / "poisoned.pt"
    torch.save({"config": json.dumps(config), "state": state}, poisoned)
    with pytest.raises(CorruptCheckpointError, match="3 tensor\\(s\\) hold NaN/inf"):
        ClusterScheduler("lad", B, 0, checkpoint=poisoned)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptCheckpointError, match="not a readable policy checkpoint"):
        ClusterScheduler("lad", B, 0, checkpoint=tmp_path / "garbage.pt")


def test_a_warm_start_on_a_nan_capacity_stays_finite() -> None:
    """A peer's broken speed reaches the warm start through ``known_capacities``."""
    scheduler = ClusterScheduler(
        "lad", B, 0, seed=0, mean_path=True, capacities=np.array([20.0, np.nan, 1e30, 12.0])
    )
    assert _finite(_weights(scheduler))
    placement = scheduler.decide(TaskSpec(20.0, 0.01), _state(np.random.default_rng(5)))
    assert placement.policy == "lad" and np.isfinite(placement.probs).all()
