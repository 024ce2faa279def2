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
    nice python tools/bench_cluster.py --tasks 300 --repeats 2 --loads 0.6 0.9 \
        --policies pod2 greedy lad local --lad-actor scorer --learn-warmup 16 --no-kill

``--tasks`` sets a trace's length by task count instead of ``--duration``; ``--lad-actor``
(one or both of ladn, scorer: a cell each, ``lad`` and ``lad-scorer``), ``--policy-checkpoint``
and the ``--learn*`` options go to the agents' config for the learned policies. Per cell the
JSON has the delay figures (mean, p50, p95, p99, and the mean of the first and last third of
the trace by submit order), the learned policies' online-learning counters summed over the
agents, and the twin's omniscient central scheduler on the same trace (``scheduler/twin.py``,
the replay of ``tools/bench_twin.py --part replay``) with each policy's ratio to it.

Writes ``<out>/bench_cluster.json`` (or ``--json``) and ``<out>/bench_cluster.png`` and prints
a table. Every figure is from EMULATED backends (timing only): it measures scheduling, not a GPU.
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
INFORMED = "pod2-soft"  # pod2 whose probes are drawn from soft-greedy's π on gossip
LAD_PROBES = "pod2-lad"  # lad (scorer, lad_mode = probe): LAD-TS draws pod2's probes
LAD_PROBES_ACTOR = "scorer+probe"  # the cell's actor: lad_actor = scorer, lad_mode = probe
QUICK_POLICIES = ("lad", "pod2", "greedy", "local")
LOADS = (0.6, 0.9, 1.2)
STEPS = (10, 19)
TARGET_VS_LOCAL = 0.75
TARGET_VS_BEST = 1.0
TARGET_VS_OMNISCIENT = 1.20  # issue 12, done-when "Real agents"
LAD_ACTORS = ("ladn", "scorer")
LEARNING_COUNTERS = ("trained_steps", "rewards", "fallback_decisions", "guard_decisions")
console = Console(width=None if sys.stdout.isatty() else 132)
log = Console(stderr=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 policies, 1 load")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cluster"))
    parser.add_argument("--duration", type=float, help="seconds of arrivals per trace")
    parser.add_argument("--tasks", type=int, help="tasks per trace (instead of --duration)")
    parser.add_argument("--scale", type=float, default=0.4, help="steps/s per capacity unit")
    parser.add_argument(
        "--policies",
        nargs="+",
        choices=(*POLICIES, INFORMED, LAD_PROBES),
        help=f"pod2: uniform probes; {INFORMED}: pod2 with probe_targets = soft-greedy "
        f"(informed probes); {LAD_PROBES}: lad with lad_actor = scorer and lad_mode = probe "
        "(LAD-TS draws the probes)",
    )
    parser.add_argument(
        "--lad-actor",
        nargs="+",
        choices=LAD_ACTORS,
        help="the agents' lad_actor for policy lad; two: a cell each (lad, lad-scorer)",
    )
    parser.add_argument(
        "--policy-checkpoint",
        action="append",
        default=[],
        metavar="[ACTOR=]PATH",
        help="the agents' policy_checkpoint for lad (ACTOR: ladn or scorer; none: every "
        "learned cell); repeatable",
    )
    parser.add_argument(
        "--learn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the agents' online learning for learned policies (default: the agent's)",
    )
    parser.add_argument("--learn-warmup", type=int, help="the agents' learn_warmup")
    parser.add_argument("--train-steps-per-s", type=float, help="the agents' train_steps_per_s")
    parser.add_argument(
        "--omniscient-seeds",
        type=int,
        default=2,
        help="twin runs of the omniscient scheduler per trace (0: skip)",
    )
    parser.add_argument("--json", type=Path, help="default: <out>/bench_cluster.json")
    parser.add_argument("--loads", nargs="+", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-curve", action="store_true", help="plain TCP between agents")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 run")
    parser.add_argument("--kill-policy", default="lad", choices=POLICIES)
    parser.add_argument("--restart-after", type=float, default=5.0, help="s before restarting")
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="replays of the trace on the same running cluster, one after the other (each "
        "starts once the last is done, from empty queues); a learning policy keeps what it "
        "learned, so last pass / first pass isolates learning from the trace's shape",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="replays of each trace per policy (fresh clusters, policies interleaved); "
        "figures pool every replay's tasks",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.passes < 1:
        parser.error("--repeats and --passes must be at least 1")
    if args.tasks is not None and args.tasks < 1:
        parser.error("--tasks must be at least 1")
    args.checkpoints = {}
    for text in args.policy_checkpoint:
        actor, _, path = text.rpartition("=") if "=" in text else ("", "", text)
        if actor and actor not in LAD_ACTORS:
            parser.error(f"--policy-checkpoint: {actor!r} is not one of {', '.join(LAD_ACTORS)}")
        if not Path(path).is_file():
            parser.error(f"--policy-checkpoint {path} does not exist")
        args.checkpoints[actor or "*"] = str(Path(path).resolve())
    args.lad_actor = tuple(dict.fromkeys(args.lad_actor or ()))  # () leaves the agent's default
    args.duration = args.duration or (8.0 if args.quick else 13.0)
    args.policies = tuple(args.policies or (QUICK_POLICIES if args.quick else POLICIES))
    args.loads = tuple(args.loads or ((0.9,) if args.quick else LOADS))
    args.json = args.json or args.out / "bench_cluster.json"
    return args


