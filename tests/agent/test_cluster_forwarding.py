"""Forwarding between real agents on loopback: the result reaches the client through its origin."""

from __future__ import annotations

import signal
from typing import Any

import zmq

from dedgeai.agent.client.library import AgentClient
from dedgeai.agent.errors import TaskNotFound
from dedgeai.agent.lab.harness import cluster_view, collect_dones, wait_for
from dedgeai.agent.node import protocol as p
from dedgeai.models.backend import GenerationRequest


def _node(agent: Any) -> str:
    with agent.client() as client:
        return client.status()["agent"]["node"]


def test_forwarded_task_result_reaches_the_client_through_its_origin(cluster_factory: Any) -> None:
    a, b = cluster_factory({}, {}, policy="round-robin")
    node_a, node_b = _node(a), _node(b)
    request = GenerationRequest(prompt="a lighthouse", steps=4, width=256, height=256)
    seen: list[str] = []
    with a.client() as client:
        # round-robin starts with the agent itself, then the next slot: the peer
        _, first = client.generate(request)
        accepted, done = client.generate(request, on_progress=lambda r: seen.append(r.type))
    assert first.get("ran_on")["node"] == node_a
    assert first.get("placement")["policy"] == "round-robin"
    assert accepted.get("origin") == node_a
    assert done.get("task") == accepted.get("task")
    assert done.get("ran_on")["node"] == node_b, done.fields
    assert done.get("origin") == node_a
    placement = done.get("placement")
    assert placement["local"] is False and placement["node"] == node_b
    assert placement["policy"] == "round-robin" and sum(placement["probs"]) == 1.0
    assert "progress" in seen  # relayed from the peer
    task = done.get("task")
    with a.client() as client:  # the origin keeps a copy of the result
        again = client.result(task)
        rows = {r["task"]: r for r in client.tasks()}
    assert again.type == "done" and again.get("ran_on")["node"] == node_b
    assert rows[task]["state"] == "done" and rows[task]["ran_on"]["node"] == node_b
    with b.client() as client:  # the peer ran it once, for its origin
        remote = {r["task"]: r for r in client.tasks()}
    assert remote[task]["origin"] == node_a and remote[task]["attempts"] == 1
    view = cluster_view(a)
    assert view["n_servers"] == 2 and view["forwarding"]["forwarded"] == 1
    assert view["decisions"]["count"] == 2


def _step_at(client: AgentClient, task: str) -> int:
    """The step ``task`` reached on that agent (0 while the agent does not know it yet)."""
    try:
        return client.result(task).get("step") or 0
    except TaskNotFound:
        return 0


def test_kill_9_of_the_target_mid_task_finishes_elsewhere_exactly_once(
    cluster_factory: Any,
) -> None:
    a, b = cluster_factory(
        {"emulated_steps_per_second": 400.0},
        {"emulated_steps_per_second": 10.0},
        policy="round-robin",
    )
    node_a = _node(a)
    quick = GenerationRequest(prompt="first, local", steps=1, width=256, height=256)
    slow = GenerationRequest(prompt="second, forwarded", steps=60, width=512, height=512)
    with a.client() as client:
        client.generate(quick)  # round-robin: this one stays; the next goes to the peer
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(a.endpoint)
    try:
        task = p.new_task_id()
        sock.send(p.encode(p.envelope("submit", "s1", **p.request_to_wire(slow), task=task)))
        assert p.parse_reply(sock.recv_multipart()).type == "accepted"
        with b.client() as client:  # the peer is running it (once its forward arrived)
            wait_for(lambda: _step_at(client, task) >= 2, 20.0, "the peer to run it")
        assert b.proc is not None
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        dones = collect_dones(sock, task, timeout_s=90.0, linger_s=1.5)
    finally:
        sock.close(0)
    assert len(dones) == 1, [d.fields for d in dones]
    done = dones[0]
    assert done.get("ran_on")["node"] == node_a
    assert done.get("placement")["redispatches"] == 1
    assert "down" in done.get("placement")["reclaimed"]
    with a.client() as client:
        rows = [r for r in client.tasks() if r["task"] == task]
    assert len(rows) == 1 and rows[0]["state"] == "done"
    assert cluster_view(a)["forwarding"]["reclaimed"] == 1


def test_clients_talk_only_to_their_own_agent(cluster_factory: Any) -> None:
    """`result` at the origin of a forwarded, unfinished task subscribes to the relay."""
    # Slow gossip on both sides, so that the SIGSTOP below is no event for either: the
    # origin would mark b down (and run the task itself) after 3 of its intervals of
    # silence, and b would take a loop that stood still for 2 of its own for a freeze (and
    # hold the task until its origin asks again). The task takes 4 s at b, so it is still
    # running when b is stopped right after its first step.
    a, b = cluster_factory(
        {"emulated_steps_per_second": 400.0, "gossip_interval_s": 60.0},
        {"emulated_steps_per_second": 10.0, "gossip_interval_s": 5.0},
        policy="round-robin",
    )
    request = GenerationRequest(prompt="x", steps=1, width=256, height=256)
    slow = GenerationRequest(prompt="y", steps=40, width=512, height=512)
    with a.client() as client:
        client.generate(request)
        task = client.submit(slow, wait=False).get("task")
    assert b.proc is not None
    with b.client() as client:  # the peer runs it...
        wait_for(lambda: _step_at(client, task) >= 1, 30.0, "the peer to run it")
    b.proc.send_signal(signal.SIGSTOP)  # ...and cannot finish it while the origin is asked
    try:
        with AgentClient(a.endpoint, timeout_s=5.0) as client:
            snapshot = client.result(task, wait=True)
    finally:
        b.proc.send_signal(signal.SIGCONT)
    assert snapshot.type == "progress" and snapshot.get("task") == task, snapshot.fields
    with AgentClient(a.endpoint, timeout_s=30.0) as client:  # a new client subscribes...
        reply = client.result(task, wait=True)
        done = reply if reply.type == "done" else client.wait(task)  # ...and gets the relay
    assert done.get("ran_on")["endpoint"] == b.endpoint
    assert cluster_view(a)["forwarding"]["reclaimed"] == 0
