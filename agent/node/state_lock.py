"""One agent per state directory: an advisory ``flock`` on ``<state>/agent.lock``.

Two agents sharing a state directory would share a node id, a journal and a results
directory, and each would "recover" the other's running tasks. The lock is taken before the
journal is opened and lives as long as the process: the kernel drops it when the process
exits, however it exits (SIGKILL included), so a crash never leaves a stale lock behind.
The file holds the owner's pid, for the message only; the lock, not the pid, decides.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import BinaryIO

from dedgeai.agent.errors import ConfigError

LOCK_NAME = "agent.lock"


class StateDirInUse(ConfigError):  # noqa: N818 (httpx-style names, see STYLE.md)
    """Another live process holds this state directory."""


class StateLock:
    """Held for the life of an agent; ``release`` (or process exit) lets the next one in."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._file: BinaryIO | None = None  # a file object: closed (and unlocked) if collected

    def acquire(self) -> StateLock:
        """Take the lock or raise :class:`StateDirInUse` naming the holder's pid."""
        file = open(self.path, "a+b")  # noqa: SIM115 - held for the agent's life
        fd = file.fileno()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            file.close()
            who = f"another agent (pid {holder})" if holder else "another agent"
            raise StateDirInUse(
                f"state directory {self.path.parent} is in use by {who}; "
                "give each agent its own state_dir"
            ) from None
        except OSError:
            file.close()
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._file = file
        return self

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None
