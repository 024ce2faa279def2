"""LAD-TS as a re-implementation of the authors' code *structure* from the paper and the
reference notes, not their code.

It exists only as a same-run speed reference for ``tools/bench_scheduler.py speed``: the
authors' published scripts are not on this machine, only their timings
(shared/reference/authors_code_timings.md). Written from the paper digest (shared/paper.md
§1.6, §2, §5 "Speed") and the reference notes, nothing copied. It runs the paper's LAD-TS
episode (Algorithm 1, §2.7) the way those notes say the authors' code runs it:

- one agent object per edge server, each with its own actor, two critics, two targets, a
  temperature and a ``deque(maxlen=1000)`` replay buffer sampled with ``random.sample``;
- Python loops over slots, servers and tasks; every decision is a separate batch-1 torch
  forward pass of the 5-step latent action diffusion chain, built from ``nn.Linear`` modules,
  outside ``torch.no_grad()`` (the notes: neither decision nor target pass disables autograd),
  the action drawn from ``torch.distributions.Categorical``;
- after an agent has decided all its tasks of a slot, one discrete-SAC update on 64 samples
  if its buffer holds more than 300 (critic 1, critic 2, actor, temperature, soft targets);
- the authors' semantics where they cost nothing extra: raw 22-dimensional state, the latent
  memory X[t][b][n] initialised N(0, 1) once and overwritten with π, transitions holding views
  of X (B1), the last task's next state reading Q(t+1) as zeros (B3), target entropy −1.

The environment is the project's own (``dedgeai.scheduler.env``): the same system, the same
arrival stream for a given seed, and rewards and queue updates from ``slot_outcome``, so both
schedulers play the same episode. The authors' per-task Python environment step is therefore
not in the timed loop (a few µs per task): if anything the proxy errs on the fast side.

    python tools/authors_structure.py [--episodes 1] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dedgeai.scheduler.config import LearnConfig, Preset, get_preset
from dedgeai.scheduler.env import ArrivalStream, Episode, SystemParams, make_system, slot_outcome
from dedgeai.scheduler.nets import VPSchedule

LABEL = "authors' structure (re-implemented)"
TARGET_ENTROPY = -1.0  # the authors' constant (B5)
LOG_EPS = 1e-8


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, d_out),
    )


def _time_embedding(step: torch.Tensor, dim: int) -> torch.Tensor:
    """The raw sinusoid of step i, computed on every call as a time-embedding module does."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = step.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _at(values: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Per-row schedule constant for a batch of step indices, shaped [batch, 1]."""
    return values.gather(-1, step).reshape(step.shape[0], 1)


class _NoiseNet(nn.Module):
    """ε(x_i, i, s) = softmax(MLP([x_i ‖ emb(i) ‖ s])) (§2.1, B7)."""

    def __init__(self, state_dim: int, n_actions: int, cfg: LearnConfig) -> None:
        super().__init__()
        self.emb_dim = cfg.time_emb_dim
        self.mlp = _mlp(n_actions + cfg.time_emb_dim + state_dim, cfg.hidden, n_actions)

    def forward(self, x: torch.Tensor, step: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, _time_embedding(step, self.emb_dim), state], dim=1)
        return torch.softmax(self.mlp(h), dim=-1)


