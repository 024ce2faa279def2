"""Draw the Table II analogue from the committed JSON of ``tools/bench_table2.py``.

Makespan vs task count (1 / 100 / 500 / 1,000 tasks on 5 boxes), drawn as makespan ÷ |N|
(seconds per task: on a log-log plot of the makespan the rows that matter overlap), a panel
per per-step speed profile: LAD-TS (warm start), the best heuristic, local-only and one box serial; on the
paper-calibrated panel, the paper's DEdgeAI and Stability.AI rows, and the 5-real-agent
100-task case when its JSON exists (``--real``; makespan x speedup, i.e. paper seconds).
Reads only JSON, runs nothing:

    python tools/plot_table2.py          # docs/results/table2.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot_twin import save  # noqa: E402

# The paper's Table II (../shared/paper.md §4.3), the same figures as tools/bench_table2.py.
PAPER_ROW_S = {1: 18.3, 100: 382.4, 500: 1921.5, 1000: 3895.4}  # DEdgeAI (reSD3-m prototype)
STABILITY_ROW_S = {1: 5.4, 100: 540.0, 500: 2700.0, 1000: 5400.0}  # 1-task median x N
HEURISTICS = ("greedy", "soft-greedy", "pod2", "greedy+steal")
LINES = {  # policy row -> label, style
    "lad": ("LAD-TS (warm start)", {"color": "#000000", "marker": "x", "ls": "--"}),
    "best heuristic": ("best heuristic", {"color": "#d62728", "marker": "o", "lw": 2.5}),
    "local": ("local-only", {"color": "#1f77b4", "marker": "s", "ls": "-", "ms": 7, "mfc": "none"}),
    "one box serial": ("one box serial", {"color": "#7f7f7f", "marker": ".", "ls": ":"}),
}
REAL_MARKERS = ("P", "X", "*", "h", "d")


def best_rows(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per task count, the heuristic row with the smallest makespan."""
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["policy"] in HEURISTICS:
            n = r["tasks"]
            if n not in best or r["makespan_s"] < best[n]["makespan_s"]:
                best[n] = r
    return best


def _panel(ax: Axes, profile: str, rows: list[dict[str, Any]], speed: float | None) -> None:
    counts = sorted({r["tasks"] for r in rows})
    by = {(r["tasks"], r["policy"]): r for r in rows}
    best = best_rows(rows)
    for key, (label, style) in LINES.items():
        found = {n: best.get(n) if key == "best heuristic" else by.get((n, key)) for n in counts}
        pts = [(n, r["makespan_s"] / n) for n, r in found.items() if r is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, label=label, zorder=3, **({"lw": 1.4, "ms": 5} | style))
    for n, r in best.items():
        if n == 1:
            continue  # one task: every policy runs it where it arrives
        offset = (-24, 7) if n == 500 else (4, -12)  # 500 and 1,000 are close on a log axis
        ax.annotate(r["policy"], (n, r["makespan_s"] / n), textcoords="offset points",
                    xytext=offset, fontsize=7, color="#d62728")  # fmt: skip
    if profile == "paper-calibrated":
        for row, label, style in (
            (PAPER_ROW_S, "paper: DEdgeAI (prototype)", {"color": "#2ca02c", "marker": "D"}),
            (STABILITY_ROW_S, "paper: Stability.AI (1-task median x N)",
             {"color": "#9467bd", "marker": "^", "ls": "-."}),
        ):  # fmt: skip
            ns = [n for n in counts if n in row]
            ax.plot(ns, [row[n] / n for n in ns], label=label, lw=1.2, ms=5, zorder=2, **style)
    rate = f", {speed:.3g} steps/s per box" if speed else ""
    ax.set_title(f"{profile}{rate}", fontsize=9)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.minorticks_off()
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.grid(True, alpha=0.3)


def _real_points(ax: Axes, real: dict[str, Any]) -> None:
    """The 5-real-agent case, in paper seconds (makespan x the run's speed-up)."""
    speedup = float(real.get("speedup_over_paper_calibrated", 1.0))
    cases = real.get("cases", [])
    case = next((c for c in cases if c.get("origins") == "one"), cases[0] if cases else None)
    if case is None:
        return
    for k, r in enumerate(case["rows"]):
        if r.get("makespan_s") is None:
            continue
        n = int(r.get("tasks", 100))
        ax.scatter(
            [n], [float(r["makespan_s"]) * speedup / n], marker=REAL_MARKERS[k % len(REAL_MARKERS)],
            s=60, color="#ff7f0e", edgecolors="black", linewidths=0.6, zorder=6,
            label=f"5 EMULATED agents, {r['policy']} (x speed-up"
            + ("; not scale-free)" if r["policy"] in ("lad", "sac", "dqn") else ")"),
        )  # fmt: skip


def plot(data: dict[str, Any], path: Path, real: dict[str, Any] | None = None) -> None:
    speeds: dict[str, float] = data.get("steps_per_s", {})
    profiles = list(dict.fromkeys([*speeds, *(r["profile"] for r in data["rows"])]))
    cols = 2 if len(profiles) > 1 else 1
    nrows = -(-len(profiles) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(10, 3.6 * nrows + 0.6), squeeze=False)
    for ax, profile in zip(axes.flat, profiles, strict=False):
        rows = [r for r in data["rows"] if r["profile"] == profile]
        _panel(ax, profile, rows, speeds.get(profile))
        if real is not None and profile == "paper-calibrated":
            _real_points(ax, real)
    for ax in axes.flat[len(profiles) :]:
        ax.set_visible(False)
    seen: dict[str, Any] = {}  # label -> handle, over all panels
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncols=3, fontsize=8, frameon=False)
    for ax in axes[:, 0]:
        ax.set_ylabel("makespan ÷ |N|, s per task")
    origins = data.get("settings", {}).get("origins", "one")
    where = "to box 0" if origins == "one" else f"from {origins} origins"
    for ax in axes[-1, :]:
        ax.set_xlabel(f"tasks |N|, all submitted at once {where}")
    fig.suptitle(
        "Table II analogue in the cluster twin (a MODEL): 5 identical boxes, 10-19 steps at "
        "512²; makespan = last result back.\nOnly the paper-calibrated panel is comparable "
        "with the paper's rows",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.03 + 0.03 * (-(-len(seen) // 3)), 1, 1))
    save(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=Path("docs/results/bench_table2_twin.json"))
    parser.add_argument(
        "--real", type=Path, default=Path("docs/results/bench_table2_real.json"),
        help="tools/bench_table2.py --real's JSON; drawn when the file exists",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("docs/results/table2.png"))
    args = parser.parse_args(argv)
    if not args.json.exists():
        print(f"no {args.json}: run tools/bench_table2.py first", file=sys.stderr)
        return 2
    real = json.loads(args.real.read_text()) if args.real.exists() else None
    plot(json.loads(args.json.read_text()), args.out, real)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
