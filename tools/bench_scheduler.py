"""Scheduler benchmark: seconds per episode (speed) and learning quality, paper preset.

    python tools/bench_scheduler.py speed   [--episodes 4] [--threads 1 2] [--out docs/bench_scheduler_speed.json]
    python tools/bench_scheduler.py quality [--episodes 300] [--seeds 0 1 2] [--out docs/results]

Speed: every method runs side by side in one process on the same task streams; the first
episode (warm-up: buffers filling, no updates yet) is excluded; the median of the rest is
reported, with the authors' published timings (shared/reference/authors_code_timings.md) for
the ratio. Quality: ``compare`` of every method per seed; final mean delay over the last 50
episodes, ratio to Opt-TS, episodes until within 5 % of the final value. Prints a table and
writes JSON (and, for quality, metrics per seed and a learning-curve plot).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from dedgeai.scheduler.config import Switches, get_preset
from dedgeai.scheduler.report import converged_label, summarize
from dedgeai.scheduler.simulate import METHOD_TITLES, METHODS, EpisodeStats, train

AUTHORS_SECONDS_PER_EPISODE = {
    "lad": 42.0,
    "sac": 10.0,
    "dqn": 3.4,
    "opt": 0.7,
}  # 2-core CPU, same machine type
console = Console()


@dataclass(frozen=True)
class SpeedScenario:
    method: str
    threads: int
    episodes: int


def run_speed(scenario: SpeedScenario, seed: int) -> dict[str, object]:
    torch.set_num_threads(scenario.threads)
    started = time.perf_counter()
    _, history = train(
        scenario.method, get_preset("paper"), Switches(), seed, scenario.episodes + 1
    )
    timed = [s.seconds for s in history[1:]]
    median = statistics.median(timed)
    authors = AUTHORS_SECONDS_PER_EPISODE.get(scenario.method)
    return {
        "method": scenario.method,
        "threads": scenario.threads,
        "episodes_timed": len(timed),
        "seconds_per_episode_median": median,
        "seconds_per_episode_all": timed,
        "decisions_per_episode": history[-1].n_decisions,
        "microseconds_per_decision": 1e6 * median / history[-1].n_decisions,
        "speedup_vs_authors": None if authors is None else authors / median,
        "episodes_500_minutes": 500 * median / 60,
        "wall_s": time.perf_counter() - started,
    }


def speed(args: argparse.Namespace) -> None:
    rows = [
        run_speed(SpeedScenario(m, t, args.episodes), args.seed)
        for t in args.threads
        for m in args.methods
    ]
    table = Table(
        title=f"seconds per episode, paper preset (B=20, 1–50 tasks/server/slot, 60 slots), seed {args.seed}"
    )
    for col in (
        "method",
        "threads",
        "s/episode (median)",
        "µs/decision",
        "× authors' code",
        "500 episodes (min)",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(
            METHOD_TITLES[r["method"]],
            str(r["threads"]),
            f"{r['seconds_per_episode_median']:.3f}",
            f"{r['microseconds_per_decision']:.1f}",
            "—" if r["speedup_vs_authors"] is None else f"{r['speedup_vs_authors']:.0f}×",
            f"{r['episodes_500_minutes']:.1f}",
        )
    console.print(table)
    _write(args.out, {"benchmark": "scheduler-speed", **_machine(), "rows": rows})


def _read_seed_csv(path: Path) -> dict[str, list[EpisodeStats]]:
    history: dict[str, list[EpisodeStats]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            history.setdefault(row["method"], []).append(
                EpisodeStats(
                    method=row["method"],
                    episode=int(row["episode"]),
                    mean_delay_s=float(row["mean_delay_s"]),
                    p95_delay_s=float(row["p95_delay_s"]),
                    n_decisions=0,
                    offloaded_fraction=float(row["offloaded_fraction"]),
                    seconds=float(row["seconds"]),
                    updates=0,
                )
            )
    return history


def quality(args: argparse.Namespace) -> None:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    curves: dict[str, list[list[float]]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        if args.from_csv:  # re-summarise a finished run without re-running it
            history = _read_seed_csv(out_dir / f"metrics_seed{seed}.csv")
            for method in args.methods:
                curves[method].append([s.mean_delay_s for s in history[method]])
            per_seed[seed] = summarize(history)
            continue
        history = {}
        for method in args.methods:
            t0 = time.perf_counter()
            _, history[method] = train(method, get_preset("paper"), Switches(), seed, args.episodes)
            console.print(
                f"seed {seed} {METHOD_TITLES[method]:<14} {time.perf_counter() - t0:7.1f} s  "
                f"last-50 mean {np.mean([s.mean_delay_s for s in history[method][-50:]]):.3f} s"
            )
            curves[method].append([s.mean_delay_s for s in history[method]])
        per_seed[seed] = summarize(history)
        with (out_dir / f"metrics_seed{seed}.csv").open("w") as f:
            f.write("method,episode,mean_delay_s,p95_delay_s,offloaded_fraction,seconds\n")
            for method, stats in history.items():
                for s in stats:
                    f.write(
                        f"{method},{s.episode},{s.mean_delay_s:.5f},{s.p95_delay_s:.5f},"
                        f"{s.offloaded_fraction:.4f},{s.seconds:.4f}\n"
                    )
    aggregate = {}
    for method in args.methods:
        finals = [per_seed[s][method]["final_mean_delay_s"] for s in args.seeds]
        ratios = [per_seed[s][method].get("ratio_to_opt", float("nan")) for s in args.seeds]
        conv = [per_seed[s][method]["converged_episode"] for s in args.seeds]
        aggregate[method] = {
            "final_mean_delay_s": finals,
            "ratio_to_opt": ratios,
            "converged_episode": conv,
            "final_mean_delay_s_mean": float(np.mean(finals)),
            "ratio_to_opt_mean": float(np.mean(ratios)),
            # None: not a learner, or not converged within the run (scheduler/report.py)
            "converged_episode_median": float(np.median(conv)) if None not in conv else None,
        }
    table = Table(
        title=f"paper preset, corrected defaults, {args.episodes} episodes, seeds {args.seeds}: last 50 episodes"
    )
    for col in (
        "method",
        "final delay (s) per seed",
        "× Opt-TS per seed",
        "converged (ep) per seed",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, row in sorted(aggregate.items(), key=lambda kv: kv[1]["final_mean_delay_s_mean"]):
        table.add_row(
            METHOD_TITLES[method],
            " ".join(f"{v:.3f}" for v in row["final_mean_delay_s"]),
            " ".join(f"{v:.3f}" for v in row["ratio_to_opt"]),
            " ".join(converged_label(per_seed[s][method]) for s in args.seeds),
        )
    console.print(table)
    _write(
        out_dir / "quality.json",
        {
            "benchmark": "scheduler-quality",
            **_machine(),
            "episodes": args.episodes,
            "seeds": args.seeds,
            "aggregate": aggregate,
            "per_seed": per_seed,
        },
    )
    _plot(out_dir / "learning.png", curves, args)


def _plot(path: Path, curves: dict[str, list[list[float]]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dedgeai.scheduler.report import smoothed

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    for method, runs in curves.items():
        mean = np.mean(np.array(runs), axis=0)
        ax.plot(
            np.arange(1, mean.size + 1),
            smoothed(mean),
            "--" if method == "opt" else "-",
            label=METHOD_TITLES[method],
            linewidth=1.5,
        )
    ax.set_xlabel("episode")
    ax.set_ylabel("mean service delay (s)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 30))
    ax.set_title(f"Learning performance, paper preset, seeds {args.seeds}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": __import__("os").cpu_count(),
    }


def _write(path: str | Path, payload: dict[str, object]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--episodes", type=int, default=4)
    sp.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    sp.add_argument(
        "--methods", nargs="+", default=["lad", "d2sac", "sac", "dqn", "opt"], choices=METHODS
    )
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default="docs/bench_scheduler_speed.json")
    qp = sub.add_parser("quality")
    qp.add_argument("--episodes", type=int, default=300)
    qp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    qp.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    qp.add_argument("--out", default="docs/results")
    qp.add_argument("--from-csv", action="store_true", help="summarise OUT/metrics_seed*.csv again")
    args = parser.parse_args()
    speed(args) if args.mode == "speed" else quality(args)


if __name__ == "__main__":
    main()
