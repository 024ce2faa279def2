"""Draw the cluster twin's figures from the committed JSON of ``tools/bench_twin.py``.

Reads only the JSON (no twin run), so the figures in docs/results.md can be redrawn in
seconds:

    python tools/plot_twin.py            # docs/results/twin_{cells,gossip,replay}.png

- ``twin_cells.png``  (``--part cells``):  mean delay / omniscient vs load, a panel per size.
- ``twin_gossip.png`` (``--part gossip``): gossip cost, report age and failure detection vs N.
- ``twin_replay.png`` (``--part replay``): the twin's mean delay vs the 8 agents' measured one.

A missing input is skipped with a message; the others are still drawn.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

DPI = 100
# Known policies in a fixed order and colour; a policy not listed (a new one) is drawn after.
STYLE: dict[str, dict[str, Any]] = {
    "pod2": {"color": "#d62728", "lw": 3.0, "marker": "o", "zorder": 5},
    "soft-greedy": {"color": "#1f77b4", "marker": "s"},
    "greedy": {"color": "#ff7f0e", "marker": "^"},
    "greedy+steal": {"color": "#2ca02c", "marker": "v"},
    "steal": {"color": "#9467bd", "marker": "D"},
    "least-loaded": {"color": "#8c564b", "marker": "<"},
    "lad": {"color": "#000000", "marker": "x", "ls": "--"},
    "sac": {"color": "#7f7f7f", "marker": "x", "ls": "--"},
    "dqn": {"color": "#bcbd22", "marker": "x", "ls": "--"},
    "round-robin": {"color": "#c7c7c7", "marker": ".", "ls": ":"},
    "random": {"color": "#aaaaaa", "marker": ".", "ls": ":"},
    "local": {"color": "#888888", "marker": ".", "ls": ":"},
}
BLIND = ("round-robin", "random", "local")  # placement blind to load: up to 168x at 8 boxes
MODE_LABEL = {"full": "all-to-all", "partial": "partial view (SWIM-style)"}


def _style(name: str, k: int) -> dict[str, Any]:
    base = {"lw": 1.4, "ms": 4, "ls": "-", "zorder": 3}
    fallback = {"color": plt.get_cmap("tab20")(k % 20), "marker": "*"}
    return base | STYLE.get(name, fallback)


def _ordered(names: set[str]) -> list[str]:
    known = [p for p in STYLE if p in names]
    return known + sorted(names - set(known))


def plot_cells(data: dict[str, Any], path: Path) -> None:
    """(a) mean delay / omniscient vs load, one panel per cluster size, log y."""
    table = data["table"]
    settings = data.get("settings", {})
    sizes = sorted({t["boxes"] for t in table})
    names = _ordered({t["policy"] for t in table} - {"omniscient"})
    by = {(t["boxes"], t["load"], t["policy"]): t for t in table}
    cols = 2 if len(sizes) > 1 else 1
    rows = -(-len(sizes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3.4 * rows + 0.9), squeeze=False)
    for ax, n in zip(axes.flat, sizes, strict=False):
        loads = sorted({t["load"] for t in table if t["boxes"] == n})
        top = 1.2
        for k, name in enumerate(names):
            pts = [(x, by[(n, x, name)]["mean_ratio"]) for x in loads if (n, x, name) in by]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=name, **_style(name, k))
                top = top if name in BLIND else max(top, *ys)
        ax.axhline(1.0, color="black", lw=0.8, label="omniscient")
        ax.axhline(1.10, color="#7b3294", lw=1.0, ls="-.", label="goal 1.10")
        ax.set_yscale("log")
        # The blind placements would squash the panel: the axis follows the others.
        ax.set_ylim(0.8, top * 1.25)
        _ratio_ticks(ax, 0.8, top * 1.25)
        ax.set_xticks(loads)
        ax.set_title(f"{n} boxes", fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(sizes) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean delay ÷ omniscient")
    for ax in axes[-1, :]:
        ax.set_xlabel("offered load")
    seen: dict[str, Any] = {}  # label -> handle, over all panels (sac/dqn: 8 boxes only)
    for ax in axes.flat:
        handles, labels = ax.get_legend_handles_labels()
        for handle, label in zip(handles, labels, strict=True):
            seen.setdefault(label, handle)
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncols=7, fontsize=8, frameon=False)
    fig.suptitle(
        f"Cluster twin (a MODEL), paper speed spread: {settings.get('tasks', '?')} tasks x "
        f"{settings.get('seeds', '?')} seeds per cell, {settings.get('gossip_s', 1):g} s gossip. "
        "Blind placements above the axis are cut off.",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save(fig, path)


def _ratio_ticks(ax: Axes, lo: float, hi: float) -> None:
    """Plain labelled ticks on a log ratio axis (matplotlib labels only 1 and 10 otherwise)."""
    ticks = [t for t in (0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 3, 5, 10, 20, 50, 100) if lo <= t <= hi]
    if len(ticks) > 8:
        ticks = [t for t in ticks if t not in (0.8, 0.9, 1.1, 1.25, 3)]
    _plain_ticks(ax.yaxis, ticks)


def _plain_ticks(axis: Any, ticks: list[float]) -> None:
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def plot_gossip(data: dict[str, Any], path: Path) -> None:
    """(b) per-box gossip messages and kB/s, report age and failure detection vs N."""
    rows = data["gossip"]
    modes = [m for m in MODE_LABEL if any(r["mode"] == m for r in rows)]
    sizes = sorted({r["boxes"] for r in rows})

    def mean(mode: str, n: int, key: str, scale: float = 1.0) -> float:
        vals = [r[key] for r in rows if r["mode"] == mode and r["boxes"] == n]
        return statistics.fmean(vals) * scale if vals else float("nan")

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels: list[tuple[Axes, str, float, str]] = [  # log y: all-to-all grows as N
        (axes[0, 0], "msgs_per_box_s", 1.0, "messages sent per box per s"),
        (axes[0, 1], "bytes_per_box_s", 1e-3, "kB sent per box per s"),
        (axes[1, 0], "report_age_s", 1.0, "mean age of the reports a decision uses, s"),
    ]
    colours = {"full": "#ff7f0e", "partial": "#1f77b4"}
    for ax, key, scale, label in panels:
        for mode in modes:
            ys = [mean(mode, n, key, scale) for n in sizes]
            ax.plot(sizes, ys, marker="o", color=colours[mode], label=MODE_LABEL[mode])
        ax.set_ylabel(label)
        ax.set_yscale("log")
    _plain_ticks(axes[1, 0].yaxis, [0.25, 0.5, 1, 2, 4, 8, 16])
    ax = axes[1, 1]
    for mode in modes:
        for key, ls, what in (("detect_first_s", "--", "first box"), ("detect_all_s", "-", "all")):
            ys = [mean(mode, n, key) for n in sizes]
            name = MODE_LABEL[mode].split(" (")[0]
            ax.plot(sizes, ys, marker="o", ls=ls, color=colours[mode], label=f"{name}: {what}")
    interval = float(data.get("settings", {}).get("gossip_s", 1.0))
    ax.axhline(5 * interval, color="black", lw=0.8, ls=":", label="goal at 128 boxes: 5 intervals")
    ax.set_ylabel("failure seen after, s")
    ax.set_ylim(bottom=0)
    for ax in axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("boxes N")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Gossip vs N in the cluster twin (a MODEL): {interval:g} s interval, load 0.7, "
        "one box fails a third of the way in; mean over seeds",
        fontsize=9,
    )
    fig.tight_layout()
    save(fig, path)


def plot_replay(data: dict[str, Any], path: Path) -> None:
    """(d) twin mean vs measured mean delay, a point per policy x load, ±15 % band."""
    rows = data["replay"]
    names = _ordered({r["policy"] for r in rows})
    loads = sorted({r["load"] for r in rows})
    markers = dict(zip(loads, ("o", "s", "^", "D", "v"), strict=False))
    fig, ax = plt.subplots(figsize=(7, 6))
    hi = 1.1 * max(max(r["measured_mean_s"], r["twin_mean_s"]) for r in rows)
    lo = 0.9 * min(min(r["measured_mean_s"], r["twin_mean_s"]) for r in rows)
    line = [lo, hi]
    ax.plot(line, line, color="black", lw=0.8)
    ax.fill_between(line, [x * 0.85 for x in line], [x * 1.15 for x in line], color="0.9")
    palette = plt.get_cmap("tab10")
    for k, name in enumerate(names):
        colour = palette(k % 10)  # distinct colours: the blind placements are here too
        for r in (r for r in rows if r["policy"] == name):
            out = abs(r["twin_over_measured"] - 1) > 0.15
            ax.scatter(
                r["measured_mean_s"], r["twin_mean_s"], marker=markers.get(r["load"], "o"),
                color=colour, edgecolors="red" if out else colour, linewidths=1.5, s=45, zorder=3,
            )  # fmt: skip
        ax.scatter([], [], color=colour, marker="o", label=name)
    for load in loads:
        ax.scatter([], [], color="white", edgecolors="black", marker=markers[load], label=f"load {load:g}")  # fmt: skip
    inside = sum(abs(r["twin_over_measured"] - 1) <= 0.15 for r in rows)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured mean delay, 8 emulated agents (s)")
    ax.set_ylabel("twin mean delay, same trace (s)")
    ticks = [t for t in (0.5, 1, 1.5, 2, 3, 4, 6, 8, 12) if lo <= t <= hi]
    _plain_ticks(ax.xaxis, ticks)
    _plain_ticks(ax.yaxis, ticks)
    ax.set_title(
        "Twin (a MODEL) vs 8 emulated agents: tools/bench_cluster.py's traces replayed\n"
        f"grey band: ±15 %, {inside} of {len(rows)} cells inside (red edge: outside)",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, ncols=2, loc="upper left")
    fig.tight_layout()
    save(fig, path)


def save(fig: Figure, path: Path) -> None:
    """A 256-colour PNG: a third of the size of matplotlib's RGBA for these line plots."""
    from PIL import Image  # matplotlib's own dependency

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(256).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


PARTS: dict[str, tuple[str, str, Callable[[dict[str, Any], Path], None]]] = {
    "cells": ("bench_twin.json", "twin_cells.png", plot_cells),
    "gossip": ("bench_twin_gossip.json", "twin_gossip.png", plot_gossip),
    "replay": ("bench_twin_replay.json", "twin_replay.png", plot_replay),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="+", choices=tuple(PARTS), default=list(PARTS))
    parser.add_argument("--results", type=Path, default=Path("docs/results"), help="JSON in")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="PNGs out")
    args = parser.parse_args(argv)
    missing = 0
    for part in args.part:
        source, target, draw = PARTS[part]
        path = args.results / source
        if not path.exists():
            print(f"skipped {part}: no {path}", file=sys.stderr)
            missing += 1
            continue
        draw(json.loads(path.read_text()), args.out / target)
    return 2 if missing == len(args.part) else 0


if __name__ == "__main__":
    raise SystemExit(main())
