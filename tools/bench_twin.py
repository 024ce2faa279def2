"""Benchmark the scheduling policies in the cluster twin (a MODEL, not a measurement of agents).

Three parts (``--part``):

- ``cells`` (default): the paper's speed spread at 8 / 32 / 128 / 1,024 boxes, loads 0.5 /
  0.7 / 0.9 / 1.1, ``--tasks`` Poisson arrivals per cell (Flickr8k mix, uniform origins),
  ``--seeds`` seeds, 1 s all-to-all gossip: mean and p99 delay of every policy as a ratio
  to the omniscient central scheduler on the same arrivals (mean over seeds).
- ``speed``: 1,024 boxes x ``--sim-s`` simulated seconds at load 0.9, one thread: wall
  seconds of each ``--policy`` (default ``lad-scorer``, the daemon's LAD-TS actor at any
  size, batched), beside omniscient and soft-greedy on the same arrivals in the same
  invocation, and every policy's mean delay / omniscient's.
- ``gossip``: per box messages and bytes per second, the age of the reports decisions use,
  and failure-detection time vs N, for all-to-all and for the SWIM-style partial view.

    nice python tools/bench_twin.py --quick                   # minutes: a smoke run
    nice python tools/bench_twin.py --jobs 2                  # the table (see docs/results_cluster.md)
    nice python tools/bench_twin.py --part speed
    nice python tools/bench_twin.py --part gossip

Learned policies start from the daemon's warm start on the cluster's speeds (cached in
``--cache``), or from ``--checkpoint lad=PATH`` (e.g. a ``twin_train`` checkpoint).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread: the figures are per core

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from dedgeai.scheduler.twin import Twin, ratio_table  # noqa: E402
from dedgeai.scheduler.twin_policies import Scorer, make_policy  # noqa: E402
from dedgeai.scheduler.twin_scenarios import (  # noqa: E402
    REQUEST_OVERHEAD_BYTES,
    Arrivals,
    BoxEvent,
    arrival_rate,
    arrivals,
    bench_cluster,
    paper,
)
from dedgeai.scheduler.twin_train import warm_checkpoint  # noqa: E402

SIZES = (8, 32, 128, 1024)
LOADS = (0.5, 0.7, 0.9, 1.1)
POLICIES = (
    "omniscient",
    "lad",
    "sac",
    "dqn",
    "soft-greedy",
    "greedy",
    "least-loaded",
    "pod2",
    "steal",
    "greedy+steal",
    "round-robin",
    "random",
    "local",
)
# Run at 8 boxes only: the daemon's other learned actors, and two placements as blind as
# ``local`` (uniform over boxes of unequal speed: unstable above ~0.6 load on this spread).
SMALL_ONLY = ("sac", "dqn", "round-robin", "random")
DECENTRALISED = ("soft-greedy", "greedy", "least-loaded", "pod2", "steal", "greedy+steal")
console = Console(width=None if sys.stdout.isatty() else 160)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("cells", "speed", "gossip", "replay"), default="cells")
    parser.add_argument("--quick", action="store_true", help="8 and 32 boxes, 2 seeds, 4k tasks")
    parser.add_argument("--sizes", nargs="+", type=int)
    parser.add_argument("--loads", nargs="+", type=float)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--tasks", type=int, help="arrivals per cell")
    parser.add_argument("--policies", nargs="+")
    parser.add_argument("--gossip-s", type=float, default=1.0)
    parser.add_argument("--jobs", type=int, default=1, help="processes (cells in parallel)")
    parser.add_argument("--checkpoint", action="append", default=[], help="METHOD=PATH")
    parser.add_argument("--cache", type=Path, default=Path("runs/twin_cache"))
    parser.add_argument("--sim-s", type=float, default=600.0, help="speed: simulated seconds")
    parser.add_argument("--boxes", type=int, default=1024, help="speed: cluster size")
    parser.add_argument(
        "--policy", nargs="+", default=["lad-scorer"], help="speed: the policies timed"
    )
    parser.add_argument(
        "--candidates", type=int, help="speed: servers the scorer scores (0: all; default "
        "lad_scorer.CANDIDATES)"
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--measured", type=Path, default=Path("docs/results/bench_cluster.json"), help="replay"
    )
    args = parser.parse_args(argv)
    args.sizes = tuple(args.sizes or ((8, 32) if args.quick else SIZES))
    args.loads = tuple(args.loads or ((0.7, 0.9) if args.quick else LOADS))
    args.seeds = args.seeds or (2 if args.quick else 5)
    args.tasks = args.tasks or (4000 if args.quick else 20_000)
    args.policies = tuple(args.policies or POLICIES)
    args.checkpoints = dict(x.split("=", 1) for x in args.checkpoint)
    default = f"docs/results/bench_twin{'_' + args.part if args.part != 'cells' else ''}.json"
    args.json = args.json or Path(
        default if not args.quick else f"runs/bench_twin_{args.part}.json"
    )
    return args


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }


# ---- cells --------------------------------------------------------------------------------------
def _checkpoints(name: str, n: int, args: argparse.Namespace) -> dict[str, Path]:
    base = name.split("+")[0]
    if base not in ("lad", "sac", "dqn"):
        return {}
    if base in args.checkpoints:
        return {base: Path(args.checkpoints[base])}
    return {base: warm_checkpoint(base, paper(n, n_tasks=1).capacities, args.cache)}


def run_cell(job: tuple[int, float, int, str, argparse.Namespace]) -> dict[str, Any]:
    n, load, seed, name, args = job
    import torch

    torch.set_num_threads(1)
    sc = paper(n, load=load, n_tasks=args.tasks, gossip_interval_s=args.gossip_s)
    policy = make_policy(name, _checkpoints(name, n, args), seed=seed)
    result = Twin(sc, policy, seed=seed).run()
    row = result.summary()
    row.update(boxes=n, load=load, policy=name)
    return row


def print_cells(table: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """One table per cluster size: a row per policy, a column per load."""
    by = {(t["boxes"], t["load"], t["policy"]): t for t in table}
    for n in args.sizes:
        loads = [x for x in args.loads if (n, x, "omniscient") in by]
        if not loads:
            continue
        grid = Table(title=f"{n} boxes: mean delay / omniscient (p99 / omniscient) — MODEL")
        grid.add_column("policy")
        for load in loads:
            grid.add_column(f"load {load:g}", justify="right")
        grid.add_row(
            "omniscient (s)", *(f"{by[(n, x, 'omniscient')]['mean_s']:.2f}" for x in loads)
        )
        for name in args.policies[1:]:
            cells = []
            for load in loads:
                t = by.get((n, load, name))
                if t is None:
                    cells.append("—")
                    continue
                best = min(
                    (by[(n, load, p)]["mean_ratio"] for p in DECENTRALISED if (n, load, p) in by),
                    default=np.inf,
                )
                text = f"{t['mean_ratio']:.2f} ({t['p99_ratio']:.2f})"
                cells.append(f"[bold]{text}[/bold]" if t["mean_ratio"] <= best else text)
            if any(c != "—" for c in cells):
                grid.add_row(name, *cells)
        console.print(grid)
    console.print(
        f"{args.seeds} seeds x {args.tasks} tasks per cell, gossip every {args.gossip_s:g} s; "
        "bold: best decentralised heuristic. A model of the cluster, not the agents."
    )


def cells(args: argparse.Namespace) -> dict[str, Any]:
    jobs = []
    for n in args.sizes:
        for name in args.policies:
            for base in ("lad", "sac", "dqn"):
                if name.split("+")[0] == base:
                    _checkpoints(name, n, args)  # warm starts once, before the pool
        names = [p for p in args.policies if n <= 8 or p not in SMALL_ONLY]
        jobs += [
            (n, load, seed, name, args)
            for load in args.loads
            for seed in range(args.seeds)
            for name in names
        ]
    started = time.perf_counter()
    # Every finished run is appended to <json>.rows.jsonl; a rerun skips the runs there.
    log = args.json.with_suffix(".rows.jsonl")
    rows: list[dict[str, Any]] = []
    if log.exists():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    done = {(r["boxes"], r["load"], r["seed"], r["policy"]) for r in rows}
    jobs = [j for j in jobs if j[:4] not in done]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink, ProcessPoolExecutor(max(1, args.jobs)) as pool:
        runs = pool.map(run_cell, jobs, chunksize=1) if args.jobs > 1 else map(run_cell, jobs)
        for i, row in enumerate(runs):
            rows.append(row)
            sink.write(json.dumps(row, default=float) + "\n")
            sink.flush()
            _progress(i, len(jobs), row, started)
    table = ratio_table(rows)
    print_cells(table, args)
    return {"rows": rows, "table": table, "wall_s": time.perf_counter() - started}


def _progress(i: int, total: int, row: dict[str, Any], started: float) -> None:
    console.print(
        f"[{i + 1}/{total}] {row['boxes']} boxes load {row['load']:g} seed {row['seed']} "
        f"{row['policy']}: mean {row['mean_s']:.3f} s ({row['wall_s']:.1f} s; "
        f"{time.perf_counter() - started:.0f} s so far)",
        highlight=False,
    )


# ---- speed --------------------------------------------------------------------------------------
SPEED_REFERENCES = ("omniscient", "soft-greedy")  # run beside ``--policy``, same arrivals


def _scorer_checkpoint(cache: Path) -> Path:
    """The scorer a daemon starts with: the packaged default where there is one, else the
    warm start (seed 0), cloned once and cached (as tools/bench_lad_scorer.py)."""
    from dedgeai.scheduler.lad_scorer import DEFAULT_CHECKPOINT, LADScorer

    if DEFAULT_CHECKPOINT.exists():
        return DEFAULT_CHECKPOINT
    path = cache / "lad-scorer-warm-seed0.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        scorer = LADScorer(seed=0)
        scorer.warm_start()
        scorer.save(path)
    return path


def _speed_run(sc: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name.startswith("lad-scorer"):
        ckpts = {"lad-scorer": _scorer_checkpoint(args.cache)}
    else:
        ckpts = _checkpoints(name, sc.n_boxes, args)
    started = time.perf_counter()
    policy = make_policy(name, ckpts, seed=0)
    if isinstance(policy, Scorer) and args.candidates is not None:
        policy.top = args.candidates or None
    twin = Twin(sc, policy, seed=0)
    result = twin.run()
    return {
        "policy": name,
        "batched": policy.batched,
        "candidates": policy.top if isinstance(policy, Scorer) else None,
        "checkpoint": str(ckpts.get("lad-scorer", ckpts.get(name.split("+")[0], ""))),
        "simulated_s": twin.now,
        "decisions": result.counters["decisions"],
        "decision_batches": result.counters["decision_batches"],
        "wall_s": time.perf_counter() - started,
        "run_wall_s": result.wall_s,
        "mean_s": result.mean_s,
        "p99_s": result.percentile_s(99),
        "done": result.done,
    }


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """1,024 boxes x ``--sim-s`` at load 0.9: wall time of each ``--policy`` (the scorer by
    default), with omniscient and soft-greedy on the same arrivals in the same invocation
    (the machine is shared: their ratios are what compares)."""
    import torch

    torch.set_num_threads(1)
    n = args.boxes
    sc = paper(n, load=0.9, n_tasks=1)
    sc = sc.with_(n_tasks=int(arrival_rate(sc) * args.sim_s))
    names = [*args.policy, *(p for p in SPEED_REFERENCES if p not in args.policy)]
    for name in names:  # warm starts before the clock
        if name.startswith("lad-scorer"):
            _scorer_checkpoint(args.cache)
        else:
            _checkpoints(name, n, args)
    runs = {}
    for name in names:
        runs[name] = _speed_run(sc, name, args)
        console.print(runs[name], highlight=False)
    ideal, soft = runs["omniscient"]["mean_s"], runs["soft-greedy"]["wall_s"]
    rows = []
    for name in names:
        r = runs[name]
        r.update(
            boxes=n,
            load=0.9,
            tasks=sc.n_tasks,
            mean_over_omniscient=r["mean_s"] / ideal,
            wall_over_soft_greedy=r["wall_s"] / soft,
            goal_wall_s=120.0,
            met=r["wall_s"] <= 120.0,
        )
        rows.append(r)
    grid = Table(title=f"twin speed: {n} boxes x {args.sim_s:g} simulated s, load 0.9, one thread")
    for col in ("policy", "decisions", "wall s", "wall / soft-greedy", "mean / omniscient"):
        grid.add_column(col, justify="right")
    for r in rows:
        grid.add_row(
            r["policy"], f"{r['decisions']:.0f}", f"{r['wall_s']:.1f}",
            f"{r['wall_over_soft_greedy']:.2f}", f"{r['mean_over_omniscient']:.3f}",
        )  # fmt: skip
    console.print(grid)
    return {"speed": rows}


# ---- gossip -------------------------------------------------------------------------------------
def gossip(args: argparse.Namespace) -> dict[str, Any]:
    """Cost and failure detection vs N: a box fails a third of the way in."""
    rows = []
    for mode in ("full", "partial"):
        for n in args.sizes:
            for seed in range(min(args.seeds, 3)):
                sc = paper(n, load=0.7, n_tasks=1, gossip=mode, gossip_interval_s=args.gossip_s)
                duration = 60.0 if n <= 128 else 30.0
                sc = sc.with_(n_tasks=int(arrival_rate(sc) * duration))
                horizon = float(arrivals(sc, seed).at_s[-1])
                box = 1 + seed
                sc = sc.with_(events=(BoxEvent(horizon / 3, box, "fail"),))
                result = Twin(sc, make_policy("greedy"), seed=seed).run()
                c = result.counters
                det = result.detections[0] if result.detections else {}
                rows.append(
                    {
                        "mode": mode,
                        "boxes": n,
                        "seed": seed,
                        "msgs_per_box_s": c["gossip_msgs_per_box_s"],
                        "bytes_per_box_s": c["gossip_bytes_per_box_s"],
                        "report_age_s": c["staleness_mean_s"],
                        "detect_first_s": det.get("first_s", float("nan")),
                        "detect_all_s": det.get("all_s", float("nan")),
                        "false_downs": c["false_downs"],
                        "mean_s": result.mean_s,
                        "wall_s": result.wall_s,
                    }
                )
                console.print(rows[-1], highlight=False)
    grid = Table(title=f"gossip cost and failure detection vs N (interval {args.gossip_s:g} s)")
    for col in (
        "mode",
        "boxes",
        "msgs/box/s",
        "kB/box/s",
        "report age s",
        "detect first s",
        "detect all s",
    ):
        grid.add_column(col, justify="right")
    for mode in ("full", "partial"):
        for n in args.sizes:
            rs = [r for r in rows if r["mode"] == mode and r["boxes"] == n]
            if not rs:
                continue
            grid.add_row(
                mode,
                str(n),
                f"{statistics.fmean(r['msgs_per_box_s'] for r in rs):.1f}",
                f"{statistics.fmean(r['bytes_per_box_s'] for r in rs) / 1e3:.1f}",
                f"{statistics.fmean(r['report_age_s'] for r in rs):.2f}",
                f"{statistics.fmean(r['detect_first_s'] for r in rs):.2f}",
                f"{statistics.fmean(r['detect_all_s'] for r in rs):.2f}",
            )
    console.print(grid)
    return {"gossip": rows}


# ---- replay -------------------------------------------------------------------------------------
def replay(args: argparse.Namespace) -> dict[str, Any]:
    """``tools/bench_cluster.py``'s traces in the twin, beside what the 8 agents measured."""
    from dedgeai.agent.lab.load import poisson_trace
    from dedgeai.scheduler.lad_scorer import DEFAULT_CHECKPOINT

    measured = json.loads(args.measured.read_text())
    st = measured["settings"]
    speeds = np.asarray(st["steps_per_second"], dtype=np.float64)
    lo, hi = st["steps"]
    sc = bench_cluster(n_tasks=1).with_(capacities=speeds, steps=(lo, hi), warmup_fraction=0.0)
    loads = sorted({r["load"] for r in measured["results"]})
    ckpts = {m: warm_checkpoint(m, speeds, args.cache) for m in ("lad", "sac", "dqn")}
    ckpts["lad-scorer"] = DEFAULT_CHECKPOINT  # what the agents load (pod2-lad, lad-scorer)
    rows = []
    for k, load in enumerate(loads):
        rate = load * speeds.sum() / ((lo + hi) / 2)
        n_tasks = int(st.get("tasks") or max(8, round(rate * float(st["duration_s"]))))
        trace = poisson_trace(n_tasks, rate, speeds.size, int(st["seed"]) + k, (lo, hi))
        size = [(len(a.prompt) + REQUEST_OVERHEAD_BYTES) * 8 / 1e6 for a in trace]
        arr = Arrivals(
            np.array([a.at_s for a in trace]),
            np.array([a.origin for a in trace]),
            np.array([a.steps for a in trace]),
            np.array(size),
        )
        for real in (r for r in measured["results"] if r["load"] == load):
            name = real["policy"]
            means = [
                float(
                    np.mean(Twin(sc, make_policy(name, ckpts, seed=s), s, trace=arr).run().delay_s)
                )
                for s in range(args.seeds)
            ]
            twin_mean = statistics.fmean(means)
            rows.append(
                {
                    "load": load,
                    "policy": name,
                    "tasks": n_tasks,
                    "measured_mean_s": real["mean_s"],
                    "twin_mean_s": twin_mean,
                    "twin_over_measured": twin_mean / real["mean_s"],
                }
            )
    grid = Table(title="twin vs 8 emulated agents (tools/bench_cluster.py traces): mean delay s")
    for col in ("load", "policy", "measured", "twin", "twin / measured"):
        grid.add_column(col, justify="right")
    for r in rows:
        ratio = r["twin_over_measured"]
        mark = "" if abs(ratio - 1) <= 0.15 else " *"
        grid.add_row(
            f"{r['load']:g}", r["policy"], f"{r['measured_mean_s']:.2f}",
            f"{r['twin_mean_s']:.2f}", f"{ratio:.2f}{mark}",
        )  # fmt: skip
    console.print(grid)
    console.print(f"*: outside ±15 %. Measured: {args.measured} (every replay and pass pooled).")
    return {"replay": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    parts = {"cells": cells, "speed": speed, "gossip": gossip, "replay": replay}
    out = parts[args.part](args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {
        "model": "cluster twin (scheduler/twin.py): a discrete-event model, not the agents",
        "settings": settings,
        "machine": machine(),
        "wall_s": time.perf_counter() - started,
        **out,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
