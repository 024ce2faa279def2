"""`dedgeai demo`: a small cluster of local agents scheduling Flickr8k prompts between them.

Starts ``agents`` agents on free loopback ports (each lists the others as peers, CURVE
keys in a temporary directory), submits ``tasks`` prompts spread over them as origins,
shows a live table of where each task ran, why, and its delay, writes the PNGs into the
output directory with a ``demo.json`` summary, and stops every agent with SIGTERM.

Backends: the tiny model (random weights: the PNGs are noise), or with ``emulate`` the
EMULATED backend at heterogeneous speeds (no PNGs; labelled EMULATED everywhere).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.lab.harness import ClusterError, LocalCluster, supports
from dedgeai.agent.lab.load import Outcome, Replayer, poisson_trace, summarise

EMULATED_SPEEDS = (10.0, 25.0, 50.0)  # relative steps/s of the emulated agents (the paper: 10-50)
DEFAULT_LOAD = 0.9  # arrivals as a fraction of the cluster's total speed
TINY_RATE_PER_S = 2.0  # tiny-model arrivals: its CPU speed is not known before start
TABLE_ROWS = 24  # rows of the live table (the newest tasks)


@dataclass(frozen=True)
class DemoOptions:
    tasks: int = 12
    agents: int = 3
    emulate: bool = False
    out: Path = Path("dedgeai-demo")
    policy: str = "lad"
    steps: tuple[int, int] = (2, 4)
    size: tuple[int, int] = (256, 256)
    seed: int = 0
    load: float = DEFAULT_LOAD
    timeout_s: float = 600.0
    keep: bool = False

    @property
    def label(self) -> str:
        return "EMULATED" if self.emulate else "tiny model"


def agent_settings(options: DemoOptions) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-agent config keys and the keys they share."""
    w, h = options.size
    common: dict[str, Any] = {"telemetry_interval_s": 0.5, "max_queue": 10_000}
    if supports("policy"):
        common["policy"] = options.policy
    if options.emulate:
        common |= {"model": "emulated", "profile_sizes": [f"{w}x{h}"]}
        per_agent = [
            {"emulated_steps_per_second": EMULATED_SPEEDS[i % len(EMULATED_SPEEDS)]}
            for i in range(options.agents)
        ]
    else:
        common |= {"model": "tiny", "device": "cpu", "profile_sizes": [f"{w}x{h}"]}
        common["profile_steps"] = 1
        per_agent = [{} for _ in range(options.agents)]
    return per_agent, common


def arrival_rate(options: DemoOptions) -> float:
    """Tasks per second: ``load`` x the cluster's total speed (emulated), else a fixed rate."""
    if not options.emulate:
        return TINY_RATE_PER_S
    w, h = options.size
    speeds = [EMULATED_SPEEDS[i % len(EMULATED_SPEEDS)] for i in range(options.agents)]
    steps_per_s = sum(speeds) * (512 * 512) / (w * h)
    mean_steps = (options.steps[0] + options.steps[1]) / 2
    return options.load * steps_per_s / mean_steps


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "task"


def _delay(outcome: Outcome) -> str:
    if outcome.delay_s is not None:
        return f"{outcome.delay_s:.2f} s"
    if outcome.submitted_at is None:
        return ""
    return f"{time.monotonic() - outcome.submitted_at:.1f} s…"


def _state(outcome: Outcome) -> Text:
    styles = {"done": "green", "failed": "red", "lost": "red", "running": "cyan"}
    text = outcome.state
    if outcome.state == "running":
        text = f"running {outcome.step}/{outcome.steps}"
    return Text(text, style=styles.get(outcome.state, "yellow"))


