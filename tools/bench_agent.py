"""Benchmark one agent on loopback: submit round trip, status rate under load, overhead.

Starts real agents (``python -m dedgeai.agent``, launched by the shared harness
``dedgeai.agent.lab.harness.AgentProcess``, with the default scheduling policy) in a
temporary directory and measures, from one client:
  * a raw pyzmq round trip to an echo ROUTER in another process (the floor, for scale)
  * submit -> accepted round trip (median, p99), journal_sync "normal" and "full" side by side
  * status requests per second while a task is running (emulated and tiny backends)
  * agent overhead on a tiny-model task: client-side total minus the backend's own time

    python tools/bench_agent.py [--out runs/bench_agent.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dedgeai.agent.lab.harness import AgentProcess
from dedgeai.agent.node.config import KEYS
from dedgeai.models.backend import GenerationRequest
from dedgeai.scheduler.stats import percentile

TARGETS = {"submit_median_ms": 0.5, "submit_p99_ms": 3.0, "status_per_s": 3000.0,
           "overhead_median_ms": 10.0}  # fmt: skip
DEFAULT_POLICY = next(k.default for k in KEYS if k.name == "policy")
STOP_TIMEOUT_S = 60.0  # torch teardown on 2 loaded cores can take 15+ s
CLIENT_TIMEOUT_S = 30.0
ECHO_SERVER = """
import sys, zmq
router = zmq.Context().socket(zmq.ROUTER)
print(router.bind_to_random_port("tcp://127.0.0.1"), flush=True)
while True:
    frames = router.recv_multipart()
    router.send_multipart(frames)
    if frames[-1] == b"quit":
        break
