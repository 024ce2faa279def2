"""The cluster twin: a discrete-event model of B boxes scheduling with the daemon's own code.

Pure and seeded: no threads, no sockets, no wall clock. Each box is a FIFO server of its
speed (512x512 steps/s); a task's finish time is fixed when it is queued (``free_at``), so a
box's true backlog is ``(free_at - now) x speed`` and needs no per-step events. What a box
knows of the others is its gossip view, built as ``agent/cluster/coordinator.py`` builds it:

- ``full`` gossip (the daemon's): every interval, at its own phase, a box asks every peer
  for its report (request/reply, each message lost with ``gossip_loss``); the replies land
  one round trip later. A peer silent for ``LIVENESS_INTERVALS`` intervals is down.
- ``partial`` gossip (SWIM-style, a proposal): a box exchanges reports with ``fanout``
  peers per interval, each message relaying the ``digest_entries`` freshest reports its
  sender holds; a peer that does not answer a direct and ``INDIRECT_PROBES`` indirect
  probes is suspected, declared dead one interval later, and the notice is piggybacked.

A decision sees ``view_state``: the view's backlog minus the peer's interval load, that load
plus the work this box forwarded there since it last heard from it, speeds, liveness, and
transfer = rtt + size / link rate; its own queue exactly (``Cluster.state``). Policies
(``scheduler/twin_policies.py``) turn that into a target through ``ClusterScheduler``.

Faults: a failed box loses its queue; each origin re-dispatches its lost tasks when its
view marks the box down (a task forwarded to a dead box: after the ack timeout); a client
whose origin died resubmits to a live box. Every task ends exactly once (``TwinResult``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dedgeai.scheduler.online import ClusterState, TaskSpec
from dedgeai.scheduler.stats import percentile
from dedgeai.scheduler.twin_scenarios import Scenario, arrivals

if TYPE_CHECKING:
    from dedgeai.scheduler.twin_scenarios import Arrivals

LIVENESS_INTERVALS = 3  # agent/cluster/peers.py: silent this many intervals -> down
INDIRECT_PROBES = 3  # SWIM: peers asked to probe a silent target
SUSPECT_INTERVALS = 1.0  # partial view: a suspect not heard from this long is declared dead
NOTICE_FACTOR = 3  # a dead notice is relayed NOTICE_FACTOR x ceil(log2(N + 1)) times
GOSSIP_BODY_BYTES = 520  # one report: msgpack body of Cluster.body + envelope (measured)
DIGEST_ENTRY_BYTES = 48  # one relayed report: id, generation, backlog, load, speed, flags
FRAME_OVERHEAD_BYTES = 90  # ZMTP frames + TCP/IP headers per message
STEAL_TRIES = 2  # victims asked per idle spell before waiting for the next gossip
STALENESS_SAMPLE = 16  # every n-th decision records the age of the reports it used

# event kinds
ENQUEUE, DELIVER, TICK, APPLY, IDLE, STEAL_REQ, STEAL_REPLY, PROBED = range(8)
FAIL, JOIN, RECLAIM, RETRY, DONE, CONFIRM = range(8, 14)
PERIODIC = {TICK, APPLY, IDLE, CONFIRM}
# task states
WAITING, SENT, QUEUED, LOST = range(4)


class Policy:
    """A scheduling policy in the twin (``twin_policies.py`` has them all)."""

    name = "policy"
    batched = False  # decides all arrivals of a window in one pass (``place_batch``)
    probes = 0  # power-of-d: peers probed (one round trip) before deciding
    steals = False  # idle boxes pull queued tasks from backlogged peers
    learns = False  # wants ``completed`` for every finished task

    def attach(self, twin: Twin) -> None:
        """Called once before the run: build per-box schedulers."""

    def place(self, twin: Twin, origin: int, task: int, now: float) -> int:
        raise NotImplementedError

    def place_batch(
        self, twin: Twin, origins: np.ndarray, tasks: np.ndarray, now: float
    ) -> np.ndarray:
        return np.array(
            [self.place(twin, int(o), int(k), now) for o, k in zip(origins, tasks, strict=True)]
        )

    def place_probed(
        self, twin: Twin, origin: int, task: int, probed: np.ndarray, now: float
    ) -> int:
        raise NotImplementedError

    def choose_probes(
        self, twin: Twin, origin: int, task: int, known: np.ndarray, d: int, now: float
    ) -> np.ndarray:
        """The ``d`` peers of ``known`` to probe: uniform at random (power of d)."""
        return twin.rng.choice(known, size=d, replace=False)

    def start_interval(self, box: int) -> None:
        """A new gossip interval at ``box`` (LAD's in-interval index restarts)."""

    def completed(self, twin: Twin, task: int, delay_s: float, now: float) -> None:
        """A task this policy placed ran to completion (learning policies' reward)."""


@dataclass
class TwinResult:
    scenario: str
    policy: str
    seed: int
    delay_s: np.ndarray = field(repr=False)  # [T] arrival -> result back at the origin
    ran_on: np.ndarray = field(repr=False)  # [T] box that ran each task
    counted: np.ndarray = field(repr=False)  # [T] bool: in the statistics (after warm-up)
    done: int
    duplicates: int
    counters: dict[str, float]
    detections: list[dict[str, float]]
    wall_s: float

    @property
    def mean_s(self) -> float:
        return float(self.delay_s[self.counted].mean())

    def percentile_s(self, q: float) -> float:
        return percentile(self.delay_s[self.counted], q)

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "policy": self.policy,
            "seed": self.seed,
            "tasks": int(self.delay_s.size),
            "done": self.done,
            "mean_s": self.mean_s,
            "p50_s": self.percentile_s(50),
            "p99_s": self.percentile_s(99),
            "wall_s": self.wall_s,
            **self.counters,
        }


