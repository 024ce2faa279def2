"""Client library for one agent: requests with Lazy Pirate retries, and task streaming.

A request is sent on a DEALER; with no reply within ``timeout_s`` the socket is thrown
away (its queued messages with it), a fresh one connects and the request goes again, up
to ``retries`` times, then PeerUnavailable. Retrying ``submit`` is safe because the client
picks the task id: the agent answers a repeated id with the task it already has.
While waiting for a task, silence is answered with ``result {wait: true}``, which both
checks that the agent is alive and re-subscribes after a reconnect or an agent restart.
With ``security`` the DEALER is a CURVE client; every connection's handshake is watched,
so a refused key (or a CURVE/plain mismatch) raises HandshakeFailed at once, not a timeout.
The agent is not trusted either: replies are capped in size, and a reply whose fields the
client relies on are of the wrong type raises ProtocolError instead of a TypeError later.
"""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from dedgeai.agent.errors import (
    ConfigError,
    ErrorCode,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    remote_error,
)
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.config import DEFAULT_ENDPOINT
from dedgeai.agent.node.protocol import Reply, TaskId
from dedgeai.agent.security.curve import ClientSecurity, HandshakeMonitor
from dedgeai.models.backend import GenerationRequest

DEFAULT_TIMEOUT_S = 3.0
DEFAULT_RETRIES = 3
ENDPOINT_ENV = "DEDGEAI_AGENT"
# Larger replies are dropped by libzmq (the connection with them): a `done` carries a PNG
# (a 2048x2048 one is at most ~13 MB), nothing else comes near.
MAX_REPLY_BYTES = 64 * p.MAX_FRAME_BYTES

ProgressCallback = Callable[[Reply], None]


_SCHEMES = ("tcp", "ipc")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.*-]+):([0-9]{1,6})$")


def default_endpoint() -> str:
    return os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT


def client_endpoint(text: str) -> str:
    """An agent endpoint as typed (``tcp://host:port``, ``host:port``, ``ipc://path``), checked.

    A bare ``host:port`` means TCP. Raises ConfigError (one line: what is wrong and an example)
    for another scheme, a missing or out-of-range port, or text that is no endpoint at all.
    """
    raw = text.strip()
    example = "e.g. tcp://127.0.0.1:7700"
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest = "tcp", raw
    if scheme not in _SCHEMES:
        raise ConfigError(f"agent endpoint {raw!r}: use tcp:// or ipc:// ({example})")
    if scheme == "ipc":
        if not rest:
            raise ConfigError(f"agent endpoint {raw!r}: ipc:// needs a path")
        return f"ipc://{rest}"
    match = _HOST_PORT.match(rest)
    if match is None:
        raise ConfigError(f"agent endpoint {raw!r} is not tcp://HOST:PORT ({example})")
    port = int(match.group(2))
    if not 1 <= port <= 65535:
        raise ConfigError(f"agent endpoint {raw!r}: port {port} is not in 1-65535")
    return f"tcp://{match.group(1)}:{port}"


