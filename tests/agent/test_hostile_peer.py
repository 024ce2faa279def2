"""A lying peer and a hostile frame against a real agent (issue 10, items 1, 3 and 6).

The "peer" is a bare ROUTER socket bound at the endpoint the agent lists in ``peers``: it
answers the agent's gossip and its forwarded submits with whatever the test scripts. The
agent must stay up, relay nothing it could not check, and keep NaN out of its decisions.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from dedgeai.agent.lab.harness import AgentProcess, free_ports, peer_states, wait_for
from dedgeai.agent.node import protocol as p
from dedgeai.models.backend import GenerationRequest

FAKE_NODE = str(uuid.UUID(int=7))
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


class FakePeer:
    """A ROUTER at a peer endpoint that answers the agent's link as the test says."""

    def __init__(self, endpoint: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.endpoint = endpoint
        self.gossip_fields: dict[str, Any] = {"interval_load_steps": 0.0}
        self.forwards: list[tuple[bytes, dict[str, Any]]] = []
        self.started_at = time.time()

    def serve(self, until: Any, timeout_s: float = 20.0) -> None:
        """Answer gossip (and record forwarded submits) until ``until()`` is true."""
        deadline = time.monotonic() + timeout_s
        while not until():
            assert time.monotonic() < deadline, "the fake peer waited in vain"
            if not self.socket.poll(50):
                continue
            route, frame = self.socket.recv_multipart()
            msg = p.decode_frame(frame)
            if msg["type"] == "gossip":
                body = {
                    "node": FAKE_NODE,
                    "name": "fake peer",
                    "endpoint": self.endpoint,
                    "sent_at": time.time(),
                    "backlog_steps": 0.0,
                    "capacity_steps_per_s": 1000.0,
                    "accepting": True,
                    "started_at": self.started_at,
                    "echo_sent_at": msg["sent_at"],
                    **self.gossip_fields,
                }
                self.send(route, p.envelope("gossip", msg["id"], **body))
            elif msg["type"] == "submit":
                self.forwards.append((route, msg))

    def send(self, route: bytes, message: dict[str, Any], *extra: bytes) -> None:
        self.socket.send_multipart([route, p.encode(message), *extra])

    def close(self) -> None:
        self.socket.close(0)


@pytest.fixture
def origin_and_fake(tmp_path: Any) -> Iterator[tuple[AgentProcess, FakePeer]]:
    own, fake_port = free_ports(2)
    fake = FakePeer(f"tcp://127.0.0.1:{fake_port}")
    origin = AgentProcess(
        tmp_path / "origin",
        endpoint=f"tcp://127.0.0.1:{own}",
        peers=[fake.endpoint],
        policy="round-robin",
        gossip_interval_s=0.2,
        emulated_steps_per_second=400.0,
    )
    try:
        origin.start()
        fake.serve(lambda: peer_states(origin).get(fake.endpoint) == "up")
        yield origin, fake
    finally:
        origin.close()
        fake.close()


def _decisions_finite(origin: AgentProcess) -> bool:
    with origin.client() as client:
        rows = client.tasks()
    probs = [x for row in rows for x in (row.get("placement") or {}).get("probs") or []]
    return bool(probs) and all(math.isfinite(x) for x in probs)


def test_a_lying_peer_cannot_crash_poison_or_fake_a_result(origin_and_fake):
    origin, fake = origin_and_fake
    fake.gossip_fields = {"interval_load_steps": float("nan"), "capacity_steps_per_s": -5.0}
    request = GenerationRequest(prompt="a lying peer", steps=2, width=256, height=256)
    with origin.client() as client:
        tasks = [client.submit(request, wait=False).get("task") for _ in range(2)]
    fake.serve(lambda: bool(fake.forwards))
    route, forward = fake.forwards[0]
    task = forward["task"]
    assert task in tasks and forward["origin"] != FAKE_NODE
    fake.send(route, p.envelope("accepted", forward["id"], task=task, position=0, origin="x"))
    for step in ("x", float("nan"), float("inf"), [1], 2**64 - 1, -1, True):  # item 3
        fake.send(
            route,
            p.envelope(
                "progress",
                forward["id"],
                task=task,
                stage="denoise",
                step=step,
                steps=2,
                position=0,
            ),
        )
    fake.send(route, p.envelope("done", forward["id"], task=task), b"not a png")  # a fake done
    fake.send(route, p.envelope("done", forward["id"], task=task))  # no image frame at all
    fake.send(  # one link, read in order: once this one shows, the origin read them all
        route,
        p.envelope(
            "progress", forward["id"], task=task, stage="denoise", step=1, steps=2, position=0
        ),
    )
    with origin.client() as client:
        snapshot = wait_for(
            lambda: (r := client.result(task)).get("step") == 1 and r, 10.0, "the good progress"
        )
        assert client.status()["agent"]["node"]  # alive, and answering
    assert snapshot.type == "progress", snapshot.fields  # nothing was relayed as its result
    assert origin.proc is not None and origin.proc.poll() is None
    fake.send(route, p.envelope("done", forward["id"], task=task, ran_on={"node": FAKE_NODE}), PNG)
    with origin.client() as client:
        done = wait_for(
            lambda: (r := client.result(task)).type == "done" and r, 10.0, "the relayed result"
        )
        assert done.png == PNG
        # item 6: the NaN gossip never reached the policy: every decision stays finite
        client.submit(request, wait=False)
    assert wait_for(lambda: _decisions_finite(origin), 10.0, "finite decisions")
    assert "Traceback" not in origin.log()


@pytest.mark.parametrize(
    "frame",
    [
        {"v": 1, "type": [], "id": "x"},
        {"v": 1, "type": {}, "id": "x"},
        {"v": [], "type": "status", "id": "x"},
        {"v": 1, "type": "submit", "id": "x", "prompt": "p", "steps": {}},
        {"v": 1, "type": "tasks", "id": "x", "state": []},
    ],
    ids=["type-list", "type-map", "v-list", "steps-map", "state-list"],
)
def test_one_frame_does_not_kill_the_agent(shared_agent, raw_peer, frame):
    """Item 1: an unhashable value where a table is consulted gets a reply, not a crash."""
    peer = raw_peer(shared_agent.endpoint)
    peer.send(p.encode(frame))
    reply = peer.recv()
    assert reply.type == "error" and reply.get("code") in ("bad_type", "bad_version", "bad_field")
    with shared_agent.client() as client:
        assert client.status()["agent"]["node"]
