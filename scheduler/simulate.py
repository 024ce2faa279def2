"""Run schedulers on the simulated edge system: episodes, training and side-by-side comparison.

Every method gets its own :class:`ArrivalStream` built from the same seed, so all of them see
identical task streams (fixing P1/§3.5); method randomness uses separate generators.
Importing this module does not import torch: the learners are imported when one is built.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dedgeai.scheduler.config import Preset, Switches
from dedgeai.scheduler.env import ArrivalStream, Episode, SystemParams, make_system, slot_outcome
from dedgeai.scheduler.errors import ConfigurationError
from dedgeai.scheduler.heuristics import (
    LeastBacklog,
    LocalOnly,
    OptTS,
    RandomChoice,
    RoundRobin,
    Scheduler,
    SlotView,
)
from dedgeai.scheduler.stats import percentile

if TYPE_CHECKING:
    import torch

    from dedgeai.scheduler.learner import SlotLearner

LEARNERS = ("lad", "d2sac", "sac", "dqn")  # built by learner_class(); they import torch
HEURISTICS = ("opt", "local", "random", "round-robin", "least-backlog")
METHODS = (*LEARNERS, *HEURISTICS)
METHOD_TITLES = {
    "lad": "LAD-TS",
    "d2sac": "D2SAC-TS",
    "sac": "SAC-TS",
    "dqn": "DQN-TS",
    "opt": "Opt-TS",
    "local": "local-only",
    "random": "random",
    "round-robin": "round-robin",
    "least-backlog": "least-backlog",
}


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; runs are single-threaded and reproducible."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def learner_class(name: str) -> type[SlotLearner]:
    """The class of a learning method (see LEARNERS); imports torch."""
    from dedgeai.scheduler.dqn_ts import DQNTS
    from dedgeai.scheduler.dsac import SACTS
    from dedgeai.scheduler.lad_ts import D2SACTS, LADTS

    classes: dict[str, type[SlotLearner]] = {
        "lad": LADTS,
        "d2sac": D2SACTS,
        "sac": SACTS,
        "dqn": DQNTS,
    }
    if name not in classes:
        raise ConfigurationError(f"unknown learner {name!r}; choose from {', '.join(LEARNERS)}")
    return classes[name]


def make_method(name: str, preset: Preset, switches: Switches, seed: int) -> Scheduler:
    """Build a scheduler by name (see METHODS)."""
    method_seed = seed * 1000 + METHODS.index(name) if name in METHODS else seed
    if name in LEARNERS:
        return learner_class(name)(preset.env, preset.learn, switches, method_seed)
    if name == "opt":
        return OptTS()
    if name == "local":
        return LocalOnly(method_seed)
    if name == "random":
        return RandomChoice(method_seed)
    if name == "round-robin":
        return RoundRobin(preset.env.n_servers)
    if name == "least-backlog":
        return LeastBacklog()
    raise ConfigurationError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


@dataclass
class EpisodeStats:
    method: str
    episode: int
    mean_delay_s: float
    p95_delay_s: float
    n_decisions: int
    offloaded_fraction: float  # tasks run away from their arrival server
    seconds: float
    updates: int
    metrics: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, object]:
        base = {k: v for k, v in self.__dict__.items() if k != "metrics"}
        return base | self.metrics


def run_episode(
    method: Scheduler, system: SystemParams, episode: Episode, preset: Preset, index: int
) -> EpisodeStats:
    """One episode: slots 0..T-2 decided and evaluated, learners updated after every slot."""
    started = time.perf_counter()
    B = preset.env.n_servers
    backlog, last_load = np.zeros(B), np.zeros(B)
    available = np.ones(B, dtype=bool)
    delays: list[np.ndarray] = []
    offloaded = 0
    metrics: dict[str, float] = {}
    learns = getattr(method, "learns", False)
    for t in range(preset.env.n_slots - 1):
        valid = episode.valid[t]
        view = SlotView(t, system, backlog, last_load, episode.task_mbit[t], valid, available)
        actions = method.act(view)
        outcome = slot_outcome(
            system, backlog, episode.task_mbit[t], valid, actions, preset.env.slot_s
        )
        if learns:
            next_view = SlotView(
                t + 1,
                system,
                outcome.next_backlog,
                outcome.load,
                episode.task_mbit[t + 1],
                episode.valid[t + 1],
                available,
            )
            metrics = method.learn(view, outcome, next_view) or metrics
        delays.append(outcome.delay_s[valid])
        offloaded += int((actions[valid] != np.nonzero(valid)[0]).sum())
        backlog, last_load = outcome.next_backlog, outcome.load
    all_delays = np.concatenate(delays)
    return EpisodeStats(
        method=method.name,
        episode=index,
        mean_delay_s=float(all_delays.mean()),  # mean over all tasks of the episode (§1.5)
        p95_delay_s=percentile(all_delays, 95),
        n_decisions=int(all_delays.size),
        offloaded_fraction=offloaded / all_delays.size,
        seconds=time.perf_counter() - started,
        updates=getattr(method, "updates", 0),
        metrics=metrics,
    )


def train(
    name: str,
    preset: Preset,
    switches: Switches,
    seed: int,
    episodes: int,
    on_episode: Callable[[EpisodeStats], None] | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> tuple[Scheduler, list[EpisodeStats]]:
    """Run ``episodes`` episodes of one method; returns (method, stats per episode).

    ``initial_state`` (a learner's ``networks_state()``) continues training from a checkpoint.
    """
    if episodes <= 0:
        raise ConfigurationError(f"episodes must be > 0, got {episodes}")
    seed_everything(seed)
    system = make_system(preset.env)
    stream = ArrivalStream(preset.env, seed)
    method = make_method(name, preset, switches, seed)
    if initial_state is not None:
        method.load_networks_state(initial_state)
    history = []
    for i in range(episodes):
        stats = run_episode(method, system, stream.next_episode(), preset, i + 1)
        history.append(stats)
        if on_episode is not None:
            on_episode(stats)
    return method, history


def compare(
    methods: Iterable[str],
    preset: Preset,
    switches: Switches,
    seed: int,
    episodes: int,
    on_episode: Callable[[EpisodeStats], None] | None = None,
) -> dict[str, list[EpisodeStats]]:
    """Every method on the same task streams, one after the other."""
    return {name: train(name, preset, switches, seed, episodes, on_episode)[1] for name in methods}
