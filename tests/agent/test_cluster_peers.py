"""Peer liveness and protocol versions between real agents (and a fake peer) on loopback."""

from __future__ import annotations

import signal
import uuid
from typing import Any

import msgpack
import zmq

from dedgeai.agent.lab.harness import cluster_view, free_ports, peer_states, wait_for
from dedgeai.agent.node import protocol as p
from dedgeai.models.backend import GenerationRequest


def test_a_peer_silent_for_3_intervals_is_marked_down_masked_and_back_when_it_speaks(
    cluster_factory: Any,
) -> None:
    a, b = cluster_factory({}, {}, policy="round-robin")
    assert b.proc is not None
    b.proc.send_signal(signal.SIGSTOP)  # connected but silent: only heartbeats can tell
    try:
        wait_for(lambda: peer_states(a)[b.endpoint] == "down", 10.0, "the peer marked down")
        servers = {s["endpoint"]: s for s in cluster_view(a)["servers"]}
        assert servers[b.endpoint]["silent_s"] >= 3 * 0.2
        request = GenerationRequest(prompt="masked", steps=1, width=256, height=256)
        with a.client() as client:
            dones = [client.generate(request)[1] for _ in range(3)]
        # round-robin would alternate; with the peer masked every task stays here
        assert all(d.get("placement")["local"] for d in dones)
        assert all(d.get("placement")["probs"][servers[b.endpoint]["slot"]] == 0 for d in dones)
    finally:
        b.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: peer_states(a)[b.endpoint] == "up", 10.0, "the peer back up")


def test_a_peer_speaking_another_protocol_version_gets_an_error_not_a_crash(
    agent_factory: Any, raw_peer: Any
) -> None:
    (port,) = free_ports(1)
    fake_endpoint = f"tcp://127.0.0.1:{port}"
    fake = zmq.Context.instance().socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    fake.bind(fake_endpoint)
    try:
        agent = agent_factory(
            "a", peers=[fake_endpoint], policy="round-robin", gossip_interval_s=0.2
        ).start()
        # the agent gossips to its peer; the "peer" answers in protocol v2
        assert fake.poll(10_000)
        identity, frame = fake.recv_multipart()
        assert msgpack.unpackb(frame)["type"] == "gossip"
        future = {"v": 2, "type": "gossip", "id": "gossip", "node": "x", "sent_at": 0.0}
        fake.send_multipart([identity, msgpack.packb(future)])
        wait_for(lambda: peer_states(agent)[fake_endpoint] == "incompatible", 10.0, "incompatible")
        servers = {s["endpoint"]: s for s in cluster_view(agent)["servers"]}
        assert "protocol" in servers[fake_endpoint]["error"]
        # and a v2 message to the agent gets a clear error
        peer = raw_peer(agent.endpoint)
        peer.send(msgpack.packb({**future, "id": "g1"}))
        reply = peer.recv()
        assert reply.type == "error" and reply.get("code") == "bad_version"
        assert "v1" in reply.get("message")
        request = GenerationRequest(prompt="still serving", steps=1, width=256, height=256)
        with agent.client() as client:
            done = client.generate(request)[1]  # the incompatible peer is masked
        assert done.get("placement")["local"] is True
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        fake.close(0)


def test_gossip_is_strict_about_its_fields(shared_agent: Any, raw_peer: Any) -> None:
    peer = raw_peer(shared_agent.endpoint)
    bad = {
        "node": str(uuid.uuid4()),
        "sent_at": 1.0,
        "backlog_steps": "x",
        "interval_load_steps": 0,
    }
    peer.send(p.encode(p.envelope("gossip", "g1", **bad)))
    reply = peer.recv()
    assert reply.get("code") == "bad_field" and reply.get("field") == "backlog_steps"
    body = {"node": str(uuid.uuid4()), "sent_at": 1.0, "backlog_steps": 0, "interval_load_steps": 0}
    peer.send(p.encode(p.envelope("gossip", "g2", **body)))
    reply = peer.recv()  # well formed, but a lone keyless agent has no peers to hear from
    assert reply.type == "error" and reply.get("code") == "forbidden"
    assert "peer" in reply.get("message")
