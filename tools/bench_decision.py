"""Scheduling decision latency inside a real agent with 8 peers (issue 5: p99 <= 1 ms).

Starts one agent (emulated backend, the given policy) whose 8 peers are fake ROUTER
sockets in this process: they answer gossip with plausible telemetry (so every peer is up
and in the scheduler's state) and acknowledge forwarded tasks. Submits tasks without
waiting and reads the agent's own decision timings (``cluster.decisions``, measured around
state building + policy decision in ``Cluster.place``) from ``status``.

    python tools/bench_decision.py --policy lad --tasks 2000 --json docs/bench_decision.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import zmq

from dedgeai.agent import protocol as p
from dedgeai.agent.client import AgentClient
from dedgeai.models.backend import GenerationRequest


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


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
                    "node": f"fake-{i}",
                    "name": f"fake-{i}",
                    "endpoint": endpoint,
                    "sent_at": time.time(),
                    "backlog_steps": rng.uniform(0, 200),
                    "backlog_s": None,
                    "interval_load_steps": rng.uniform(0, 20),
                    "capacity_steps_per_s": 10.0 + 5 * i,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="lad")
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    ports = _free_ports(args.peers + 1)
    me, peers = f"tcp://127.0.0.1:{ports[0]}", [f"tcp://127.0.0.1:{q}" for q in ports[1:]]
    stop = threading.Event()
    threading.Thread(target=_fake_peers, args=(peers, stop), daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "agent.toml"
        config.write_text(
            f'endpoint = "{me}"\nstate_dir = "{tmp}/state"\nmodel = "emulated"\n'
            f'emulated_steps_per_second = 100000.0\npolicy = "{args.policy}"\n'
            f"peers = {json.dumps(peers)}\ngossip_interval_s = 0.5\nmax_queue = 100000\n"
            'log_level = "warning"\n'
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "dedgeai.agent", "--config", str(config)]
        proc = subprocess.Popen(cmd, env=env)
        try:
            with AgentClient(me, timeout_s=30.0) as client:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    cluster = client.status()["cluster"]
                    up = [s for s in cluster["servers"] if s["state"] == "up"]
                    if len(up) == args.peers + 1 and cluster["scheduler"]["ready"]:
                        break
                    time.sleep(0.2)
                request = GenerationRequest(prompt="bench", steps=10, width=512, height=512)
                for _ in range(args.tasks):
                    client.submit(request, wait=False)
                cluster = client.status()["cluster"]
        finally:
            proc.terminate()
            proc.wait(30)
            stop.set()
    row = {
        "policy": args.policy,
        "servers": cluster["n_servers"],
        "decisions": cluster["decisions"],
        "fallback_decisions": cluster["scheduler"]["fallback_decisions"],
        "forwarded": cluster["forwarding"]["forwarded"],
    }
    d = row["decisions"]
    print(f"{'policy':<14}{'servers':>8}{'count':>8}{'p50 us':>10}{'p99 us':>10}{'max us':>10}")
    print(
        f"{args.policy:<14}{row['servers']:>8}{d['count']:>8}{d['p50_us']:>10.0f}"
        f"{d['p99_us']:>10.0f}{d['max_us']:>10.0f}"
    )
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
