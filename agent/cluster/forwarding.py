"""Forwarding at the origin: a task sent to a peer, its journal ack, its relayed result.

The origin has already journaled the task as ``forwarded`` (``core.placed``). The peer is
asked with an ordinary ``submit`` carrying the task id, ``origin`` and ``wait: true``: its
``accepted`` is the journal acknowledgement (the peer journals before it answers), then it
streams ``progress`` and ``done`` back on the same connection. The same message is sent
again whenever the task has been quiet for a while: it is idempotent by task id, and it
re-subscribes after the peer restarted (the peer resumes the task from its journal).

A task is reclaimed and dispatched again (here, or to another live peer) when its peer
does not acknowledge in time, refuses it (busy, shutting down, unknown task), or goes
down. A result that arrives from a peer the task no longer belongs to is dropped: the
client sees exactly one ``done``. No sockets here; the daemon sends what this returns. The
core's tasks change only through its methods (``relayed``, ``finish``, ``reclaim``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dedgeai.agent.errors import ErrorCode
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.core import AgentCore, CancelRemote, Effect
from dedgeai.agent.node.protocol import Reply, TaskId
from dedgeai.agent.node.results import ResultStore
from dedgeai.agent.node.tasks import Failed, Finished, Stopped, TaskRecord, TaskState, apply

log = logging.getLogger("dedgeai.agent.cluster.forwarding")

FORWARD_ID_PREFIX = "fwd:"  # request id of a forwarded submit: "fwd:<task>"
CANCEL_ID_PREFIX = "fcx:"
MAX_REDISPATCHES = 3  # after this many reclaims a task runs at its origin
MAX_TOMBSTONES = 4096  # reclaimed tasks remembered per slot, to cancel when it is back
FULL_SCAN_S = 1.0  # how often ``tick`` looks through every task, not only the tracked forwards
REFUSALS = {  # answers that mean "this peer will not run it": dispatch again
    ErrorCode.BUSY.value,
    ErrorCode.SHUTTING_DOWN.value,
    ErrorCode.NOT_FOUND.value,
    ErrorCode.BAD_VERSION.value,
    ErrorCode.BAD_TYPE.value,
    ErrorCode.BAD_FIELD.value,
    ErrorCode.INTERNAL.value,
}


@dataclass
class Outstanding:
    slot: int
    sent_at: float
    acked: bool = False
    heard_at: float = 0.0


def forward_message(task: TaskRecord) -> dict[str, Any]:
    """The ``submit`` a peer receives for a forwarded task."""
    return p.envelope(
        "submit",
        FORWARD_ID_PREFIX + task.id,
        **p.request_to_wire(task.request),
        task=task.id,
        origin=task.origin,
        owner=task.owner,  # the peer keeps it: the client may follow the task there too
        wait=True,
    )


def cancel_message(task: TaskRecord) -> dict[str, Any]:
    return p.envelope("cancel", CANCEL_ID_PREFIX + task.id, task=task.id)


def task_of(reply: Reply) -> TaskId | None:
    """The task a peer's reply is about (its ``task`` field, else our request id)."""
    task = reply.get("task")
    if isinstance(task, str):
        return TaskId(task)
    rid = reply.id or ""
    for prefix in (FORWARD_ID_PREFIX, CANCEL_ID_PREFIX):
        if rid.startswith(prefix):
            return TaskId(rid[len(prefix) :])
    return None


