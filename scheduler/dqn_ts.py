"""DQN-TS (§3.1): per-server Q-networks, fixed ε-greedy, hard target copy every 200 updates."""

from __future__ import annotations

from dataclasses import replace

import torch

from dedgeai.scheduler.config import EnvConfig, LearnConfig, Switches
from dedgeai.scheduler.dsac import sample_actions
from dedgeai.scheduler.learner import SlotLearner
from dedgeai.scheduler.nets import StackedMLP


class DQNTS(SlotLearner):
    name = "dqn"
    NETWORKS = ("q", "q_target")

    def __init__(
        self,
        env: EnvConfig,
        learn: LearnConfig,
        switches: Switches,
        seed: int,
        n_agents: int | None = None,
    ) -> None:
        scaling = switches.dqn_scaling
        switches = replace(switches, state_scaling=scaling, reward_scaling=scaling)
        super().__init__(env, learn, switches, seed, n_agents)
        self.q = StackedMLP(
            self.n_agents, self.state_dim, learn.hidden, self.n_actions, self.generator
        )
        self.q_target = StackedMLP(
            self.n_agents, self.state_dim, learn.hidden, self.n_actions, self.generator
        )
        self.q_target.load_state_dict(self.q.state_dict())
        self.q_target.requires_grad_(False)
        self.opt = torch.optim.Adam(self.q.parameters(), lr=learn.dqn_lr, fused=True)

    def q_values(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.q(states)
        return q if mask is None else q.masked_fill(~mask, float("-inf"))

    def _decide(
        self, states: torch.Tensor, x_in: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            greedy = self.q_values(states, mask).argmax(-1)
            # ε-greedy with the torch generator, so the task stream is never consumed (§3.5).
            explore = torch.rand(greedy.shape, generator=self.generator) < self.cfg.dqn_epsilon
            allowed = torch.ones(*greedy.shape, self.n_actions) if mask is None else mask.float()
            uniform = sample_actions(allowed / allowed.sum(-1, keepdim=True), self.generator)
            actions = torch.where(explore, uniform, greedy)
        return actions, None

    def _update(self, batch: dict[str, torch.Tensor], ready: torch.Tensor) -> dict[str, float]:
        s, s2, r = batch["s"], batch["s2"], batch["r"]
        a = batch["a"].long().unsqueeze(-1)
        with torch.no_grad():
            y = r + self.cfg.gamma * self.q_target(s2).max(-1).values  # r + γ max_a Q̄(s′, a)
        q = self.q(s).gather(-1, a).squeeze(-1)
        loss = (((q - y) ** 2).mean(1) * ready.float()).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if (self.updates + 1) % self.cfg.dqn_target_every == 0:
            self.q_target.load_state_dict(self.q.state_dict())
        return {"losses/q": float(loss.detach()) / float(ready.sum().clamp(min=1))}
