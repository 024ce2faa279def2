"""EMULATED backend: a timing stand-in for a GPU, for cluster experiments on CPU machines.

It produces no image. It sleeps ``steps / steps_per_second`` (scaled by pixel count from
its reference size) one step at a time, so progress and cancellation behave as on a GPU.
Every result, profile and plan it returns is labelled ``emulated``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dedgeai.models.backend import (
    GenerationRequest,
    GenerationResult,
    SpeedProfile,
    StageTimings,
    StepCallback,
)
from dedgeai.models.errors import GenerationCancelled, InvalidRequest
from dedgeai.models.sizes import format_size

EMULATED_LABEL = "emulated"


@dataclass(frozen=True)
class EmulatedPlan:
    """The emulated backend holds no weights; this says so wherever a plan is printed."""

    steps_per_second: float
    reference_size: tuple[int, int]
    kind: str = EMULATED_LABEL

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def __str__(self) -> str:
        w, h = self.reference_size
        return (
            f"EMULATED backend (no GPU, no weights): {self.steps_per_second:g} steps/s at {w}x{h}, "
            "scaled by pixel count"
        )


# Behind schedule by more than this, the process was frozen rather than busy: the emulated
# GPU starts its schedule afresh instead of finishing the missed steps at once.
FROZEN_S = 0.5


class EmulatedBackend:
    """Timing-emulated GPU. Labelled "emulated" everywhere it appears."""

    emulated = True

    def __init__(
        self,
        steps_per_second: float,
        reference_size: tuple[int, int] = (512, 512),
        sleep: callable = time.sleep,  # type: ignore[valid-type]
    ) -> None:
        if not steps_per_second > 0:
            raise InvalidRequest(f"emulated steps_per_second must be > 0, got {steps_per_second!r}")
        self.steps_per_second = float(steps_per_second)
        self.reference_size = reference_size
        self.name = f"{EMULATED_LABEL}({self.steps_per_second:g} steps/s)"
        self._sleep = sleep

    def seconds_per_step(self, width: int, height: int) -> float:
        ref_w, ref_h = self.reference_size
        return (width * height) / (ref_w * ref_h) / self.steps_per_second

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None = None
    ) -> GenerationResult:
        request.validate()
        started = time.perf_counter()
        step_s = self.seconds_per_step(request.width, request.height)
        deadline = started
        for step in range(1, request.steps + 1):
            deadline += step_s
            remaining = deadline - time.perf_counter()
            if remaining < -FROZEN_S:  # the process was frozen (SIGSTOP): a GPU would not
                deadline = time.perf_counter()  # have done that time's work meanwhile
            elif remaining > 0:
                self._sleep(remaining)
            if on_step is not None and on_step(step, request.steps) is False:
                raise GenerationCancelled(step, request.steps)
        total = time.perf_counter() - started
        return GenerationResult(
            png=b"",
            width=request.width,
            height=request.height,
            steps=request.steps,
            seed=request.seed,
            timings=StageTimings(denoise_s=total, total_s=total),
            backend=self.name,
            emulated=True,
        )

    def profile(
        self, sizes: Sequence[tuple[int, int]] = ((512, 512),), steps: int = 4
    ) -> SpeedProfile:
        rates = {format_size(w, h): 1.0 / self.seconds_per_step(w, h) for w, h in sizes}
        return SpeedProfile(steps_per_second=rates, backend=self.name, emulated=True)

    def memory_plan(self) -> EmulatedPlan:
        return EmulatedPlan(self.steps_per_second, self.reference_size)

    def close(self) -> None:
        return None
