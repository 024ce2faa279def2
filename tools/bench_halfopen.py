"""Half-open connections against one agent: is an authorized client still served?

Starts a real agent (emulated backend, policy "local") under a file-descriptor limit (the
unit's ``LimitNOFILE`` by default, set in the child with ``setrlimit``), then holds N raw
TCP connections to its port that never send a byte (no ZMTP greeting): a holder thread
reads and drops the agent's greeting and reopens every connection the agent closes, so N
stay open the whole time. Meanwhile it times an authorized client's ``status``:
  * new: a fresh connection per request (TCP + ZMTP/CURVE handshake + request + reply)
  * warm: one connection kept open
median and max of ``--rounds`` each, plus the agent's open fds before, during and after,
its CPU time during the hold, and how many half-open connections it closed itself
(``HANDSHAKE_IVL``). A lower ``--nofile`` shows the failure mode of a small limit.

    python tools/bench_halfopen.py [--connections 2000] [--curve] [--nofile N]
                                   [--low-nofile 1024] [--out runs/bench_halfopen.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import selectors
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from dedgeai.agent.client.library import AgentClient
from dedgeai.agent.errors import DedgeaiError
from dedgeai.agent.lab.harness import AgentProcess
from dedgeai.agent.security.curve import HANDSHAKE_IVL_MS, ClientSecurity
from dedgeai.agent.security.keys import AUTHORIZED_DIR, authorize, generate_keypair

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "dedgeai-agent.service"
TARGET_S = 1.0  # an authorized client is served within this, N half-open connections held
START_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 15.0  # after the flood: wait this long for the agent's fds to come back


def unit_nofile() -> int:
    for line in UNIT.read_text().splitlines():
        if line.startswith("LimitNOFILE="):
            return int(line.split("=", 1)[1])
    return 1024


@dataclass
class Scenario:
    name: str
    curve: bool
    nofile: int  # the agent's limit as applied (capped by this process's hard limit)
    connections: int
    rounds: int
    new_median_ms: float = float("nan")
    new_max_ms: float = float("nan")
    warm_median_ms: float = float("nan")
    warm_max_ms: float = float("nan")
    failures: int = 0  # status requests not answered (timeout) or refused
    held_min: int = 0  # fewest half-open connections open at once during the rounds
    opened_total: int = 0
    closed_by_agent: int = 0
    connect_errors: int = 0
    fds_before: int = 0
    fds_during: int = 0
    fds_after: int = 0
    agent_cpu_s: float = 0.0
    agent_alive: bool = True
    served: bool = False  # every round answered and new_max_ms <= TARGET_S
    extra: dict[str, Any] = field(default_factory=dict)


class Agent(AgentProcess):
    """One agent process under an fd limit; its client is authorized when CURVE is on."""

    def __init__(self, root: Path, curve: bool, nofile: int) -> None:
        root.mkdir(parents=True)
        self.curve, self.nofile = curve, nofile
        self.security: ClientSecurity | None = None
        super().__init__(root, policy="local", log_level="info", telemetry_interval_s=1.0)
        if curve:
            own = generate_keypair(root / "keys")
            operator = generate_keypair(root / "operator")
            authorize(root / "keys" / AUTHORIZED_DIR, operator.public_path, "operator")
            self.security = ClientSecurity(own.public, operator)
        self.preexec = self._limit  # only setrlimit: safe before exec
        self.address = ("", 0)
        self.process: psutil.Process | None = None

    def start(self, timeout_s: float = START_TIMEOUT_S, **changes: Any) -> Agent:
        super().start(timeout_s, **changes)
        host, port = self.endpoint.rsplit("/", 1)[1].rsplit(":", 1)
        self.address = (host, int(port))
        assert self.proc is not None
        self.process = psutil.Process(self.proc.pid)
        return self

    def _limit(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def client(self, timeout_s: float = 5.0, retries: int = 1) -> AgentClient:
        return AgentClient(
            self.endpoint, timeout_s=timeout_s, retries=retries, security=self.security
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def fds(self) -> int:
        try:
            return self.process.num_fds() if self.process else -1
        except psutil.Error:
            return -1

    def cpu_s(self) -> float:
        try:
            times = self.process.cpu_times() if self.process else None
        except psutil.Error:
            times = None
        return float("nan") if times is None else times.user + times.system

    def close(self) -> None:
        """SIGTERM and a grace period, then what ``AgentProcess.close`` does (SIGKILL)."""
        if self.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop(timeout_s=20.0)
        super().close()


class HalfOpenHolder:
    """Keeps ``count`` raw TCP connections open to ``address``, sending nothing on them."""

    def __init__(self, address: tuple[str, int], count: int) -> None:
        self.address, self.count = address, count
        self.selector = selectors.DefaultSelector()
        self.open = 0
        self.opened_total = self.closed_by_agent = self.connect_errors = 0
        self.min_open: int | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, fill_timeout_s: float = 60.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + fill_timeout_s
        while self.open < self.count and time.monotonic() < deadline:
            time.sleep(0.05)

    def watch_minimum(self) -> None:
        """From now on, track the fewest connections open at once."""
        with self._lock:
            self.min_open = self.open

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            self.connect_errors += 1
            time.sleep(0.01)  # the agent may be out of fds: do not spin
            return
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ)
        with self._lock:
            self.open += 1
            self.opened_total += 1

    def _drop(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        sock.close()
        with self._lock:
            self.open -= 1
            self.closed_by_agent += 1
            if self.min_open is not None:
                self.min_open = min(self.min_open, self.open)

    def _run(self) -> None:
        while not self._stop.is_set():
            while self.open < self.count and not self._stop.is_set():
                self._connect()
            for key, _events in self.selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)  # the agent's greeting: read and ignored
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(sock)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for key in list(self.selector.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            self.selector.unregister(sock)
            sock.close()
        self.selector.close()


def _rounds(
    agent: Agent, rounds: int, timeout_s: float, spread_s: float = 0.0
) -> tuple[list[float], list[float], int]:
    """Status round trips: (new-connection seconds, warm seconds, failures).

    The new-connection rounds are spread over ``spread_s``, so that they also run while the
    agent drops timed-out half-open connections and the holder opens new ones.
    """
    new, warm, failures = [], [], 0
    began = time.monotonic()
    for index in range(rounds):
        time.sleep(max(0.0, began + index * spread_s / rounds - time.monotonic()))
        started = time.perf_counter()
        try:
            with agent.client(timeout_s) as client:
                client.status()
            new.append(time.perf_counter() - started)
        except DedgeaiError:
            failures += 1
    try:
        with agent.client(timeout_s) as client:
            client.status()  # connect and handshake once
            for _ in range(rounds):
                started = time.perf_counter()
                client.status()
                warm.append(time.perf_counter() - started)
    except DedgeaiError:
        failures += rounds - len(warm)
    return new, warm, failures


def _settle(agent: Agent, baseline: int) -> int:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    fds = agent.fds()
    while fds > baseline + 8 and time.monotonic() < deadline and agent.alive():
        time.sleep(0.2)
        fds = agent.fds()
    return fds


def run_scenario(root: Path, name: str, curve: bool, nofile: int, args: Any) -> Scenario:
    scenario = Scenario(name, curve, nofile, args.connections, args.rounds)
    agent = Agent(root / name, curve, nofile)
    try:
        agent.start()
        _rounds(agent, 5, args.timeout)  # warm-up: imports, first handshakes
        scenario.fds_before = agent.fds()
        holder = HalfOpenHolder(agent.address, args.connections)
        holder.start()
        holder.watch_minimum()
        cpu_before = agent.cpu_s()
        scenario.fds_during = agent.fds()
        new, warm, scenario.failures = _rounds(agent, args.rounds, args.timeout, args.hold)
        scenario.fds_during = max(scenario.fds_during, agent.fds())
        scenario.agent_cpu_s = agent.cpu_s() - cpu_before
        scenario.held_min = holder.min_open if holder.min_open is not None else holder.open
        holder.stop()
        scenario.opened_total = holder.opened_total
        scenario.closed_by_agent = holder.closed_by_agent
        scenario.connect_errors = holder.connect_errors
        scenario.fds_after = _settle(agent, scenario.fds_before)
        scenario.agent_alive = agent.alive()
        if new:
            scenario.new_median_ms = statistics.median(new) * 1e3
            scenario.new_max_ms = max(new) * 1e3
        if warm:
            scenario.warm_median_ms = statistics.median(warm) * 1e3
            scenario.warm_max_ms = max(warm) * 1e3
        scenario.served = (
            scenario.failures == 0
            and scenario.agent_alive
            and scenario.new_max_ms <= TARGET_S * 1e3
        )
        scenario.extra = {"handshake_ivl_ms": HANDSHAKE_IVL_MS, "client_timeout_s": args.timeout,
                          "hold_s": args.hold, "connect_errors": holder.connect_errors}  # fmt: skip
        if not scenario.agent_alive:
            scenario.extra["agent_exit_code"] = agent.proc.returncode if agent.proc else None
            scenario.extra["agent_log_tail"] = agent.log()[-2000:]
    finally:
        agent.close()
    return scenario


def _raise_own_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000, help="half-open connections")
    parser.add_argument("--rounds", type=int, default=20, help="status requests per kind")
    parser.add_argument("--timeout", type=float, default=3.0, help="client timeout per request")
    hold_s = 2 * HANDSHAKE_IVL_MS / 1000
    parser.add_argument("--hold", type=float, default=hold_s, help="seconds the rounds span")
    parser.add_argument("--nofile", type=int, default=unit_nofile(), help="the agent's fd limit")
    parser.add_argument("--curve", action="store_true", help="also a CURVE agent")
    parser.add_argument("--low-nofile", type=int, default=0, help="also under this limit")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_halfopen.json"))
    args = parser.parse_args()
    hard = _raise_own_limit()
    if hard != resource.RLIM_INFINITY and hard < args.connections + 256:
        parser.error(f"this process may open {hard} files: lower --connections")
    nofile = args.nofile if hard == resource.RLIM_INFINITY else min(args.nofile, hard)
    plan = [("plain", False, nofile)] + ([("curve", True, nofile)] if args.curve else [])
    if args.low_nofile:
        plan.append((f"plain-nofile{args.low_nofile}", False, args.low_nofile))
        if args.curve:
            plan.append((f"curve-nofile{args.low_nofile}", True, args.low_nofile))
    with tempfile.TemporaryDirectory(prefix="bench-halfopen-") as tmp:
        scenarios = [run_scenario(Path(tmp), *step, args) for step in plan]
    table = Table(title=f"authorized status with {args.connections} half-open connections held")
    for column in ("scenario", "nofile", "held (min)", "new conn ms (med/max)",
                   "warm ms (med/max)", "fails", "agent fds before/during/after",
                   "closed by agent", "agent cpu s", "served <1 s"):  # fmt: skip
        table.add_column(column)
    for s in scenarios:
        table.add_row(
            s.name,
            str(s.nofile),
            str(s.held_min),
            f"{s.new_median_ms:.1f} / {s.new_max_ms:.1f}",
            f"{s.warm_median_ms:.2f} / {s.warm_max_ms:.2f}",
            str(s.failures),
            f"{s.fds_before} / {s.fds_during} / {s.fds_after}",
            str(s.closed_by_agent),
            f"{s.agent_cpu_s:.2f}",
            ("yes" if s.served else "NO") + ("" if s.agent_alive else " (agent died)"),
        )
    Console(width=160).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"python": platform.python_version(), "machine": platform.machine(),
               "cpus": os.cpu_count(), "own_nofile_hard": hard}  # fmt: skip
    body = {"machine": machine, "scenarios": [asdict(s) for s in scenarios]}
    args.out.write_text(json.dumps(body, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
