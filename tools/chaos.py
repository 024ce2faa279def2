"""Chaos run of a live local cluster: kill -9, SIGSTOP and restarts under a Poisson load.

N agents on loopback (``LocalCluster``: EMULATED backends, every agent a peer of every other,
keyless unless ``--curve``) serve a Poisson trace of Flickr8k prompts with few steps. Each
task has a client thread that submits it with a task id chosen here to one random agent
(its origin) and retries on any failure, to that agent only, until it is accepted: the id
makes retries idempotent. Meanwhile, every ``--fault-every`` seconds (jittered, seeded),
one running agent is SIGKILLed (and relaunched 0.5-5 s later), SIGSTOPped for 1-8 s, or
restarted with SIGTERM. At the end every agent is continued or relaunched, the accepted
tasks are waited for (bounded), and the invariant is checked:

- every accepted task finished exactly once (done, failed or cancelled) as its client saw
  it, and its origin still serves that same result to its owner (``result``);
- no task ran to completion on two agents: ``<task>.json`` files without ``relayed_at``
  across all agents' result directories are runs (a relayed copy at the origin is not),
  and a ``done`` task has its run;
- no client was handed two different results for one task; every agent is running.

    python tools/chaos.py [--agents 5] [--duration 120] [--rate 2] [--fault-every 4]
                          [--seed 0] [--curve] [--out runs/chaos.json]

Exit 0: the invariant holds; 1: it does not (the JSON lists the tasks, the faults and the
agents' log lines about them; the cluster's directory is kept); 2: the cluster did not start.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq
from rich.console import Console
from rich.table import Table

from dedgeai.agent.client.library import AgentClient
from dedgeai.agent.errors import DedgeaiError, PeerUnavailable
from dedgeai.agent.lab.harness import ClusterError, LocalAgent, LocalCluster
from dedgeai.agent.lab.load import Arrival, poisson_trace
from dedgeai.agent.node import protocol as p

KINDS = ("kill", "stop", "restart")
CLIENT_TIMEOUT_S = 3.0  # a client's silence before it asks again (and re-subscribes)
RETRY_S = 0.5  # between submits that were not accepted
POLL_S = 0.25
READY_TIMEOUT_S = 120.0  # a relaunched agent imports torch; the box is shared
RETRY_CODES = ("busy", "shutting_down", "internal", "storage")  # submit again later
MAX_SOCKETS = 16_384  # one client (two sockets) per task in flight
LOG_LINES_PER_TASK = 40
console = Console(width=None if sys.stdout.isatty() else 132)


@dataclass
class ChaosConfig:
    agents: int = 5
    duration_s: float = 120.0  # arrivals and faults
    rate_per_s: float = 2.0
    fault_every_s: float = 4.0
    seed: int = 0
    curve: bool = False
    policy: str = "random"  # spreads tasks over every live agent: many forwards
    steps: tuple[int, int] = (2, 6)
    size_px: int = 512
    steps_per_s: float = 8.0  # EMULATED speed at 512x512
    gossip_interval_s: float = 0.5
    cancel_share: float = 0.05  # tasks their client cancels 0.1-2 s after acceptance
    settle_s: float = 120.0  # after the faults: how long unfinished tasks are waited for
    kinds: tuple[str, ...] = KINDS
    sequence: tuple[str, ...] = ()  # fault kinds in this order (cycled) instead of drawn
    max_faulted: int = 0  # agents down, stopped or restarting at once; 0: half of them
    # A task reclaimed from a down or stopped peer that ran it anyway ran twice (one result
    # is kept): counted always, a violation unless allowed.
    allow_reclaimed_reruns: bool = False
    root: Path | None = None
    log_level: str = "info"


# --- faults -------------------------------------------------------------------------


@dataclass
class Fault:
    at_s: float
    kind: str
    agent: str
    held_s: float  # down (kill) or stopped (stop) for this long
    back_s: float | None = None  # when it answered again, since the start
    exit_code: int | None = None  # of a SIGTERM restart
    error: str | None = None


class FaultInjector:
    """Draws faults on a timer and applies each in its own thread (seeded choices)."""

    def __init__(self, cluster: LocalCluster, config: ChaosConfig, started: float) -> None:
        self.cluster, self.config, self.started = cluster, config, started
        self.rng = random.Random(config.seed + 1)
        self.lock = threading.Lock()
        self.busy: set[int] = set()  # agents down, stopped or restarting
        self.max_busy = config.max_faulted or max(1, config.agents // 2)
        self.faults: list[Fault] = []
        self.threads: list[threading.Thread] = []
        self.done = threading.Event()  # the end: held faults end early
        self.thread: threading.Thread | None = None

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        """The injector thread: one fault per interval until the duration is over."""
        count = 0
        while not self.done.wait(self.config.fault_every_s * self.rng.uniform(0.5, 1.5)):
            if self.now_s() >= self.config.duration_s:
                return
            sequence = self.config.sequence
            kind = (
                sequence[count % len(sequence)] if sequence else self.rng.choice(self.config.kinds)
            )
            with self.lock:
                free = [a.index for a in self.cluster.agents if a.index not in self.busy]
                if len(self.busy) >= self.max_busy or not free:
                    continue
                index = self.rng.choice(free)
                self.busy.add(index)
            count += 1
            held = {"kill": self.rng.uniform(0.5, 5.0), "stop": self.rng.uniform(1.0, 8.0)}
            fault = Fault(self.now_s(), kind, self.cluster.agents[index].name, held.get(kind, 0.0))
            self.faults.append(fault)
            thread = threading.Thread(target=self._apply, args=(index, fault), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _apply(self, index: int, fault: Fault) -> None:
        agent = self.cluster.agents[index]
        try:
            if fault.kind == "kill":
                agent.kill()
                self.done.wait(fault.held_s)
                agent.launch()
            elif fault.kind == "stop":
                pid = agent.proc.pid if agent.proc is not None else 0
                if not pid:
                    raise ClusterError(f"{agent.name} has no process to stop")
                os.kill(pid, signal.SIGSTOP)
                self.done.wait(fault.held_s)
                os.kill(pid, signal.SIGCONT)
            else:
                fault.exit_code = agent.stop()
                agent.launch()
            wait_ready(self.cluster, agent)
            fault.back_s = self.now_s()
        except (ClusterError, OSError) as exc:
            fault.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self.lock:
                self.busy.discard(index)

    def finish(self) -> list[str]:
        """Stop injecting, end every held fault, bring back any agent that is not running."""
        self.done.set()
        if self.thread is not None:
            self.thread.join()  # no fault starts after this
        for thread in self.threads:
            thread.join(READY_TIMEOUT_S + 30)
        problems = []
        for agent in self.cluster.agents:
            if not agent.alive():
                problems.append(f"{agent.name} was not running at the end: relaunched")
                agent.launch()
                try:
                    wait_ready(self.cluster, agent)
                except ClusterError as exc:
                    problems.append(str(exc))
        return problems


def wait_ready(cluster: LocalCluster, agent: LocalAgent) -> None:
    """Until ``agent`` answers ``status``; ClusterError when it exits or never answers."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if not agent.alive():
            code = agent.proc.returncode if agent.proc is not None else None
            raise ClusterError(f"{agent.name} exited with {code}: {agent.log_tail(3)}")
        try:
            with cluster.client(agent.index, timeout_s=1.0, retries=1) as client:
                client.status()
            return
        except PeerUnavailable:
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{agent.name} did not answer in {READY_TIMEOUT_S:g} s"
                ) from None


