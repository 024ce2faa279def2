"""Benchmark the client's start-up: `dedgeai status`, `--help`, `--version` with one agent up.

Starts one agent (emulated backend, policy ``local``) with ``dedgeai.agent.lab.harness``, then
runs each command as a fresh subprocess, ``--runs`` times, interleaved (one of each per round,
so a busy moment of the box hits all of them alike), with ``python -c pass`` as the floor for
scale. Per command: median wall time and the largest peak RSS, read from ``os.wait4`` (that
child's own rusage, not the agent's). Prints a table with the targets and writes JSON.

The commands run as a user's shell runs them: with bytecode caching, even where the
environment sets ``PYTHONDONTWRITEBYTECODE`` (a sandbox or CI habit: every run then compiles
the package's sources again, ~100 ms); ``--no-pyc`` keeps that setting, for comparison.

    python tools/bench_cli.py [--runs 5] [--out runs/bench_cli.json] [--no-pyc]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dedgeai.agent.lab.harness import AgentProcess

TARGET_WALL_S = 0.5  # issue 11: `dedgeai status` and `dedgeai --help`
TARGET_RSS_MB = 60.0


@dataclass
class Command:
    name: str
    argv: list[str]
    target: bool  # held to the targets (the floor and --version are for scale)
    walls_s: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.walls_s)

    @property
    def max_rss_mb(self) -> float:
        return max(self.rss_mb)

    def meets(self) -> bool:
        return self.median_s <= TARGET_WALL_S and self.max_rss_mb <= TARGET_RSS_MB

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "median_s": self.median_s,
            "max_rss_mb": self.max_rss_mb,
            "meets_target": self.meets() if self.target else None,
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_cli.json"))
    parser.add_argument(
        "--no-pyc", action="store_true", help="keep PYTHONDONTWRITEBYTECODE if it is set"
    )
    return parser.parse_args(argv)


def dedgeai_script() -> str:
    """The installed ``dedgeai`` console script of this interpreter (what a user runs)."""
    script = Path(sys.executable).parent / "dedgeai"
    if not script.exists():
        raise SystemExit(f"no `dedgeai` script next to {sys.executable}: pip install -e .")
    return str(script)


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of one child, from its own rusage."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    stderr = proc.stderr.read()  # drained before the wait: a full pipe would block the child
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {stderr.decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024.0, proc.returncode  # ru_maxrss is in KiB on Linux


def measure(commands: list[Command], runs: int, env: dict[str, str]) -> None:
    for command in commands:  # one untimed run each: the page cache, .pyc files
        run_once(command.argv, env)
    for _ in range(runs):
        for command in commands:
            wall, rss, code = run_once(command.argv, env)
            command.walls_s.append(wall)
            command.rss_mb.append(rss)
            command.codes.append(code)


def render(commands: list[Command], runs: int) -> Table:
    table = Table(title=f"dedgeai client start-up, one agent up (median of {runs}, interleaved)")
    for column in ("command", "median wall", "max RSS", "target", "met"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for c in commands:
        target = f"≤ {TARGET_WALL_S:g} s, ≤ {TARGET_RSS_MB:g} MB" if c.target else "(scale)"
        met = ("yes" if c.meets() else "[red]no[/]") if c.target else ""
        table.add_row(c.name, f"{c.median_s:.3f} s", f"{c.max_rss_mb:.1f} MB", target, met)
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    script = dedgeai_script()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        agent = AgentProcess(Path(tmp), policy="local", log_level="info")
        try:
            agent.start()
            env = {**os.environ, "DEDGEAI_AGENT": agent.endpoint}
            if not args.no_pyc:  # the untimed first run of each command writes the caches
                env.pop("PYTHONDONTWRITEBYTECODE", None)
            commands = [
                Command("python -c pass", [sys.executable, "-c", "pass"], target=False),
                Command("dedgeai status", [script, "status"], target=True),
                Command("dedgeai --help", [script, "--help"], target=True),
                Command("dedgeai --version", [script, "--version"], target=False),
            ]
            load_before = os.getloadavg()[0]
            measure(commands, args.runs, env)
            load_after = os.getloadavg()[0]
        finally:
            agent.close()
    console.print(render(commands, args.runs))
    console.print(f"load average (1 min) {load_before:.1f} before, {load_after:.1f} after")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "runs": args.runs,
        "targets": {"wall_s": TARGET_WALL_S, "rss_mb": TARGET_RSS_MB},
        "bytecode_cache": not (args.no_pyc and os.environ.get("PYTHONDONTWRITEBYTECODE")),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1m": [load_before, load_after],  # a busy box slows every row alike
        },
        "commands": [c.as_dict() for c in commands],
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    console.print(f"written {args.out}")
    return 0 if all(c.meets() for c in commands if c.target) else 1


if __name__ == "__main__":
    sys.exit(main())
