"""Errors raised by the scheduler library.

SchedulerError
 ├── ConfigurationError  a preset, method or hyper-parameter is invalid
 └── CheckpointError     a checkpoint is corrupt or does not fit this system
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Base class of every error raised by ``dedgeai.scheduler``."""


class ConfigurationError(SchedulerError, ValueError):
    """An argument is out of range; the message says which and what is allowed."""


class CheckpointError(SchedulerError):
    """A checkpoint cannot be used: corrupt, or made for another system or state layout."""