# --- clients ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the client of one task saw, and what the audit found."""

    index: int
    task: str
    origin: str
    arrival_s: float
    cancel_after_s: float | None
    submits: int = 0
    accepted_s: float | None = None
    cancel_reply: str | None = None
    final: str | None = None  # done, failed, cancelled, rejected
    final_s: float | None = None
    deliveries: list[list[Any]] = field(default_factory=list)  # distinct [node, finished_at]
    notes: Counter[str] = field(default_factory=Counter)  # errors met on the way
    audit: str | None = None  # what the origin serves at the end
    audit_delivery: list[Any] | None = None
    reclaimed: str | None = None  # why its origin took it back from a peer, if it did
    runs: list[str] = field(default_factory=list)  # agents with a run on disk
    relayed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def delivery(reply: p.Reply) -> list[Any]:
    ran_on = reply.get("ran_on") or {}
    node = ran_on.get("node") if isinstance(ran_on, dict) else None
    return [node, reply.get("finished_at")]


class Clients:
    """One thread per task: submit until accepted, then wait for its end (and cancel some)."""

    def __init__(self, cluster: LocalCluster, config: ChaosConfig, started: float) -> None:
        self.cluster, self.config, self.started = cluster, config, started
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def start(self, outcome: Outcome, arrival: Arrival) -> None:
        thread = threading.Thread(target=self._run, args=(outcome, arrival), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _run(self, outcome: Outcome, arrival: Arrival) -> None:
        index = next(a.index for a in self.cluster.agents if a.name == outcome.origin)
        with self.cluster.client(index, timeout_s=CLIENT_TIMEOUT_S, retries=1) as client:
            if self._submit(client, outcome, arrival):
                self._await(client, outcome)

    def _request(
        self, client: AgentClient, outcome: Outcome, message: dict[str, Any]
    ) -> p.Reply | None:
        try:
            return client.request(message, raise_errors=False)
        except DedgeaiError as exc:  # PeerUnavailable (down or stopped), HandshakeFailed
            outcome.notes[type(exc).__name__] += 1
            return None

    def _submit(self, client: AgentClient, outcome: Outcome, arrival: Arrival) -> bool:
        wire = p.request_to_wire(arrival.request())
        message = {"type": "submit", **wire, "task": outcome.task, "wait": True}
        while not self.stop.is_set():
            outcome.submits += 1
            reply = self._request(client, outcome, message)
            if reply is not None and reply.type == "accepted":
                outcome.accepted_s = self.now_s()
                return True
            if reply is not None and reply.type == "error":
                code = str(reply.get("code"))
                outcome.notes[f"submit {code}"] += 1
                if code not in RETRY_CODES:
                    outcome.final, outcome.final_s = "rejected", self.now_s()
                    return False
            self.stop.wait(RETRY_S)
        return False

    def _await(self, client: AgentClient, outcome: Outcome) -> None:
        heard = time.monotonic()
        cancel_at = None
        if outcome.cancel_after_s is not None:
            cancel_at = time.monotonic() + outcome.cancel_after_s
        while not self.stop.is_set():
            if cancel_at is not None and time.monotonic() >= cancel_at:
                reply = self._request(client, outcome, {"type": "cancel", "task": outcome.task})
                if reply is None:
                    cancel_at = time.monotonic() + RETRY_S
                    continue
                cancel_at = None
                outcome.cancel_reply = reply.type + (
                    f"/{reply.get('code')}" if reply.type == "error" else ""
                )
            try:
                reply = client.recv(POLL_S)
            except DedgeaiError as exc:
                outcome.notes[type(exc).__name__] += 1
                continue
            if reply is None:
                if time.monotonic() - heard < CLIENT_TIMEOUT_S:
                    continue
                # Silence: ask again; this re-subscribes after the origin restarted.
                reply = self._request(
                    client, outcome, {"type": "result", "task": outcome.task, "wait": True}
                )
                if reply is None:
                    continue
            heard = time.monotonic()
            if reply.get("task") not in (None, outcome.task):
                continue
            if self._ended(outcome, reply):
                self._drain(client, outcome)
                return

    def _drain(self, client: AgentClient, outcome: Outcome) -> None:
        """Replies already queued after the end: a second ``done`` is a second delivery."""
        try:
            while (reply := client.recv(0)) is not None:
                if reply.type == "done" and reply.get("task") == outcome.task:
                    seen = delivery(reply)
                    if seen not in outcome.deliveries:
                        outcome.deliveries.append(seen)
        except DedgeaiError as exc:
            outcome.notes[type(exc).__name__] += 1

    def _ended(self, outcome: Outcome, reply: p.Reply) -> bool:
        if reply.type == "done":
            seen = delivery(reply)
            if seen not in outcome.deliveries:
                outcome.deliveries.append(seen)
            outcome.final, outcome.final_s = "done", self.now_s()
            return True
        if reply.type != "error":
            return False
        code = str(reply.get("code"))
        final = {"cancelled": "cancelled", "task_failed": "failed"}.get(code)
        if final is None:
            outcome.notes[f"wait {code}"] += 1  # not_found here is suspicious: see the audit
            return False
        outcome.final, outcome.final_s = final, self.now_s()
        return True

    def wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stop.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT_S * 3)


