"""The guard on a learned policy: greedy takes over while the learned arm is slower than the
control on the same traffic, hands back when it is not, and says so in ``status``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dedgeai.agent.cluster import guard as g
from dedgeai.agent.cluster.guard import PolicyGuard
from dedgeai.agent.cluster.learning import SchedulerHost
from dedgeai.scheduler.cluster_state import ClusterState, HeuristicScheduler, TaskSpec


def _feed(guard: PolicyGuard, n: int, learned_s: float, control_s: float, start: int = 0) -> None:
    for i in range(start, start + n):
        task = f"t{i}"
        arm = guard.arm(task)
        guard.observed(task, learned_s if arm == "learned" else control_s)


def test_the_control_is_a_small_random_share_and_judges_nothing_before_enough_delays():
    guard = PolicyGuard(seed=1)
    arms = [guard.arm(f"t{i}") for i in range(2000)]
    share = arms.count("control") / len(arms)
    assert abs(share - g.CONTROL_SHARE) < 0.03
    assert guard.means() == (None, None) and guard.state == g.LEARNED_STATE


def test_a_slower_learned_policy_hands_over_to_greedy_and_takes_back_when_better():
    guard = PolicyGuard(seed=2)
    _feed(guard, 400, learned_s=2.0, control_s=2.0)  # equal: no reason to swap
    assert guard.state == g.LEARNED_STATE and guard.swaps == 0
    _feed(guard, 400, learned_s=3.0, control_s=2.0, start=400)  # 1.5 x the control
    assert guard.state == g.FALLBACK_STATE and guard.swaps == 1
    assert guard.status()["state"] == "fallback"
    arms = [guard.arm(f"x{i}") for i in range(1000)]  # greedy decides most tasks now
    assert arms.count("learned") / len(arms) < 0.2
    for i in range(1000):
        guard.forget(f"x{i}")
    _feed(guard, 600, learned_s=1.5, control_s=2.0, start=800)  # better again
    assert guard.state == g.LEARNED_STATE and guard.swaps == 2


def test_delays_of_unknown_or_forgotten_tasks_are_ignored():
    guard = PolicyGuard(seed=3)
    guard.observed("never-assigned", 100.0)
    guard.arm("t")
    guard.forget("t")
    guard.observed("t", 100.0)
    assert guard.status()["samples"] == {"learned": 0, "control": 0}


def _cluster(rng: np.random.Generator) -> ClusterState:
    return ClusterState(
        0,
        backlog_steps=rng.uniform(0, 100, 3),
        interval_load_steps=np.zeros(3),
        capacity_steps_per_s=np.array([10.0, 20.0, 40.0]),
        available=np.ones(3, dtype=bool),
    )


def test_the_host_routes_the_control_to_greedy_and_falls_back_when_the_policy_is_worse(
    tmp_path: Path,
):
    host = SchedulerHost("lad", 3, 0, tmp_path, learn=False)
    # A stand-in for a learned policy that went bad: it keeps every task on this box.
    host.scheduler = HeuristicScheduler("local", 3, 0)
    rng = np.random.default_rng(0)
    by_policy = {"local": 0, "greedy": 0}
    for i in range(600):
        placement = host.decide(TaskSpec(20.0, 0.01), _cluster(rng), f"t{i}")
        by_policy[placement.policy] += 1
        if placement.policy == "greedy":
            assert placement.reason.startswith("lad guard ")
        host.complete(f"t{i}", 4.0 if placement.policy == "local" else 1.0)
    status = host.status()
    assert status["guard"]["state"] == "fallback" and status["guard"]["swaps"] == 1
    assert status["guard_decisions"] == by_policy["greedy"] > 0
    later = [host.decide(TaskSpec(20.0, 0.01), _cluster(rng), f"u{i}").policy for i in range(300)]
    assert later.count("greedy") > 0.7 * len(later)  # greedy decides while the guard holds
    assert SchedulerHost("greedy", 3, 0, tmp_path).status()["guard"] is None


def test_a_drawn_control_is_placed_by_the_named_control_heuristic_and_status_names_it(
    tmp_path: Path,
):
    host = SchedulerHost("lad", 3, 0, tmp_path, learn=False)
    assert host.draw("early") is None  # no policy yet: nothing to guard, no arm drawn
    host.scheduler = HeuristicScheduler("local", 3, 0)
    host.control_name = "pod2"  # the cluster probes the control's candidates
    rng = np.random.default_rng(4)
    arms = {f"t{i}": host.draw(f"t{i}") for i in range(200)}
    assert set(arms.values()) == {"learned", "control"}
    for task_id, arm in arms.items():
        placement = host.decide(
            TaskSpec(20.0, 0.01), _cluster(rng), task_id, arm=arm, control=host.control_name
        )
        assert placement.policy == ("pod2" if arm == "control" else "local")
    assert host.status()["guard_decisions"] == list(arms.values()).count("control")
    assert host.status()["guard"]["control"] == "pod2"
    host.forget("t0")  # dropped before placement: no delay will be judged
    host.complete("t0", 100.0)
    assert sum(host.status()["guard"]["samples"].values()) == 0
