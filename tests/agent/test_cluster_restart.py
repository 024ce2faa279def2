"""A peer that restarts (kill -9, same port and state) resumes a forwarded task from its journal.

Documented semantics (docs/agent.md, "Failures"): while the origin still sees the target as
alive (it restarted within 3 of the origin's gossip intervals), the task is not re-dispatched:
the origin notices the restart (the target's gossip carries a new ``started_at``), asks again
with the same idempotent ``submit``, the target resumes the task from its journal and the
result comes back through the origin, exactly once.
"""

from __future__ import annotations

import signal
from typing import Any

import zmq

from dedgeai.agent.lab.harness import (
    cluster_view,
    collect_dones,
    free_ports,
    start_peered,
    wait_capacity_known,
    wait_for,
)
from dedgeai.agent.node import protocol as p
from dedgeai.models.backend import GenerationRequest


def _node(agent: Any) -> str:
    with agent.client() as client:
        return client.status()["agent"]["node"]


def _started_pair(
    agent_factory: Any, a_gossip_s: float, b_steps_per_s: float, b_gossip_s: float = 0.2
) -> tuple[Any, Any]:
    """Origin a and target b (round-robin, b slow), both up, a knowing b's capacity; a's
    next task goes to b (round-robin's first one ran at a)."""
    ends = [f"tcp://127.0.0.1:{port}" for port in free_ports(2)]
    a = agent_factory(
        "a", endpoint=ends[0], peers=ends, policy="round-robin", gossip_interval_s=a_gossip_s
    )
    b = agent_factory(
        "b",
        endpoint=ends[1],
        peers=ends,
        policy="round-robin",
        gossip_interval_s=b_gossip_s,
        emulated_steps_per_second=b_steps_per_s,
    )
    for agent in (a, b):
        agent.env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start_peered((a, b))
    wait_capacity_known(a)
    with a.client() as client:  # round-robin starts here; the next task goes to the peer
        client.generate(GenerationRequest(prompt="q", steps=1, width=256, height=256))
    return a, b