class Twin:
    """One run of one policy on one scenario and seed."""

    def __init__(
        self,
        scenario: Scenario,
        policy: Policy,
        seed: int = 0,
        batch_window_s: float = 0.05,
        trace: Arrivals | None = None,
    ) -> None:
        """``batch_window_s``: a batched policy decides every arrival of such a window at
        its first arrival, on the state then (older by at most the window; the gossip it
        reads is up to an interval old anyway). ``trace``: replay these arrivals."""
        self.sc = scenario.validate()
        self.policy, self.seed = policy, seed
        self.window = batch_window_s if policy.batched else 0.0
        N = self.N = scenario.n_boxes
        self.arr = trace if trace is not None else arrivals(scenario, seed)
        T = len(self.arr)
        self.interval = scenario.gossip_interval_s
        self.rtt = 2.0 * scenario.link_s
        self.rng = np.random.default_rng([seed, 0x7114])  # gossip loss, probes, jitter
        # boxes
        self.cap = np.asarray(scenario.capacities, dtype=np.float64).copy()
        self.up = np.ones(N, dtype=bool)
        self.up[list(scenario.down_at_start)] = False
        self.free_at = np.zeros(N)
        self.tick_load = np.zeros(N)  # work queued since the box's last gossip tick
        self.queue: list[deque[int]] = [deque() for _ in range(N)]
        self.phase = np.random.default_rng([seed, 0xF4A5]).uniform(0, self.interval, N)
        # views [viewer, peer]
        # A report is the peer's free_at and interval load at ``heard`` (its backlog then is
        # (free_at - heard) x speed): copying two numbers per peer, no arithmetic per gossip.
        self.rep_free = np.zeros((N, N))
        self.rep_tick = np.zeros((N, N))
        self.heard = np.full((N, N), -np.inf)  # when the report was made
        self.sched_ok = np.zeros((N, N), dtype=bool)  # peer is up in the viewer's table
        self.pending = np.zeros((N, N))  # work forwarded since the viewer last heard it
        self.dead_born = np.full((N, N), -np.inf)  # partial: the dead notice held per peer
        self.notices: list[dict[int, int]] = [{} for _ in range(N)]
        self.order: list[list[int]] = [[] for _ in range(N)]  # partial: probe round-robin
        self.lost_by: list[dict[int, list[int]]] = [{} for _ in range(N)]  # origin -> peer
        # tasks
        self.t_origin = self.arr.origin.astype(np.int64).tolist()
        self.t_demand = self.arr.steps.astype(np.float64).tolist()
        self.t_size = self.arr.size_mbit.astype(np.float64).tolist()
        self.t_at = self.arr.at_s.astype(np.float64).tolist()
        self.t_finish = [math.nan] * T
        self.t_target = [-1] * T
        self.t_state = [WAITING] * T
        self.t_held = [0] * T  # queues holding each task: 1 at the end, never more
        self._mean_steps = sum(scenario.steps) / 2
        self.idle_version = [0] * N
        self.stealing = [False] * N
        self.steal_tries = [0] * N
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = itertools.count()
        self.live = 0  # pending non-periodic events
        self.counters: dict[str, float] = dict.fromkeys(
            (
                "forwarded",
                "probes",
                "steals",
                "steal_requests",
                "reclaimed",
                "redirected",
                "client_retries",
                "gossip_messages",
                "gossip_bytes",
                "decisions",
                "decision_batches",
                "staleness_sum_s",
                "staleness_samples",
                "false_downs",
            ),
            0.0,
        )
        self.detections: list[dict[str, float]] = []
        self._fail_at: dict[int, float] = {}
        # No gossip lost and every box up: gossip needs no masks and liveness finds nothing.
        self._quiet = scenario.gossip_loss == 0 and bool(self.up.all())
        self._decisions = 0
        self.now = 0.0

    # ---- events -----------------------------------------------------------------------------
    def push(self, at: float, kind: int, a: int = 0, b: Any = None) -> None:
        if kind not in PERIODIC:
            self.live += 1
        heapq.heappush(self.heap, (at, next(self._seq), kind, a, b))

    def run(self) -> TwinResult:
        started = time.perf_counter()
        sc, N = self.sc, self.N
        for i in range(N):
            self.push(float(self.phase[i]), TICK, i)
            if self.up[i] and sc.gossip == "partial":
                self._shuffle_order(i)
        # Configured peers are known from the start (``peers = [...]``): up until silent.
        up = self.up
        self.sched_ok[:] = up[None, :] & up[:, None]
        self.heard[np.ix_(up, up)] = 0.0
        np.fill_diagonal(self.sched_ok, False)
        np.fill_diagonal(self.heard, -np.inf)
        for e in sc.events:
            self.push(e.at_s, FAIL if e.kind == "fail" else JOIN, e.box)
        self.policy.attach(self)
        at = self.arr.at_s
        T, k = len(self.arr), 0
        heap = self.heap
        steals = self.policy.steals
        while True:
            if k < T and (not heap or at[k] <= heap[0][0]):
                self.now = t = float(at[k])
                if self.window > 0:
                    end = int(np.searchsorted(at, t + self.window, side="left"))
                    end = max(end, k + 1)
                    self._arrive_batch(np.arange(k, end), t)
                    k = end
                else:
                    self._arrive(k, t)
                    k += 1
                continue
            if not heap:
                break
            if k >= T and self.live == 0:
                drained = self.free_at[self.up].max(initial=0.0) <= heap[0][0]
                if not steals or drained:
                    break
            t, _, kind, a, b = heapq.heappop(heap)
            self.now = t
            if kind not in PERIODIC:
                self.live -= 1
            self._dispatch(kind, a, b, t)
        return self._result(time.perf_counter() - started)

    def _dispatch(self, kind: int, a: int, b: Any, t: float) -> None:
        if kind == ENQUEUE:
            self._enqueue(a, b, t)
        elif kind == DELIVER:
            self._deliver(a, b, t)
        elif kind == TICK:
            self._tick(a, t)
        elif kind == APPLY:
            self._apply(a, t)
        elif kind == IDLE:
            if b == self.idle_version[a] and self.up[a]:
                self._try_steal(a, t)
        elif kind == STEAL_REQ:
            self._steal_request(a, b, t)
        elif kind == STEAL_REPLY:
            self._steal_reply(a, b, t)
        elif kind == PROBED:
            self._probed(a, b, t)
        elif kind == FAIL:
            self._fail(a, t)
        elif kind == JOIN:
            self._join(a, t)
        elif kind == RECLAIM:
            self._redecide(a, t, reclaimed=True)
        elif kind == RETRY:
            self._client_retry(a, t)
        elif kind == DONE:
            if self.t_state[a] == QUEUED and self.t_finish[a] + b[0] == t:
                self.policy.completed(self, a, t - b[1], t)
        elif kind == CONFIRM:
            self._confirm(a, b, t)

    # ---- arrivals and decisions ---------------------------------------------------------------
    def _live_origin(self, task: int) -> int:
        """The client's box, or (its box is down) a live one it fails over to."""
        origin = self.t_origin[task]
        if self.up[origin]:
            return origin
        live = np.flatnonzero(self.up)
        origin = int(live[self.rng.integers(0, live.size)])
        self.t_origin[task] = origin
        self.counters["redirected"] += 1
        return origin

    def _arrive(self, task: int, t: float) -> None:
        self.decide_now(task, self._live_origin(task), t)

    def decide_now(self, task: int, origin: int, t: float) -> None:
        """One task, one decision (after probing its peers, for power of d)."""
        if self.policy.probes:
            self._probe(origin, task, t)
            return
        self._count_decision(origin, t)
        self.dispatch(task, origin, self.policy.place(self, origin, task, t), t)

    def _arrive_batch(self, tasks: np.ndarray, t: float) -> None:
        origins = np.array([self._live_origin(int(k)) for k in tasks])
        self.counters["decision_batches"] += 1
        for o in origins:
            self._count_decision(int(o), t)
        targets = self.policy.place_batch(self, origins, tasks, t)
        for k, o, target in zip(tasks.tolist(), origins.tolist(), targets.tolist(), strict=True):
            self.dispatch(k, o, int(target), self.t_at[k])

    def _count_decision(self, origin: int, t: float) -> None:
        self._decisions += 1
        self.counters["decisions"] += 1
        if self._decisions % STALENESS_SAMPLE == 0:
            ok = self.sched_ok[origin]
            if ok.any():
                self.counters["staleness_sum_s"] += float((t - self.heard[origin][ok]).mean())
                self.counters["staleness_samples"] += 1

    def dispatch(self, task: int, origin: int, target: int, at: float) -> None:
        """Carry out a decision taken for ``task`` at ``origin``: queue it, or forward it."""
        self.t_target[task] = target
        if target == origin:
            self.t_state[task] = SENT
            if at <= self.now:
                self._enqueue(task, target, at)
            else:
                self.push(at, ENQUEUE, task, target)
            return
        self.pending[origin, target] += self.t_demand[task]
        self.counters["forwarded"] += 1
        self.t_state[task] = SENT
        self.push(at + self._transfer(task), DELIVER, task, (target, at))

    def _transfer(self, task: int) -> float:
        sc = self.sc
        jitter = self.rng.exponential(sc.link_jitter_s) if sc.link_jitter_s > 0 else 0.0
        return sc.link_s + jitter + self.t_size[task] / sc.link_mbit_per_s

    def _return_s(self, task: int, box: int) -> float:
        if box == self.t_origin[task]:
            return 0.0
        return self.sc.link_s + self.sc.result_mbit / self.sc.link_mbit_per_s

    def _redecide(self, task: int, t: float, reclaimed: bool) -> None:
        """A task whose box failed: its origin decides again (the dead box is masked)."""
        if self.t_state[task] != LOST:
            return
        self.counters["reclaimed"] += reclaimed
        origin = self.t_origin[task]
        if not self.up[origin]:
            self.push(t + self.sc.client_retry_s, RETRY, task)
            return
        self.t_state[task] = WAITING
        self.decide_now(task, origin, t)

    def _client_retry(self, task: int, t: float) -> None:
        self.counters["client_retries"] += 1
        self.t_origin[task] = self._live_origin_any()
        self._redecide(task, t, reclaimed=False)

    def _live_origin_any(self) -> int:
        live = np.flatnonzero(self.up)
        return int(live[self.rng.integers(0, live.size)])

    # ---- queues -------------------------------------------------------------------------------
    def _deliver(self, task: int, payload: tuple[int, float], t: float) -> None:
        target, sent = payload
        if self.up[target]:
            self._enqueue(task, target, t)
            return
        # Never acked: the origin reclaims it after the ack timeout.
        self.t_state[task] = LOST
        self.push(max(t, sent + self.sc.ack_timeout_s), RECLAIM, task)

    def _enqueue(self, task: int, box: int, t: float) -> None:
        if not self.up[box]:  # a local task whose box died before it was queued
            self.t_state[task] = LOST
            self.push(t + self.sc.client_retry_s, RETRY, task)
            return
        q = self.queue[box]
        finish = self.t_finish
        while q and finish[q[0]] <= t:
            q.popleft()
        demand = self.t_demand[task]
        end = max(t, float(self.free_at[box])) + demand / self.cap[box]
        self.free_at[box] = end
        finish[task] = end
        self.t_target[task] = box
        self.t_state[task] = QUEUED
        self.tick_load[box] += demand
        self.t_held[task] += 1
        q.append(task)
        if self.policy.steals:
            self.idle_version[box] += 1
            self.steal_tries[box] = 0
            self.push(end, IDLE, box, self.idle_version[box])
        if self.policy.learns:
            ret = self._return_s(task, box)
            self.push(end + ret, DONE, task, (ret, self.t_at[task]))

    def true_backlog(self, t: float) -> np.ndarray:
        """[N] queued + running work of every box now, in steps."""
        return np.maximum(self.free_at - t, 0.0) * self.cap

    def own_work(self, box: int, t: float) -> tuple[float, float]:
        """(backlog, interval load) of a box, in steps: ``Cluster._own_work``."""
        backlog = max(float(self.free_at[box]) - t, 0.0) * self.cap[box]
        return backlog, min(float(self.tick_load[box]), backlog)

    # ---- what a decision sees -----------------------------------------------------------------
    def view_state(self, origin: int, task: int, t: float) -> ClusterState:
        """``agent/cluster/coordinator.py: Cluster.state`` for ``origin`` at ``t``, from its view."""
        ok = self.sched_ok[origin].copy()
        ok[origin] = True
        rb = np.maximum(self.rep_free[origin] - self.heard[origin], 0.0) * self.cap
        rl = np.minimum(self.rep_tick[origin], rb)
        backlog = np.where(ok, rb - rl, 0.0)
        load = np.where(ok, rl + self.pending[origin], 0.0)
        own, own_load = self.own_work(origin, t)
        backlog[origin], load[origin] = max(0.0, own - own_load), own_load
        cap = np.where(ok, self.cap, 1.0)
        transfer = np.where(ok, self.rtt + self.t_size[task] / self.sc.link_mbit_per_s, 0.0)
        transfer[origin] = 0.0
        return ClusterState(origin, backlog, load, cap, ok, transfer)

    def view_batch(
        self, origins: np.ndarray, tasks: np.ndarray, t: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``view_state`` of several deciders at once: backlog, load, capacity, available [K, N]."""
        K = origins.size
        ok = self.sched_ok[origins]
        ok[np.arange(K), origins] = True
        backlog = self.rep_free[origins]
        backlog -= self.heard[origins]
        np.maximum(backlog, 0.0, out=backlog)
        backlog *= self.cap
        load = np.minimum(self.rep_tick[origins], backlog)
        backlog -= load
        load += self.pending[origins]
        if ok.all():
            cap = np.broadcast_to(self.cap, (K, self.N))
        else:
            backlog[~ok] = 0.0
            load[~ok] = 0.0
            cap = np.where(ok, self.cap, 1.0)
        for r, o in enumerate(origins.tolist()):
            own, own_load = self.own_work(o, t)
            backlog[r, o], load[r, o] = max(0.0, own - own_load), own_load
        return backlog, load, cap, ok

    def task_spec(self, task: int) -> TaskSpec:
        return TaskSpec(self.t_demand[task], self.t_size[task])

    def exact_state(self, origin: int, task: int, peers: np.ndarray, t: float) -> ClusterState:
        """A state with fresh backlogs of ``peers`` (probe replies) and this box; the rest masked."""
        ok = np.zeros(self.N, dtype=bool)
        ok[peers] = self.up[peers]
        ok[origin] = True
        live = np.flatnonzero(ok)  # a few boxes: only their entries are computed
        backlog = np.zeros(self.N)
        backlog[live] = np.maximum(self.free_at[live] - t, 0.0) * self.cap[live]
        cap = np.ones(self.N)
        cap[live] = self.cap[live]
        transfer = np.zeros(self.N)
        transfer[live] = self.rtt + self.t_size[task] / self.sc.link_mbit_per_s
        transfer[origin] = 0.0
        return ClusterState(origin, backlog, np.zeros(self.N), cap, ok, transfer)

    # ---- power of d: probes -------------------------------------------------------------------
    def _probe(self, origin: int, task: int, t: float) -> None:
        known = np.flatnonzero(self.sched_ok[origin])
        known = known[known != origin]
        d = min(self.policy.probes, known.size)
        peers = self.policy.choose_probes(self, origin, task, known, d, t) if d else known
        self.counters["probes"] += d
        self.push(t + self.rtt, PROBED, task, (origin, peers))

    def _probed(self, task: int, payload: tuple[int, np.ndarray], t: float) -> None:
        origin, peers = payload
        if not self.up[origin]:
            self.t_state[task] = LOST
            self.push(t + self.sc.client_retry_s, RETRY, task)
            return
        self._count_decision(origin, t)
        self.dispatch(task, origin, self.policy.place_probed(self, origin, task, peers, t), t)

    # ---- work stealing ------------------------------------------------------------------------
    def _try_steal(self, box: int, t: float) -> None:
        """An idle box asks the most backlogged peer it knows (by its reports) for a task."""
        if self.stealing[box] or self.free_at[box] > t or self.steal_tries[box] >= STEAL_TRIES:
            return
        ok = self.sched_ok[box]
        left = np.where(ok, self.rep_free[box] - t, -np.inf)  # its reported queue, run down
        left[box] = -np.inf
        victim = int(np.argmax(left))
        # Worth a request only if the victim seems to hold more than the task it runs.
        if not left[victim] > self.rtt + self._mean_steps / self.cap[victim]:
            return
        self.stealing[box] = True
        self.steal_tries[box] += 1
        self.counters["steal_requests"] += 1
        self.push(t + self.sc.link_s, STEAL_REQ, victim, box)

    def _steal_request(self, victim: int, thief: int, t: float) -> None:
        """The victim gives its last queued (not started) task if the thief would finish it
        sooner (it knows the thief's speed from the request); else an empty reply."""
        given = -1
        q = self.queue[victim]
        if self.up[victim] and q:
            tail = q[-1]
            d = self.t_demand[tail]
            start = self.t_finish[tail] - d / self.cap[victim]
            arrive = t + self.sc.link_s + self.t_size[tail] / self.sc.link_mbit_per_s
            if start > t and arrive + d / self.cap[thief] < self.t_finish[tail]:
                q.pop()
                self.free_at[victim] = start
                self.tick_load[victim] = max(0.0, self.tick_load[victim] - d)
                self.t_state[tail] = SENT
                self.t_held[tail] -= 1
                self.counters["steals"] += 1
                given = tail
        back = self.sc.link_s
        if given >= 0:
            back += self.t_size[given] / self.sc.link_mbit_per_s
        self.push(t + back, STEAL_REPLY, thief, (given, t))

    def _steal_reply(self, thief: int, payload: tuple[int, float], t: float) -> None:
        task, sent = payload
        self.stealing[thief] = False
        if task >= 0:
            self.t_target[task] = thief
            self._deliver(task, (thief, sent), t)
            return
        self._try_steal(thief, t)

    # ---- gossip -------------------------------------------------------------------------------
    def _tick(self, box: int, t: float) -> None:
        self.push(t + self.interval, TICK, box)
        if not self.up[box]:
            return
        self.tick_load[box] = 0.0
        self.policy.start_interval(box)
        if self.sc.gossip == "full":
            self._liveness(box, t)
            self.push(t + self.rtt, APPLY, box)
        else:
            self._partial_round(box, t)
        if self.policy.steals and self.free_at[box] <= t:
            self.steal_tries[box] = 0
            self._try_steal(box, t)

    def _liveness(self, box: int, t: float) -> None:
        if self._quiet:
            return  # no loss, no failure yet: every peer answered within the interval
        silent = self.heard[box] <= t - LIVENESS_INTERVALS * self.interval
        if silent.any():
            silent &= self.sched_ok[box]
            for peer in np.flatnonzero(silent).tolist():
                self._mark_down(box, peer, t)

    def _mark_down(self, box: int, peer: int, t: float) -> None:
        self.sched_ok[box, peer] = False
        self.pending[box, peer] = 0.0
        if peer in self._fail_at:
            self._detected(peer, box, t)
        if self.up[peer]:
            self.counters["false_downs"] += 1
        for task in self.lost_by[box].pop(peer, []):
            self.live -= 1
            self._redecide(task, t, reclaimed=True)

    def _apply(self, box: int, t: float) -> None:
        """Full gossip: the replies to ``box``'s requests arrive (lost ones do not)."""
        if not self.up[box]:
            return
        N = self.N
        if self._quiet:  # every box up, nothing lost: whole rows (self's entry unused)
            self.rep_free[box] = self.free_at
            self.rep_tick[box] = self.tick_load
            self.heard[box] = t
            self.pending[box] = 0.0
            replies = N - 1
        else:
            heard = self.up.copy()
            heard[box] = False
            loss = self.sc.gossip_loss
            if loss > 0:
                heard &= self.rng.random(N) >= 1.0 - (1.0 - loss) ** 2
            np.copyto(self.rep_free[box], self.free_at, where=heard)
            np.copyto(self.rep_tick[box], self.tick_load, where=heard)
            np.copyto(self.heard[box], t, where=heard)
            np.copyto(self.pending[box], 0.0, where=heard)
            np.copyto(self.sched_ok[box], True, where=heard)
            replies = int(np.count_nonzero(heard))
        self.counters["gossip_messages"] += (N - 1) + replies
        self.counters["gossip_bytes"] += ((N - 1) + replies) * (
            GOSSIP_BODY_BYTES + FRAME_OVERHEAD_BYTES
        )

    def _shuffle_order(self, box: int) -> None:
        peers = np.flatnonzero(np.arange(self.N) != box)
        self.order[box] = self.rng.permutation(peers).tolist()

    def _partial_round(self, box: int, t: float) -> None:
        """SWIM-style: exchange reports and a digest with ``fanout`` peers, round-robin."""
        loss, N = self.sc.gossip_loss, self.N
        entries = min(self.sc.digest_entries, N - 2)
        for _ in range(min(self.sc.fanout, N - 1)):
            if not self.order[box]:
                self._shuffle_order(box)
            peer = self.order[box].pop()
            if self.dead_born[box, peer] > self.heard[box, peer]:
                continue  # known dead: not probed (a box that comes back announces itself)
            ok = bool(self.up[peer]) and bool((self.rng.random(2) >= loss).all())
            self._count(1 + ok, entries)
            if not ok:
                # Indirect probes: each helper relays a ping and (from a live target) an ack.
                self._count(INDIRECT_PROBES * (4 if self.up[peer] else 2), 0)
                if self.up[peer]:
                    ok = bool((self.rng.random(INDIRECT_PROBES) >= 1 - (1 - loss) ** 4).any())
            if ok:
                self._exchange(box, peer, t)
            else:
                self.push(t + SUSPECT_INTERVALS * self.interval, CONFIRM, box, (peer, t))

    def _count(self, messages: int, entries: int) -> None:
        self.counters["gossip_messages"] += messages
        self.counters["gossip_bytes"] += messages * (
            FRAME_OVERHEAD_BYTES + GOSSIP_BODY_BYTES + entries * DIGEST_ENTRY_BYTES
        )

    def _exchange(self, a: int, b: int, t: float) -> None:
        for src, dst in ((a, b), (b, a)):
            # The sender's own report, fresh, then its freshest relayed reports.
            one = np.array([src])
            self._learn(dst, one, self.free_at[one], self.tick_load[one], np.array([t]))
            self._relay(src, dst, t)

    def _relay(self, src: int, dst: int, t: float) -> None:
        D = self.sc.digest_entries
        born = self.heard[src]
        if D > 0:
            k = min(D, self.N - 1)
            idx = np.argpartition(-born, k - 1)[:k] if k < self.N else np.arange(self.N)
            idx = idx[(idx != dst) & np.isfinite(born[idx])]
            newer = born[idx] > self.heard[dst, idx]
            idx = idx[newer]
            if idx.size:
                self._learn(dst, idx, self.rep_free[src, idx], self.rep_tick[src, idx], born[idx])
        notes = self.notices[src]
        for peer in list(notes):
            notes[peer] -= 1
            if notes[peer] <= 0:
                del notes[peer]
            if peer != dst and self.dead_born[src, peer] > self.dead_born[dst, peer]:
                self._declare_dead(dst, peer, float(self.dead_born[src, peer]), t)

    def _learn(
        self, box: int, peers: np.ndarray, free: np.ndarray, tick: np.ndarray, born: np.ndarray
    ) -> None:
        self.rep_free[box, peers] = free
        self.rep_tick[box, peers] = tick
        self.heard[box, peers] = born
        self.pending[box, peers] = 0.0
        alive = born > self.dead_born[box, peers]
        self.sched_ok[box, peers[alive]] = True

    def _confirm(self, box: int, payload: tuple[int, float], t: float) -> None:
        peer, since = payload
        if self.up[box] and self.heard[box, peer] < since and self.sched_ok[box, peer]:
            self._declare_dead(box, peer, t, t)

    def _declare_dead(self, box: int, peer: int, born: float, t: float) -> None:
        if not self.up[box] or born <= self.heard[box, peer]:
            return
        self.dead_born[box, peer] = born
        self.notices[box][peer] = NOTICE_FACTOR * math.ceil(math.log2(self.N + 1))
        if self.sched_ok[box, peer]:
            self._mark_down(box, peer, t)

    # ---- failures and joins -------------------------------------------------------------------
    def _fail(self, box: int, t: float) -> None:
        if not self.up[box]:
            return
        self.up[box] = False
        self._quiet = False
        self._fail_at[box] = t
        q = self.queue[box]
        while q and self.t_finish[q[0]] <= t:
            q.popleft()
        for task in q:
            self.t_state[task] = LOST
            self.t_held[task] -= 1
            origin = self.t_origin[task]
            if origin != box and self.up[origin]:
                if self.sched_ok[origin, box]:
                    self.lost_by[origin].setdefault(box, []).append(task)
                    self.live += 1  # ends when the origin marks the box down
                else:
                    self.push(t, RECLAIM, task)
            else:
                self.push(t + self.sc.client_retry_s, RETRY, task)
        q.clear()
        for tasks in self.lost_by[box].values():  # its own tasks lost elsewhere: clients retry
            for task in tasks:
                self.live -= 1
                self.push(t + self.sc.client_retry_s, RETRY, task)
        self.lost_by[box] = {}
        self.free_at[box] = t
        self.tick_load[box] = 0.0
        self.stealing[box] = False
        self.sched_ok[box] = False
        self.pending[box] = 0.0

    def _detected(self, peer: int, by: int, t: float) -> None:
        """``by`` marked the failed ``peer`` down: detection times (first, every live box)."""
        failed_at = self._fail_at[peer]
        row = next(
            (d for d in self.detections if d["box"] == peer and d["failed_at"] == failed_at),
            None,
        )
        if row is None:
            row = {"box": peer, "failed_at": failed_at, "first_s": math.inf, "all_s": math.inf}
            row["known_by"] = 0.0
            self.detections.append(row)
        row["first_s"] = min(row["first_s"], t - failed_at)
        row["known_by"] += 1
        if row["known_by"] >= int(self.up.sum()):
            row["all_s"] = t - failed_at

    def _join(self, box: int, t: float) -> None:
        """A box (new, or back after a failure) starts empty; peers learn of it by gossip."""
        if self.up[box]:
            return
        self.up[box] = True
        self._fail_at.pop(box, None)
        self.free_at[box] = t
        self.heard[box] = -np.inf
        self.dead_born[box] = -np.inf
        if self.sc.gossip == "partial":
            self._shuffle_order(box)
            # It announces itself to one live box it knows (a seed), newer than any notice.
            live = np.flatnonzero(self.up & (np.arange(self.N) != box))
            if live.size:
                self._exchange(box, int(live[self.rng.integers(0, live.size)]), t)
        # Full gossip: its peers are configured; each is schedulable once heard from.

    # ---- results ------------------------------------------------------------------------------
    def _result(self, wall_s: float) -> TwinResult:
        T = len(self.arr)
        delay = np.full(T, np.nan)
        ran_on = np.array(self.t_target, dtype=np.int64)
        done = 0
        for k in range(T):
            if self.t_state[k] == QUEUED:
                box = self.t_target[k]
                delay[k] = self.t_finish[k] + self._return_s(k, box) - self.t_at[k]
                done += 1
        counted = np.zeros(T, dtype=bool)
        counted[int(self.sc.warmup_fraction * T) :] = True
        counted &= np.isfinite(delay)
        duration = max(self.t_at[-1], 1e-9) if T else 1.0
        counters = dict(self.counters)
        n_up = max(1, int(self.up.sum()))
        counters["gossip_msgs_per_box_s"] = counters["gossip_messages"] / n_up / duration
        counters["gossip_bytes_per_box_s"] = counters["gossip_bytes"] / n_up / duration
        samples = counters.pop("staleness_samples")
        counters["staleness_mean_s"] = counters.pop("staleness_sum_s") / max(1.0, samples)
        counters["forwarded_fraction"] = counters["forwarded"] / max(1, T)
        counters["makespan_s"] = float(np.nanmax(delay + self.arr.at_s)) if done else math.nan
        # Each finished task is held by exactly one queue, every other by none.
        duplicates = sum(
            1 for h, st in zip(self.t_held, self.t_state, strict=True) if h != (st == QUEUED)
        )
        return TwinResult(
            self.sc.name,
            self.policy.name,
            self.seed,
            delay,
            ran_on,
            counted,
            done,
            duplicates,
            counters,
            self.detections,
            wall_s,
        )


def simulate(scenario: Scenario, policy: Policy, seed: int = 0, **kw: Any) -> TwinResult:
    """One run: ``Twin(scenario, policy, seed, **kw).run()``."""
    return Twin(scenario, policy, seed, **kw).run()


def ratio_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Twin runs (``Result.summary`` + boxes, load, policy, seed) -> one row per (boxes, load,
    policy): means over seeds, and mean and p99 as ratios to the omniscient run of the same
    seed (cells without one are left out)."""
    ideal = {(r["boxes"], r["load"], r["seed"]): r for r in rows if r["policy"] == "omniscient"}
    cells: dict[tuple[int, float, str], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["boxes"], r["load"], r["policy"]), []).append(r)
    table = []
    for (n, load, name), runs in sorted(cells.items()):
        ratios = [
            (
                r["mean_s"] / ideal[(n, load, r["seed"])]["mean_s"],
                r["p99_s"] / ideal[(n, load, r["seed"])]["p99_s"],
            )
            for r in runs
            if (n, load, r["seed"]) in ideal
        ]
        if not ratios:
            continue
        means, p99s = zip(*ratios, strict=True)
        table.append(
            {
                "boxes": n,
                "load": load,
                "policy": name,
                "seeds": len(runs),
                "mean_s": statistics.fmean(r["mean_s"] for r in runs),
                "p99_s": statistics.fmean(r["p99_s"] for r in runs),
                "mean_ratio": statistics.fmean(means),
                "mean_ratio_min": min(means),
                "mean_ratio_max": max(means),
                "p99_ratio": statistics.fmean(p99s),
                "forwarded": statistics.fmean(r["forwarded_fraction"] for r in runs),
                "wall_s": sum(r["wall_s"] for r in runs),
                "run_wall_s": statistics.fmean(r["wall_s"] for r in runs),
            }
        )
    return table
