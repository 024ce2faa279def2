"""Who sent a frame, and what that sender may do: the agent's authority model in one place.

Every frame on the agent's ROUTER is hostile until its sender has a role:

- **With CURVE** the ZAP handler has already checked the key; libzmq stamps each frame with
  the sender's public key (``User-Id``). Its role comes from its authorized key file
  (``role = "client" | "peer" | "admin"``, ``dedgeai keys authorize --role``; none: client).
  This agent's own key and the keys pinned in ``peers`` are peers.
- **Keyless** (no key pair, loopback or ``insecure``) there is nothing to check a sender
  against: every sender is the one principal ``local``, and it counts as a peer only when its
  TCP address (``Peer-Address``) is the host of a configured or discovered peer endpoint.
  On loopback that is every local process: keyless mode is for one box or a trusted LAN.

``check`` enforces the table below (docs/protocol.md, "Authority"); ``may_touch`` decides
who may read or cancel one task. Both are pure: the daemon calls them, nothing else does.

    message                      client  peer  admin
    status                       yes     yes   yes
    submit (no origin, owner)    yes     yes   yes
    submit with origin/owner     -       yes   -      a forwarded task
    result, cancel, tasks        own     own   all    own: owner, or the peer it came through
    gossip, probe, steal,        -       yes   -
    ping_req
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from dedgeai.agent.errors import ErrorCode, ProtocolError
from dedgeai.agent.node import protocol as p

if TYPE_CHECKING:
    from dedgeai.agent.node.tasks import TaskRecord

LOCAL = "local"  # the one principal of keyless mode
KEY_PREFIX = "key:"


class Role(str, Enum):
    CLIENT = "client"
    PEER = "peer"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """The sender of one frame: ``id`` owns tasks (``key:<z85>`` or ``local``)."""

    id: str
    role: Role


LOCAL_CLIENT = Principal(LOCAL, Role.CLIENT)
LOCAL_PEER = Principal(LOCAL, Role.PEER)

RoleOfKey = Callable[[bytes], "str | None"]


def endpoint_hosts(endpoints: Iterable[str]) -> frozenset[str]:
    """The IP addresses of ``tcp://host:port`` endpoints (names resolved once, here)."""
    hosts: set[str] = set()
    for endpoint in endpoints:
        if not endpoint.startswith("tcp://"):
            continue
        host = endpoint.removeprefix("tcp://").rpartition(":")[0].strip("[]")
        if not host or host == "*":
            continue
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            continue  # unresolvable now: that peer cannot be recognised by address
        hosts.update(str(info[4][0]) for info in infos)
    return frozenset(hosts)


class Authority:
    """Turns frame metadata into a ``Principal`` and judges messages against the table."""

    def __init__(
        self,
        curve: bool,
        role_of_key: RoleOfKey | None = None,
        peer_keys: Callable[[], Collection[bytes]] = frozenset,
        peer_endpoints: Iterable[str] = (),
    ) -> None:
        """``peer_keys``: the agents' keys now (ours, pinned, proved by a link handshake)."""
        self.curve = curve
        self.role_of_key = role_of_key
        self.peer_keys = peer_keys
        self.peer_hosts = endpoint_hosts(peer_endpoints)

    def add_peer_endpoint(self, endpoint: str) -> None:
        """A peer found later (mDNS): its address may now speak as a peer in keyless mode."""
        self.peer_hosts = self.peer_hosts | endpoint_hosts([endpoint])

    def principal(self, user_id: str | None, address: str | None) -> Principal:
        """The sender of a frame from its ``User-Id`` (CURVE) and ``Peer-Address`` metadata."""
        if not self.curve:
            return (
                LOCAL_PEER if address is not None and address in self.peer_hosts else LOCAL_CLIENT
            )
        if not user_id:  # CURVE is on: a frame without a key did not pass ZAP
            return Principal("anonymous", Role.CLIENT)
        key = user_id.encode()
        if key in self.peer_keys():
            role = Role.PEER
        else:
            named = self.role_of_key(key) if self.role_of_key is not None else None
            role = Role(named) if named in Role._value2member_map_ else Role.CLIENT
        return Principal(KEY_PREFIX + user_id, role)

    @staticmethod
    def check(principal: Principal, msg: p.ClientMessage) -> ProtocolError | None:
        """The refusal for a message this sender's role may not send; None when allowed."""
        if principal.role is Role.PEER:
            return None  # every message type; task-level rules are ``may_touch``'s
        if isinstance(msg, p.Gossip | p.Probe):
            kinds = ((p.PingReq, "ping_req"), (p.Gossip, "gossip"), (p.Steal, "steal"))
            kind = next((name for cls, name in kinds if isinstance(msg, cls)), "probe")
            why = f"`{kind}` is a peer message; this key is not a peer's"
            return ProtocolError(ErrorCode.FORBIDDEN, why, msg.id)
        if isinstance(msg, p.Submit) and (msg.origin is not None or msg.owner is not None):
            field = "origin" if msg.origin is not None else "owner"
            why = f"`{field}` is set only by a forwarding peer; this key is not a peer's"
            return ProtocolError(ErrorCode.FORBIDDEN, why, msg.id, field)
        return None


def may_touch(principal: Principal, task: TaskRecord) -> bool:
    """Whether ``principal`` may read or cancel ``task``: its owner, its forwarder, an admin."""
    return (
        principal.role is Role.ADMIN
        or principal.id == task.owner
        or principal.id == task.placement.get("via")
    )


def owner_filter(principal: Principal) -> str | None:
    """The owner whose tasks ``tasks`` lists for this sender (None: everyone's, for admins)."""
    return None if principal.role is Role.ADMIN else principal.id
