"""The tiny pipeline end to end on the CPU: determinism, placements, cancellation, caching."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from dedgeai.models import Backend, GenerationCancelled, GenerationRequest, InvalidRequest
from dedgeai.models.factory import BackendSpec, create_backend
from dedgeai.models.placement import PlacementKind
from dedgeai.models.sd3_backend import SD3Backend

SMALL = {"steps": 4, "width": 256, "height": 256}


def _png(backend: SD3Backend, **kwargs: object) -> bytes:
    return backend.generate(GenerationRequest(**{"prompt": "a red bicycle", **SMALL, **kwargs})).png


def test_is_a_backend(tiny_backend: SD3Backend) -> None:
    assert isinstance(tiny_backend, Backend)
    assert tiny_backend.emulated is False
    assert tiny_backend.memory_plan().kind is PlacementKind.RESIDENT


def test_png_has_the_requested_size(tiny_backend: SD3Backend) -> None:
    result = tiny_backend.generate(
        GenerationRequest("a red bicycle", steps=2, width=320, height=256, seed=3)
    )
    image = Image.open(io.BytesIO(result.png))
    assert (image.format, image.size, image.mode) == ("PNG", (320, 256), "RGB")
    assert (result.width, result.height, result.steps, result.seed) == (320, 256, 2, 3)
    assert result.timings.total_s >= result.timings.denoise_s > 0
    assert result.peak_memory_bytes is None  # CPU: no device peak to read


def test_same_seed_same_png_other_seed_other_png(tiny_backend: SD3Backend) -> None:
    first, again = _png(tiny_backend, seed=7), _png(tiny_backend, seed=7)
    assert first == again
    assert _png(tiny_backend, seed=8) != first
    assert _png(tiny_backend, seed=7, prompt="a blue boat") != first


def test_fresh_backend_reproduces_the_png(tiny_backend: SD3Backend) -> None:
    fresh = create_backend(BackendSpec(model="tiny", device="cpu", vram_budget_bytes=8 * 2**30))
    assert _png(fresh, seed=11) == _png(tiny_backend, seed=11)


def test_staged_encoders_gives_the_resident_image(
    tiny_backend: SD3Backend, staged_backend: SD3Backend
) -> None:
    assert staged_backend.memory_plan().kind is PlacementKind.STAGED_ENCODERS
    assert set(staged_backend._placement.staged) == {"text_encoder", "text_encoder_2"}
    assert _png(staged_backend, seed=5, prompt="a staged prompt") == _png(
        tiny_backend, seed=5, prompt="a staged prompt"
    )
    # Staged modules are released after their stage.
    assert not any(s.on_device for s in staged_backend._placement.staged.values())


@pytest.mark.parametrize("kind", ["sequential", "cpu-encoders"])
def test_other_kinds_give_the_resident_image(tiny_backend: SD3Backend, kind: str) -> None:
    spec = BackendSpec(model="tiny", device="cpu", vram_budget_bytes=8 * 2**30, placement=kind)
    other = create_backend(spec)
    assert _png(other, seed=5) == _png(tiny_backend, seed=5)


def test_on_step_sees_every_step(tiny_backend: SD3Backend) -> None:
    seen: list[tuple[int, int]] = []
    tiny_backend.generate(GenerationRequest("steps", **SMALL), lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_on_step_false_cancels(staged_backend: SD3Backend) -> None:
    seen: list[int] = []

    def stop_after_two(i: int, n: int) -> bool:
        seen.append(i)
        return i < 2

    with pytest.raises(GenerationCancelled) as info:
        staged_backend.generate(
            GenerationRequest("cancel me", steps=10, width=256, height=256), stop_after_two
        )
    assert (info.value.step, info.value.total) == (2, 10)
    assert seen == [1, 2]
    assert not any(s.on_device for s in staged_backend._placement.staged.values())
    # The backend still works after a cancel.
    assert _png(staged_backend).startswith(b"\x89PNG")


def test_empty_negative_prompt_is_encoded_once(staged_backend: SD3Backend) -> None:
    cache = staged_backend.cache
    cache.clear()
    misses = cache.misses
    _png(staged_backend, prompt="first")
    _png(staged_backend, prompt="second")
    _png(staged_backend, prompt="first")
    assert cache.misses - misses == 3  # "first", "" and "second"; never "" again
    assert "" in cache


def test_guidance_one_skips_the_negative(tiny_backend: SD3Backend) -> None:
    tiny_backend.cache.clear()
    _png(tiny_backend, guidance=1.0, prompt="no cfg")
    assert "" not in tiny_backend.cache and "no cfg" in tiny_backend.cache


@pytest.mark.parametrize(
    "bad",
    [
        {"width": 250},
        {"height": 2064},
        {"width": 128},
        {"steps": 0},
        {"steps": 101},
        {"prompt": "   "},
        {"prompt": "x" * 2001},
    ],
)
def test_bad_requests_are_rejected_before_work(tiny_backend: SD3Backend, bad: dict) -> None:
    with pytest.raises(InvalidRequest):
        tiny_backend.generate(GenerationRequest(**{"prompt": "ok", **SMALL, **bad}))


def test_profile_reports_steps_per_second(tiny_backend: SD3Backend) -> None:
    profile = tiny_backend.profile(sizes=((256, 256),), steps=2)
    assert profile.emulated is False and profile.backend == tiny_backend.name
    assert profile.steps_per_second["256x256"] > 0


def test_tiny_is_the_default_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        backend = create_backend(BackendSpec(device="cpu", vram_budget_bytes=2**30))
    assert backend.name.startswith("tiny")
    assert "noise" in caplog.text


def test_request_larger_than_planned_uses_tiling_or_fails() -> None:
    from dedgeai.models.errors import PlacementError

    plan_size = (256, 256)
    roomy = SD3Backend.from_spec(
        BackendSpec(model="tiny", device="cpu", vram_budget_bytes=2**30), plan_size
    )
    assert roomy.memory_plan().workload.width == 256
    result = roomy.generate(GenerationRequest("big", steps=1, width=512, height=512))
    assert result.extra["vae_tiling"] is False
    plan = roomy.memory_plan()
    tight_budget = plan.predicted_peak_bytes + 1
    tight = SD3Backend.from_spec(
        BackendSpec(model="tiny", device="cpu", vram_budget_bytes=tight_budget), plan_size
    )
    with pytest.raises(PlacementError, match="does not fit"):
        tight.generate(GenerationRequest("big", steps=1, width=2048, height=2048))
