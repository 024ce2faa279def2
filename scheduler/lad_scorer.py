"""LAD-TS with a per-server scorer: the paper's latent action diffusion, at any cluster size.

The paper's actor (``lad_ts.LADN``, §2.1) maps the whole state (every server's backlog and
load, 2 + 2B values) through 20 hidden units to B outputs. Picking the earliest finish needs a
per-server comparison that those units cannot carry for B ≫ 20 (docs/results_cluster.md §4).
Here the same reverse chain (Eqn. (10), I = 5 steps, π = softmax(x_0)) runs with a noise
predictor ε_θ applied to each server separately, with weights shared across servers:

    ε_n = ε_θ(x_n, emb(i), φ_n)            φ_n: task, server n and pooled-context features

so one network serves 8 or 1,024 boxes at O(min(B, CANDIDATES) · H² + B) per decision (above
``CANDIDATES`` live servers the chain scores drawn candidates), and permuting the servers
permutes π. Masked (down) servers get x_0 = −∞. Read top to bottom: features (φ), the ε
network and chain (torch, for cloning), its NumPy twin (decisions), the warm start (cloning
soft-greedy on synthetic states, as ``ClusterScheduler._warm_start``), save/load.

Times enter φ relative to the best estimated finish f_min of the state (the soft-greedy
teacher's own temperature scale, ``cluster_state.soft_greedy``), so the network sees the same
numbers for a quiet cluster of fast boxes and a busy one of slow boxes; log f_min keeps the
absolute scale. Online learning (discrete SAC, §2.4, with per-server critics) is in
``lad_scorer_learning.py``.

``DEFAULT_CHECKPOINT`` is the packaged default (``ClusterScheduler`` loads it for
``policy = "lad"``, ``actor = "scorer"`` when given no checkpoint): the warm start on the
paper's spread, its critics fitted, then trained in the twin. Regenerate it with
``python tools/make_default_scorer.py`` (docs/results_cluster.md §4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dedgeai.scheduler.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from dedgeai.scheduler.cluster_state import (
    MIN_TEMPERATURE_S,
    ClusterState,
    TaskSpec,
    soft_greedy,
)
from dedgeai.scheduler.env import TASK_MBIT_SCALE
from dedgeai.scheduler.errors import CheckpointError, CorruptCheckpointError, WarmStartCancelled
from dedgeai.scheduler.nets import VPSchedule, sinusoidal_embedding

FEATURES = (
    "backlog_s",  # backlog_n / speed_n, ÷ f_min
    "load_s",  # in-interval load_n / speed_n, ÷ f_min
    "service_s",  # this task's demand / speed_n, ÷ f_min
    "transfer_s",  # forwarding estimate to n (0 for self), ÷ f_min
    "finish_gap",  # (f_n − f_min) ÷ f_min: the estimated finish against the best one
    "speed_rel",  # speed_n ÷ mean speed of the live servers
    "is_self",  # 1 for the deciding box
    "mean_finish",  # pooled: mean estimated finish of the live servers, ÷ f_min
    "log_fmin",  # pooled: log10 of f_min in seconds (the absolute time scale)
    "size",  # the task's request size, Mbit ÷ TASK_MBIT_SCALE
)
N_FEATURES = len(FEATURES)
DEFAULT_CHECKPOINT = Path(__file__).parent / "data" / "lad_scorer_default.pt"
CLIP = 30.0  # relative times beyond 30 × f_min: π there is below e^-90 for the teacher
# Servers the chain scores per decision, drawn from ``proposal`` (None: every server; docs/
# results_cluster.md §4, "Cost per decision"). Up to this many live servers nothing is drawn.
CANDIDATES: int | None = 64
UNIFORM_SHARE = 0.02  # of the proposal: every live server can be a candidate


# ==== φ: per-server features (one code path for the daemon and the twin) ========================
def features(
    demand_steps: np.ndarray,
    size_mbit: np.ndarray,
    backlog_steps: np.ndarray,
    load_steps: np.ndarray,
    capacity: np.ndarray,
    available: np.ndarray,
    transfer_s: np.ndarray,
    self_index: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """φ [K, B, F] (float32) and the estimated finish f [K, B] (inf where down) of K states.

    Per task [K]: demand, size, deciding box. Per server [K, B]: backlog, load, speed, up,
    transfer time (D1–D5, as ``estimated_finish_s``). Masked servers get φ = 0.
    """
    args = (demand_steps, size_mbit, backlog_steps, load_steps, capacity, available)
    phi, finish, _, _ = candidate_features(*args, transfer_s, self_index)
    return phi, finish


def proposal(finish: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """q [K, B]: where the candidates of a decision are drawn from. Soft-greedy's π (the warm
    start's teacher, closed form in f) mixed with ``UNIFORM_SHARE`` of the uniform one, so
    that every live server can be drawn whatever the actor has learned since."""
    n_up = ok.sum(axis=1, keepdims=True)
    return (1.0 - UNIFORM_SHARE) * soft_greedy(finish) + np.where(ok, UNIFORM_SHARE / n_up, 0.0)


def candidate_features(
    demand_steps: np.ndarray,
    size_mbit: np.ndarray,
    backlog_steps: np.ndarray,
    load_steps: np.ndarray,
    capacity: np.ndarray,
    available: np.ndarray,
    transfer_s: np.ndarray,
    self_index: np.ndarray,
    top: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``features`` of ``top`` candidate servers per state, drawn (with replacement) from
    ``proposal``: φ [K, M, F], f [K, B], their indices [K, M] and log q there [K, M].
    ``top`` None: φ of every server, indices None. No more live servers than ``top`` in
    any state: φ of the live ones (padded with masked ones), log q None.

    The pooled features (f_min, mean finish, mean speed) are taken over every live server
    first, so a candidate's φ, and therefore its x_0, is the one ``features`` gives it;
    ``LADScorer.candidate_probs`` weights each by π / q (sampling-importance-resampling).
    """
    ok = np.asarray(available, dtype=bool)
    if top is not None and ok.shape[0] == 1:  # one decision on a few live servers (probed):
        live = np.flatnonzero(ok[0])  # φ of those alone (the pooled features are theirs)
        own = np.flatnonzero(live == self_index[0])
        if live.size <= top and live.size < ok.shape[1] and own.size:
            args = (backlog_steps, load_steps, capacity, available, transfer_s)
            phi, f, _, _ = candidate_features(
                demand_steps, size_mbit, *(np.asarray(a)[:, live] for a in args), own
            )
            finish = np.full(ok.shape, np.inf)
            finish[0, live] = f[0]
            return phi, finish, live[None], None
    cap = np.where(ok, np.maximum(capacity, 1e-9), 1.0)
    demand = np.asarray(demand_steps, dtype=np.float64)[:, None]
    finish = (np.asarray(backlog_steps, dtype=np.float64) + load_steps + demand) / cap
    finish += transfer_s
    finish[~ok] = np.inf
    best = finish.min(axis=1, keepdims=True)
    scale = np.maximum(best, MIN_TEMPERATURE_S)
    n_up = ok.sum(axis=1, keepdims=True)
    mean_cap = np.where(ok, cap, 0.0).sum(axis=1, keepdims=True) / n_up
    mean_finish = np.where(ok, finish, 0.0).sum(axis=1, keepdims=True) / n_up
    K, B = ok.shape
    rows = np.arange(K)
    index = log_q = None
    n_max = int(n_up.max())
    if top is not None and n_max <= top and n_max < B:  # few live servers (a probed state):
        if K == 1:  # all of them, exact π
            index = np.flatnonzero(ok[0])[None]
        else:
            index = np.argsort(~ok, axis=1, kind="stable")[:, :n_max]
    elif top is not None and top < n_max:
        if rng is None:
            raise ValueError("drawing candidates needs a random generator")
        q = proposal(finish, ok)
        cdf = np.cumsum(q, axis=1)
        cdf /= cdf[:, -1:]
        cdf += rows[:, None]  # one sorted array for every row: row r spans [r, r + 1]
        u = rng.random((K, top)) + rows[:, None]
        index = np.searchsorted(cdf.ravel(), u.ravel(), side="right").reshape(K, top)
        index -= rows[:, None] * B
        np.minimum(index, B - 1, out=index)  # rounding at a row's end
        index = np.where(q[rows[:, None], index] > 0, index, np.argmax(q, 1)[:, None])
        log_q = np.log(q[rows[:, None], index])
    if index is not None:
        at = (rows[:, None], index)  # fancy indexing: cheaper per call than take_along_axis
        ok, cap, f = ok[at], cap[at], finish[at]
        backlog = np.asarray(backlog_steps, dtype=np.float64)[at]
        load = np.asarray(load_steps, dtype=np.float64)[at]
        transfer = np.broadcast_to(transfer_s, (K, B))[at]
        is_self = index == np.asarray(self_index)[:, None]
    else:
        f, backlog, load, transfer = finish, backlog_steps, load_steps, transfer_s
        is_self = np.zeros(ok.shape, dtype=bool)
        is_self[rows, np.asarray(self_index)] = True
    inv = 1.0 / scale
    phi = np.empty((*ok.shape, N_FEATURES), dtype=np.float32)
    phi[..., 0] = backlog / cap * inv
    phi[..., 1] = load / cap * inv
    phi[..., 2] = demand / cap * inv
    phi[..., 3] = transfer * inv
    phi[..., 4] = np.where(ok, f - best, 0.0) * inv
    phi[..., 5] = cap / mean_cap
    phi[..., 6] = is_self
    phi[..., 7] = mean_finish * inv
    phi[..., 8] = np.log10(scale)
    phi[..., 9] = (np.asarray(size_mbit, dtype=np.float64) / TASK_MBIT_SCALE)[:, None]
    np.clip(phi, -CLIP, CLIP, out=phi)
    phi[~ok] = 0.0
    return phi, finish, index, log_q


