"""LAD-TS (§2): latent action diffusion actor + discrete SAC, one agent per edge server.

Read top to bottom: the LADN ε-network (§2.1), the reverse chain of Eqn. (10) started from
the stored latent action X_b[n] (§2.2, §2.3), the per-slot loop inherited from learner.py
(§2.5, §2.7) and the discrete SAC update from dsac.py (§2.4). D2SAC-TS (§3.3) is the same
model whose chain starts from fresh Gaussian noise at every call.
"""

from __future__ import annotations

import torch
from torch import nn

from dedgeai.scheduler.config import EnvConfig, LearnConfig, Switches
from dedgeai.scheduler.dsac import DiscreteSAC, masked_probs, sample_actions, target_entropy_for
from dedgeai.scheduler.learner import SlotLearner
from dedgeai.scheduler.nets import StackedMLP, VPSchedule, sinusoidal_embedding


# ==== LADN: the latent action diffusion network (§2.1, §2.2) ===================================
class LADN(nn.Module):
    """ε_θb(x_i, i, s) = softmax(MLP([x_i ‖ emb(i) ‖ s])) and the reverse chain, for A agents."""

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        n_actions: int,
        cfg: LearnConfig,
        generator: torch.Generator,
        eps_softmax: bool = True,
    ) -> None:
        super().__init__()
        self.n_actions, self.emb_dim = n_actions, cfg.time_emb_dim
        self.eps_softmax = eps_softmax
        self.eps_net = StackedMLP(
            n_agents, n_actions + cfg.time_emb_dim + state_dim, cfg.hidden, n_actions, generator
        )
        self.schedule = VPSchedule(cfg.denoising_steps)
        self.register_buffer(
            "time_emb",
            torch.stack(
                [sinusoidal_embedding(i, cfg.time_emb_dim) for i in range(cfg.denoising_steps)]
            ),
        )
        sch = self.schedule
        consts = [
            sch.sqrt_recip_alphas_cumprod,
            sch.sqrt_recipm1_alphas_cumprod,
            sch.posterior_mean_coef1,
            sch.posterior_mean_coef2,
            sch.noise_std,
        ]
        self._consts = [[float(v) for v in c] for c in consts]

    def chain(
        self,
        s: torch.Tensor,
        x_start: torch.Tensor,
        generator: torch.Generator,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Eqn. (10) from x_I = x_start down to x_0 (pre-softmax), reparameterised.

        ``noise`` [I-1, *x_start.shape] fixes the z of every step (tests); drawn when None.
        """
        if noise is None:
            noise = torch.randn((self.schedule.n_steps - 1, *x_start.shape), generator=generator)
        net = self.eps_net
        B, E = self.n_actions, self.emb_dim
        # Computed feature-major, [A, features, M]: the softmax over the B actions then runs
        # along a strided dimension (about 2x faster on CPU than along a contiguous one of
        # length B = 20), and the products become W^T h. Same arithmetic as [A, M, features].
        w1 = net.l1.weight.transpose(1, 2)  # [A, H, in]
        w_x, w_t, w_s = w1[:, :, :B], w1[:, :, B : B + E], w1[:, :, B + E :]
        w2, w3 = net.l2.weight.transpose(1, 2), net.l3.weight.transpose(1, 2)
        b2, b3 = net.l2.bias.transpose(1, 2), net.l3.bias.transpose(1, 2)  # [A, out, 1]
        # The state and step parts of the first layer do not change along the chain: once.
        h_s = torch.baddbmm(net.l1.bias.transpose(1, 2), w_s, s.transpose(1, 2))  # [A, H, M]
        h_t = torch.matmul(w_t, self.time_emb.T)  # [A, H, I]
        sr, srm1, c1, c2, std = self._consts
        x = x_start.transpose(1, 2)
        for i in reversed(range(self.schedule.n_steps)):
            h = torch.baddbmm(h_s + h_t[:, :, i : i + 1], w_x, x).relu_()
            h = torch.baddbmm(b2, w2, h).relu_()
            eps = torch.baddbmm(b3, w3, h)
            if self.eps_softmax:
                eps = torch.softmax(eps, dim=1)  # B7: ε is a probability vector
            # x̂_0 = √(1/ᾱ_i) x_i − √(1/ᾱ_i − 1) ε   (predict_start_from_noise, clip_denoised=False)
            # μ = coef1_i x̂_0 + coef2_i x_i          (q_posterior), folded into two scalars
            x = (x * (c1[i] * sr[i] + c2[i])).sub_(eps, alpha=c1[i] * srm1[i])
            if i > 0:  # x_{i−1} = μ + σ̃_i z; no noise at the last step
                x = x.add_(noise[i - 1].transpose(-1, -2), alpha=std[i])
        return x.transpose(1, 2)


# ==== LAD-TS ==================================================================================
class LADTS(SlotLearner):
    """Each server's actor denoises its stored latent action X_b[n] into π (§2.3)."""

    name = "lad"
    NETWORKS = ("actor", "sac")
    uses_memory = True
    noise_start = False  # D2SAC-TS: start every chain from fresh N(0, I)

    def __init__(
        self,
        env: EnvConfig,
        learn: LearnConfig,
        switches: Switches,
        seed: int,
        n_agents: int | None = None,
    ) -> None:
        super().__init__(env, learn, switches, seed, n_agents)
        self.actor = LADN(
            self.n_agents,
            self.state_dim,
            self.n_actions,
            learn,
            self.generator,
            eps_softmax=switches.eps_softmax,
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

    def latent(
        self, s: torch.Tensor, x: torch.Tensor | None, noiseless: bool = False
    ) -> torch.Tensor:
        """x_0 for states s [A, M, sd], started from x (LAD) or from noise (D2SAC).

        ``noiseless``: every z of Eqn. (10) is 0, the chain's mean path (deployment's argmax
        and its warm start; training and the simulator always sample).
        """
        if self.noise_start or x is None:
            x = torch.randn((*s.shape[:-1], self.n_actions), generator=self.generator)
        noise = None
        if noiseless:
            noise = torch.zeros((self.actor.schedule.n_steps - 1, *x.shape))
        return self.actor.chain(s, x, self.generator, noise)

    def probs(
        self,
        s: torch.Tensor,
        x: torch.Tensor | None,
        mask: torch.Tensor | None = None,
        noiseless: bool = False,
    ) -> torch.Tensor:
        return masked_probs(self.latent(s, x, noiseless), mask)  # π(·|s, x_I) = softmax(x_0)

    def _decide(
        self, states: torch.Tensor, x_in: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            x0 = self.latent(states, x_in)
            actions = sample_actions(masked_probs(x0, mask), self.generator)
        return actions, x0

    def _update(self, batch: dict[str, torch.Tensor], ready: torch.Tensor) -> dict[str, float]:
        return self.sac.update(batch, ready, self.probs, self.actor_opt)


class D2SACTS(LADTS):
    """D2SAC-TS (§3.3) under LAD-TS's setup: the chain starts from Gaussian noise every call."""

    name = "d2sac"
    uses_memory = False
    noise_start = True
