"""The environment reproduces the authors' numbers exactly with their legacy seeds (§1.2, §4.2)."""

from dataclasses import replace

import numpy as np
import pytest

from dedgeai.scheduler.config import Switches, get_preset
from dedgeai.scheduler.env import ArrivalStream, make_system, slot_outcome
from dedgeai.scheduler.errors import ConfigurationError
from dedgeai.scheduler.simulate import train


def test_system_parameters_match_the_authors() -> None:
    system = make_system(get_preset("reference").env)
    assert system.capacity_ghz.tolist() == [
        50,
        25,
        18,
        32,
        28,
        21,
        50,
        17,
        44,
        41,
        21,
        31,
        41,
        36,
        30,
        47,
        49,
        13,
        48,
        14,
    ]
    assert system.capacity_ghz.sum() == 656
    assert system.rate_mbps.tolist() == [
        499,
        478,
        461,
        416,
        473,
        408,
        500,
        462,
        427,
        430,
        480,
        407,
        476,
        415,
        453,
        480,
        427,
        444,
        477,
        475,
    ]
    assert system.quality[:10].tolist() == [6, 12, 13, 9, 10, 12, 6, 1, 1, 2]
    assert np.allclose(system.demand[:5], [1.127, 2.999, 1.332, 1.479, 1.325], atol=5e-4)
    assert system.quality.min() >= 1 and system.quality.max() <= 14  # randint(1, 15): B9
    assert np.corrcoef(system.density, system.result_mbit)[0, 1] == pytest.approx(1.0)  # B9


def test_legacy_stream_decision_counts() -> None:
    stream = ArrivalStream(get_preset("reference").env, seed=0)
    assert [stream.next_episode().n_decisions for _ in range(3)] == [30287, 29869, 30427]


def _delays(method: str, preset_name: str = "reference", **env_changes: object) -> list[float]:
    preset = get_preset(preset_name)
    if env_changes:
        preset = replace(preset, env=replace(preset.env, **env_changes))
    _, history = train(method, preset, Switches.reference(), seed=0, episodes=3)
    return [s.mean_delay_s for s in history]


def test_opt_ts_reproduces_section_4_2() -> None:
    assert _delays("opt") == pytest.approx([7.649, 7.451, 8.118], abs=1e-3)


def test_opt_ts_with_capacity_max_20() -> None:
    assert _delays("opt", capacity_ghz=(10, 20)) == pytest.approx(
        [48.703, 47.852, 49.294], abs=1e-3
    )


def test_all_local_reproduces_section_4_2() -> None:
    assert _delays("local") == pytest.approx([17.027, 16.562, 17.428], abs=1e-3)


def test_random_is_in_the_authors_range() -> None:
    # The authors' random policy used another RNG, so only the level is comparable.
    assert all(16.0 <= d <= 17.6 for d in _delays("random"))


def test_seeded_streams_are_identical_for_every_method_and_differ_by_seed() -> None:
    cfg = get_preset("paper").env
    a, b, c = (
        ArrivalStream(cfg, 7).next_episode(),
        ArrivalStream(cfg, 7).next_episode(),
        ArrivalStream(cfg, 8).next_episode(),
    )
    assert np.array_equal(a.task_mbit, b.task_mbit)
    assert not np.array_equal(a.task_mbit, c.task_mbit)


def _slot_by_hand(system, backlog, sizes, valid, actions):  # type: ignore[no-untyped-def]
    """The authors' per-task loop (environment_*.py step), written out plainly."""
    B, N = valid.shape
    load = np.zeros(B)
    delays = np.zeros((B, N))
    for b in range(B):
        for n in range(N):
            if not valid[b, n]:
                continue
            a = actions[b, n]
            wait = (backlog[a] + load[a]) / system.capacity_ghz[a]
            tx = 0.0 if a == b else sizes[b, n] / system.rate_mbps[a]
            comp = system.demand[n] / system.capacity_ghz[a]
            ret = system.result_mbit[n] / system.rate_mbps[a]
            delays[b, n] = tx + wait + comp + ret
            load[a] += system.demand[n]
    return delays, np.maximum(backlog + load - system.capacity_ghz, 0.0)


def test_vectorised_slot_equals_the_per_task_loop() -> None:
    cfg = get_preset("paper").env
    system = make_system(cfg)
    episode = ArrivalStream(cfg, 3).next_episode()
    rng = np.random.default_rng(0)
    backlog = rng.uniform(0, 300, size=cfg.n_servers)
    actions = rng.integers(0, cfg.n_servers, size=(cfg.n_servers, cfg.max_tasks))
    out = slot_outcome(system, backlog, episode.task_mbit[0], episode.valid[0], actions, 1.0)
    delays, next_backlog = _slot_by_hand(
        system, backlog, episode.task_mbit[0], episode.valid[0], actions
    )
    assert np.allclose(out.delay_s, delays)
    assert np.allclose(out.next_backlog, next_backlog)


def test_fewer_than_two_servers_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 2"):
        get_preset("paper", n_servers=1)
