"""``dedgeai sim``: train and compare schedulers on the paper's simulated edge system.

Importing this module imports neither torch, numpy nor matplotlib (``dedgeai --help`` stays
light): the simulator, the learners and the plotting are imported inside the commands.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from dedgeai.agent.client.out_paths import unwritable_dir
from dedgeai.agent.exit_codes import ExitCode, exit_code_of
from dedgeai.scheduler.config import PRESETS, Preset, Switches, get_preset
from dedgeai.scheduler.errors import SchedulerError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from dedgeai.scheduler.heuristics import Scheduler
    from dedgeai.scheduler.report import Summary
    from dedgeai.scheduler.simulate import EpisodeStats

# The names of dedgeai.scheduler.simulate.LEARNERS and METHODS, here so that the help needs
# no numpy; tests/scheduler/test_sim_report.py checks that they agree.
LEARNER_NAMES = ("lad", "d2sac", "sac", "dqn")
METHOD_NAMES = (*LEARNER_NAMES, "opt", "local", "random", "round-robin", "least-backlog")
PAPER_SLOTS = PRESETS["paper"].env.n_slots

app = typer.Typer(
    help="Train and compare schedulers on the paper's simulated edge system.", no_args_is_help=True
)
err = Console(stderr=True)
console = Console()

PresetOpt = Annotated[str, typer.Option(help=f"System preset: {', '.join(PRESETS)}.")]
EpisodesOpt = Annotated[
    int,
    typer.Option(
        help=f"Episodes to run (paper preset: {PAPER_SLOTS} slots each, the first "
        f"{PAPER_SLOTS - 1} decided, as in the paper)."
    ),
]
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


def _fail(message: str, code: ExitCode = ExitCode.BAD_INPUT) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def _check(episodes: int, preset: str, servers: int | None) -> Preset:
    if episodes <= 0:
        raise _fail(f"--episodes must be > 0, got {episodes}")
    try:
        return get_preset(preset, servers)
    except SchedulerError as exc:
        raise _fail(str(exc), exit_code_of(exc)[1]) from exc


def _writable_dir(directory: Path, option: str) -> None:
    """Make ``directory`` (with parents) and prove it writable, before any long work."""
    problem = unwritable_dir(directory, option)
    if problem:
        raise _fail(problem)


def _progress() -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

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
    preset: Preset,
    switches: Switches,
    out_dir: Path,
    resume: Path | None = None,
) -> tuple[dict[str, list[EpisodeStats]], dict[str, Scheduler]]:
    from dedgeai.agent.client.sim_output import MetricsWriter
    from dedgeai.scheduler.checkpoints import load_trained
    from dedgeai.scheduler.env import state_dim
    from dedgeai.scheduler.simulate import METHOD_TITLES, train

    initial = None
    if resume is not None:
        initial = load_trained(
            resume,
            names[0],
            preset.env.n_servers,
            state_dim(preset.env.n_servers, switches.inslot_load_in_state),
        )
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
    return history, learners


def _table(summary: dict[str, Summary], title: str) -> Table:
    from dedgeai.scheduler.report import converged_label
    from dedgeai.scheduler.simulate import METHOD_TITLES

    table = Table(
        title=title,
        caption="delay, p95: mean of the final episodes; converged: episode ("
        "— not a learner, > N not within N)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,  # with pad_edge=False: fits 80 columns
    )
    table.add_column("method", no_wrap=True)
    for column in ("delay (s)", "p95 (s)", "× Opt-TS", "converged", "offloaded", "s/ep"):
        table.add_column(column, justify="right", no_wrap=True)
    for method, row in sorted(summary.items(), key=lambda kv: float(kv[1]["final_mean_delay_s"])):
        ratio = row.get("ratio_to_opt")
        table.add_row(
            METHOD_TITLES.get(method, method),
            f"{row['final_mean_delay_s']:.3f}",
            f"{row['final_p95_delay_s']:.2f}",
            "—" if ratio is None else f"{ratio:.3f}",
            converged_label(row),
            f"{row['offloaded_fraction']:.0%}",
            f"{row['seconds_per_episode_median']:.3f}",
        )
    return table


@app.command("train")
def train_cmd(
    out: OutOpt,
    method: Annotated[str, typer.Option(help=f"One of: {', '.join(METHOD_NAMES)}.")] = "lad",
    episodes: EpisodesOpt = 100,
    seed: SeedOpt = 0,
    preset: PresetOpt = "paper",
    servers: ServersOpt = None,
    reference_compatible: RefOpt = False,
    resume: Annotated[
        Path | None, typer.Option(help="Continue from a policy.pt written by this command.")
    ] = None,
    env: Annotated[
        str,
        typer.Option(
            help="paper: the paper's slotted simulator. cluster: the cluster twin, running the "
            "agent's own decision code; its policy.pt is an agent's policy_checkpoint."
        ),
    ] = "paper",
    boxes: Annotated[int, typer.Option(help="--env cluster: boxes in the cluster.")] = 8,
    spread: Annotated[
        str, typer.Option(help="--env cluster: box speeds, paper or jetson-rtx (an estimate).")
    ] = "paper",
    hours: Annotated[
        float, typer.Option(help="--env cluster: hours of simulated traffic (loads 0.5-1.1).")
    ] = 1.0,
    train_steps_per_s: Annotated[
        float,
        typer.Option(help="--env cluster: updates per box per simulated second (the agent's)."),
    ] = 2.0,
    actor: Annotated[
        str,
        typer.Option(
            help="--env cluster, lad: ladn (the paper's network) or scorer (per-server, any size)."
        ),
    ] = "ladn",
) -> None:
    """Train one method: OUT/metrics.csv, summary.json, learning.png and, for learners, policy.pt.

    With --env cluster: OUT/policy.pt (the agent's checkpoint), summary.json, learning.png.
    """
    if env not in ("paper", "cluster"):
        raise _fail(f"--env must be paper or cluster, got {env!r}")
    if env == "cluster":
        from dedgeai.agent.client import cli_sim_cluster
        from dedgeai.scheduler.policy_names import LEARNED

        problem = cli_sim_cluster.check(
            method, boxes, spread, hours, LEARNED, train_steps_per_s, actor
        )
        if problem:
            raise _fail(problem)
        _writable_dir(out, "--out")
        try:
            cli_sim_cluster.train(
                out, method, boxes, spread, hours, train_steps_per_s, seed, resume, console, err,
                actor=actor,
            )  # fmt: skip
        except SchedulerError as exc:
            raise _fail(str(exc), exit_code_of(exc)[1]) from exc
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        return
    preset_cfg = _check(episodes, preset, servers)
    if method not in METHOD_NAMES:
        raise _fail(f"unknown method {method!r}; choose from {', '.join(METHOD_NAMES)}")
    if resume is not None and method not in LEARNER_NAMES:
        raise _fail(
            f"--resume needs a learning method ({', '.join(LEARNER_NAMES)}), not {method!r}"
        )
    _writable_dir(out, "--out")

    from dedgeai.agent.client.sim_output import plot_learning, write_summary
    from dedgeai.scheduler.checkpoints import save_trained
    from dedgeai.scheduler.learner import SlotLearner
    from dedgeai.scheduler.report import summarize
    from dedgeai.scheduler.simulate import METHOD_TITLES

    switches = Switches.reference() if reference_compatible else Switches()
    try:
        history, learners = _run([method], episodes, seed, preset_cfg, switches, out, resume)
        learner = learners[method]
        if isinstance(learner, SlotLearner):
            save_trained(out / "policy.pt", learner, method, episodes, seed)
    except SchedulerError as exc:
        raise _fail(str(exc), exit_code_of(exc)[1]) from exc
    summary = summarize(history)
    title = f"{METHOD_TITLES[method]}, preset {preset}, seed {seed}"
    write_summary(out / "summary.json", {"preset": preset, "seed": seed, "methods": summary})
    plot_learning(out / "learning.png", [history], title)
    console.print(_table(summary, title))
    written = ["metrics.csv", "summary.json", "learning.png"]
    written += ["policy.pt"] if method in LEARNER_NAMES else []
    console.print(f"wrote {', '.join(str(out / name) for name in written)}")


@app.command("compare")
def compare_cmd(
    out: OutOpt,
    episodes: EpisodesOpt = 30,
    seed: SeedOpt = 0,
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods (default: all).")
    ] = ",".join(METHOD_NAMES),
    preset: PresetOpt = "paper",
    servers: ServersOpt = None,
    reference_compatible: RefOpt = False,
) -> None:
    """Every method on the same task streams: metrics.csv, summary.json, learning.png and a table."""
    preset_cfg = _check(episodes, preset, servers)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHOD_NAMES]
    if unknown or not names:
        raise _fail(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(METHOD_NAMES)}"
        )
    _writable_dir(out, "--out")

    from dedgeai.agent.client.sim_output import plot_learning, write_summary
    from dedgeai.scheduler.report import summarize

    switches = Switches.reference() if reference_compatible else Switches()
    try:
        history, _ = _run(names, episodes, seed, preset_cfg, switches, out)
    except SchedulerError as exc:
        raise _fail(str(exc), exit_code_of(exc)[1]) from exc
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
    plot_learning(out / "learning.png", [history], title)
    console.print(_table(summary, title))
    console.print(f"wrote {out / 'metrics.csv'}, {out / 'summary.json'}, {out / 'learning.png'}")


@app.command("plot")
def plot_cmd(
    metrics: Annotated[
        list[Path], typer.Argument(help="metrics.csv files; several (seeds) are averaged.")
    ],
    out: Annotated[Path, typer.Option(help="The PNG to write.")],
    title: Annotated[str, typer.Option(help="Title of the figure.")] = "learning curves",
) -> None:
    """Redraw learning.png from metrics CSVs (of `sim train`, `sim compare` or the benchmark)."""
    if out.is_dir():
        raise _fail(f"--out {out} is a directory; give the PNG's file name")
    _writable_dir(out.parent, "the directory of --out")

    from dedgeai.agent.client.sim_output import plot_learning, read_metrics

    try:
        runs = [read_metrics(path) for path in metrics]
    except SchedulerError as exc:
        raise _fail(str(exc), exit_code_of(exc)[1]) from exc
    plot_learning(out, runs, title)
    console.print(f"wrote {out}")
