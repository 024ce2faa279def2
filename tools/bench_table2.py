"""The paper's Table II, twin part: 1 / 100 / 500 / 1,000 Flickr8k tasks on 5 boxes.

Every task is 10-19 steps at 512x512 (the authors' prototype) and all are submitted at
once, by one client to box 0 (``--origins one``, the default) or spread over the 5 boxes
(``--origins uniform``). The cluster twin (``scheduler/twin.py``) gives the makespan (the
last result back) and the mean delay for LAD-TS (the daemon's warm-started actor), the
decentralised heuristics, local-only and one box serial, for per-step speeds from:

- ``paper-calibrated``: 18.3 s for one task (Table II, |N| = 1) at the mean 14.5 steps,
  every second counted as denoising: a calibration, not a measurement.
- ``jetson-agx-orin (estimate)``: ``twin_scenarios.ESTIMATED_STEPS_PER_S``, an ESTIMATE.
- ``h200 (measured)``: reSD3-m at 512x512 with the encoders resident, 0.89 s for 28 steps
  (shared/reference/sd3_memory_modes_h200.json), one H200 per box.
- ``cpu-tiny (measured here)``: the tiny model (random weights, SD3's architecture at toy
  size) on this machine's CPU, timed by ``--measure-tiny`` (else skipped).

    nice python tools/bench_table2.py [--measure-tiny] [--origins one|uniform]

``--real``: the 100-task case on five real agents (``python -m dedgeai.agent`` subprocesses
on loopback, ``dedgeai.agent.lab.harness``), each an EMULATED GPU (timing only, no model)
at the paper-calibrated per-step speed times ``--speedup`` (default 20, so one run fits a
few minutes on a 2-core box; makespan / one-box-serial does not depend on it). All tasks
are submitted at once (1 ms apart) to agent 0 (``--origins one``), spread uniformly
(``uniform``) or both (``both``); pod2, lad (warm-started; greedy decides while it is not
ready, and the decisions of each are counted), greedy and local, a fresh cluster for each.
Makespan is first submit -> last result (client clock); beside it the twin's prediction
for the same speeds and arrivals, and the paper's 100-task row as a ratio to serial:

    nice python tools/bench_table2.py --real [--origins one|uniform|both] [--speedup 20]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from dedgeai.scheduler.policy_names import POLICIES as AGENT_POLICIES  # noqa: E402
from dedgeai.scheduler.twin import Twin  # noqa: E402
from dedgeai.scheduler.twin_policies import make_policy  # noqa: E402
from dedgeai.scheduler.twin_scenarios import (  # noqa: E402
    ESTIMATED_STEPS_PER_S,
    REQUEST_OVERHEAD_BYTES,
    TASK_STEPS,
    Arrivals,
    Scenario,
)
from dedgeai.scheduler.twin_train import warm_checkpoint  # noqa: E402

N_BOXES = 5
TASK_COUNTS = (1, 100, 500, 1000)
PAPER_ROW_S = {1: 18.3, 100: 382.4, 500: 1921.5, 1000: 3895.4}  # DEdgeAI, Table II
STABILITY_ROW_S = {1: 5.4, 100: 540.0, 500: 2700.0, 1000: 5400.0}  # 1-task median x N
MEAN_STEPS = sum(TASK_STEPS) / 2
PROFILES = {
    "paper-calibrated": MEAN_STEPS / PAPER_ROW_S[1],
    "jetson-agx-orin (estimate)": ESTIMATED_STEPS_PER_S["jetson-agx-orin (estimate)"],
    "h200 (measured)": ESTIMATED_STEPS_PER_S["h200 (measured)"],
}
POLICIES = ("lad", "greedy", "soft-greedy", "pod2", "greedy+steal", "local")
HEURISTICS = ("greedy", "soft-greedy", "pod2", "greedy+steal")
console = Console(width=None if sys.stdout.isatty() else 150)


def measure_tiny(repeats: int = 2) -> float:
    """Steps per second of the tiny model at 512x512 on this CPU, whole request included
    (prompt encoding and decoding spread over the steps, as an agent experiences it)."""
    from dedgeai.models.backend import GenerationRequest
    from dedgeai.models.factory import BackendSpec, create_backend

    backend = create_backend(BackendSpec("tiny", device="cpu"))
    try:
        backend.generate(GenerationRequest("warm-up", steps=2, width=512, height=512))
        rates = []
        for k in range(repeats):
            steps = TASK_STEPS[k % 2]
            started = time.perf_counter()
            backend.generate(GenerationRequest(f"a dog {k}", steps=steps, width=512, height=512))
            rates.append(steps / (time.perf_counter() - started))
        return float(np.median(rates))
    finally:
        backend.close()


def burst(n_tasks: int, origins: str, seed: int) -> Arrivals:
    """``n_tasks`` submitted at once (1 ms apart, in order), Flickr8k-sized requests."""
    rng = np.random.default_rng([seed, n_tasks])
    origin = np.zeros(n_tasks, dtype=np.int64)
    if origins == "uniform":
        origin = rng.integers(0, N_BOXES, n_tasks)
    steps = rng.integers(TASK_STEPS[0], TASK_STEPS[1] + 1, n_tasks)
    size = (56.0 + REQUEST_OVERHEAD_BYTES) * 8 / 1e6 * np.ones(n_tasks)
    return Arrivals(np.arange(n_tasks) * 1e-3, origin, steps, size)


def run(profile: str, speed: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    caps = np.full(N_BOXES, speed)
    ckpt = {"lad": warm_checkpoint("lad", caps, args.cache)}
    for n in TASK_COUNTS:
        sc = Scenario(f"table2-{profile}", caps, n_tasks=n, warmup_fraction=0.0)
        trace = burst(n, args.origins, args.seed)
        serial = float(trace.steps.sum() / speed)
        rows.append(
            {"profile": profile, "tasks": n, "policy": "one box serial", "makespan_s": serial,
             "mean_s": float(np.mean(np.cumsum(trace.steps) / speed))}
        )  # fmt: skip
        for name in POLICIES:
            result = Twin(
                sc, make_policy(name, ckpt, seed=args.seed, batched=False), args.seed, trace=trace
            ).run()
            rows.append(
                {
                    "profile": profile,
                    "tasks": n,
                    "policy": name,
                    "makespan_s": result.counters["makespan_s"],
                    "mean_s": float(np.nanmean(result.delay_s)),
                }
            )
    return rows


def report(rows: list[dict[str, Any]], profiles: list[str]) -> None:
    for profile in profiles:
        grid = Table(title=f"Table II analogue, 5 boxes, {profile}: makespan s (mean delay s)")
        grid.add_column("policy")
        for n in TASK_COUNTS:
            grid.add_column(f"|N| = {n}", justify="right")
        by = {(r["tasks"], r["policy"]): r for r in rows if r["profile"] == profile}
        best = {
            n: min(HEURISTICS, key=lambda p, n=n: by[(n, p)]["makespan_s"]) for n in TASK_COUNTS
        }
        for name in ("lad", "best heuristic", "local", "one box serial"):
            cells = []
            for n in TASK_COUNTS:
                r = by[(n, best[n] if name == "best heuristic" else name)]
                tag = f" · {best[n]}" if name == "best heuristic" else ""
                cells.append(f"{r['makespan_s']:.1f} ({r['mean_s']:.1f}){tag}")
            grid.add_row("local-only" if name == "local" else name, *cells)
        grid.add_row("paper: DEdgeAI", *(f"{PAPER_ROW_S[n]:.1f}" for n in TASK_COUNTS))
        grid.add_row("paper: Stability.AI", *(f"{STABILITY_ROW_S[n]:.1f}" for n in TASK_COUNTS))
        console.print(grid)


# ---- the 100-task case on five real EMULATED agents ------------------------------------------
REAL_POLICIES = ("pod2", "lad", "greedy", "local")
REAL_SPEEDUP = 20.0
REAL_TASKS = 100
TWIN_SEEDS = 4
# The paper's Table II, |N| = 100: DEdgeAI's makespan against its own one-task time x 100
# (the calibrated one box serial) and against Stability.AI's row (1-task median x 100).
PAPER_SERIAL_S = 100 * PAPER_ROW_S[1]


def real_trace(n_tasks: int, origins: str, seed: int) -> tuple[Arrivals, list[Any]]:
    """``burst``'s arrivals (same steps and origins) as the twin's and the replayer's
    traces; Flickr8k prompts, whose lengths give the twin its request sizes."""
    from dedgeai.agent.lab.load import Arrival, flickr8k_prompts

    twin = burst(n_tasks, origins, seed)
    rng = np.random.default_rng([seed, n_tasks, 0x7AB1E])
    prompts = flickr8k_prompts()
    trace = [
        Arrival(
            at_s=float(at),
            origin=int(origin),
            prompt=prompts[int(rng.integers(len(prompts)))],
            steps=int(steps),
            seed=int(rng.integers(2**31)),
        )
        for at, origin, steps in zip(twin.at_s, twin.origin, twin.steps, strict=True)
    ]
    size = np.array([(len(a.prompt) + REQUEST_OVERHEAD_BYTES) * 8 / 1e6 for a in trace])
    return Arrivals(twin.at_s, twin.origin, twin.steps, size), trace


def serial(steps: np.ndarray, speed: float) -> dict[str, float]:
    """One box running the tasks one after another in submit order."""
    done = np.cumsum(steps) / speed
    return {"makespan_s": float(done[-1]), "mean_s": float(done.mean())}


def twin_prediction(
    policy: str, arrivals: Arrivals, speed: float, ckpt: dict[str, Path], args: argparse.Namespace
) -> dict[str, Any]:
    """The twin on the same speeds and arrivals (loopback links, the agents' gossip
    interval), mean over ``--twin-seeds`` seeds (gossip phases, probes, policy draws).

    Learned policies decide one task at a time (``batched=False``: the daemon's own
    decision path), as the agents do. The batched ``Fleet`` herds in a burst (one seed
    sent 54 of 100 tasks to one box): its makespans were 26-51 s where the agents measured
    21-23 s (x20 speed, origins one)."""
    from dedgeai.scheduler.twin_scenarios import bench_cluster

    sc = bench_cluster(n_tasks=len(arrivals)).with_(
        name="table2-real",
        capacities=np.full(N_BOXES, speed),
        gossip_interval_s=args.telemetry_s,
        warmup_fraction=0.0,
    )
    runs = [
        Twin(sc, make_policy(policy, ckpt, seed=s, batched=False), s, trace=arrivals).run()
        for s in range(args.twin_seeds)
    ]
    makespans = [float(r.counters["makespan_s"]) for r in runs]
    means = [float(np.nanmean(r.delay_s)) for r in runs]
    return {
        "makespan_s": float(np.mean(makespans)),
        "mean_s": float(np.mean(means)),
        "makespan_s_per_seed": makespans,
        "mean_s_per_seed": means,
    }


def real_cluster(policy: str, speed: float, args: argparse.Namespace) -> Any:
    from dedgeai.agent.lab.harness import LocalCluster

    common: dict[str, Any] = {
        "model": "emulated",
        "max_queue": 100_000,
        "profile_sizes": ["512x512"],
        "log_level": "warning",
        "telemetry_interval_s": args.telemetry_s,
        "policy": policy,
    }
    per_agent = [{"emulated_steps_per_second": speed} for _ in range(N_BOXES)]
    return LocalCluster(per_agent, common)


def scheduler_counts(cluster: Any) -> list[dict[str, Any]]:
    """Per agent: its policy's state, fallback (greedy) decisions and training steps."""
    found = []
    for agent in cluster.agents:
        if not agent.alive():
            found.append({"agent": agent.name, "alive": False})
            continue
        with cluster.client(agent.index, timeout_s=10.0) as client:
            body = client.status()
        view = body.get("cluster") or {}
        sched = view.get("scheduler") or body.get("scheduler") or {}
        found.append(
            {
                "agent": agent.name,
                "policy": sched.get("policy"),
                "state": sched.get("state"),
                "ready": sched.get("ready"),
                "fallback_decisions": sched.get("fallback_decisions"),
                "trained_steps": sched.get("total_steps", sched.get("trained_steps")),
                "rewards": sched.get("rewards"),
                "decisions": (view.get("decisions") or {}).get("count"),
            }
        )
    return found


