"""Per-agent networks with stacked weights, so that all B agents run in one batched pass.

Agents never share parameters (§1.6): agent b's weights are slice b of every tensor, and
``torch.baddbmm`` applies all agents at once (§5 "Batching is exact"). Adam is element-wise,
so one optimiser over the stacked tensors equals one optimiser per agent, provided each
agent's loss is summed (not averaged) across agents.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class StackedLinear(nn.Module):
    """``n_agents`` independent Linear layers; input [A, N, in] -> [A, N, out]."""

    def __init__(self, n_agents: int, d_in: int, d_out: int, generator: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default initialisation, per agent
        self.weight = nn.Parameter(
            (torch.rand(n_agents, d_in, d_out, generator=generator) * 2 - 1) * bound
        )
        self.bias = nn.Parameter(
            (torch.rand(n_agents, 1, d_out, generator=generator) * 2 - 1) * bound
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class StackedMLP(nn.Module):
    """d_in -> hidden -> ReLU -> hidden -> ReLU -> d_out, one independent copy per agent."""

    def __init__(
        self, n_agents: int, d_in: int, hidden: int, d_out: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.l1 = StackedLinear(n_agents, d_in, hidden, generator)
        self.l2 = StackedLinear(n_agents, hidden, hidden, generator)
        self.l3 = StackedLinear(n_agents, hidden, d_out, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(self.l2(self.l1(x).relu_()).relu_())


def sinusoidal_embedding(step: int, dim: int) -> torch.Tensor:
    """The raw sinusoid of the authors' helpers.py (no time-MLP): [sin(i·w_j), cos(i·w_j)]."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = step * freqs
    return torch.cat([angles.sin(), angles.cos()])


class VPSchedule:
    """Variance-preserving noise schedule and reverse-step constants (§2.2)."""

    def __init__(self, n_steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> None:
        i = torch.arange(1, n_steps + 1, dtype=torch.float64)
        # β_i = 1 − exp(−β_min/I − ½(β_max−β_min)(2i−1)/I²)
        self.betas = 1.0 - torch.exp(
            -beta_min / n_steps - 0.5 * (beta_max - beta_min) * (2 * i - 1) / n_steps**2
        )
        alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_recip_alphas_cumprod = torch.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = torch.sqrt(1.0 / self.alphas_cumprod - 1.0)
        self.posterior_variance = self.betas * (1.0 - prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef1 = self.betas * torch.sqrt(prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - prev) * torch.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.noise_std = torch.sqrt(self.posterior_variance)
        self.n_steps = n_steps
