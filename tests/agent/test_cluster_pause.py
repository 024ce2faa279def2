"""A frozen peer (SIGSTOP) whose tasks were reclaimed runs none of them when it wakes (item 10).

The origin marks a silent peer down and runs its tasks elsewhere. The peer, once continued,
sees that its loop was frozen for several gossip intervals and holds every forwarded task
until its origin asks for it again; the origin never does for reclaimed ones (it cancels
them instead, once it hears the peer again), so each task runs to completion exactly once.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from dedgeai.agent.cluster.peers import Heard, Peer, PeerState, PeerTable
from dedgeai.agent.lab.harness import cluster_view, peer_states, wait_for
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.core import AgentCore
from dedgeai.agent.node.protocol import NodeId, TaskId
from dedgeai.agent.security.authority import LOCAL_PEER
from dedgeai.models.backend import GenerationRequest
from tests.agent.test_core import FakeStore


def completed_runs(*state_dirs: Path) -> Counter[str]:
    """Runs to completion per task across agents: a relayed copy at the origin is not one."""
    runs: Counter[str] = Counter()
    for state in state_dirs:
        for meta_path in (state / "results").glob("*.json"):
            meta = json.loads(meta_path.read_text())
            if "relayed_at" not in meta:
                runs[meta_path.stem] += 1
    return runs


def _status(agent: Any) -> dict[str, Any]:
    with agent.client(timeout_s=5.0) as client:
        return client.status()


def test_a_frozen_peer_runs_no_reclaimed_task_twice(cluster_factory: Any) -> None:
    a, b = cluster_factory(
        {"emulated_steps_per_second": 400.0},
        {"emulated_steps_per_second": 10.0},
        policy="round-robin",
    )
    request = GenerationRequest(prompt="a frozen lake", steps=20, width=256, height=256)
    with a.client() as client:
        tasks = [client.submit(request, wait=False).get("task") for _ in range(8)]
    wait_for(lambda: _status(b)["queue"]["queued"] >= 2, 20.0, "tasks queued at the peer")
    assert b.proc is not None
    b.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: peer_states(a).get(b.endpoint) == "down", 20.0, "the peer marked down")
        with a.client() as client:
            wait_for(
                lambda: all(r["state"] == "done" for r in client.tasks() if r["task"] in tasks),
                30.0,
                "every task done at the origin",
            )
    finally:
        b.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: peer_states(a).get(b.endpoint) == "up", 20.0, "the peer up again")

    def peer_idle() -> bool:
        queue = _status(b)["queue"]
        return not queue["queued"] and not queue["held"] and queue["running"] is None

    wait_for(peer_idle, 30.0, "the peer to drop what it held")
    runs = completed_runs(a.state_dir, b.state_dir)
    assert {task: runs[task] for task in tasks} == dict.fromkeys(tasks, 1)
    assert cluster_view(a)["forwarding"]["reclaimed"] >= 2


# --- the pure parts: stale forwards after a freeze, a cancel that overtook its submit ---

ORIGIN = "22222222-2222-4222-8222-222222222222"


def _forward(task: str) -> p.Submit:
    return p.Submit("f", GenerationRequest(prompt="x", steps=2), TaskId(task), ORIGIN)


def _core() -> AgentCore:
    return AgentCore(NodeId("11111111-1111-4111-8111-111111111111"), 8, FakeStore())


def test_forwards_read_just_after_a_freeze_are_held_not_run() -> None:

    core = _core()
    core.hold_forwarded(10.0, stale_for_s=2.0)
    task = "77777777-7777-4777-8777-777777777777"
    core.handle((b"r",), _forward(task), 11.0, LOCAL_PEER)
    assert task in core.held and not core.queue  # maybe stale: its origin may have moved it
    core.handle((b"r",), _forward(task), 11.1, LOCAL_PEER)  # a second stale copy (a re-send)
    assert task in core.held and not core.queue  # is no new ask (chaos run, task a33227aa)
    core.handle((b"r",), _forward(task), 14.0, LOCAL_PEER)  # the origin asks again: run it
    assert list(core.queue) == [task] and task not in core.held
    fresh = "88888888-8888-4888-8888-888888888888"
    core.handle((b"r",), _forward(fresh), 14.0, LOCAL_PEER)  # after the window: runs
    assert list(core.queue) == [task, fresh]


def test_a_cancel_that_overtook_its_forward_wins() -> None:

    core = _core()
    task = "99999999-9999-4999-8999-999999999999"
    [reply] = [e.message for e in core.handle((b"r",), p.CancelRequest("c", TaskId(task)), 1.0)]
    assert reply["code"] == "not_found"
    effects = core.handle((b"r",), _forward(task), 2.0, LOCAL_PEER)
    [reply] = [e.message for e in effects]
    assert reply["code"] == "cancelled" and not core.tasks and not core.queue


def test_a_frozen_origin_forgives_its_peers_silence() -> None:

    table = PeerTable([Peer(1, "tcp://127.0.0.1:1", since=0.0)])
    table.apply_(1, Heard(1.0, {"node": "n"}))
    table.forgive_(9.0)  # frozen from 1 s to 9 s: 8 s of silence that was ours
    assert table.check_liveness_(9.5, 1.0) == []
    assert table.by_slot[1].state is PeerState.UP
    assert table.check_liveness_(12.5, 1.0) == [(1, PeerState.DOWN)]
