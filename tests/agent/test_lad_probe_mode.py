"""``lad_mode = "probe"``: LAD-TS draws whom pod2 probes (the twin's ``pod2-lad``, issue 12).

The scorer's π on the gossip view draws the 2 probed peers; the earliest estimated finish on
the probed state places the task (pod2's decision), and that placement is recorded as the
scorer's action on the view, so that its delay trains it. The guard's control arm is pod2
with soft-greedy probes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dedgeai.agent.cluster.learning import SchedulerHost
from dedgeai.agent.errors import ConfigError
from dedgeai.agent.lab.harness import cluster_view, wait_capacity_known, wait_for
from dedgeai.agent.node.config import build_config
from dedgeai.models.backend import GenerationRequest
from dedgeai.scheduler.cluster_state import ClusterState, TaskSpec, estimated_finish_s
from tests.agent.test_cluster_probe import _all_done, _placements

REQUEST = GenerationRequest(prompt="drawn probes", steps=4, width=256, height=256)
N = 8


def _view(backlog: np.ndarray, available: np.ndarray | None = None) -> ClusterState:
    return ClusterState(
        0,
        backlog_steps=backlog,
        interval_load_steps=np.zeros(N),
        capacity_steps_per_s=np.linspace(4.0, 20.0, N),
        available=np.ones(N, dtype=bool) if available is None else available,
    )


def _host(tmp_path: Path) -> SchedulerHost:
    host = SchedulerHost("lad", N, 0, tmp_path, learn=True, lad_actor="scorer", lad_mode="probe")
    assert host.scheduler is not None  # the packaged scorer, loaded at once
    return host


def test_config_needs_the_scorer_for_probe_mode_and_says_so() -> None:
    with pytest.raises(ConfigError, match='lad_actor = "scorer"'):
        build_config({"lad_mode": "probe"})
    with pytest.raises(ConfigError, match="lad_actor"):
        build_config({"policy": "lad", "lad_mode": "probe"})  # the paper's actor: no
    with pytest.raises(ConfigError, match="lad_mode"):
        build_config({"lad_mode": "sideways"})
    config = build_config({"policy": "lad", "lad_actor": "scorer", "lad_mode": "probe"})
    assert config.lad_mode == "probe"
    assert build_config({}).lad_mode == "place"


def test_probe_probs_are_the_scorers_pi_on_the_view_and_record_nothing(tmp_path: Path) -> None:
    host = _host(tmp_path)
    up = np.ones(N, dtype=bool)
    up[3] = False
    probs = host.probe_probs(TaskSpec(30.0, 0.01), _view(np.full(N, 50.0), up))
    assert probs is not None and probs.shape == (N,)
    assert probs.sum() == pytest.approx(1.0) and probs.min() >= 0.0 and probs[3] == 0.0
    assert host.scheduler._scorer_learning.buffered == 0  # a draw is not a decision
    # An insane view (a NaN backlog from a lying peer) gives no π: soft-greedy draws instead.
    insane = np.full(N, 50.0)
    insane[5] = np.nan
    assert host.probe_probs(TaskSpec(30.0, 0.01), _view(insane)) is None
    # Busy training: the loop thread never waits for the lock.
    with host.lock:
        assert host.probe_probs(TaskSpec(30.0, 0.01), _view(np.full(N, 50.0))) is None


def test_the_probed_placement_is_pod2s_and_trains_the_scorer(tmp_path: Path) -> None:
    host = _host(tmp_path)
    spec = TaskSpec(30.0, 0.01)
    gossip = _view(np.full(N, 50.0))
    probed_up = np.zeros(N, dtype=bool)
    probed_up[[0, 2, 6]] = True  # here and the two probed peers; the rest masked
    probed = _view(np.array([300.0, 0, 10.0, 0, 0, 0, 400.0, 0]), probed_up)
    finish = estimated_finish_s(spec, probed)
    for task_id in ("t1", "t2", "t3"):
        placement = host.decide_probed(spec, probed, task_id, (spec, gossip))
        assert placement.target == int(np.argmin(finish)) == 2
        assert placement.policy == "lad"
    for task_id in ("t1", "t2", "t3"):
        host.complete(task_id, 1.5)
    host._train_once()  # the training thread's hand-over (not started here)
    status = host.status()
    assert status["mode"] == "probe" and status["rewards"] == 3
    assert status["unrecorded_probe_decisions"] == 0
    # A lock held by training loses the sample, not the decision.
    with host.lock:
        assert host.decide_probed(spec, probed, "t4", (spec, gossip)).target == 2
    assert host.status()["unrecorded_probe_decisions"] == 1
    # An insane probed state: greedy on the sanitised state, labelled so.
    bad = _view(np.array([np.inf, 0, 10.0, 0, 0, 0, 400.0, 0]), probed_up)
    placement = host.decide_probed(spec, bad, "t5", (spec, gossip))
    assert placement.policy == "greedy" and placement.reason.startswith("state rejected")


def test_place_mode_is_unchanged_for_other_policies(tmp_path: Path) -> None:
    assert SchedulerHost("lad", N, 0, tmp_path, lad_actor="scorer").mode == "place"
    assert SchedulerHost("pod2", N, 0, tmp_path, lad_mode="probe").mode == "place"
    assert SchedulerHost("pod2", N, 0, tmp_path).status()["mode"] is None


def test_real_agents_lad_draws_the_probes_and_learns_from_the_placements(
    cluster_factory: Any,
) -> None:
    a, *_ = cluster_factory(
        {
            "emulated_steps_per_second": 20.0,
            "policy": "lad",
            "lad_actor": "scorer",
            "lad_mode": "probe",
        },
        {"emulated_steps_per_second": 20.0},
        {"emulated_steps_per_second": 20.0},
        {"emulated_steps_per_second": 400.0},
        probe_timeout_s=10.0,  # every answer counts, however loaded the test machine
    )
    wait_capacity_known(a)
    with a.client() as client:
        tasks = [client.submit(REQUEST, wait=False).get("task") for _ in range(8)]
    wait_for(lambda: _all_done(a, tasks), 60.0, "every task done at the origin")
    rows = _placements(a, tasks)
    for row in rows.values():
        placement = row["placement"]
        assert placement["policy"] in ("lad", "pod2"), placement  # pod2: the guard's control
        assert "probed 2/2" in placement["reason"] and len(placement["probed"]) == 2
        if placement["policy"] == "lad":  # soft-greedy draws while a training step runs
            assert placement["reason"].split(" drew probes")[0] in ("LAD-TS", "soft-greedy")
    assert sum(r["placement"]["policy"] == "lad" for r in rows.values()) >= 4
    view = cluster_view(a)
    assert view["probes"]["rounds"] == 8 and view["probes"]["answered"] == 16
    scheduler = view["scheduler"]
    assert scheduler["mode"] == "probe" and scheduler["guard"]["control"] == "pod2"
    wait_for(lambda: cluster_view(a)["scheduler"]["rewards"] >= 4, 30.0, "rewards handed over")