# --- the audit ----------------------------------------------------------------------


def runs_on_disk(cluster: LocalCluster) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Task -> agents with a run to completion, and task -> agents with a relayed copy."""
    runs: dict[str, list[str]] = {}
    relayed: dict[str, list[str]] = {}
    for agent in cluster.agents:
        for path in sorted((agent.directory / "state" / "results").glob("*.json")):
            try:
                meta = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            task = str(meta.get("task") or path.stem)
            target = relayed if "relayed_at" in meta else runs
            target.setdefault(task, []).append(agent.name)
    return runs, relayed


def audit(cluster: LocalCluster, outcomes: list[Outcome]) -> None:
    """What each origin serves now; runs on disk; the problems of every task."""
    runs, relayed = runs_on_disk(cluster)
    by_name = {a.name: a.index for a in cluster.agents}
    for o in outcomes:
        o.runs, o.relayed = runs.get(o.task, []), relayed.get(o.task, [])
        if o.accepted_s is not None:
            served(cluster, by_name[o.origin], o)
        if len(o.runs) > 1:
            # Reclaimed from a peer that was down or stopped, and that peer ran it anyway (it
            # had finished it, or it ran it once continued): wasted work, one result kept.
            o.problems.append("rerun_after_reclaim" if o.reclaimed else "run_twice")
        if o.accepted_s is None:
            continue
        final = {"done": "done", "error/cancelled": "cancelled", "error/task_failed": "failed"}
        if o.final is None or final.get(o.audit or "") is None:
            o.problems.append("lost")
        elif (
            len(o.deliveries) > 1
            or final[o.audit or ""] != o.final
            or (o.final == "done" and o.audit_delivery not in o.deliveries)
        ):
            o.problems.append("delivered_twice")
        if o.final == "done" and not o.runs:
            o.problems.append("done_without_run")


def served(cluster: LocalCluster, index: int, o: Outcome) -> None:
    """Ask the origin for the task's result, as its owner would, and note what it says."""
    with cluster.client(index, timeout_s=5.0, retries=3) as client:
        try:
            reply = client.request({"type": "result", "task": o.task}, raise_errors=False)
        except DedgeaiError as exc:
            o.audit = f"unanswered: {exc}"
            return
    code = reply.get("code")
    o.audit = reply.type + (f"/{code}" if code else "")
    if reply.type == "done":
        o.audit_delivery = delivery(reply)
        placement = reply.get("placement") or {}
        o.reclaimed = placement.get("reclaimed") if isinstance(placement, dict) else None
    if o.reclaimed is None:  # cancelled or failed: the origin's log says whether it reclaimed
        agent = cluster.agents[index]
        text = agent.log_path.read_text(errors="replace") if agent.log_path.exists() else ""
        marker = f"task {o.task}: reclaimed"
        o.reclaimed = next((line for line in text.splitlines() if marker in line), None)