def replay_real(
    policy: str, trace: list[Any], speed: float, args: argparse.Namespace
) -> dict[str, Any]:
    """One fresh 5-agent cluster, every task of ``trace``; makespan, delays, decisions."""
    from collections import Counter

    from dedgeai.agent.lab.load import Replayer

    started = time.monotonic()
    cluster = real_cluster(policy, speed, args)
    try:
        cluster.start()
        cluster.wait_peers_up(timeout_s=args.ready_timeout_s)
        start_s = time.monotonic() - started
        work = sum(a.steps for a in trace) / speed
        outcomes = Replayer(cluster, trace, deadline_s=max(120.0, 3 * work)).run()
        replay_s = time.monotonic() - started - start_s
        counts = scheduler_counts(cluster)
    finally:
        codes = cluster.close()
    done = [o for o in outcomes if o.state == "done" and o.delay_s is not None]
    submits = [o.submitted_at for o in outcomes if o.submitted_at is not None]
    finish = [o.submitted_at + o.delay_s for o in done if o.submitted_at is not None]
    ran_on = Counter(o.target or "?" for o in done)
    return {
        "policy": policy,
        "tasks": len(outcomes),
        "done": len(done),
        "lost": sum(o.state != "done" for o in outcomes),
        "makespan_s": max(finish) - min(submits) if finish else float("nan"),
        "mean_s": float(np.mean([o.delay_s for o in done])) if done else float("nan"),
        "decided_by": dict(Counter(o.policy or "?" for o in done)),
        "ran_on": {a.name: ran_on.get(a.name, 0) for a in cluster.agents}
        | ({"?": ran_on["?"]} if ran_on.get("?") else {}),
        "schedulers": counts,
        "exit_codes": codes,
        "timing_s": {"start": start_s, "replay": replay_s, "total": time.monotonic() - started},
        "per_task": [
            {
                "i": o.index,
                "origin": o.origin,
                "ran_on": o.target,
                "steps": o.steps,
                "delay_s": o.delay_s,
                "policy": o.policy,
            }
            for o in outcomes
        ],
    }


