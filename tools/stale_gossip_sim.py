"""Why the agents draw their targets: deterministic greedy vs soft greedy on stale gossip.

A small discrete-event model of the benchmark's cluster, without sockets or processes: eight
FIFO servers at the paper's first eight capacities x 0.4 steps/s, tasks of 10-19 steps
arriving as a Poisson stream at uniform origins, and each server publishing its backlog
once per gossip interval (each at its own phase). An origin sees every peer's last report
plus the work it has itself sent there since (as ``agent/cluster/coordinator.py`` does) and its own
queue exactly. Policies: ``greedy`` (earliest estimated finish) and soft greedy, drawn from
π(n) ∝ exp(−(f_n − f_min) / (T · f_min)) (``scheduler/online.py: soft_greedy``), for a few
temperatures T. Every policy replays the same arrivals; the table shows the mean service
delay over ``--seeds`` traces per load, and the JSON keeps every trace's mean.

    python tools/stale_gossip_sim.py                 # the table, and runs/stale_gossip.json
    python tools/stale_gossip_sim.py --gossip 0.1    # fresher gossip: greedy catches up
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

CAPACITIES = np.array([50, 25, 18, 32, 28, 21, 50, 17], dtype=np.float64)
STEPS = (10, 19)
TEMPERATURES = (0.0, 0.1, 0.2, 0.3, 0.5)  # 0: deterministic greedy


def simulate(
    load: float,
    temperature: float,
    seed: int,
    duration_s: float,
    gossip_s: float,
    scale: float,
) -> float:
    """Mean service delay (s) of one trace under one policy."""
    speed = CAPACITIES * scale
    n = speed.size
    arrivals = np.random.default_rng(seed)
    rate = load * speed.sum() / ((STEPS[0] + STEPS[1]) / 2)
    choices = np.random.default_rng(seed + 1_000_003)  # the policy's own draws
    phase = np.random.default_rng(seed + 7).uniform(0.0, gossip_s, n)
    free_at = np.zeros(n)  # when each server's queue empties
    history: list[list[tuple[float, float]]] = [[] for _ in range(n)]  # (arrival, finish)
    report = np.zeros(n)  # backlog (s) in each server's last report
    reported_at = np.full(n, -np.inf)
    sent = np.zeros((n, n))  # [origin, server] steps sent since the server's last report
    delays = []
    t = 0.0
    while True:
        t += arrivals.exponential(1.0 / rate)
        if t > duration_s:
            break
        origin = int(arrivals.integers(0, n))
        steps = int(arrivals.integers(STEPS[0], STEPS[1] + 1))
        last = phase + np.floor((t - phase) / gossip_s) * gossip_s  # each server's last report
        for server in np.flatnonzero(last > reported_at):
            at = last[server]
            ends = [end for (arrived, end) in history[server] if arrived <= at]
            report[server] = max(0.0, max(ends, default=at) - at)
            reported_at[server] = at
            sent[:, server] = 0.0
        seen = report + sent[origin] / speed
        seen[origin] = max(0.0, free_at[origin] - t)  # its own queue: exact
        finish = seen + steps / speed
        if temperature <= 0.0:
            target = int(np.argmin(finish))
        else:
            best = finish.min()
            weights = np.exp(-(finish - best) / (temperature * max(best, 0.05)))
            target = int(choices.choice(n, p=weights / weights.sum()))
        end = max(t, free_at[target]) + steps / speed[target]
        free_at[target] = end
        history[target].append((t, end))
        sent[origin, target] += steps
        delays.append(end - t)
    return float(np.mean(delays))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", nargs="+", type=float, default=[0.6, 0.9, 1.2])
    parser.add_argument("--temperatures", nargs="+", type=float, default=list(TEMPERATURES))
    parser.add_argument("--seeds", type=int, default=20, help="traces per load")
    parser.add_argument("--duration", type=float, default=13.0, help="s of arrivals per trace")
    parser.add_argument("--gossip", type=float, default=1.0, help="gossip interval, s")
    parser.add_argument("--scale", type=float, default=0.4, help="steps/s per capacity unit")
    parser.add_argument("--json", type=Path, default=Path("runs/stale_gossip.json"))
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.gossip <= 0 or args.duration <= 0:
        parser.error("--seeds, --gossip and --duration must be positive")
    results: dict[str, dict[str, list[float]]] = {}
    for load in args.loads:
        results[f"{load:g}"] = {
            f"{temp:g}": [
                simulate(load, temp, seed, args.duration, args.gossip, args.scale)
                for seed in range(args.seeds)
            ]
            for temp in args.temperatures
        }
    table = Table(title=f"mean service delay (s), gossip every {args.gossip:g} s (MODEL)")
    table.add_column("load", justify="right")
    for temp in args.temperatures:
        table.add_column("greedy" if temp <= 0 else f"T={temp:g}", justify="right")
    for load, row in results.items():
        greedy = np.mean(row.get("0", [np.nan]))
        cells = []
        for means in row.values():
            ratio = np.mean(means) / greedy if np.isfinite(greedy) else np.nan
            cells.append(f"{np.mean(means):.2f} ({ratio:.2f})")
        table.add_row(load, *cells)
    console = Console()
    console.print(table)
    console.print(
        f"mean over {args.seeds} traces of {args.duration:g} s; (ratio to greedy). "
        "A model of the benchmark's cluster, not a measurement of the agents."
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"settings": {k: str(v) for k, v in vars(args).items()}, "mean_delay_s": results}
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