"""


@dataclass
class Scenario:
    name: str
    metric: str
    settings: dict[str, Any]
    value: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    target: str = ""


# The agent as a service would run it (info logs, the default telemetry interval, the
# default policy); the harness's own defaults suit tests (debug logs, fast telemetry).
AGENT_DEFAULTS: dict[str, Any] = {"log_level": "info", "telemetry_interval_s": 1.0,
                                  "max_queue": 1_000_000}  # fmt: skip


def start_agent(root: Path, **settings: Any) -> AgentProcess:
    """One agent from the shared harness, in its own directory under ``root``."""
    directory = root / f"agent-{len(list(root.iterdir()))}"
    return AgentProcess(directory, **{**AGENT_DEFAULTS, **settings}).start()


def stop_agent(agent: AgentProcess) -> None:
    try:
        agent.stop(timeout_s=STOP_TIMEOUT_S)
    finally:
        agent.close()


def bench_raw(rounds: int) -> Scenario:
    """A DEALER -> ROUTER echo round trip to another process: what any agent reply costs."""
    import zmq

    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    samples: list[float] = []
    try:
        payload = b"x" * 200  # about a submit's size
        for i in range(rounds + 200):
            started = time.perf_counter()
            dealer.send(payload)
            dealer.recv()
            if i >= 200:
                samples.append(time.perf_counter() - started)
        dealer.send(b"quit")
        dealer.recv()
    finally:
        dealer.close(0)
        context.term()
        server.wait(timeout=10)
    scenario = Scenario("raw pyzmq round trip (scale)", "median_ms", {"rounds": rounds})
    scenario.value = statistics.median(samples) * 1e3
    scenario.extra = {"p99_ms": percentile(samples, 99) * 1e3}
    scenario.target = "(the floor)"
    return scenario


def bench_submit(root: Path, sync: str, rounds: int, queued: bool = False) -> Scenario:
    """Every task runs at once (1e6 steps/s: each submit also costs a ``running`` and a
    ``done`` commit and a result written by the worker), or with ``queued`` they wait behind
    the first one (0.01 steps/s): the accept path alone."""
    speed = 0.01 if queued else 1e6
    agent = start_agent(root, model="emulated", emulated_steps_per_second=speed, journal_sync=sync)
    request = GenerationRequest(prompt="a small boat", steps=1, width=256, height=256)
    samples: list[float] = []
    try:
        with agent.client(timeout_s=CLIENT_TIMEOUT_S) as client:
            for i in range(rounds + 200):
                started = time.perf_counter()
                client.submit(request, wait=False)
                if i >= 200:  # warm-up rounds excluded
                    samples.append(time.perf_counter() - started)
    finally:
        stop_agent(agent)
    settings = {"sync": sync, "rounds": rounds, "policy": DEFAULT_POLICY, "queued": queued}
    how = "queued behind a running task" if queued else "each task runs at once"
    scenario = Scenario(f"submit->accepted ({sync}, {how})", "median_ms", settings)
    scenario.value = statistics.median(samples) * 1e3
    scenario.extra = {"p99_ms": percentile(samples, 99) * 1e3, "max_ms": max(samples) * 1e3}
    median, p99 = TARGETS["submit_median_ms"], TARGETS["submit_p99_ms"]
    scenario.target = f"median <= {median:g} ms, p99 <= {p99:g} ms"
    return scenario


def bench_status(root: Path, model: str, seconds: float) -> Scenario:
    settings: dict[str, Any] = {"model": model, "profile_sizes": ["256x256"], "profile_steps": 1}
    if model == "emulated":
        settings["emulated_steps_per_second"] = 5.0
    agent = start_agent(root, **settings)
    try:
        with agent.client(timeout_s=CLIENT_TIMEOUT_S) as client:
            # About 10 s on the tiny model on 2 CPU cores, 20 s emulated: outlasts the window.
            big = GenerationRequest(prompt="a long task", steps=100, width=1024, height=1024)
            client.submit(big)
            deadline = time.monotonic() + 120
            while client.status()["queue"]["running_step"] in (None, 0):  # task is denoising
                if time.monotonic() > deadline:
                    raise RuntimeError("the task did not start")
                time.sleep(0.01)
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                client.status()
                count += 1
            elapsed = time.perf_counter() - started
            still = client.status()["queue"]["running"] is not None
    finally:
        stop_agent(agent)
    scenario = Scenario(f"status while running ({model})", "per_s", {"model": model})
    scenario.value = count / elapsed
    scenario.extra = {"requests": count, "task_still_running": float(still)}
    scenario.target = f">= {TARGETS['status_per_s']:g} / s"
    return scenario


def bench_overhead(root: Path, tasks: int) -> Scenario:
    agent = start_agent(
        root, model="tiny", device="cpu", profile_sizes=["256x256"], profile_steps=1
    )
    request = GenerationRequest(prompt="a lighthouse at dusk", steps=2, width=256, height=256)
    overheads, backend = [], []
    try:
        with agent.client(timeout_s=CLIENT_TIMEOUT_S) as client:
            for i in range(tasks + 2):
                started = time.perf_counter()
                _accepted, done = client.generate(request)
                total = time.perf_counter() - started
                if i >= 2:  # the first runs warm up torch
                    overheads.append(total - done.get("timings")["backend_s"])
                    backend.append(done.get("timings")["backend_s"])
    finally:
        stop_agent(agent)
    scenario = Scenario("agent overhead (tiny 256x256, 2 steps)", "median_ms", {"tasks": tasks})
    scenario.value = statistics.median(overheads) * 1e3
    scenario.extra = {"p90_ms": percentile(overheads, 90) * 1e3,
                      "backend_median_ms": statistics.median(backend) * 1e3}  # fmt: skip
    scenario.target = "median <= 10 ms"
    return scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_agent.json"))
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny-model scenarios")
    args = parser.parse_args()
    rounds, seconds, tasks = (300, 1.0, 5) if args.quick else (3000, 3.0, 20)
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        root = Path(tmp)
        scenarios = [
            bench_raw(rounds),
            bench_submit(root, "normal", rounds),
            bench_submit(root, "normal", rounds, queued=True),
            bench_submit(root, "full", rounds),
            bench_status(root, "emulated", seconds),
        ]
        if not args.no_tiny:
            scenarios += [bench_status(root, "tiny", seconds), bench_overhead(root, tasks)]
    table = Table(title="dedgeai agent on loopback")
    for column in ("scenario", "value", "details", "target"):
        table.add_column(column)
    for s in scenarios:
        details = ", ".join(f"{k} {v:.3g}" for k, v in s.extra.items())
        table.add_row(s.name, f"{s.value:.3g} {s.metric}", details, s.target)
    Console(width=120).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "machine": platform.machine(),
               "cpus": os.cpu_count(), "load_avg": os.getloadavg()}  # fmt: skip
    args.out.write_text(json.dumps({"machine": machine,
                                    "scenarios": [asdict(s) for s in scenarios]}, indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
