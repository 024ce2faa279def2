"""Shared plumbing of the learning schedulers: states, latent memory, transitions, replay.

An algorithm file (lad_ts.py, dsac.py, dqn_ts.py) supplies only ``_decide`` (one batched
no-grad pass for every task of every agent) and ``_update`` (one batched gradient step for
every agent whose buffer is warm). Everything in this file is the paper's loop (§2.7) written
per slot instead of per task, which is exact because an agent's decisions within a slot do
not affect each other's inputs (§5 "Batching is exact").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from dedgeai.scheduler.config import EnvConfig, LearnConfig, Switches
from dedgeai.scheduler.env import STATE_SCALE_S, SlotOutcome, observe, state_dim
from dedgeai.scheduler.heuristics import SlotView
from dedgeai.scheduler.replay import StackedReplay


@dataclass
class _SlotRecord:
    """What act() saw and chose, kept until learn() knows the rewards."""

    states: torch.Tensor  # [A, N, sd]
    x_in: torch.Tensor | None  # [A, N, B] conditioning input of the chain
    x_out: torch.Tensor | None  # [A, N, B] what was written to memory
    actions: torch.Tensor  # [A, N]
    valid: torch.Tensor  # [A, N] bool


def latent_to_memory(x0: torch.Tensor, pre_softmax: bool) -> torch.Tensor:
    """What X_b[n] keeps of a chain output x_0 (B2).

    The authors' code keeps softmax(x_0). The paper's figure keeps x_0 itself, but the chain
    scales its input by about sqrt(1/ᾱ_I) ≈ 12.5 (I = 5), so feeding x_0 back unchanged grows
    without bound (inf after ~30 reuses); the pre-softmax variant therefore keeps x_0
    standardised per row, which preserves its ranking and relative gaps.
    """
    if not pre_softmax:
        return torch.softmax(x0, dim=-1)
    centred = x0 - x0.mean(dim=-1, keepdim=True)
    return centred / (centred.std(dim=-1, keepdim=True) + 1e-6)


class GuardedNetworks:
    """The online training guard, for any learner that lists its ``nn.Module`` attributes in
    ``NETWORKS`` and keeps its optimizers as attributes (of itself or of those modules)."""

    NETWORKS: tuple[str, ...] = ()

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer of this learner (its own and its networks'), in a fixed order."""
        owners = [self, *(getattr(self, name) for name in self.NETWORKS)]
        return [
            value
            for owner in owners
            for value in vars(owner).values()
            if isinstance(value, torch.optim.Optimizer)
        ]

    def snapshot(self) -> dict[str, Any]:
        """A copy of every network and optimizer state (not the latent memory: decisions
        write it, training does not), for :meth:`restore`."""
        return {
            "networks": {n: copy.deepcopy(getattr(self, n).state_dict()) for n in self.NETWORKS},
            "optimizers": [copy.deepcopy(o.state_dict()) for o in self._optimizers()],
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        for name, state in snapshot["networks"].items():
            getattr(self, name).load_state_dict(state)
        for opt, state in zip(self._optimizers(), snapshot["optimizers"], strict=True):
            opt.load_state_dict(state)

    def weights_finite(self) -> bool:
        return all(
            bool(torch.isfinite(value).all())
            for name in self.NETWORKS
            for value in getattr(self, name).state_dict().values()
            if value.is_floating_point()
        )

    def _update(self, *args: Any) -> dict[str, float]:
        """One gradient step, supplied by the learner; returns loss metrics."""
        raise NotImplementedError

    def guarded_update(self, *args: Any) -> dict[str, float] | None:
        """``_update(*args)``, rolled back (weights and optimizer moments) when a loss or a
        new weight is NaN/inf, or when it raises; None when rolled back. The daemon's online
        learning goes through here: one bad step must not become the policy."""
        saved = self.snapshot()
        try:
            metrics = self._update(*args)
        except BaseException:
            self.restore(saved)
            raise
        if all(math.isfinite(v) for v in metrics.values()) and self.weights_finite():
            return metrics
        self.restore(saved)
        return None


class SlotLearner(GuardedNetworks):
    """Base class: B agents (one per server) deciding a whole slot at once."""

    name = "learner"
    learns = True
    uses_memory = False  # LAD-TS keeps the latent action memory X_b[n]

    def __init__(
        self,
        env: EnvConfig,
        learn: LearnConfig,
        switches: Switches,
        seed: int,
        n_agents: int | None = None,
    ) -> None:
        self.env_cfg, self.cfg, self.switches = env, learn, switches
        # One agent per server in simulation; a daemon runs a single agent (its own server).
        self.n_actions = env.n_servers
        self.n_agents = env.n_servers if n_agents is None else n_agents
        self.state_dim = state_dim(env.n_servers, switches.inslot_load_in_state)
        self.generator = torch.Generator().manual_seed(seed)
        A, B, N = self.n_agents, env.n_servers, env.max_tasks
        memory_shape = (env.n_slots, A, N, B) if switches.memory_per_slot else (A, N, B)
        # The memory starts as N(0, 1), drawn once and never reset between episodes (§2.3).
        self.memory = (
            torch.randn(memory_shape, generator=self.generator) if self.uses_memory else None
        )
        fields: dict[str, tuple[int, ...]] = {
            "s": (self.state_dim,),
            "a": (),
            "r": (),
            "s2": (self.state_dim,),
        }
        if self.uses_memory:
            fields |= {"x": (B,), "x2": (B,)}
        self.replay = StackedReplay(A, learn.buffer_size, fields)
        self.updates = 0
        self._last: _SlotRecord | None = None

    # ---- to be supplied by each algorithm ---------------------------------------------------
    def _decide(
        self, states: torch.Tensor, x_in: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Actions [A, N] (and the chain output x_0 [A, N, B] for LAD-TS), no gradients."""
        raise NotImplementedError

    def _update(self, batch: dict[str, torch.Tensor], ready: torch.Tensor) -> dict[str, float]:
        """One gradient step for every agent with ``ready[b]``; returns loss metrics."""
        raise NotImplementedError

    # ---- checkpoints ---------------------------------------------------------------------------
    NETWORKS: tuple[str, ...] = ()  # attribute names of the nn.Modules that make the policy

    def networks_state(self) -> dict[str, torch.Tensor]:
        """Flat state dict of every network (and the latent memory), agent-stacked."""
        state = {
            f"{name}.{key}": value.detach().clone()
            for name in self.NETWORKS
            for key, value in getattr(self, name).state_dict().items()
        }
        if self.memory is not None:
            state["memory"] = self.memory.clone()
        return state

    def load_networks_state(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.NETWORKS:
            prefix = f"{name}."
            getattr(self, name).load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        if self.memory is not None and "memory" in state:
            self.memory.copy_(state["memory"])

    # ---- the per-slot loop --------------------------------------------------------------------
    def _states(self, view: SlotView, first_only: bool = False) -> torch.Tensor:
        return torch.from_numpy(
            observe(
                view.system,
                view.task_mbit[:, :1] if first_only else view.task_mbit,
                view.backlog,
                view.last_load,
                scaling=self.switches.state_scaling,
                with_load=self.switches.inslot_load_in_state,
            )
        )

    def _memory_rows(self, t: int) -> torch.Tensor | None:
        if self.memory is None:
            return None
        return self.memory[t] if self.switches.memory_per_slot else self.memory

    def act(self, view: SlotView) -> np.ndarray:
        states = self._states(view)
        rows = self._memory_rows(view.t)
        x_in = rows.clone() if rows is not None else None  # B1 fix: a copy, not a view
        mask = None  # no server down: skip masking altogether
        if not view.available.all():
            shape = (self.n_agents, states.shape[1], self.n_actions)
            mask = torch.from_numpy(np.broadcast_to(view.available, shape).copy())
        with torch.inference_mode():  # no autograd bookkeeping at all (same kernels, same bits)
            actions, x0 = self._decide(states, x_in, mask)
        valid = torch.from_numpy(view.valid)
        x_out = None
        if rows is not None and x0 is not None:
            x_out = latent_to_memory(x0, self.switches.memory_pre_softmax)
            np.copyto(rows.numpy(), x_out.numpy(), where=view.valid[:, :, None])  # rows[valid] = …
        self._last = _SlotRecord(states, x_in, x_out, actions, valid)
        return actions.numpy()

    def learn(self, view: SlotView, outcome: SlotOutcome, next_view: SlotView) -> dict[str, float]:
        """Store this slot's transitions and run the per-slot update (§2.5).

        ``next_view`` is slot t+1 as the environment stands after the queue update (Q), so the
        last task of each agent gets its true next state (B3 fix) or, in reference mode, the
        authors' one: slot t+1's first task with all backlogs read as zero.
        """
        record = self._last
        if record is None:
            raise RuntimeError("learn() must follow act() for the same slot")
        reward = -torch.from_numpy(outcome.delay_s).float()
        if self.switches.reward_scaling:
            reward = reward / STATE_SCALE_S
        self._store(record, reward, next_view)
        metrics: dict[str, float] = {}
        ready = self.replay.size > self.cfg.warmup
        if bool(ready.any()):
            for _ in range(self.cfg.updates_per_slot):
                metrics = self._update(
                    self.replay.sample(self.cfg.batch_size, self.generator), ready
                )
                self.updates += 1
        return metrics

    def _store(self, record: _SlotRecord, reward: torch.Tensor, next_view: SlotView) -> None:
        """Pack this slot's valid transitions into replay rows, in numpy (pure copies).

        Row (b, n) holds s, a, r, s′ (and x, x′ for LAD-TS) where s′ is the same agent's next
        task (t, n+1) (§1.6) — the next row, cyclically, as ``torch.roll`` gave it — except for
        the agent's last valid task, whose s′ is its first task of slot t+1.
        """
        valid = record.valid.numpy()
        A, N = valid.shape
        agent, task = np.nonzero(valid)  # agent-major, as the buffer groups them
        if agent.size == 0:
            return
        nxt = (task + 1) % N
        is_last = task == valid.sum(axis=1)[agent] - 1
        if not self.switches.boundary_fix:
            next_view = replace(
                next_view,
                backlog=np.zeros_like(next_view.backlog),
                last_load=np.zeros_like(next_view.last_load),
            )
        first_next = self._states(next_view, first_only=True)[:, 0].numpy()
        replay = self.replay
        rows = np.empty((agent.size, replay.width), dtype=np.float32)

        def put(name: str, value: np.ndarray) -> None:
            lo, hi = replay.column(name)
            rows[:, lo:hi] = value.reshape(agent.size, hi - lo)

        def with_next(field: np.ndarray, first: np.ndarray) -> np.ndarray:
            after = field[agent, nxt]
            after[is_last] = first[agent[is_last]]
            return after

        s = record.states.numpy()
        put("s", s[agent, task])
        put("a", record.actions.numpy()[agent, task].astype(np.float32))
        put("r", reward.numpy()[agent, task])
        put("s2", with_next(s, first_next))
        if self.memory is not None:
            # B1: the authors buffer views of the memory, so "x" ends up being the output.
            x_rec = record.x_in if self.switches.copy_fix else record.x_out
            assert x_rec is not None
            x = x_rec.numpy()
            next_rows = self._memory_rows(next_view.t)
            assert next_rows is not None
            put("x", x[agent, task])
            put("x2", with_next(x, next_rows[:, 0].numpy()))
        replay.add_rows(agent, rows)