def log_lines(cluster: LocalCluster, task: str) -> list[str]:
    lines = []
    for agent in cluster.agents:
        if agent.log_path.exists():
            text = agent.log_path.read_text(errors="replace")
            lines += [f"{agent.name}: {line}" for line in text.splitlines() if task in line]
    return lines[:LOG_LINES_PER_TASK]


def agent_health(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    health = {}
    for agent in cluster.agents:
        entry: dict[str, Any] = {"running": agent.alive()}
        try:
            with cluster.client(agent.index, timeout_s=5.0, retries=2) as client:
                body = client.status()
            forwarding = (body.get("cluster") or {}).get("forwarding") or {}
            entry.update(answered=True, counters=body.get("counters"), forwarding=forwarding)
        except DedgeaiError as exc:
            entry.update(answered=False, error=str(exc))
        health[agent.name] = entry
    return health


# --- the run ------------------------------------------------------------------------


def make_cluster(config: ChaosConfig) -> LocalCluster:
    common = {
        "model": "emulated",
        "policy": config.policy,
        "emulated_steps_per_second": config.steps_per_s,
        "profile_sizes": [f"{config.size_px}x{config.size_px}"],
        "gossip_interval_s": config.gossip_interval_s,
        "max_queue": 10_000,
        "retention_max_results": 1_000_000,
        "log_level": config.log_level,
        "telemetry_interval_s": 1.0,
    }
    return LocalCluster([{}] * config.agents, common, root=config.root, curve=config.curve)


def plan(config: ChaosConfig, names: list[str]) -> tuple[list[Arrival], list[Outcome]]:
    n_tasks = max(1, round(config.rate_per_s * config.duration_s))
    size = (config.size_px, config.size_px)
    trace = poisson_trace(
        n_tasks, config.rate_per_s, config.agents, config.seed, config.steps, size
    )
    trace = [a for a in trace if a.at_s < config.duration_s] or trace[:1]
    rng = random.Random(config.seed + 2)
    outcomes = []
    for i, arrival in enumerate(trace):
        task = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        cancel = rng.uniform(0.1, 2.0) if rng.random() < config.cancel_share else None
        outcomes.append(Outcome(i, task, names[arrival.origin], arrival.at_s, cancel))
    return trace, outcomes


def run_chaos(config: ChaosConfig) -> dict[str, Any]:
    """Start the cluster, replay the trace under faults, settle, audit; the report."""
    zmq.Context.instance().set(zmq.MAX_SOCKETS, MAX_SOCKETS)
    cluster = make_cluster(config)
    report: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    }
    injector = clients = None
    try:
        began = time.monotonic()
        cluster.start()
        cluster.wait_peers_up(timeout_s=READY_TIMEOUT_S)
        start_s = time.monotonic() - began
        trace, outcomes = plan(config, [a.name for a in cluster.agents])
        started = time.monotonic()
        injector = FaultInjector(cluster, config, started)
        clients = Clients(cluster, config, started)
        injector.start()
        for arrival, outcome in zip(trace, outcomes, strict=True):
            delay = started + arrival.at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            clients.start(outcome, arrival)
        time.sleep(max(0.0, started + config.duration_s - time.monotonic()))
        restore = injector.finish()
        settle_started = time.monotonic()
        clients.wait(config.settle_s)
        settle_s = time.monotonic() - settle_started
        audit(cluster, outcomes)
        health = agent_health(cluster)
        report.update(
            summarise(outcomes, injector.faults, health, restore, config.allow_reclaimed_reruns)
        )
        report["timing"] = {"start_s": start_s, "run_s": config.duration_s, "settle_s": settle_s}
        report["violations"] = [
            {**outcome_dict(o), "log": log_lines(cluster, o.task)} for o in outcomes if o.problems
        ]
        if not report["invariant"]["holds"]:
            cluster.keep = True
            report["kept"] = str(cluster.root)
    finally:
        if clients is not None:
            clients.stop.set()
        if injector is not None:
            injector.done.set()
        report["exit_codes"] = cluster.close()
    return report


