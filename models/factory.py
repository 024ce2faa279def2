"""Build the backend named by a :class:`BackendSpec`: the one entry point the agent calls."""

from __future__ import annotations

from dedgeai.models.backend import Backend, BackendSpec
from dedgeai.models.emulated import EmulatedBackend

__all__ = ["BackendSpec", "create_backend"]  # the spec lives with the Backend interface


def create_backend(spec: BackendSpec) -> Backend:
    """Return a ready backend for ``spec``; raises ModelError subclasses with clear messages."""
    if spec.model == "emulated":
        return EmulatedBackend(spec.emulated_steps_per_second)
    from dedgeai.models.sd3_backend import SD3Backend  # heavy imports only when needed

    return SD3Backend.from_spec(spec)
