"""tools/authors_structure.py: a re-implementation of the authors' code *structure* from the
paper and the reference notes (not their code), used as the same-run speed reference of
``tools/bench_scheduler.py speed``. It must play the same episode as our LAD-TS."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from dedgeai.scheduler.config import EnvConfig, LearnConfig, Preset, Switches
from dedgeai.scheduler.env import ArrivalStream, make_system
from dedgeai.scheduler.heuristics import SlotView
from dedgeai.scheduler.simulate import run_episode, train

TOOL = Path(__file__).resolve().parents[2] / "tools" / "authors_structure.py"
# Two decided slots (the third only completes the last transitions), small enough for a test,
# with a warm-up low enough that the per-agent SAC updates run.
TINY = Preset(
    "tiny",
    EnvConfig(n_servers=3, max_tasks=8, n_slots=3),
    LearnConfig(warmup=4, batch_size=4, buffer_size=16),
)
SEED = 7


@pytest.fixture(scope="module")
def tool() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("authors_structure", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["authors_structure"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("authors_structure", None)


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_it_makes_as_many_decisions_as_our_lad_ts_on_the_same_seed(tool) -> None:
    played = tool.run(TINY, SEED, episodes=2)
    _, ours = train("lad", TINY, Switches(), SEED, 2)
    assert [e.n_decisions for e in played] == [s.n_decisions for s in ours]
    assert all(e.updates > 0 for e in played)  # one SAC step per warm agent per slot
    assert all(np.isfinite(e.mean_delay_s) and e.mean_delay_s > 0 for e in played)


def test_it_is_reproducible_on_a_seed(tool) -> None:
    first = [e.mean_delay_s for e in tool.run(TINY, SEED, episodes=2)]
    again = [e.mean_delay_s for e in tool.run(TINY, SEED, episodes=2)]
    other = [e.mean_delay_s for e in tool.run(TINY, SEED + 1, episodes=2)]
    assert first == again
    assert first != other


class _BySize:
    """A fixed policy: the target is a function of the task's own size d."""

    name = "by-size"
    learns = False

    def act(self, view: SlotView) -> np.ndarray:
        return (view.task_mbit * 1000).astype(np.int64) % view.valid.shape[0]


def test_it_plays_the_same_episode_through_the_project_environment(
    tool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same decisions -> the same delays as our simulator, task for task (mean over the episode)."""
    B = TINY.env.n_servers

    def by_size(self, state: list[float], x: np.ndarray) -> tuple[int, np.ndarray]:
        return int(state[0] * 1000) % B, np.full((1, B), 1.0 / B)

    monkeypatch.setattr(tool._Agent, "take_action", by_size)
    played = tool.run(TINY, SEED, episodes=1)[0]
    system = make_system(TINY.env)
    episode = ArrivalStream(TINY.env, SEED).next_episode()
    ours = run_episode(_BySize(), system, episode, TINY, 1)
    assert played.n_decisions == ours.n_decisions
    assert played.mean_delay_s == pytest.approx(ours.mean_delay_s, rel=1e-12)


def test_the_benchmark_hook_runs_between_the_last_episodes_slots(tool) -> None:
    """bench_scheduler interleaves our episodes there; each decided slot gets one call."""
    calls: list[int] = []
    tool.run(TINY, SEED, episodes=2, between_slots=calls.append)
    assert calls == list(range(TINY.env.n_slots - 1))
