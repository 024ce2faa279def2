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
        # The three StackedLinear layers' own operations, without three module calls.
        l1, l2, l3 = self.l1, self.l2, self.l3
        h = torch.baddbmm(l1.bias, x, l1.weight).relu_()
        h = torch.baddbmm(l2.bias, h, l2.weight).relu_()
        return torch.baddbmm(l3.bias, h, l3.weight)


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


_FAST_ADAM = hasattr(torch, "_fused_adam_")  # False once the private kernel call fails


def clear_grads(opt: torch.optim.Optimizer) -> None:
    """``opt.zero_grad(set_to_none=True)`` without its per-call Python overhead."""
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = None


def adam_step(opt: torch.optim.Optimizer) -> None:
    """``opt.step()`` for a fused CPU Adam, calling the same two kernels directly.

    On these small tensors ``Adam.step`` spends several times longer in Python (grouping,
    checks, hooks, profiler labels) than in its fused kernel. This does exactly what its fused path does (the step
    counters ``+= 1``, then ``torch._fused_adam_`` with the group's hyper-parameters on the
    optimiser's own state tensors), so the result is bit-identical; anything else (first
    step, a parameter without a gradient, another Adam flavour, hooks) goes through
    ``opt.step()``.
    """
    from torch.optim import optimizer as optim_module

    global _FAST_ADAM
    if not _FAST_ADAM:  # this torch's private API differs: the public step, always
        opt.step()
        return
    hooked = (
        getattr(opt, "_optimizer_step_pre_hooks", True)
        or getattr(opt, "_optimizer_step_post_hooks", True)
        or getattr(optim_module, "_global_optimizer_pre_hooks", True)
        or getattr(optim_module, "_global_optimizer_post_hooks", True)
    )
    if type(opt) is not torch.optim.Adam or hooked or len(opt.param_groups) != 1:
        opt.step()
        return
    group = opt.param_groups[0]
    params = group["params"]
    if (
        not group["fused"]
        or group["amsgrad"]
        or group["maximize"]
        or group["capturable"]
        or group["differentiable"]
        or group["decoupled_weight_decay"]
        or torch.is_tensor(group["lr"])
        or getattr(opt, "grad_scale", None) is not None
        or getattr(opt, "found_inf", None) is not None
    ):
        opt.step()
        return
    states = [opt.state.get(p) for p in params]
    if any(not st or p.grad is None for p, st in zip(params, states, strict=True)):
        opt.step()  # lazy state initialisation, or a parameter left without a gradient
        return
    steps = [st["step"] for st in states]
    beta1, beta2 = group["betas"]
    with torch.no_grad():
        torch._foreach_add_(steps, 1)
        try:
            _fused_adam(params, steps, group, states, beta1, beta2)
        except (AttributeError, TypeError, RuntimeError):  # a torch whose kernel differs
            torch._foreach_sub_(steps, 1)
            _FAST_ADAM = False
            opt.step()


def _fused_adam(
    params: list[torch.Tensor],
    steps: list[torch.Tensor],
    group: dict,
    states: list[dict],
    beta1: float,
    beta2: float,
) -> None:
    """The fused CPU Adam kernel, as ``Adam.step`` calls it (torch 2.x, the pinned one)."""
    torch._fused_adam_(
        params,
        [p.grad for p in params],
        [st["exp_avg"] for st in states],
        [st["exp_avg_sq"] for st in states],
        [],
        steps,
        amsgrad=False,
        lr=group["lr"],
        beta1=beta1,
        beta2=beta2,
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )
