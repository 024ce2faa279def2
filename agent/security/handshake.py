"""The one judge of handshake events: a connecting socket's ZMQ monitor events -> a verdict.

Both ends that connect use it: the client library (``curve.HandshakeMonitor``: a refused
client must not hang) and the agent's peer links (``peer_keys.PeerSecurity.judge``: a
refused or misconfigured peer is marked ``refused``). The judge decides what an event
means (success, a key the other end refused, CURVE on one side only, a protocol error,
or too many handshakes dropped in a row); each caller words the verdict for its reader
(an option to pass on the command line, a key to authorize on a peer).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

import zmq

HANDSHAKE_EVENTS = (  # what the monitors subscribe to
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
NO_DETAIL_LIMIT = 3  # handshakes dropped in a row before a wrong server key is assumed


class Outcome(Enum):
    OK = "ok"  # the handshake succeeded
    PENDING = "pending"  # nothing to conclude yet (an unrelated event, or one drop so far)
    KEY_REFUSED = "key_refused"  # the other end read our hello and its ZAP handler said no
    PEER_PLAIN = "peer_plain"  # we use CURVE, the other end does not
    PEER_NEEDS_CURVE = "peer_needs_curve"  # the other end uses CURVE, we do not
    PROTOCOL = "protocol"  # another ZMTP protocol error (``value`` is its code)
    DROPPED = "dropped"  # ``limit`` handshakes dropped in a row: wrong server key or plain end


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    value: int = 0  # the event's value: the ZAP status or the protocol error code


@dataclass
class HandshakeJudge:
    """Judges one connection's handshake events; counts the drops in a row.

    ``curve``: whether this end connects with CURVE (decides which side a mechanism
    mismatch blames). A single dropped handshake can be the other end restarting midway,
    so only ``limit`` in a row are ``DROPPED``; a success resets the count.
    """

    curve: bool
    limit: int = NO_DETAIL_LIMIT
    drops: int = 0

    def judge(self, event: int, value: int, limit: int | None = None) -> Verdict:
        """``limit`` overrides the drops allowed for this event (1: conclude at once)."""
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.drops = 0
            return Verdict(Outcome.OK, value)
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return Verdict(Outcome.KEY_REFUSED, value)
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value != zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                return Verdict(Outcome.PROTOCOL, value)
            return Verdict(Outcome.PEER_PLAIN if self.curve else Outcome.PEER_NEEDS_CURVE, value)
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self.drops += 1
            if self.drops >= (self.limit if limit is None else limit):
                return Verdict(Outcome.DROPPED, value)
        return Verdict(Outcome.PENDING, value)


def read_monitor_event(socket: zmq.Socket) -> tuple[int, int]:
    """(event, value) of the next message on a monitor socket (libzmq's v1 event format).

    What ``zmq.utils.monitor.recv_monitor_message`` does, without importing asyncio with it
    (~20 ms on every client command): frame 0 is a 16-bit event id and a 32-bit value.
    """
    frames = socket.recv_multipart()
    if len(frames) != 2 or len(frames[0]) != 6:
        raise zmq.ZMQError(msg=f"not a monitor event: {len(frames)} frame(s)")
    event, value = struct.unpack("=hi", frames[0])
    return event & 0xFFFF, value
