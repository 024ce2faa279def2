"""Process exit codes of the ``dedgeai`` command, documented in the README and stable."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    BAD_INPUT = 2
    BUSY = 3
    TASK_FAILED = 4
    UNREACHABLE = 5
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, the shell's convention)
