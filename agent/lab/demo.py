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

from dedgeai.agent.errors import DedgeaiError
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.lab.harness import ClusterError, LocalCluster, supports
from dedgeai.agent.lab.load import Outcome, Replayer, poisson_trace, summarise
from dedgeai.models.notices import TINY_WARNING
from dedgeai.scheduler.policy_names import DEFAULT_POLICY

EMULATED_SPEEDS = (10.0, 25.0, 50.0)  # relative steps/s of the emulated agents (the paper: 10-50)
DEFAULT_LOAD = 0.9  # arrivals as a fraction of the cluster's total speed
TINY_RATE_PER_S = 2.0  # tiny-model arrivals: its CPU speed is not known before start
TABLE_ROWS = 24  # rows of the live table (the newest tasks)
START_WAIT_S = 120.0  # for the agents to answer, then for their models (torch on 2 cores)
# A learned policy's greedy fallback says why in its reason ("lad warming up: <greedy's>").
_FALLBACK = re.compile(
    r"^(?P<policy>[\w-]+) (?P<why>warming up|busy training|failed): (?P<rest>.*)$"
)


@dataclass(frozen=True)
class DemoOptions:
    tasks: int = 12
    agents: int = 3
    emulate: bool = False
    out: Path = Path("dedgeai-demo")
    policy: str = DEFAULT_POLICY
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


def decision_text(outcome: Outcome) -> str:
    """The decision column: who decided and why; greedy standing in for a learned policy
    that is still warming up (or training, or failed) says so: ``greedy (lad warming up): …``."""
    if not outcome.policy:
        return ""
    reason = outcome.reason or ""
    fallback = _FALLBACK.match(reason) if outcome.policy == "greedy" else None
    if fallback is not None:
        return f"greedy ({fallback['policy']} {fallback['why']}): {fallback['rest']}"
    return f"{outcome.policy}: {reason}" if reason else outcome.policy


def render_table(
    outcomes: list[Outcome],
    prompts: list[str],
    options: DemoOptions,
    waiting: str | None = None,
    limit: int = TABLE_ROWS,
) -> Table:
    """The demo's table: origin, where it ran, the policy's decision, state and delay.

    ``waiting``: what the demo waits for before the first submit (the caption says it, and
    the rows are the prompts about to be submitted)."""
    done = [o for o in outcomes if o.state == "done"]
    stats = summarise(outcomes) if done else None
    title = f"dedgeai demo: {options.agents} agents, policy {options.policy}, {options.label}"
    caption = f"{len(done)}/{len(outcomes)} done"
    if waiting:
        caption = waiting
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
    if waiting:
        shown = outcomes[:limit]
    for o in shown:
        target = o.target or ("?" if o.state == "done" else "")
        forwarded = o.target is not None and o.target != o.origin
        decision = decision_text(o)
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
        err.print(f"[yellow]warning:[/] {TINY_WARNING}", markup=True, highlight=False)
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
            starter = _start(cluster, spinner.update)
        for agent in cluster.agents:
            speed = agent.settings.get("emulated_steps_per_second")
            extra = f", EMULATED {speed:g} steps/s" if speed else ""
            console.print(f"{agent.name}: {agent.endpoint} (node {agent.node[:8]}{extra})")
        outcomes = _replay(cluster, starter, trace, prompts, options, console)
        starter.finish()  # every model loaded (normally long done): no start left running
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