class _DiffusionActor(nn.Module):
    """The reverse chain of Eqn. (10) from x_I = the stored latent action, then softmax (§2.2)."""

    def __init__(self, state_dim: int, n_actions: int, cfg: LearnConfig) -> None:
        super().__init__()
        self.eps = _NoiseNet(state_dim, n_actions, cfg)
        sch = VPSchedule(cfg.denoising_steps)
        self.n_steps = sch.n_steps
        log_var = torch.log(torch.clamp(sch.posterior_variance, min=1e-20))
        for name, value in (
            ("sqrt_recip", sch.sqrt_recip_alphas_cumprod),
            ("sqrt_recipm1", sch.sqrt_recipm1_alphas_cumprod),
            ("coef1", sch.posterior_mean_coef1),
            ("coef2", sch.posterior_mean_coef2),
            ("log_var", log_var),
        ):
            self.register_buffer(name, value.float())

    def forward(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        for i in reversed(range(self.n_steps)):
            step = torch.full((batch,), i, dtype=torch.long)
            eps = self.eps(x, step, state)
            x0 = _at(self.sqrt_recip, step) * x - _at(self.sqrt_recipm1, step) * eps
            mean = _at(self.coef1, step) * x0 + _at(self.coef2, step) * x
            not_last = (1.0 - (step == 0).float()).reshape(batch, 1)
            x = mean + not_last * (0.5 * _at(self.log_var, step)).exp() * torch.randn_like(x)
        return torch.softmax(x, dim=-1)


class _Agent:
    """One edge server's LAD-TS agent: actor, critics, targets, ξ and its own replay buffer."""

    def __init__(self, state_dim: int, n_actions: int, cfg: LearnConfig, rng: random.Random):
        self.cfg, self.rng = cfg, rng
        self.actor = _DiffusionActor(state_dim, n_actions, cfg)
        self.critic_1 = _mlp(state_dim, cfg.hidden, n_actions)
        self.critic_2 = _mlp(state_dim, cfg.hidden, n_actions)
        self.target_1 = _mlp(state_dim, cfg.hidden, n_actions)
        self.target_2 = _mlp(state_dim, cfg.hidden, n_actions)
        self.target_1.load_state_dict(self.critic_1.state_dict())
        self.target_2.load_state_dict(self.critic_2.state_dict())
        self.log_alpha = torch.tensor(math.log(cfg.alpha_init), requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_1_opt = torch.optim.Adam(self.critic_1.parameters(), lr=cfg.critic_lr)
        self.critic_2_opt = torch.optim.Adam(self.critic_2.parameters(), lr=cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.buffer: deque[tuple] = deque(maxlen=cfg.buffer_size)

    def take_action(self, state: list[float], x: np.ndarray) -> tuple[int, np.ndarray]:
        """One decision: a batch-1 pass of the whole chain, with autograd on (as the notes)."""
        probs = self.actor(
            torch.tensor([state], dtype=torch.float), torch.tensor(np.array([x]), dtype=torch.float)
        )
        action = torch.distributions.Categorical(probs).sample()
        return int(action.item()), probs.detach().numpy()

    def update(self) -> None:
        """One discrete-SAC step on ``batch_size`` samples: critics, actor, ξ, targets (§2.4)."""
        cfg = self.cfg
        s, a, x, r, s2, x2 = zip(*self.rng.sample(self.buffer, cfg.batch_size), strict=True)
        s = torch.tensor(np.array(s), dtype=torch.float)
        a = torch.tensor(np.array(a)).view(-1, 1)
        x = torch.tensor(np.array(x), dtype=torch.float)
        r = torch.tensor(np.array(r), dtype=torch.float).view(-1, 1)
        s2 = torch.tensor(np.array(s2), dtype=torch.float)
        x2 = torch.tensor(np.array(x2), dtype=torch.float)

        p2 = self.actor(s2, x2)
        h2 = -torch.sum(p2 * torch.log(p2 + LOG_EPS), dim=1, keepdim=True)
        q_next = torch.min(self.target_1(s2), self.target_2(s2))
        v2 = torch.sum(p2 * q_next, dim=1, keepdim=True) + self.log_alpha.exp() * h2
        y = r + cfg.gamma * v2  # no done flag (B6)
        for critic, opt in ((self.critic_1, self.critic_1_opt), (self.critic_2, self.critic_2_opt)):
            loss = torch.mean(nn.functional.mse_loss(critic(s).gather(1, a), y.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()

        p = self.actor(s, x)
        h = -torch.sum(p * torch.log(p + LOG_EPS), dim=1, keepdim=True)
        q_min = torch.min(self.critic_1(s), self.critic_2(s))
        actor_loss = torch.mean(
            -self.log_alpha.exp() * h - torch.sum(p * q_min, dim=1, keepdim=True)
        )
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = torch.mean((h - TARGET_ENTROPY).detach() * self.log_alpha.exp())
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        for target, critic in ((self.target_1, self.critic_1), (self.target_2, self.critic_2)):
            for p_t, p_c in zip(target.parameters(), critic.parameters(), strict=True):
                p_t.data.copy_(p_t.data * (1.0 - cfg.tau) + p_c.data * cfg.tau)


@dataclass(frozen=True)
class ProxyEpisode:
    episode: int
    seconds: float
    cpu_seconds: float  # process CPU time, all threads
    n_decisions: int
    updates: int
    mean_delay_s: float


class AuthorsStructureLADTS:
    """B agents and the latent memory X[t][b][n] (§2.3), playing episodes task by task."""

    def __init__(self, preset: Preset, system: SystemParams, seed: int) -> None:
        env = preset.env
        self.preset, self.system = preset, system
        torch.manual_seed(seed)  # the authors never seed; the proxy does, to be reproducible
        rng = random.Random(seed)
        B, N = env.n_servers, env.max_tasks
        self.agents = [_Agent(2 + B, B, preset.learn, rng) for _ in range(B)]
        self.memory = np.random.RandomState(seed).randn(env.n_slots, B, N, B)
        self.updates = 0
        self._episodes = 0

    def run_episode(
        self, episode: Episode, between_slots: Callable[[int], None] | None = None
    ) -> ProxyEpisode:
        """One episode; ``between_slots(t)`` runs after slot t, outside the timing (the
        benchmark interleaves our own episodes there, so that both see the same machine load)."""
        started, cpu_started = time.perf_counter(), time.process_time()
        paused, cpu_paused = 0.0, 0.0
        env, system, X = self.preset.env, self.system, self.memory
        B, N = env.n_servers, env.max_tasks
        demand = system.demand
        backlog = np.zeros(B)
        no_backlog = [0.0] * B  # B3: the last task's s' reads Q(t+1) before it is computed
        delays: list[np.ndarray] = []
        updates_before = self.updates
        for t in range(env.n_slots - 1):
            queue = backlog.tolist()
            counts, sizes = episode.n_tasks[t], episode.task_mbit[t]
            actions = np.zeros((B, N), dtype=np.int64)
            decided = np.zeros((B, N), dtype=bool)
            for b in range(B):
                agent = self.agents[b]
                pending = []
                for n in range(int(counts[b])):
                    state = [float(sizes[b, n]), float(demand[n]), *queue]
                    x = X[t, b, n]  # a view (B1): overwritten by π just below
                    action, probs = agent.take_action(state, x)
                    X[t, b, n] = probs
                    actions[b, n] = action
                    if n + 1 < counts[b]:
                        s2 = [float(sizes[b, n + 1]), float(demand[n + 1]), *queue]
                        x2 = X[t, b, n + 1]
                    else:
                        s2 = [float(episode.task_mbit[t + 1, b, 0]), float(demand[0]), *no_backlog]
                        x2 = X[t + 1, b, 0]
                    pending.append((state, action, x, n, s2, x2))
                # Rewards from the project's environment: servers 0..b have decided, and a task's
                # delay depends only on decisions before it in the b-then-n order (§1.3).
                decided[b, : counts[b]] = True
                delay = slot_outcome(system, backlog, sizes, decided, actions, env.slot_s).delay_s
                for state, action, x, n, s2, x2 in pending:
                    agent.buffer.append((state, action, x, -float(delay[b, n]), s2, x2))
                delays.append(delay[b, : counts[b]])
                if len(agent.buffer) > self.preset.learn.warmup:
                    agent.update()
                    self.updates += 1
            backlog = slot_outcome(
                system, backlog, sizes, episode.valid[t], actions, env.slot_s
            ).next_backlog
            if between_slots is not None:
                wall, cpu = time.perf_counter(), time.process_time()
                between_slots(t)
                paused += time.perf_counter() - wall
                cpu_paused += time.process_time() - cpu
        self._episodes += 1
        all_delays = np.concatenate(delays)
        return ProxyEpisode(
            episode=self._episodes,
            seconds=time.perf_counter() - started - paused,
            cpu_seconds=time.process_time() - cpu_started - cpu_paused,
            n_decisions=int(all_delays.size),
            updates=self.updates - updates_before,
            mean_delay_s=float(all_delays.mean()),
        )


def run(
    preset: Preset,
    seed: int,
    episodes: int,
    between_slots: Callable[[int], None] | None = None,
) -> list[ProxyEpisode]:
    """``episodes`` episodes on the stream ``ArrivalStream(preset.env, seed)``, as simulate.train;
    ``between_slots`` is called between the slots of the last episode only."""
    system = make_system(preset.env)
    stream = ArrivalStream(preset.env, seed)
    proxy = AuthorsStructureLADTS(preset, system, seed)
    return [
        proxy.run_episode(stream.next_episode(), between_slots if e == episodes - 1 else None)
        for e in range(episodes)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for e in run(get_preset("paper"), args.seed, args.episodes):
        print(
            f"{LABEL}: episode {e.episode}: {e.seconds:.1f} s ({e.cpu_seconds:.1f} s CPU), "
            f"{e.n_decisions} decisions, "
            f"{e.updates} updates, mean delay {e.mean_delay_s:.3f} s"
        )


if __name__ == "__main__":
    main()
