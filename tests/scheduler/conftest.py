"""Scheduler tests run single-threaded and seeded."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)
