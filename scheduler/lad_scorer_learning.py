"""Online learning for the per-server LAD scorer: discrete SAC (§2.4) with per-server critics.

CleanRL style, one file, read top to bottom: the settings, the critic Q(s, n), the delayed
transitions (as ``policy.py`` records them for the paper's actor), the replay buffer, then
``ScorerLearning``: the critics' warm start, one SAC update with a behaviour-cloning term,
the guard, and checkpoints.

Why two changes to the paper's SAC (docs/results_cluster.md §4, "Why"). Training the paper's
actor in the twin made it worse (1.2 → 2.2 × omniscient): the warm-started actor rarely picks
slow boxes, so their Q values were extrapolated, never fitted, and the actor update moved π
onto them. Here:

(a) the critics are fitted to the teacher's −(estimated finish) of *every* live server
    during the warm start (``fit_critics``), so Q starts right on the boxes the actor never
    tries, and only moves where real delays say otherwise;
(b) the actor loss carries λ · CE(soft-greedy teacher, π) (TD3+BC, Fujimoto & Gu 2021; AWAC),
    so π cannot drift far from a sound rule while a critic is wrong.

Units. Q is measured in the state's best estimated finish f_min (floored at
``MIN_TEMPERATURE_S``), the scale the features φ use: Q(s, n) ≈ −delay_n ÷ f_min(s), so one
critic serves quiet and busy clusters. The soft-greedy teacher is π ∝ exp(Q / ξ) for
Q = −f_n ÷ f_min and ξ = ``SOFT_GREEDY_TEMPERATURE``: discrete SAC's own optimum. So the warm
start (actor cloned, critics fitted, ξ at the teacher's temperature) is a fixed point of the
update below; what moves π afterwards is the critics learning the real delays where the
gossip-based estimate is wrong (stale reports, herding, transfers).

γ = 0 by default (a contextual bandit: a decision's reward is its own task's delay, the
paper's r = −delay of §1.6, and the next state is another task's). The diagnosis found the
drop with γ = 0 too, so γ was not the cause; with γ > 0 the bootstrapped target is used.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dedgeai.scheduler.checkpoints import load_checkpoint
from dedgeai.scheduler.cluster_state import (
    MIN_TEMPERATURE_S,
    SOFT_GREEDY_TEMPERATURE,
    ClusterState,
    TaskSpec,
    soft_greedy,
)
from dedgeai.scheduler.errors import CorruptCheckpointError, WarmStartCancelled
from dedgeai.scheduler.lad_scorer import CLIP, N_FEATURES, LADScorer, features, synthetic
from dedgeai.scheduler.learner import GuardedNetworks
from dedgeai.scheduler.transitions import DelayedTransitions

Q_FLOOR = -(1.0 + CLIP)  # the lowest Q (units of f_min): φ's relative times clip at CLIP
MASKED_LOGIT = -1e4  # a down server's logit: π = 0 exactly, and no 0 · (−inf) in the losses


# ==== settings ==================================================================================
@dataclass(frozen=True)
class ScorerLearnConfig:
    hidden: int = 32  # critic width (the actor's is ScorerConfig.hidden)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    alpha: float = SOFT_GREEDY_TEMPERATURE  # ξ: the teacher's temperature (see "Units")
    # None: ξ stays fixed. A number r: ξ is tuned (§2.4, L_ξ) towards r × the teacher's
    # entropy on the batch.
    target_entropy: float | None = None
    alpha_lr: float = 3e-4
    gamma: float = 0.0  # see the module docstring
    tau: float = 0.01  # target critics: θ̄ ← (1 − τ) θ̄ + τ θ
    # λ of the BC term. The SAC part of the loss is Σ π (ξ log π − Q) with Q in units of
    # f_min; CE is in nats. λ = 1 makes moving all of π from the teacher's pick to a server
    # that the critics think is one f_min faster about break even with the CE it costs.
    bc_weight: float = 1.0
    buffer_size: int = 20_000
    buffer_mib: float = 64.0  # the buffer holds fewer transitions on big clusters
    warmup: int = 300  # transitions buffered before the first update (the agent's learn_warmup)
    batch_size: int = 64
    critic_warm_steps: int = 600  # fix (a): steps fitting Q to −(estimated finish)


# ==== the critic: Q(s, n) = q_θ(φ_n), one scalar per server, shared weights ======================
def _seeded_linear(d_in: int, d_out: int, generator: torch.Generator) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    bound = 1.0 / math.sqrt(d_in)
    with torch.no_grad():  # nn.Linear's bounds, our generator (seeded)
        layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
        layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
    return layer


class ScorerCritic(nn.Module):
    """Q(s, ·) [K, B] from φ [K, B, F]: the actor's per-server features, any cluster size."""

    def __init__(self, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.l1 = _seeded_linear(N_FEATURES, hidden, generator)
        self.l2 = _seeded_linear(hidden, hidden, generator)
        self.l3 = _seeded_linear(hidden, 1, generator)

    def forward(self, phi: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(phi)))))[..., 0]


