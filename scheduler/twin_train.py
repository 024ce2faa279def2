"""Train the daemon's learned scheduler in the cluster twin: hours of traffic in minutes.

``train_in_twin`` runs one ``ClusterScheduler`` (learn=True) as every box's policy: each
decision is the daemon's (``decide`` on the box's gossip view, drawn from π, with its task
id), each finished task's service delay is its reward (``complete``), and ``train_step``
runs ``train_steps_per_box_s`` times per box per simulated second, as ``SchedulerHost``
paces it. The boxes share the actor (one checkpoint every agent loads, row 0); each box's
decisions and rewards feed it. Traffic cycles through ``loads`` so the actor sees quiet and
busy clusters. The result is a ``ClusterScheduler.save`` checkpoint: the agent's
``policy_checkpoint``, or ``Fleet``/``Daemon`` in the twin.

``warm_checkpoint`` saves a fresh actor after the daemon's warm start (a soft-greedy clone on
the cluster's speeds): what an agent without a checkpoint starts from.

``actor = "scorer"`` (``lad`` only) trains the per-server scorer (``lad_scorer.py``,
``lad_scorer_learning.py``) instead of the paper's network; its warm start is on the paper's
relative spread (its features are relative, so one checkpoint serves any cluster), with the
critics fitted, and never the packaged default.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dedgeai.scheduler.config import LearnConfig
from dedgeai.scheduler.online import LEARNED, ClusterScheduler
from dedgeai.scheduler.twin import Policy, Twin
from dedgeai.scheduler.twin_policies import _daemon_kwargs
from dedgeai.scheduler.twin_scenarios import Scenario, arrival_rate

TRAIN_LOADS = (0.5, 0.7, 0.9, 1.1)
SEGMENT_S = 300.0  # simulated seconds per load segment
SCORER_WARM = "clone 1500 + critics 600"  # in the cache key: change it when those steps change


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def warm_checkpoint(
    method: str, capacities: np.ndarray, cache_dir: Path, seed: int = 0, actor: str = "ladn"
) -> Path:
    """A fresh actor warm-started on ``capacities`` (the daemon's start), cached on disk.
    ``actor = "scorer"``: the scorer's warm start (the paper's spread) with fitted critics."""
    if method not in LEARNED:
        raise ValueError(f"{method!r} is not a learned policy ({LEARNED})")
    if actor == "scorer":
        return _warm_scorer_checkpoint(cache_dir, seed)
    caps = np.asarray(capacities, dtype=np.float64)
    path = (
        Path(cache_dir)
        / f"warm-{method}-{caps.size}-{_key(method, caps.round(6).tolist(), seed)}.pt"
    )
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        scheduler = ClusterScheduler(
            method,
            caps.size,
            0,
            seed=seed,
            capacities=caps,
            **_daemon_kwargs(method),  # type: ignore[arg-type]
        )
        scheduler.save(path)
    return path


def _warm_scorer_checkpoint(cache_dir: Path, seed: int) -> Path:
    path = Path(cache_dir) / f"warm-lad-scorer-{_key('scorer', seed, SCORER_WARM)}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        scheduler = ClusterScheduler(
            "lad", 2, 0, seed=seed, learn=True, actor="scorer", packaged_default=False
        )
        scheduler.save(path)
    return path


class Learner(Policy):
    """One learning ``ClusterScheduler`` deciding for every box of the twin."""

    learns = True

    def __init__(self, scheduler: ClusterScheduler, train_steps_per_box_s: float) -> None:
        self.name = f"{scheduler.policy} (learning)"
        self.scheduler = scheduler
        self.rate = train_steps_per_box_s
        self.rewards = 0
        self.losses: list[dict[str, float]] = []
        self._owed = 0.0
        self._delays: list[float] = []

    def attach(self, twin: Twin) -> None:
        self.twin = twin

    def place(self, twin: Twin, origin: int, task: int, now: float) -> int:
        state = twin.view_state(origin, task, now)
        return self.scheduler.decide(twin.task_spec(task), state, task_id=str(task)).target

    def completed(self, twin: Twin, task: int, delay_s: float, now: float) -> None:
        self.rewards += self.scheduler.complete(str(task), delay_s)
        self._delays.append(delay_s)

    def start_interval(self, box: int) -> None:
        self.scheduler.start_interval()
        # Each box's tick owes its own train_steps_per_box_s per second to the shared actor.
        self._owed += self.rate * self.twin.interval
        while self._owed >= 1.0:
            self._owed -= 1.0
            metrics = self.scheduler.train_step()
            if metrics is not None and len(self.losses) < 100_000:
                self.losses.append(metrics)

    def take_delays(self) -> list[float]:
        out, self._delays = self._delays, []
        return out


@dataclass
class TrainStats:
    method: str
    n_boxes: int
    simulated_s: float = 0.0
    tasks: int = 0
    rewards: int = 0
    trained_steps: int = 0
    wall_s: float = 0.0
    segments: list[dict[str, Any]] = field(default_factory=list)


def train_in_twin(
    scenario: Scenario,
    out: Path,
    method: str = "lad",
    hours: float = 1.0,
    seed: int = 0,
    start: Path | None = None,
    loads: tuple[float, ...] = TRAIN_LOADS,
    train_steps_per_box_s: float = 2.0,
    learn_config: LearnConfig | None = None,
    cache_dir: Path | None = None,
    on_segment: Callable[[dict[str, Any]], None] | None = None,
    actor: str = "ladn",
) -> tuple[Path, TrainStats]:
    """Train ``method`` on ``hours`` of simulated traffic of ``scenario``'s cluster.

    Args:
        scenario: the cluster (speeds, links, gossip); its ``load`` and ``n_tasks`` are
            replaced by ``loads``, cycled in segments of ``SEGMENT_S`` simulated seconds.
        out: where the checkpoint goes (``ClusterScheduler.save``: the agent loads it).
        start: a checkpoint to continue from; by default the daemon's warm start.
        train_steps_per_box_s: updates per box per simulated second (the agent's
            ``train_steps_per_s``).
        on_segment: called with each segment's statistics as it ends (a progress bar).
        actor: ``ladn`` (the paper's network) or ``scorer`` (``lad`` only; any cluster size).
        learn_config: a fresh actor's settings; from a checkpoint, only its warm-up and
            batch size are taken (the pacing, as the agent's ``learn_warmup`` does), the rest
            is the checkpoint's own.

    Returns:
        The checkpoint path, and per-segment statistics (mean delay, rewards, updates).
    """
    started = time.perf_counter()
    N = scenario.n_boxes
    if start is None:
        start = warm_checkpoint(
            method, scenario.capacities, cache_dir or out.parent, seed, actor=actor
        )
    scheduler = ClusterScheduler(
        method,
        N,
        0,
        seed=seed,
        checkpoint=start,
        learn=True,
        learn_config=learn_config,  # None: a checkpoint keeps its own pacing
        actor=actor,
        **_daemon_kwargs(method),  # type: ignore[arg-type]
    )
    learner = Learner(scheduler, train_steps_per_box_s)
    stats = TrainStats(method, N)
    segment = 0
    while stats.simulated_s < hours * 3600.0:
        load = loads[segment % len(loads)]
        sc = scenario.with_(load=load, n_tasks=1)
        n_tasks = max(1, int(arrival_rate(sc) * SEGMENT_S))
        sc = sc.with_(n_tasks=n_tasks, warmup_fraction=0.0)
        result = Twin(sc, learner, seed=seed * 100_003 + segment, batch_window_s=0.0).run()
        learner.take_delays()
        recent, learner.losses = learner.losses, []
        stats.simulated_s += SEGMENT_S
        stats.tasks += n_tasks
        stats.segments.append(
            {
                "load": load,
                "tasks": n_tasks,
                "mean_s": result.mean_s,
                "trained_steps": scheduler.trained_steps,
                "rewards": learner.rewards,
                # the segment's updates: mean of each loss/chart (the scorer's include its
                # argmax agreement with greedy on the batch)
                **{k: float(np.mean([m[k] for m in recent])) for k in (recent or [{}])[0]},
            }
        )
        segment += 1
        if on_segment is not None:
            on_segment(stats.segments[-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    scheduler.save(out)
    stats.rewards = learner.rewards
    stats.trained_steps = scheduler.trained_steps
    stats.wall_s = time.perf_counter() - started
    return out, stats
