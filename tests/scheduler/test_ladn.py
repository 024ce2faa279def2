"""LADN constants (§2.2) and batched decisions equal per-task decisions (§5)."""

import pytest
import torch

from dedgeai.scheduler.config import LearnConfig
from dedgeai.scheduler.lad_ts import LADN
from dedgeai.scheduler.nets import StackedMLP, VPSchedule, sinusoidal_embedding


def test_vp_schedule_constants() -> None:
    s = VPSchedule(5)
    assert s.betas.tolist() == pytest.approx(
        [0.19587, 0.45882, 0.63578, 0.75488, 0.83503], abs=1e-5
    )
    assert s.alphas_cumprod.tolist() == pytest.approx(
        [0.80413, 0.43518, 0.15850, 0.03885, 0.00641], abs=1e-5
    )
    assert s.sqrt_recip_alphas_cumprod.tolist() == pytest.approx(
        [1.1152, 1.5159, 2.5118, 5.0733, 12.4909], abs=1e-4
    )
    assert s.sqrt_recipm1_alphas_cumprod.tolist() == pytest.approx(
        [0.4935, 1.1393, 2.3042, 4.9738, 12.4508], abs=1e-4
    )
    assert s.posterior_variance.tolist() == pytest.approx(
        [0, 0.15911, 0.42674, 0.66091, 0.80777], abs=1e-5
    )
    assert s.posterior_mean_coef1.tolist() == pytest.approx(
        [1.0, 0.7284, 0.4984, 0.3127, 0.1657], abs=1e-4
    )
    assert s.posterior_mean_coef2.tolist() == pytest.approx(
        [0, 0.2551, 0.4051, 0.4335, 0.3929], abs=1e-4
    )
    # noise std per reverse step, i = 5..1 in the paper's numbering (§7)
    assert s.noise_std.flip(0).tolist() == pytest.approx(
        [0.899, 0.813, 0.653, 0.399, 0.0], abs=1e-3
    )


def test_time_embedding_is_the_raw_sinusoid() -> None:
    emb = sinusoidal_embedding(3, 16)
    assert emb.shape == (16,)
    assert emb[0].item() == pytest.approx(torch.sin(torch.tensor(3.0)).item())
    assert emb[8].item() == pytest.approx(torch.cos(torch.tensor(3.0)).item())


def test_eps_network_has_the_papers_size() -> None:
    net = StackedMLP(1, 20 + 16 + 22, 20, 20, torch.Generator().manual_seed(0))
    assert sum(p.numel() for p in net.parameters()) == 58 * 20 + 20 + 20 * 20 + 20 + 20 * 20 + 20


def test_batched_chain_equals_one_task_at_a_time() -> None:
    A, N, B, sd = 4, 7, 6, 8
    g = torch.Generator().manual_seed(1)
    ladn = LADN(A, sd, B, LearnConfig(), g)
    s = torch.randn(A, N, sd, generator=g)
    x = torch.randn(A, N, B, generator=g)
    noise = torch.randn(4, A, N, B, generator=g)
    batched = ladn.chain(s, x, g, noise)
    for a in range(A):
        single_agent = LADN(1, sd, B, LearnConfig(), torch.Generator())
        single_agent.load_state_dict(
            {k: v[a : a + 1] if v.dim() == 3 else v for k, v in ladn.state_dict().items()}
        )
        for n in range(N):
            one = single_agent.chain(
                s[a : a + 1, n : n + 1], x[a : a + 1, n : n + 1], g, noise[:, a : a + 1, n : n + 1]
            )
            assert torch.allclose(one[0, 0], batched[a, n], atol=1e-5)


def test_chain_is_reparameterised_and_differentiable() -> None:
    g = torch.Generator().manual_seed(0)
    ladn = LADN(2, 5, 4, LearnConfig(), g)
    out = ladn.chain(torch.randn(2, 3, 5), torch.randn(2, 3, 4), g)
    torch.softmax(out, -1)[..., 0].sum().backward()
    assert ladn.eps_net.l1.weight.grad is not None and ladn.eps_net.l1.weight.grad.abs().sum() > 0
