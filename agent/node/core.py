"""The agent's decisions, without sockets or threads: messages and worker events in, effects out.

``AgentCore`` holds the unfinished tasks, the FIFO and the subscribers. Each handler
returns a list of effects that the daemon's loop carries out in order, with one rule:
all ``Persist`` effects of a batch are committed before any ``Send`` of that batch, so a
task is in the journal before its ``accepted`` leaves the agent.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from dedgeai.agent.errors import ErrorCode
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.protocol import NodeId, TaskId
from dedgeai.agent.node.records import Placement
from dedgeai.agent.node.tasks import (
    CancelRequested,
    Failed,
    Finished,
    Forwarded,
    Interrupted,
    Reclaimed,
    Started,
    Stepped,
    Stopped,
    TaskRecord,
    TaskState,
    apply,
    backlog,
    summary,
)
from dedgeai.agent.node.worker import Job, JobFailed, JobFinished, JobStopped, StepDone, WorkerEvent
from dedgeai.agent.security.authority import LOCAL_CLIENT, Principal, may_touch, owner_filter
from dedgeai.models.backend import SpeedProfile

MAX_SUBSCRIBERS_PER_TASK = 16
MAX_CANCELLED_UNKNOWN = 4096  # cancels of unknown tasks remembered (oldest forgotten first)
RECENTLY_FINISHED = 1024  # finished tasks kept in memory (the newest): see ``_finish``
Route = tuple[bytes, ...]  # ROUTER identity frames (plus an empty delimiter for REQ peers)


@dataclass(frozen=True)
class Send:
    route: Route
    message: dict[str, Any]
    png: bytes | None = None  # a second frame (``done``)


@dataclass(frozen=True)
class Persist:
    task: TaskRecord


@dataclass(frozen=True)
class StartJob:
    job: Job


@dataclass(frozen=True)
class CancelJob:
    task: TaskId


@dataclass(frozen=True)
class Forward:
    """Send (or send again: it is idempotent by task id) a forwarded task to its peer."""

    task: TaskRecord


@dataclass(frozen=True)
class CancelRemote:
    task: TaskRecord


@dataclass(frozen=True)
class Place:
    """Ask the cluster where a first-hop task runs; its answer comes back through
    :meth:`AgentCore.placed`: in the same batch (the daemon does both before it commits),
    or, for a policy that probes its peers first (``pod2``), in a later turn. Until then
    the task is in ``placing``: queued nowhere, not journaled, its ``accepted`` owed."""

    task: TaskRecord


Effect = Send | Persist | StartJob | CancelJob | Forward | CancelRemote | Place


class Store(Protocol):
    """What the core reads from disk: finished tasks and their images."""

    def finished(self, task: str) -> TaskRecord | None: ...

    def png(self, task: str) -> bytes | None: ...

    def result_meta(self, task: str) -> dict[str, Any] | None: ...

    def recent(
        self, limit: int, state: str | None, owner: str | None = None
    ) -> list[TaskRecord]: ...

    def take_seq(self) -> int: ...


class AgentCore:
    def __init__(self, node: NodeId, max_queue: int, store: Store) -> None:
        self.node = node
        self.max_queue = max_queue
        self.store = store
        self.tasks: dict[TaskId, TaskRecord] = {}  # unfinished only; finished live on disk
        self.queue: deque[TaskId] = deque()
        self.running: TaskId | None = None
        self.subscribers: dict[TaskId, list[tuple[Route, str]]] = {}
        self.accepting = True
        self.profile: SpeedProfile | None = None
        self.counters: Counter[str] = Counter()  # since this start: started, done, failed, ...
        # False: every task runs here (a single box); True: first-hop tasks are placed by
        # the cluster (a ``Place`` effect, answered with ``placed``). See ``join_cluster``.
        self.clustered = False
        self.identity: dict[str, Any] = {"node": node}  # recorded as ``ran_on`` in results
        # Tasks admitted and waiting for their placement (the ``Place`` effect in flight), with
        # the ``accepted`` reply owed to their submitter (None: a re-dispatch owes none).
        self.placing: dict[TaskId, tuple[Route, str] | None] = {}
        # Every task id the journal may hold (see ``remember``): a submit with an id not in it
        # is new without a journal read. None: not known, every id is looked up.
        self.known_ids: set[str] | None = None
        # The newest finished tasks. A task leaves ``tasks`` when it finishes, but its final
        # row is committed only at the end of the loop's turn: a retried submit read in the
        # same turn must find it here, not in the journal (where it still looks unfinished,
        # so it would be admitted and run a second time).
        self.recently_finished: OrderedDict[TaskId, TaskRecord] = OrderedDict()
        # Forwarded tasks resumed from the journal, waiting for their origin to ask again
        # (task -> since when): the origin may have re-dispatched them while we were down.
        self.held: dict[TaskId, float] = {}
        # Set while the journal cannot be written (disk full): new submits are refused.
        self.storage_error: str | None = None
        # After a freeze, forwards still in the socket may be stale: held until this time.
        self.hold_forwards_until = 0.0
        # Tasks cancelled before this agent knew them (a reclaim's cancel overtook its own
        # stale forward): a later forward of one of them is refused, not run.
        self.cancelled_unknown: OrderedDict[TaskId, float] = OrderedDict()

    # --- wiring --------------------------------------------------------------------

    def join_cluster(self, identity: dict[str, Any], peers: bool) -> None:
        """Results record ``identity`` as ``ran_on``. With ``peers``, first-hop tasks are
        placed by the cluster from now on (a ``Place`` effect each, answered by ``placed``);
        without, every task runs here and admission asks nobody (a single box)."""
        self.clustered = peers
        self.identity = dict(identity)

    def remember(self, ids: Iterable[str]) -> None:
        """The ids the journal holds at start: later submits with other ids skip the lookup."""
        self.known_ids = set(ids)

    def forget(self, ids: Iterable[str]) -> None:
        """Ids that retention deleted from the journal."""
        ids = set(ids)
        if self.known_ids is not None:
            self.known_ids.difference_update(ids)
        for task in ids & self.recently_finished.keys():
            del self.recently_finished[task]

    # --- recovery ------------------------------------------------------------------

    def recover(
        self, records: list[TaskRecord], now: float, hold_forwarded: bool = False
    ) -> list[Effect]:
        """Load the journal's unfinished tasks: interrupted runs go back to the queue.

        With ``hold_forwarded`` (an agent with peers), a task forwarded here by another origin
        waits in ``held`` until that origin asks for it again (see :meth:`_resubmit`).
        """
        effects: list[Effect] = []
        for task in sorted(records, key=lambda t: t.seq):
            if task.state is TaskState.RUNNING:
                meta = self.store.result_meta(task.id)
                if meta is not None:  # the image was stored but the commit was lost
                    task = apply(task, Finished(meta.get("finished_at", now), meta))
                else:
                    task = apply(task, Interrupted())
                    if task.cancel_requested:
                        task = apply(task, CancelRequested(now))
                effects.append(Persist(task))
            if task.state is TaskState.QUEUED and hold_forwarded and task.origin != self.node:
                # Run it only once its origin asks for it again (it re-sends the same submit
                # when it sees us back); an origin that moved it elsewhere never does.
                self.tasks[task.id] = task
                self.held[task.id] = now
            elif task.state is TaskState.QUEUED:
                self.tasks[task.id] = task
                self.queue.append(task.id)
            elif task.state is TaskState.FORWARDED:  # ask its peer again (idempotent)
                self.tasks[task.id] = task
                effects.append(Forward(task))
        return effects

    # --- client messages -----------------------------------------------------------

    def handle(
        self,
        route: Route,
        msg: p.ClientMessage,
        now: float,
        sender: Principal = LOCAL_CLIENT,
    ) -> list[Effect]:
        """One message whose type ``sender`` may send (``Authority.check`` ran already)."""
        match msg:
            case p.Submit():
                return self._submit(route, msg, now, sender)
            case p.ResultRequest():
                return self._result(route, msg, sender)
            case p.CancelRequest():
                return self._cancel(route, msg, now, sender)
            case p.TasksRequest():
                return [Send(route, self.task_list(msg, sender))]
        raise TypeError(f"status is answered by the daemon, not the core: {msg!r}")

    def position(self, task: TaskId) -> int:
        """Tasks that run before this one starts (0: running or next)."""
        if task == self.running:
            return 0
        queue = self.queue
        if queue and queue[-1] == task:  # just admitted: last (one scan less)
            ahead = len(queue) - 1
        else:
            try:
                ahead = queue.index(task)
            except ValueError:
                ahead = 0
        return ahead + (1 if self.running is not None else 0)

    def _subscribe(self, task: TaskId, route: Route, request_id: str) -> None:
        subs = self.subscribers.setdefault(task, [])
        if (route, request_id) not in subs:
            subs.append((route, request_id))
            del subs[:-MAX_SUBSCRIBERS_PER_TASK]

    def owned(self) -> int:
        """Unfinished tasks this agent answers for besides the running one: queued here,
        forwarded to peers (they may come back), held for their origin."""
        return len(self.tasks) - (self.running is not None)

    def _submit(self, route: Route, msg: p.Submit, now: float, sender: Principal) -> list[Effect]:
        if not self.accepting:
            text = "the agent is shutting down; submit again after it restarts"
            return [Send(route, p.error_reply(msg.id, ErrorCode.SHUTTING_DOWN, text))]
        if msg.origin == self.node:
            text = "`origin` names this agent: a task is never forwarded back to its origin"
            return [Send(route, p.error_reply(msg.id, ErrorCode.BAD_FIELD, text, field="origin"))]
        if msg.task is not None:
            known = self.tasks.get(msg.task) or self.recently_finished.get(msg.task)
            if known is None and (self.known_ids is None or msg.task in self.known_ids):
                known = self.store.finished(msg.task)
            if known is not None:  # a retried submit: same task, never run twice
                if not may_touch(sender, known):
                    text = f"task id {known.id} is taken by another client; choose another"
                    return [Send(route, p.error_reply(msg.id, ErrorCode.FORBIDDEN, text))]
                return self._resubmit(route, msg, known, now)
        if self.storage_error is not None:
            text = f"the agent cannot journal new tasks ({self.storage_error}); retry later"
            return [Send(route, p.error_reply(msg.id, ErrorCode.STORAGE, text))]
        if msg.origin is not None and msg.task in self.cancelled_unknown:
            text = "its origin cancelled this task before it arrived here"
            return [Send(route, p.error_reply(msg.id, ErrorCode.CANCELLED, text, msg.task))]
        if self.owned() >= self.max_queue:
            self.counters["busy"] += 1
            text = f"the queue is full ({self.max_queue} tasks); retry later"
            return [Send(route, p.error_reply(msg.id, ErrorCode.BUSY, text))]
        task = TaskRecord(
            id=msg.task or p.new_task_id(),
            origin=msg.origin or self.node,
            request=msg.request,
            seq=self.store.take_seq(),
            submitted_at=now,
            owner=msg.owner or sender.id,
        )
        self.counters["accepted"] += 1
        if self.known_ids is not None:
            self.known_ids.add(task.id)
        if task.origin != self.node:  # forwarded to us: at most one hop, it runs here
            task = replace(task, placement=Placement(forwarded_by=task.origin, via=sender.id))
        if msg.wait:
            self._subscribe(task.id, route, msg.id)
        if task.origin != self.node and now < self.hold_forwards_until:
            self.tasks[task.id] = task  # maybe stale (sent before a freeze): its origin asks
            self.held[task.id] = now  # again if it still wants it from us
            effects: list[Effect] = [Persist(task)]
        elif self._needs_placement(task):
            self.tasks[task.id] = task
            self.placing[task.id] = (route, msg.id)  # ``placed`` sends the ``accepted``
            return [Place(task)]
        else:
            effects = self._enqueue(task)
        return [*effects, Send(route, self._accepted(msg.id, task.id))]

    def _accepted(self, request_id: str, task_id: TaskId) -> dict[str, Any]:
        live = self.tasks.get(task_id)
        if live is None:  # it ended in the same batch (a cancel): nothing runs before it
            return p.accepted_reply(request_id, task_id, 0, self.node)
        reply = p.accepted_reply(request_id, task_id, self.position(task_id), live.origin)
        if live.state is TaskState.FORWARDED:
            reply["forwarded_to"] = live.placement.name
        return reply

    def _needs_placement(self, task: TaskRecord) -> bool:
        return self.clustered and task.origin == self.node

    def _enqueue(self, task: TaskRecord) -> list[Effect]:
        self.tasks[task.id] = task
        self.queue.append(task.id)
        return [Persist(task)]

    def dispatch(self, task: TaskRecord, now: float) -> list[Effect]:
        """Queue a (re)admitted task here, or ask the cluster where it runs (``Place``)."""
        if self._needs_placement(task):
            self.tasks[task.id] = task
            self.placing.setdefault(task.id, None)
            return [Place(task)]
        return self._enqueue(task)

    def placed(self, task_id: TaskId, placement: Placement, now: float) -> list[Effect]:
        """The cluster's answer to ``Place``: queue the task here or forward it, then send
        the ``accepted`` owed to its submitter. A task that moved on meanwhile (cancelled in
        the same batch) is left as it is; its submitter still gets its ``accepted``."""
        if task_id not in self.placing:
            return []
        owed = self.placing.pop(task_id)
        task = self.tasks.get(task_id)
        effects: list[Effect] = []
        if task is not None and task.state is TaskState.QUEUED and task_id not in self.held:
            placement = placement.with_(**task.placement.carried())
            if placement.local is False:
                task = self.tasks[task.id] = apply(task, Forwarded(now, placement))
                self.counters["forwarded"] += 1
                effects = [Persist(task), Forward(task)]
            else:
                effects = self._enqueue(replace(task, placement=placement))
        if owed is not None:
            route, request_id = owed
            effects.append(Send(route, self._accepted(request_id, task_id)))
        return effects

    def stealable(self, task_id: TaskId) -> bool:
        """Whether a queued task may still be handed to another agent (work stealing): queued
        here, not started, not held for its origin, no cancel pending."""
        task = self.tasks.get(task_id)
        return (
            task is not None
            and task.state is TaskState.QUEUED
            and not task.cancel_requested
            and task_id not in self.held
            and task_id not in self.placing
            and task_id != self.running
        )

    def hand_over(self, task_id: TaskId, placement: Placement, now: float) -> list[Effect]:
        """Give a queued, not started task to the peer that asked for work (``placement``
        names it): taken out of the queue and forwarded to it, journaled first, so it never
        starts here unless the forward is reclaimed. [] when it may not move (see
        ``stealable``). A task forwarded here by its origin stays in our charge: its result
        is relayed back the way it came (peer -> here -> origin)."""
        if not self.stealable(task_id):
            return []
        try:
            self.queue.remove(task_id)
        except ValueError:  # queued, yet not in the queue: not ours to give
            return []
        task = self.tasks[task_id] = apply(self.tasks[task_id], Forwarded(now, placement))
        self.counters["stolen_out"] += 1
        return [Persist(task), Forward(task)]

    # --- forwarded tasks (called by ``cluster.forwarding`` with what its peer said) ---

    def finish(self, task: TaskRecord, png: bytes | None = None) -> list[Effect]:
        return self._finish(task, png)

    def relayed(self, task_id: TaskId, stage: str, step: int, position: int) -> list[Effect]:
        """Progress of a forwarded task from its peer, passed on to its subscribers."""
        task = self.tasks[task_id]
        if stage != "queued":
            task = self.tasks[task_id] = apply(task, Stepped(step))
        return self._notify(task, stage, position)

    def reclaim(self, task_id: TaskId, why: str, max_redispatches: int, now: float) -> list[Effect]:
        """Take a forwarded task back from its peer and dispatch it again, avoiding that peer
        (at its origin once it was re-dispatched ``max_redispatches`` times)."""
        task = self.tasks[task_id]
        slot = task.placement.target
        task = apply(task, Reclaimed(why))
        avoid = sorted({*task.placement.avoid, *([] if slot is None else [slot])})
        local = task.placement.redispatches >= max_redispatches
        placement = task.placement.with_(avoid=avoid, force_local=local)
        task = self.tasks[task.id] = replace(task, placement=placement)
        self.counters["reclaimed"] += 1
        if task.cancel_requested:  # nothing left to cancel remotely: end it here
            return self._finish(apply(task, CancelRequested(now)))
        return self.dispatch(task, now)

    def _resubmit(self, route: Route, msg: p.Submit, known: TaskRecord, now: float) -> list[Effect]:
        # Its origin still wants it from us: run it now. Not while the socket may still hold
        # stale copies from before a freeze: a second copy of an old submit is no new ask.
        if known.id in self.placing:  # not journaled yet: no `accepted` before it is
            if msg.wait:  # (its first submit gets one once placed; a retry comes again)
                self._subscribe(known.id, route, msg.id)
            return []
        if known.id in self.held and now >= self.hold_forwards_until:
            del self.held[known.id]
            if known.state is TaskState.QUEUED:  # (a running one being stopped requeues itself)
                self.queue.append(known.id)
            self.counters["resumed"] += 1
        if not known.state.finished:
            if msg.wait:
                self._subscribe(known.id, route, msg.id)
            reply = p.accepted_reply(msg.id, known.id, self.position(known.id), known.origin)
            return [Send(route, reply)]
        effects: list[Effect] = [Send(route, p.accepted_reply(msg.id, known.id, 0, known.origin))]
        if msg.wait:
            effects.append(self._final_reply(route, msg.id, known))
        return effects

    def _final_reply(self, route: Route, request_id: str, task: TaskRecord) -> Send:
        if task.state is TaskState.DONE:
            png = self.store.png(task.id)
            if png is None:
                text = "the image file of this task is gone from the results directory"
                return Send(route, p.error_reply(request_id, ErrorCode.NOT_FOUND, text, task.id))
            return Send(route, p.envelope("done", request_id, **task.result), png)
        code = ErrorCode.CANCELLED if task.state is TaskState.CANCELLED else ErrorCode.TASK_FAILED
        text = task.error or task.state.value
        return Send(route, p.error_reply(request_id, code, text, task.id))

    def _snapshot(self, request_id: str, task: TaskRecord) -> dict[str, Any]:
        steps = task.request.steps
        waiting = task.state is TaskState.QUEUED or (
            task.state is TaskState.FORWARDED and not task.step
        )
        stage = "queued" if waiting else p.STAGES[1 + (task.step >= steps)]
        return p.progress_reply(
            request_id, task.id, stage, task.step, steps, self.position(task.id)
        )

    def _result(self, route: Route, msg: p.ResultRequest, sender: Principal) -> list[Effect]:
        live = self.tasks.get(msg.task)
        if live is not None and not may_touch(sender, live):
            return [Send(route, _not_found(msg.id, msg.task))]  # others' tasks do not exist
        if live is not None:
            if msg.wait:
                self._subscribe(live.id, route, msg.id)
            return [Send(route, self._snapshot(msg.id, live))]
        finished = self._finished(msg.task)
        if finished is None or not may_touch(sender, finished):
            return [Send(route, _not_found(msg.id, msg.task))]
        return [self._final_reply(route, msg.id, finished)]

    def _finished(self, task: TaskId) -> TaskRecord | None:
        """A finished task: from memory while its final commit may still be pending."""
        return self.recently_finished.get(task) or self.store.finished(task)

    def _cancel(
        self, route: Route, msg: p.CancelRequest, now: float, sender: Principal
    ) -> list[Effect]:
        live = self.tasks.get(msg.task)
        if live is not None and not may_touch(sender, live):
            return [Send(route, _not_found(msg.id, msg.task))]
        if live is None:
            finished = self._finished(msg.task)
            if finished is None or not may_touch(sender, finished):
                if finished is None:
                    self.cancelled_unknown[msg.task] = now
                    while len(self.cancelled_unknown) > MAX_CANCELLED_UNKNOWN:
                        self.cancelled_unknown.popitem(last=False)
                return [Send(route, _not_found(msg.id, msg.task))]
            text = f"the task already ended: {finished.state.value}"
            return [Send(route, p.error_reply(msg.id, ErrorCode.ALREADY_FINISHED, text, msg.task))]
        task = apply(live, CancelRequested(now))
        reply = p.envelope("cancelled", msg.id, task=task.id, state="cancelling")
        if task.state is TaskState.FORWARDED:  # its peer answers with `cancelled` or `done`
            self.tasks[task.id] = task
            return [Persist(task), CancelRemote(task), Send(route, reply)]
        if task.state is TaskState.RUNNING:
            self.tasks[task.id] = task
            return [Persist(task), CancelJob(task.id), Send(route, reply)]
        if task.id in self.queue:
            self.queue.remove(task.id)
        self.held.pop(task.id, None)
        reply["state"] = "cancelled"
        return [*self._finish(task), Send(route, reply)]

    def task_list(self, msg: p.TasksRequest, sender: Principal = LOCAL_CLIENT) -> dict[str, Any]:
        owner = owner_filter(sender)
        records = {t.id: t for t in self.store.recent(msg.limit, msg.state, owner)}
        records.update(
            (t.id, t)
            for t in self.tasks.values()
            if msg.state in (None, t.state.value) and owner in (None, t.owner)
        )
        newest = sorted(records.values(), key=lambda t: t.seq, reverse=True)[: msg.limit]
        return p.envelope("task_list", msg.id, tasks=[summary(t) for t in newest])

    # --- worker events and dispatch ----------------------------------------------

    def on_worker(self, event: WorkerEvent, now: float) -> list[Effect]:
        task_id = getattr(event, "task", None)  # ProfileReady is handled by the daemon
        task = self.tasks.get(task_id) if task_id is not None else None
        if task is None or task.state is not TaskState.RUNNING:
            return []  # a late event for a task that already moved on
        match event:
            case StepDone(step=step, steps=steps):
                task = self.tasks[task.id] = apply(task, Stepped(step))
                stage = "decode" if step >= steps else "denoise"
                return self._notify(task, stage)
            case JobFinished(at=at, meta=meta, png=png):
                placement = task.placement.to_wire() or None
                meta = {**meta, "ran_on": self.identity, "placement": placement}
                done = apply(task, Finished(at, meta))
                return self._finish(done, png)
            case JobFailed(at=at, error=error):
                return self._finish(apply(task, Failed(at, error)))
            case JobStopped(at=at):
                if task.cancel_requested:
                    return self._finish(apply(task, Stopped(at)))
                requeued = self.tasks[task.id] = apply(task, Interrupted())
                if task.id not in self.held:  # a held one waits for its origin instead
                    self.queue.appendleft(task.id)  # a checkpointed task keeps its place
                self.running = None
                return [Persist(requeued)]
        return []

    def hold_forwarded(self, now: float, stale_for_s: float = 0.0) -> list[Effect]:
        """This agent was frozen (SIGSTOP, a suspended VM) long enough for origins to have
        taken their tasks back: no forwarded task runs here until its origin asks again.

        Queued ones wait in ``held``; a running one is stopped at its next step and waits too
        (its origin re-sends the same submit if it still wants it from us, see ``_resubmit``).
        """
        effects: list[Effect] = []
        self.hold_forwards_until = now + stale_for_s
        for task_id in [t for t in self.queue if self.tasks[t].origin != self.node]:
            self.queue.remove(task_id)
            self.held[task_id] = now
        running = self.tasks.get(self.running) if self.running is not None else None
        if running is not None and running.origin != self.node and not running.cancel_requested:
            self.held[running.id] = now
            effects.append(CancelJob(running.id))
        return effects

    def drop_unjournaled(self, task_id: TaskId) -> None:
        """Forget a task admitted in a batch whose journal commit failed (its submitter is
        told ``storage``): it was never acknowledged, so nothing else refers to it."""
        self.tasks.pop(task_id, None)
        self.held.pop(task_id, None)
        self.placing.pop(task_id, None)
        self.subscribers.pop(task_id, None)
        if task_id in self.queue:
            self.queue.remove(task_id)
        if self.running == task_id:
            self.running = None

    def release_held(self, task_id: TaskId, now: float, why: str) -> list[Effect]:
        """Drop a resumed forwarded task that its origin did not ask for again: it is not run."""
        self.held.pop(task_id, None)
        task = self.tasks.get(task_id)
        if task is None or task.state is not TaskState.QUEUED:
            return []
        self.counters["released"] += 1
        stopped = replace(apply(task, CancelRequested(now)), error=why)
        return self._finish(stopped)

    def _finish(self, task: TaskRecord, png: bytes | None = None) -> list[Effect]:
        """Persist a finished task, tell its subscribers, forget it (disk has it now)."""
        self.tasks.pop(task.id, None)
        self.held.pop(task.id, None)
        self.recently_finished[task.id] = task
        self.recently_finished.move_to_end(task.id)
        if len(self.recently_finished) > RECENTLY_FINISHED:
            self.recently_finished.popitem(last=False)
        if self.running == task.id:
            self.running = None
        self.counters[task.state.value] += 1
        effects: list[Effect] = [Persist(task)]
        for route, rid in self.subscribers.pop(task.id, []):
            if task.state is TaskState.DONE:
                effects.append(Send(route, p.envelope("done", rid, **task.result), png or b""))
            else:
                effects.append(self._final_reply(route, rid, task))
        return effects

    def _notify(self, task: TaskRecord, stage: str, position: int = 0) -> list[Effect]:
        subs = self.subscribers.get(task.id, [])
        steps = task.request.steps
        return [
            Send(route, p.progress_reply(rid, task.id, stage, task.step, steps, position))
            for route, rid in subs
        ]

    def plan(self, now: float) -> list[Effect]:
        """Start the head of the queue when the worker is idle."""
        if self.running is not None or not self.queue or not self.accepting:
            return []
        task = apply(self.tasks[self.queue.popleft()], Started(now))
        self.tasks[task.id] = task
        self.running = task.id
        self.counters["started"] += 1
        job = Job(task.id, task.origin, task.request, task.submitted_at, now, task.attempts)
        effects: list[Effect] = [Persist(task), StartJob(job), *self._notify(task, "denoise")]
        if len(self.subscribers) > (task.id in self.subscribers):  # a queued task has a waiter
            for ahead, queued in enumerate(self.queue, start=1):  # everyone behind moved up one
                if queued in self.subscribers:
                    effects += self._notify(self.tasks[queued], "queued", ahead)
        return effects

    def backlog(self) -> tuple[int, float | None]:
        return backlog((t for t in self.tasks.values() if t.id not in self.held), self.profile)


def _not_found(request_id: str, task: TaskId) -> dict[str, Any]:
    text = f"no task {task} here (never submitted, or deleted by retention)"
    return p.error_reply(request_id, ErrorCode.NOT_FOUND, text, task)
