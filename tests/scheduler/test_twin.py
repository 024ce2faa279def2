"""The cluster twin: conservation, the ideal's bound, stale gossip, faults, the daemon's path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dedgeai.scheduler import online
from dedgeai.scheduler.config import EnvConfig, LearnConfig, Switches
from dedgeai.scheduler.online import ClusterScheduler
from dedgeai.scheduler.policy import OnlinePolicy
from dedgeai.scheduler.twin import Twin, simulate
from dedgeai.scheduler.twin_policies import Daemon, Fleet, make_policy
from dedgeai.scheduler.twin_scenarios import BoxEvent, arrivals, paper, with_failures
from dedgeai.scheduler.twin_train import train_in_twin

HEURISTICS = ("greedy", "soft-greedy", "least-loaded", "round-robin", "random", "local")
DECENTRALISED = (*HEURISTICS, "pod2", "steal", "greedy+steal")


@pytest.fixture(scope="module")
def lad_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained LAD actor (no warm start: seconds saved; its π is far from uniform),
    learning after 32 transitions (a checkpoint keeps its own learning settings)."""
    path = tmp_path_factory.mktemp("twin") / "lad-8.pt"
    learn = LearnConfig(warmup=32, batch_size=16)
    OnlinePolicy("lad", EnvConfig(n_servers=8), 0, Switches(eps_softmax=False), learn, 3).save(path)
    return path


def test_same_seed_same_run() -> None:
    sc = paper(8, load=0.9, n_tasks=600)
    a, b = (simulate(sc, make_policy("soft-greedy", seed=1), seed=4) for _ in range(2))
    np.testing.assert_array_equal(a.delay_s, b.delay_s)
    np.testing.assert_array_equal(a.ran_on, b.ran_on)


@pytest.mark.parametrize("name", ["greedy+steal", "pod2", "steal"])
def test_every_task_ends_exactly_once_through_failures_and_joins(name: str) -> None:
    sc = with_failures(paper(8, load=0.9, n_tasks=1500), n_failures=2, seed=1, rejoin_after_s=8.0)
    sc = sc.with_(gossip_loss=0.05, link_jitter_s=0.002)
    result = simulate(sc, make_policy(name), seed=2)
    assert result.done == len(result.delay_s) == 1500
    assert result.duplicates == 0
    assert np.isfinite(result.delay_s).all() and (result.delay_s > 0).all()
    assert result.counters["reclaimed"] + result.counters["client_retries"] > 0


def test_omniscient_is_no_worse_than_any_policy(lad_checkpoint: Path) -> None:
    sc = paper(8, load=0.8, n_tasks=1500)
    ideal = simulate(sc, make_policy("omniscient"), seed=0).mean_s
    ckpt = {"lad": lad_checkpoint}
    for name in (*DECENTRALISED, "lad"):
        mean = simulate(sc, make_policy(name, ckpt), seed=0).mean_s
        assert ideal <= mean, f"{name}: {mean:.3f} s < omniscient {ideal:.3f} s"


def test_greedy_herds_on_stale_gossip() -> None:
    """Staler reports hurt greedy (every origin piles onto the same 'best' box), and
    drawing from soft greedy's π helps most exactly there."""
    base = paper(16, load=0.9, n_tasks=2000)
    fresh = simulate(base.with_(gossip_interval_s=0.1), make_policy("greedy"), seed=0).mean_s
    stale_sc = base.with_(gossip_interval_s=2.0)
    stale = simulate(stale_sc, make_policy("greedy"), seed=0).mean_s
    soft = simulate(stale_sc, make_policy("soft-greedy"), seed=0).mean_s
    assert stale > 1.25 * fresh
    assert soft < stale


def test_a_failed_box_is_detected_and_its_tasks_reclaimed() -> None:
    sc = paper(8, load=0.8, n_tasks=1200)
    sc = sc.with_(events=(BoxEvent(40.0, 0, "fail"),))  # box 0: one of the fastest, busy
    result = simulate(sc, make_policy("greedy"), seed=0)
    assert result.done == 1200 and result.duplicates == 0
    assert result.counters["reclaimed"] > 0
    (row,) = result.detections
    interval = sc.gossip_interval_s
    assert 3 * interval <= row["first_s"] <= 4 * interval + 0.1
    assert row["all_s"] <= 4 * interval + 0.1
    assert not (result.ran_on[arrivals(sc, 0).at_s > 45.0] == 0).any()


