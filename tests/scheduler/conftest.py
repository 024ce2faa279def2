"""Scheduler tests run single-threaded and seeded."""

import pytest
import torch

from dedgeai.scheduler import online

# A fresh learned actor clones greedy in WARM_START_STEPS steps (~seconds of CPU each): tests
# of masking, pacing, checkpoints or action modes need an actor, not a good clone.
QUICK_WARM_START_STEPS = 40


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def quick_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short warm start, for tests that do not judge the clone's quality."""
    monkeypatch.setattr(online, "WARM_START_STEPS", QUICK_WARM_START_STEPS)