def render_table(
    outcomes: list[Outcome], prompts: list[str], options: DemoOptions, limit: int = TABLE_ROWS
) -> Table:
    """The demo's table: origin, where it ran, the policy's decision, state and delay."""
    done = [o for o in outcomes if o.state == "done"]
    stats = summarise(outcomes) if done else None
    title = f"dedgeai demo: {options.agents} agents, policy {options.policy}, {options.label}"
    caption = f"{len(done)}/{len(outcomes)} done"
    if stats is not None:
        caption += f" · mean delay {stats.mean_s:.2f} s · p95 {stats.p95_s:.2f} s"
        caption += " · ran on " + ", ".join(f"{k}: {v}" for k, v in stats.ran_on.items())
    table = Table(
        title=title,
        caption=caption,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        expand=True,
    )
    table.add_column("#", style="dim", no_wrap=True)
    table.add_column("prompt", ratio=2, min_width=10, no_wrap=True, overflow="ellipsis")
    table.add_column("origin", no_wrap=True)
    table.add_column("ran on", style="bold", no_wrap=True)
    table.add_column("decision", ratio=3, min_width=16, no_wrap=True, overflow="ellipsis")
    table.add_column("state", no_wrap=True)
    table.add_column("delay", justify="right", no_wrap=True)
    shown = [o for o in outcomes if o.submitted_at is not None][-limit:]
    for o in shown:
        target = o.target or ("?" if o.state == "done" else "")
        forwarded = o.target is not None and o.target != o.origin
        decision = f"{o.policy}: {o.reason}" if o.policy else ""
        table.add_row(
            str(o.index + 1),
            prompts[o.index],
            o.origin,
            Text(target, style="magenta" if forwarded else ""),
            decision,
            _state(o),
            _delay(o),
        )
    return table


