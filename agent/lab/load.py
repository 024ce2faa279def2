"""Load for a local cluster: the packaged Flickr8k prompts, Poisson traces, and a replayer.

The replayer submits each arrival of a trace at its time to its origin agent, one client
thread per task (clients talk only to their own agent), and records what the client saw:
where the task ran and why (from the ``done`` reply), its service delay (submit -> done,
client clock), and any error. Submits carry a task id chosen here, so a retry after the
origin restarts is answered with the same task, never a second one.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from dedgeai.agent.errors import (
    AgentBusy,
    DedgeaiError,
    PeerUnavailable,
    RemoteError,
    remote_error,
)
from dedgeai.agent.lab.harness import LocalCluster
from dedgeai.agent.node.protocol import Reply
from dedgeai.models.backend import GenerationRequest
from dedgeai.scheduler.stats import percentile

PROMPTS_RESOURCE = ("data", "flickr8k_prompts.txt")
STEPS_RANGE = (10, 19)  # the authors' prototype draws 10-19 denoising steps per task
CLIENT_TIMEOUT_S = 3.0
BUSY_RETRY_S = 0.5
POLL_S = 0.25  # how often a waiting client thread checks whether the replay stopped


@cache
def flickr8k_prompts() -> tuple[str, ...]:
    """The Flickr8k captions shipped with ``dedgeai.agent`` (one per line)."""
    path = resources.files("dedgeai.agent").joinpath(*PROMPTS_RESOURCE)
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


@dataclass(frozen=True)
class Arrival:
    at_s: float  # seconds after the start of the trace
    origin: int  # index of the agent the client submits to
    prompt: str
    steps: int
    width: int = 512
    height: int = 512
    seed: int = 0

    def request(self) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.prompt,
            steps=self.steps,
            width=self.width,
            height=self.height,
            seed=self.seed,
        ).validate()


def poisson_trace(
    n_tasks: int,
    rate_per_s: float,
    n_origins: int,
    seed: int = 0,
    steps: tuple[int, int] = STEPS_RANGE,
    size: tuple[int, int] = (512, 512),
) -> list[Arrival]:
    """``n_tasks`` Poisson arrivals at ``rate_per_s``, origins and steps uniform, Flickr8k prompts."""
    rng = np.random.default_rng(seed)
    prompts = flickr8k_prompts()
    times = np.cumsum(rng.exponential(1.0 / rate_per_s, size=n_tasks))
    return [
        Arrival(
            at_s=float(t),
            origin=int(rng.integers(n_origins)),
            prompt=prompts[int(rng.integers(len(prompts)))],
            steps=int(rng.integers(steps[0], steps[1] + 1)),
            width=size[0],
            height=size[1],
            seed=int(rng.integers(2**31)),
        )
        for t in times
    ]


@dataclass
class Outcome:
    """What the client saw of one task."""

    index: int
    task: str
    origin: str
    steps: int
    state: str = "waiting"  # waiting, queued, forwarded, running, done, failed, lost
    target: str | None = None  # the agent that ran it
    policy: str | None = None
    reason: str | None = None
    step: int = 0
    submitted_at: float | None = None  # monotonic
    delay_s: float | None = None
    error: str | None = None
    emulated: bool = False
    png: bytes = field(default=b"", repr=False)
    done_fields: dict[str, Any] = field(default_factory=dict, repr=False)


def placement_of(fields: dict[str, Any], names: dict[str, str]) -> tuple[str | None, str, str]:
    """(agent that ran it, policy, reason) from a ``done`` reply; names maps node -> name."""
    ran_on = fields.get("ran_on") or {}
    placement = fields.get("placement") or {}
    node = ran_on.get("node") if isinstance(ran_on, dict) else None
    target = names.get(str(node)) or (ran_on.get("name") if isinstance(ran_on, dict) else None)
    policy = str(placement.get("policy") or ("local" if not placement else "?"))
    reason = str(placement.get("reason") or "")
    if placement.get("redispatches"):
        reason = f"{reason} (re-dispatched x{placement['redispatches']})".strip()
    return target, policy, reason


class Replayer:
    """Replays a trace against a cluster, one client thread per task.

    Args:
        cluster: a started LocalCluster.
        trace: the arrivals (``origin`` indexes ``cluster.agents``).
        deadline_s: after the last arrival, how long unfinished tasks are waited for; those
            still unfinished then are ``lost``.
        on_change: called (from client threads) whenever an outcome changes.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        trace: Sequence[Arrival],
        deadline_s: float = 120.0,
        on_change: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.cluster, self.trace, self.deadline_s = cluster, list(trace), deadline_s
        self.on_change = on_change or (lambda _outcome: None)
        names = [a.name for a in cluster.agents]
        self.outcomes = [
            Outcome(i, str(uuid.uuid4()), names[a.origin], a.steps) for i, a in enumerate(trace)
        ]
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._stop = threading.Event()

    @property
    def started(self) -> float:
        return self._started

    def run(self, hooks: Sequence[tuple[float, Callable[[], None]]] = ()) -> list[Outcome]:
        """Submit every arrival on time, run ``hooks`` (seconds, action) in between, wait."""
        self._started = time.monotonic()
        events = sorted(
            [(a.at_s, i, None) for i, a in enumerate(self.trace)]
            + [(at, -1 - k, action) for k, (at, action) in enumerate(hooks)],
            key=lambda e: (e[0], e[1]),
        )
        try:
            for at_s, index, action in events:
                delay = self._started + at_s - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                if action is not None:
                    action()
                    continue
                thread = threading.Thread(target=self._run_one, args=(index,), daemon=True)
                thread.start()
                self._threads.append(thread)
            end = time.monotonic() + self.deadline_s
            for thread in self._threads:
                thread.join(max(0.0, end - time.monotonic()))
        finally:
            self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT_S * 4)
        for outcome in self.outcomes:
            if outcome.state not in ("done", "failed"):
                outcome.state, outcome.error = "lost", outcome.error or "no result before deadline"
        return self.outcomes

    def stop(self) -> None:
        self._stop.set()

    # --- one task ---------------------------------------------------------------------

    def _update(self, outcome: Outcome, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(outcome, key, value)
        self.on_change(outcome)

    def _on_reply(self, outcome: Outcome, reply: Reply) -> None:
        if reply.type == "accepted":
            forwarded = reply.get("forwarded_to")
            self._update(outcome, state="forwarded" if forwarded else "queued", target=forwarded)
        elif reply.type == "progress":
            stage = reply.get("stage")
            state = "queued" if stage == "queued" else "running"
            self._update(outcome, state=state, step=int(reply.get("step") or 0))

    def _run_one(self, index: int) -> None:
        arrival, outcome = self.trace[index], self.outcomes[index]
        request = arrival.request()
        outcome.submitted_at = time.monotonic()
        self.on_change(outcome)
        try:
            with self.cluster.client(arrival.origin, timeout_s=CLIENT_TIMEOUT_S) as client:
                self._submit(client, request, outcome)
                done = self._await(client, outcome)
        except DedgeaiError as exc:
            state = "failed" if isinstance(exc, RemoteError) else "lost"
            self._update(outcome, state=state, error=str(exc))
            return
        if done is None:
            return
        delay = time.monotonic() - outcome.submitted_at
        target, policy, reason = placement_of(done.fields, self.cluster.node_names())
        self._update(
            outcome,
            state="done",
            delay_s=delay,
            target=target or outcome.target,
            policy=policy,
            reason=reason,
            step=outcome.steps,
            emulated=bool(done.get("emulated")),
            png=done.png or b"",
            done_fields=dict(done.fields),
        )

    def _submit(self, client: Any, request: GenerationRequest, outcome: Outcome) -> None:
        while True:
            try:
                reply = client.submit(request, task=outcome.task, wait=True)
                self._on_reply(outcome, reply)
                return
            except (PeerUnavailable, AgentBusy) as exc:
                # The origin is down or full: keep trying (the id makes a retry safe).
                if self._stop.wait(BUSY_RETRY_S):
                    raise
                outcome.error = str(exc)

    def _await(self, client: Any, outcome: Outcome) -> Reply | None:
        """Like ``AgentClient.wait``, but it gives up when the replay stops."""
        heard = time.monotonic()
        while not self._stop.is_set():
            try:
                reply = client.recv(POLL_S)
                if reply is None:
                    if time.monotonic() - heard < CLIENT_TIMEOUT_S:
                        continue
                    # Silence: re-subscribe (after an origin restart) and prove it is alive.
                    reply = client.result(outcome.task, wait=True)
            except PeerUnavailable as exc:  # the origin restarts: its journal has the task
                outcome.error = str(exc)
                continue
            heard = time.monotonic()
            if reply.get("task") != outcome.task:
                continue
            if reply.type == "done":
                return reply
            if reply.type == "error":
                raise remote_error(reply.get("code"), reply.get("message"), outcome.task)
            self._on_reply(outcome, reply)
        return None


@dataclass(frozen=True)
class DelayStats:
    count: int
    done: int
    lost: int
    failed: int
    mean_s: float
    p95_s: float
    ran_on: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__}


def summarise(outcomes: Sequence[Outcome]) -> DelayStats:
    delays = [o.delay_s for o in outcomes if o.state == "done" and o.delay_s is not None]
    ran_on: dict[str, int] = {}
    for o in outcomes:
        if o.state == "done":
            key = o.target or "?"
            ran_on[key] = ran_on.get(key, 0) + 1
    return DelayStats(
        count=len(outcomes),
        done=len(delays),
        lost=sum(o.state == "lost" for o in outcomes),
        failed=sum(o.state == "failed" for o in outcomes),
        mean_s=statistics.fmean(delays) if delays else math.nan,
        p95_s=percentile(delays, 95),
        ran_on=dict(sorted(ran_on.items())),
    )
