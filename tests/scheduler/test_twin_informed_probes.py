"""Informed probes: pod2's decision, its probe targets drawn from a policy's π on gossip."""

from __future__ import annotations

import numpy as np
import pytest

from dedgeai.scheduler.lad_scorer import DEFAULT_CHECKPOINT
from dedgeai.scheduler.twin import Twin
from dedgeai.scheduler.twin_policies import InformedProbes, PowerOfD, make_policy
from dedgeai.scheduler.twin_scenarios import paper

CHECKPOINTS = {"lad-scorer": DEFAULT_CHECKPOINT}


def _mean(name: str, n: int, load: float, tasks: int, seed: int) -> float:
    sc = paper(n, load=load, n_tasks=tasks)
    policy = make_policy(name, CHECKPOINTS, seed=seed)
    return Twin(sc, policy, seed=seed).run().summary()["mean_s"]


@pytest.mark.parametrize("name", ["pod2-soft", "pod2-lad"])
def test_probe_targets_are_distinct_known_peers_and_favour_the_fast_ones(name: str) -> None:
    sc = paper(8, load=0.5, n_tasks=50)
    policy = make_policy(name, CHECKPOINTS, seed=3)
    assert isinstance(policy, InformedProbes) and policy.probes == 2
    twin = Twin(sc, policy, seed=3)
    twin.sched_ok[:] = True  # every peer known and up in box 0's table, ...
    np.fill_diagonal(twin.sched_ok, False)
    twin.heard[0] = 0.0  # ... each heard at t = 0, idle (before it: no report, finish inf)
    known = np.flatnonzero(twin.sched_ok[0])
    counts = np.zeros(8)
    for _ in range(400):
        peers = policy.choose_probes(twin, 0, 0, known, 2, 0.0)
        assert peers.size == 2 and len(set(peers.tolist())) == 2
        assert 0 not in peers.tolist()  # never the deciding box itself
        counts[peers] += 1
    capacity = sc.capacities
    fast, slow = int(known[np.argmax(capacity[known])]), int(known[np.argmin(capacity[known])])
    assert counts[fast] > 0.6 * 400  # idle boxes: the fastest finishes soonest, drawn most
    assert counts[fast] > 5 * counts[slow]
    assert (counts[known] > 0).all()  # the uniform share: no live peer is never probed


def test_the_default_probe_choice_is_pod2s_uniform_draw() -> None:
    # The hook changed nothing for pod2: the same draws from the twin's generator.
    first = _mean("pod2", 8, 0.7, 600, seed=5)
    assert first == _mean("pod2", 8, 0.7, 600, seed=5)
    assert type(make_policy("pod2")) is PowerOfD


def test_lad_drawn_probes_beat_uniform_probes_at_low_load() -> None:
    # Uniform probes miss the fast idle boxes at load 0.5 (docs/results_cluster.md §1).
    pod2 = _mean("pod2", 8, 0.5, 3000, seed=1000)
    informed = _mean("pod2-lad", 8, 0.5, 3000, seed=1000)
    assert informed < 0.97 * pod2


def test_probe_weights_keep_a_uniform_share_and_refuse_a_pi_with_no_finite_mass() -> None:
    from dedgeai.scheduler.cluster_state import PROBE_UNIFORM_SHARE, probe_weights

    weights = probe_weights(np.array([1.0, 0.0, 0.0, 0.0]))
    assert weights is not None and weights.sum() == pytest.approx(1.0)
    assert weights[1] == pytest.approx(PROBE_UNIFORM_SHARE / 4)  # never probed otherwise
    assert probe_weights(np.zeros(3)) is None  # no view yet: the caller probes uniformly
    assert probe_weights(np.array([np.nan, 1.0])) is None