class _Starter:
    """``cluster.start()`` on a thread: it returns once every model is loaded (the agents'
    endpoint files), but the demo shows its table as soon as every agent answers ``status``
    (the agents bind before they load) and says what it waits for. ``finish`` waits for the
    start to end before the agents are stopped: a failed start is reported, never raced."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._start, name="demo-start", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.cluster.start()
        except BaseException as exc:  # re-raised by check(), in the demo's thread
            self.failure = exc

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def finish(self) -> None:
        self.thread.join()
        self.check()


def _start(cluster: LocalCluster, say: Any, timeout_s: float = START_WAIT_S) -> _Starter:
    """Launch the agents; return once each answers ``status``, saying on the spinner what
    is awaited (each agent's last log line)."""
    starter = _Starter(cluster)
    deadline = time.monotonic() + timeout_s
    while True:
        starter.check()
        waiting = _not_answering(cluster)
        if not waiting:
            return starter
        if time.monotonic() > deadline:
            raise ClusterError(f"not ready within {timeout_s:.0f} s: {'; '.join(waiting)}")
        say("waiting: " + "; ".join(waiting))
        starter.thread.join(0.1)


def _not_answering(cluster: LocalCluster) -> list[str]:
    """The agents that do not answer ``status`` yet (with their last log line); notes the
    node id of those that do (``cluster.start`` would, once their model is loaded)."""
    silent = []
    for agent in cluster.agents:
        if not agent.node:
            try:
                with cluster.client(agent.index, timeout_s=0.5, retries=1) as client:
                    agent.node = str(client.status().get("agent", {}).get("node", ""))
            except DedgeaiError:  # not bound yet (or not launched yet): ask again
                pass
        if not agent.node:
            silent.append(f"{agent.name}: {_last_words(agent.log_tail(1))}")
    return silent


def _last_words(line: str) -> str:
    """The message of a log line, without its timestamp and logger (or "starting python")."""
    text = line.rsplit(": ", 1)[-1].strip() if ": " in line else line.strip()
    return (text[:47] + "…" if len(text) > 48 else text) or "starting python"


def _unschedulable(cluster: LocalCluster) -> list[str]:
    """Why a task submitted now could not be placed on every agent: an agent still loading
    its model, or a peer not ``up`` or with no measured speed yet. Empty once all can be."""
    missing = []
    for agent in cluster.agents:
        try:
            with cluster.client(agent.index, timeout_s=3.0) as client:
                status = client.status()
        except DedgeaiError as exc:
            missing.append(f"{agent.name}: {exc}")
            continue
        me = status.get("agent") or {}
        if me.get("state") != "ready":
            since = time.time() - float(me.get("state_since") or time.time())
            missing.append(f"{agent.name}: {me.get('doing') or me.get('state')} ({since:.0f} s)")
            continue
        view = status.get("cluster") or {}
        peers = [s for s in view.get("servers", []) if not s.get("self")]
        unmeasured = [
            str(s.get("name") or s.get("endpoint"))
            for s in peers
            if s.get("state") != "up" or not s.get("capacity_steps_per_s")
        ]
        if unmeasured:
            missing.append(f"{agent.name} waits for the speed of {', '.join(unmeasured)}")
    return missing


def _wait_schedulable(
    cluster: LocalCluster, starter: _Starter, say: Any, timeout_s: float = START_WAIT_S
) -> None:
    """Until every agent can place a task on every peer (models loaded, speeds measured):
    submitted earlier, a task would run where it was submitted ("no peer available")."""
    deadline = time.monotonic() + timeout_s
    while missing := _unschedulable(cluster):
        starter.check()
        if time.monotonic() > deadline:
            raise ClusterError(f"not ready within {timeout_s:.0f} s: {'; '.join(missing)}")
        say("waiting for the models: " + "; ".join(missing))
        time.sleep(0.2)
    say(None)


def _replay(
    cluster: LocalCluster,
    starter: _Starter,
    trace: list[Any],
    prompts: list[str],
    options: DemoOptions,
    console: Console,
) -> list[Outcome]:
    lock = threading.Lock()
    printed: set[int] = set()
    waiting: list[str | None] = [None]  # what the table's caption says is awaited

    def on_change(outcome: Outcome) -> None:
        if console.is_terminal or outcome.state not in ("done", "failed", "lost"):
            return
        with lock:  # plain output (not a terminal): one line per finished task
            if outcome.index in printed:
                return
            printed.add(outcome.index)
            console.print(
                f"task {outcome.index + 1}: {outcome.origin} -> {outcome.target} "
                f"({decision_text(outcome)}) {outcome.state} {_delay(outcome)}"
                + (" [EMULATED]" if options.emulate else ""),
                markup=False,
            )

    def say(text: str | None) -> None:
        if text is not None and not console.is_terminal and waiting[0] is None:
            console.print(text, markup=False)  # once, not every 0.2 s
        waiting[0] = text

    replayer = Replayer(cluster, trace, deadline_s=options.timeout_s, on_change=on_change)
    if not console.is_terminal:
        _wait_schedulable(cluster, starter, say)
        outcomes = replayer.run()
    else:
        failure: list[BaseException] = []

        def run() -> None:
            try:
                _wait_schedulable(cluster, starter, say)
                replayer.run()
            except BaseException as exc:  # re-raised below, in the demo's thread
                failure.append(exc)

        with Live(console=console, refresh_per_second=4, transient=False) as live:
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            try:
                while worker.is_alive():
                    live.update(render_table(replayer.outcomes, prompts, options, waiting[0]))
                    worker.join(0.25)
            finally:
                replayer.stop()
                worker.join()
            outcomes = replayer.outcomes
            live.update(Group(render_table(outcomes, prompts, options, limit=len(outcomes))))
        if failure:
            raise failure[0]
    if not console.is_terminal:
        console.print(render_table(outcomes, prompts, options, limit=len(outcomes)))
    return outcomes
