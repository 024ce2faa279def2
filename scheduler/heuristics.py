"""Non-learning schedulers: the Opt-TS greedy oracle (§3.4) and four heuristics.

All share the learners' interface (:class:`SlotView` in, actions ``[B, N_max]`` out) and
honour a mask of unavailable servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dedgeai.scheduler.env import SystemParams


@dataclass(frozen=True)
class SlotView:
    """What a scheduler is shown for one slot: the arrivals and the system as it stands."""

    t: int
    system: SystemParams
    backlog: np.ndarray  # Q(t) [B]
    last_load: np.ndarray  # W(t-1) [B]
    task_mbit: np.ndarray  # [B, N_max]
    valid: np.ndarray  # [B, N_max]
    available: np.ndarray  # [B] bool: servers that may be chosen


class Scheduler(Protocol):
    """Anything that schedules one slot; learners also have ``learn`` and ``updates``."""

    name: str
    learns: bool

    def act(self, view: SlotView) -> np.ndarray:
        """Target server for every task of the slot, shape [B, N_max]."""
        ...


class OptTS:
    """Opt-TS: per task, in b-then-n order, the server of least delay (D1–D5) given the exact
    Q(t), the in-slot load W(t) so far, f and R (§3.4). Myopic earliest finish, not a true optimum.
    """

    name = "opt"
    learns = False

    def act(self, view: SlotView) -> np.ndarray:
        system = view.system
        f, R = system.capacity_ghz, system.rate_mbps
        B, N = view.valid.shape
        actions = np.zeros((B, N), dtype=np.int64)
        load = np.zeros(B)
        blocked = np.where(view.available, 0.0, np.inf)
        # Everything but the wait does not depend on earlier decisions: precompute per task.
        for b in range(B):
            n_b = int(view.valid[b].sum())
            if n_b == 0:
                continue
            tx = view.task_mbit[b, :n_b, None] / R[None, :]
            tx[:, b] = 0.0  # (D1) no transfer when processed at the arrival server
            fixed = (
                tx + (system.demand[:n_b, None] / f + system.result_mbit[:n_b, None] / R) + blocked
            )
            for n in range(n_b):
                delays = (
                    fixed[n] + (view.backlog + load) / f
                )  # (D2) the authors' order of operations
                a = int(delays.argmin())  # first minimum, as the authors' strict "<"
                actions[b, n] = a
                load[a] += system.demand[n]  # (D6)
        return actions


class LocalOnly:
    """Every task runs where it arrived (the all-local baseline); a masked home goes to random."""

    name = "local"
    learns = False

    def __init__(self, seed: int = 0) -> None:
        self._fallback = RandomChoice(seed)

    def act(self, view: SlotView) -> np.ndarray:
        B, N = view.valid.shape
        actions = np.broadcast_to(np.arange(B)[:, None], (B, N)).copy()
        down = ~view.available[actions]
        if down.any():
            actions[down] = self._fallback.act(view)[down]
        return actions


class RandomChoice:
    """Uniform over the available servers."""

    name = "random"
    learns = False

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, view: SlotView) -> np.ndarray:
        choices = np.flatnonzero(view.available)
        return choices[self._rng.integers(0, choices.size, size=view.valid.shape)]


class RoundRobin:
    """Each server cycles through the available servers, starting with itself."""

    name = "round-robin"
    learns = False

    def __init__(self, n_servers: int) -> None:
        self._next = np.arange(n_servers)

    def act(self, view: SlotView) -> np.ndarray:
        choices = np.flatnonzero(view.available)
        B, N = view.valid.shape
        ticks = self._next[:, None] + np.arange(N)[None, :]
        actions = choices[ticks % choices.size]
        self._next = (self._next + view.valid.sum(axis=1)) % choices.size
        return actions


class LeastBacklog:
    """Each server sends a task to the server that will finish it soonest by what it knows:
    the slot-start backlogs Q(t), f, R and its *own* earlier decisions in this slot, not the
    other servers' (a realistic, distributed earliest-finish rule). Vectorised over servers.
    """

    name = "least-backlog"
    learns = False

    def act(self, view: SlotView) -> np.ndarray:
        system = view.system
        f, R = system.capacity_ghz, system.rate_mbps
        B, N = view.valid.shape
        own_load = np.zeros((B, B))  # [origin, target]
        actions = np.zeros((B, N), dtype=np.int64)
        blocked = np.where(view.available, 0.0, np.inf)
        home = np.eye(B, dtype=bool)
        for n in range(N):
            tx = np.where(home, 0.0, view.task_mbit[:, n, None] / R[None, :])
            delays = (
                tx + (view.backlog + own_load + system.demand[n]) / f + system.result_mbit[n] / R
            )
            a = (delays + blocked).argmin(axis=1)
            actions[:, n] = a
            own_load[np.arange(B), a] += np.where(view.valid[:, n], system.demand[n], 0.0)
        return actions