def _submit_forwarded(origin: Any, request: GenerationRequest) -> tuple[zmq.Socket, str]:
    """A raw client socket that submitted ``request`` to ``origin``, which forwarded it."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(origin.endpoint)
    task = p.new_task_id()
    sock.send(p.encode(p.envelope("submit", "s1", **p.request_to_wire(request), task=task)))
    accepted = p.parse_reply(sock.recv_multipart())
    assert accepted.type == "accepted" and accepted.get("forwarded_to") is not None
    return sock, task


def test_restarted_peer_resumes_a_forwarded_task_and_returns_it_once(agent_factory):
    # The origin gossips slowly (down after 3 x 60 s): the target stays "up" across its
    # restart however long the restart takes on a loaded machine; no race with the clock.
    # The target gossips every second: a loop of its that stands still for 2 s on a busy
    # machine is taken for a freeze (the forwarded task is then held until its origin asks
    # again, which this origin does only after 3 x 60 s); at 0.2 s that was 0.4 s.
    a, b = _started_pair(agent_factory, a_gossip_s=60.0, b_steps_per_s=10.0, b_gossip_s=1.0)
    node_a, node_b = _node(a), _node(b)
    slow = GenerationRequest(prompt="forwarded, then resumed", steps=25, width=512, height=512)
    sock, task = _submit_forwarded(a, slow)
    try:
        with b.client() as client:  # b journaled it (its `accepted` was the ack) and runs it
            wait_for(lambda: (client.result(task).get("step") or 0) >= 2, 60.0, "b running it")
        assert b.proc is not None
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        b.start()  # same port, same state directory: it resumes the task from its journal
        dones = collect_dones(sock, task, timeout_s=120.0, linger_s=1.5)
    finally:
        sock.close(0)
    assert len(dones) == 1, [d.fields for d in dones]
    done = dones[0]
    assert done.get("ran_on")["node"] == node_b and done.get("origin") == node_a
    assert not done.get("placement").get("redispatches")  # resumed, not re-dispatched
    with b.client() as client:
        row = next(r for r in client.tasks() if r["task"] == task)
    assert row["state"] == "done" and row["origin"] == node_a and row["attempts"] == 2
    view = cluster_view(a)
    assert view["forwarding"]["reclaimed"] == 0
    assert view["forwarding"]["dropped_duplicates"] == 0
    assert "restarted: asking again" in a.log()
    with a.client() as client:
        rows = [r for r in client.tasks() if r["task"] == task]
    assert len(rows) == 1 and rows[0]["state"] == "done"


def test_task_reclaimed_by_its_origin_is_not_run_again_by_the_restarted_target(agent_factory):
    """Issue 5: the origin marked the killed target down and ran the task elsewhere; the
    restarted target finds the task in its journal but holds it until its origin asks for it
    again, which this origin never does: the task is dropped there, never started twice."""
    a, b = _started_pair(agent_factory, a_gossip_s=0.2, b_steps_per_s=5.0)
    node_a = _node(a)
    slow = GenerationRequest(prompt="forwarded, then reclaimed", steps=20, width=512, height=512)
    sock, task = _submit_forwarded(a, slow)
    try:
        with b.client() as client:
            wait_for(lambda: (client.result(task).get("step") or 0) >= 1, 60.0, "b running it")
        assert b.proc is not None
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        wait_for(lambda: cluster_view(a)["forwarding"]["reclaimed"] >= 1, 60.0, "a reclaims it")
        b.start()  # same port, same state directory: the task is in its journal
        dones = collect_dones(sock, task, timeout_s=120.0, linger_s=1.0)
    finally:
        sock.close(0)
    assert len(dones) == 1, [d.fields for d in dones]
    assert dones[0].get("ran_on")["node"] == node_a
    assert dones[0].get("placement").get("redispatches") == 1

    def b_row() -> dict[str, Any]:
        with b.client() as client:
            return next(r for r in client.tasks() if r["task"] == task)

    wait_for(lambda: b_row()["state"] != "queued", 60.0, "b drops the reclaimed task")
    row = b_row()
    assert row["state"] == "cancelled", row
    assert row["attempts"] == 1, row  # started once before the kill, never again
    assert "did not ask for it again" in b.log() or "cancel" in (row.get("error") or "")


def test_restarted_origin_asks_its_peer_again_instead_of_running_the_task_itself(agent_factory):
    """kill -9 of the origin while its forwarded task runs on the peer: after the restart
    the origin finds the task ``forwarded`` in its journal and asks the peer again (the link
    is not connected yet at that moment, which must not count as a refusal); the result
    comes back from the peer, and the task ran exactly once, there."""
    a, b = _started_pair(agent_factory, a_gossip_s=0.2, b_steps_per_s=5.0)
    node_b = _node(b)
    with a.client() as client:
        slow = GenerationRequest(prompt="origin dies meanwhile", steps=20, width=512, height=512)
        task = str(client.submit(slow, wait=False).get("task"))
    with b.client() as client:
        wait_for(lambda: (client.result(task).get("step") or 0) >= 1, 60.0, "b running it")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    a.start()

    def a_row() -> dict[str, Any]:
        with a.client() as client:
            return next(r for r in client.tasks() if r["task"] == task)

    wait_for(lambda: a_row()["state"] == "done", 120.0, "the origin relays the peer's result")
    row = a_row()
    assert row["ran_on"]["node"] == node_b, row
    assert row["attempts"] == 0, row  # never started at the origin
    view = cluster_view(a)
    assert view["forwarding"]["reclaimed"] == 0
    with b.client() as client:
        b_row = next(r for r in client.tasks() if r["task"] == task)
    assert b_row["state"] == "done" and b_row["attempts"] == 1, b_row