def state_features(
    task: TaskSpec,
    cluster: ClusterState,
    top: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``candidate_features`` of one daemon decision: φ [1, M, F], f [1, B], indices, log q."""
    return candidate_features(
        np.array([task.demand_steps]),
        np.array([task.size_mbit]),
        np.asarray(cluster.backlog_steps, dtype=np.float64)[None],
        np.asarray(cluster.interval_load_steps, dtype=np.float64)[None],
        np.asarray(cluster.capacity_steps_per_s, dtype=np.float64)[None],
        np.asarray(cluster.available, dtype=bool)[None],
        cluster.transfer()[None],
        np.array([cluster.self_index]),
        top,
        rng,
    )


# ==== ε_θ and the reverse chain, Eqn. (10) (torch: the warm start trains this) ==================
@dataclass(frozen=True)
class ScorerConfig:
    hidden: int = 32  # H
    time_emb_dim: int = 16  # as LearnConfig
    denoising_steps: int = 5  # I, as LearnConfig


class ScorerNet(nn.Module):
    """ε_θ(x_n, i, φ_n) = MLP([x_n ‖ emb(i) ‖ φ_n]) → one scalar per server, shared weights."""

    def __init__(self, cfg: ScorerConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.cfg = cfg
        d_in = 1 + cfg.time_emb_dim + N_FEATURES
        self.l1, self.l2, self.l3 = (
            nn.Linear(d_in, cfg.hidden),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.Linear(cfg.hidden, 1),
        )
        with torch.no_grad():  # seeded initialisation (nn.Linear's bounds, our generator)
            for layer in (self.l1, self.l2, self.l3):
                bound = 1.0 / np.sqrt(layer.in_features)
                layer.weight.copy_(
                    (torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound
                )
                layer.bias.copy_(
                    (torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound
                )
        sch = VPSchedule(cfg.denoising_steps)
        steps = range(cfg.denoising_steps)
        self.register_buffer(
            "time_emb", torch.stack([sinusoidal_embedding(i, cfg.time_emb_dim) for i in steps])
        )
        # x_{i−1} = x_i (c1 √(1/ᾱ_i) + c2) − ε c1 √(1/ᾱ_i − 1) + σ̃_i z   (Eqn. (10), as LADN)
        c1, c2 = sch.posterior_mean_coef1, sch.posterior_mean_coef2
        self.keep = (c1 * sch.sqrt_recip_alphas_cumprod + c2).float().tolist()
        self.take = (c1 * sch.sqrt_recipm1_alphas_cumprod).float().tolist()
        self.std = sch.noise_std.float().tolist()

    def chain(
        self, phi: torch.Tensor, x_start: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_0 [K, B] from x_I = ``x_start`` [K, B]; ``noise`` [I−1, K, B] (None: the mean path)."""
        E = self.cfg.time_emb_dim
        w = self.l1.weight  # [H, 1 + E + F]: x, step, φ
        h_phi = phi @ w[:, 1 + E :].T + self.l1.bias  # once: φ does not change along the chain
        h_t = self.time_emb @ w[:, 1 : 1 + E].T  # [I, H]
        w_x = w[:, 0]
        x = x_start
        for i in reversed(range(self.cfg.denoising_steps)):
            h = torch.relu(h_phi + h_t[i] + x[..., None] * w_x)
            eps = self.l3(torch.relu(self.l2(h)))[..., 0]
            x = x * self.keep[i] - eps * self.take[i]
            if i > 0 and noise is not None:
                x = x + noise[i - 1] * self.std[i]
        return x


# ==== the same chain in NumPy: decisions without torch's per-call cost ===========================
class LADScorer:
    """The per-server LAD actor: π for one state (the daemon) or K states (the twin)."""

    def __init__(self, cfg: ScorerConfig | None = None, seed: int = 0) -> None:
        self.cfg = cfg or ScorerConfig()
        self.seed = seed
        self.net = ScorerNet(self.cfg, torch.Generator().manual_seed(seed))
        self.cloned: dict[str, float] = {}  # warm-start figures (loss, agreement with greedy)
        self._views()

    def _views(self) -> None:
        """NumPy views of the parameters (shared storage), and h_t, the step part of layer 1,
        derived from them: called again after the warm start and a load."""
        E = self.cfg.time_emb_dim
        w1 = self.net.l1.weight.detach().numpy().T  # [1 + E + F, H]
        self.w_x, w_t, self.w_phi = w1[0], w1[1 : 1 + E], w1[1 + E :]
        self.b1 = self.net.l1.bias.detach().numpy()
        self.h_t = self.net.time_emb.numpy() @ w_t  # [I, H]; recomputed after training
        self.h_tb = self.h_t + self.b1  # [I, H]: layer 1's step part and bias, one add per step
        self.w2, self.b2 = self.net.l2.weight.detach().numpy().T, self.net.l2.bias.detach().numpy()
        self.w3 = self.net.l3.weight.detach().numpy()[0]
        self.b3 = self.net.l3.bias.detach().numpy()  # [1]
        self.keep = np.array(self.net.keep, dtype=np.float32)
        self.take = np.array(self.net.take, dtype=np.float32)
        self.std = np.array(self.net.std, dtype=np.float32)
        # ``latent``'s fused form: a constant-1 unit (column H) carries layer 2's and 3's
        # biases through the matmuls, and layer 3 is pre-scaled by −take_i for each step.
        H, n_steps = self.cfg.hidden, self.cfg.denoising_steps
        f32 = np.float32
        self.f_phi = np.concatenate([self.w_phi, np.zeros((self.w_phi.shape[0], 1), f32)], 1)
        self.f_step = np.concatenate([self.h_tb, np.ones((n_steps, 1), f32)], 1)  # [I, H + 1]
        self.f_x = np.append(self.w_x, f32(0.0))
        self.f_w2 = np.zeros((H + 1, H + 1), f32)
        self.f_w2[:H, :H], self.f_w2[H, :H], self.f_w2[H, H] = self.w2, self.b2, 1.0
        self.f_w3 = -self.take[:, None] * np.append(self.w3, self.b3)[None]  # [I, H + 1]

    def latent(
        self,
        phi: np.ndarray,
        x_start: np.ndarray | None = None,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """x_0 [K, B] for φ [K, B, F]: the reverse chain of Eqn. (10).

        ``x_start``: x_I (None: 0, the uniform latent a fresh daemon LAD starts X_b[n] at);
        ``noise`` [I−1, K, B]: the z of every step (None: 0, the mean path the clone fitted).
        """
        K, B, F = phi.shape
        # Servers as rows of 2-D float32 arrays (one BLAS call per layer) with the fused
        # weights of ``_views``: few NumPy calls per step, which is what a decision on a few
        # servers (a probed state) costs; two buffers reused along the chain.
        h_phi = phi.reshape(K * B, F) @ self.f_phi  # φ does not change along the chain
        h = np.empty_like(h_phi)
        h2 = np.empty_like(h_phi)
        x = None if x_start is None else x_start.astype(np.float32).reshape(K * B)
        for i in reversed(range(self.cfg.denoising_steps)):
            np.add(h_phi, self.f_step[i], out=h)
            if x is not None:  # x_I = 0 (no ``x_start``): nothing to add at the first step
                h += np.multiply.outer(x, self.f_x)
            np.maximum(h, 0.0, out=h)
            np.matmul(h, self.f_w2, out=h2)
            np.maximum(h2, 0.0, out=h2)
            eps = h2 @ self.f_w3[i]  # −take_i · ε
            if x is not None:
                x *= self.keep[i]
                eps += x
            x = eps
            if i > 0 and noise is not None:
                x += noise[i - 1].reshape(K * B) * self.std[i]
        assert x is not None
        return x.reshape(K, B)

    def probs(self, phi: np.ndarray, available: np.ndarray, **kw: np.ndarray | None) -> np.ndarray:
        """π [K, B] = softmax(x_0) over the live servers (masked: exactly 0)."""
        x0 = np.where(available, self.latent(phi, **kw), -np.inf)
        weights = np.exp(x0 - x0.max(axis=1, keepdims=True))
        return weights / weights.sum(axis=1, keepdims=True)

    def candidate_probs(
        self,
        phi: np.ndarray,
        index: np.ndarray | None,
        log_q: np.ndarray | None,
        available: np.ndarray,
    ) -> np.ndarray:
        """π̂ [K, B] from ``candidate_features``: each drawn candidate weighted by π / q ∝
        exp(x_0) / q, the weights of a server's draws summed, every other server 0. A
        target drawn from π̂ is sampling-importance-resampling from π: its law is π up to
        O(χ²(π‖q) / M) (``index`` None: φ of every server, π itself, ``probs``)."""
        if index is None:
            return self.probs(phi, available)
        K, B = np.shape(available)
        if log_q is None:  # every live server is a candidate: π itself
            out = np.zeros((K, B))
            at = (np.arange(K)[:, None], index)
            out[at] = self.probs(phi, np.asarray(available, dtype=bool)[at])
            return out
        logw = self.latent(phi) - log_q  # candidates are live: q > 0 only there
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        flat = (index + np.arange(K)[:, None] * B).ravel()
        return np.bincount(flat, weights=w.ravel(), minlength=K * B).reshape(K, B)

    def state_probs(
        self,
        task: TaskSpec,
        cluster: ClusterState,
        top: int | None = CANDIDATES,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """π [B] for one daemon decision; above ``top`` live servers, π̂ on ``top`` drawn
        candidates (``candidate_probs``; ``rng`` None: this scorer's own, seeded by its seed
        and the deciding box, so that boxes sharing a checkpoint draw apart)."""
        if rng is None:
            own: dict[int, np.random.Generator] = self.__dict__.setdefault("candidate_rngs", {})
            rng = own.get(cluster.self_index)
            if rng is None:
                rng = own[cluster.self_index] = np.random.default_rng(
                    [self.seed, 0xCA, cluster.self_index]
                )
        phi, _, index, log_q = state_features(task, cluster, top, rng)
        up = np.asarray(cluster.available, dtype=bool)[None]
        return self.candidate_probs(phi, index, log_q, up)[0]

    # ---- warm start: clone soft-greedy on synthetic states ----------------------------------------
    def warm_start(
        self,
        capacities: np.ndarray | None = None,
        steps: int = 1500,
        batch: int = 128,
        sizes: tuple[int, ...] = (4, 8, 16, 32, 64),
        lr: float = 3e-3,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, float]:
        """Fit π to soft-greedy's π (cross-entropy) on synthetic states of mixed sizes.

        The weights are shared across servers, so cloning on clusters of 4–64 boxes serves
        any size. ``capacities``: the cluster's measured speeds (each synthetic box draws one,
        ±15 %); None: the paper's relative spread U[10, 50]. Returns the last loss and the
        argmax agreement with greedy on 512 held-out states per size. ``should_stop`` is
        asked before every step (:class:`WarmStartCancelled`: an agent stopping).
        """
        rng = np.random.default_rng([self.seed, 0x5C0E])
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 20)
        loss = torch.tensor(float("nan"))
        for step in range(steps):
            if should_stop is not None and should_stop():
                raise WarmStartCancelled("the warm start was stopped")
            B = sizes[step % len(sizes)]
            phi, finish, ok = synthetic(rng, batch, B, capacities)
            teacher = torch.as_tensor(soft_greedy(finish), dtype=torch.float32)
            x0 = self.net.chain(torch.as_tensor(phi), torch.zeros(batch, B))
            allowed = torch.as_tensor(ok)
            logp = torch.log_softmax(x0.masked_fill(~allowed, float("-inf")), dim=1)
            loss = -(teacher * torch.where(allowed, logp, 0.0)).sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        self._views()
        held = np.random.default_rng([self.seed, 0xE7A1])
        agree = [self.agreement(*synthetic(held, 512, B, capacities)) for B in sizes]
        self.cloned = {"loss": loss.item(), "agreement": float(np.mean(agree)), "steps": steps}
        return self.cloned

    def agreement(self, phi: np.ndarray, finish: np.ndarray, ok: np.ndarray) -> float:
        """Share of states where argmax π is greedy's earliest finish."""
        best = np.argmax(self.probs(phi, ok), axis=1)
        return float(np.mean(best == np.argmin(finish, axis=1)))

    # ---- checkpoints ------------------------------------------------------------------------------
    def save(
        self,
        path: Path,
        extra_config: dict[str, object] | None = None,
        extra_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Atomic, and refused (``CheckpointError``) for NaN/inf weights, as every policy.
        ``extra_*``: what online learning adds (``ScorerLearning.save``: critics, ξ)."""
        config = {
            "format": CHECKPOINT_FORMAT,
            "method": "lad-scorer",
            "scorer": asdict(self.cfg),
            "seed": self.seed,
            "cloned": self.cloned,
            **(extra_config or {}),
        }
        state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        save_checkpoint(path, config, {**state, **(extra_state or {})})

    @classmethod
    def load(cls, path: Path) -> LADScorer:
        """``CheckpointError`` for another policy's file, ``CorruptCheckpointError`` for a
        damaged one (``checkpoints.load_checkpoint``). Critics in the file are left out."""
        return cls.from_checkpoint(path, *load_checkpoint(path))

    @classmethod
    def from_checkpoint(cls, path: Path, config: dict, state: dict[str, torch.Tensor]) -> LADScorer:
        """The actor of a loaded checkpoint (``load_checkpoint``'s config and tensors)."""
        if config.get("method") != "lad-scorer":
            raise CheckpointError(f"{path}: a {config.get('method')} checkpoint, not lad-scorer")
        try:
            scorer = cls(ScorerConfig(**config["scorer"]), seed=int(config["seed"]))
            mine = scorer.net.state_dict().keys()
            scorer.net.load_state_dict({k: v for k, v in state.items() if k in mine})
            scorer.cloned = dict(config["cloned"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptCheckpointError(f"{path}: {exc}") from exc
        scorer._views()
        return scorer


def synthetic(
    rng: np.random.Generator, K: int, B: int, capacities: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K random cluster states of B servers as a live cluster has them: φ, f and the mask.

    As ``ClusterScheduler._warm_start``: backlogs often empty, otherwise up to 12 s of work
    (a tenth of states up to 300 s: bursts), loads up to 3 s, 10 % of servers down.
    """
    if capacities is None:
        cap = rng.uniform(10, 50, size=(K, B)) * rng.uniform(0.1, 2.0, size=(K, 1))
    else:
        pool = np.asarray(capacities, dtype=np.float64)
        cap = rng.choice(pool, size=(K, B)) * rng.uniform(0.85, 1.15, size=(K, B))
    horizon = np.where(rng.uniform(size=(K, 1)) < 0.1, 300.0, 12.0)
    idle = rng.uniform(size=(K, B)) < 0.4
    backlog = np.where(idle, 0.0, rng.uniform(0, 1, size=(K, B)) * horizon) * cap
    quiet = rng.uniform(size=(K, B)) < 0.5
    load = np.where(quiet, 0.0, rng.uniform(0, 3, size=(K, B))) * cap
    demand = rng.uniform(5, 40, size=K)
    size = rng.uniform(0.001, 0.05, size=K)
    origin = rng.integers(0, B, K)
    ok = rng.uniform(size=(K, B)) > 0.1
    ok[np.arange(K), origin] = True
    transfer = rng.uniform(0.0, 0.05, size=(K, B))
    transfer[np.arange(K), origin] = 0.0
    phi, finish = features(demand, size, backlog, load, cap, ok, transfer, origin)
    return phi, finish, ok
