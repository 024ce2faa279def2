"""Real agent processes on loopback for the integration tests.

Each agent binds ``tcp://127.0.0.1:*`` (a free port chosen by the kernel, no race) and
writes the endpoint it got into ``<state>/agent.endpoint``; the helper waits for that
file and for a ``status`` answer instead of sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from dedgeai.agent.client.library import AgentClient
from dedgeai.agent.node import protocol as p

START_TIMEOUT_S = 90.0  # the tiny model imports torch; the CI box has 2 shared cores


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


class AgentProcess:
    """One ``python -m dedgeai.agent`` subprocess with its own state directory."""

    def __init__(self, directory: Path, **settings: Any) -> None:
        self.directory = directory
        self.state_dir = directory / "state"
        self.settings = {
            "endpoint": "tcp://127.0.0.1:*",
            "state_dir": str(self.state_dir),
            "model": "emulated",
            "emulated_steps_per_second": 200.0,
            "telemetry_interval_s": 0.5,
            "log_level": "debug",
            "keys_dir": str(directory / "keys"),  # not the developer's own keys (CURVE off)
            **settings,
        }
        self.config_path = directory / "agent.toml"
        self.log_path = directory / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.env: dict[str, str] = {}  # extra environment (NOTIFY_SOCKET, JOURNAL_STREAM...)

    def start(self, **changes: Any) -> AgentProcess:
        self.settings.update(changes)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "".join(f"{k} = {_toml(v)}\n" for k, v in self.settings.items())
        )
        (self.state_dir / "agent.endpoint").unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID")}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dedgeai.agent", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        marker = self.state_dir / "agent.endpoint"
        while not marker.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start in {START_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(0.02)
        self.endpoint = marker.read_text().strip()
        with self.client(timeout_s=5.0) as client:
            client.status()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, timeout_s: float = 5.0, retries: int = 3) -> AgentClient:
        return AgentClient(self.endpoint, timeout_s=timeout_s, retries=retries)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> tuple[int, float]:
        """Signal the agent and wait; returns (exit code, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout_s)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Any]:
    """Start agents that are killed at the end of the test whatever happens."""
    started: list[AgentProcess] = []

    def make(name: str = "a", **settings: Any) -> AgentProcess:
        agent = AgentProcess(tmp_path / name, **settings)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.close()


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One emulated agent shared by the tests of a module that do not restart it."""
    agent = AgentProcess(tmp_path_factory.mktemp("shared"), emulated_steps_per_second=400.0)
    agent.start()
    yield agent
    agent.close()


class RawPeer:
    """A bare DEALER for sending hand-made frames."""

    def __init__(self, endpoint: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send(self, *frames: bytes) -> None:
        self.socket.send_multipart(list(frames))

    def recv(self, timeout_s: float = 10.0) -> p.Reply:
        if not self.socket.poll(int(timeout_s * 1000)):
            raise TimeoutError("no reply from the agent")
        frames = self.socket.recv_multipart()
        if len(frames) > 1 and frames[0] == b"":  # we sent an empty first frame (REQ-style)
            frames = frames[1:]
        return p.parse_reply(frames)

    def close(self) -> None:
        self.socket.close(0)


@pytest.fixture
def raw_peer() -> Iterator[Any]:
    """Factory of RawPeer sockets, closed after the test."""
    peers: list[RawPeer] = []

    def make(endpoint: str) -> RawPeer:
        peer = RawPeer(endpoint)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture(scope="session")
def tiny_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """The built-in tiny model (random weights, CPU): real PNGs, started once per session."""
    agent = AgentProcess(
        tmp_path_factory.mktemp("tiny"),
        model="tiny",
        device="cpu",
        profile_sizes=["256x256"],
        profile_steps=1,
    )
    agent.start()
    yield agent
    agent.close()


# --- clusters of agents (issue 5) ----------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports free a moment ago (each agent must know the others' ports)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def cluster_view(agent: AgentProcess) -> dict[str, Any]:
    """The ``cluster`` section of an agent's status."""
    with agent.client(timeout_s=5.0) as client:
        return client.status()["cluster"]


def wait_for(predicate: Any, timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


def peer_states(agent: AgentProcess) -> dict[str, str]:
    """endpoint -> state of every peer, as ``agent`` sees them."""
    servers = cluster_view(agent)["servers"]
    return {s["endpoint"]: s["state"] for s in servers if not s["self"]}


@pytest.fixture
def cluster_factory(agent_factory: Any) -> Any:
    """Start N agents that list each other as peers (started in parallel, all peers up)."""
    from concurrent.futures import ThreadPoolExecutor

    def make(*per_agent: dict[str, Any], **common: Any) -> list[AgentProcess]:
        endpoints = [f"tcp://127.0.0.1:{port}" for port in free_ports(len(per_agent))]
        agents = []
        for index, (endpoint, own) in enumerate(zip(endpoints, per_agent, strict=True)):
            agent = agent_factory(
                f"n{index}",
                endpoint=endpoint,
                peers=endpoints,
                gossip_interval_s=0.2,
                **{**common, **own},
            )
            agent.env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            agents.append(agent)
        with ThreadPoolExecutor(len(agents)) as pool:
            list(pool.map(lambda a: a.start(), agents))
        for agent in agents:
            wait_for(
                lambda agent=agent: set(peer_states(agent).values()) == {"up"},
                30.0,
                f"every peer up as seen by {agent.endpoint}",
            )
        return agents

    return make
