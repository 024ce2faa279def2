"""dedgeai.models: image generation behind one backend interface (no sockets, no threads)."""

from dedgeai.models.backend import (
    Backend,
    GenerationRequest,
    GenerationResult,
    SpeedProfile,
    StageTimings,
    StepCallback,
)
from dedgeai.models.emulated import EmulatedBackend
from dedgeai.models.errors import (
    GenerationCancelled,
    InvalidRequest,
    ModelError,
    PlacementError,
    WeightsError,
)

__all__ = [
    "Backend",
    "EmulatedBackend",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "InvalidRequest",
    "ModelError",
    "PlacementError",
    "SpeedProfile",
    "StageTimings",
    "StepCallback",
    "WeightsError",
]
