"""The scheduling policy as the agent daemon uses it: one server's agent, online.

- ``OnlinePolicy.decide(states, mask, task_index)`` scores one task or a batch in one pass,
  never picks a masked (down) server, and keeps this server's latent memory X_b[n].
- Rewards arrive later (when a task's result is back): ``decide`` records a pending
  transition per task id, ``complete(task_id, delay_s)`` fills in its reward (``abandon``
  drops it: no reward); its next state is the next decision this agent makes.
  ``train_step()`` runs one SAC/DQN update when warm, rolled back if it yields NaN/inf.
- NaN/inf never reaches the networks, the replay buffer or a checkpoint: such a state is
  refused by ``decide``, such a transition is dropped before the buffer, such a step undone.
- Checkpoints are a torch file of tensors plus a JSON config string, read with
  ``weights_only=True``; one made for another number of servers or another state layout is
  refused with a message saying what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dedgeai.scheduler.checkpoints import (
    CHECKPOINT_FORMAT,
    StateLayout,
    config_from_dict,
    load_checkpoint,
    save_checkpoint,
    select_agent,
)
from dedgeai.scheduler.config import EnvConfig, LearnConfig, Switches
from dedgeai.scheduler.dqn_ts import DQNTS
from dedgeai.scheduler.dsac import SACTS, masked_probs
from dedgeai.scheduler.env import (
    DEMAND_GCYCLES_SCALE,
    STATE_SCALE_S,
    TASK_MBIT_SCALE,
    state_dim,
)
from dedgeai.scheduler.errors import (
    CheckpointError,
    ConfigurationError,
    CorruptCheckpointError,
    WarmStartCancelled,
)
from dedgeai.scheduler.lad_ts import D2SACTS, LADTS
from dedgeai.scheduler.learner import SlotLearner, latent_to_memory
from dedgeai.scheduler.numpy_actor import NumpyActor, latent_to_memory_np
from dedgeai.scheduler.transitions import DelayedTransitions

POLICY_CLASSES: dict[str, type[SlotLearner]] = {
    "lad": LADTS,
    "d2sac": D2SACTS,
    "sac": SACTS,
    "dqn": DQNTS,
}


@dataclass(frozen=True)
class Decision:
    actions: np.ndarray  # [K] target server per task
    probs: np.ndarray  # [K, B] the policy's action probabilities (DQN: one-hot of greedy)


class OnlinePolicy:
    """One server's scheduling agent for the daemon (agent index ``agent``)."""

    def __init__(
        self,
        method: str,
        env: EnvConfig,
        agent: int,
        switches: Switches | None = None,
        learn: LearnConfig | None = None,
        seed: int = 0,
    ) -> None:
        if method not in POLICY_CLASSES:
            raise ConfigurationError(
                f"unknown learned policy {method!r}; choose from {', '.join(POLICY_CLASSES)}"
            )
        env.validate()
        if not 0 <= agent < env.n_servers:
            raise ConfigurationError(f"agent index {agent} outside 0..{env.n_servers - 1}")
        self.method, self.env, self.agent = method, env, agent
        self.switches = switches or Switches()
        self.learn_cfg = learn or LearnConfig()
        self.learner = POLICY_CLASSES[method](env, self.learn_cfg, self.switches, seed, n_agents=1)
        self.layout = StateLayout(
            env.n_servers,
            state_dim(env.n_servers, self.switches.inslot_load_in_state),
            self.switches.inslot_load_in_state,
            self.switches.state_scaling,
        )
        # r = −delay (/ 10 s with B6); float32 overflow gives −inf, dropped before the buffer
        self.transitions = DelayedTransitions("r", self._reward)
        self.trained_steps = 0
        self.rejected_updates = 0  # training steps rolled back (NaN/inf losses or weights)
        # Deployment exploration draws from its own stream: sampling mode is left untouched.
        self._explore_rng = np.random.default_rng([seed, agent, 0x5EED])
        # One-task argmax decisions (the daemon's) run on NumPy views of the same parameters.
        memory = self.learner._memory_rows(0)
        # X_b[n] of this agent as a NumPy view (shared storage): [max_tasks, B].
        self._memory_view = memory[0].numpy() if memory is not None else None
        self._numpy_actor = NumpyActor(self.learner, np.random.default_rng([seed, agent, 0xC4A1]))

    # ---- state --------------------------------------------------------------------------------
    def build_states(
        self,
        task_mbit: np.ndarray,
        demand_gcycles: np.ndarray,
        backlog_gcycles: np.ndarray,
        load_gcycles: np.ndarray,
        capacity_ghz: np.ndarray,
    ) -> np.ndarray:
        """States [K, state_dim] from telemetry, in the layout this policy was trained with."""
        if np.size(task_mbit) == 1 and self.switches.state_scaling:
            # One task (the daemon's case): the same numbers in a few NumPy calls.
            B = self.env.n_servers
            out = np.empty((1, self.layout.state_dim), dtype=np.float32)
            out[0, 0] = float(np.asarray(task_mbit).reshape(-1)[0]) / TASK_MBIT_SCALE
            out[0, 1] = float(np.asarray(demand_gcycles).reshape(-1)[0]) / DEMAND_GCYCLES_SCALE
            seconds = np.asarray(capacity_ghz, dtype=np.float64) * STATE_SCALE_S
            out[0, 2 : 2 + B] = backlog_gcycles / seconds
            if self.switches.inslot_load_in_state:
                out[0, 2 + B :] = load_gcycles / seconds
            return out
        task_mbit = np.atleast_1d(np.asarray(task_mbit, dtype=np.float64))
        demand = np.atleast_1d(np.asarray(demand_gcycles, dtype=np.float64))
        if self.switches.state_scaling:
            per_task = [task_mbit / TASK_MBIT_SCALE, demand / DEMAND_GCYCLES_SCALE]
            shared = [backlog_gcycles / capacity_ghz / STATE_SCALE_S]
            load = load_gcycles / capacity_ghz / STATE_SCALE_S
        else:
            per_task, shared, load = (
                [task_mbit, demand],
                [np.asarray(backlog_gcycles, dtype=np.float64)],
                load_gcycles,
            )
        if self.switches.inslot_load_in_state:
            shared.append(np.asarray(load, dtype=np.float64))
        shared_row = np.concatenate(shared)
        k = task_mbit.size
        return np.concatenate(
            [np.stack(per_task, axis=1), np.broadcast_to(shared_row, (k, shared_row.size))], axis=1
        ).astype(np.float32)

    # ---- decisions ----------------------------------------------------------------------------
    def decide(
        self,
        states: np.ndarray,
        mask: np.ndarray | None = None,
        task_index: np.ndarray | None = None,
        task_ids: list[str] | None = None,
        greedy: bool = False,
        explore_epsilon: float = 0.0,
        mean_path: bool = False,
    ) -> Decision:
        """Choose a server for each of K tasks (states [K, sd] or [sd]); masked servers never.

        ``task_index`` is each task's index n within the current interval (it selects X_b[n]);
        ``task_ids`` records pending transitions to be completed by :meth:`complete`.

        By default the action is sampled from π (the simulator's training behaviour). With
        ``greedy`` (deployment) it is the most likely allowed action, argmax of π (DQN: of Q),
        except that with probability ``explore_epsilon`` a uniformly drawn allowed server is
        taken instead, so online learning still sees other actions. With ``mean_path``
        (deployment, one task) the action is drawn from π of LAD's noiseless chain, the π its
        warm start fitted (SAC: its π; DQN: argmax of Q); a batch (K > 1) is sampled as in
        training.
        """
        states = np.atleast_2d(np.asarray(states, dtype=np.float32))
        K, B = states.shape[0], self.env.n_servers
        if states.shape[1] != self.layout.state_dim:
            raise ConfigurationError(
                f"state has {states.shape[1]} features; this policy expects {self.layout.state_dim}"
            )
        if not np.isfinite(states).all():  # it would poison X_b[n] and the replay buffer
            raise ConfigurationError("state holds NaN/inf: sanitise it before deciding")
        if (greedy or mean_path) and K == 1:
            return self._decide_one(
                states[0], mask, task_index, task_ids, explore_epsilon if greedy else 0.0, greedy
            )
        s = torch.from_numpy(states)
        allowed = (
            torch.ones(K, B, dtype=torch.bool)
            if mask is None
            else torch.as_tensor(np.broadcast_to(mask, (K, B)).copy(), dtype=torch.bool)
        )
        if not bool(allowed.any(dim=1).all()):
            raise ConfigurationError("every server is masked for some task: nothing can run it")
        index = np.arange(K) if task_index is None else np.asarray(task_index)
        index = torch.as_tensor(index % self.env.max_tasks, dtype=torch.long)
        learner = self.learner
        x_in = None
        rows = learner._memory_rows(0) if learner.memory is not None else None
        if rows is not None:
            x_in = rows[0, index].clone()[None]
        actions, x0 = learner._decide(s[None], x_in, allowed[None])
        with torch.no_grad():
            if isinstance(learner, DQNTS):
                if greedy:
                    scores = learner.q_values(s[None], allowed[None])[0]
                    actions = self._greedy(scores, allowed, explore_epsilon)[None]
                probs = torch.nn.functional.one_hot(actions[0], B).float()
            else:
                probs = (
                    masked_probs(x0, allowed[None])[0]
                    if x0 is not None
                    else learner.probs(s[None], allowed[None])[0]
                )
                if greedy:
                    actions = self._greedy(probs, allowed, explore_epsilon)[None]
        if rows is not None and x0 is not None:
            rows[0, index] = latent_to_memory(x0[0], self.switches.memory_pre_softmax)
        if task_ids is not None:
            x = x_in[0].numpy() if x_in is not None else None
            self._record(task_ids, states, actions[0].numpy(), x)
        return Decision(actions[0].numpy().copy(), probs.numpy().copy())

    def _decide_one(
        self,
        state: np.ndarray,
        mask: np.ndarray | None,
        task_index: np.ndarray | None,
        task_ids: list[str] | None,
        explore_epsilon: float,
        argmax: bool = True,
    ) -> Decision:
        """``decide(greedy=True)`` (or ``mean_path=True``, ``argmax`` False: drawn from π)
        for one task, in NumPy: the same networks, a fraction of the time (numpy_actor.py)."""
        B = self.env.n_servers
        allowed = np.ones(B, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if allowed.shape != (B,) or not allowed.any():
            raise ConfigurationError("every server is masked for some task: nothing can run it")
        index = 0 if task_index is None else int(np.asarray(task_index).reshape(-1)[0])
        index %= self.env.max_tasks
        rows = self._memory_view
        x_in = rows[index].copy() if rows is not None else None
        scores = self._numpy_actor.scores(state, x_in, noiseless=True)
        dqn = isinstance(self.learner, DQNTS)
        if dqn:  # no π: argmax of Q
            best = int(np.argmax(np.where(allowed, scores, -np.inf)))
        else:
            # One exp for π (masked) and X_b[n] (softmax(x_0), unmasked): each NumPy call on
            # arrays this small costs microseconds, more with cold caches.
            weights = np.exp(scores - scores.max())
            masked = np.where(allowed, weights, 0.0)
            best = int(np.argmax(masked))
            cdf = np.cumsum(masked)
            probs = (masked / cdf[-1]).astype(np.float32)
        action = best
        if not argmax and not dqn:
            # Inverse CDF on one uniform draw: rng.choice costs ~20 µs per call.
            drawn = int(np.searchsorted(cdf, self._explore_rng.random() * cdf[-1], side="right"))
            action = drawn if drawn < B and allowed[drawn] else best  # masked: probability 0
        elif explore_epsilon > 0.0 and self._explore_rng.random() < explore_epsilon:
            live = allowed.astype(np.float64)
            action = int(self._explore_rng.choice(B, p=live / live.sum()))
        if rows is not None:  # LAD's X_b[n]
            if self.switches.memory_pre_softmax:
                rows[index] = latent_to_memory_np(scores, pre_softmax=True)
            else:
                rows[index] = weights / weights.sum()  # = latent_to_memory_np(scores, False)
        if task_ids is not None:
            x = None if x_in is None else x_in[None]
            self._record(task_ids[:1], state[None], np.array([action]), x)
        if dqn:  # one-hot of the action taken (explored or not)
            probs = np.zeros(B, dtype=np.float32)
            probs[action] = 1.0
        return Decision(np.array([action]), probs[None])

    def _greedy(
        self, scores: torch.Tensor, allowed: torch.Tensor, explore_epsilon: float
    ) -> torch.Tensor:
        """Argmax of ``scores`` [K, B] over allowed servers; ε of the time a uniform allowed one."""
        best = torch.where(allowed, scores, torch.full_like(scores, -torch.inf)).argmax(-1)
        if explore_epsilon <= 0.0:
            return best
        K = scores.shape[0]
        explore = torch.as_tensor(self._explore_rng.random(K) < explore_epsilon)
        if not bool(explore.any()):
            return best
        weights = allowed.double().numpy()
        uniform = torch.as_tensor(
            [int(self._explore_rng.choice(w.size, p=w / w.sum())) for w in weights]
        )
        return torch.where(explore, uniform, best)

    # ---- delayed rewards ----------------------------------------------------------------------
    def _record(
        self, task_ids: list[str], s: np.ndarray, actions: np.ndarray, x: np.ndarray | None
    ) -> None:
        """Pending transitions, kept as NumPy (no torch call on the decision path); each
        decision is the previous one's next state (§1.6: the same agent's next task)."""
        for k, task_id in enumerate(task_ids):
            fields = {"s": s[k], "a": np.float32(actions[k])}
            following = {"s2": s[k]}
            if x is not None:
                fields["x"], following["x2"] = x[k], x[k]
            self.transitions.record(task_id, fields, following)

    def _reward(self, delay_s: float) -> np.float32:
        return np.float32(-delay_s / (STATE_SCALE_S if self.switches.reward_scaling else 1.0))

    def complete(self, task_id: str, delay_s: float) -> bool:
        """Give a recorded decision its reward (−delay); False if the id is unknown, or if
        the delay is not a finite number ≥ 0 (the transition is then dropped)."""
        return self.transitions.complete(task_id, delay_s)

    def abandon(self, task_id: str) -> bool:
        """Drop a recorded decision without a reward (its task failed or was cancelled:
        the time until then says nothing about the server); False if the id is unknown."""
        return self.transitions.abandon(task_id)

    @property
    def dropped_transitions(self) -> int:
        """Completed transitions holding NaN/inf, not buffered."""
        return self.transitions.dropped

    def _flush(self) -> None:
        while self.transitions.ready:
            entry = self.transitions.ready.popleft()
            values = {
                k: torch.as_tensor(np.asarray(v, dtype=np.float32))[None] for k, v in entry.items()
            }
            self.learner.replay.add(torch.zeros(1, dtype=torch.long), **values)

    def set_pacing(self, warmup: int, batch_size: int) -> None:
        """Take the deployment's warm-up and batch size over the ones a checkpoint was saved
        with: they pace online learning on this box, they do not shape the networks."""
        self.learn_cfg = replace(self.learn_cfg, warmup=warmup, batch_size=batch_size)
        self.learner.cfg = replace(self.learner.cfg, warmup=warmup, batch_size=batch_size)

    @property
    def buffered(self) -> int:
        self._flush()
        return int(self.learner.replay.size[0])

    def train_step(self) -> dict[str, float] | None:
        """One update when the buffer holds more than the warm-up; None otherwise, or when
        the update was rolled back (NaN/inf losses or weights; counted in ``rejected_updates``)."""
        learner = self.learner
        self._flush()
        ready = learner.replay.size > self.learn_cfg.warmup
        if not bool(ready.any()):
            return None
        metrics = learner.guarded_update(
            learner.replay.sample(self.learn_cfg.batch_size, learner.generator), ready
        )
        if metrics is None:
            self.rejected_updates += 1
            return None
        learner.updates += 1
        self.trained_steps += 1
        return metrics

    # ---- warm start ---------------------------------------------------------------------------
    def imitate(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        mask: np.ndarray | None = None,
        steps: int = 200,
        batch_size: int = 256,
        lr: float = 3e-3,
        should_stop: Callable[[], bool] | None = None,
    ) -> float:
        """Behaviour cloning: fit π(·|s) (DQN: softmax of Q) to ``actions`` by cross-entropy.

        ``actions``: the teacher's choices [K], or its action probabilities [K, B] (a soft
        teacher). A fresh actor knows nothing; cloning a sound heuristic (the greedy
        earliest-finish rule) first lets online learning start from sensible decisions.
        Returns the last loss. ``should_stop`` is asked before every step; when it says so,
        :class:`WarmStartCancelled` is raised (an agent stopping during its warm start).
        """
        learner = self.learner
        s = torch.as_tensor(states, dtype=torch.float32)
        if np.ndim(actions) == 2:
            target = torch.as_tensor(actions, dtype=torch.float32)
        else:
            target = torch.nn.functional.one_hot(
                torch.as_tensor(actions, dtype=torch.long), self.env.n_servers
            ).float()
        allowed = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        if isinstance(learner, DQNTS):
            params = list(learner.q.parameters())
        else:
            params = list(learner.actor.parameters())  # type: ignore[attr-defined]
        opt = torch.optim.Adam(params, lr=lr)
        g = learner.generator
        loss = torch.tensor(float("nan"))
        noisy = False
        for _ in range(steps):
            if should_stop is not None and should_stop():
                raise WarmStartCancelled("the warm start was stopped")
            idx = torch.randint(0, s.shape[0], (min(batch_size, s.shape[0]),), generator=g)
            sb, qb = s[idx][None], target[idx]
            mb = None if allowed is None else allowed[idx][None]
            if isinstance(learner, DQNTS):
                logp = torch.log_softmax(learner.q_values(sb, mb), dim=-1)
            elif isinstance(learner, LADTS):
                x, noisy = None, learner.noise_start
                if learner.memory is not None:
                    # X_b[n] holds whatever the last decision at index n left (a peaked π
                    # after a while, uniform at first): clone on the whole range.
                    logits = torch.randn(sb.shape[1], self.env.n_servers, generator=g)
                    sharpness = 8.0 * torch.rand(sb.shape[1], 1, generator=g)
                    x = latent_to_memory(logits * sharpness, self.switches.memory_pre_softmax)
                    x = x[None]
                # LAD clones its chain's mean path, the one argmax deployment follows.
                logp = torch.log(learner.probs(sb, x, mb, noiseless=not noisy) + 1e-8)
            else:
                logp = torch.log(learner.probs(sb, mb) + 1e-8)  # type: ignore[attr-defined]
            # Noisy chain (D2SAC): expected accuracy, since one sample often gives the target
            # a probability near 0 and its log would swamp the gradient. Otherwise
            # cross-entropy: expected accuracy is content with the target tied with a
            # runner-up. Masked servers have π = 0 and target 0: their log term is dropped.
            logp = torch.where(qb > 0, logp[0], torch.zeros_like(logp[0]))
            loss = 1.0 - (qb * logp.exp()).sum(-1).mean() if noisy else -(qb * logp).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if isinstance(learner, DQNTS):
            learner.q_target.load_state_dict(learner.q.state_dict())
        return float(loss.detach())

    # ---- checkpoints --------------------------------------------------------------------------
    def config(self) -> dict[str, object]:
        return {
            "format": CHECKPOINT_FORMAT,
            "method": self.method,
            "agent": self.agent,
            "n_agents": 1,
            "layout": asdict(self.layout),
            "env": asdict(self.env),
            "switches": self.switches.as_dict(),
            "learn": asdict(self.learn_cfg),
            "trained_steps": self.trained_steps,
        }

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, self.config(), self.learner.networks_state())

    @classmethod
    def load(
        cls, path: str | Path, agent: int, expect: StateLayout | None = None, seed: int = 0
    ) -> OnlinePolicy:
        """Load a policy saved by ``save`` or by ``dedgeai sim train`` (agent row ``agent``)."""
        config, state = load_checkpoint(path)
        try:
            env = config_from_dict(EnvConfig, config["env"])
            switches = config_from_dict(Switches, config["switches"])
            learn = config_from_dict(LearnConfig, config["learn"])
            method = str(config["method"])
            n_agents = int(config["n_agents"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(
                f"{path}: checkpoint config is incomplete ({exc})"
            ) from exc
        policy = cls(method, env, agent, switches, learn, seed)
        if expect is not None and expect != policy.layout:
            raise CheckpointError(
                f"{path}: checkpoint made for {policy.layout.n_servers} servers with state layout "
                f"{asdict(policy.layout)}, but this cluster needs {asdict(expect)}"
            )
        if n_agents != 1:
            if agent >= n_agents:
                raise CheckpointError(f"{path}: checkpoint has {n_agents} agents, no agent {agent}")
            template = policy.learner.networks_state()
            state = select_agent(state, agent, n_agents, switches.memory_per_slot, template)
        try:
            policy.learner.load_networks_state(state)
        except (RuntimeError, KeyError) as exc:
            raise CorruptCheckpointError(
                f"{path}: tensors do not fit a {method} policy: {exc}"
            ) from exc
        policy.trained_steps = int(config.get("trained_steps", 0))
        return policy
