"""``train_in_twin(actor="scorer")``: the per-server scorer learns in the twin, and the
checkpoint it writes is one an agent (and the twin's ``lad-scorer``) loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dedgeai.scheduler import twin_train
from dedgeai.scheduler.config import LearnConfig
from dedgeai.scheduler.lad_scorer import LADScorer
from dedgeai.scheduler.lad_scorer_learning import ScorerLearning
from dedgeai.scheduler.online import ClusterScheduler
from dedgeai.scheduler.twin_scenarios import paper


def test_scorer_trains_in_the_twin_and_writes_an_agent_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    monkeypatch.setattr(twin_train, "SEGMENT_S", 40.0)  # two short segments, not 5 minutes
    start = tmp_path / "warm.pt"
    ClusterScheduler(
        "lad",
        8,
        0,
        seed=1,
        learn=True,
        actor="scorer",
        warm_start_steps=40,
        packaged_default=False,
    ).save(start)
    before = LADScorer.load(start)
    segments: list[dict[str, float]] = []
    path, stats = twin_train.train_in_twin(
        paper(8),
        tmp_path / "policy.pt",
        hours=80.0 / 3600.0,
        seed=3,
        start=start,
        loads=(0.5, 0.9),
        train_steps_per_box_s=1.0,
        learn_config=LearnConfig(warmup=20, batch_size=16),  # the pacing, as an agent's
        actor="scorer",
        on_segment=segments.append,
    )
    assert [s["load"] for s in segments] == [0.5, 0.9]
    assert stats.rewards > 100 and stats.trained_steps > 100
    assert 0.0 <= segments[-1]["charts/greedy_agreement"] <= 1.0
    trained = ScorerLearning.load(path, 8)
    assert trained.trained_steps == stats.trained_steps and trained.weights_finite()
    phi = np.random.default_rng(0).standard_normal((4, 8, 10)).astype(np.float32)
    ok = np.ones((4, 8), dtype=bool)
    assert not np.allclose(trained.scorer.probs(phi, ok), before.probs(phi, ok))
    agent = ClusterScheduler("lad", 8, 2, checkpoint=path, actor="scorer", mean_path=True)
    assert agent.loaded_from == path and not agent.learns
