"""Task lifecycle: frozen records, events, and the transition table that relates them.

``apply(task, event)`` is pure and is the only way a task changes state, in the daemon and
in recovery alike; tests exercise the table without sockets or threads.

    queued ──Started──▶ running ──Finished──▶ done
      │  ▲                 │ │ └──Failed────▶ failed
      │  └──Interrupted────┘ └──Stopped─────▶ cancelled   (after CancelRequested)
      └──CancelRequested──────────────────────▶ cancelled
    queued ──Forwarded──▶ forwarded ──Finished/Failed/Stopped──▶ done/failed/cancelled
      ▲                       │        (a peer runs it; the origin relays its result)
      └───────Reclaimed───────┘        (the peer went down or lost it: dispatch again)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from dedgeai.agent.node.protocol import TaskId
from dedgeai.agent.node.records import Placement
from dedgeai.models.backend import GenerationRequest, SpeedProfile


class TaskState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FORWARDED = "forwarded"  # at the origin: a peer runs it and streams its result back

    @property
    def finished(self) -> bool:
        return self in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)


@dataclass(frozen=True)
class TaskRecord:
    """Everything the agent knows about one task; what the journal stores."""

    id: TaskId
    origin: str
    request: GenerationRequest
    seq: int  # FIFO order, assigned at admission
    submitted_at: float
    state: TaskState = TaskState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    attempts: int = 0  # times the backend started it (>1 after an interruption)
    cancel_requested: bool = False
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    # Where and why it runs: policy, probs, reason, target slot/node/endpoint, redispatches.
    placement: Placement = field(default_factory=Placement)
    # Who may read, list and cancel it: the submitter's principal (``agent/security/authority.py``):
    # ``key:<z85 public key>`` with CURVE, ``local`` in keyless mode. Forwarding keeps it.
    owner: str = "local"

    def __post_init__(self) -> None:
        if type(self.placement) is not Placement:  # a journal row's map (an older one too)
            object.__setattr__(self, "placement", Placement.from_wire(self.placement))

    @property
    def remaining_steps(self) -> int:
        return 0 if self.state.finished else self.request.steps - self.step


# --- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    at: float


@dataclass(frozen=True)
class Stepped:
    step: int


@dataclass(frozen=True)
class Finished:
    at: float
    result: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    at: float
    error: str


@dataclass(frozen=True)
class CancelRequested:
    at: float


@dataclass(frozen=True)
class Stopped:
    """The backend stopped between steps because a cancel was requested."""

    at: float


@dataclass(frozen=True)
class Interrupted:
    """The run ended without a verdict (shutdown checkpoint, crash found at restart)."""


@dataclass(frozen=True)
class Forwarded:
    """The origin hands the task to a peer (``placement`` says which and why)."""

    at: float
    placement: Placement


@dataclass(frozen=True)
class Reclaimed:
    """The peer went down, refused, or lost the task: it is the origin's to dispatch again."""

    why: str


TaskEvent = (
    Started
    | Stepped
    | Finished
    | Failed
    | CancelRequested
    | Stopped
    | Interrupted
    | Forwarded
    | Reclaimed
)

Q, R, F = TaskState.QUEUED, TaskState.RUNNING, TaskState.FORWARDED
TRANSITIONS: dict[tuple[TaskState, type], TaskState] = {
    (Q, Started): R,
    (Q, CancelRequested): TaskState.CANCELLED,
    (R, Stepped): R,
    (R, Finished): TaskState.DONE,
    (R, Failed): TaskState.FAILED,
    (R, CancelRequested): R,  # takes effect at the next step boundary
    (R, Stopped): TaskState.CANCELLED,
    (R, Interrupted): Q,
    (Q, Forwarded): F,
    (F, Stepped): F,  # progress relayed from the peer
    (F, Finished): TaskState.DONE,
    (F, Failed): TaskState.FAILED,
    (F, CancelRequested): F,  # the cancel is passed on to the peer
    (F, Stopped): TaskState.CANCELLED,
    (F, Reclaimed): Q,
}


class InvalidTransition(Exception):  # noqa: N818
    """An event that the table does not allow in the task's current state."""

    def __init__(self, task: TaskRecord, event: TaskEvent) -> None:
        super().__init__(
            f"task {task.id}: {type(event).__name__} not allowed in {task.state.value}"
        )


def apply(task: TaskRecord, event: TaskEvent) -> TaskRecord:
    """Return the task after ``event``; raises InvalidTransition when the table forbids it."""
    target = TRANSITIONS.get((task.state, type(event)))
    if target is None:
        raise InvalidTransition(task, event)
    match event:
        case Started(at=at):
            return replace(task, state=target, started_at=at, step=0, attempts=task.attempts + 1)
        case Stepped(step=step):
            return replace(task, step=max(task.step, min(step, task.request.steps)))
        case Finished(at=at, result=result):
            return replace(
                task, state=target, finished_at=at, step=task.request.steps, result=result
            )
        case Failed(at=at, error=error):
            return replace(task, state=target, finished_at=at, error=error)
        case Forwarded(placement=placement):
            return replace(task, state=target, step=0, placement=placement)
        case Reclaimed(why=why):
            placement = task.placement.with_(
                redispatches=task.placement.redispatches + 1, reclaimed=why
            )
            return replace(task, state=target, step=0, placement=placement)
        case CancelRequested(at=at):
            if target is TaskState.CANCELLED:
                return replace(task, state=target, finished_at=at, error="cancelled while queued")
            return replace(task, cancel_requested=True)
        case Stopped(at=at):
            error = f"cancelled after step {task.step} of {task.request.steps}"
            return replace(task, state=target, finished_at=at, error=error)
        case Interrupted():
            return replace(task, state=target, step=0, started_at=None)
    raise InvalidTransition(task, event)  # unreachable: every event type is matched above


def backlog(tasks: Iterable[TaskRecord], profile: SpeedProfile | None) -> tuple[int, float | None]:
    """Unfinished denoising steps, and the seconds they need at the measured speed."""
    steps, seconds = 0, 0.0
    for task in tasks:
        if task.state is TaskState.FORWARDED:
            continue  # a peer's work, not this GPU's
        remaining = task.remaining_steps
        steps += remaining
        if profile is not None and remaining:
            seconds += remaining / profile.at(task.request.width, task.request.height)
    return steps, (seconds if profile is not None else None)


def summary(task: TaskRecord) -> dict[str, Any]:
    """The wire form of a task in ``task_list`` (prompt shortened)."""
    request = task.request
    return {
        "task": task.id,
        "origin": task.origin,
        "state": task.state.value,
        "prompt": request.prompt[:80],
        "steps": request.steps,
        "step": task.step,
        "size": f"{request.width}x{request.height}",
        "seed": request.seed,
        "submitted_at": task.submitted_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "attempts": task.attempts,
        "error": task.error,
        "ran_on": task.result.get("ran_on"),
        "placement": task.placement.to_wire() or None,
    }
