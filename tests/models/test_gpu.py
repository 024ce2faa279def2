"""GPU-only checks (skipped without CUDA): fp16 placements agree and the peak is read."""

from __future__ import annotations

import pytest

from dedgeai.models import GenerationRequest
from dedgeai.models.factory import BackendSpec, create_backend

REQUEST = GenerationRequest("a lighthouse", steps=3, width=256, height=256, seed=2)


@pytest.mark.gpu
def test_cuda_placements_agree_and_report_peak() -> None:
    pngs = {}
    for kind in ("resident", "staged-encoders", "sequential"):
        backend = create_backend(
            BackendSpec(model="tiny", device="cuda", placement=kind, vram_budget_bytes=2**30)
        )
        result = backend.generate(REQUEST)
        assert result.peak_memory_bytes is not None and result.peak_memory_bytes > 0
        assert backend.memory_plan().module("transformer").dtype == "float16"
        pngs[kind] = result.png
        backend.close()
    assert pngs["resident"] == pngs["staged-encoders"]
    # sequential runs the CLIPs in fp32 on the CPU, so its context differs slightly in fp16.
    assert pngs["sequential"].startswith(b"\x89PNG")
