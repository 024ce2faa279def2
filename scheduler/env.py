"""The paper's time-slotted edge environment (§1), vectorised over servers and tasks.

One slot is evaluated in a handful of numpy operations: decisions for every task of every
server come in as one array, delays (D1–D5), the in-slot load (D6) and the queue update (Q)
come out. Only the greedy oracle needs the task-by-task order; it lives in heuristics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dedgeai.scheduler.config import EnvConfig

TASK_MBIT_SCALE = 5.0  # with scaling on: a task's size / the top of its range (B6)
DEMAND_GCYCLES_SCALE = 4.0  # with scaling on: a task's demand / the top of its range (B6)
STATE_SCALE_S = 10.0  # with scaling on: backlogs in seconds / 10, rewards in seconds / 10


@dataclass(frozen=True)
class SystemParams:
    """Fixed parameters of one system: per server (f, R) and per in-slot task index (ρ, q, o)."""

    capacity_ghz: np.ndarray  # f_k [B]
    rate_mbps: np.ndarray  # R_k [B]
    density: np.ndarray  # ρ_n [N_max], Gcycles per step
    quality: np.ndarray  # q_n [N_max], steps
    result_mbit: np.ndarray  # o_n [N_max]

    @property
    def demand(self) -> np.ndarray:
        """c_n = ρ_n q_n, Gcycles (B9: bound to the index n, not to the task)."""
        return self.density * self.quality


def make_system(cfg: EnvConfig) -> SystemParams:
    """Draw f, R, ρ, q, o exactly as the authors do, with their legacy numpy seeds."""
    cfg.validate()
    rs = np.random.RandomState(cfg.capacity_seed)
    capacity = rs.randint(cfg.capacity_ghz[0], cfg.capacity_ghz[1] + 1, size=cfg.n_servers)
    rs = np.random.RandomState(cfg.rate_seed)
    rate = rs.randint(cfg.rate_mbps[0], cfg.rate_mbps[1] + 1, size=cfg.n_servers)
    # ρ, q and o are each drawn right after seed(task_seed): ρ and o are perfectly correlated (B9).
    density = np.random.RandomState(cfg.task_seed).uniform(*cfg.density_gcycles, size=cfg.max_tasks)
    quality = np.random.RandomState(cfg.task_seed).randint(*cfg.quality_steps, size=cfg.max_tasks)
    result = np.random.RandomState(cfg.task_seed).uniform(*cfg.result_mbit, size=cfg.max_tasks)
    return SystemParams(
        capacity.astype(np.float64),
        rate.astype(np.float64),
        density,
        quality.astype(np.float64),
        result,
    )


@dataclass(frozen=True)
class Episode:
    """All arrivals of one episode, padded to N_max tasks per (slot, server)."""

    n_tasks: np.ndarray  # [T, B] int, N_{b,t}
    task_mbit: np.ndarray  # [T, B, N_max], d_{b,n,t} (0 where padded)
    valid: np.ndarray  # [T, B, N_max] bool

    @property
    def n_decisions(self) -> int:
        """Tasks decided in the processed slots 0..T-2."""
        return int(self.n_tasks[:-1].sum())


class ArrivalStream:
    """Episode arrivals. ``legacy`` continues the authors' global numpy stream exactly."""

    def __init__(self, cfg: EnvConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self._legacy: np.random.RandomState | None = None
        if cfg.arrival_stream == "legacy":
            # State of the authors' global RNG after the environment is built: seed(1), then the
            # N_max uniforms of the result sizes (Opt-TS / SAC-TS streams, §3.5).
            self._legacy = np.random.RandomState(cfg.task_seed)
            self._legacy.uniform(*cfg.result_mbit, size=cfg.max_tasks)
        self._next_episode = 0

    def next_episode(self) -> Episode:
        cfg = self.cfg
        T, B, N = cfg.n_slots, cfg.n_servers, cfg.max_tasks
        sizes = np.zeros((T, B, N))
        if self._legacy is not None:
            counts = np.empty((T, B), dtype=np.int64)
            for t in range(T):  # the draw order of main_*.py, which legacy reproduction needs
                counts[t] = self._legacy.randint(1, N + 1, size=B)
                for b in range(B):
                    sizes[t, b, : counts[t, b]] = self._legacy.uniform(
                        *cfg.task_mbit, size=counts[t, b]
                    )
        else:
            rng = np.random.default_rng([self.seed, self._next_episode])
            counts = rng.integers(1, N + 1, size=(T, B))
            sizes = rng.uniform(*cfg.task_mbit, size=(T, B, N))
        valid = np.arange(N)[None, None, :] < counts[:, :, None]
        self._next_episode += 1
        return Episode(counts, np.where(valid, sizes, 0.0), valid)


@dataclass(frozen=True)
class SlotOutcome:
    delay_s: np.ndarray  # [B, N_max] service delay T_{b,n,t} (0 where padded)
    load: np.ndarray  # [B] W(t): Gcycles placed on each server this slot
    next_backlog: np.ndarray  # [B] Q(t+1)


def slot_outcome(
    system: SystemParams,
    backlog: np.ndarray,
    task_mbit: np.ndarray,
    valid: np.ndarray,
    actions: np.ndarray,
    slot_s: float,
) -> SlotOutcome:
    """Evaluate one slot for decisions ``actions[b, n]`` taken in b-then-n order (§1.3, §1.4)."""
    B, N = valid.shape
    origin, index = np.nonzero(valid)  # C order: server b, then task n — the service order
    target = actions[origin, index]
    demand = system.demand[index]
    f, R = system.capacity_ghz[target], system.rate_mbps[target]
    # (D6) in-slot load before each task: the exclusive running sum of c per target server.
    placed = np.zeros((origin.size, B))
    placed[np.arange(origin.size), target] = demand
    before = (np.cumsum(placed, axis=0) - placed)[np.arange(origin.size), target]
    t_tx = np.where(target != origin, task_mbit[origin, index] / R, 0.0)  # (D1)
    t_wait = (backlog[target] + before) / f  # (D2)
    t_comp = demand / f  # (D3)
    t_ret = system.result_mbit[index] / R  # (D4)
    delay = np.zeros((B, N))
    delay[origin, index] = t_tx + t_wait + t_comp + t_ret  # (D5)
    load = np.bincount(target, weights=demand, minlength=B)
    next_backlog = np.maximum(backlog + load - system.capacity_ghz * slot_s, 0.0)  # (Q)
    return SlotOutcome(delay, load, next_backlog)


def observe(
    system: SystemParams,
    task_mbit: np.ndarray,
    backlog: np.ndarray,
    last_load: np.ndarray,
    *,
    scaling: bool,
    with_load: bool,
) -> np.ndarray:
    """States s_{b,n,t} for every task of one slot, shape [B, N_max, state_dim] (§1.6).

    Layout: [d, c_n, Q_0..Q_{B-1}] plus, with ``with_load`` (B4), the load each server
    received in the previous slot, which is what a telemetry gossip can know at decision time
    without serialising the slot's decisions. With ``scaling`` (B6) sizes are divided by their
    range's top and backlogs become seconds of work (Q_k / f_k) divided by 10.
    """
    B, N = task_mbit.shape
    demand = system.demand[:N]
    if scaling:
        size_col, demand_col = task_mbit / TASK_MBIT_SCALE, demand / DEMAND_GCYCLES_SCALE
        queue = backlog / system.capacity_ghz / STATE_SCALE_S
        load = last_load / system.capacity_ghz / STATE_SCALE_S
    else:
        size_col, demand_col = task_mbit, demand
        queue, load = backlog, last_load
    # Written column by column into the float32 result: each value is computed in float64
    # and rounded once, as when the float64 pieces were concatenated and then cast.
    out = np.empty((B, N, 2 + queue.size + (load.size if with_load else 0)), dtype=np.float32)
    out[:, :, 0] = size_col
    out[:, :, 1] = demand_col[None, :]
    out[:, :, 2 : 2 + queue.size] = queue
    if with_load:
        out[:, :, 2 + queue.size :] = load
    return out


def state_dim(n_servers: int, with_load: bool) -> int:
    return 2 + n_servers * (2 if with_load else 1)
