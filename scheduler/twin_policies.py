"""Policies for the cluster twin: the daemon's own, and the ones it does not have yet.

- ``Daemon(name)``: every policy of ``scheduler/online.py: POLICIES``, one
  ``ClusterScheduler`` per box deciding each task on the state ``Twin.view_state`` builds
  (as ``agent/cluster/coordinator.py: Cluster.state`` does). Learned ones load a checkpoint, as agents do.
- ``Fleet(method, checkpoint)``: a learned policy deciding a window of arrivals in one
  vectorised pass: the same weights (``OnlinePolicy.load``, ``NumpyActor`` views), each box
  with its own X_b[n] and in-interval index, the daemon's draw (π of the noiseless chain,
  inverse CDF). ``tests/scheduler/test_twin.py`` checks its π equals
  ``ClusterScheduler.decide``'s on the same state; a ``ClusterScheduler.decide_batch`` hook
  would let the twin drop this copy of the batching.
- ``SoftGreedy``: π ∝ exp(−(f − f_min) / (T · f_min)) drawn per task (online.soft_greedy).
- ``PowerOfD(d)``: probe d random peers (one round trip), then greedy on their fresh
  backlogs and its own (``ClusterScheduler("greedy")`` on a masked state); ``Probed`` does
  the same for any daemon policy (``lad-pod2``: the LAD actor on the probed state).
- ``InformedProbes``: pod2's decision, but the d probed peers are drawn from a policy's π on
  the gossip view: ``pod2-lad`` (the LAD-TS scorer chooses whom to probe) and ``pod2-soft``
  (soft-greedy does, the matching heuristic).
- ``Stealing(base)``: ``base`` places; an idle box pulls the last queued task of the most
  backlogged peer it knows (``steal`` = local placement + stealing: pure late binding).
- ``Omniscient``: central earliest finish on the exact instant state (twin only): the ideal.
- ``Scorer``: ``lad-scorer``, the per-server LAD actor of ``lad_scorer.py`` (shared weights,
  any N), warm-started on soft-greedy; ``lad-scorer-pod<d>`` decides on the probed state.
  Above ``lad_scorer.CANDIDATES`` live servers both score drawn candidates, as the daemon.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dedgeai.scheduler.checkpoints import StateLayout
from dedgeai.scheduler.cluster_state import probe_weights
from dedgeai.scheduler.env import (
    DEMAND_GCYCLES_SCALE,
    STATE_SCALE_S,
    TASK_MBIT_SCALE,
    state_dim,
)
from dedgeai.scheduler.lad_scorer import CANDIDATES, LADScorer, candidate_features
from dedgeai.scheduler.numpy_actor import NumpyActor
from dedgeai.scheduler.online import (
    DENSITY_GCYCLES_PER_STEP,
    LEARNED,
    POLICIES,
    SOFT_GREEDY_TEMPERATURE,
    ClusterScheduler,
    estimated_finish_s,
    soft_greedy,
)
from dedgeai.scheduler.policy import OnlinePolicy
from dedgeai.scheduler.twin import Policy, Twin

DQN_EXPLORE_EPSILON = 0.02  # agent config explore_epsilon: DQN decides by argmax of Q
TINY = 1e-30  # memory entries below this are stored as 0 (no float32 denormals)
TWIN_POLICIES = (
    *POLICIES,
    "soft-greedy",
    "steal",
    "greedy+steal",
    "omniscient",
    "lad-scorer",
    "pod2-soft",
    "pod2-lad",
)


def _daemon_kwargs(name: str) -> dict[str, object]:
    """How ``SchedulerHost`` builds the daemon's scheduler (policy_actions = sample)."""
    if name == "dqn":
        return {"deterministic": True, "explore_epsilon": DQN_EXPLORE_EPSILON}
    return {"mean_path": name in LEARNED}


class Daemon(Policy):
    """A ``ClusterScheduler`` per box: the agent's decision path, task by task."""

    def __init__(self, name: str, checkpoint: Path | None = None, seed: int = 0) -> None:
        if name not in POLICIES:
            raise ValueError(f"unknown daemon policy {name!r}; choose from {POLICIES}")
        if name in LEARNED and checkpoint is None:
            raise ValueError(f"{name}: give a checkpoint (twin_train.warm_checkpoint makes one)")
        self.name, self.checkpoint, self.seed = name, checkpoint, seed
        self.scheduler_policy = name  # the ClusterScheduler policy each box runs
        self.boxes: list[ClusterScheduler] = []

    def attach(self, twin: Twin) -> None:
        self.boxes = [
            ClusterScheduler(
                self.scheduler_policy,
                twin.N,
                i,
                seed=self.seed * 7919 + i,
                checkpoint=self.checkpoint,
                **_daemon_kwargs(self.scheduler_policy),  # type: ignore[arg-type]
            )
            for i in range(twin.N)
        ]

    def place(self, twin: Twin, origin: int, task: int, now: float) -> int:
        state = twin.view_state(origin, task, now)
        return self.boxes[origin].decide(twin.task_spec(task), state).target

    def start_interval(self, box: int) -> None:
        if self.boxes:
            self.boxes[box].start_interval()


