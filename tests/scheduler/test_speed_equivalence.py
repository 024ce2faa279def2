"""The speed paths compute exactly what the plain formulations did: equal bits, not approximately.

Each test keeps the plain formulation (the code before the speed work) as its reference.
"""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from dedgeai.scheduler.config import Switches, get_preset
from dedgeai.scheduler.dsac import DiscreteSAC, entropy
from dedgeai.scheduler.env import ArrivalStream, make_system, observe
from dedgeai.scheduler.heuristics import SlotView
from dedgeai.scheduler.learner import SlotLearner
from dedgeai.scheduler.nets import StackedMLP, adam_step, clear_grads
from dedgeai.scheduler.replay import StackedReplay
from dedgeai.scheduler.simulate import make_method, run_episode, seed_everything


def _equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_adam_step_equals_optimizer_step() -> None:
    g = torch.Generator().manual_seed(0)
    net = StackedMLP(3, 7, 5, 4, g)
    ref = copy.deepcopy(net)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in (net, ref)]
    for _ in range(4):
        x = torch.randn(3, 6, 7, generator=g)
        for m, opt, fast in ((net, opts[0], True), (ref, opts[1], False)):
            clear_grads(opt) if fast else opt.zero_grad(set_to_none=True)
            (m(x) ** 2).sum().backward()
            adam_step(opt) if fast else opt.step()
        _equal_states(net.state_dict(), ref.state_dict())
        for sa, sb in zip(opts[0].state.values(), opts[1].state.values(), strict=True):
            _equal_states(sa, sb)


def test_adam_step_falls_back_to_the_public_step_when_the_private_kernel_differs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another torch whose private fused kernel takes other arguments: the public step
    # runs, the step counters are not counted twice, and the fast path stays off.
    from dedgeai.scheduler import nets

    g = torch.Generator().manual_seed(1)
    net = StackedMLP(2, 5, 4, 3, g)
    ref = copy.deepcopy(net)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in (net, ref)]

    def changed_signature(*args: object, **kwargs: object) -> None:
        raise TypeError("_fused_adam_() got an unexpected keyword argument")

    monkeypatch.setattr(nets, "_fused_adam", changed_signature)  # Adam.step's stays
    monkeypatch.setattr(nets, "_FAST_ADAM", True)
    for _ in range(3):
        x = torch.randn(2, 4, 5, generator=g)
        for m, opt, fast in ((net, opts[0], True), (ref, opts[1], False)):
            opt.zero_grad(set_to_none=True)
            (m(x) ** 2).sum().backward()
            adam_step(opt) if fast else opt.step()
    _equal_states(net.state_dict(), ref.state_dict())
    for sa, sb in zip(opts[0].state.values(), opts[1].state.values(), strict=True):
        _equal_states(sa, sb)
    assert nets._FAST_ADAM is False


def _reference_add(replay: StackedReplay, agent: torch.Tensor, **values: torch.Tensor) -> None:
    """StackedReplay.add as it was, in torch."""
    counts = torch.bincount(agent, minlength=replay.n_agents)
    order = torch.argsort(agent, stable=True)
    agent_sorted = agent[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(agent.numel()) - starts[agent_sorted]
    slot = (replay._ptr[agent_sorted] + rank) % replay.capacity
    packed = torch.cat(
        [values[name].reshape(agent.numel(), -1).float() for name in replay.fields], dim=1
    )
    replay.storage[agent_sorted, slot] = packed[order]
    replay._ptr = (replay._ptr + counts) % replay.capacity
    replay.size = torch.clamp(replay.size + counts, max=replay.capacity)


@pytest.mark.parametrize("shuffled", [False, True])
def test_replay_add_equals_the_torch_formulation(shuffled: bool) -> None:
    fields = {"s": (3,), "a": (), "x": (2,)}
    fast, ref = StackedReplay(4, 7, fields), StackedReplay(4, 7, fields)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):  # wraps around the capacity of 7
        agent = torch.randint(0, 4, (9,), generator=g)
        if not shuffled:
            agent = agent.sort().values
        values = {
            "s": torch.randn(9, 3, generator=g),
            "a": torch.randint(0, 5, (9,), generator=g),
            "x": torch.randn(9, 2, generator=g),
        }
        fast.add(agent, **values)
        _reference_add(ref, agent, **values)
        _equal_states(fast.state_dict(), ref.state_dict())


