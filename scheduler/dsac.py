"""Discrete soft actor-critic (§2.4) for B independent agents, and SAC-TS (§3.2).

The critic/temperature machinery here is shared by SAC-TS, LAD-TS and D2SAC-TS: they differ
only in the actor, passed to :meth:`DiscreteSAC.update` as a function from a batch to π.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dedgeai.scheduler.config import EnvConfig, LearnConfig, Switches
from dedgeai.scheduler.learner import SlotLearner
from dedgeai.scheduler.nets import StackedMLP, adam_step, clear_grads

LOG_EPS = 1e-8  # inside log(π + ε), as the authors
ProbsFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def masked_probs(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax over the allowed actions only; a masked action has probability exactly 0."""
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1)


def sample_actions(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """a ~ Categorical(π) for every row of probs [..., B], by inverse CDF.

    u is drawn in (0, 1], so an action of probability 0 (masked) is never returned.
    """
    u = 1.0 - torch.rand((*probs.shape[:-1], 1), generator=generator)
    cdf = probs.cumsum(-1)
    picked = (cdf < u * cdf[..., -1:]).sum(-1)
    return picked.clamp_(max=probs.shape[-1] - 1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs + LOG_EPS)).sum(-1)


class DiscreteSAC(torch.nn.Module):
    """Two critics, two targets and a temperature ξ per agent, all stacked."""

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        n_actions: int,
        cfg: LearnConfig,
        target_entropy: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        # Critics 1 and 2 (and their targets) are stacked as 2A agents: one pass evaluates both.
        self.critics = StackedMLP(2 * n_agents, state_dim, cfg.hidden, n_actions, generator)
        self.targets = StackedMLP(2 * n_agents, state_dim, cfg.hidden, n_actions, generator)
        self.targets.load_state_dict(self.critics.state_dict())
        self.targets.requires_grad_(False)
        self.n_agents = n_agents
        self.log_alpha = torch.nn.Parameter(torch.full((n_agents,), math.log(cfg.alpha_init)))
        self.target_entropy = target_entropy
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=cfg.critic_lr, fused=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, fused=True)

    def q_pair(self, net: StackedMLP, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._halves(net(torch.cat([s, s])))

    def _halves(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic 1's and critic 2's rows of a pass over the 2A stacked critics."""
        return q[: self.n_agents], q[self.n_agents :]

    def update(
        self,
        batch: dict[str, torch.Tensor],
        ready: torch.Tensor,
        probs_fn: ProbsFn,
        actor_opt: torch.optim.Optimizer,
    ) -> dict[str, float]:
        """Critics, then actor, then temperature, then targets (§2.4 order)."""
        s, s2, r = batch["s"], batch["s2"], batch["r"]
        a = batch["a"].long().unsqueeze(-1)
        weight = ready.float()  # agents whose buffer is not warm yet contribute nothing
        alpha = self.log_alpha.exp().detach()[:, None]
        s_twice = torch.cat([s, s])  # the 2A stacked critics' input, for both passes over s
        # The target needs no gradient: inference mode skips autograd's bookkeeping entirely
        # (the same kernels, so the same numbers as under no_grad).
        with torch.inference_mode():
            p2 = probs_fn(s2, batch.get("x2"))
            q_next = torch.minimum(*self.q_pair(self.targets, s2))
            # y = r + γ (Σ_a π′(a) min Q̄(s′, a) + ξ H′) — no done flag (B6)
            y = r + self.cfg.gamma * ((p2 * q_next).sum(-1) + alpha * entropy(p2))
        # Q1(s, a) and Q2(s, a): one gather over the 2A stacked critics, then its halves
        q1, q2 = self._halves(self.critics(s_twice).gather(-1, torch.cat([a, a])).squeeze(-1))
        critic_loss = ((((q1 - y) ** 2).mean(1) + ((q2 - y) ** 2).mean(1)) * weight).sum()
        clear_grads(self.critic_opt)
        critic_loss.backward()
        adam_step(self.critic_opt)

        probs = probs_fn(s, batch.get("x"))
        ent = entropy(probs)
        with torch.no_grad():
            q_min = torch.minimum(*self._halves(self.critics(s_twice)))
        # L_π = mean(−ξ H − Σ_a π(a) min Q(s, a))
        actor_loss = ((-alpha * ent - (probs * q_min).sum(-1)).mean(1) * weight).sum()
        clear_grads(actor_opt)
        actor_loss.backward()
        adam_step(actor_opt)

        with torch.no_grad():
            ent = ent.detach()
            # L_ξ = Σ_b w_b mean(H − H̄) ξ_b, gradient through ξ only: its gradient in closed
            # form, as autograd's chain rule orders it (Sum, Mul by w, Mul by the mean, Exp):
            # dL/d log ξ = (w · mean(H − H̄)) · ξ, without building and running a graph.
            self.log_alpha.grad = (
                weight * (ent - self.target_entropy).mean(1)
            ) * self.log_alpha.exp()
        adam_step(self.alpha_opt)

        with torch.no_grad():  # θ̄ ← (1−τ) θ̄ + τ θ, for ready agents only
            tau = (self.cfg.tau * weight).repeat(2).view(-1, 1, 1)
            targets = list(self.targets.parameters())
            torch._foreach_lerp_(targets, list(self.critics.parameters()), [tau] * len(targets))
        n = float(weight.sum().clamp(min=1))
        return {
            "losses/critic": float(critic_loss.detach()) / n,
            "losses/actor": float(actor_loss.detach()) / n,
            "charts/alpha": float((self.log_alpha.detach().exp() * weight).sum()) / n,
            "charts/entropy": float((ent.mean(1) * weight).sum()) / n,
        }


def target_entropy_for(switches: Switches, n_actions: int) -> float:
    """B5: the authors' −1, or a fraction of the uniform policy's entropy ln B."""
    if switches.target_entropy is None:
        return -1.0
    return switches.target_entropy * math.log(n_actions)


class SACTS(SlotLearner):
    """SAC-TS: a plain policy network s -> 20 -> 20 -> softmax(B), no latent input (§3.2)."""

    name = "sac"
    NETWORKS = ("actor", "sac")

    def __init__(
        self,
        env: EnvConfig,
        learn: LearnConfig,
        switches: Switches,
        seed: int,
        n_agents: int | None = None,
    ) -> None:
        super().__init__(env, learn, switches, seed, n_agents)
        self.actor = StackedMLP(
            self.n_agents, self.state_dim, learn.hidden, self.n_actions, self.generator
        )
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=learn.actor_lr, fused=True)
        self.sac = DiscreteSAC(
            self.n_agents,
            self.state_dim,
            self.n_actions,
            learn,
            target_entropy_for(switches, self.n_actions),
            self.generator,
        )

    def probs(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_probs(self.actor(states), mask)

    def _decide(
        self, states: torch.Tensor, x_in: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            return sample_actions(self.probs(states, mask), self.generator), None

    def _update(self, batch: dict[str, torch.Tensor], ready: torch.Tensor) -> dict[str, float]:
        return self.sac.update(batch, ready, lambda s, _x: self.probs(s), self.actor_opt)
