"""Online learning in a real agent: training steps from real results, checkpoint reloaded."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from dedgeai.agent.lab.harness import cluster_view, wait_for
from dedgeai.models.backend import GenerationRequest

# The schedulers built here (in this process, or as a checkpoint an agent starts from) are
# built for their settings, not for a sane clone of greedy: a short warm start.
QUICK_WARM_START_STEPS = 40


@pytest.fixture
def quick_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from dedgeai.scheduler import online

    monkeypatch.setattr(online, "WARM_START_STEPS", QUICK_WARM_START_STEPS)
    torch.set_num_threads(1)


def _scheduler(agent: Any) -> dict[str, Any]:
    return cluster_view(agent)["scheduler"]


def test_online_learning_trains_from_real_results_and_the_checkpoint_reloads(
    cluster_factory: Any, tmp_path: Path, quick_warm_start: None
) -> None:
    # A fresh actor warm-starts in the agent, as with no checkpoint in production, but with
    # a short clone (warm_start_steps): a sane clone of greedy is not what is tested here.
    a, _b = cluster_factory(
        {
            "policy": "lad",
            "warm_start_steps": 40,
            "learn_warmup": 4,
            "train_steps_per_s": 50.0,
        },
        {"policy": "local"},
        emulated_steps_per_second=2000.0,
    )
    status = wait_for(lambda: _scheduler(a)["ready"] and _scheduler(a), 120.0, "lad warmed up")
    assert status["policy"] == "lad" and status["learn"] is True
    assert status["loaded_from"] is None and status["trained_steps"] == 0
    assert status["warm_start"].startswith("greedy on")
    assert status["guard"]["control"] == "pod2"  # the guard's control arm probes, as pod2
    request = GenerationRequest(prompt="learn from me", steps=2, width=256, height=256)
    # A transition needs its reward and the next learned decision's state, and a decision
    # goes to greedy while peer b's telemetry is late (a loaded box): tasks are submitted
    # until the first training step, not a fixed number hoped to be enough.
    dones: list[dict[str, Any]] = []
    with a.client() as client:

        def one_more_task_then_trained() -> dict[str, Any] | bool:
            dones.append(client.generate(request)[1])
            s = _scheduler(a)
            return s["trained_steps"] >= 1 and s

        try:
            trained = wait_for(one_more_task_then_trained, 60.0, "a training step", every_s=0)
        except AssertionError as exc:  # say why: the scheduler's own account of what it saw
            raise AssertionError(f"{exc}; scheduler status: {_scheduler(a)}") from None
    assert {d.get("placement")["policy"] for d in dones} <= {"lad", "greedy", "pod2", "local"}
    assert any(d.get("placement")["policy"] == "lad" for d in dones)
    assert trained["rewards"] >= 5 and trained["last_losses"]
    code, _ = a.stop(signal.SIGTERM)
    assert code == 0
    checkpoint = a.state_dir / "policy.pt"
    assert checkpoint.is_file()
    a.start()
    reloaded = wait_for(lambda: _scheduler(a)["ready"] and _scheduler(a), 30.0, "reloaded")
    assert reloaded["loaded_from"] == str(checkpoint)
    assert reloaded["total_steps"] >= trained["trained_steps"]


def test_a_checkpoint_for_another_cluster_size_stops_the_agent_with_a_config_error(
    agent_factory: Any, tmp_path: Path, quick_warm_start: None
) -> None:
    from dedgeai.scheduler.online import ClusterScheduler

    checkpoint = tmp_path / "two-servers.pt"
    assert ClusterScheduler("lad", n_servers=2, self_index=0).save(checkpoint)
    # this agent and 2 peers: 3 servers
    lone = agent_factory(
        "lone",
        policy="lad",
        policy_checkpoint=str(checkpoint),
        peers=["tcp://127.0.0.1:9", "tcp://127.0.0.1:10"],
    )
    with pytest.raises(RuntimeError, match="exited with 2") as info:
        lone.start()
    assert "policy `lad` with 3 server(s)" in str(info.value)


@pytest.mark.parametrize(
    ("policy", "actions", "deterministic", "drawn", "epsilon"),
    [
        ("lad", "sample", False, True, 0.0),  # the default: drawn from π of the mean path
        ("sac", "sample", False, True, 0.0),
        ("dqn", "sample", True, False, 0.05),  # no π to draw from: argmax of Q, ε-explore
        ("lad", "argmax", True, False, 0.05),
    ],
)
def test_policy_actions_decide_how_the_learned_policy_picks(
    tmp_path: Path,
    quick_warm_start: None,
    policy: str,
    actions: str,
    deterministic: bool,
    drawn: bool,
    epsilon: float,
) -> None:
    from dedgeai.agent.cluster.learning import SchedulerHost

    host = SchedulerHost(
        policy, 3, 0, tmp_path, learn=False, policy_actions=actions, explore_epsilon=0.05
    )
    scheduler = host._build(None)
    assert scheduler.deterministic is deterministic
    assert scheduler.mean_path is drawn
    assert scheduler.explore_epsilon == epsilon


def test_a_b7_lad_checkpoint_drawn_from_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, quick_warm_start: None
) -> None:
    """An older agent checkpoint (ε through a softmax) has a flat π: say so at load."""
    from dedgeai.agent.cluster.learning import SchedulerHost
    from dedgeai.scheduler.config import Switches
    from dedgeai.scheduler.online import ClusterScheduler

    checkpoint = tmp_path / "b7.pt"
    assert ClusterScheduler("lad", 3, 0, switches=Switches(eps_softmax=True)).save(checkpoint)
    host = SchedulerHost("lad", 3, 0, tmp_path, checkpoint=str(checkpoint), learn=False)
    assert host.scheduler is not None and host.scheduler.mean_path
    assert "B7" in caplog.text and "policy_actions = argmax" in caplog.text
    caplog.clear()
    SchedulerHost("lad", 3, 0, tmp_path, checkpoint=str(checkpoint), policy_actions="argmax")
    assert "B7" not in caplog.text  # argmax: the flat π does not matter


def test_lad_actor_scorer_decides_with_the_per_server_network_and_learns(
    tmp_path: Path,
) -> None:
    """``lad_actor = "scorer"``: the same policy name, the scalable network behind it; it
    starts from the packaged default and learns online (scheduler/lad_scorer_learning.py)."""
    import numpy as np

    from dedgeai.agent.cluster.learning import SchedulerHost
    from dedgeai.scheduler.cluster_state import ClusterState, TaskSpec
    from dedgeai.scheduler.lad_scorer import DEFAULT_CHECKPOINT

    host = SchedulerHost(
        "lad", 40, 3, tmp_path, learn=True, lad_actor="scorer", warm_start_steps=30
    )
    assert host.learn is True
    assert host.status()["loaded_from"] == str(DEFAULT_CHECKPOINT)
    scheduler = host._build(None)  # what a corrupt packaged file falls back to: a warm start
    assert scheduler.learns is True and scheduler.loaded_from is None
    rng = np.random.default_rng(0)
    cluster = ClusterState(
        3,
        backlog_steps=rng.uniform(0, 200, 40),
        interval_load_steps=np.zeros(40),
        capacity_steps_per_s=rng.uniform(4, 20, 40),
        available=np.ones(40, dtype=bool),
    )
    placement = scheduler.decide(TaskSpec(30.0, 0.01), cluster, task_id="t")
    assert 0 <= placement.target < 40 and placement.reason.startswith("scorer ")
    status = host.status()
    assert status["actor"] == "scorer" and status["learn"] is True
    assert SchedulerHost("greedy", 3, 0, tmp_path).status()["actor"] is None
