"""Build the backend named by a :class:`BackendSpec`: the one entry point the agent calls."""

from __future__ import annotations

from dataclasses import dataclass

from dedgeai.models.backend import Backend
from dedgeai.models.emulated import EmulatedBackend


@dataclass(frozen=True)
class BackendSpec:
    """Which backend to build and with what limits.

    ``model`` is ``"tiny"`` (built-in random-weight SD3, images are noise), ``"emulated"``
    (timing stand-in, no images) or a path to SD3-medium weights (a diffusers directory or
    the three-file layout).
    """

    model: str = "tiny"
    vram_budget_bytes: int | None = None  # None: free VRAM read with pynvml minus a margin
    device: str | None = None  # None: cuda when available, else cpu
    emulated_steps_per_second: float = 10.0
    placement: str | None = None  # force a placement kind instead of choosing by budget


def create_backend(spec: BackendSpec) -> Backend:
    """Return a ready backend for ``spec``; raises ModelError subclasses with clear messages."""
    if spec.model == "emulated":
        return EmulatedBackend(spec.emulated_steps_per_second)
    from dedgeai.models.sd3_backend import SD3Backend  # heavy imports only when needed

    return SD3Backend.from_spec(spec)