def test_partial_view_detects_failures_and_bounds_messages() -> None:
    sizes = (16, 64)
    rates = []
    for n in sizes:
        sc = paper(n, load=0.7, n_tasks=40 * n, gossip="partial", fanout=2, digest_entries=8)
        sc = sc.with_(events=(BoxEvent(20.0, 1, "fail"),))
        result = simulate(sc, make_policy("greedy"), seed=0)
        assert result.done == 40 * n and result.duplicates == 0
        (row,) = result.detections
        assert row["first_s"] <= 5 * sc.gossip_interval_s
        assert np.isfinite(row["all_s"])
        rates.append(result.counters["gossip_msgs_per_box_s"])
    assert rates[1] < 1.5 * rates[0]  # constant per box, not O(N)


def test_daemon_decisions_go_through_cluster_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = online.ClusterScheduler.decide

    def spy(self: ClusterScheduler, task, cluster, task_id=None):  # noqa: ANN001, ANN202
        calls.append((self.self_index, cluster.self_index))
        return real(self, task, cluster, task_id)

    monkeypatch.setattr(online.ClusterScheduler, "decide", spy)
    result = simulate(paper(8, load=0.7, n_tasks=400), Daemon("least-loaded"), seed=0)
    assert len(calls) == result.counters["decisions"] == 400
    assert all(box == seen for box, seen in calls)  # each box decides on its own view


def test_fleet_batches_are_cluster_scheduler_decisions(lad_checkpoint: Path) -> None:
    """The batched learned path gives each task the π ``ClusterScheduler.decide`` gives it
    on the same state (same checkpoint, X_b[n] fresh from it)."""
    sc = paper(8, load=0.9, n_tasks=300)
    fleet = Fleet("lad", lad_checkpoint, seed=0)
    twin = Twin(sc, fleet, seed=0)
    twin.run()  # queues and views in a busy state
    fleet.attach(twin)  # fresh per-box memory, as every agent loading the checkpoint
    fleet.keep_probs = True
    now = twin.now
    twin.free_at[:] = now + np.linspace(0.0, 4.0, 8)  # distinct backlogs
    origins, tasks = np.array([0, 3, 5]), np.array([10, 11, 12])
    twin.sched_ok[3, 6] = False  # a peer box 3 believes down: masked
    fleet.place_batch(twin, origins, tasks, now)
    assert fleet.last_probs is not None
    for row, (o, k) in enumerate(zip(origins, tasks, strict=True)):
        daemon = ClusterScheduler("lad", 8, int(o), checkpoint=lad_checkpoint, mean_path=True)
        placement = daemon.decide(twin.task_spec(int(k)), twin.view_state(int(o), int(k), now))
        np.testing.assert_allclose(fleet.last_probs[row], placement.probs, rtol=2e-4, atol=1e-6)
    assert fleet.last_probs[1, 6] == 0.0


def test_train_in_twin_updates_and_saves_a_loadable_checkpoint(
    lad_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dedgeai.scheduler.twin_train.SEGMENT_S", 20.0)
    sc = paper(8, n_tasks=1)
    out, stats = train_in_twin(
        sc,
        tmp_path / "trained.pt",
        hours=40.0 / 3600,
        start=lad_checkpoint,
        loads=(0.9,),
        train_steps_per_box_s=0.25,
    )
    assert stats.trained_steps > 20 and stats.rewards > 100
    assert len(stats.segments) == 2
    before = OnlinePolicy.load(lad_checkpoint, agent=0).learner.networks_state()
    after = OnlinePolicy.load(out, agent=0).learner.networks_state()
    assert any(not np.allclose(before[k], after[k]) for k in before if k != "memory")
    ClusterScheduler("lad", 8, 5, checkpoint=out, mean_path=True)  # an agent can load it
