"""Errors raised by the scheduler library, and the root of every DEdgeAI error.

``DedgeaiError`` lives here because this is the one leaf that all three packages may
import: ``dedgeai.scheduler``'s ``__init__`` is empty (importing this module costs nothing,
no numpy, no torch), and neither ``scheduler`` nor ``models`` may import ``dedgeai.agent``
(tests/test_architecture.py). ``agent.errors`` and ``models.errors`` derive from it, so
one ``except DedgeaiError`` and one exit-code mapping (``agent/exit_codes.py``) cover all.

DedgeaiError
 ├── SchedulerError
 │    ├── ConfigurationError  a preset, method or hyper-parameter is invalid
 │    ├── WarmStartCancelled  the caller's ``should_stop`` said stop during a warm start
 │    └── CheckpointError     a checkpoint is corrupt or does not fit this system
 │         └── CorruptCheckpointError  unreadable, or holds NaN/inf: refused, never served
 ├── ModelError (dedgeai.models.errors)
 └── the agent's errors (dedgeai.agent.errors)
"""

from __future__ import annotations


class DedgeaiError(Exception):
    """Base class of every error raised by DEdgeAI (agent, models and scheduler)."""


class SchedulerError(DedgeaiError):
    """Base class of every error raised by ``dedgeai.scheduler``."""


class ConfigurationError(SchedulerError, ValueError):
    """An argument is out of range; the message says which and what is allowed."""


class WarmStartCancelled(SchedulerError):  # noqa: N818 (httpx-style names, see STYLE.md)
    """A warm start (behaviour cloning) was stopped by its caller's ``should_stop``."""


class CheckpointError(SchedulerError):
    """A checkpoint cannot be used: corrupt, or made for another system or state layout."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint that cannot be trusted at all (unreadable, incomplete, NaN/inf tensors).

    Apart from its parent so that the agent can start afresh instead of stopping: a
    checkpoint that does not *fit* is an operator's choice to fix, a corrupt one is not."""
