"""Real agents as subprocesses on loopback: the one harness of the demo, the benchmarks and the tests.

``AgentProcess`` is one agent with its own state directory (the tests' launcher);
``LocalCluster`` is N agents that list each other as peers (`dedgeai demo`,
tools/bench_cluster.py). ``free_ports``, ``write_toml``, ``wait_for``, ``cluster_view`` and
``peer_states`` are the small helpers all of them share.

Each agent gets a free loopback port (chosen up front, so every agent can list the others
as peers), a state directory, a config file and, when CURVE is on, a key pair in a
temporary key directory whose ``authorized_keys`` lists every agent and the harness's own
client key. ``start`` waits for each agent to answer ``status`` (no sleeps-as-waits);
``stop`` sends SIGTERM and kills what has not exited after a grace period. Keys a running
configuration does not know (``peers``, ``policy`` on an older agent) are left out, so the
harness works with whatever the agent supports.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dedgeai.agent.client.library import AgentClient
from dedgeai.agent.errors import DedgeaiError, PeerUnavailable
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.config import KEYS, toml_value

START_TIMEOUT_S = 120.0  # the tiny model imports torch; this box has 2 shared cores
STOP_GRACE_S = 60.0  # a clean stop takes < 1 s; on 2 loaded cores, torch teardown can take 15+
START_ATTEMPTS = 3  # a port taken between choosing and binding: choose again
HOST = "127.0.0.1"
CLIENT_KEY_NAME = "harness-client"
# One thread per agent: several agents share the CPU cores of one machine.
_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class ClusterError(DedgeaiError):
    """The local cluster could not be started or did not behave; the message says why."""


def config_keys() -> frozenset[str]:
    """The configuration keys this version of the agent understands."""
    return frozenset(k.name for k in KEYS)


def supports(*names: str) -> bool:
    return all(name in config_keys() for name in names)


def _client_takes_security() -> bool:
    return "security" in inspect.signature(AgentClient.__init__).parameters


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_toml(path: Path, values: Mapping[str, Any]) -> None:
    """Write ``values`` as a flat TOML file (one ``key = value`` line each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()), "utf-8")


def spawn_agent(
    config_path: Path,
    log_path: Path,
    extra_env: Mapping[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m dedgeai.agent --config config_path``, output appended to ``log_path``.

    The child does not inherit systemd's ``NOTIFY_SOCKET``/``INVOCATION_ID`` (a test sets
    them through ``extra_env`` when it means to); ``preexec`` runs in the child before exec
    (``setrlimit`` for a benchmark, nothing that takes locks).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID")}
    env.update(extra_env or {})
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dedgeai.agent", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=preexec,
        )


