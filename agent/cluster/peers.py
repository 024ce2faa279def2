"""Peer lifecycle: a transition table and the peer table, without sockets or threads.

Each configured (or discovered) peer occupies one fixed server slot. Anything heard from
it counts as a heartbeat (the ZeroMQ guide's rule); a peer silent for ``LIVENESS_INTERVALS``
gossip intervals is marked down and masked from scheduling until it speaks again. A peer
that answers in another protocol version is ``incompatible`` (masked, shown with the error)
until it answers in ours. A peer whose CURVE handshake fails (it refuses this agent's key,
or none of our keys for it is its key) is ``refused`` (masked, shown with the error) until
a handshake succeeds and it is heard.

    connecting ──Heard──▶ up ──Silent──▶ down ──Heard──▶ up
        │                  │                 ▲
        └──Silent──────────┼─────────────────┘
    any ──VersionMismatch──▶ incompatible ──Heard──▶ up
    any ──Refused──▶ refused ──Heard──▶ up
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

LIVENESS_INTERVALS = 3  # gossip intervals of silence before a peer is marked down
RTT_SMOOTHING = 0.2  # weight of a new round-trip sample in the moving average


class PeerState(str, Enum):
    CONNECTING = "connecting"  # configured, never heard from since this agent started
    UP = "up"
    DOWN = "down"
    INCOMPATIBLE = "incompatible"  # it speaks another protocol version
    REFUSED = "refused"  # the CURVE handshake with it fails (see ``error``)

    @property
    def schedulable(self) -> bool:
        return self is PeerState.UP


@dataclass(frozen=True)
class Heard:
    """Any valid message from the peer (gossip, an acknowledgement, progress, a result)."""

    at: float
    info: dict[str, Any] | None = None  # its gossip body, when the message was gossip
    rtt_s: float | None = None


@dataclass(frozen=True)
class Silent:
    """A liveness check: ``now`` is compared with the last time the peer was heard."""

    now: float
    interval_s: float


@dataclass(frozen=True)
class VersionMismatch:
    at: float
    error: str


@dataclass(frozen=True)
class Refused:
    """The CURVE handshake failed: it refused our key, or it is not who we expect."""

    at: float
    error: str


PeerEvent = Heard | Silent | VersionMismatch | Refused

C, U, D, X = PeerState.CONNECTING, PeerState.UP, PeerState.DOWN, PeerState.INCOMPATIBLE
R = PeerState.REFUSED
TRANSITIONS: dict[tuple[PeerState, type], PeerState] = {
    (C, Heard): U,
    (U, Heard): U,
    (D, Heard): U,
    (X, Heard): U,
    (C, Silent): D,  # only once LIVENESS_INTERVALS have passed since the agent started
    (U, Silent): D,
    (D, Silent): D,
    (X, Silent): X,
    (C, VersionMismatch): X,
    (U, VersionMismatch): X,
    (D, VersionMismatch): X,
    (X, VersionMismatch): X,
    (R, Heard): U,
    (R, Silent): R,
    (R, VersionMismatch): X,
    (C, Refused): R,
    (U, Refused): R,
    (D, Refused): R,
    (X, Refused): R,
    (R, Refused): R,
}


@dataclass(frozen=True)
class Peer:
    """What this agent knows about one other agent."""

    slot: int  # fixed server index in the scheduler's state
    endpoint: str
    since: float  # when this agent started tracking it (silence is counted from here)
    state: PeerState = PeerState.CONNECTING
    node: str | None = None
    name: str | None = None
    last_heard: float | None = None
    rtt_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # its latest gossip body
    info_at: float | None = None
    error: str | None = None
    discovered: bool = False  # found by mDNS rather than configured

    def silent_for(self, now: float) -> float:
        return now - (self.last_heard if self.last_heard is not None else self.since)


def apply(peer: Peer, event: PeerEvent) -> Peer:
    """The peer after ``event`` (pure; the table decides the new state)."""
    target = TRANSITIONS[(peer.state, type(event))]
    match event:
        case Heard(at=at, info=info, rtt_s=rtt):
            changes: dict[str, Any] = {"state": target, "last_heard": at, "error": None}
            if info is not None:
                changes.update(info=info, info_at=at, node=info.get("node"), name=info.get("name"))
            if rtt is not None:
                old = peer.rtt_s
                changes["rtt_s"] = rtt if old is None else old + RTT_SMOOTHING * (rtt - old)
            return replace(peer, **changes)
        case Silent(now=now, interval_s=interval):
            if peer.silent_for(now) < LIVENESS_INTERVALS * interval:
                return peer
            return replace(peer, state=target)
        case VersionMismatch(at=at, error=error):
            return replace(peer, state=target, error=error, last_heard=at)
        case Refused(error=error):
            return replace(peer, state=target, error=error)
    raise TypeError(f"not a peer event: {event!r}")


class PeerTable:
    """Every peer by slot; the loop thread is its only user."""

    def __init__(self, peers: Iterable[Peer]) -> None:
        self.by_slot: dict[int, Peer] = {p.slot: p for p in peers}

    def __iter__(self):  # noqa: ANN204 - a plain iterator over peers in slot order
        return iter(sorted(self.by_slot.values(), key=lambda p: p.slot))

    def get(self, slot: int) -> Peer | None:
        return self.by_slot.get(slot)

    def by_node(self, node: str) -> Peer | None:
        return next((p for p in self.by_slot.values() if p.node == node), None)

    def apply_(self, slot: int, event: PeerEvent) -> tuple[PeerState, PeerState]:
        """Apply ``event`` to one peer in place; returns (old state, new state)."""
        peer = self.by_slot[slot]
        new = self.by_slot[slot] = apply(peer, event)
        return peer.state, new.state

    def check_liveness_(self, now: float, interval_s: float) -> list[tuple[int, PeerState]]:
        """Mark silent peers down; returns (slot, new state) for each that changed."""
        changed = []
        for slot in list(self.by_slot):
            old, new = self.apply_(slot, Silent(now, interval_s))
            if old is not new:
                changed.append((slot, new))
        return changed

    def forgive_(self, now: float) -> None:
        """Count every peer's silence from ``now`` (this agent itself was frozen)."""
        for slot, peer in self.by_slot.items():
            if peer.last_heard is not None:
                self.by_slot[slot] = replace(peer, last_heard=max(peer.last_heard, now))

    def up_slots(self) -> set[int]:
        return {p.slot for p in self.by_slot.values() if p.state.schedulable}
