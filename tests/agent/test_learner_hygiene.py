"""The agent's learner under hostile input and faults: rewards, checkpoints, its thread, gossip."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dedgeai.agent.cluster.gossip_sanity import sanitize_report
from dedgeai.agent.cluster.learning import MAX_REWARD_DELAY_S, SchedulerHost
from dedgeai.agent.lab.harness import wait_for
from dedgeai.scheduler import online
from dedgeai.scheduler.checkpoints import load_checkpoint
from dedgeai.scheduler.online import ClusterScheduler, ClusterState, TaskSpec

B = 3


@pytest.fixture(autouse=True)
def _quick_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(online, "WARM_START_STEPS", 40)  # a sane clone is not what is tested
    torch.set_num_threads(1)


def _state() -> ClusterState:
    return ClusterState(
        0, np.array([40.0, 0.0, 10.0]), np.zeros(B), np.array([20.0, 10.0, 15.0]), np.ones(B, bool)
    )


def _saved_policy(state_dir: Path) -> Path:
    path = state_dir / "policy.pt"
    assert ClusterScheduler("lad", B, 0, seed=0).save(path)
    return path


def _stopped(host: SchedulerHost) -> None:
    host.stop()
    assert not host._thread.is_alive()


def test_rewards_come_only_from_sane_delays_of_finished_tasks(tmp_path: Path) -> None:
    _saved_policy(tmp_path)
    host = SchedulerHost("lad", B, 0, tmp_path, learn_warmup=50)  # loads: ready at once
    assert host.status()["state"] == "ready"
    ids = ["done", "slow", "nan", "negative", "cancelled", "next"]
    for task_id in ids:
        host.decide(TaskSpec(20.0, 0.01), _state(), task_id)
    host.complete("done", 4.0)
    host.complete("slow", 3600.0)  # a task stuck for an hour: clipped
    host.complete("nan", float("nan"))
    host.complete("negative", -1.0)  # a clock that went backwards
    host.abandon("cancelled")  # the time to a cancel says nothing about the server
    assert host._train_once() is False  # not warm yet: rewards handed over, no step
    status = host.status()
    assert status["rewards"] == 2 and status["clipped_rewards"] == 1
    assert status["rejected_rewards"] == 2 and status["abandoned"] == 3
    learned = host.scheduler._learned
    assert learned.buffered == 2 and not learned.transitions.pending.keys() - {"next"}
    replay = learned.learner.replay
    lo, _ = replay._columns["r"]
    rewards = sorted(float(r) for r in replay.storage[0, :2, lo])
    assert rewards == pytest.approx([-MAX_REWARD_DELAY_S / 10, -0.4])  # −delay / 10 (B6)


def test_a_checkpoint_with_nan_weights_is_refused_and_a_fresh_actor_starts(
    tmp_path: Path,
) -> None:
    path = _saved_policy(tmp_path)
    config, state = load_checkpoint(path)
    state = {k: v.clone() for k, v in state.items()}
    for name in list(state)[:3]:
        state[name].view(-1)[0] = float("nan")
    torch.save({"config": json.dumps(config), "state": state}, path)
    host = SchedulerHost("lad", B, 0, tmp_path)  # before: loaded, and decided NaN forever
    status = host.status()
    assert status["loaded_from"] is None and status["state"] == "warming"
    refused = status["checkpoint_refused"]
    assert refused.startswith(f"{path}: 3 tensor(s) hold NaN/inf") and "starting afresh" in refused
    assert not path.exists() and (tmp_path / "policy.refused.pt").is_file()
    placement = host.decide(TaskSpec(20.0, 0.01), _state(), "t0")
    assert placement.policy == "greedy" and "lad warming up" in placement.reason
    host.start()
    try:
        wait_for(lambda: host.status()["state"] == "ready", 60.0, "a fresh actor")
        placement = host.decide(TaskSpec(20.0, 0.01), _state(), "t1")
        assert placement.policy == "lad" and np.isfinite(placement.probs).all()
    finally:
        _stopped(host)


def test_a_failed_warm_start_shows_in_status_instead_of_warming_forever(
    tmp_path: Path,
) -> None:
    def broken_probe() -> Any:
        raise RuntimeError("telemetry table went away")

    host = SchedulerHost("lad", B, 0, tmp_path, capacities=broken_probe).start()
    host._thread.join(30.0)
    assert not host._thread.is_alive()
    status = host.status()
    assert status["state"] == "failed" and not status["ready"]
    assert "warm start failed (RuntimeError: telemetry table went away)" in status["reason"]
    placement = host.decide(TaskSpec(20.0, 0.01), _state(), "t0")
    assert placement.policy == "greedy" and placement.reason.startswith("lad failed")


def test_a_crashed_training_thread_shows_in_status_and_the_policy_keeps_deciding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _saved_policy(tmp_path)
    host = SchedulerHost("lad", B, 0, tmp_path, learn_warmup=1)
    host.decide(TaskSpec(20.0, 0.01), _state(), "t0")
    host.decide(TaskSpec(20.0, 0.01), _state(), "t1")
    host.complete("t0", 2.0)

    def broken_step() -> None:
        raise MemoryError("out of memory in a training step")

    monkeypatch.setattr(host.scheduler, "train_step", broken_step)
    host.start()._thread.join(30.0)
    status = host.status()
    assert status["state"] == "failed" and status["learn"] is False
    assert "training stopped (MemoryError: out of memory" in status["reason"]
    placement = host.decide(TaskSpec(20.0, 0.01), _state(), "t2")
    assert placement.policy == "lad" and np.isfinite(placement.probs).all()


def test_a_nan_state_through_the_host_is_counted_and_decided_by_greedy(tmp_path: Path) -> None:
    _saved_policy(tmp_path)
    host = SchedulerHost("lad", B, 0, tmp_path)
    insane = ClusterState(
        0,
        np.array([40.0, np.nan, 0.0]),
        np.zeros(B),
        np.array([20.0, 30.0, 15.0]),
        np.ones(B, bool),
    )
    placement = host.decide(TaskSpec(20.0, 0.01), insane, "t0")
    assert placement.policy == "greedy" and placement.target == 2
    assert "server 1: backlog_steps nan" in placement.reason
    assert host.status()["insane_states"] == 1


# --- gossip_sanity.sanitize_report ---------------------------------------------------


def _report(**fields: Any) -> dict[str, Any]:
    base = {
        "node": "peer",
        "started_at": 100.0,
        "capacity_steps_per_s": 20.0,
        "backlog_steps": 50.0,
        "interval_load_steps": 5.0,
        "backlog_s": 2.5,
        "queued": 3,
        "accepting": True,
    }
    return {**base, **fields}


def test_a_sane_report_passes_unchanged() -> None:
    report = _report()
    assert sanitize_report(None, report, 25.0) == (report, [])
    assert sanitize_report(report, _report(capacity_steps_per_s=None), 25.0)[1] == []
    assert sanitize_report(report, _report(capacity_steps_per_s=199.0), 25.0)[1] == []


@pytest.mark.parametrize("capacity", [math.nan, math.inf, -1.0, 0.0, 201.0, 1.9, True, "20"])
def test_a_speed_jump_or_nonsense_keeps_the_previous_speed(capacity: Any) -> None:
    previous = _report()
    clean, reasons = sanitize_report(previous, _report(capacity_steps_per_s=capacity), 25.0)
    assert clean["capacity_steps_per_s"] == 20.0 and len(reasons) == 1
    assert "[2, 200]" in reasons[0] and "kept 20" in reasons[0]


@pytest.mark.parametrize(
    ("capacity", "own", "sane"),
    [
        (1e-4, None, False),  # first report: within [1e-3, 1e6] ...
        (2e6, None, False),
        (1e-3, None, True),
        (1e6, None, True),
        (5e4, 20.0, False),  # ... and within x1000 of our own speed
        (1e-2, 20.0, False),
        (2e4, 20.0, True),
        (0.02, 20.0, True),
    ],
)
def test_a_first_report_is_bounded_absolutely_and_by_our_own_speed(
    capacity: float, own: float | None, sane: bool
) -> None:
    clean, reasons = sanitize_report(None, _report(capacity_steps_per_s=capacity), own)
    assert (clean["capacity_steps_per_s"] == capacity) is sane
    assert (reasons == []) is sane
    if not sane:
        assert clean["capacity_steps_per_s"] is None  # unknown: the peer is not scheduled


def test_a_restarted_peer_may_report_a_new_speed() -> None:
    clean, reasons = sanitize_report(
        _report(), _report(started_at=200.0, capacity_steps_per_s=500.0), 25.0
    )
    assert clean["capacity_steps_per_s"] == 500.0 and reasons == []


@pytest.mark.parametrize("field", ["backlog_steps", "interval_load_steps", "backlog_s", "queued"])
@pytest.mark.parametrize("value", [math.nan, -math.inf, -1, 2e9, None, 1.5])
def test_work_values_are_finite_non_negative_and_bounded(field: str, value: Any) -> None:
    if value == 1.5 and field != "queued":
        value = math.inf  # 1.5 is a sane backlog; only `queued` must be an integer
    if value is None and field == "backlog_s":
        value = "x"  # None is "not measured yet" there (see the test below), not insane
    previous = _report()
    clean, reasons = sanitize_report(previous, _report(**{field: value}), 25.0)
    assert clean[field] == previous[field] and clean["accepting"] is True
    assert len(reasons) == 1 and reasons[0].startswith(field)
    first, reasons = sanitize_report(None, _report(**{field: value}), 25.0)
    assert field not in first and first["accepting"] is False and len(reasons) == 1
    again, _ = sanitize_report(first, _report(**{field: value}), 25.0)
    assert field not in again and again["accepting"] is False  # still no sane value
    recovered, reasons = sanitize_report(again, _report(), 25.0)
    assert recovered == _report() and reasons == []


def test_the_report_passed_in_is_not_modified() -> None:
    report = _report(backlog_steps=math.nan, capacity_steps_per_s=1e9)
    sanitize_report(_report(), report, 25.0)
    assert math.isnan(report["backlog_steps"]) and report["capacity_steps_per_s"] == 1e9


def test_an_unknown_backlog_in_seconds_is_not_insane():
    """A peer that has not measured its speed reports ``backlog_s = None``: still scheduled."""
    from dedgeai.agent.cluster.gossip_sanity import sanitize_report

    report = {"backlog_steps": 4.0, "interval_load_steps": 0.0, "backlog_s": None}
    out, reasons = sanitize_report(None, {**report, "accepting": True}, 10.0)
    assert reasons == [] and out["accepting"] is True and out["backlog_s"] is None
