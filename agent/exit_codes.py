"""Process exit codes of the ``dedgeai`` command, documented in the README and stable, and
the one mapping from any DEdgeAI error (``DedgeaiError``: agent, models, scheduler) to one.

Every command's error handler calls :func:`exit_code_of`; no other place decides a code.
"""

from __future__ import annotations

from enum import IntEnum

from dedgeai.agent.errors import (
    AgentBusy,
    ConfigError,
    DedgeaiError,
    HandshakeFailed,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    TaskFailed,
    TaskNotFound,
)
from dedgeai.models.errors import GenerationCancelled, InvalidRequest, PlacementError, WeightsError
from dedgeai.scheduler.errors import SchedulerError


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    BAD_INPUT = 2
    BUSY = 3
    TASK_FAILED = 4
    UNREACHABLE = 5
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, the shell's convention)


# ``error`` reply codes that mean "the caller asked for something wrong" (or may not ask it).
BAD_INPUT_CODES = frozenset(
    {"bad_frame", "bad_version", "bad_type", "bad_field", "already_finished", "forbidden"}
)
RETRY_LATER_CODES = frozenset({"busy", "shutting_down", "storage"})

# First match wins: subclasses before their parents.
_BY_TYPE: tuple[tuple[type[BaseException], str, ExitCode], ...] = (
    (HandshakeFailed, "refused", ExitCode.BAD_INPUT),  # retrying with this key will not help
    (ConfigError, "error", ExitCode.BAD_INPUT),
    (InvalidRequest, "error", ExitCode.BAD_INPUT),
    (WeightsError, "error", ExitCode.BAD_INPUT),
    (PlacementError, "does not fit", ExitCode.BAD_INPUT),
    (SchedulerError, "error", ExitCode.BAD_INPUT),  # presets, methods, checkpoints
    (GenerationCancelled, "cancelled", ExitCode.TASK_FAILED),
    (PeerUnavailable, "unreachable", ExitCode.UNREACHABLE),
    (ProtocolError, "bad reply", ExitCode.INTERNAL),
    (AgentBusy, "busy", ExitCode.BUSY),
    (TaskFailed, "", ExitCode.TASK_FAILED),  # labelled with its code: failed or cancelled
    (TaskNotFound, "not found", ExitCode.BAD_INPUT),
)


def exit_code_of(exc: DedgeaiError) -> tuple[str, ExitCode]:
    """The one-word label printed before the message, and the process exit code."""
    for kind, label, code in _BY_TYPE:
        if isinstance(exc, kind):
            return (label or getattr(exc, "code", "error")), code
    if isinstance(exc, RemoteError):
        if exc.code in BAD_INPUT_CODES:
            return exc.code, ExitCode.BAD_INPUT
        if exc.code in RETRY_LATER_CODES:
            return exc.code, ExitCode.BUSY
        return exc.code, ExitCode.INTERNAL
    return "error", ExitCode.INTERNAL