def wait_for(predicate: Any, timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


class AgentProcess:
    """One ``python -m dedgeai.agent`` subprocess with its own state directory.

    It binds ``tcp://127.0.0.1:*`` unless told otherwise (a free port chosen by the kernel,
    no race) and ``start`` waits for ``<state>/agent.endpoint`` and a ``status`` answer.
    Defaults suit tests: the emulated backend, CURVE off (an empty ``keys_dir`` of its own,
    never the developer's keys), debug logs.
    """

    def __init__(self, directory: Path, **settings: Any) -> None:
        self.directory = directory
        self.state_dir = directory / "state"
        self.settings: dict[str, Any] = {
            "endpoint": f"tcp://{HOST}:*",
            "state_dir": str(self.state_dir),
            "model": "emulated",
            "emulated_steps_per_second": 200.0,
            "telemetry_interval_s": 0.5,
            "log_level": "debug",
            "keys_dir": str(directory / "keys"),
            **settings,
        }
        self.config_path = directory / "agent.toml"
        self.log_path = directory / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.env: dict[str, str] = {}  # extra environment (NOTIFY_SOCKET, JOURNAL_STREAM...)
        self.preexec: Callable[[], None] | None = None  # run in the child before exec

    def start(self, timeout_s: float = START_TIMEOUT_S, **changes: Any) -> AgentProcess:
        """Write the config, launch, wait until it answers ``status``; RuntimeError if not."""
        self.settings.update(changes)
        write_toml(self.config_path, self.settings)
        marker = self.state_dir / "agent.endpoint"
        marker.unlink(missing_ok=True)
        self.proc = spawn_agent(self.config_path, self.log_path, self.env, self.preexec)
        deadline = time.monotonic() + timeout_s
        while not marker.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start in {timeout_s} s:\n{self.log()}")
            time.sleep(0.02)
        self.endpoint = marker.read_text().strip()

        def answers() -> bool:
            try:
                with self.client(timeout_s=1.0, retries=1) as client:
                    client.status()
            except PeerUnavailable:
                return False
            return True

        try:  # a loaded box may take a while to answer, but never past what is left
            wait_for(answers, max(1.0, deadline - time.monotonic()), "status")
        except AssertionError:
            raise RuntimeError(
                f"agent did not answer status in {timeout_s} s:\n{self.log()}"
            ) from None
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
        """SIGKILL whatever still runs (a test's clean-up)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class RawPeer:
    """A bare DEALER for sending hand-made frames to an agent."""

    def __init__(self, endpoint: str) -> None:
        import zmq

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


def start_peered(agents: Sequence[AgentProcess], timeout_s: float = 90.0) -> None:
    """Start ``agents`` (configured with each other as ``peers``) in parallel, then wait
    until each sees every peer ``up``."""
    with ThreadPoolExecutor(len(agents)) as pool:
        list(pool.map(lambda agent: agent.start(), agents))
    for agent in agents:
        wait_for(
            lambda agent=agent: set(peer_states(agent).values()) == {"up"},
            timeout_s,
            f"every peer up as seen by {agent.endpoint}",
        )


def wait_capacity_known(agent: AgentProcess, timeout_s: float = 90.0) -> None:
    """Until ``agent`` knows every server's measured speed (the peers' gossip arrived)."""
    wait_for(
        lambda: all(s.get("capacity_steps_per_s") for s in cluster_view(agent)["servers"]),
        timeout_s,
        f"{agent.endpoint} to know every peer's capacity",
    )


def collect_dones(sock: Any, task: str, timeout_s: float, linger_s: float) -> list[p.Reply]:
    """Every ``done`` for ``task`` on a client socket, until ``linger_s`` after the first
    (so that a duplicate would be seen) or ``timeout_s`` in all."""
    dones: list[p.Reply] = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000)):
            reply = p.parse_reply(sock.recv_multipart())
            if reply.type == "done" and reply.get("task") == task:
                dones.append(reply)
                deadline = min(deadline, time.monotonic() + linger_s)
    return dones


def cluster_view(agent: AgentProcess) -> dict[str, Any]:
    """The ``cluster`` section of an agent's status."""
    with agent.client(timeout_s=5.0) as client:
        return client.status()["cluster"]


def peer_states(agent: AgentProcess) -> dict[str, str]:
    """endpoint -> state of every peer, as ``agent`` sees them."""
    servers = cluster_view(agent)["servers"]
    return {s["endpoint"]: s["state"] for s in servers if not s["self"]}


@dataclass
class LocalAgent:
    """One ``python -m dedgeai.agent`` subprocess of the cluster."""

    index: int
    name: str
    directory: Path
    settings: dict[str, Any]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    server_key: bytes | None = None
    node: str = ""
    terminated: bool = False

    @property
    def endpoint(self) -> str:
        return f"tcp://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "agent.log"

    @property
    def config_path(self) -> Path:
        return self.directory / "agent.toml"

    def write_config(self, values: Mapping[str, Any]) -> None:
        known = config_keys()
        write_toml(self.config_path, {k: v for k, v in values.items() if k in known})

    def launch(self) -> None:
        self.terminated = False
        self.directory.mkdir(parents=True, exist_ok=True)
        threads = {k: os.environ.get(k, v) for k, v in _THREAD_ENV.items()}
        self.proc = spawn_agent(self.config_path, self.log_path, threads)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL (no cleanup at all: what ``kill -9`` does)."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=STOP_GRACE_S)

    def terminate(self) -> None:
        """SIGTERM, once: a second one during the interpreter's shutdown would kill it."""
        if self.alive() and not self.terminated:
            assert self.proc is not None
            self.terminated = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit code (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=grace_s)
        return self.proc.returncode