def outcome_dict(o: Outcome) -> dict[str, Any]:
    return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(o).items()}


def summarise(
    outcomes: list[Outcome],
    faults: list[Fault],
    health: dict[str, Any],
    restore: list[str],
    allow_reruns: bool = False,
) -> dict[str, Any]:
    accepted = [o for o in outcomes if o.accepted_s is not None]
    problems = Counter(problem for o in outcomes for problem in o.problems)
    tasks = {
        "submitted": len(outcomes),
        "accepted": len(accepted),
        "not_accepted": len(outcomes) - len(accepted),
        "done": sum(o.final == "done" for o in accepted),
        "failed": sum(o.final == "failed" for o in accepted),
        "cancelled": sum(o.final == "cancelled" for o in accepted),
        "rejected": sum(o.final == "rejected" for o in outcomes),
        "cancels_sent": sum(o.cancel_reply is not None for o in outcomes),
        "lost": problems["lost"],
        "run_twice": problems["run_twice"] + problems["rerun_after_reclaim"],
        "run_twice_after_reclaim": problems["rerun_after_reclaim"],
        "delivered_twice": problems["delivered_twice"],
        "done_without_run": problems["done_without_run"],
        "runs_on_disk": sum(len(o.runs) for o in outcomes),
        "ran_without_acceptance": sum(bool(o.runs) and o.accepted_s is None for o in outcomes),
    }
    forwarding: Counter[str] = Counter()
    for entry in health.values():
        counters = (entry.get("forwarding") or {}).items()  # counts; `stealing` is a section
        forwarding.update({k: int(v) for k, v in counters if type(v) in (int, float)})
    running = all(e["running"] and e.get("answered") for e in health.values())
    counted = {
        k: v for k, v in problems.items() if not (allow_reruns and k == "rerun_after_reclaim")
    }
    # An agent found dead at the end died on its own (its faults had all ended): a violation.
    holds = running and not counted and not restore and not any(f.error for f in faults)
    return {
        "faults": {
            "by_kind": dict(Counter(f.kind for f in faults)),
            "failed": sum(f.error is not None for f in faults),
            "sequence": [asdict(f) for f in faults],
        },
        "tasks": tasks,
        "forwarding": dict(forwarding),
        "agents": health,
        "restore": restore,
        "invariant": {"holds": holds, "all_agents_running": running, "problems": dict(problems)},
    }