class Temperature(nn.Module):
    """log ξ as a module, so the guard snapshots and restores it with the networks."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha)))


# ==== delayed rewards: the same bookkeeping as OnlinePolicy (_record, complete, abandon) ==========
STATE_KEYS = ("demand", "size", "self", "backlog", "load", "capacity", "transfer", "ok")


def raw_state(task: TaskSpec, cluster: ClusterState) -> dict[str, np.ndarray]:
    """What a transition keeps of a decision's state: the numbers φ is computed from (the
    buffer recomputes φ per batch; B floats per field, not B · F)."""
    return {
        "demand": np.float32(task.demand_steps),
        "size": np.float32(task.size_mbit),
        "self": np.int32(cluster.self_index),
        "backlog": np.asarray(cluster.backlog_steps, dtype=np.float32),
        "load": np.asarray(cluster.interval_load_steps, dtype=np.float32),
        "capacity": np.asarray(cluster.capacity_steps_per_s, dtype=np.float32),
        "transfer": np.asarray(cluster.transfer(), dtype=np.float32),
        "ok": np.asarray(cluster.available, dtype=bool),
    }


# ==== replay ====================================================================================
class ScorerReplay:
    """A ring buffer of (s, a, delay, s′), states as ``raw_state`` numbers, for B servers."""

    def __init__(self, n_servers: int, size: int, mib: float) -> None:
        B = n_servers
        shapes: dict[str, tuple[tuple[int, ...], type]] = {"a": ((), np.int64)}
        shapes["delay"] = ((), np.float32)
        for prefix in ("s", "s2"):
            for key in STATE_KEYS:
                per_server = key not in ("demand", "size", "self")
                dtype = bool if key == "ok" else (np.int32 if key == "self" else np.float32)
                shapes[f"{prefix}.{key}"] = ((B,) if per_server else (), dtype)
        row = sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in shapes.values())
        self.capacity = max(1, min(size, int(mib * 2**20) // row))
        self.data = {k: np.zeros((self.capacity, *s), dtype=d) for k, (s, d) in shapes.items()}
        self.size = self.cursor = 0

    def add(self, entry: dict[str, Any]) -> None:
        i = self.cursor
        self.data["a"][i], self.data["delay"][i] = entry["a"], entry["delay"]
        for prefix in ("s", "s2"):
            for key, value in entry[prefix].items():
                self.data[f"{prefix}.{key}"][i] = value
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.size, batch)
        return {k: v[idx] for k, v in self.data.items()}


def batch_features(
    batch: dict[str, np.ndarray], prefix: str
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """φ [K, B, F] (torch), f [K, B] and the mask of a sampled batch's s or s′."""
    get = {key: batch[f"{prefix}.{key}"] for key in STATE_KEYS}
    ok = get["ok"]
    phi, finish = features(
        get["demand"],
        get["size"],
        get["backlog"].astype(np.float64),
        get["load"].astype(np.float64),
        get["capacity"].astype(np.float64),
        ok,
        get["transfer"].astype(np.float64),
        get["self"],
    )
    return torch.from_numpy(phi), finish, ok


def relative(finish: np.ndarray) -> np.ndarray:
    """f_min per state, floored as soft-greedy's temperature scale: Q's unit."""
    return np.maximum(finish.min(axis=1), MIN_TEMPERATURE_S)