@pytest.mark.parametrize("scaling", [False, True])
@pytest.mark.parametrize("with_load", [False, True])
def test_observe_equals_the_concatenation(scaling: bool, with_load: bool) -> None:
    env = get_preset("paper").env
    system = make_system(env)
    rng = np.random.default_rng(2)
    task = rng.uniform(2, 5, (env.n_servers, env.max_tasks))
    backlog, load = rng.uniform(0, 900, env.n_servers), rng.uniform(0, 300, env.n_servers)
    got = observe(system, task, backlog, load, scaling=scaling, with_load=with_load)
    B, N = task.shape
    demand = np.broadcast_to(system.demand[None, :N], (B, N))
    if scaling:
        per_task = [task / 5.0, demand / 4.0]
        shared = [backlog / system.capacity_ghz / 10.0, load / system.capacity_ghz / 10.0]
    else:
        per_task, shared = [task, demand], [backlog, load]
    shared = shared if with_load else shared[:1]
    shared_b = np.broadcast_to(
        np.concatenate(shared)[None, None, :], (B, N, sum(s.size for s in shared))
    )
    want = np.concatenate([np.stack(per_task, axis=-1), shared_b], axis=-1).astype(np.float32)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def _reference_store(learner: SlotLearner, record, reward, next_view) -> None:  # noqa: ANN001
    """SlotLearner._store as it was, in torch."""
    A, N = record.valid.shape
    s, valid = record.states, record.valid
    s2 = torch.roll(s, shifts=-1, dims=1)
    last = torch.arange(N)[None, :] == (valid.sum(dim=1) - 1)[:, None]
    if not learner.switches.boundary_fix:
        next_view = replace(
            next_view,
            backlog=np.zeros_like(next_view.backlog),
            last_load=np.zeros_like(next_view.last_load),
        )
    s2[last] = learner._states(next_view, first_only=True)[:, 0]
    values = {"s": s[valid], "a": record.actions[valid].float(), "r": reward[valid]}
    values["s2"] = s2[valid]
    if learner.memory is not None:
        x = record.x_in if learner.switches.copy_fix else record.x_out
        x2 = torch.roll(x, shifts=-1, dims=1)
        x2[last] = learner._memory_rows(next_view.t)[:, 0]
        values |= {"x": x[valid], "x2": x2[valid]}
    agent_of = torch.arange(A)[:, None].expand(A, N)
    _reference_add(learner.replay, agent_of[valid], **values)


def _reference_update(sac: DiscreteSAC, batch, ready, probs_fn, actor_opt):  # noqa: ANN001, ANN202
    """DiscreteSAC.update as it was: autograd for ξ, Optimizer.step, one gather per critic."""

    def q_pair(net, s):  # noqa: ANN001, ANN202
        q = net(s.repeat(2, 1, 1))
        return q[: sac.n_agents], q[sac.n_agents :]

    s, s2, r = batch["s"], batch["s2"], batch["r"]
    a = batch["a"].long().unsqueeze(-1)
    weight = ready.float()
    alpha = sac.log_alpha.exp().detach()[:, None]
    with torch.no_grad():
        p2 = probs_fn(s2, batch.get("x2"))
        q_next = torch.minimum(*q_pair(sac.targets, s2))
        y = r + sac.cfg.gamma * ((p2 * q_next).sum(-1) + alpha * entropy(p2))
    q1, q2 = (q.gather(-1, a).squeeze(-1) for q in q_pair(sac.critics, s))
    critic_loss = ((((q1 - y) ** 2).mean(1) + ((q2 - y) ** 2).mean(1)) * weight).sum()
    sac.critic_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    sac.critic_opt.step()
    probs = probs_fn(s, batch.get("x"))
    ent = entropy(probs)
    with torch.no_grad():
        q_min = torch.minimum(*q_pair(sac.critics, s))
    actor_loss = ((-alpha * ent - (probs * q_min).sum(-1)).mean(1) * weight).sum()
    actor_opt.zero_grad(set_to_none=True)
    actor_loss.backward()
    actor_opt.step()
    alpha_loss = (
        ((ent.detach() - sac.target_entropy).mean(1)) * sac.log_alpha.exp() * weight
    ).sum()
    sac.alpha_opt.zero_grad(set_to_none=True)
    alpha_loss.backward()
    sac.alpha_opt.step()
    with torch.no_grad():
        tau = (sac.cfg.tau * weight).repeat(2).view(-1, 1, 1)
        for p_t, p in zip(sac.targets.parameters(), sac.critics.parameters(), strict=True):
            p_t.lerp_(p, tau)
    n = float(weight.sum().clamp(min=1))
    return {
        "losses/critic": float(critic_loss.detach()) / n,
        "losses/actor": float(actor_loss.detach()) / n,
        "charts/alpha": float((sac.log_alpha.detach().exp() * weight).sum()) / n,
        "charts/entropy": float((ent.detach().mean(1) * weight).sum()) / n,
    }