def print_report(report: dict[str, Any]) -> None:
    faults, tasks = report["faults"], report["tasks"]
    table = Table(
        title=f"chaos: {report['config']['agents']} agents, {report['config']['duration_s']:g} s"
    )
    table.add_column("what")
    table.add_column("count", justify="right")
    for kind, count in sorted(faults["by_kind"].items()):
        table.add_row(f"faults: {kind}", str(count))
    table.add_row("faults that failed to apply", str(faults["failed"]))
    for name, count in tasks.items():
        table.add_row(f"tasks: {name.replace('_', ' ')}", str(count))
    for name, count in sorted(report["forwarding"].items()):
        table.add_row(f"forwarding: {name.replace('_', ' ')}", str(count))
    console.print(table)
    invariant = report["invariant"]
    verdict = "HOLDS" if invariant["holds"] else "VIOLATED"
    console.print(f"invariant {verdict}; all agents running: {invariant['all_agents_running']}")
    for violation in report["violations"][:10]:
        console.print(
            f"  {violation['task']} (origin {violation['origin']}): {violation['problems']}"
        )
    if report.get("kept"):
        console.print(f"cluster directory kept: {report['kept']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load and faults")
    parser.add_argument("--rate", type=float, default=2.0, help="tasks per second (Poisson)")
    parser.add_argument(
        "--fault-every", type=float, default=4.0, help="mean seconds between faults"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curve", action="store_true", help="CURVE keys (default: keyless)")
    parser.add_argument("--policy", default="random")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument(
        "--settle", type=float, default=120.0, help="max seconds to wait at the end"
    )
    parser.add_argument(
        "--allow-reclaimed-reruns",
        action="store_true",
        help="a task run twice after its origin reclaimed it from a faulted peer is no violation",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/chaos.json"))
    parser.add_argument("--root", type=Path, help="cluster directory (kept)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = ChaosConfig(
        agents=args.agents,
        duration_s=args.duration,
        rate_per_s=args.rate,
        fault_every_s=args.fault_every,
        seed=args.seed,
        curve=args.curve,
        policy=args.policy,
        kinds=tuple(args.kinds),
        settle_s=args.settle,
        root=args.root,
        allow_reclaimed_reruns=args.allow_reclaimed_reruns,
    )
    try:
        report = run_chaos(config)
    except ClusterError as exc:
        console.print(f"the cluster did not start: {exc}")
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    return 0 if report["invariant"]["holds"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
