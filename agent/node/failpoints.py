"""Named crash points for fault tests: the process SIGKILLs itself at a chosen point.

``DEDGEAI_FAILPOINT=name`` (or ``name@N``: at the N-th time the point is reached) makes
``failpoint(name)`` kill the agent with SIGKILL there, exactly as a power cut or the OOM
killer would: no ``finally``, no flush, no journal close. Unset (always, outside tests),
``failpoint`` is one dictionary lookup. The points are listed in ``POINTS`` so that a test
can kill the agent at every journal transition and check that each restart recovers.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "DEDGEAI_FAILPOINT"

# Where the agent can be killed (docs/agent.md, "Crash-only recovery").
POINTS = (
    "persisted:queued",  # a submit is journaled, its `accepted` not yet sent
    "persisted:running",  # the worker is about to start the task
    "persisted:cancelling",  # a cancel of a running task is journaled
    "persisted:forwarded",  # the origin journaled the forward, the peer was not asked yet
    "persisted:held",  # a restarted peer journaled a forwarded task it now holds
    "persisted:done",  # the done commit is in the journal, the client not yet told
    "result:written",  # the PNG is on disk, its `done` not yet committed
)


def _armed() -> dict[str, int]:
    armed: dict[str, int] = {}
    for entry in os.environ.get(ENV, "").split(","):
        name, _, count = entry.strip().partition("@")
        if name:
            armed[name] = int(count) if count.isdigit() and int(count) > 0 else 1
    return armed


_ARMED = _armed()


def failpoint(name: str) -> None:
    """SIGKILL this process if ``name`` is armed and reached for the armed time."""
    if not _ARMED or name not in _ARMED:
        return
    _ARMED[name] -= 1
    if _ARMED[name] <= 0:
        sys.stderr.write(f"failpoint {name}: SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
