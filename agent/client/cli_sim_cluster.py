"""``dedgeai sim train --env cluster``: train the daemon's learned scheduler in the cluster twin.

The twin (``scheduler/twin.py``) runs the agent's own decision code (``ClusterScheduler``)
on simulated boxes, so the checkpoint written here is what an agent loads as its
``policy_checkpoint``. Importing this module is light; the twin is imported in ``train``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

SPREADS = ("paper", "jetson-rtx")  # scheduler/twin_scenarios.py presets
MAX_BOXES = 1024
MAX_HOURS = 1000.0
MAX_TRAIN_STEPS_PER_S = 100.0
ACTORS = ("ladn", "scorer")  # lad's actor: the paper's network, or the per-server scorer


def check(
    method: str,
    boxes: int,
    spread: str,
    hours: float,
    learned: tuple[str, ...],
    train_steps_per_s: float,
    actor: str = "ladn",
) -> str:
    """The first thing wrong with these options, or "" (checked before any work)."""
    if actor not in ACTORS:
        return f"--actor must be one of {', '.join(ACTORS)}, got {actor!r}"
    if actor == "scorer" and method != "lad":
        return f"--actor scorer is an actor of the lad policy, not of {method!r}"
    if method not in learned:
        return (
            f"--env cluster trains a learned daemon policy ({', '.join(learned)}), not {method!r}"
        )
    if not 2 <= boxes <= MAX_BOXES:
        return f"--boxes must be in 2..{MAX_BOXES}, got {boxes}"
    if spread not in SPREADS:
        return f"--spread must be one of {', '.join(SPREADS)}, got {spread!r}"
    if not 0 < hours <= MAX_HOURS:  # NaN fails every comparison
        return f"--hours must be in (0, {MAX_HOURS:g}], got {hours}"
    if not 0 < train_steps_per_s <= MAX_TRAIN_STEPS_PER_S:
        return f"--train-steps-per-s must be in (0, {MAX_TRAIN_STEPS_PER_S:g}], got {train_steps_per_s}"
    return ""


def train(
    out: Path,
    method: str,
    boxes: int,
    spread: str,
    hours: float,
    train_steps_per_s: float,
    seed: int,
    resume: Path | None,
    console: Console,
    err: Console,
    actor: str = "ladn",
) -> None:
    """Train, then write OUT/policy.pt, summary.json and learning.png, and print a table.
    ``actor = "scorer"``: the per-server scorer (any cluster size; the agent's
    ``lad_actor = "scorer"``), from its warm start on the paper's spread."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from dedgeai.scheduler import twin_scenarios
    from dedgeai.scheduler.twin_train import SEGMENT_S, TRAIN_LOADS, train_in_twin

    make = twin_scenarios.paper if spread == "paper" else twin_scenarios.jetson_rtx
    scenario = make(boxes)
    segments = max(1, math.ceil(hours * 3600.0 / SEGMENT_S))
    label = f"{method} ({actor})" if actor != "ladn" else method
    progress = Progress(
        TextColumn(f"[bold]{label} in the twin, {scenario.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        console=err,
    )
    with progress:
        bar = progress.add_task("segments", total=segments, last="")

        def advanced(segment: dict[str, Any]) -> None:
            last = f"load {segment['load']:.1f}: mean {segment['mean_s']:.2f} s"
            progress.update(bar, advance=1, last=last)

        path, stats = train_in_twin(
            scenario,
            out / "policy.pt",
            method=method,
            hours=hours,
            seed=seed,
            start=resume,
            train_steps_per_box_s=train_steps_per_s,
            cache_dir=out / "cache",
            on_segment=advanced,
            actor=actor,
        )
    summary = {
        "env": "cluster",
        "method": method,
        "actor": actor,
        "scenario": scenario.name,
        "boxes": boxes,
        "capacities_steps_per_s": [round(float(c), 4) for c in scenario.capacities],
        "seed": seed,
        "simulated_s": stats.simulated_s,
        "tasks": stats.tasks,
        "rewards": stats.rewards,
        "trained_steps": stats.trained_steps,
        "wall_s": round(stats.wall_s, 2),
        "segment_s": SEGMENT_S,
        "segments": stats.segments,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(out / "learning.png", stats.segments, f"{label} trained in the twin, {scenario.name}")
    console.print(_table(stats.segments, TRAIN_LOADS, f"{label}, {scenario.name}, seed {seed}"))
    console.print(
        f"{stats.tasks:,} simulated tasks in {stats.wall_s:.1f} s, {stats.trained_steps:,} "
        f"updates; wrote {path}, {out / 'summary.json'}, {out / 'learning.png'}\n"
        f"an agent of a {'' if actor == 'scorer' else f'{boxes}-box '}cluster loads it with "
        f"policy = {method!r}{', lad_actor = ' + repr(actor) if actor != 'ladn' else ''} and "
        f"policy_checkpoint = {str(path)!r}"
    )


def _table(segments: list[dict[str, Any]], loads: tuple[float, ...], title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("load", justify="right")
    table.add_column("segments", justify="right")
    table.add_column("first mean (s)", justify="right")
    table.add_column("last mean (s)", justify="right")
    for load in loads:
        rows = [s for s in segments if s["load"] == load]
        if rows:
            first, last = rows[0]["mean_s"], rows[-1]["mean_s"]
            table.add_row(f"{load:.1f}", str(len(rows)), f"{first:.3f}", f"{last:.3f}")
    return table


def _plot(path: Path, segments: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for load in sorted({s["load"] for s in segments}):
        points = [(i, s["mean_s"]) for i, s in enumerate(segments) if s["load"] == load]
        ax.plot(*zip(*points, strict=True), marker="o", label=f"load {load:.1f}")
    ax.set_xlabel("training segment (simulated time)")
    ax.set_ylabel("mean service delay (s)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
