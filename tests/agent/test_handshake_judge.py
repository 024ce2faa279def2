"""The one handshake judge, and its two users (client monitor, peer links) agreeing on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from dedgeai.agent.security.handshake import NO_DETAIL_LIMIT, HandshakeJudge, Outcome
from dedgeai.agent.security.peer_keys import REFUSED, WAIT, PeerSecurity

DROP = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
MISMATCH = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH


@pytest.mark.parametrize(
    ("curve", "event", "value", "outcome"),
    [
        (True, zmq.EVENT_HANDSHAKE_SUCCEEDED, 0, Outcome.OK),
        (True, zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400, Outcome.KEY_REFUSED),
        (True, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, MISMATCH, Outcome.PEER_PLAIN),
        (False, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, MISMATCH, Outcome.PEER_NEEDS_CURVE),
        (False, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, 0x11000001, Outcome.PROTOCOL),
        (True, zmq.EVENT_CONNECTED, 0, Outcome.PENDING),
        (True, DROP, 0, Outcome.PENDING),  # one drop: maybe an agent restarting
    ],
)
def test_each_event(curve: bool, event: int, value: int, outcome: Outcome) -> None:
    verdict = HandshakeJudge(curve).judge(event, value)
    assert verdict.outcome is outcome and verdict.value == value


def test_drops_in_a_row_conclude_and_a_success_resets_them() -> None:
    judge = HandshakeJudge(curve=True)
    outcomes = [judge.judge(DROP, 0).outcome for _ in range(NO_DETAIL_LIMIT)]
    assert outcomes == [Outcome.PENDING] * (NO_DETAIL_LIMIT - 1) + [Outcome.DROPPED]
    judge = HandshakeJudge(curve=True)
    judge.judge(DROP, 0)
    judge.judge(zmq.EVENT_HANDSHAKE_SUCCEEDED, 0)
    assert judge.drops == 0
    assert judge.judge(DROP, 0, limit=1).outcome is Outcome.DROPPED  # an impatient caller


class _NoMonitor:
    """Stands in for the socket: HandshakeMonitor only asks it for a monitor socket."""

    def get_monitor_socket(self, events: int) -> None:
        return None


def test_client_monitor_and_peer_links_reach_the_same_verdicts(tmp_path: Path) -> None:
    from dedgeai.agent.security.curve import HandshakeMonitor

    events = [
        (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400, "auth", "refused this"),
        (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, MISMATCH, "protocol", "requires CURVE"),
    ]
    for event, value, kind, words in events:
        client = HandshakeMonitor(_NoMonitor(), "tcp://h:1", curve=False)  # type: ignore[arg-type]
        failure = client._failure_of(client._judge.judge(event, value))
        assert failure is not None and failure.reason == kind and words in str(failure)
        verdict, text = PeerSecurity(None, tmp_path, {}).judge("tcp://h:1", event, value)
        assert verdict == REFUSED and words in (text or "")
    # drops: both wait, then both conclude at the same count
    client = HandshakeMonitor(_NoMonitor(), "tcp://h:1", curve=False)  # type: ignore[arg-type]
    peers = PeerSecurity(None, tmp_path, {})
    for n in range(1, NO_DETAIL_LIMIT + 1):
        failure = client._failure_of(client._judge.judge(DROP, 0))
        verdict, _ = peers.judge("tcp://h:1", DROP, 0)
        assert (failure is None) == (verdict == WAIT) == (n < NO_DETAIL_LIMIT)
