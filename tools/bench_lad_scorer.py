"""The per-server LAD scorer (``scheduler/lad_scorer.py``) in the cluster twin, beside the others.

The paper's speed spread at 8 / 32 / 128 boxes, loads 0.5 / 0.7 / 0.9, Poisson arrivals
(Flickr8k mix, uniform origins), 1 s all-to-all gossip: mean and p99 delay of each policy as
a ratio to the omniscient central scheduler on the same arrivals (mean over seeds). A MODEL,
not a measurement of agents (docs/results_cluster.md §4).

    nice python tools/bench_lad_scorer.py --tasks 20000 --seeds 3   # docs/results/bench_lad_scorer.json
    nice python tools/bench_lad_scorer.py --tasks 20000 --seeds 2 --sizes 1024 --loads 0.9 \
        --policies omniscient pod2 soft-greedy lad-scorer lad-scorer-pod2   # joins the table
    nice python tools/bench_lad_scorer.py --tasks 2000 --seeds 1 --sizes 8   # a smoke run

``lad`` is the daemon's current actor (the paper's network, warm-started by
``twin_train.warm_checkpoint``, batched as in ``tools/bench_twin.py``); ``lad-scorer`` decides
task by task on the box's gossip view, as the daemon does; ``lad-scorer-pod2`` on the probed
state. Every finished run is appended to ``<json>.rows.jsonl`` and skipped when run again.

``--scorers TAG=PATH`` adds scorer checkpoints (a twin-trained one, say) as the policies
``lad-scorer:TAG`` and ``lad-scorer-pod2:TAG``, side by side with the warm start:

    nice python tools/bench_lad_scorer.py --tasks 8000 --seeds 2 --sizes 8 32 \
        --scorers trained=runs/twin-scorer-8/policy.pt --json docs/results/bench_scorer_trained.json \
        --policies omniscient pod2 soft-greedy lad-scorer lad-scorer:trained
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread: the figures are per core

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from dedgeai.scheduler.lad_scorer import LADScorer  # noqa: E402
from dedgeai.scheduler.twin import Twin, ratio_table  # noqa: E402
from dedgeai.scheduler.twin_policies import make_policy  # noqa: E402
from dedgeai.scheduler.twin_scenarios import paper  # noqa: E402
from dedgeai.scheduler.twin_train import warm_checkpoint  # noqa: E402

SIZES = (8, 32, 128)
LOADS = (0.5, 0.7, 0.9)
POLICIES = ("omniscient", "pod2", "soft-greedy", "lad", "lad-scorer", "lad-scorer-pod2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--loads", nargs="+", type=float, default=list(LOADS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed.. (new seeds: not training's)"
    )
    parser.add_argument("--tasks", type=int, default=6000, help="arrivals per run")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    parser.add_argument("--jobs", type=int, default=1, help="processes (runs in parallel)")
    parser.add_argument("--cache", type=Path, default=Path("runs/twin_cache"))
    parser.add_argument("--json", type=Path, default=Path("docs/results/bench_lad_scorer.json"))
    parser.add_argument(
        "--scorers",
        nargs="*",
        default=[],
        metavar="TAG=PATH",
        help="scorer checkpoints, run as the policies lad-scorer:TAG (and lad-scorer-pod2:TAG)",
    )
    return parser.parse_args(argv)


def scorer_checkpoint(cache: Path) -> tuple[Path, dict[str, Any]]:
    """The warm-started scorer (seed 0), cloned once and cached: its path and clone figures."""
    path = cache / "lad-scorer-warm-seed0.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        scorer = LADScorer(seed=0)
        scorer.warm_start()
        scorer.cloned["wall_s"] = round(time.perf_counter() - started, 1)
        scorer.save(path)
    return path, LADScorer.load(path).cloned


def run(job: tuple[int, float, int, str, int, Path, dict[str, Path]]) -> dict[str, Any]:
    n, load, seed, name, tasks, cache, scorers = job
    import torch

    torch.set_num_threads(1)
    sc = paper(n, load=load, n_tasks=tasks, gossip_interval_s=1.0)
    base, _, tag = name.partition(":")
    if tag:  # lad-scorer:TAG, lad-scorer-pod2:TAG: that checkpoint
        policy = make_policy(base, {"lad-scorer": scorers[tag]}, seed=seed, batched=False)
        policy.name = name
        row = Twin(sc, policy, seed=seed).run().summary()
        row.update(boxes=n, load=load, policy=name, seed=seed)
        return row
    if name == "lad":
        checkpoints = {"lad": warm_checkpoint("lad", paper(n, n_tasks=1).capacities, cache)}
    elif name.startswith("lad-scorer"):
        checkpoints = {"lad-scorer": scorer_checkpoint(cache)[0]}
    else:
        checkpoints = {}
    # The daemon decides task by task; ``lad`` keeps bench_twin's batched Fleet (its 128-box
    # runs would take minutes otherwise): decisions in a window share one state.
    policy = make_policy(name, checkpoints, seed=seed, batched=name == "lad")
    row = Twin(sc, policy, seed=seed).run().summary()
    row.update(boxes=n, load=load, policy=name, seed=seed)
    return row


def markdown(table: list[dict[str, Any]], policies: list[str]) -> str:
    """One table per size: mean ÷ omniscient (p99 ÷ omniscient's p99), rows = policies."""
    out = []
    cell = {(c["boxes"], c["load"], c["policy"]): c for c in table}
    for n in sorted({c["boxes"] for c in table}):
        loads = sorted({c["load"] for c in table if c["boxes"] == n})
        out.append(f"**{n} boxes**\n")
        out.append("| policy | " + " | ".join(f"load {x}" for x in loads) + " |")
        out.append("|---|" + "---:|" * len(loads))
        row = [f"{cell[(n, x, 'omniscient')]['mean_s']:.2f}" for x in loads]
        out.append("| omniscient (s) | " + " | ".join(row) + " |")
        for name in policies:
            if name == "omniscient" or (n, loads[0], name) not in cell:
                continue
            vals = []
            for x in loads:
                c = cell[(n, x, name)]
                fmt = ".2f" if c["mean_ratio"] < 100 else ".0f"
                vals.append(f"{c['mean_ratio']:{fmt}} ({c['p99_ratio']:{fmt}})")
            out.append(f"| {name} | " + " | ".join(vals) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    cloned = None
    if any(p.startswith("lad-scorer") for p in args.policies):
        cloned = scorer_checkpoint(args.cache)[1]  # once, before the workers need it
    rows_path = args.json.with_suffix(".rows.jsonl")
    rows: list[dict[str, Any]] = []
    if rows_path.exists():
        rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line]
    done = {(r["boxes"], r["load"], r["seed"], r["policy"], r["tasks"]) for r in rows}
    scorers = {tag: Path(path) for tag, _, path in (s.partition("=") for s in args.scorers)}
    jobs = [
        (n, load, seed, name, args.tasks, args.cache, scorers)
        for n in args.sizes
        for load in args.loads
        for seed in range(args.first_seed, args.first_seed + args.seeds)
        for name in args.policies
        if (n, load, seed, name, args.tasks) not in done
    ]
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool, rows_path.open("a") as sink:
        for row in pool.map(run, jobs):
            row["tasks"] = args.tasks
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(
                f"{row['boxes']:>4} {row['load']:.1f} s{row['seed']} {row['policy']:<16}"
                f" mean {row['mean_s']:8.2f} s  wall {row['wall_s']:.1f} s",
                flush=True,
            )
    # The table: every run at this task count in the rows file (so that a separate
    # ``--sizes 1024 --loads 0.9`` run joins the 8–128 ones).
    keep = [r for r in rows if r["tasks"] == args.tasks]
    table = ratio_table(keep)
    text = markdown(table, [*POLICIES, *(p for p in args.policies if p not in POLICIES)])
    print(text)
    args.json.write_text(
        json.dumps(
            {
                "command": " ".join(["python tools/bench_lad_scorer.py", *(argv or sys.argv[1:])]),
                "seeds_per_cell": "see each cell's seeds",
                "scenario": "paper spread, Poisson, uniform origins, 1 s all-to-all gossip, "
                "2 ms links, first 10 % of tasks left out",
                "scorer_warm_start": cloned,
                "last_invocation_wall_s": round(time.perf_counter() - started, 1),
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "loadavg": os.getloadavg(),
                },
                "cells": table,
                "markdown": text,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
