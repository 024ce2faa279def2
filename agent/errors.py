"""Errors raised by the agent and its client.

DedgeaiError             (the one root: scheduler/errors.py; ModelError, SchedulerError too)
 ├── ConfigError          the agent's configuration file or an override is invalid
 │    └── SecurityError   CURVE keys missing, unreadable or already there
 ├── HandshakeFailed      a peer or agent refused our key (or its mechanism), at run time
 ├── JournalError         the state directory or its sqlite journal cannot be used
 ├── ProtocolError        a wire message is malformed; carries a stable ErrorCode
 ├── PeerUnavailable      an agent (or, later, a peer) did not answer within the retries
 └── RemoteError          the agent answered with an ``error`` reply
      ├── AgentBusy       its queue is full (``busy``)
      ├── TaskNotFound    it knows no task with that id (``not_found``)
      └── TaskFailed      the task failed or was cancelled (``task_failed``, ``cancelled``)

Library code raises these; the CLI maps every ``DedgeaiError`` to an exit code in one place
(``agent/exit_codes.py``: ``exit_code_of``).
"""

from __future__ import annotations

from enum import Enum

# Re-exported: the root lives in scheduler/errors.py (the one leaf every package may import).
from dedgeai.scheduler.errors import DedgeaiError as DedgeaiError


class ErrorCode(str, Enum):
    """Stable codes carried by ``error`` replies (documented in docs/protocol.md)."""

    BAD_FRAME = "bad_frame"  # not one msgpack map in one frame
    BAD_VERSION = "bad_version"  # missing or unsupported protocol version
    BAD_TYPE = "bad_type"  # unknown message type
    BAD_FIELD = "bad_field"  # a field is missing, unknown, of the wrong type or out of range
    BUSY = "busy"  # the queue is full; retry later
    NOT_FOUND = "not_found"  # no task with that id (never submitted, or past retention)
    ALREADY_FINISHED = "already_finished"  # cancel of a task that already ended
    TASK_FAILED = "task_failed"  # the backend raised while running the task
    CANCELLED = "cancelled"  # the task was cancelled
    SHUTTING_DOWN = "shutting_down"  # the agent is stopping and accepts no new tasks
    INTERNAL = "internal"  # a bug in the agent; the message says what failed
    FORBIDDEN = "forbidden"  # the sender's role may not send this message or touch this task
    STORAGE = "storage"  # the agent cannot write its journal or results (disk full?)


class ConfigError(DedgeaiError):
    """The configuration is invalid; the message names the key and what is allowed."""


class SecurityError(ConfigError):
    """CURVE keys are missing, unreadable or would be overwritten; the message says what to do."""


class HandshakeFailed(DedgeaiError):  # noqa: N818 (httpx-style names, see STYLE.md)
    """The CURVE/ZMTP handshake with an agent failed: refused key, wrong key or mechanism.

    Not a ``ConfigError``: it happens at run time, between two processes, and says nothing
    about this side's configuration file being invalid (the other side may be at fault)."""

    def __init__(self, endpoint: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.reason = reason  # "auth", "protocol" or "dropped"


class JournalError(DedgeaiError):
    """The state directory or its journal cannot be opened or written."""


class ProtocolError(DedgeaiError):
    """A message broke the wire protocol. ``request_id`` is echoed when it could be read."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        request_id: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.field = field


class PeerUnavailable(DedgeaiError):  # noqa: N818 (httpx-style names, see STYLE.md)
    """No reply from an agent after the configured timeout and retries."""

    def __init__(self, endpoint: str, timeout_s: float, attempts: int) -> None:
        super().__init__(
            f"no answer from the agent at {endpoint} after {attempts} attempt(s) of "
            f"{timeout_s:g} s; is `dedgeai agent run` running there?"
        )
        self.endpoint = endpoint


class RemoteError(DedgeaiError):
    """The agent replied with ``error``; ``code`` is the stable code it sent."""

    def __init__(self, code: str, message: str, task_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.task_id = task_id


class AgentBusy(RemoteError):  # noqa: N818 (httpx-style names, see STYLE.md)
    """The agent's queue is full."""


class TaskNotFound(RemoteError):  # noqa: N818 (httpx-style names, see STYLE.md)
    """The agent does not know the task id."""


class TaskFailed(RemoteError):  # noqa: N818 (httpx-style names, see STYLE.md)
    """The task failed in the backend or was cancelled."""


def remote_error(code: str, message: str, task_id: str | None = None) -> RemoteError:
    """Build the most specific RemoteError subclass for an ``error`` reply."""
    cls: type[RemoteError] = {
        ErrorCode.BUSY.value: AgentBusy,
        ErrorCode.NOT_FOUND.value: TaskNotFound,
        ErrorCode.TASK_FAILED.value: TaskFailed,
        ErrorCode.CANCELLED.value: TaskFailed,
    }.get(code, RemoteError)
    return cls(code, message, task_id)
