"""The scorer's drawn candidates (``lad_scorer.CANDIDATES``): the law of the target is π.

Above ``CANDIDATES`` live servers the chain scores only candidates drawn from soft-greedy's π
(``proposal``) and the target is drawn from them with weights π / q (sampling-importance-
resampling). These tests check each piece of that against the full chain on the same state:
the candidates' x_0, the weights, the proposal the draws follow, the law of the target on
held-out states (total variation from π below 1e-3), the twin's batch against the daemon's
single decisions, and the twin's delay with and without candidates.
"""

from __future__ import annotations

import numpy as np
import pytest

from dedgeai.scheduler.lad_scorer import (
    CANDIDATES,
    LADScorer,
    candidate_features,
    features,
    proposal,
    synthetic,
)
from dedgeai.scheduler.online import ClusterState, TaskSpec
from dedgeai.scheduler.twin import Twin, simulate
from dedgeai.scheduler.twin_policies import Scorer, make_policy
from dedgeai.scheduler.twin_scenarios import paper


@pytest.fixture(scope="module")
def scorer() -> LADScorer:
    """A short warm start: close enough to soft-greedy that q is a good proposal."""
    scorer = LADScorer(seed=1)
    scorer.warm_start(steps=200, batch=64, sizes=(4, 8, 16, 32))
    return scorer


def _args(rng: np.random.Generator, K: int, B: int) -> tuple[np.ndarray, ...]:
    cap = rng.uniform(4, 20, (K, B))
    ok = rng.uniform(size=(K, B)) > 0.1
    ok[:, 0] = True
    backlog = np.where(rng.uniform(size=(K, B)) < 0.4, 0.0, rng.uniform(0, 30, (K, B)) * cap)
    load = rng.uniform(0, 2, (K, B)) * cap
    transfer = np.full((K, B), 0.005)
    transfer[:, 0] = 0.0
    demand, size = rng.uniform(10, 19, K), np.full(K, 0.02)
    return demand, size, backlog, load, cap, ok, transfer, np.zeros(K, dtype=np.int64)


def test_candidates_keep_their_x0_and_are_weighted_by_pi_over_q(scorer: LADScorer) -> None:
    args = _args(np.random.default_rng(3), 4, 300)
    ok = args[5]
    phi_all, finish = features(*args)
    x_all = scorer.latent(phi_all)
    phi, finish_c, index, log_q = candidate_features(*args, 64, np.random.default_rng(0))
    assert index is not None and log_q is not None and phi.shape == (4, 64, phi_all.shape[2])
    np.testing.assert_array_equal(finish_c, finish)
    x = scorer.latent(phi)
    np.testing.assert_allclose(x, np.take_along_axis(x_all, index, axis=1), atol=1e-4)
    q = proposal(finish, ok)
    np.testing.assert_allclose(log_q, np.log(np.take_along_axis(q, index, axis=1)))
    assert np.take_along_axis(ok, index, axis=1).all()  # only live servers are drawn
    got = scorer.candidate_probs(phi, index, log_q, ok)
    for r in range(4):
        w = np.exp(x[r] - log_q[r])
        expected = np.bincount(index[r], weights=w / w.sum(), minlength=300)
        np.testing.assert_allclose(got[r], expected, rtol=1e-5, atol=1e-9)
    assert (got[~ok] == 0.0).all()
    np.testing.assert_allclose(got.sum(axis=1), 1.0)


def test_candidates_are_drawn_from_the_proposal() -> None:
    """Many draws on one state: each server's share of the candidates is q's."""
    args = _args(np.random.default_rng(4), 1, 40)
    _, finish = features(*args)
    q = proposal(finish, args[5])[0]
    rng = np.random.default_rng(5)
    draws = [candidate_features(*args, 32, rng)[2] for _ in range(3000)]
    share = np.bincount(np.concatenate(draws).ravel(), minlength=40) / (3000 * 32)
    np.testing.assert_allclose(share, q, atol=0.004)


