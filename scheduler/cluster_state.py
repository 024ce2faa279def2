"""A live cluster as a policy sees it, and the decisions that need no learning (torch-free).

``ClusterState``/``TaskSpec`` are what the agent knows when a task arrives (from telemetry
gossip, or for ``pod2`` from probe replies with every other peer masked: the agent's
``agent/cluster/probes.py`` builds that state, the decision is greedy's), ``Placement`` is a decision, ``estimated_finish_s`` is greedy's estimate (D1–D5)
and ``soft_greedy`` its maximum-entropy form. ``HeuristicScheduler`` decides with one of
the heuristics; ``online.ClusterScheduler`` extends it with the learned policies (torch),
so an agent with a heuristic policy never imports torch.

Gossip is hostile input: a state with a NaN/inf, negative or absurd value (bounds in
``state_checks.py``) is decided by greedy (or the heuristic itself) on a sanitised state
(the faulty servers masked), says so in the reason and counts in ``insane_states``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dedgeai.scheduler.errors import ConfigurationError
from dedgeai.scheduler.policy_names import HEURISTICS as HEURISTICS  # re-exported
from dedgeai.scheduler.policy_names import LEARNED, POLICIES, PROBED
from dedgeai.scheduler.state_checks import (
    sanitized_state,
    sanitized_task,
    state_problems,
    task_problems,
)

SOFT_GREEDY_TEMPERATURE = 0.3  # x the best estimated finish (tools/stale_gossip_sim.py)
PROBE_UNIFORM_SHARE = 0.02  # of an informed probe draw (``probe_weights``)
MIN_TEMPERATURE_S = 0.05  # floor of the best finish in the temperature (an idle cluster)


@dataclass(frozen=True)
class ClusterState:
    """What the agent knows about every server (itself included) when a task arrives."""

    self_index: int
    backlog_steps: np.ndarray  # [B] queued + running work, 512x512-equivalent steps
    interval_load_steps: np.ndarray  # [B] work placed on each server in the current interval
    capacity_steps_per_s: np.ndarray  # [B] measured speed
    available: np.ndarray  # [B] bool: False for a server that is down (masked)
    transfer_s: np.ndarray | None = None  # [B] forwarding overhead estimate, 0 for self

    @property
    def n_servers(self) -> int:
        return int(np.asarray(self.available).size)

    def validate(self, n_servers: int) -> None:
        up, capacity = self.available, self.capacity_steps_per_s
        if (
            isinstance(up, np.ndarray)
            and up.dtype == bool
            and up.shape == (n_servers,)
            and np.shape(self.backlog_steps) == np.shape(self.interval_load_steps) == up.shape
            and isinstance(capacity, np.ndarray)
            and capacity.shape == up.shape
            and 0 <= self.self_index < n_servers
            and up.any()
        ):
            return  # the daemon's case, checked in few calls; otherwise say what is wrong
        arrays = (
            self.backlog_steps,
            self.interval_load_steps,
            self.capacity_steps_per_s,
            self.available,
        )
        if any(np.asarray(a).shape != (n_servers,) for a in arrays):
            raise ConfigurationError(f"cluster state must describe exactly {n_servers} servers")
        if not 0 <= self.self_index < n_servers:
            raise ConfigurationError(f"self index {self.self_index} outside 0..{n_servers - 1}")
        if not np.asarray(self.available).any():
            raise ConfigurationError("no server is available")

    def problems(self) -> list[str]:
        """Each NaN/inf, negative or out-of-bounds value, described; [] for a sane state
        (bounds: ``state_checks.py``; shapes are ``validate``'s job)."""
        return state_problems(self)

    def sanitized(self) -> ClusterState:
        """This state with its faulty servers masked (``state_checks.sanitized_state``)."""
        return sanitized_state(self)

    def transfer(self) -> np.ndarray:
        if self.transfer_s is None:
            return np.zeros(self.n_servers)
        return np.asarray(self.transfer_s, dtype=np.float64)


@dataclass(frozen=True)
class TaskSpec:
    demand_steps: float  # steps x (w*h)/(512*512)
    size_mbit: float  # request size

    def problems(self) -> list[str]:
        return task_problems(self)

    def sanitized(self) -> TaskSpec:
        return sanitized_task(self)


@dataclass(frozen=True)
class Placement:
    target: int
    probs: np.ndarray = field(repr=False)  # [B]
    policy: str
    reason: str


def estimated_finish_s(task: TaskSpec, cluster: ClusterState) -> np.ndarray:
    """Earliest-finish estimate per server (D1–D5 with telemetry); inf where down."""
    cap = np.where(cluster.available, cluster.capacity_steps_per_s, 1.0)
    work = cluster.backlog_steps + cluster.interval_load_steps + task.demand_steps
    finish = cluster.transfer() + work / cap
    return np.where(cluster.available, finish, np.inf)


def soft_greedy(finish_s: np.ndarray, temperature: float = SOFT_GREEDY_TEMPERATURE) -> np.ndarray:
    """π(n) ∝ exp(−(f_n − f_min) / (temperature · f_min)) for finish estimates f [K, B] (inf: down).

    The warm start's teacher: greedy's maximum-entropy form (discrete SAC's optimum for
    Q = −estimated finish). Agents decide on gossip up to one interval old, so every agent
    sees the same "best" server until its next report; deterministic greedy sends them all
    there, drawing from this π spreads them over the near-best ones. The temperature is
    relative to the best finish, so it does not depend on how long tasks take.
    """
    best = finish_s.min(axis=-1, keepdims=True)
    scale = temperature * np.maximum(best, MIN_TEMPERATURE_S)
    logits = np.where(np.isfinite(finish_s), -(finish_s - best) / scale, -np.inf)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)