class AgentClient:
    """One DEALER connection to one agent. Not thread-safe: one client per thread."""

    def __init__(
        self,
        endpoint: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        context: zmq.Context | None = None,
        security: ClientSecurity | None = None,
    ) -> None:
        self.endpoint = client_endpoint(endpoint or default_endpoint())
        if not timeout_s > 0 or timeout_s == float("inf"):
            raise ConfigError(f"the timeout must be a positive number of seconds, got {timeout_s}")
        self.security = security
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self._context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()
        self._socket = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
        if self.security is not None:
            self.security.apply(sock)
        key_path = self.security.keys.public_path if self.security else None
        self._monitor = HandshakeMonitor(sock, self.endpoint, self.security is not None, key_path)
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor.socket, zmq.POLLIN)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:  # e.g. a host name that does not resolve
            self._monitor.close()
            sock.close(0)
            raise ConfigError(f"cannot connect to agent endpoint {self.endpoint}: {exc}") from exc
        return sock

    def _reconnect(self) -> None:
        self.close()
        self._socket = self._connect()

    def close(self) -> None:
        self._monitor.close()
        self._socket.close(0)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    # --- transport -----------------------------------------------------------------

    def send_raw(self, frames: list[bytes]) -> None:
        self._socket.send_multipart(frames)

    def recv(self, timeout_s: float) -> Reply | None:
        """The next reply within ``timeout_s``, or None. Raises HandshakeFailed."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(left_ms))
            if self._monitor.socket in ready:
                self._monitor.check()
            if self._socket in ready:
                return p.parse_reply(self._socket.recv_multipart())
            if not ready or time.monotonic() >= deadline:
                return None

    def request(self, message: dict[str, Any], raise_errors: bool = True) -> Reply:
        """Send ``message`` (an ``id`` is added) and return the reply with that id."""
        message = {"v": p.PROTOCOL_VERSION, "id": self.next_id(), **message}
        payload = p.encode(message)
        for _attempt in range(self.retries):
            self._socket.send(payload)
            deadline = time.monotonic() + self.timeout_s
            while (left := deadline - time.monotonic()) > 0:
                reply = self.recv(left)
                if reply is None:
                    break
                if reply.id == message["id"]:
                    if raise_errors and reply.type == "error":
                        raise self._error(reply, message.get("task"))
                    return reply
                # Anything else is a late reply or progress from an earlier exchange.
            self._reconnect()
        raise PeerUnavailable(self.endpoint, self.timeout_s, self.retries)

    def _error(self, reply: Reply, task: str | None) -> RemoteError:
        """The RemoteError an ``error`` reply stands for; its code and message checked."""
        code, text = reply.get("code"), reply.get("message")
        if not isinstance(code, str) or not isinstance(text, str):
            raise self.malformed("an `error` reply needs string `code` and `message`")
        return remote_error(code, text, task)

    def malformed(self, why: str) -> ProtocolError:
        """The error for a reply that breaks the protocol (a buggy or hostile agent)."""
        return ProtocolError(
            ErrorCode.BAD_FIELD, f"the agent at {self.endpoint} sent a malformed reply: {why}"
        )

    # --- API -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.request({"type": "status"}).fields

    def tasks(self, limit: int = p.DEFAULT_TASKS_LIMIT, state: str | None = None) -> list[dict]:
        message: dict[str, Any] = {"type": "tasks", "limit": limit}
        if state is not None:
            message["state"] = state
        rows = self.request(message).get("tasks")
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise self.malformed("`tasks` must be a list of maps")
        return rows

    def cancel(self, task: str) -> Reply:
        return self.request({"type": "cancel", "task": task})

    def result(self, task: str, wait: bool = False) -> Reply:
        """``done`` for a finished task, ``progress`` for an unfinished one; errors raise."""
        return self.request({"type": "result", "task": task, "wait": wait})

    def submit(
        self,
        request: GenerationRequest,
        task: TaskId | None = None,
        wait: bool = True,
        origin: str | None = None,
    ) -> Reply:
        """Queue a task; returns ``accepted``. Raises AgentBusy, RemoteError, PeerUnavailable.

        The reply must name the task id this client chose (``task`` or a new one): an agent
        answering with another id is a ProtocolError, never followed.
        """
        task = task or p.new_task_id()
        message: dict[str, Any] = {
            "type": "submit",
            **p.request_to_wire(request),
            "task": task,
            "wait": wait,
        }
        if origin is not None:
            message["origin"] = origin
        accepted = self.request(message)
        if accepted.type != "accepted" or not same_task(accepted.get("task"), task):
            raise self.malformed(f"`{accepted.type}` for another task than {task}")
        return accepted

    def wait(self, task: str, on_progress: ProgressCallback | None = None) -> Reply:
        """Block until ``task`` ends: returns ``done``; raises TaskFailed or PeerUnavailable."""
        while True:
            reply = self.recv(self.timeout_s)
            if reply is None:
                # Silence: ask again. This re-subscribes (after a reconnect or agent restart)
                # and its answer proves the agent is alive; request() itself retries.
                reply = self.result(task, wait=True)
                if not same_task(reply.get("task"), task):  # else we would ask forever
                    raise self.malformed(f"`{reply.type}` for another task than {task}")
            elif not same_task(reply.get("task"), task):
                continue  # a late message about an earlier task
            if reply.type == "done":
                return reply
            if reply.type == "error":
                raise self._error(reply, task)
            if reply.type == "progress" and on_progress is not None:
                on_progress(reply)

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        task: TaskId | None = None,
    ) -> tuple[Reply, Reply]:
        """Submit and wait: returns (accepted, done)."""
        task = task or p.new_task_id()
        accepted = self.submit(request, task=task, wait=True)
        if on_progress is not None:
            on_progress(accepted)
        return accepted, self.wait(task, on_progress)


def same_task(value: Any, task: str) -> bool:
    """Whether a remote ``task`` field names ``task`` (both as canonical UUIDs)."""
    if not isinstance(value, str):
        return False
    try:
        return uuid.UUID(value) == uuid.UUID(task)
    except ValueError:
        return value == task