def cells_of(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """(label, daemon policy, lad actor) per cell: lad once per ``--lad-actor``.

    The labels are the twin's names (``lad`` is the paper's actor, ``lad-scorer`` the
    per-server one) so ``tools/bench_twin.py --part replay`` can replay each cell."""
    out: list[tuple[str, str, str | None]] = []
    for policy in args.policies:
        if policy == "lad" and args.lad_actor:
            out += [("lad" if a == "ladn" else "lad-scorer", "lad", a) for a in args.lad_actor]
        elif policy == INFORMED:  # the twin's name; the daemon's pod2 with informed probes
            out.append((INFORMED, "pod2", "soft-greedy"))
        elif policy == LAD_PROBES:  # the twin's name; the daemon's lad in probe mode
            out.append((LAD_PROBES, "lad", LAD_PROBES_ACTOR))
        else:
            out.append((policy, policy, None))
    return out


def order_of(label: str) -> tuple[int, str]:
    """Table order: the daemon's policy order, lad variants together."""
    base = "lad" if is_lad(label) else label
    return (POLICIES.index(base) if base in POLICIES else len(POLICIES), label)


def speeds(scale: float) -> list[float]:
    return [c * scale for c in CAPACITIES]


def trace_for(load: float, args: argparse.Namespace, offset: int) -> list[Arrival]:
    mean_steps = (STEPS[0] + STEPS[1]) / 2
    rate = load * sum(speeds(args.scale)) / mean_steps  # tasks/s at 512x512
    n_tasks = args.tasks or max(8, round(rate * args.duration))
    return poisson_trace(n_tasks, rate, len(CAPACITIES), args.seed + offset, STEPS, (512, 512))


def learned_config(policy: str, actor: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """The agents' config keys for a learned policy from the options (those the agent has)."""
    if policy not in LEARNED:
        return {}
    probe_mode = actor == LAD_PROBES_ACTOR
    actor = "scorer" if probe_mode else actor
    wanted: dict[str, Any] = {
        "lad_actor": actor if policy == "lad" else None,
        "lad_mode": "probe" if probe_mode else None,
        "policy_checkpoint": args.checkpoints.get(
            (actor or "ladn") if policy == "lad" else "*", args.checkpoints.get("*")
        ),
        "learn": args.learn,
        "learn_warmup": args.learn_warmup,
        "train_steps_per_s": args.train_steps_per_s,
    }
    found = {k: v for k, v in wanted.items() if v is not None}
    missing = [k for k in found if not supports(k)]
    if missing:
        raise SystemExit(f"this agent has no config key(s) {', '.join(missing)}")
    return found


def make_cluster(policy: str, args: argparse.Namespace, actor: str | None = None) -> LocalCluster:
    per_agent = [{"emulated_steps_per_second": s} for s in speeds(args.scale)]
    return LocalCluster(per_agent, common_config(policy, args, actor), curve=not args.no_curve)


def common_config(policy: str, args: argparse.Namespace, actor: str | None) -> dict[str, Any]:
    """The config keys every agent of a cell gets."""
    common: dict[str, Any] = {
        "model": "emulated",
        "max_queue": 100_000,
        "profile_sizes": ["512x512"],
        "log_level": "warning",
        "telemetry_interval_s": 1.0,
    }
    if supports("policy"):
        common["policy"] = policy
    common.update(learned_config(policy, actor, args))
    if policy == "pod2" and supports("probe_targets"):  # pod2: uniform, as the twin's pod2
        common["probe_targets"] = actor or "uniform"
    return common


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


def learning_totals(status: list[Any]) -> dict[str, Any] | None:
    """A learned policy's online-learning counters summed over the agents (None: heuristic).

    From each agent's ``cluster.scheduler`` status: training steps, rewards, decisions taken
    by the greedy fallback (training held the lock) and by the guard's greedy arm, the guard's
    swaps and how many agents end in each guard state, and which actor learned."""
    hosts = [((s or {}).get("cluster") or {}).get("scheduler") or {} for s in status]
    hosts = [h for h in hosts if h.get("policy") in LEARNED]
    if not hosts:
        return None
    out: dict[str, Any] = {k: sum(int(h.get(k) or 0) for h in hosts) for k in LEARNING_COUNTERS}
    guards = [h["guard"] for h in hosts if h.get("guard")]
    out["guard_swaps"] = sum(int(g.get("swaps") or 0) for g in guards)
    states: dict[str, int] = {}
    for g in guards:
        states[str(g.get("state"))] = states.get(str(g.get("state")), 0) + 1
    out["guard_states"] = dict(sorted(states.items()))
    out["agents"] = len(hosts)
    out["agents_learning"] = sum(bool(h.get("learn")) for h in hosts)
    out["actors"] = sorted({str(h.get("actor")) for h in hosts})
    out["loaded_from"] = sorted({str(h.get("loaded_from")) for h in hosts})
    out["states"] = sorted({str(h.get("state")) for h in hosts})
    return out


def sum_learning(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """``learning_totals`` of several replays added up (lists and sets merged)."""
    found = [p for p in parts if p]
    if not found:
        return None
    out: dict[str, Any] = {}
    for key in (*LEARNING_COUNTERS, "guard_swaps", "agents", "agents_learning"):
        out[key] = sum(int(p.get(key) or 0) for p in found)
    states: dict[str, int] = {}
    for p in found:
        for state, n in p.get("guard_states", {}).items():
            states[state] = states.get(state, 0) + n
    out["guard_states"] = dict(sorted(states.items()))
    for key in ("actors", "loaded_from", "states"):
        out[key] = sorted({v for p in found for v in p.get(key, [])})
    return out


def delay_figures(tasks: list[dict[str, Any]], n_tasks: int) -> dict[str, Any]:
    """Mean, p50/p95/p99 of the tasks done, and the mean of the trace's first and last third
    by submit order (``index``; replays pooled by index) with last / first."""
    delays = [t["delay_s"] for t in tasks if t.get("delay_s") is not None]
    third = n_tasks / 3
    first = [t["delay_s"] for t in tasks if t.get("delay_s") is not None and t["index"] < third]
    last = [t["delay_s"] for t in tasks if t.get("delay_s") is not None and t["index"] >= 2 * third]
    out: dict[str, Any] = {
        "mean_s": statistics.fmean(delays) if delays else math.nan,
        "p50_s": percentile(delays, 50) if delays else math.nan,
        "p95_s": percentile(delays, 95) if delays else math.nan,
        "p99_s": percentile(delays, 99) if delays else math.nan,
        "first_third_mean_s": statistics.fmean(first) if first else math.nan,
        "last_third_mean_s": statistics.fmean(last) if last else math.nan,
    }
    out["last_over_first_third"] = out["last_third_mean_s"] / out["first_third_mean_s"]
    return out


def pass_figures(tasks: list[dict[str, Any]], n_tasks: int) -> dict[str, Any]:
    """Per pass of the trace (``--passes``): the delay figures of its tasks, and the last
    pass's mean over the first's (the same arrivals from empty queues: only what the agents
    learned in between differs, and the machine's noise, which a heuristic's ratio shows)."""
    passes = sorted({t.get("pass", 0) for t in tasks})
    if len(passes) < 2:
        return {}
    figures = [delay_figures([t for t in tasks if t.get("pass", 0) == k], n_tasks) for k in passes]
    keep = ("mean_s", "p95_s", "first_third_mean_s", "last_third_mean_s")
    return {
        "passes": [{key: f[key] for key in keep} for f in figures],
        "last_over_first_pass": figures[-1]["mean_s"] / figures[0]["mean_s"],
    }


def twin_omniscient(trace: list[Arrival], args: argparse.Namespace) -> dict[str, Any] | None:
    """The twin's omniscient central scheduler on this trace: mean (and p99) delay over
    ``--omniscient-seeds`` seeds, set up as ``tools/bench_twin.py --part replay`` does
    (the agents' speeds, 0.1 ms links, no warm-up cut). A model, not a measurement."""
    if args.omniscient_seeds < 1:
        return None
    import numpy as np

    from dedgeai.scheduler.twin import Twin
    from dedgeai.scheduler.twin_policies import make_policy
    from dedgeai.scheduler.twin_scenarios import (
        REQUEST_OVERHEAD_BYTES,
        Arrivals,
        bench_cluster,
    )

    rates = np.asarray(speeds(args.scale), dtype=np.float64)
    sc = bench_cluster(n_tasks=1).with_(capacities=rates, steps=STEPS, warmup_fraction=0.0)
    arr = Arrivals(
        np.array([a.at_s for a in trace]),
        np.array([a.origin for a in trace], dtype=np.int64),
        np.array([a.steps for a in trace], dtype=np.int64),
        np.array([(len(a.prompt) + REQUEST_OVERHEAD_BYTES) * 8 / 1e6 for a in trace]),
    )
    runs = [
        Twin(sc, make_policy("omniscient", seed=s), s, trace=arr).run()
        for s in range(args.omniscient_seeds)
    ]
    return {
        "mean_s": statistics.fmean(r.mean_s for r in runs),
        "p99_s": statistics.fmean(r.percentile_s(99) for r in runs),
        "seeds": args.omniscient_seeds,
        "model": "cluster twin (scheduler/twin.py), omniscient central earliest finish",
    }


def replay(
    policy: str,
    load: float,
    trace: list[Arrival],
    args: argparse.Namespace,
    kill: bool = False,
    label: str | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """One fresh cluster, one trace; the summary (and the kill run's counts)."""
    started = time.monotonic()
    cluster = make_cluster(policy, args, actor)
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
        outcomes = []
        for k in range(args.passes):  # the same agents (and what they learned) every pass
            replayer = Replayer(cluster, trace, deadline_s=max(90.0, 4 * args.duration))
            outcomes.append(replayer.run(hooks if k == 0 else ()))
        timing["replay_s"] = time.monotonic() - started - timing["start_s"]
        stats = summarise([o for got in outcomes for o in got])
        result: dict[str, Any] = {"policy": label or policy, "load": load, **stats.as_dict()}
        if label and label != policy:
            result["daemon_policy"] = policy
        if actor:
            result["lad_actor"] = actor
        result["ran_on"] = {a.name: stats.ran_on.get(a.name, 0) for a in cluster.agents}
        result["unknown_target"] = stats.ran_on.get("?", 0)
        result["scheduler"] = scheduler_status(cluster)
        result["learning"] = learning_totals(result["scheduler"])
        result["tasks"] = [
            {
                "pass": k,
                "index": o.index,
                "origin": o.origin,
                "ran_on": o.target,
                "steps": o.steps,
                "delay_s": o.delay_s,
                "policy": o.policy,
                "reason": o.reason,
                "decision_us": (o.done_fields.get("placement") or {}).get("decision_us"),
            }
            for k, got in enumerate(outcomes)
            for o in got
        ]
        if kill:
            counts = executions(cluster)
            ids = [o.task for got in outcomes for o in got]
            result["killed"] = cluster.agents[0].name
            result["killed_at_s"] = trace[-1].at_s * 0.4
            result["restarted_after_s"] = args.restart_after
            result["tasks_lost"] = stats.lost + stats.failed
            result["tasks_done_more_than_once"] = sum(len(counts.get(i, [])) > 1 for i in ids)
            result["tasks_without_execution_record"] = sum(not counts.get(i) for i in ids)
            result["executed_more_than_once"] = {
                i: counts[i] for i in ids if len(counts.get(i, [])) > 1
            }
            lost = [o for got in outcomes for o in got if o.state != "done"]
            result["lost_tasks"] = [o.task for o in lost]
            result["lost_errors"] = sorted({o.error or "" for o in lost})
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
    result.update(delay_figures(result["tasks"], len(trace)))
    result.update(pass_figures(result["tasks"], len(trace)))
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
        return {
            **replays[0],
            "replays": 1,
            "replay_means_s": [replays[0]["mean_s"]],
            "replay_learning": [replays[0].get("learning")],
            "replay_last_over_first_third": [replays[0].get("last_over_first_third")],
        }
    tasks = [dict(t, replay=k) for k, r in enumerate(replays) for t in r["tasks"]]
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
    n_trace = max(t["index"] for t in tasks) + 1 if tasks else 0
    out.update(delay_figures(tasks, n_trace))
    out.update(pass_figures(tasks, n_trace))
    out["replay_last_over_first_third"] = [r.get("last_over_first_third") for r in replays]
    out["replay_learning"] = [r.get("learning") for r in replays]
    out["learning"] = sum_learning(out["replay_learning"])
    out["decision_us"] = decision_summary(tasks)
    out["decision_p99_us"] = (out["decision_us"] or {}).get("p99")
    slowest = [r["decision_p99_slowest_agent_us"] for r in replays]
    out["decision_p99_slowest_agent_us"] = max((v for v in slowest if v is not None), default=None)
    return out


def is_learned(label: str) -> bool:
    return label == LAD_PROBES or label.split("-")[0] in LEARNED


def is_lad(label: str) -> bool:
    """A LAD-TS cell: ``lad``, ``lad-scorer`` or ``pod2-lad`` (LAD-TS drawing the probes)."""
    return label.startswith("lad") or label == LAD_PROBES


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per load: each lad cell's mean delay over local's, over the best heuristic's (not
    local) and over the twin's omniscient on the same trace, with the targets.

    ``lad`` (the paper's actor) keeps the historical keys ``lad_over_local`` ...; another lad
    cell's keys carry its label (``lad-scorer_over_best``)."""
    out: dict[str, dict[str, Any]] = {}
    for load in sorted({r["load"] for r in results}):
        rows = [r for r in results if r["load"] == load]
        by = {r["policy"]: r["mean_s"] for r in rows}
        heuristics = {
            p: v for p, v in by.items() if not is_learned(p) and p != "local" and not math.isnan(v)
        }
        entry: dict[str, Any] = {}
        if heuristics:
            entry["best_heuristic"] = min(heuristics, key=heuristics.__getitem__)
        omniscient = next((r["twin_omniscient"] for r in rows if r.get("twin_omniscient")), None)
        if omniscient:
            entry["twin_omniscient_mean_s"] = omniscient["mean_s"]
        for label in sorted((p for p in by if is_lad(p)), key=order_of):
            if "local" in by:
                entry[f"{label}_over_local"] = by[label] / by["local"]
                entry[f"{label}_meets_local_target"] = (
                    entry[f"{label}_over_local"] <= TARGET_VS_LOCAL
                )
            if heuristics:
                entry[f"{label}_over_best"] = by[label] / heuristics[entry["best_heuristic"]]
                entry[f"{label}_meets_best_target"] = entry[f"{label}_over_best"] <= TARGET_VS_BEST
            if omniscient:
                entry[f"{label}_over_omniscient"] = by[label] / omniscient["mean_s"]
                entry[f"{label}_meets_omniscient_target"] = (
                    entry[f"{label}_over_omniscient"] <= TARGET_VS_OMNISCIENT
                )
        if "lad" in by:  # the names earlier JSON files used
            for key in ("local", "best"):
                if f"lad_meets_{key}_target" in entry:
                    entry[f"meets_{key}_target"] = entry[f"lad_meets_{key}_target"]
        out[f"{load:g}"] = entry
    return out


def print_tables(results: list[dict[str, Any]], kill: dict[str, Any] | None, scale: float) -> None:
    table = Table(title="bench_cluster (EMULATED backends, 8 agents on loopback)")
    columns = (
        "load",
        "policy",
        "tasks",
        "lost",
        "mean delay",
        "p95 delay",
        "p99 delay",
        "/ omni",
        "last/first ⅓",
        "last/first pass",
        "decide p99",
        "learning",
        "ran on",
    )
    for name in columns:
        table.add_column(name, justify="left" if name in ("policy", "ran on") else "right")
    for r in sorted(results, key=lambda r: (r["load"], order_of(r["policy"]))):
        where = " ".join(f"{v}" for v in r["ran_on"].values())
        if r.get("unknown_target"):
            where += f" ?{r['unknown_target']}"
        omni = r.get("twin_omniscient")
        learning = r.get("learning")
        table.add_row(
            f"{r['load']:g}",
            r["policy"],
            str(r["count"]),
            str(r["lost"] + r["failed"]),
            f"{r['mean_s']:.2f} s",
            f"{r['p95_s']:.2f} s",
            f"{r.get('p99_s', math.nan):.2f} s",
            "-" if not omni else f"{r['mean_s'] / omni['mean_s']:.2f}",
            f"{r.get('last_over_first_third', math.nan):.2f}",
            f"{r['last_over_first_pass']:.2f}" if "last_over_first_pass" in r else "-",
            "-" if r["decision_p99_us"] is None else f"{r['decision_p99_us'] / 1000:.2f} ms",
            "-" if not learning else learning_text(learning),
            where,
        )
    console.print(table)
    console.print(
        "ran on: tasks per agent, agent-0 .. agent-7 at "
        + " ".join(f"{v:g}" for v in speeds(scale))
        + " steps/s; decide p99: every scheduling decision of the run(s), pooled over the"
        + " agents (state + policy, in the agent)"
    )
    console.print(
        "/ omni: mean delay over the twin's omniscient central scheduler on the same trace (a "
        "model); last/first ⅓: mean delay of the trace's last third of tasks (submit order) "
        "over its first third's; last/first pass: the last replay of the trace on the same "
        "agents over the first (--passes); learning: online training steps, rewards and guard swaps, "
        "summed over agents and replays"
    )
    for load, entry in ratios(results).items():
        labels = sorted({k.split("_over_")[0] for k in entry if "_over_" in k}, key=order_of)
        for label in labels:
            parts = [f"load {load}, {label}:"]
            for key, name, target in (
                ("local", "local", TARGET_VS_LOCAL),
                ("best", f"best heuristic ({entry.get('best_heuristic')})", TARGET_VS_BEST),
                ("omniscient", "twin omniscient", TARGET_VS_OMNISCIENT),
            ):
                if f"{label}_over_{key}" in entry:
                    ok = "ok" if entry[f"{label}_meets_{key}_target"] else "MISSED"
                    value = entry[f"{label}_over_{key}"]
                    parts.append(f"/{name} {value:.2f} (≤ {target}: {ok})")
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


def learning_text(learning: dict[str, Any]) -> str:
    """Steps, rewards and guard swaps of a learned cell, for the table."""
    text = f"{learning['trained_steps']} st, {learning['rewards']} rw, {learning['guard_swaps']} sw"
    if not learning.get("agents_learning"):
        text += " (learn off)"
    return text


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = sorted({r["load"] for r in results})
    policies = sorted({r["policy"] for r in results}, key=order_of)
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
    cells = cells_of(args)
    errors: list[dict[str, Any]] = []
    for load in args.loads:
        omniscient = twin_omniscient(traces[load], args)
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in cells}
        for repeat in range(args.repeats):  # interleaved: drift of the machine hits every policy
            for label, policy, actor in cells:
                trace = traces[load]
                log.print(
                    f"load {load:g}, {label} (replay {repeat + 1}/{args.repeats}): "
                    f"{len(trace)} tasks over {trace[-1].at_s:.0f} s"
                )
                try:
                    result = replay(policy, load, trace, args, label=label, actor=actor)
                except ClusterError as exc:  # one cluster that did not start: the others go on
                    log.print(f"  [red]failed:[/] {exc}")
                    errors.append(
                        {"load": load, "policy": label, "replay": repeat, "error": str(exc)}
                    )
                    continue
                t = result["timing"]
                log.print(
                    f"  mean {result['mean_s']:.2f} s, p95 {result['p95_s']:.2f} s, "
                    f"lost {result['lost'] + result['failed']} (start {t['start_s']:.0f} s, "
                    f"replay {t['replay_s']:.0f} s, stop {t['stop_s']:.0f} s)"
                )
                runs[label].append(result)
        for replays in runs.values():
            if not replays:
                continue
            cell = pooled(replays)
            cell["twin_omniscient"] = omniscient
            if omniscient:
                cell["over_twin_omniscient"] = cell["mean_s"] / omniscient["mean_s"]
            results.append(cell)
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
            "tasks": args.tasks,  # per trace, when set (else from duration_s)
            "lad_actor": list(args.lad_actor),
            "policy_checkpoints": args.checkpoints,
            "learn": args.learn,
            "learn_warmup": args.learn_warmup,
            "train_steps_per_s": args.train_steps_per_s,
            "omniscient_seeds": args.omniscient_seeds,
            "loads": list(args.loads),
            "trace_s": {f"{ld:g}": traces[ld][-1].at_s for ld in args.loads},
            "seed": args.seed,
            "quick": args.quick,
            "forwarding": supports("peers", "policy"),
            "curve": not args.no_curve,
            "repeats": args.repeats,
            "passes": args.passes,
        },
        "results": results,
        "ratios": ratios(results),
        "kill": kill_result,
        "errors": errors,
        "wall_s": time.monotonic() - started,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    plot(results, args.out / "bench_cluster.png")
    print_tables(results, kill_result, args.scale)
    console.print(f"EMULATED figures; wrote {args.json} and {args.out}/bench_cluster.png")
    failed = kill_result is not None and (
        kill_result["tasks_lost"] or kill_result["tasks_done_more_than_once"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
