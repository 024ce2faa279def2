"""tools/bench_cluster.py's options and per-cell figures (no agents started here)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_cluster.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cluster_under_test", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_defaults_still_size_traces_by_duration(bench: ModuleType) -> None:
    args = bench.parse_args([])
    assert args.tasks is None and args.duration == 13.0 and args.lad_actor == ()
    rate = 0.9 * sum(bench.speeds(args.scale)) / 14.5
    assert len(bench.trace_for(0.9, args, 0)) == round(rate * 13.0)
    assert bench.cells_of(args) == [(p, p, None) for p in args.policies]


def test_tasks_sets_the_trace_length_and_lad_actors_give_a_cell_each(bench: ModuleType) -> None:
    args = bench.parse_args(
        ["--tasks", "300", "--policies", "pod2", "lad", "--lad-actor", "ladn", "scorer"]
    )
    assert len(bench.trace_for(0.6, args, 0)) == 300
    assert bench.cells_of(args) == [
        ("pod2", "pod2", None),
        ("lad", "lad", "ladn"),
        ("lad-scorer", "lad", "scorer"),
    ]


def test_learned_options_reach_only_learned_cells(bench: ModuleType, tmp_path: Path) -> None:
    ladn, scorer = tmp_path / "ladn.pt", tmp_path / "scorer.pt"
    ladn.write_bytes(b"x")
    scorer.write_bytes(b"x")
    args = bench.parse_args(
        [
            "--policy-checkpoint",
            f"ladn={ladn}",
            "--policy-checkpoint",
            f"scorer={scorer}",
            "--no-learn",
            "--learn-warmup",
            "16",
        ]
    )
    config = bench.learned_config("lad", "scorer", args)
    assert config == {
        "lad_actor": "scorer",
        "policy_checkpoint": str(scorer.resolve()),
        "learn": False,
        "learn_warmup": 16,
    }
    assert bench.learned_config("lad", None, args)["policy_checkpoint"] == str(ladn.resolve())
    assert "policy_checkpoint" not in bench.learned_config("sac", None, args)
    assert bench.learned_config("greedy", None, args) == {}
    with pytest.raises(SystemExit):
        bench.parse_args(["--policy-checkpoint", f"lad={ladn}"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--policy-checkpoint", str(tmp_path / "missing.pt")])


def test_delay_figures_split_the_trace_by_submit_order(bench: ModuleType) -> None:
    # 9 tasks: indexes 0-2 take 1 s, 3-5 take 2 s, 6-8 take 4 s; one of the last is lost.
    tasks = [{"index": i, "delay_s": [1.0, 2.0, 4.0][i // 3]} for i in range(9)]
    tasks[8]["delay_s"] = None
    figures = bench.delay_figures(tasks, 9)
    assert figures["first_third_mean_s"] == 1.0
    assert figures["last_third_mean_s"] == 4.0
    assert figures["last_over_first_third"] == 4.0
    assert figures["mean_s"] == pytest.approx(17.0 / 8)
    assert figures["p50_s"] <= figures["p95_s"] <= figures["p99_s"] <= 4.0


def _status(steps: int, state: str, swaps: int, learn: bool = True) -> dict[str, Any]:
    host = {
        "policy": "lad",
        "actor": "scorer",
        "learn": learn,
        "trained_steps": steps,
        "rewards": 2 * steps,
        "fallback_decisions": 1,
        "guard_decisions": 3,
        "guard": {"state": state, "swaps": swaps},
        "loaded_from": "/x.pt",
        "state": "ready",
    }
    return {"cluster": {"scheduler": host}}


def test_learning_counters_are_summed_over_agents_and_replays(bench: ModuleType) -> None:
    one = bench.learning_totals([_status(5, "learned", 0), _status(7, "fallback", 1), None])
    assert one is not None
    assert (one["trained_steps"], one["rewards"], one["guard_decisions"]) == (12, 24, 6)
    assert one["guard_swaps"] == 1 and one["guard_states"] == {"fallback": 1, "learned": 1}
    assert one["agents"] == one["agents_learning"] == 2
    both = bench.sum_learning([one, None, one])
    assert both["trained_steps"] == 24 and both["guard_states"] == {"fallback": 2, "learned": 2}
    heuristic = {"cluster": {"scheduler": {"policy": "greedy"}}}
    assert bench.learning_totals([heuristic]) is None


def test_ratios_judge_each_lad_cell_against_the_targets(bench: ModuleType) -> None:
    omniscient = {"mean_s": 1.0}
    results = [
        {"load": 0.9, "policy": p, "mean_s": m, "twin_omniscient": omniscient}
        for p, m in (("lad", 1.3), ("lad-scorer", 1.1), ("pod2", 1.15), ("local", 4.0))
    ]
    entry = bench.ratios(results)["0.9"]
    assert entry["best_heuristic"] == "pod2"
    assert entry["lad-scorer_over_omniscient"] == pytest.approx(1.1)
    assert entry["lad-scorer_meets_omniscient_target"] is True
    assert entry["lad-scorer_meets_best_target"] is True
    assert entry["lad_meets_best_target"] is False and entry["meets_best_target"] is False
    assert entry["lad_over_local"] == pytest.approx(1.3 / 4.0)


def test_twin_omniscient_on_a_trace_is_no_faster_than_the_fastest_box(bench: ModuleType) -> None:
    args = bench.parse_args(["--tasks", "60", "--omniscient-seeds", "1"])
    trace = bench.trace_for(0.6, args, 0)
    found = bench.twin_omniscient(trace, args)
    assert found is not None and math.isfinite(found["mean_s"])
    fastest = max(bench.speeds(args.scale))
    assert found["mean_s"] >= sum(a.steps for a in trace) / len(trace) / fastest
    args.omniscient_seeds = 0
    assert bench.twin_omniscient(trace, args) is None


def test_pod2_cells_name_where_their_probes_go(bench: ModuleType) -> None:
    args = bench.parse_args(["--policies", "pod2", "pod2-soft", "pod2-lad", "--learn-warmup", "8"])
    assert bench.cells_of(args) == [
        ("pod2", "pod2", None),
        ("pod2-soft", "pod2", "soft-greedy"),
        ("pod2-lad", "lad", "scorer+probe"),
    ]
    config = bench.learned_config("lad", "scorer+probe", args)
    assert config == {"lad_actor": "scorer", "lad_mode": "probe", "learn_warmup": 8}
    common = bench.common_config("pod2", args, None)  # the twin's pod2: uniform probes
    assert common["probe_targets"] == "uniform"
    assert bench.common_config("pod2", args, "soft-greedy")["probe_targets"] == "soft-greedy"
    assert bench.common_config("lad", args, "scorer+probe")["lad_mode"] == "probe"
    results = [
        {"load": 0.6, "policy": p, "mean_s": m, "twin_omniscient": {"mean_s": 1.0}}
        for p, m in (("pod2-lad", 1.05), ("pod2-soft", 1.1), ("pod2", 1.2))
    ]
    entry = bench.ratios(results)["0.6"]
    assert entry["best_heuristic"] == "pod2-soft"  # pod2-lad is LAD-TS, not a heuristic
    assert entry["pod2-lad_meets_best_target"] is True
    assert entry["pod2-lad_over_omniscient"] == pytest.approx(1.05)


def test_passes_compare_the_same_trace_replayed_on_the_same_agents(bench: ModuleType) -> None:
    assert bench.parse_args(["--passes", "3"]).passes == 3
    with pytest.raises(SystemExit):
        bench.parse_args(["--passes", "0"])
    tasks = [
        {"pass": k, "index": i, "delay_s": d} for k, d in ((0, 2.0), (1, 1.5)) for i in range(6)
    ]
    figures = bench.pass_figures(tasks, 6)
    assert [f["mean_s"] for f in figures["passes"]] == [2.0, 1.5]
    assert figures["last_over_first_pass"] == pytest.approx(0.75)
    assert bench.pass_figures([t for t in tasks if t["pass"] == 0], 6) == {}