class SoftGreedy(Policy):
    """Soft greedy, the LAD warm start's teacher, as a named heuristic."""

    def __init__(self, temperature: float = SOFT_GREEDY_TEMPERATURE, seed: int = 0) -> None:
        self.name = "soft-greedy"
        self.temperature = temperature
        self.rng = np.random.default_rng([seed, 0x5A])

    def place(self, twin: Twin, origin: int, task: int, now: float) -> int:
        state = twin.view_state(origin, task, now)
        finish = estimated_finish_s(twin.task_spec(task), state)
        cdf = np.cumsum(soft_greedy(finish[None], self.temperature)[0])
        return int(min(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"), twin.N - 1))


class PowerOfD(Policy):
    """Probe d random peers for a fresh backlog, then the earliest finish among them and self."""

    def __init__(self, d: int = 2) -> None:
        self.name, self.probes = f"pod{d}", d
        self.boxes: list[ClusterScheduler] = []

    def attach(self, twin: Twin) -> None:
        self.boxes = [ClusterScheduler("greedy", twin.N, i) for i in range(twin.N)]

    def place_probed(
        self, twin: Twin, origin: int, task: int, probed: np.ndarray, now: float
    ) -> int:
        state = twin.exact_state(origin, task, probed, now)
        return self.boxes[origin].decide(twin.task_spec(task), state).target


class InformedProbes(PowerOfD):
    """Power of d whose probe targets are drawn from a policy's π on the box's gossip view
    instead of uniformly: ``pod2-soft`` (soft-greedy's π, a heuristic) and ``pod2-lad`` (the
    LAD-TS scorer's π). The decision is pod2's: the earliest finish on the probed state.

    Why: uniform probes often miss the fast idle boxes at low load (pod2 is 1.13–1.27 ×
    omniscient at load 0.5); a π drawn on stale gossip finds them, and the fresh probe
    replies undo its herding, since the final choice reads exact backlogs. The weights are
    the daemon's (``cluster_state.probe_weights``: 2 % uniform, no live peer never probed)."""

    def __init__(self, source: SoftGreedy | Scorer, d: int = 2, seed: int = 0) -> None:
        super().__init__(d)
        self.source = source
        self.name = f"pod{d}-" + ("lad" if isinstance(source, Scorer) else "soft")
        self.rng = np.random.default_rng([seed, 0x1F0])

    def choose_probes(
        self, twin: Twin, origin: int, task: int, known: np.ndarray, d: int, now: float
    ) -> np.ndarray:
        if isinstance(self.source, Scorer):
            probs = self.source.probs_batch(twin, np.array([origin]), np.array([task]), now)[0]
        else:
            finish = estimated_finish_s(twin.task_spec(task), twin.view_state(origin, task, now))
            probs = soft_greedy(finish[None], self.source.temperature)[0]
        weights = probe_weights(probs[known])  # the daemon's (Cluster._probe_draw)
        if weights is None:  # no view yet: uniform, as pod2
            weights = np.full(known.size, 1.0 / known.size)
        return self.rng.choice(known, size=d, replace=False, p=weights / weights.sum())


class Probed(Daemon):
    """A daemon policy deciding on probed state: d random peers' fresh backlogs and its own,
    the rest masked (``lad`` + probes: ``lad-pod2``; ``greedy`` + probes is ``pod2``)."""

    def __init__(
        self, name: str, d: int = 2, checkpoint: Path | None = None, seed: int = 0
    ) -> None:
        super().__init__(name, checkpoint, seed)
        self.name, self.probes = f"{name}-pod{d}", d

    def place_probed(
        self, twin: Twin, origin: int, task: int, probed: np.ndarray, now: float
    ) -> int:
        state = twin.exact_state(origin, task, probed, now)
        return self.boxes[origin].decide(twin.task_spec(task), state).target


class Stealing(Policy):
    """``base`` places every task; idle boxes steal (``Twin._try_steal``)."""

    steals = True

    def __init__(self, base: Policy) -> None:
        self.base = base
        self.name = "steal" if base.name == "local" else f"{base.name}+steal"
        self.batched, self.probes, self.learns = base.batched, base.probes, base.learns

    def attach(self, twin: Twin) -> None:
        self.base.attach(twin)

    def place(self, twin: Twin, origin: int, task: int, now: float) -> int:
        return self.base.place(twin, origin, task, now)

    def place_batch(
        self, twin: Twin, origins: np.ndarray, tasks: np.ndarray, now: float
    ) -> np.ndarray:
        return self.base.place_batch(twin, origins, tasks, now)

    def place_probed(
        self, twin: Twin, origin: int, task: int, probed: np.ndarray, now: float
    ) -> int:
        return self.base.place_probed(twin, origin, task, probed, now)

    def start_interval(self, box: int) -> None:
        self.base.start_interval(box)


class Omniscient(Policy):
    """Central earliest finish with the exact, instant state of every box (the ideal)."""

    name = "omniscient"

    def place(self, twin: Twin, origin: int, task: int, now: float) -> int:
        sc = twin.sc
        away = sc.link_s + twin.t_size[task] / sc.link_mbit_per_s
        back = sc.link_s + sc.result_mbit / sc.link_mbit_per_s
        hop = np.full(twin.N, away)
        hop[origin] = 0.0
        ret = np.full(twin.N, back)
        ret[origin] = 0.0
        finish = np.maximum(now + hop, twin.free_at) + twin.t_demand[task] / twin.cap + ret
        return int(np.argmin(np.where(twin.up, finish, np.inf)))


class Fleet(Policy):
    """A learned policy for every box from one checkpoint, decided in batches."""

    batched = True

    def __init__(self, method: str, checkpoint: Path, seed: int = 0) -> None:
        if method not in LEARNED:
            raise ValueError(f"{method!r} is not a learned policy ({LEARNED})")
        self.name, self.method, self.checkpoint = method, method, Path(checkpoint)
        self.rng = np.random.default_rng([seed, 0xF1EE7])
        self.keep_probs = False  # keep π of the last batch in ``last_probs`` (tests)
        self.last_probs: np.ndarray | None = None

    def attach(self, twin: Twin) -> None:
        N = twin.N
        probe = OnlinePolicy.load(self.checkpoint, agent=0)
        sw = probe.switches
        layout = StateLayout(
            N, state_dim(N, sw.inslot_load_in_state), sw.inslot_load_in_state, sw.state_scaling
        )
        if probe.layout != layout or not sw.state_scaling or not sw.inslot_load_in_state:
            raise ValueError(f"{self.checkpoint}: made for {probe.layout}, the twin needs {layout}")
        if probe.method != self.method:
            raise ValueError(f"{self.checkpoint}: a {probe.method} checkpoint, not {self.method}")
        self.policy = probe
        self.actor = NumpyActor(probe.learner, np.random.default_rng(0))
        memory = probe.learner.memory
        self.memory: np.ndarray | None = None
        if memory is not None and not probe.learner.noise_start:  # type: ignore[attr-defined]
            row = memory[0].numpy().astype(np.float32)  # [max_tasks, N]
            self.memory = np.broadcast_to(row, (N, *row.shape)).copy()
        self.pre_softmax = sw.memory_pre_softmax
        a = self.actor
        self.h_t = (a.time_emb @ a.w_t) if a.kind == "lad" else None  # [I, H]
        self.index = np.zeros(N, dtype=np.int64)
        self.max_tasks = probe.env.max_tasks

    def start_interval(self, box: int) -> None:
        self.index[box] = 0

    def place(self, twin: Twin, origin: int, task: int, now: float) -> int:
        return int(self.place_batch(twin, np.array([origin]), np.array([task]), now)[0])

    def states(
        self, twin: Twin, origins: np.ndarray, tasks: np.ndarray, now: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """States [K, 2 + 2N] as ``OnlinePolicy.build_states`` lays them out, and the mask."""
        backlog, load, cap, ok = twin.view_batch(origins, tasks, now)
        K, N = backlog.shape
        seconds = np.maximum(cap, 1e-9) * STATE_SCALE_S
        out = np.empty((K, 2 + 2 * N), dtype=np.float32)
        ids = tasks.tolist()
        out[:, 0] = np.asarray([twin.t_size[k] for k in ids]) / TASK_MBIT_SCALE
        rho = DENSITY_GCYCLES_PER_STEP
        out[:, 1] = np.asarray([twin.t_demand[k] for k in ids]) * rho / DEMAND_GCYCLES_SCALE
        np.divide(backlog, seconds, out=out[:, 2 : 2 + N])
        np.divide(load, seconds, out=out[:, 2 + N :])
        return out, ok

    def scores(self, states: np.ndarray, x_start: np.ndarray | None) -> np.ndarray:
        """[K, N] scores of K states: ``NumpyActor.scores`` (noiseless) row by row, at once."""
        a = self.actor
        if a.kind != "lad":
            return a.mlp(states)
        h_s = states @ a.w_s + a.b1  # [K, H]; the step part, a.time_emb @ a.w_t, is fixed
        x = x_start
        if x is None:  # D2SAC: fresh noise
            x = self.rng.standard_normal((states.shape[0], a.n_actions), dtype=np.float32)
        for i in reversed(range(a.time_emb.shape[0])):
            h = h_s + self.h_t[i]
            h += x @ a.w_x
            np.maximum(h, 0.0, out=h)
            h = h @ a.w2 + a.b2
            np.maximum(h, 0.0, out=h)
            eps = h @ a.w3 + a.b3
            if a.eps_softmax:
                eps = np.exp(eps - eps.max(axis=1, keepdims=True))
                eps = eps / eps.sum(axis=1, keepdims=True)
            eps *= a.take[i]
            x = x * a.keep[i]
            x -= eps
        return x

    def place_batch(
        self, twin: Twin, origins: np.ndarray, tasks: np.ndarray, now: float
    ) -> np.ndarray:
        states, ok = self.states(twin, origins, tasks, now)
        K, N = ok.shape
        index = np.empty(K, dtype=np.int64)
        for r, o in enumerate(origins.tolist()):  # an origin twice in a window: n, n + 1
            index[r] = self.index[o] % self.max_tasks
            self.index[o] += 1
        x_in = None if self.memory is None else self.memory[origins, index]
        scores = self.scores(states, x_in)
        all_ok = bool(ok.all())
        if self.method == "dqn":
            targets = np.argmax(scores if all_ok else np.where(ok, scores, -np.inf), axis=1)
            explore = self.rng.random(K) < DQN_EXPLORE_EPSILON
            for r in np.flatnonzero(explore).tolist():
                live = np.flatnonzero(ok[r])
                targets[r] = live[self.rng.integers(0, live.size)]
            if self.keep_probs:
                self.last_probs = np.eye(N, dtype=np.float32)[targets]
            return targets
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        masked = weights if all_ok else np.where(ok, weights, 0.0)
        cdf = np.cumsum(masked, axis=1)
        if self.keep_probs:
            self.last_probs = (masked / cdf[:, -1:]).astype(np.float32)
        u = self.rng.random(K) * cdf[:, -1]
        targets = np.count_nonzero(cdf <= u[:, None], axis=1)  # searchsorted(side="right")
        bad = targets >= N
        bad[~bad] = ~ok[np.flatnonzero(~bad), targets[~bad]]
        if bad.any():  # probability 0 (masked), or rounding past the end: the best one
            targets[bad] = np.argmax(masked[bad], axis=1)
        if self.memory is not None:
            if self.pre_softmax:
                centred = scores - scores.mean(axis=1, keepdims=True)
                rows = centred / (centred.std(axis=1, ddof=1, keepdims=True) + 1e-6)
            else:
                rows = weights / weights.sum(axis=1, keepdims=True)
            # float32 denormals (π below ~1e-38 on far-off servers) make every later chain
            # on that row ~100x slower; as inputs they are 0 to float32 precision.
            rows[np.abs(rows) < TINY] = 0.0
            self.memory[origins, index] = rows
        return targets


_WARM_SCORERS: dict[int, LADScorer] = {}


def warm_scorer(seed: int = 0) -> LADScorer:
    """A fresh ``LADScorer`` warm-started on the paper's relative spread (memoised per seed:
    the clone takes seconds and does not depend on the cluster's size)."""
    if seed not in _WARM_SCORERS:
        scorer = LADScorer(seed=seed)
        scorer.warm_start()
        _WARM_SCORERS[seed] = scorer
    return _WARM_SCORERS[seed]


class Scorer(Policy):
    """``lad-scorer``: every box decides with one ``LADScorer`` (π of the chain's mean path,
    drawn per task as the daemon's ``mean_path``); ``batched`` decides a window at once."""

    def __init__(
        self,
        scorer: LADScorer,
        seed: int = 0,
        batched: bool = False,
        d: int = 0,
        top: int | None = CANDIDATES,
    ) -> None:
        """``top``: servers the chain scores per decision (``LADScorer.state_probs``)."""
        self.scorer, self.batched, self.probes, self.top = scorer, batched, d, top
        self.name = "lad-scorer" + (f"-pod{d}" if d else "")
        self.rng = np.random.default_rng([seed, 0x5C0E])
        self.candidate_rng = np.random.default_rng([seed, 0xCA])

    def _draw(self, probs: np.ndarray) -> np.ndarray:
        cdf = np.cumsum(probs, axis=1)
        u = self.rng.random(probs.shape[0]) * cdf[:, -1]
        targets = np.count_nonzero(cdf <= u[:, None], axis=1)
        bad = targets >= probs.shape[1]
        bad[~bad] = probs[np.flatnonzero(~bad), targets[~bad]] <= 0.0
        targets[bad] = np.argmax(probs[bad], axis=1)  # rounding past the end, or masked
        return targets

    def place(self, twin: Twin, origin: int, task: int, now: float) -> int:
        return int(self.place_batch(twin, np.array([origin]), np.array([task]), now)[0])

    def probs_batch(
        self, twin: Twin, origins: np.ndarray, tasks: np.ndarray, now: float
    ) -> np.ndarray:
        """π [K, N] on each decider's view (``view_batch``, transfers as ``view_state``)."""
        backlog, load, cap, ok = twin.view_batch(origins, tasks, now)
        size = np.array([twin.t_size[k] for k in tasks.tolist()])
        demand = np.array([twin.t_demand[k] for k in tasks.tolist()])
        transfer = np.where(ok, twin.rtt + size[:, None] / twin.sc.link_mbit_per_s, 0.0)
        transfer[np.arange(origins.size), origins] = 0.0
        phi, _, index, log_q = candidate_features(
            demand, size, backlog, load, cap, ok, transfer, origins, self.top, self.candidate_rng
        )
        return self.scorer.candidate_probs(phi, index, log_q, ok)

    def place_batch(
        self, twin: Twin, origins: np.ndarray, tasks: np.ndarray, now: float
    ) -> np.ndarray:
        return self._draw(self.probs_batch(twin, origins, tasks, now))

    def place_probed(
        self, twin: Twin, origin: int, task: int, probed: np.ndarray, now: float
    ) -> int:
        state = twin.exact_state(origin, task, probed, now)
        probs = self.scorer.state_probs(twin.task_spec(task), state, self.top, self.candidate_rng)
        live = np.flatnonzero(probs)  # the target ``_draw`` takes on every server, cheaper
        cdf = np.cumsum(probs[live])
        pick = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(live[min(pick, live.size - 1)])


def make_policy(
    name: str, checkpoints: dict[str, Path] | None = None, seed: int = 0, batched: bool = True
) -> Policy:
    """A twin policy by name (``TWIN_POLICIES``; also ``pod<d>``, ``<daemon policy>-pod<d>``
    and ``<base>+steal``).

    Learned ones need ``checkpoints[name]``; ``batched`` picks ``Fleet`` over ``Daemon``."""
    if name.endswith("+steal"):
        return Stealing(make_policy(name[: -len("+steal")], checkpoints, seed, batched))
    if name == "steal":
        return Stealing(Daemon("local", seed=seed))
    if name == "omniscient":
        return Omniscient()
    if name == "soft-greedy":
        return SoftGreedy(seed=seed)
    if name.startswith("pod") and name[3:].isdigit():
        return PowerOfD(int(name[3:]))
    base, _, drawn_by = name.partition("-")
    if base.startswith("pod") and base[3:].isdigit() and drawn_by in ("soft", "lad"):
        if drawn_by == "soft":
            return InformedProbes(SoftGreedy(seed=seed), int(base[3:]), seed)
        path = (checkpoints or {}).get("lad-scorer")
        scorer = LADScorer.load(path) if path is not None else warm_scorer()
        return InformedProbes(Scorer(scorer, seed), int(base[3:]), seed)
    if name.startswith("lad-scorer"):
        d = name.removeprefix("lad-scorer").removeprefix("-pod")
        if d and not d.isdigit():
            raise ValueError(f"unknown twin policy {name!r}")
        path = (checkpoints or {}).get("lad-scorer")
        scorer = LADScorer.load(path) if path is not None else warm_scorer()
        return Scorer(scorer, seed, batched=batched and not d, d=int(d or 0))
    base, _, d = name.rpartition("-pod")
    if base and d.isdigit():
        path = (checkpoints or {}).get(base)
        return Probed(base, int(d), path, seed)
    if name in LEARNED:
        path = (checkpoints or {}).get(name)
        if path is None:
            raise ValueError(f"{name}: no checkpoint given")
        return Fleet(name, path, seed) if batched else Daemon(name, path, seed)
    return Daemon(name, seed=seed)
