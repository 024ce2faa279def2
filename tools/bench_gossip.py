"""Gossip cost per box, all-to-all vs partial view, on real emulated agents (loopback).

For each cluster size, one cluster per mode is started side by side in one run (emulated
backends, no tasks). After every agent sees every peer up and a settling time, each agent's
gossip counters (``status`` -> cluster -> the agent's own row -> ``gossip``) are read twice,
``--window`` seconds apart: messages and bytes sent and received per box per second are the
differences. Then one agent is killed (SIGKILL) and the bench polls every survivor at once
until each has marked it down (all-to-all) or dead (partial). The rounds from its last
fresh report to the verdict come from the survivors' status (partial only).

    python tools/bench_gossip.py          # 4, 8, 16 agents; docs/results/bench_gossip.json
    python tools/bench_gossip.py --sizes 4 8 --window 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dedgeai.agent.lab.harness import AgentProcess, cluster_view, free_ports, start_peered

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("sent_msgs", "sent_bytes", "recv_msgs", "recv_bytes")


def own_gossip(agent: AgentProcess) -> dict[str, Any]:
    rows = cluster_view(agent)["servers"]
    return next(r for r in rows if r["self"])["gossip"]


def run_cell(n: int, mode: str, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    endpoints = [f"tcp://127.0.0.1:{port}" for port in free_ports(n)]
    settings = {
        "gossip": mode,
        "gossip_interval_s": args.interval,
        "gossip_fanout": args.fanout,
        "gossip_digest_entries": args.digest,
        "policy": "round-robin",
        "log_level": "warning",
    }
    agents = []
    for i, endpoint in enumerate(endpoints):
        agent = AgentProcess(
            base / f"{mode}-{n}-{i}", endpoint=endpoint, peers=endpoints, **settings
        )
        agent.env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        agents.append(agent)
    try:
        start_peered(agents, timeout_s=180.0)
        time.sleep(args.settle)
        first = [(time.monotonic(), own_gossip(a)) for a in agents]
        time.sleep(args.window)
        last = [(time.monotonic(), own_gossip(a)) for a in agents]
        rates = {k: [] for k in KEYS}
        for (t0, g0), (t1, g1) in zip(first, last, strict=True):
            for k in KEYS:
                rates[k].append((g1[k] - g0[k]) / (t1 - t0))
        cell: dict[str, Any] = {
            "mode": mode,
            "agents": n,
            **{f"{k}_per_box_per_s": round(statistics.mean(v), 2) for k, v in rates.items()},
            **{f"{k}_per_box_per_s_max": round(max(v), 2) for k, v in rates.items()},
        }
        cell.update(detect(agents, mode, args))
        return cell
    finally:
        for agent in agents:
            agent.close()


def detect(agents: list[AgentProcess], mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Kill the last agent; time until every survivor marks it down/dead."""
    victim, survivors = agents[-1], agents[:-1]
    assert victim.proc is not None
    killed = time.monotonic()
    victim.proc.kill()
    victim.proc.wait(timeout=10)
    first_s: float | None = None
    pending = set(range(len(survivors)))
    rows: dict[int, dict[str, Any]] = {}
    deadline = killed + args.detect_timeout

    def verdict(i: int) -> dict[str, Any] | None:
        servers = cluster_view(survivors[i])["servers"]
        row = next(r for r in servers if r["endpoint"] == victim.endpoint)
        return row if row["state"] == "down" or row.get("member") == "dead" else None

    with ThreadPoolExecutor(len(survivors)) as pool:  # every survivor polled at once
        while pending and time.monotonic() < deadline:
            order = sorted(pending)
            for i, row in zip(order, pool.map(verdict, order), strict=True):
                if row is not None:
                    pending.discard(i)
                    rows[i] = row
                    first_s = first_s if first_s is not None else time.monotonic() - killed
            time.sleep(0.02)
    out: dict[str, Any] = {
        "failure_seen_by_first_s": round(first_s, 2) if first_s is not None else None,
        "failure_seen_by_all_s": round(time.monotonic() - killed, 2) if not pending else None,
    }
    if mode == "partial" and rows:
        rounds = [r.get("detected_after_intervals") for r in rows.values()]
        rounds = [x for x in rounds if x is not None]
        out["detected_after_intervals_max"] = max(rounds) if rounds else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--interval", type=float, default=1.0, help="gossip_interval_s")
    parser.add_argument("--fanout", type=int, default=3)
    parser.add_argument("--digest", type=int, default=16)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--detect-timeout", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "bench_gossip.json")
    args = parser.parse_args()

    cells = []
    with tempfile.TemporaryDirectory(prefix="bench_gossip-") as tmp:
        for n in args.sizes:
            for mode in ("all", "partial"):
                cell = run_cell(n, mode, args, Path(tmp))
                cells.append(cell)
                print(json.dumps(cell), file=sys.stderr, flush=True)

    head = (
        f"{'gossip':<8} {'agents':>6} {'msgs sent/s':>11} {'kB sent/s':>9} "
        f"{'msgs recv/s':>11} {'kB recv/s':>9} {'first (s)':>9} {'all (s)':>8} {'rounds':>6}"
    )
    print(head)
    for c in cells:
        rounds = c.get("detected_after_intervals_max")
        print(
            f"{c['mode']:<8} {c['agents']:>6} {c['sent_msgs_per_box_per_s']:>11.2f} "
            f"{c['sent_bytes_per_box_per_s'] / 1e3:>9.2f} {c['recv_msgs_per_box_per_s']:>11.2f} "
            f"{c['recv_bytes_per_box_per_s'] / 1e3:>9.2f} "
            f"{c['failure_seen_by_first_s'] or float('nan'):>9.2f} "
            f"{c['failure_seen_by_all_s'] or float('nan'):>8.2f} "
            f"{'-' if rounds is None else rounds:>6}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join(["python", "tools/bench_gossip.py", *sys.argv[1:]]),
        "interval_s": args.interval,
        "fanout": args.fanout,
        "digest_entries": args.digest,
        "window_s": args.window,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "note": "emulated agents on loopback, no tasks; one run, modes side by side per size",
    }
    args.out.write_text(json.dumps({"meta": meta, "cells": cells}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