def _as_reference(learner: SlotLearner) -> SlotLearner:
    """The same learner (a deep copy) running the plain store and update."""
    ref = copy.deepcopy(learner)
    ref._store = lambda record, reward, next_view: _reference_store(  # type: ignore[method-assign]
        ref, record, reward, next_view
    )
    probs = (lambda s, _x: ref.probs(s)) if ref.name == "sac" else ref.probs
    ref._update = lambda batch, ready: _reference_update(  # type: ignore[method-assign]
        ref.sac, batch, ready, probs, ref.actor_opt
    )
    return ref


def _optimizer_states(learner: SlotLearner) -> list[dict]:
    return [o.state_dict()["state"] for o in learner._optimizers()]


@pytest.mark.parametrize("method", ["lad", "d2sac", "sac"])
@pytest.mark.parametrize("switches", [Switches(), Switches.reference()], ids=["fixed", "authors"])
def test_training_equals_the_plain_formulation(method: str, switches: Switches) -> None:
    preset = get_preset("small")
    seed_everything(0)
    system = make_system(preset.env)
    fast = make_method(method, preset, switches, 0)
    ref = _as_reference(fast)
    streams = ArrivalStream(preset.env, 0), ArrivalStream(preset.env, 0)
    for episode in range(1, 4):
        got = run_episode(fast, system, streams[0].next_episode(), preset, episode)
        want = run_episode(ref, system, streams[1].next_episode(), preset, episode)
        assert (got.mean_delay_s, got.p95_delay_s, got.metrics, got.updates) == (
            want.mean_delay_s,
            want.p95_delay_s,
            want.metrics,
            want.updates,
        )
    assert fast.updates > 0
    _equal_states(fast.networks_state(), ref.networks_state())
    _equal_states(fast.replay.state_dict(), ref.replay.state_dict())
    for sa, sb in zip(_optimizer_states(fast), _optimizer_states(ref), strict=True):
        assert sa.keys() == sb.keys()
        for key in sa:
            _equal_states(sa[key], sb[key])


def test_act_writes_the_memory_rows_of_valid_tasks_only() -> None:
    preset = get_preset("small")
    seed_everything(0)
    system = make_system(preset.env)
    learner = make_method("lad", preset, Switches(), 0)
    episode = ArrivalStream(preset.env, 0).next_episode()
    before = learner.memory.clone()
    view = SlotView(
        0,
        system,
        np.zeros(preset.env.n_servers),
        np.zeros(preset.env.n_servers),
        episode.task_mbit[0],
        episode.valid[0],
        np.ones(preset.env.n_servers, dtype=bool),
    )
    learner.act(view)
    valid = torch.from_numpy(episode.valid[0])
    assert torch.equal(learner.memory[~valid], before[~valid])
    assert torch.equal(learner.memory[valid], learner._last.x_out[valid])