class Forwarding:
    """Tracks forwarded tasks of one origin and turns peer replies into core effects."""

    def __init__(
        self, core: AgentCore, results: ResultStore, ack_timeout_s: float, quiet_s: float
    ) -> None:
        self.core, self.results = core, results
        self.ack_timeout_s, self.quiet_s = ack_timeout_s, quiet_s
        self.outstanding: dict[TaskId, Outstanding] = {}
        self.dropped_duplicates = 0
        self._next_full_scan = 0.0  # see ``tick``
        # Tasks taken back from a slot whose cancel may not have reached it (its link was
        # down or reset): cancelled again when it is heard from, in case it was only frozen.
        self.tombstones: dict[int, dict[TaskId, TaskRecord]] = {}

    def sent(self, task: TaskRecord, now: float) -> None:
        """The daemon handed the forward to the peer's socket."""
        slot = int(task.placement["target"])
        track = self.outstanding.get(task.id)
        acked = track is not None and track.acked and track.slot == slot
        self.outstanding[task.id] = Outstanding(slot, now, acked=acked, heard_at=now)

    def resumed(self, task: TaskRecord, now: float) -> None:
        """A task found ``forwarded`` in the journal at start: the peer may have it.

        It is treated as acknowledged, so an unconnected link (the usual case right after a
        restart) does not reclaim it: it is asked for again until the peer answers, and
        reclaimed only when the peer is marked down, refuses it, or does not know it. Running
        it here at once would run it twice whenever the peer already had it.
        """
        slot = int(task.placement["target"])
        self.outstanding[task.id] = Outstanding(slot, now, acked=True, heard_at=now)

    def _current(self, task_id: TaskId, slot: int) -> TaskRecord | None:
        task = self.core.tasks.get(task_id)
        if task is None or task.state is not TaskState.FORWARDED:
            return None
        return task if task.placement.target == slot else None

    def on_reply(self, slot: int, reply: Reply, now: float) -> list[Effect]:
        """A reply from the peer in ``slot`` on our connection to it."""
        task_id = task_of(reply)
        if task_id is None or reply.type == "gossip":
            return []
        task = self._current(task_id, slot)
        if task is None:
            if reply.type == "done":  # late or duplicate: the task ran elsewhere or is done
                self.dropped_duplicates += 1
                log.info("dropped a late result of task %s from slot %d", task_id, slot)
            return []
        track = self.outstanding.setdefault(task_id, Outstanding(slot, now))
        track.heard_at = now
        match reply.type:
            case "accepted":
                track.acked = True
                return []
            case "progress":
                track.acked = True
                stage = str(reply.get("stage", "queued"))
                step, position = int(reply.get("step", 0)), int(reply.get("position") or 0)
                return self.core.relayed(task_id, stage, step, position)
            case "done":
                return self._done(task, reply, now)
            case "cancelled":
                return []  # the final `error: cancelled` (or `done`) follows on the submit
            case "error":
                return self._error(task, reply, now)
        return []

    def _done(self, task: TaskRecord, reply: Reply, now: float) -> list[Effect]:
        self.outstanding.pop(task.id, None)
        meta = {k: v for k, v in reply.fields.items() if k != "id"}
        meta.update(
            origin=task.origin,
            placement=task.placement.to_wire(),
            submitted_at=task.submitted_at,
            relayed_at=now,
        )
        try:  # the origin keeps a copy, so `result` works here like for a local task
            self.results.write(task.id, reply.png, meta)
        except OSError as exc:
            log.warning("could not store the relayed result of %s: %s", task.id, exc)
        return self.core.finish(apply(task, Finished(now, meta)), reply.png)

    def _error(self, task: TaskRecord, reply: Reply, now: float) -> list[Effect]:
        code, text = str(reply.get("code")), str(reply.get("message"))
        if code == ErrorCode.CANCELLED.value:
            self.outstanding.pop(task.id, None)
            return self.core.finish(apply(task, Stopped(now)))
        if code == ErrorCode.TASK_FAILED.value:
            self.outstanding.pop(task.id, None)
            return self.core.finish(apply(task, Failed(now, f"on {task.placement.name}: {text}")))
        if code == ErrorCode.ALREADY_FINISHED.value:
            return []  # our cancel came too late; the `done` follows
        return self.reclaim(task, f"peer answered {code}: {text}", now)

    def reclaim(self, task: TaskRecord, why: str, now: float) -> list[Effect]:
        """Take a forwarded task back and dispatch it again (placement avoids this peer)."""
        self.outstanding.pop(task.id, None)
        slot = task.placement.target
        log.warning("task %s: reclaimed from slot %s (%s)", task.id, slot, why)
        # Best effort: tell the old target to drop it (a restarted one holds it until asked).
        cancel: list[Effect] = [CancelRemote(task)]
        if isinstance(slot, int):
            tombs = self.tombstones.setdefault(slot, {})
            tombs[task.id] = task
            while len(tombs) > MAX_TOMBSTONES:
                del tombs[next(iter(tombs))]
        return cancel + self.core.reclaim(task.id, why, MAX_REDISPATCHES, now)

    def reclaim_slot(self, slot: int, why: str, now: float) -> list[Effect]:
        """Every unfinished task forwarded to ``slot`` (it went down)."""
        effects: list[Effect] = []
        for task in list(self.core.tasks.values()):
            if task.state is TaskState.FORWARDED and task.placement.target == slot:
                effects += self.reclaim(task, why, now)
        return effects

    def forgive(self, now: float) -> None:
        """This agent was frozen: deadlines of forwards in flight count from ``now``."""
        for track in self.outstanding.values():
            track.sent_at = max(track.sent_at, now)
            track.heard_at = max(track.heard_at, now)

    def take_tombstones(self, slot: int) -> list[TaskRecord]:
        """The tasks reclaimed from ``slot`` since it was last up (each told once)."""
        return list(self.tombstones.pop(slot, {}).values())

    def ask_again(self, slot: int) -> None:
        """The peer in ``slot`` restarted: its acknowledged tasks are asked for on this turn."""
        for track in self.outstanding.values():
            if track.slot == slot and track.acked:
                track.heard_at = float("-inf")

    def tick(self, now: float) -> tuple[list[Effect], list[TaskRecord]]:
        """Reclaim unacknowledged forwards; return quiet ones to be asked again."""
        effects: list[Effect] = []
        again: list[TaskRecord] = []
        # Every turn looks at the tracked forwards only; the whole task table (thousands of
        # queued tasks: 0.2 ms and more per turn) once per FULL_SCAN_S, for forwards nobody
        # tracks yet: those recovered from the journal at start.
        if now >= self._next_full_scan:
            self._next_full_scan = now + FULL_SCAN_S
            candidates = list(self.core.tasks.values())
        else:
            candidates = [t for i in list(self.outstanding) if (t := self.core.tasks.get(i))]
        for task in candidates:
            if task.state is not TaskState.FORWARDED:
                continue
            track = self.outstanding.get(task.id)
            if track is None:  # recovered from the journal at start: ask its peer again
                self.resumed(task, now)
                again.append(task)
                continue
            if not track.acked and now - track.sent_at > self.ack_timeout_s:
                why = f"no journal ack within {self.ack_timeout_s:g} s"
                effects += self.reclaim(task, why, now)
            elif track.acked and now - track.heard_at > self.quiet_s:
                again.append(task)
        return effects, again

    def stats(self) -> dict[str, Any]:
        return {
            "outstanding": len(self.outstanding),
            "dropped_duplicates": self.dropped_duplicates,
        }
