"""``dedgeai sim``: train and compare schedulers on the paper's simulated edge system."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dedgeai.agent.client.sim_output import MetricsWriter, plot_learning, write_summary
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.scheduler.checkpoints import load_trained, save_trained
from dedgeai.scheduler.config import PRESETS, Preset, Switches, get_preset
from dedgeai.scheduler.env import state_dim
from dedgeai.scheduler.errors import SchedulerError
from dedgeai.scheduler.heuristics import Scheduler
from dedgeai.scheduler.learner import SlotLearner
from dedgeai.scheduler.report import summarize
from dedgeai.scheduler.simulate import LEARNERS, METHOD_TITLES, METHODS, EpisodeStats, train

app = typer.Typer(
    help="Train and compare schedulers on the paper's simulated edge system.", no_args_is_help=True
)
err = Console(stderr=True)
console = Console()

PresetOpt = Annotated[str, typer.Option(help=f"System preset: {', '.join(PRESETS)}.")]
EpisodesOpt = Annotated[int, typer.Option(help="Episodes to run (each 59 slots of arrivals).")]
SeedOpt = Annotated[
    int, typer.Option(help="Seed of the task streams and of every method's randomness.")
]
OutOpt = Annotated[Path, typer.Option(help="Output directory (created if missing).")]
ServersOpt = Annotated[
    int | None, typer.Option(help="Number of edge servers B (default: the preset's).")
]
RefOpt = Annotated[
    bool,
    typer.Option(
        "--reference-compatible", help="Reproduce the authors' code (bugs B1–B6 included)."
    ),
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code=ExitCode.BAD_INPUT)


def _check(episodes: int) -> None:
    if episodes <= 0:
        raise _fail(f"--episodes must be > 0, got {episodes}")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[delay]}"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def _run(
    names: list[str],
    episodes: int,
    seed: int,
    preset_name: str,
    servers: int | None,
    reference: bool,
    out_dir: Path,
    resume: Path | None = None,
) -> tuple[Preset, Switches, dict[str, list[EpisodeStats]], dict[str, Scheduler]]:
    preset = get_preset(preset_name, servers)
    switches = Switches.reference() if reference else Switches()
    initial = None
    if resume is not None:
        initial = load_trained(
            resume,
            names[0],
            preset.env.n_servers,
            state_dim(preset.env.n_servers, switches.inslot_load_in_state),
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = MetricsWriter(out_dir / "metrics.csv")
    history: dict[str, list[EpisodeStats]] = {}
    learners: dict[str, Scheduler] = {}
    try:
        with _progress() as progress:
            for name in names:
                task = progress.add_task(METHOD_TITLES[name], total=episodes, delay="")

                def on_episode(stats: EpisodeStats, task: TaskID = task) -> None:
                    writer.write(stats)
                    progress.update(task, advance=1, delay=f"{stats.mean_delay_s:6.2f} s")

                learners[name], history[name] = train(
                    name, preset, switches, seed, episodes, on_episode, initial
                )
    finally:
        writer.close()
    return preset, switches, history, learners


def _table(summary: dict[str, dict[str, float]], title: str) -> Table:
    table = Table(title=title)
    for column in (
        "method",
        "final delay (s)",
        "p95 (s)",
        "× Opt-TS",
        "converged (ep)",
        "offloaded",
        "s/episode",
    ):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, row in sorted(summary.items(), key=lambda kv: kv[1]["final_mean_delay_s"]):
        ratio = row.get("ratio_to_opt")
        table.add_row(
            METHOD_TITLES.get(method, method),
            f"{row['final_mean_delay_s']:.3f}",
            f"{row['final_p95_delay_s']:.2f}",
            "—" if ratio is None else f"{ratio:.3f}",
            str(row["converged_episode"]),
            f"{row['offloaded_fraction']:.0%}",
            f"{row['seconds_per_episode_median']:.3f}",
        )
    return table


@app.command("train")
def train_cmd(
    out: OutOpt,
    method: Annotated[str, typer.Option(help=f"One of: {', '.join(METHODS)}.")] = "lad",
    episodes: EpisodesOpt = 100,
    seed: SeedOpt = 0,
    preset: PresetOpt = "paper",
    servers: ServersOpt = None,
    reference_compatible: RefOpt = False,
    resume: Annotated[
        Path | None, typer.Option(help="Continue from a policy.pt written by this command.")
    ] = None,
) -> None:
    """Train one method; writes OUT/metrics.csv and, for learners, OUT/policy.pt."""
    _check(episodes)
    if method not in METHODS:
        raise _fail(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if resume is not None and method not in LEARNERS:
        raise _fail(f"--resume needs a learning method ({', '.join(LEARNERS)}), not {method!r}")
    try:
        _, _, history, learners = _run(
            [method], episodes, seed, preset, servers, reference_compatible, out, resume
        )
        learner = learners[method]
        if isinstance(learner, SlotLearner):
            save_trained(out / "policy.pt", learner, method, episodes, seed)
    except SchedulerError as exc:
        raise _fail(str(exc)) from exc
    summary = summarize(history)
    write_summary(out / "summary.json", {"preset": preset, "seed": seed, "methods": summary})
    console.print(_table(summary, f"{METHOD_TITLES[method]}, preset {preset}, seed {seed}"))
    written = ["metrics.csv", "summary.json"] + (["policy.pt"] if method in LEARNERS else [])
    console.print(f"wrote {', '.join(str(out / name) for name in written)}")


@app.command("compare")
def compare_cmd(
    out: OutOpt,
    episodes: EpisodesOpt = 30,
    seed: SeedOpt = 0,
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods (default: all).")
    ] = ",".join(METHODS),
    preset: PresetOpt = "paper",
    servers: ServersOpt = None,
    reference_compatible: RefOpt = False,
) -> None:
    """Every method on the same task streams: metrics.csv, summary.json, learning.png and a table."""
    _check(episodes)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise _fail(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}"
        )
    try:
        preset_cfg, switches, history, _ = _run(
            names, episodes, seed, preset, servers, reference_compatible, out
        )
    except SchedulerError as exc:
        raise _fail(str(exc)) from exc
    summary = summarize(history)
    title = f"preset {preset} (B={preset_cfg.env.n_servers}), seed {seed}, {episodes} episodes" + (
        ", reference-compatible" if reference_compatible else ""
    )
    write_summary(
        out / "summary.json",
        {
            "preset": preset,
            "env": dataclasses.asdict(preset_cfg.env),
            "switches": switches.as_dict(),
            "seed": seed,
            "episodes": episodes,
            "methods": summary,
        },
    )
    plot_learning(out / "learning.png", history, title)
    console.print(_table(summary, title))
    console.print(f"wrote {out / 'metrics.csv'}, {out / 'summary.json'}, {out / 'learning.png'}")