def run_real(args: argparse.Namespace) -> dict[str, Any]:
    speed = PROFILES["paper-calibrated"] * args.speedup
    caps = np.full(N_BOXES, speed)
    ckpt = {"lad": warm_checkpoint("lad", caps, args.cache)} if "lad" in args.policies else {}
    cases = []
    for origins in ("one", "uniform") if args.origins == "both" else (args.origins,):
        arrivals, trace = real_trace(args.tasks, origins, args.seed)
        one_box = serial(arrivals.steps, speed)
        rows = []
        for policy in args.policies:
            console.print(f"[dim]origins {origins}, {policy}: {len(trace)} tasks …[/]")
            row = replay_real(policy, trace, speed, args)
            row["twin"] = twin_prediction(policy, arrivals, speed, ckpt, args)
            row["makespan_over_serial"] = row["makespan_s"] / one_box["makespan_s"]
            console.print(
                f"  makespan {row['makespan_s']:.1f} s (twin {row['twin']['makespan_s']:.1f}), "
                f"mean {row['mean_s']:.1f} s, lost {row['lost']}, decided by "
                f"{row['decided_by']}, wall {row['timing_s']['total']:.0f} s"
            )
            rows.append(row)
        cases.append({"origins": origins, "one_box_serial": one_box, "rows": rows})
    return {"speed": speed, "cases": cases}


