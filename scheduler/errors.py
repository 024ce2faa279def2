"""Errors raised by the scheduler library.

SchedulerError
 ├── ConfigurationError  a preset, method or hyper-parameter is invalid
 └── CheckpointError     a checkpoint is corrupt or does not fit this system
      └── CorruptCheckpointError  unreadable, or holds NaN/inf: refused, never served
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Base class of every error raised by ``dedgeai.scheduler``."""


class ConfigurationError(SchedulerError, ValueError):
    """An argument is out of range; the message says which and what is allowed."""


class CheckpointError(SchedulerError):
    """A checkpoint cannot be used: corrupt, or made for another system or state layout."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint that cannot be trusted at all (unreadable, incomplete, NaN/inf tensors).

    Apart from its parent so that the agent can start afresh instead of stopping: a
    checkpoint that does not *fit* is an operator's choice to fix, a corrupt one is not."""
