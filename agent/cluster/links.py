"""Links to peers: one outbound DEALER per peer, owned by the daemon's loop thread.

Each link has a small high-water mark and ``ZMQ_IMMEDIATE`` (nothing queues for a peer
that is not connected: a send to it fails at once and the caller knows). Sends never block.
libzmq reconnects by itself with exponential backoff (``RECONNECT_IVL`` up to
``RECONNECT_IVL_MAX``); when a peer is marked down its socket is also thrown away and
opened again (the guide's Lazy Pirate), so nothing stale is delivered when it returns.
Gossip goes out on these links about once a second and is answered with the peer's own.
With ``monitor`` (CURVE peer links) each socket also has a handshake monitor (a PAIR
socket on inproc, same owner) whose events ``handshakes`` reads.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from dedgeai.agent.errors import ErrorCode, ProtocolError
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.protocol import Reply
from dedgeai.agent.security.handshake import HANDSHAKE_EVENTS, read_monitor_event

log = logging.getLogger("dedgeai.agent.cluster.links")

PEER_HWM = 64  # messages queued per peer before sends fail (gossip is cheap to lose)
RECONNECT_IVL_MS = 100  # first reconnect attempt after a lost connection
RECONNECT_IVL_MAX_MS = 5_000  # libzmq doubles the interval up to this
RESET_BACKOFF_MAX_S = 30.0  # Lazy Pirate socket resets of a down peer: at most this far apart
GOSSIP_ID = "gossip"
MAX_RECV_PER_TURN = 256

SocketSetup = Callable[[zmq.Socket, str], None]  # e.g. CURVE client keys, before connect


class PeerLinks:
    """The DEALER sockets to every peer slot; one owner: the loop thread."""

    def __init__(
        self,
        context: zmq.Context,
        endpoints: dict[int, str],
        setup: SocketSetup | None = None,
        monitor: bool = False,
    ) -> None:
        self.context, self.setup, self.monitor = context, setup, monitor
        self.endpoints = dict(endpoints)
        self.sockets: dict[int, zmq.Socket] = {}
        self.monitors: dict[int, zmq.Socket] = {}
        self._reset_at: dict[int, float] = {}
        self._reset_backoff: dict[int, float] = {}
        self.poller: zmq.Poller | None = None
        for slot in self.endpoints:
            self.sockets[slot] = self._open(slot)

    def _open(self, slot: int) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, PEER_HWM)
        sock.setsockopt(zmq.RCVHWM, 10 * PEER_HWM)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, 64 * p.MAX_FRAME_BYTES)  # a relayed `done` has a PNG
        if self.setup is not None:
            self.setup(sock, self.endpoints[slot])
        if self.monitor:
            self.monitors[slot] = sock.get_monitor_socket(HANDSHAKE_EVENTS)
            if self.poller is not None:
                self.poller.register(self.monitors[slot], zmq.POLLIN)
        sock.connect(self.endpoints[slot])
        if self.poller is not None:
            self.poller.register(sock, zmq.POLLIN)
        return sock

    def _close(self, slot: int) -> None:
        old = self.sockets.pop(slot, None)
        if old is None:
            return
        watcher = self.monitors.pop(slot, None)
        if self.poller is not None:
            self.poller.unregister(old)
            if watcher is not None:
                self.poller.unregister(watcher)
        if watcher is not None:
            with contextlib.suppress(zmq.ZMQError):
                old.disable_monitor()
            watcher.close(0)
        old.close(0)

    def add(self, slot: int, endpoint: str) -> None:
        """A peer found after start (mDNS)."""
        self.endpoints[slot] = endpoint
        self.sockets[slot] = self._open(slot)

    def register(self, poller: zmq.Poller) -> None:
        self.poller = poller
        for sock in [*self.sockets.values(), *self.monitors.values()]:
            poller.register(sock, zmq.POLLIN)

    def handshakes(self, ready: dict[zmq.Socket, int]) -> Iterator[tuple[int, int, int]]:
        """(slot, event, value) of the handshake events waiting on ready monitors."""
        for slot, watcher in list(self.monitors.items()):
            if watcher not in ready:
                continue
            while watcher.poll(0):
                event, value = read_monitor_event(watcher)
                yield slot, event, value
                if self.monitors.get(slot) is not watcher:
                    break  # the consumer reopened the link meanwhile

    def reopen(self, slot: int) -> None:
        """Close and reopen a link now (new socket options, e.g. the next server key)."""
        self._close(slot)
        self.sockets[slot] = self._open(slot)

    def send(self, slot: int, message: dict[str, Any]) -> bool:
        """Queue one message for the peer without blocking; False when it cannot take it."""
        sock = self.sockets.get(slot)
        if sock is None:
            return False
        try:
            sock.send(p.encode(message), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False  # not connected (IMMEDIATE) or its queue is full
        except zmq.ZMQError as exc:
            log.debug("send to slot %d failed: %s", slot, exc)
            return False

    def receive(self, ready: dict[zmq.Socket, int]) -> Iterator[tuple[int, list[bytes]]]:
        """Frames waiting on the links that the poller marked ready."""
        for slot, sock in list(self.sockets.items()):
            if sock not in ready:
                continue
            for _ in range(MAX_RECV_PER_TURN):
                try:
                    yield slot, sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break

    def reset(self, slot: int, now: float) -> bool:
        """Close and reopen a down peer's socket (drops what was queued), with backoff."""
        if now < self._reset_at.get(slot, 0.0):
            return False
        backoff = min(RESET_BACKOFF_MAX_S, 2 * self._reset_backoff.get(slot, 0.5))
        self._reset_backoff[slot] = backoff
        self._reset_at[slot] = now + backoff
        self.reopen(slot)
        return True

    def suspend(self, slot: int, now: float) -> None:
        """Close a refused link; ``resume_due`` opens it again after a growing backoff."""
        self._close(slot)
        backoff = min(RESET_BACKOFF_MAX_S, 2 * self._reset_backoff.get(slot, 0.5))
        self._reset_backoff[slot] = backoff
        self._reset_at[slot] = now + backoff

    def resume_due(self, now: float) -> list[int]:
        """Reopen the suspended links whose backoff has passed; returns their slots."""
        due = [
            s for s in self.endpoints if s not in self.sockets and now >= self._reset_at.get(s, 0.0)
        ]
        for slot in due:
            self.sockets[slot] = self._open(slot)
        return due

    def healthy(self, slot: int) -> None:
        """The peer answers again: the next reset may happen without delay."""
        self._reset_backoff.pop(slot, None)
        self._reset_at.pop(slot, None)

    def close(self) -> None:
        for slot in list(self.sockets):
            self._close(slot)


def read_peer_reply(frames: list[bytes]) -> Reply:
    """Decode a peer's reply; raises ProtocolError(bad_version) for another protocol version."""
    try:
        return p.parse_peer_reply(frames)
    except ProtocolError as exc:
        if exc.code is ErrorCode.BAD_VERSION:
            raise ProtocolError(
                ErrorCode.BAD_VERSION,
                f"the peer speaks another protocol version ({exc.message}); "
                f"this agent speaks v{p.PROTOCOL_VERSION}: upgrade one of them",
            ) from exc
        raise


def version_refusal(reply: Reply) -> str | None:
    """The peer's ``error: bad_version`` to our message, as a sentence; None otherwise."""
    if reply.type == "error" and reply.get("code") == ErrorCode.BAD_VERSION.value:
        return (
            f"the peer refused protocol v{p.PROTOCOL_VERSION}: {reply.get('message')}; "
            "upgrade one of them"
        )
    return None


def gossip_message(body: dict[str, Any]) -> dict[str, Any]:
    return p.envelope("gossip", GOSSIP_ID, **body)
