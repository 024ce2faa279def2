"""`dedgeai demo`: three local agents forwarding Flickr8k prompts between them, live.

Exit codes: 0 every task done and every agent stopped cleanly · 1 the cluster could not
start or stop · 2 bad options · 4 a task failed or was lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dedgeai.agent.client.out_paths import unwritable_dir
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.models import sizes
from dedgeai.scheduler.policy_names import DEFAULT_POLICY, LEARNED, POLICIES


def parse_steps(text: str) -> tuple[int, int]:
    """``N`` or ``LOW-HIGH`` denoising steps, 1-100."""
    low, sep, high = text.partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise typer.BadParameter(f"use N or LOW-HIGH, got {text!r}", param_hint="--steps")
    first, last = int(low), int(high) if sep else int(low)
    if not 1 <= first <= last <= 100:
        raise typer.BadParameter(
            f"need 1 <= LOW <= HIGH <= 100, got {text!r}", param_hint="--steps"
        )
    return first, last


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` (models/sizes.py), as the ``--size`` option's error."""
    try:
        return sizes.parse_size(text)
    except sizes.SizeError as exc:
        raise typer.BadParameter(str(exc), param_hint="--size") from None


def demo(
    tasks: Annotated[int, typer.Option(min=1, max=500, help="Prompts to submit.")] = 12,
    agents: Annotated[int, typer.Option(min=1, max=16, help="Local agents to start.")] = 3,
    emulate: Annotated[
        bool,
        typer.Option(
            "--emulate", help="EMULATED backends at 10/25/50 steps/s (timing only, no images)."
        ),
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the PNGs and demo.json.")
    ] = Path("dedgeai-demo"),
    policy: Annotated[
        str,
        typer.Option(
            help=", ".join(POLICIES) + f". A learned one ({', '.join(LEARNED)}) warms up in "
            "the background: greedy decides until it is ready, and the table says so."
        ),
    ] = DEFAULT_POLICY,
    steps: Annotated[
        str | None,
        typer.Option(help="Denoising steps per task, N or LOW-HIGH [default: 2-4; EMULATED 10-19]"),
    ] = None,
    size: Annotated[
        str | None, typer.Option(help="Image size WxH [default: 256x256; EMULATED 512x512]")
    ] = None,
    load: Annotated[
        float,
        typer.Option(min=0.05, max=5.0, help="EMULATED: arrivals as a fraction of total speed."),
    ] = 0.9,
    seed: Annotated[int, typer.Option(help="Seed of the arrival trace and prompts.")] = 0,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait for the last tasks.")
    ] = 600.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the agents' state, keys and logs.")
    ] = False,
) -> None:
    """Start local agents, schedule Flickr8k prompts between them, show where each ran."""
    if policy not in POLICIES:
        raise typer.BadParameter(f"choose from {', '.join(POLICIES)}", param_hint="--policy")
    from dedgeai.agent.lab.demo import DemoOptions, run_demo

    options = DemoOptions(
        tasks=tasks,
        agents=agents,
        emulate=emulate,
        out=out,
        policy=policy,
        steps=parse_steps(steps or ("10-19" if emulate else "2-4")),
        size=parse_size(size or ("512x512" if emulate else "256x256")),
        seed=seed,
        load=load,
        timeout_s=timeout,
        keep=keep,
    )
    problem = unwritable_dir(out, "--out")  # before the agents start: not after a full run
    if problem:
        Console(stderr=True).print(f"[red]error:[/red] {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.BAD_INPUT)
    code = run_demo(options, Console())
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def register(app: typer.Typer) -> None:
    """Add `dedgeai demo` to the root app."""
    app.command("demo")(demo)