def test_few_live_servers_get_the_exact_pi(scorer: LADScorer) -> None:
    """A probed state (3 live of 1,024): no draw, the chain on the live servers only."""
    args = list(_args(np.random.default_rng(6), 2, 1024))
    ok = np.zeros((2, 1024), dtype=bool)
    ok[:, [0, 7, 900]] = True
    ok[1, 7] = False
    args[5] = ok
    phi, _, index, log_q = candidate_features(*args, CANDIDATES)
    assert phi.shape[1] == 3 and log_q is None
    full = scorer.probs(features(*args)[0], ok)
    np.testing.assert_allclose(scorer.candidate_probs(phi, index, log_q, ok), full, atol=1e-6)
    demand, size, backlog, load, cap, _, transfer, _ = args  # one daemon decision, row 0
    state = ClusterState(0, backlog[0], load[0], cap[0], ok[0], transfer[0])
    single = scorer.state_probs(TaskSpec(float(demand[0]), float(size[0])), state)
    np.testing.assert_allclose(single, full[0], atol=1e-6)


def _law(scorer: LADScorer, phi: np.ndarray, finish: np.ndarray, ok: np.ndarray, M: int):
    """π and the law of the target of M candidates (SIR): P(j) = M q_j w_j E[1 / (w_j + S)],
    w = π / q and S the weights of M - 1 other draws (its expectation sampled, seeded)."""
    rng = np.random.default_rng(7)
    pi, q = scorer.probs(phi, ok), proposal(finish, ok)
    law = np.zeros_like(pi)
    for r in range(pi.shape[0]):
        w = np.where(q[r] > 0, pi[r] / np.where(q[r] > 0, q[r], 1.0), 0.0)
        others = w[rng.choice(q.shape[1], size=(4000, M - 1), p=q[r])].sum(axis=1)
        law[r] = M * q[r] * w * (1.0 / (w[:, None] + others[None, :])).mean(axis=1)
    return pi, law


@pytest.mark.parametrize("B", [256, 1024])
def test_the_target_follows_pi_within_1e3_on_held_out_states(scorer: LADScorer, B: int) -> None:
    phi, finish, ok = synthetic(np.random.default_rng(12345), 12, B)
    pi, law = _law(scorer, phi, finish, ok, CANDIDATES or B)
    tv = 0.5 * np.abs(law - pi).sum(axis=1)
    assert tv.max() < 1e-3, f"total variation {tv.max():.1e} (mean {tv.mean():.1e})"


def test_twin_batch_is_the_daemon_decision_path(scorer: LADScorer) -> None:
    """At 256 boxes (candidates drawn) the twin's batch is ``state_probs`` row by row, on
    the same gossip views with the same draws."""
    policy = Scorer(scorer, seed=0, batched=True)
    twin = Twin(paper(256, load=0.9, n_tasks=3000), policy, seed=0)
    twin.run()
    origins, tasks = np.array([0, 3, 5, 3]), np.array([10, 11, 12, 13])
    now = float(twin.t_at[2000])
    policy.candidate_rng = np.random.default_rng(11)
    batch = policy.probs_batch(twin, origins, tasks, now)
    rng = np.random.default_rng(11)
    for r, (o, k) in enumerate(zip(origins.tolist(), tasks.tolist(), strict=True)):
        state: ClusterState = twin.view_state(o, k, now)
        task: TaskSpec = twin.task_spec(k)
        single = scorer.state_probs(task, state, CANDIDATES, rng)
        np.testing.assert_allclose(single, batch[r], rtol=1e-5, atol=1e-9)
        assert np.count_nonzero(single) <= (CANDIDATES or 256) < 256


def test_candidates_keep_the_twins_delay(scorer: LADScorer) -> None:
    """128 boxes, load 0.9: the mean delay with candidates is the full chain's (±5 %)."""
    sc = paper(128, load=0.9, n_tasks=4000)
    ideal = simulate(sc, make_policy("omniscient"), seed=2).mean_s
    full = simulate(sc, Scorer(scorer, seed=2, batched=True, top=None), seed=2).mean_s
    drawn = simulate(sc, Scorer(scorer, seed=2, batched=True), seed=2).mean_s
    assert abs(drawn / full - 1.0) < 0.05, f"{drawn / ideal:.3f} vs {full / ideal:.3f} x ideal"