# ==== the learner ===============================================================================
class ScorerLearning(GuardedNetworks):
    """A ``LADScorer`` (the actor) with twin per-server critics, target critics, ξ and a buffer."""

    NETWORKS = ("net", "critics", "targets", "temperature")

    def __init__(
        self,
        scorer: LADScorer,
        n_servers: int,
        cfg: ScorerLearnConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg or ScorerLearnConfig()
        self.scorer, self.net, self.n_servers = scorer, scorer.net, n_servers
        generator = torch.Generator().manual_seed(
            (seed * 7919 + 0xC41) % 2**63
        )  # node seeds: 64 bit
        self.critics = nn.ModuleList([ScorerCritic(self.cfg.hidden, generator) for _ in range(2)])
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.temperature = Temperature(self.cfg.alpha)
        self.actor_opt = torch.optim.Adam(self.net.parameters(), lr=self.cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=self.cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam(self.temperature.parameters(), lr=self.cfg.alpha_lr)
        self.rng = np.random.default_rng([seed, 0x5AC])
        self.transitions = DelayedTransitions()
        self.replay = ScorerReplay(n_servers, self.cfg.buffer_size, self.cfg.buffer_mib)
        self.trained_steps = 0
        self.rejected_updates = 0  # updates rolled back (NaN/inf losses or weights)
        self.critics_fitted: dict[str, float] = {}

    # ---- fix (a): the critics start at the teacher's −(estimated finish) -----------------------
    def fit_critics(
        self,
        capacities: np.ndarray | None = None,
        steps: int | None = None,
        batch: int = 128,
        sizes: tuple[int, ...] = (4, 8, 16, 32, 64),
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, float]:
        """Fit both critics to Q(s, n) = −f_n ÷ f_min for every live n of synthetic states
        (``lad_scorer.synthetic``, as the actor's clone), then copy them to the targets."""
        steps = self.cfg.critic_warm_steps if steps is None else steps
        rng = np.random.default_rng([self.scorer.seed, 0xC41C])
        opt = torch.optim.Adam(self.critics.parameters(), lr=3e-3)
        loss = torch.tensor(float("nan"))
        for step in range(steps):
            if should_stop is not None and should_stop():
                raise WarmStartCancelled("the warm start was stopped")
            phi, finish, ok = synthetic(rng, batch, sizes[step % len(sizes)], capacities)
            target = torch.from_numpy(self._teacher_q(finish, ok))
            live = torch.from_numpy(ok)
            loss = sum(
                ((critic(torch.from_numpy(phi)) - target) ** 2)[live].mean()
                for critic in self.critics
            )
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
        self.targets.load_state_dict(self.critics.state_dict())
        held = np.random.default_rng([self.scorer.seed, 0xE7A2])
        phi, finish, ok = synthetic(held, 512, 16, capacities)
        with torch.no_grad():
            q = self.critics[0](torch.from_numpy(phi)).numpy()
        best = np.argmax(np.where(ok, q, -np.inf), axis=1)
        self.critics_fitted = {
            "loss": float(loss.detach()),  # type: ignore[union-attr]
            "agreement": float(np.mean(best == np.argmin(finish, axis=1))),
            "steps": steps,
        }
        return self.critics_fitted

    @staticmethod
    def _teacher_q(finish: np.ndarray, ok: np.ndarray) -> np.ndarray:
        q = -finish / relative(finish)[:, None]
        return np.where(ok, np.maximum(q, Q_FLOOR), 0.0).astype(np.float32)

    # ---- decisions and rewards --------------------------------------------------------------
    def record(self, task_id: str, task: TaskSpec, cluster: ClusterState, action: int) -> None:
        state = raw_state(task, cluster)
        self.transitions.record(task_id, {"s": state, "a": np.int64(action)}, {"s2": state})

    def complete(self, task_id: str, delay_s: float) -> bool:
        return self.transitions.complete(task_id, delay_s)

    def abandon(self, task_id: str) -> bool:
        return self.transitions.abandon(task_id)

    @property
    def dropped_transitions(self) -> int:
        return self.transitions.dropped

    @property
    def buffered(self) -> int:
        self._flush()
        return self.replay.size

    def _flush(self) -> None:
        while self.transitions.ready:
            self.replay.add(self.transitions.ready.popleft())

    def set_pacing(self, warmup: int, batch_size: int) -> None:
        """The deployment's warm-up and batch size win over a checkpoint's (they pace, they
        do not shape the networks)."""
        self.cfg = replace(self.cfg, warmup=warmup, batch_size=batch_size)

    # ---- one SAC step (§2.4) with the BC term ----------------------------------------------
    def _log_pi(self, phi: torch.Tensor, ok: np.ndarray) -> torch.Tensor:
        """log π [K, B] of the chain's mean path (x_I = 0, no noise: the π the daemon draws
        from), masked servers at ``MASKED_LOGIT``."""
        x0 = self.net.chain(phi, torch.zeros(phi.shape[:2]))
        return torch.log_softmax(x0.masked_fill(~torch.from_numpy(ok), MASKED_LOGIT), dim=1)

    def train_step(self) -> dict[str, float] | None:
        """One update when the buffer holds more than the warm-up; None otherwise, or when
        it was rolled back (NaN/inf loss or weight; counted in ``rejected_updates``)."""
        self._flush()
        if self.replay.size <= self.cfg.warmup:
            return None
        metrics = self.guarded_update(self.replay.sample(self.cfg.batch_size, self.rng))
        self.scorer._views()  # the NumPy decision path derives h_t from the weights
        if metrics is None:
            self.rejected_updates += 1
            return None
        self.trained_steps += 1
        return metrics

    def _update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:  # type: ignore[override]
        cfg = self.cfg
        phi, finish, ok = batch_features(batch, "s")
        live = torch.from_numpy(ok)
        scale = relative(finish)
        a = torch.from_numpy(batch["a"])[:, None]
        # r = −delay (§1.6), in units of f_min(s), floored as the critics' range
        r = torch.from_numpy(np.maximum(-batch["delay"] / scale, Q_FLOOR).astype(np.float32))
        alpha = self.temperature.log_alpha.exp().detach()

        # Critics: y = r + γ Σ_a π(a|s′) (min Q̄(s′, a) − ξ log π(a|s′)), in units of f_min(s)
        with torch.no_grad():
            y = r
            if cfg.gamma > 0:
                phi2, finish2, ok2 = batch_features(batch, "s2")
                logp2 = self._log_pi(phi2, ok2)
                q2 = torch.minimum(*(target(phi2) for target in self.targets))
                v2 = torch.where(torch.from_numpy(ok2), logp2.exp() * (q2 - alpha * logp2), 0.0)
                ratio = torch.from_numpy((relative(finish2) / scale).astype(np.float32))
                y = r + cfg.gamma * ratio * v2.sum(1)
        q1, q2 = (critic(phi).gather(1, a)[:, 0] for critic in self.critics)
        critic_loss = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        # Actor: L_π = Σ_a π (ξ log π − min Q) + λ CE(teacher, π)   (SAC §2.4 + fix (b))
        logp = self._log_pi(phi, ok)
        probs = logp.exp()
        with torch.no_grad():
            q_min = torch.minimum(*(critic(phi) for critic in self.critics))
        teacher = torch.from_numpy(soft_greedy(finish).astype(np.float32))
        sac = torch.where(live, probs * (alpha * logp - q_min), 0.0).sum(1)
        bc = -torch.where(live, teacher * logp, 0.0).sum(1)
        actor_loss = (sac + cfg.bc_weight * bc).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        # ξ (optional): L_ξ = mean((H − H̄) ξ), H̄ = r × the teacher's entropy
        ent = -torch.where(live, probs * logp, 0.0).sum(1).detach()
        if cfg.target_entropy is not None:
            t_ent = -(teacher * torch.log(teacher.clamp_min(1e-12))).sum(1)
            alpha_loss = ((ent - cfg.target_entropy * t_ent).mean()) * (
                self.temperature.log_alpha.exp()
            )
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()

        with torch.no_grad():  # θ̄ ← (1 − τ) θ̄ + τ θ
            for p_t, p in zip(self.targets.parameters(), self.critics.parameters(), strict=True):
                p_t.lerp_(p, cfg.tau)
        agree = (logp.argmax(1).numpy() == np.argmin(finish, axis=1)).mean()
        return {
            "losses/critic": float(critic_loss.detach()),
            "losses/actor": float(actor_loss.detach()),
            "losses/bc": float(bc.detach().mean()),
            "charts/alpha": float(self.temperature.log_alpha.detach().exp()),
            "charts/entropy": float(ent.mean()),
            "charts/greedy_agreement": float(agree),
        }

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """The actor as ``LADScorer.save`` writes it, plus critics, targets, ξ and settings."""
        extra = {
            f"{name}.{key}": value.detach().clone()
            for name in ("critics", "targets", "temperature")
            for key, value in getattr(self, name).state_dict().items()
        }
        config = {
            "learning": asdict(self.cfg),
            "trained_steps": self.trained_steps,
            "critics_fitted": self.critics_fitted,
        }
        self.scorer.save(path, extra_config=config, extra_state=extra)

    @classmethod
    def load(
        cls,
        path: Path,
        n_servers: int,
        seed: int = 0,
        pacing: tuple[int, int] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ScorerLearning:
        """A checkpoint with critics resumes them; one without (an actor-only scorer file, the
        format before online learning) gets critics fitted afresh by ``fit_critics``.
        ``pacing``: the deployment's (warm-up, batch size)."""
        config, state = load_checkpoint(path)
        scorer = LADScorer.from_checkpoint(path, config, state)
        known = {f.name for f in fields(ScorerLearnConfig)}
        saved = {k: v for k, v in dict(config.get("learning") or {}).items() if k in known}
        learning = cls(scorer, n_servers, ScorerLearnConfig(**saved), seed)
        if pacing is not None:
            learning.set_pacing(*pacing)
        if any(key.startswith("critics.") for key in state):
            try:
                for name in ("critics", "targets", "temperature"):
                    prefix = f"{name}."
                    getattr(learning, name).load_state_dict(
                        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                    )
            except (RuntimeError, KeyError) as exc:
                raise CorruptCheckpointError(f"{path}: critics do not fit: {exc}") from exc
            learning.trained_steps = int(config.get("trained_steps", 0))
            learning.critics_fitted = dict(config.get("critics_fitted") or {})
        else:
            learning.fit_critics(should_stop=should_stop)
        return learning