def report_real(result: dict[str, Any], args: argparse.Namespace) -> None:
    s = args.speedup
    for case in result["cases"]:
        one = case["one_box_serial"]
        grid = Table(
            title=f"Table II, |N| = {args.tasks}, 5 EMULATED agents, origins {case['origins']}, "
            f"{result['speed']:.2f} steps/s each (paper-calibrated x {s:g})"
        )
        for col in ("policy", "makespan s", "x speedup = paper s", "/ serial", "mean delay s",
                    "twin makespan s", "twin / real", "twin mean s", "decided by"):  # fmt: skip
            grid.add_column(col, justify="left" if col in ("policy", "decided by") else "right")
        for r in case["rows"]:
            twin = r["twin"]
            by = ", ".join(f"{k} {v}" for k, v in sorted(r["decided_by"].items()))
            lost = f" (lost {r['lost']})" if r["lost"] else ""
            grid.add_row(
                f"{r['policy']}{lost}", f"{r['makespan_s']:.1f}", f"{r['makespan_s'] * s:.1f}",
                f"{r['makespan_over_serial']:.3f}", f"{r['mean_s']:.1f}",
                f"{twin['makespan_s']:.1f}", f"{twin['makespan_s'] / r['makespan_s']:.2f}",
                f"{twin['mean_s']:.1f}", by,
            )  # fmt: skip
        grid.add_row(
            "one box serial", f"{one['makespan_s']:.1f}", f"{one['makespan_s'] * s:.1f}",
            "1.000", f"{one['mean_s']:.1f}", "", "", "", "computed",
        )  # fmt: skip
        if args.tasks == 100:
            grid.add_row(
                "paper: DEdgeAI", "", f"{PAPER_ROW_S[100]:.1f}",
                f"{PAPER_ROW_S[100] / PAPER_SERIAL_S:.3f}", "", "", "", "",
                f"vs 100 x 18.3 s; {PAPER_ROW_S[100] / STABILITY_ROW_S[100]:.3f} vs "
                f"Stability.AI {STABILITY_ROW_S[100]:.0f} s",
            )  # fmt: skip
        console.print(grid)
    console.print(
        "EMULATED backends (timing only, no model). Makespan: first submit -> last result, "
        "client clock; 'paper s' is makespan x speedup. Twin: the same speeds and arrivals, "
        f"mean of {args.twin_seeds} seeds. The paper's ratio is against its own 1-task time "
        "x 100 (18.3 s, the only serial figure on the same hardware); its 540 s Stability.AI "
        "row is another platform."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--origins", choices=("one", "uniform", "both"), default="one")
    parser.add_argument("--measure-tiny", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/twin_cache"))
    parser.add_argument("--json", type=Path, help="default docs/results/bench_table2_twin.json, "
                        "with --real runs/bench_table2/bench_table2_real.json")  # fmt: skip
    real = parser.add_argument_group("--real: five real agents with EMULATED backends")
    real.add_argument("--real", action="store_true")
    real.add_argument("--speedup", type=float, default=REAL_SPEEDUP,
                      help="x the paper-calibrated per-step speed")  # fmt: skip
    real.add_argument("--tasks", type=int, default=REAL_TASKS)
    real.add_argument("--policies", nargs="+", choices=AGENT_POLICIES, default=list(REAL_POLICIES))
    real.add_argument("--telemetry-s", type=float, default=1.0, help="the agents' gossip interval")
    real.add_argument("--twin-seeds", type=int, default=TWIN_SEEDS)
    real.add_argument("--ready-timeout-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.origins == "both" and not args.real:
        parser.error("--origins both is for --real")
    if args.real and (args.tasks < 1 or args.speedup <= 0):
        parser.error("--tasks must be >= 1 and --speedup > 0")
    import torch

    torch.set_num_threads(1)
    if args.real:
        return main_real(args)
    args.json = args.json or Path("docs/results/bench_table2_twin.json")
    profiles = dict(PROFILES)
    if args.measure_tiny:
        profiles["cpu-tiny (measured here)"] = measure_tiny()
    rows = []
    for profile, speed in profiles.items():
        rows += run(profile, speed, args)
    report(rows, list(profiles))
    console.print(
        "Comparable: the paper-calibrated rows (same task mix, one task = 18.3 s as the "
        "authors' |N| = 1, 5 boxes). Not comparable: device counts and models of the "
        "authors' prototype are unknown (5 identical boxes assumed); the platforms' rows "
        "are their 1-task median x N, not measurements."
    )
    payload = {"model": "cluster twin", "steps_per_s": profiles, "settings": vars(args) | {"cache": str(args.cache), "json": str(args.json)}, "rows": rows}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1) + "\n")
    console.print(f"wrote {args.json}")
    return 0


def main_real(args: argparse.Namespace) -> int:
    import platform

    args.json = args.json or Path("runs/bench_table2/bench_table2_real.json")
    started = time.monotonic()
    result = run_real(args)
    report_real(result, args)
    payload = {
        "model": "EMULATED backends on 5 real agents (timing only)",
        "emulated": True,
        "steps_per_s": result["speed"],
        "speedup_over_paper_calibrated": args.speedup,
        "paper": {
            "makespan_s": PAPER_ROW_S[100],
            "one_box_serial_s": PAPER_SERIAL_S,
            "stability_ai_s": STABILITY_ROW_S[100],
        },
        "settings": vars(args) | {"cache": str(args.cache), "json": str(args.json)},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
        },
        "cases": result["cases"],
        "wall_s": time.monotonic() - started,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    console.print(f"EMULATED figures; wrote {args.json} ({payload['wall_s']:.0f} s wall)")
    lost = sum(r["lost"] for c in result["cases"] for r in c["rows"])
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
