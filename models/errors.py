"""Errors raised by image generation (rooted in ``DedgeaiError``, see scheduler/errors.py).

ModelError
 ├── InvalidRequest      a request field is out of range (the caller's fault)
 ├── WeightsError        a weight, config or tokenizer file is missing or corrupt
 ├── PlacementError      no placement plan fits the VRAM budget
 └── GenerationCancelled on_step asked to stop; carries the step reached
"""

from __future__ import annotations

from dedgeai.scheduler.errors import DedgeaiError


class ModelError(DedgeaiError):
    """Base class of every error raised by ``dedgeai.models``."""


class InvalidRequest(ModelError, ValueError):
    """A generation request field is invalid; the message says which and what is allowed."""


class WeightsError(ModelError):
    """A weights directory or file is missing, incomplete or corrupt."""


class PlacementError(ModelError):
    """No placement plan fits the configured memory budget."""


class GenerationCancelled(ModelError):
    """Raised by a backend when ``on_step`` returns ``False``."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"generation cancelled after step {step} of {total}")
        self.step = step
        self.total = total
