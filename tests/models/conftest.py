"""Fixtures for the models tests: one thread, a shared tiny backend, GPU tests skipped cleanly."""

from __future__ import annotations

import pytest
import torch

from dedgeai.models.factory import BackendSpec
from dedgeai.models.sd3_backend import SD3Backend

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_backend() -> SD3Backend:
    return SD3Backend.from_spec(
        BackendSpec(model="tiny", device="cpu", vram_budget_bytes=8 * 2**30)
    )


@pytest.fixture(scope="session")
def staged_backend() -> SD3Backend:
    spec = BackendSpec(
        model="tiny", device="cpu", vram_budget_bytes=8 * 2**30, placement="staged-encoders"
    )
    return SD3Backend.from_spec(spec)
