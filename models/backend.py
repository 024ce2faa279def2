"""The one interface the agent uses to make images, whatever produces them.

A backend turns a :class:`GenerationRequest` into PNG bytes plus stage timings, reports
its speed with :meth:`Backend.profile` (the agent's advertised capacity) and describes
where its weights live with :meth:`Backend.memory_plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from dedgeai.models.errors import InvalidRequest

# The side bounds are re-exported (``X as X``): the protocol schema reads them from here.
from dedgeai.models.sizes import MAX_SIDE_PX as MAX_SIDE_PX
from dedgeai.models.sizes import MIN_SIDE_PX as MIN_SIDE_PX
from dedgeai.models.sizes import SIDE_MULTIPLE_PX as SIDE_MULTIPLE_PX
from dedgeai.models.sizes import format_size, parse_size, side_problem

MAX_PROMPT_CHARS = 2000
MAX_STEPS = 100
MAX_GUIDANCE = 30.0
MAX_SEED = 2**63 - 1

# Called after every denoising step with (steps done, steps total). Returning False cancels
# the run: the backend then raises GenerationCancelled. Any other return value continues.
StepCallback = Callable[[int, int], "bool | None"]


@dataclass(frozen=True)
class GenerationRequest:
    """What to draw. Validated by :meth:`validate`; backends call it before any work."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 28
    width: int = 1024
    height: int = 1024
    guidance: float = 5.0
    seed: int = 0

    def validate(self) -> GenerationRequest:
        """Raise InvalidRequest naming the first bad field; return self when all are fine."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequest("prompt must be a non-empty string")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequest(
                f"prompt has {len(self.prompt)} characters; the limit is {MAX_PROMPT_CHARS}"
            )
        if (
            not isinstance(self.negative_prompt, str)
            or len(self.negative_prompt) > MAX_PROMPT_CHARS
        ):
            raise InvalidRequest(
                f"negative prompt must be a string of at most {MAX_PROMPT_CHARS} characters"
            )
        if (
            isinstance(self.steps, bool)
            or not isinstance(self.steps, int)
            or not 1 <= self.steps <= MAX_STEPS
        ):
            raise InvalidRequest(f"steps must be an integer in 1..{MAX_STEPS}, got {self.steps!r}")
        for name, side in (("width", self.width), ("height", self.height)):
            if isinstance(side, bool) or not isinstance(side, int):
                raise InvalidRequest(f"{name} must be an integer, got {side!r}")
            problem = side_problem(side)
            if problem:
                raise InvalidRequest(f"{name} {problem}, got {side}")
        if (
            isinstance(self.guidance, bool)
            or not isinstance(self.guidance, (int, float))
            or not (0.0 <= float(self.guidance) <= MAX_GUIDANCE)
        ):
            raise InvalidRequest(
                f"guidance must be a number in [0, {MAX_GUIDANCE:g}], got {self.guidance!r}"
            )
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed <= MAX_SEED
        ):
            raise InvalidRequest(f"seed must be an integer in [0, 2**63-1], got {self.seed!r}")
        return self


@dataclass(frozen=True)
class StageTimings:
    """Wall-clock seconds per stage of one generation."""

    encode_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationResult:
    """PNG bytes plus how they were made. ``png`` is empty for the emulated backend."""

    png: bytes
    width: int
    height: int
    steps: int
    seed: int
    timings: StageTimings
    backend: str
    emulated: bool = False
    peak_memory_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpeedProfile:
    """Measured denoising speed per image size: the agent's advertised capacity."""

    steps_per_second: dict[str, float]  # key "WxH"
    backend: str
    emulated: bool = False

    def at(self, width: int, height: int) -> float:
        """Steps per second at this size; scaled by pixel count from the nearest measured size."""
        key = format_size(width, height)
        if key in self.steps_per_second:
            return self.steps_per_second[key]
        pixels = width * height

        def measured_pixels(item: tuple[str, float]) -> int:
            w, h = parse_size(item[0], check_range=False)
            return w * h

        nearest_key, nearest_rate = min(
            self.steps_per_second.items(), key=lambda item: abs(measured_pixels(item) - pixels)
        )
        # Denoising cost grows roughly linearly with the number of latent tokens.
        return nearest_rate * measured_pixels((nearest_key, nearest_rate)) / pixels


@runtime_checkable
class Backend(Protocol):
    """What the agent needs from anything that makes images."""

    name: str
    emulated: bool

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None = None
    ) -> GenerationResult:
        """Run one request to completion (or until on_step returns False)."""
        ...

    def profile(
        self, sizes: Sequence[tuple[int, int]] = ((512, 512),), steps: int = 4
    ) -> SpeedProfile:
        """Measure denoising steps per second at each size."""
        ...

    def memory_plan(self) -> Any:
        """The placement plan in use (printable; ``as_dict()`` gives JSON-ready data)."""
        ...

    def close(self) -> None:
        """Release devices and memory."""
        ...


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
