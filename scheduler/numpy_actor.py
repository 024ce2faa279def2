"""One-task scheduling decisions in NumPy: the learner's own networks, without torch's per-call cost.

The daemon decides one task at a time, inside its event loop. Torch spends a few microseconds
per operator on tensors this small, and the LADN reverse chain (Eqn. (10), I = 5 steps of a
3-layer MLP) is about fifty operators: ~0.3 ms a decision. The same arithmetic on NumPy
arrays takes a fraction of that. The arrays are *views* of the learner's parameters (shared
storage), so in-place training steps (Adam) and checkpoint loads (``load_state_dict`` copies
in place) are seen at once; nothing is copied or refreshed. The caller serialises decisions
and training (the agent holds one lock around both).
"""

from __future__ import annotations

import numpy as np
import torch

from dedgeai.scheduler.dqn_ts import DQNTS
from dedgeai.scheduler.dsac import SACTS
from dedgeai.scheduler.lad_ts import LADTS
from dedgeai.scheduler.learner import SlotLearner
from dedgeai.scheduler.nets import StackedMLP


def _view(param: torch.Tensor) -> np.ndarray:
    """Agent 0's slice of a stacked parameter, sharing the parameter's storage."""
    return param.detach()[0].numpy()


class _MLP:
    """d_in -> hidden -> ReLU -> hidden -> ReLU -> d_out (nets.StackedMLP, agent 0)."""

    def __init__(self, net: StackedMLP) -> None:
        self.w1, self.b1 = _view(net.l1.weight), _view(net.l1.bias)[0]
        self.w2, self.b2 = _view(net.l2.weight), _view(net.l2.bias)[0]
        self.w3, self.b3 = _view(net.l3.weight), _view(net.l3.bias)[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        h = np.maximum(h @ self.w2 + self.b2, 0.0)
        return h @ self.w3 + self.b3


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


class NumpyActor:
    """Scores of one state for a single-agent learner: LAD/D2SAC x_0, SAC logits, DQN Q."""

    def __init__(self, learner: SlotLearner, rng: np.random.Generator) -> None:
        if learner.n_agents != 1:
            raise ValueError("NumpyActor serves a single agent's learner (n_agents = 1)")
        self.rng = rng
        self.kind = "lad" if isinstance(learner, LADTS) else learner.name
        if isinstance(learner, LADTS):
            actor = learner.actor
            self.noise_start = learner.noise_start or learner.memory is None
            self.eps_softmax = actor.eps_softmax
            self.n_actions, emb = actor.n_actions, actor.emb_dim
            l1 = actor.eps_net.l1
            w1, b = _view(l1.weight), self.n_actions  # w1 [B + E + sd, H]: x, step, state
            self.w_x, self.w_t, self.w_s = w1[:b], w1[b : b + emb], w1[b + emb :]
            self.b1 = _view(l1.bias)[0]
            self.time_emb = actor.time_emb.numpy()  # [I, E] (a buffer, never trained)
            self.w2, self.b2 = _view(actor.eps_net.l2.weight), _view(actor.eps_net.l2.bias)[0]
            self.w3, self.b3 = _view(actor.eps_net.l3.weight), _view(actor.eps_net.l3.bias)[0]
            sr, srm1, c1, c2, std = actor._consts
            n = len(sr)
            # x_{i-1} = x_i (c1 √(1/ᾱ) + c2) − ε c1 √(1/ᾱ − 1) + σ̃_i z   (Eqn. (10), as lad_ts.py)
            self.keep = np.array([c1[i] * sr[i] + c2[i] for i in range(n)], dtype=np.float32)
            self.take = np.array([c1[i] * srm1[i] for i in range(n)], dtype=np.float32)
            self.std = np.array(std, dtype=np.float32)
        elif isinstance(learner, SACTS):
            self.mlp = _MLP(learner.actor)
        elif isinstance(learner, DQNTS):
            self.mlp = _MLP(learner.q)
        else:
            raise ValueError(f"no NumPy actor for {type(learner).__name__}")

    def scores(
        self,
        state: np.ndarray,
        x_start: np.ndarray | None = None,
        noise: np.ndarray | None = None,
        noiseless: bool = False,
    ) -> np.ndarray:
        """[B] scores for one state [sd]: softmax of them is π (DQN: argmax of them is greedy).

        LAD: ``x_start`` is X_b[n] (None, or D2SAC: fresh noise); ``noise`` [I-1, B] fixes the
        chain's z (tests); drawn from this actor's generator when None.
        """
        state = np.asarray(state, dtype=np.float32)
        if self.kind != "lad":
            return self.mlp(state)
        n_steps = self.time_emb.shape[0]
        if x_start is None or self.noise_start:
            x_start = self.rng.standard_normal(self.n_actions, dtype=np.float32)
        if noiseless:
            noise = None
        elif noise is None:
            noise = self.rng.standard_normal((n_steps - 1, self.n_actions), dtype=np.float32)
        # The state and step parts of the first layer do not change along the chain: once.
        h_st = (state @ self.w_s + self.b1) + self.time_emb @ self.w_t  # [I, H]
        x = np.asarray(x_start, dtype=np.float32)
        for i in reversed(range(n_steps)):
            h = np.maximum(h_st[i] + x @ self.w_x, 0.0)
            h = np.maximum(h @ self.w2 + self.b2, 0.0)
            eps = h @ self.w3 + self.b3
            if self.eps_softmax:
                eps = softmax(eps)  # B7: ε is a probability vector
            x = x * self.keep[i] - eps * self.take[i]
            if i > 0 and noise is not None:
                x = x + noise[i - 1] * self.std[i]
        return x


def latent_to_memory_np(x0: np.ndarray, pre_softmax: bool) -> np.ndarray:
    """learner.latent_to_memory for one row (torch's std is the unbiased one)."""
    if not pre_softmax:
        return softmax(x0)
    centred = x0 - x0.mean()
    return centred / (centred.std(ddof=1) + 1e-6)
