"""Benchmark the scheduling policies on eight local agents with EMULATED backends.

Eight agents on loopback (``dedgeai.agent.lab.harness``), each an EMULATED GPU whose
speed follows the paper's capacity spread (the first eight capacities of its setting,
50 25 18 32 28 21 50 17, times ``--scale`` steps/s per unit). One Poisson arrival trace
per load level (0.6, 0.9, 1.2 of the cluster's total speed; 10-19 steps per task as in
the authors' prototype; Flickr8k prompts; origins uniform over the agents) is replayed
against a fresh cluster for every policy. The service delay is what the client sees:
submit -> done. Then one lad run at load 0.9 in which one agent is killed with SIGKILL
(and restarted) part-way: tasks lost and tasks executed more than once must both be 0.

    python tools/bench_cluster.py [--quick] [--out runs/bench_cluster]

Writes ``<out>/bench_cluster.json`` and ``<out>/bench_cluster.png`` and prints a table.
Every figure is from EMULATED backends (timing only): it measures scheduling, not a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dedgeai.agent.lab.harness import ClusterError, LocalCluster, supports
from dedgeai.agent.lab.load import Arrival, Replayer, poisson_trace, summarise
from dedgeai.scheduler.policy_names import LEARNED, POLICIES
from dedgeai.scheduler.stats import percentile

CAPACITIES = (50, 25, 18, 32, 28, 21, 50, 17)  # the paper's first eight (relative, 10-50)
QUICK_POLICIES = ("lad", "pod2", "greedy", "local")
LOADS = (0.6, 0.9, 1.2)
STEPS = (10, 19)
TARGET_VS_LOCAL = 0.75
TARGET_VS_BEST = 1.0
console = Console(width=None if sys.stdout.isatty() else 132)
log = Console(stderr=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 policies, 1 load")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cluster"))
    parser.add_argument("--duration", type=float, help="seconds of arrivals per trace")
    parser.add_argument("--scale", type=float, default=0.4, help="steps/s per capacity unit")
    parser.add_argument("--policies", nargs="+", choices=POLICIES)
    parser.add_argument("--loads", nargs="+", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-curve", action="store_true", help="plain TCP between agents")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 run")
    parser.add_argument("--kill-policy", default="lad", choices=POLICIES)
    parser.add_argument("--restart-after", type=float, default=5.0, help="s before restarting")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="replays of each trace per policy (fresh clusters, policies interleaved); "
        "figures pool every replay's tasks",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.duration = args.duration or (8.0 if args.quick else 13.0)
    args.policies = tuple(args.policies or (QUICK_POLICIES if args.quick else POLICIES))
    args.loads = tuple(args.loads or ((0.9,) if args.quick else LOADS))
    return args


def speeds(scale: float) -> list[float]:
    return [c * scale for c in CAPACITIES]


def trace_for(load: float, args: argparse.Namespace, offset: int) -> list[Arrival]:
    mean_steps = (STEPS[0] + STEPS[1]) / 2
    rate = load * sum(speeds(args.scale)) / mean_steps  # tasks/s at 512x512
    n_tasks = max(8, round(rate * args.duration))
    return poisson_trace(n_tasks, rate, len(CAPACITIES), args.seed + offset, STEPS, (512, 512))


def make_cluster(policy: str, args: argparse.Namespace) -> LocalCluster:
    common: dict[str, Any] = {
        "model": "emulated",
        "max_queue": 100_000,
        "profile_sizes": ["512x512"],
        "log_level": "warning",
        "telemetry_interval_s": 1.0,
    }
    if supports("policy"):
        common["policy"] = policy
    per_agent = [{"emulated_steps_per_second": s} for s in speeds(args.scale)]
    return LocalCluster(per_agent, common, curve=not args.no_curve)


def executions(cluster: LocalCluster) -> dict[str, list[str]]:
    """Task id -> the agents whose journal says the task ran to completion there."""
    where: dict[str, list[str]] = {}
    for agent in cluster.agents:
        if not agent.alive():
            continue
        with cluster.client(agent.index, timeout_s=10.0) as client:
            rows = client.tasks(limit=1000, state="done")
        for row in rows:
            ran_on = row.get("ran_on") or {}
            here = ran_on.get("node") == agent.node if ran_on else int(row.get("attempts") or 0)
            if here:
                where.setdefault(row["task"], []).append(agent.name)
    return where


def scheduler_status(cluster: LocalCluster) -> list[Any]:
    """Whatever each agent reports about its scheduler (decision times, training steps)."""
    found = []
    for agent in cluster.agents:
        if not agent.alive():
            continue
        with cluster.client(agent.index, timeout_s=10.0) as client:
            body = client.status()
        found.append({k: body[k] for k in ("scheduler", "cluster") if k in body} or None)
    return found


def forwarding_totals(status: list[Any]) -> dict[str, int]:
    """Forwarded, re-dispatched (reclaimed) and dropped-duplicate counts over all agents."""
    totals = {"forwarded": 0, "reclaimed": 0, "dropped_duplicates": 0}
    for entry in status:
        forwarding = ((entry or {}).get("cluster") or {}).get("forwarding") or {}
        for key in totals:
            totals[key] += int(forwarding.get(key) or 0)
    return totals


def replay(
    policy: str, load: float, trace: list[Arrival], args: argparse.Namespace, kill: bool = False
) -> dict[str, Any]:
    """One fresh cluster, one trace; the summary (and the kill run's counts)."""
    started = time.monotonic()
    cluster = make_cluster(policy, args)
    timing: dict[str, float] = {}
    restart_errors: list[str] = []

    def restart() -> None:
        try:
            cluster.restart(0)
        except ClusterError as exc:
            restart_errors.append(str(exc))

    try:
        cluster.start()
        if cluster.peers_supported:
            cluster.wait_peers_up(timeout_s=120.0)
        timing["start_s"] = time.monotonic() - started
        hooks = []
        if kill:
            at = trace[-1].at_s * 0.4
            hooks = [(at, lambda: cluster.agents[0].kill())]
            thread = threading.Thread(target=restart, daemon=True)  # not in the submit loop
            hooks.append((at + args.restart_after, thread.start))
        replayer = Replayer(cluster, trace, deadline_s=max(90.0, 4 * args.duration))
        outcomes = replayer.run(hooks)
        timing["replay_s"] = time.monotonic() - started - timing["start_s"]
        stats = summarise(outcomes)
        result: dict[str, Any] = {"policy": policy, "load": load, **stats.as_dict()}
        result["ran_on"] = {a.name: stats.ran_on.get(a.name, 0) for a in cluster.agents}
        result["unknown_target"] = stats.ran_on.get("?", 0)
        result["scheduler"] = scheduler_status(cluster)
        result["tasks"] = [
            {
                "index": o.index,
                "origin": o.origin,
                "ran_on": o.target,
                "steps": o.steps,
                "delay_s": o.delay_s,
                "policy": o.policy,
                "reason": o.reason,
                "decision_us": (o.done_fields.get("placement") or {}).get("decision_us"),
            }
            for o in outcomes
        ]
        if kill:
            counts = executions(cluster)
            ids = [o.task for o in outcomes]
            result["killed"] = cluster.agents[0].name
            result["killed_at_s"] = trace[-1].at_s * 0.4
            result["restarted_after_s"] = args.restart_after
            result["tasks_lost"] = stats.lost + stats.failed
            result["tasks_done_more_than_once"] = sum(len(counts.get(i, [])) > 1 for i in ids)
            result["tasks_without_execution_record"] = sum(not counts.get(i) for i in ids)
            result["executed_more_than_once"] = {
                i: counts[i] for i in ids if len(counts.get(i, [])) > 1
            }
            result["lost_tasks"] = [o.task for o in outcomes if o.state != "done"]
            result["lost_errors"] = sorted({o.error or "" for o in outcomes if o.state != "done"})
            result["restart_errors"] = restart_errors
            result["forwarding"] = forwarding_totals(result["scheduler"])
            if result["tasks_lost"] or result["tasks_done_more_than_once"] or restart_errors:
                cluster.keep = True  # the agents' logs say what happened
                result["kept_logs"] = str(cluster.root)
    finally:
        stopping = time.monotonic()
        codes = cluster.close()
    result["exit_codes"] = codes
    result["timing"] = {**timing, "stop_s": time.monotonic() - stopping}
    # Every decision of the run, pooled over the agents (each task's placement carries its
    # own); with ~13 decisions per agent, one agent's "p99" would be its slowest decision.
    result["decision_us"] = decision_summary(result["tasks"])
    result["decision_p99_us"] = (result["decision_us"] or {}).get("p99")
    result["decision_p99_slowest_agent_us"] = max(
        (
            s["cluster"]["decisions"].get("p99_us", 0.0)
            for s in result["scheduler"]
            if s and s.get("cluster")
        ),
        default=None,
    )
    result["wall_s"] = time.monotonic() - started
    return result


def decision_summary(tasks: list[dict[str, Any]]) -> dict[str, float] | None:
    """Every decision's time (µs, from each task's placement): count, p50, p99, max."""
    decided = [float(t["decision_us"]) for t in tasks if t.get("decision_us") is not None]
    if not decided:
        return None
    return {
        "count": len(decided),
        "p50": percentile(decided, 50),
        "p99": percentile(decided, 99),
        "max": max(decided),
    }


def pooled(replays: list[dict[str, Any]]) -> dict[str, Any]:
    """One policy and load over its replays: every replay's tasks together.

    Mean and p95 delay over all tasks done, decision times over all decisions; each replay's
    own mean is kept in ``replay_means_s``. One replay is returned as it is.
    """
    if len(replays) == 1:
        return {**replays[0], "replays": 1, "replay_means_s": [replays[0]["mean_s"]]}
    tasks = [dict(t, replay=k) for k, r in enumerate(replays) for t in r["tasks"]]
    delays = [t["delay_s"] for t in tasks if t["delay_s"] is not None]
    first = replays[0]
    out = {
        **first,  # policy, load, the first replay's scheduler status
        "replays": len(replays),
        "replay_means_s": [r["mean_s"] for r in replays],
        "tasks": tasks,
        "ran_on": {a: sum(r["ran_on"].get(a, 0) for r in replays) for a in first["ran_on"]},
        "timing": [r["timing"] for r in replays],
        "exit_codes": [r["exit_codes"] for r in replays],
        "wall_s": sum(r["wall_s"] for r in replays),
    }
    for key in ("count", "done", "lost", "failed", "unknown_target"):
        out[key] = sum(int(r.get(key) or 0) for r in replays)
    out["mean_s"] = statistics.fmean(delays) if delays else math.nan
    out["p95_s"] = percentile(delays, 95)
    out["decision_us"] = decision_summary(tasks)
    out["decision_p99_us"] = (out["decision_us"] or {}).get("p99")
    slowest = [r["decision_p99_slowest_agent_us"] for r in replays]
    out["decision_p99_slowest_agent_us"] = max((v for v in slowest if v is not None), default=None)
    return out


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per load: LAD/local and LAD/best heuristic mean delays, with the targets."""
    out: dict[str, dict[str, Any]] = {}
    for load in sorted({r["load"] for r in results}):
        by = {r["policy"]: r["mean_s"] for r in results if r["load"] == load}
        heuristics = {p: v for p, v in by.items() if p not in LEARNED and not math.isnan(v)}
        entry: dict[str, Any] = {}
        if "lad" in by and "local" in by:
            entry["lad_over_local"] = by["lad"] / by["local"]
            entry["meets_local_target"] = entry["lad_over_local"] <= TARGET_VS_LOCAL
        if "lad" in by and heuristics:
            best = min(heuristics, key=heuristics.__getitem__)
            entry["best_heuristic"] = best
            entry["lad_over_best"] = by["lad"] / heuristics[best]
            entry["meets_best_target"] = entry["lad_over_best"] <= TARGET_VS_BEST
        out[f"{load:g}"] = entry
    return out


def print_tables(results: list[dict[str, Any]], kill: dict[str, Any] | None, scale: float) -> None:
    table = Table(title="bench_cluster (EMULATED backends, 8 agents on loopback)")
    columns = ("load", "policy", "tasks", "lost", "mean delay", "p95 delay", "decide p99", "ran on")
    for name in columns:
        table.add_column(name, justify="left" if name in ("policy", "ran on") else "right")
    for r in sorted(results, key=lambda r: (r["load"], POLICIES.index(r["policy"]))):
        where = " ".join(f"{v}" for v in r["ran_on"].values())
        if r.get("unknown_target"):
            where += f" ?{r['unknown_target']}"
        table.add_row(
            f"{r['load']:g}",
            r["policy"],
            str(r["count"]),
            str(r["lost"] + r["failed"]),
            f"{r['mean_s']:.2f} s",
            f"{r['p95_s']:.2f} s",
            "-" if r["decision_p99_us"] is None else f"{r['decision_p99_us'] / 1000:.2f} ms",
            where,
        )
    console.print(table)
    console.print(
        "ran on: tasks per agent, agent-0 .. agent-7 at "
        + " ".join(f"{v:g}" for v in speeds(scale))
        + " steps/s; decide p99: every scheduling decision of the run(s), pooled over the"
        + " agents (state + policy, in the agent)"
    )
    for load, entry in ratios(results).items():
        parts = [f"load {load}:"]
        if "lad_over_local" in entry:
            ok = "ok" if entry["meets_local_target"] else "MISSED"
            parts.append(f"LAD/local {entry['lad_over_local']:.2f} (≤ {TARGET_VS_LOCAL}: {ok})")
        if "lad_over_best" in entry:
            ok = "ok" if entry["meets_best_target"] else "MISSED"
            parts.append(
                f"LAD/best heuristic ({entry['best_heuristic']}) {entry['lad_over_best']:.2f} "
                f"(≤ {TARGET_VS_BEST}: {ok})"
            )
        console.print(" ".join(parts))
    if kill is not None:
        console.print(
            f"kill -9 of {kill['killed']} at {kill['killed_at_s']:.1f} s ({kill['policy']}, load "
            f"{kill['load']:g}, restarted after {kill['restarted_after_s']:g} s): "
            f"{kill['count']} tasks, lost {kill['tasks_lost']}, done more than once "
            f"{kill['tasks_done_more_than_once']}, mean delay {kill['mean_s']:.2f} s; "
            f"forwarded {kill['forwarding']['forwarded']}, re-dispatched "
            f"{kill['forwarding']['reclaimed']}, duplicate results dropped "
            f"{kill['forwarding']['dropped_duplicates']}"
        )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = sorted({r["load"] for r in results})
    policies = [p for p in POLICIES if any(r["policy"] == p for r in results)]
    width = 0.8 / max(1, len(policies))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k, policy in enumerate(policies):
        rows = {r["load"]: r for r in results if r["policy"] == policy}
        xs = [i + (k - (len(policies) - 1) / 2) * width for i in range(len(loads))]
        means = [rows[ld]["mean_s"] if ld in rows else math.nan for ld in loads]
        p95 = [rows[ld]["p95_s"] if ld in rows else math.nan for ld in loads]
        ax.bar(xs, means, width, label=policy)
        ax.scatter(xs, p95, marker="_", color="black", s=60, zorder=3)
    ax.set_xticks(range(len(loads)), [f"load {ld:g}" for ld in loads])
    ax.set_ylabel("service delay, s (bar: mean, dash: p95)")
    ax.set_title("8 EMULATED agents on loopback: client-side service delay by policy")
    ax.legend(ncols=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not supports("peers", "policy"):
        log.print("[yellow]warning:[/] this agent has no peers/policy keys: every run is local")
    results: list[dict[str, Any]] = []
    kill_result: dict[str, Any] | None = None
    started = time.monotonic()
    traces = {load: trace_for(load, args, k) for k, load in enumerate(args.loads)}
    for load in args.loads:
        runs: dict[str, list[dict[str, Any]]] = {policy: [] for policy in args.policies}
        for repeat in range(args.repeats):  # interleaved: drift of the machine hits every policy
            for policy in args.policies:
                trace = traces[load]
                log.print(
                    f"load {load:g}, {policy} (replay {repeat + 1}/{args.repeats}): "
                    f"{len(trace)} tasks over {trace[-1].at_s:.0f} s"
                )
                result = replay(policy, load, trace, args)
                t = result["timing"]
                log.print(
                    f"  mean {result['mean_s']:.2f} s, p95 {result['p95_s']:.2f} s, "
                    f"lost {result['lost'] + result['failed']} (start {t['start_s']:.0f} s, "
                    f"replay {t['replay_s']:.0f} s, stop {t['stop_s']:.0f} s)"
                )
                runs[policy].append(result)
        results += [pooled(replays) for replays in runs.values()]
    if not args.no_kill:
        trace = traces.get(0.9) or trace_for(0.9, args, len(args.loads))
        log.print(f"kill run: load 0.9, {args.kill_policy}, {len(trace)} tasks")
        kill_result = replay(args.kill_policy, 0.9, trace, args, kill=True)
    report = {
        "emulated": True,
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
        },
        "settings": {
            "capacities": CAPACITIES,
            "steps_per_second": speeds(args.scale),
            "steps": STEPS,
            "size": "512x512",
            "duration_s": args.duration,
            "seed": args.seed,
            "quick": args.quick,
            "forwarding": supports("peers", "policy"),
            "curve": not args.no_curve,
            "repeats": args.repeats,
        },
        "results": results,
        "ratios": ratios(results),
        "kill": kill_result,
        "wall_s": time.monotonic() - started,
    }
    (args.out / "bench_cluster.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    plot(results, args.out / "bench_cluster.png")
    print_tables(results, kill_result, args.scale)
    console.print(f"EMULATED figures; wrote {args.out}/bench_cluster.json and .png")
    failed = kill_result is not None and (
        kill_result["tasks_lost"] or kill_result["tasks_done_more_than_once"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