def _write_results(outcomes: list[Outcome], prompts: list[str], options: DemoOptions) -> list[Path]:
    options.out.mkdir(parents=True, exist_ok=True)
    written = []
    for o in outcomes:
        if o.png:
            path = (
                options.out
                / f"{o.index + 1:03d}-{o.target or 'agent'}-{_slug(prompts[o.index])}.png"
            )
            path.write_bytes(o.png)
            written.append(path)
    summary = {
        "backend": options.label,
        "emulated": options.emulate,
        "policy": options.policy,
        "agents": options.agents,
        "stats": summarise(outcomes).as_dict(),
        "tasks": [
            {
                "index": o.index + 1,
                "task": o.task,
                "prompt": prompts[o.index],
                "steps": o.steps,
                "origin": o.origin,
                "ran_on": o.target,
                "policy": o.policy,
                "reason": o.reason,
                "state": o.state,
                "delay_s": o.delay_s,
                "error": o.error,
                "emulated": o.emulated,
            }
            for o in outcomes
        ],
    }
    (options.out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return written


def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the whole demo; returns a process exit code (one line on stderr when not 0)."""
    err = Console(stderr=True)
    if options.emulate:
        console.print("[bold yellow]EMULATED[/] backends: timing only, no GPU, no images")
    else:
        from dedgeai.models.tiny import TINY_WARNING

        err.print(f"[yellow]warning:[/] {TINY_WARNING}")
    per_agent, common = agent_settings(options)
    trace = poisson_trace(
        options.tasks,
        arrival_rate(options),
        options.agents,
        options.seed,
        options.steps,
        options.size,
    )
    prompts = [a.prompt for a in trace]
    cluster = LocalCluster(per_agent, common, keep=options.keep)
    try:
        with console.status(f"starting {options.agents} agents ({options.label})…") as spinner:
            _start(cluster, spinner.update)
        for agent in cluster.agents:
            speed = agent.settings.get("emulated_steps_per_second")
            extra = f", EMULATED {speed:g} steps/s" if speed else ""
            console.print(f"{agent.name}: {agent.endpoint} (node {agent.node[:8]}{extra})")
        outcomes = _replay(cluster, trace, prompts, options, console)
    except ClusterError as exc:
        cluster.keep = True  # the logs say why
        err.print(f"[red]error:[/] {exc} (agent logs in {cluster.root})", soft_wrap=True)
        return ExitCode.INTERNAL
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]: stopping the agents")
        return ExitCode.INTERNAL
    finally:
        codes = cluster.close()
    written = _write_results(outcomes, prompts, options)
    bad = [o for o in outcomes if o.state != "done"]
    unclean = {name: code for name, code in codes.items() if code not in (0, None)}
    if options.emulate:
        console.print(f"EMULATED run: no images; summary in {options.out / 'demo.json'}")
    else:
        console.print(f"{len(written)} PNGs in {options.out}/ (tiny model: noise)")
    if bad:
        first = bad[0]
        err.print(
            f"[red]error:[/] {len(bad)} task(s) not done; #{first.index + 1}: {first.error}",
            soft_wrap=True,
        )
        return ExitCode.TASK_FAILED
    if unclean:
        err.print(f"[red]error:[/] agents did not stop cleanly: {unclean}", soft_wrap=True)
        return ExitCode.INTERNAL
    return ExitCode.OK


def _start(cluster: LocalCluster, say: Any, timeout_s: float = 120.0) -> None:
    """Start the agents and wait until they see each other and their policy is ready,
    saying on the spinner what is awaited (each agent's last log line, then gossip and the
    policy's warm-up)."""
    failure: list[BaseException] = []

    def launch() -> None:
        try:
            cluster.start()
        except BaseException as exc:  # re-raised below, in the demo's thread
            failure.append(exc)

    starter = threading.Thread(target=launch, name="demo-start", daemon=True)
    starter.start()
    while starter.is_alive():  # each agent's last log line: importing, loading the model...
        lines = [f"{a.name}: {_last_words(a.log_tail(1))}" for a in cluster.agents]
        say("starting agents; " + "; ".join(lines))
        starter.join(0.2)
    if failure:
        raise failure[0]
    if not cluster.peers_supported:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = _peers_missing(cluster)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"not ready within {timeout_s:.0f} s: {'; '.join(waiting)}")
        say("waiting: " + "; ".join(waiting))
        time.sleep(0.1)


def _last_words(line: str) -> str:
    """The message of a log line, without its timestamp and logger (or "starting python")."""
    text = line.rsplit(": ", 1)[-1].strip() if ": " in line else line.strip()
    return (text[:47] + "…" if len(text) > 48 else text) or "starting python"


def _peers_missing(cluster: LocalCluster) -> list[str]:
    """What each agent still waits for: its peers seen ``up``, then its policy's warm-up."""
    missing = []
    others = len(cluster.agents) - 1
    for agent in cluster.agents:
        view = cluster.cluster_view(agent.index)
        if view is None:
            continue
        peers = [s for s in view.get("servers", []) if not s.get("self")]
        up = sum(1 for s in peers if s.get("state") == "up")
        scheduler = view.get("scheduler") or {}
        warming = not scheduler.get("ready", True) and scheduler.get("state") != "failed"
        if up < others:
            missing.append(f"{agent.name} sees {up}/{others} peers up")
        elif warming:  # an agent stopped mid warm-up aborts (SIGABRT): wait for it
            missing.append(f"{agent.name}: policy {scheduler.get('policy', '?')} warming up")
    return missing


def _replay(
    cluster: LocalCluster,
    trace: list[Any],
    prompts: list[str],
    options: DemoOptions,
    console: Console,
) -> list[Outcome]:
    lock = threading.Lock()
    printed: set[int] = set()

    def on_change(outcome: Outcome) -> None:
        if console.is_terminal or outcome.state not in ("done", "failed", "lost"):
            return
        with lock:  # plain output (not a terminal): one line per finished task
            if outcome.index in printed:
                return
            printed.add(outcome.index)
            console.print(
                f"task {outcome.index + 1}: {outcome.origin} -> {outcome.target} "
                f"({outcome.policy}: {outcome.reason}) {outcome.state} {_delay(outcome)}"
                + (" [EMULATED]" if options.emulate else ""),
                markup=False,
            )

    replayer = Replayer(cluster, trace, deadline_s=options.timeout_s, on_change=on_change)
    if not console.is_terminal:
        outcomes = replayer.run()
    else:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            worker = threading.Thread(target=replayer.run, daemon=True)
            worker.start()
            try:
                while worker.is_alive():
                    live.update(render_table(replayer.outcomes, prompts, options))
                    worker.join(0.25)
            finally:
                replayer.stop()
                worker.join()
            outcomes = replayer.outcomes
            live.update(Group(render_table(outcomes, prompts, options, limit=len(outcomes))))
    if not console.is_terminal:
        console.print(render_table(outcomes, prompts, options, limit=len(outcomes)))
    return outcomes