@dataclass
class LocalCluster:
    """Several agents on loopback, each listing the others as peers (when supported).

    Args:
        settings: one dict of config keys per agent (its length is the number of agents).
        common: keys every agent gets (model, policy, telemetry interval...).
        root: where state, configs, keys and logs go; default a temporary directory that
            ``close`` removes (kept when ``keep`` is set or a start failed).
        peers: list every other agent in ``peers`` (when the agent knows that key).
        curve: generate key pairs and authorize every agent and the harness's client.
    """

    settings: Sequence[Mapping[str, Any]]
    common: Mapping[str, Any] = field(default_factory=dict)
    root: Path | None = None
    peers: bool = True
    curve: bool = True
    keep: bool = False
    agents: list[LocalAgent] = field(default_factory=list, init=False)
    _own_root: bool = field(default=False, init=False)
    _client_keys: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="dedgeai-cluster-"))
            self._own_root = True
        self.root.mkdir(parents=True, exist_ok=True)
        for i, extra in enumerate(self.settings):
            name = str(extra.get("name") or f"agent-{i}")
            self.agents.append(LocalAgent(i, name, self.root / name, dict(extra)))

    @property
    def peers_supported(self) -> bool:
        return self.peers and supports("peers")

    @property
    def curve_enabled(self) -> bool:
        return self.curve and supports("keys_dir", "curve") and _client_takes_security()

    # --- keys and configs -------------------------------------------------------------

    def _generate_keys(self) -> None:
        from dedgeai.agent.security import keys

        keys_root = self.root / "keys"  # type: ignore[operator]
        client_dir = keys_root / CLIENT_KEY_NAME
        self._client_keys = keys.generate_keypair(client_dir, force=True)
        pairs = [keys.generate_keypair(keys_root / a.name, force=True) for a in self.agents]
        for agent, pair in zip(self.agents, pairs, strict=True):
            agent.server_key = pair.public
            authorized = keys_root / agent.name / keys.AUTHORIZED_DIR
            shutil.rmtree(authorized, ignore_errors=True)
            keys.authorize(authorized, self._client_keys.public_path, CLIENT_KEY_NAME)
            for other, other_pair in zip(self.agents, pairs, strict=True):
                if other is not agent:
                    keys.authorize(authorized, other_pair.public_path, other.name)

    def _config_for(self, agent: LocalAgent) -> dict[str, Any]:
        values: dict[str, Any] = {
            "endpoint": agent.endpoint,
            "name": agent.name,
            "state_dir": str(agent.directory / "state"),
            "log_level": "info",
            **self.common,
            **agent.settings,
        }
        if self.peers_supported:
            # With CURVE, "=name" pins each peer's key (authorized under its agent's name).
            pin = self.curve_enabled
            values["peers"] = [
                f"{a.endpoint}={a.name}" if pin else a.endpoint
                for a in self.agents
                if a is not agent
            ]
        if self.curve_enabled:
            keys_dir = self.root / "keys" / agent.name  # type: ignore[operator]
            values["keys_dir"] = str(keys_dir)
        else:
            values["curve"] = False
        return values

    # --- lifecycle --------------------------------------------------------------------

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LocalCluster:
        """Launch every agent and wait until each answers; ClusterError when one does not."""
        if self.curve_enabled:
            self._generate_keys()
        last: ClusterError | None = None
        for _attempt in range(START_ATTEMPTS):
            for agent, port in zip(self.agents, free_ports(len(self.agents)), strict=True):
                agent.port = port
            for agent in self.agents:
                agent.write_config(self._config_for(agent))
                agent.launch()
            try:
                self._wait_ready(self.agents, timeout_s)
                return self
            except ClusterError as exc:
                last = exc
                self.stop(grace_s=5.0)
                if "Address already in use" not in str(exc):
                    break
        self.keep = True
        raise last or ClusterError("the cluster did not start")

    def _wait_ready(self, agents: Sequence[LocalAgent], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(agents)
        while pending:
            for agent in list(pending):
                if not agent.alive():
                    raise ClusterError(
                        f"{agent.name} exited with code {agent.proc.returncode if agent.proc else '?'}"
                        f" (log {agent.log_path}): {agent.log_tail(1)}"
                    )
                if not (agent.directory / "state" / "agent.endpoint").exists():
                    continue
                try:
                    with self.client(agent.index, timeout_s=2.0, retries=1) as client:
                        agent.node = str(client.status().get("agent", {}).get("node", ""))
                    pending.remove(agent)
                except PeerUnavailable:
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(a.name for a in pending)
                raise ClusterError(f"{names} did not answer within {timeout_s:.0f} s")
            if pending:
                time.sleep(0.05)

    def cluster_view(self, index: int) -> dict[str, Any] | None:
        """The ``cluster`` section of agent ``index``'s status (None: a single-box agent)."""
        with self.client(index, timeout_s=3.0) as client:
            view = client.status().get("cluster")
        return view if isinstance(view, dict) else None

    def _ready(self, index: int) -> bool:
        view = self.cluster_view(index)
        if view is None:
            return True
        peers = [s for s in view.get("servers", []) if not s.get("self")]
        scheduler = view.get("scheduler") or {}
        return (
            len(peers) >= len(self.agents) - 1
            and all(s.get("state") == "up" for s in peers)
            # a policy that failed to warm up leaves greedy deciding: nothing more to wait for
            and (bool(scheduler.get("ready", True)) or scheduler.get("state") == "failed")
        )

    def wait_peers_up(self, timeout_s: float = 60.0) -> None:
        """Until every agent sees every other one ``up`` and its policy is ready to decide."""
        deadline = time.monotonic() + timeout_s
        pending = [a.index for a in self.agents]
        while pending:
            pending = [i for i in pending if not self._ready(i)]
            if pending and time.monotonic() > deadline:
                names = ", ".join(self.agents[i].name for i in pending)
                raise ClusterError(
                    f"{names}: peers not all up or policy not ready within {timeout_s:.0f} s"
                )
            if pending:
                time.sleep(0.1)

    def restart(self, index: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start agent ``index`` again on the same port, state and keys."""
        agent = self.agents[index]
        agent.stop()
        agent.launch()
        self._wait_ready([agent], timeout_s)

    def stop(self, grace_s: float = STOP_GRACE_S) -> dict[str, int | None]:
        """SIGTERM every agent at once, then wait (killing stragglers); exit code by name."""
        for agent in self.agents:
            agent.terminate()
        return {agent.name: agent.stop(grace_s) for agent in self.agents}

    def close(self) -> dict[str, int | None]:
        codes = self.stop()
        if self._own_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)  # type: ignore[arg-type]
        return codes

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- clients ----------------------------------------------------------------------

    def client(self, index: int, timeout_s: float = 5.0, retries: int = 3) -> AgentClient:
        """A client of agent ``index`` (with the harness's CURVE keys when CURVE is on)."""
        agent = self.agents[index]
        extra: dict[str, Any] = {}
        if self._client_keys is not None and agent.server_key is not None:
            from dedgeai.agent.security.curve import ClientSecurity

            extra["security"] = ClientSecurity(agent.server_key, self._client_keys)
        return AgentClient(agent.endpoint, timeout_s=timeout_s, retries=retries, **extra)

    def node_names(self) -> dict[str, str]:
        """Node id -> agent name, for reading where tasks ran."""
        return {a.node: a.name for a in self.agents if a.node}
