"""Scheduling decision latency inside a real agent with 8 peers (issue 5: p99 <= 1 ms).

Starts one agent (emulated backend, the given policy) whose 8 peers are fake ROUTER
sockets in this process: they answer gossip with plausible telemetry (so every peer is up
and in the scheduler's state) and acknowledge forwarded tasks. Submits tasks without
waiting and reads the agent's own decision timings (``cluster.decisions``, measured around
state building + policy decision in ``Cluster.place``) from ``status``.

    python tools/bench_decision.py                       # lad and greedy, back to back
    python tools/bench_decision.py --tasks 300 --interval 0 0.1   # and cold (one every 0.1 s)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import msgpack
import zmq
from rich.console import Console
from rich.table import Table

from dedgeai.agent.lab.harness import HOST, AgentProcess, cluster_view, free_ports, wait_for
from dedgeai.agent.node import protocol as p
from dedgeai.models.backend import GenerationRequest
from dedgeai.scheduler.policy_names import POLICIES

AGENT_STEPS_PER_S = 100000.0  # the emulated backend: tasks leave the queue at once
READY_TIMEOUT_S = 120.0  # every fake peer up and the policy ready (lad warms up first)


def _fake_peers(endpoints: list[str], stop: threading.Event) -> None:
    ctx = zmq.Context.instance()
    socks = []
    for i, endpoint in enumerate(endpoints):
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(endpoint)
        socks.append((i, endpoint, sock))
    poller = zmq.Poller()
    for _, _, sock in socks:
        poller.register(sock, zmq.POLLIN)
    rng = random.Random(0)
    while not stop.is_set():
        for sock, _ in poller.poll(100):
            i, endpoint, _ = next(s for s in socks if s[2] is sock)
            identity, frame = sock.recv_multipart()
            msg = msgpack.unpackb(frame)
            if msg["type"] == "gossip":
                body = {
                    "node": str(uuid.UUID(int=i + 1)),
                    "name": f"fake-{i}",
                    "endpoint": endpoint,
                    "sent_at": time.time(),
                    "backlog_steps": rng.uniform(0, 200),
                    "backlog_s": None,
                    "interval_load_steps": rng.uniform(0, 20),
                    # near the agent's own speed: gossip sanity drops a peer 1000x slower
                    "capacity_steps_per_s": AGENT_STEPS_PER_S * (0.5 + 0.1 * i),
                    "accepting": True,
                    "echo_sent_at": msg["sent_at"],
                }
                reply = p.envelope("gossip", msg["id"], **body)
            elif msg["type"] == "submit":
                reply = p.accepted_reply(msg["id"], msg["task"], 0, msg["origin"])
            else:
                continue
            sock.send_multipart([identity, p.encode(reply)])
    for _, _, sock in socks:
        sock.close(0)


def measure(policy: str, n_peers: int, tasks: int, interval_s: float) -> dict:
    """One fresh agent with ``n_peers`` fake peers: its decision times over ``tasks`` submits."""
    peers = [f"tcp://{HOST}:{port}" for port in free_ports(n_peers)]
    stop = threading.Event()
    fakes = threading.Thread(target=_fake_peers, args=(peers, stop), daemon=True)
    fakes.start()
    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(
            Path(tmp),
            emulated_steps_per_second=AGENT_STEPS_PER_S,
            policy=policy,
            peers=peers,
            gossip_interval_s=0.5,
            telemetry_interval_s=1.0,
            max_queue=100000,
            log_level="warning",
        )
        agent.env = {"OMP_NUM_THREADS": "1"}

        def ready() -> bool:
            cluster = cluster_view(agent)
            up = [s for s in cluster["servers"] if s["state"] == "up"]
            return len(up) == n_peers + 1 and cluster["scheduler"]["ready"]

        try:
            agent.start()
            wait_for(ready, READY_TIMEOUT_S, f"{n_peers} fake peers up, {policy} ready", 0.2)
            with agent.client(timeout_s=30.0) as client:
                request = GenerationRequest(prompt="bench", steps=10, width=512, height=512)
                for _ in range(tasks):
                    client.submit(request, wait=False)
                    if interval_s:
                        time.sleep(interval_s)  # the pace of the submits, not a wait
                cluster = client.status()["cluster"]
        finally:
            if agent.proc is not None and agent.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    agent.stop(timeout_s=30.0)
            agent.close()
            stop.set()
            fakes.join(5.0)
    return {
        "policy": policy,
        "servers": cluster["n_servers"],
        "interval_s": interval_s,
        "decisions": cluster["decisions"],
        "fallback_decisions": cluster["scheduler"]["fallback_decisions"],
        "forwarded": cluster["forwarding"]["forwarded"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=["lad", "greedy"])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument(
        "--interval",
        type=float,
        nargs="+",
        default=[0.0],
        help="seconds between submits (0: back to back, caches hot; 0.05+: cold, as an "
        "agent that decides now and then)",
    )
    parser.add_argument("--json", type=Path, default=Path("runs/bench_decision.json"))
    args = parser.parse_args()
    rows = [
        measure(policy, args.peers, args.tasks, interval)
        for interval in args.interval
        for policy in args.policies
    ]
    table = Table(title=f"scheduling decision inside the agent ({args.peers} peers)")
    for name in ("policy", "servers", "submits every", "count", "p50", "p99", "max", "fallback"):
        table.add_column(name, justify="left" if name == "policy" else "right")
    for row in rows:
        d = row["decisions"]
        table.add_row(
            row["policy"],
            str(row["servers"]),
            f"{row['interval_s'] * 1000:g} ms" if row["interval_s"] else "back to back",
            str(d["count"]),
            f"{d['p50_us']:.0f} µs",
            f"{d['p99_us']:.0f} µs",
            f"{d['max_us']:.0f} µs",
            str(row["fallback_decisions"]),
        )
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