def probe_weights(probs: np.ndarray, share: float = PROBE_UNIFORM_SHARE) -> np.ndarray | None:
    """Informed probes: a weight per probe candidate from a policy's π on them (soft-greedy's
    on gossip, in the daemon and the twin), ``share`` of it uniform so that no live candidate
    is never probed; None when π has no finite mass there (no view yet: probe uniformly)."""
    total = float(probs.sum())
    if not np.isfinite(total) or total <= 0:
        return None
    return (1.0 - share) * probs / total + share / probs.size


class HeuristicScheduler:
    """One agent's scheduler with a heuristic policy (a learned name decides as ``local``).

    It has the learned scheduler's interface (``learns`` False, nothing to train or save),
    so the agent's host treats both alike."""

    learns = False
    draws_from_capped_lad = False
    rejected_updates = 0
    dropped_transitions = 0
    trained_steps = 0

    def __init__(self, policy: str, n_servers: int, self_index: int, seed: int = 0) -> None:
        if policy not in POLICIES:
            raise ConfigurationError(
                f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}"
            )
        if n_servers < 1 or not 0 <= self_index < n_servers:
            raise ConfigurationError(f"self index {self_index} does not fit {n_servers} servers")
        self.policy, self.n_servers, self.self_index = policy, n_servers, self_index
        self._rng = np.random.default_rng(seed)
        self._next_rr = self_index
        self.insane_states = 0  # decisions on a state that failed ``ClusterState.problems``

    def start_interval(self) -> None:
        """A new gossip interval (only LAD's in-interval task index depends on it)."""

    def decide(
        self, task: TaskSpec, cluster: ClusterState, task_id: str | None = None
    ) -> Placement:
        """A target for ``task``; on an insane state, greedy's (a heuristic: its own) on the
        sanitised state, with the faults in the reason and no transition recorded."""
        cluster.validate(self.n_servers)
        faults = task.problems() + cluster.problems()
        if faults:
            self.insane_states += 1
            name = "greedy" if self.policy in LEARNED else self.policy
            placement = self._decide_heuristic(name, task.sanitized(), cluster.sanitized())
            more = f"; {len(faults) - 3} more" if len(faults) > 3 else ""
            shown = "; ".join(faults[:3]) + more
            reason = f"state rejected ({shown}), {name} on the rest: {placement.reason}"
            return Placement(placement.target, placement.probs, name, reason)
        return self._decide_sane(task, cluster, task_id)

    def _decide_sane(self, task: TaskSpec, cluster: ClusterState, task_id: str | None) -> Placement:
        return self._decide_heuristic(self.policy, task, cluster)

    def _decide_heuristic(self, policy: str, task: TaskSpec, cluster: ClusterState) -> Placement:
        up = np.asarray(cluster.available, dtype=bool)
        name = policy if policy not in LEARNED else "local"
        if name == "greedy" or name in PROBED:  # pod<d>: greedy on the probed (masked) state
            finish = estimated_finish_s(task, cluster)
            target = int(np.argmin(finish))
            return self._one_hot(target, f"earliest estimated finish {finish[target]:.2f} s")
        if name == "least-loaded":
            backlog_s = np.where(
                up,
                (cluster.backlog_steps + cluster.interval_load_steps)
                / np.where(up, cluster.capacity_steps_per_s, 1.0),
                np.inf,
            )
            target = int(np.argmin(backlog_s))
            return self._one_hot(target, f"least backlog {backlog_s[target]:.2f} s")
        if name == "round-robin":
            for step in range(self.n_servers):
                candidate = (self._next_rr + step) % self.n_servers
                if up[candidate]:
                    self._next_rr = (candidate + 1) % self.n_servers
                    return self._one_hot(candidate, "next in turn")
        if name == "random":
            probs = up / up.sum()
            target = int(self._rng.choice(self.n_servers, p=probs))
            return Placement(target, probs, self.policy, "uniform over live servers")
        # local (and a learned policy on a single server)
        if up[self.self_index]:
            return self._one_hot(self.self_index, "local")
        finish = estimated_finish_s(task, cluster)
        return self._one_hot(int(np.argmin(finish)), "local server down: earliest finish elsewhere")

    def _one_hot(self, target: int, reason: str) -> Placement:
        probs = np.zeros(self.n_servers)
        probs[target] = 1.0
        return Placement(target, probs, self.policy, reason)

    def complete(self, task_id: str, delay_s: float) -> bool:
        """A heuristic learns nothing from a reward: always False."""
        return False

    def abandon(self, task_id: str) -> bool:
        return False

    def train_step(self) -> dict[str, float] | None:
        return None

    def save(self, path: object) -> bool:
        """Nothing to checkpoint: False."""
        return False
