"""Work stealing (issue 12, ``work_stealing = true``): an idle agent pulls a queued task.

Real agents on loopback: the thief takes the last queued task of a backlogged peer, its
result reaches the client once, through the victim (and the victim's origin); a thief
killed (SIGKILL) right after it journaled the hand-over loses nothing: the victim reclaims
the task and it completes exactly once. ``steal`` is a peer message (a client gets
``forbidden``); a malformed one is ``bad_field``, and one naming no peer is refused; the
agent stays up. In process: the victim's choice, the thief's bookkeeping, the core's
hand-over.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from dedgeai.agent.cluster.coordinator import Cluster
from dedgeai.agent.cluster.peers import Heard
from dedgeai.agent.cluster.stealing import (
    MAX_SERVED_PER_INTERVAL,
    MIN_REPLY_TIMEOUT_S,
    TRIES_PER_SPELL,
    Candidate,
    Stealing,
    choose_offer,
)
from dedgeai.agent.errors import ErrorCode, ProtocolError
from dedgeai.agent.lab.harness import cluster_view, wait_capacity_known, wait_for
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.config import AgentConfig
from dedgeai.agent.node.core import AgentCore, Forward, Persist, Send
from dedgeai.agent.node.protocol import NodeId, TaskId
from dedgeai.agent.node.records import Placement
from dedgeai.agent.node.results import ResultStore
from dedgeai.agent.node.tasks import TaskRecord, TaskState
from dedgeai.models.backend import GenerationRequest, SpeedProfile
from tests.agent.test_core import FakeStore

ORIGIN = "0b4a2c9e-3d1f-4e5a-9c7b-2f6d8e1a4b3c"  # an origin agent that is not running


def _node(agent: Any) -> str:
    with agent.client() as client:
        return client.status()["agent"]["node"]


def _stealing(agent: Any) -> dict[str, Any]:
    return cluster_view(agent)["forwarding"]["stealing"]


def _dealer(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _dones(sock: zmq.Socket, tasks: list[str], timeout_s: float) -> dict[str, list[p.Reply]]:
    """Every ``done`` per task on ``sock`` until all arrived and 1 s more (a duplicate
    would show), or ``timeout_s``."""
    seen: dict[str, list[p.Reply]] = {t: [] for t in tasks}
    wait_for(lambda: _drain(sock, seen) and all(seen.values()), timeout_s, "every done")
    _drain(sock, seen, linger_s=1.0)
    return seen


def _drain(sock: zmq.Socket, seen: dict[str, list[p.Reply]], linger_s: float = 0.0) -> bool:
    while sock.poll(int(linger_s * 1000)):
        reply = p.parse_reply(sock.recv_multipart())
        if reply.type == "done":
            seen[reply.get("task")].append(reply)
    return True


# --- real agents -------------------------------------------------------------------------


def test_an_idle_agent_steals_a_queued_task_relayed_to_its_origin_once(
    cluster_factory: Any, raw_peer: Any
) -> None:
    """The victim's tasks were forwarded to it by an origin (this test's socket, a peer on
    keyless loopback): the stolen one's result goes thief -> victim -> origin, once."""
    victim, thief = cluster_factory(
        {"emulated_steps_per_second": 20.0},  # 1 s per task: a queue builds
        {"emulated_steps_per_second": 200.0, "work_stealing": True},
        policy="local",
    )
    wait_capacity_known(thief)
    thief_node = _node(thief)
    request = GenerationRequest(prompt="stolen", steps=20, width=512, height=512)
    tasks = [str(uuid.uuid4()) for _ in range(3)]
    origin = _dealer(victim.endpoint)
    try:
        for task in tasks:  # forwarded submits: they run at the victim, never placed again
            wire = p.request_to_wire(request)
            origin.send(p.encode(p.envelope("submit", f"fwd:{task}", **wire, task=task,
                                            origin=ORIGIN, wait=True)))  # fmt: skip
        dones = _dones(origin, tasks, timeout_s=30.0)
    finally:
        origin.close(0)
    assert all(len(d) == 1 for d in dones.values()), {t: len(d) for t, d in dones.items()}
    stolen = [d[0] for d in dones.values() if d[0].get("ran_on")["node"] == thief_node]
    assert stolen, "no task ran at the idle thief"
    for done in stolen:
        placement = done.get("placement")
        assert done.get("origin") == ORIGIN and placement["forwarded_by"] == ORIGIN
        assert placement["reason"].startswith("stolen by") and placement["local"] is False
    assert dones[tasks[0]][0].get("ran_on")["node"] != thief_node  # it ran first, here
    at_victim, at_thief = _stealing(victim), _stealing(thief)
    assert at_victim["given"] == at_victim["stolen_out"] == len(stolen)
    assert at_victim["sent"] == 0 and at_victim["enabled"] is False  # off: it never steals
    assert at_thief["stolen_in"] == len(stolen) and at_thief["sent"] >= len(stolen)
    assert at_thief["enabled"] is True and at_thief["received"] == 0

    # A malformed steal from a peer is `bad_field`; one naming no peer is refused. Still up.
    peer = raw_peer(victim.endpoint)  # keyless loopback: every local process is a peer
    good = {"node": thief_node, "capacity_steps_per_s": 50.0}
    for field, value in [("capacity_steps_per_s", float("nan")), ("capacity_steps_per_s", 0),
                         ("capacity_steps_per_s", -1.0), ("capacity_steps_per_s", "fast"),
                         ("node", "not-a-uuid"), ("node", None), ("extra", 1)]:  # fmt: skip
        peer.send(p.encode(p.envelope("steal", "s1", **{**good, field: value})))
        reply = p.parse_peer_reply(_recv(peer))
        assert reply.type == "error" and reply.get("code") == ErrorCode.BAD_FIELD.value, field
        assert reply.get("field") == field
    peer.send(p.encode(p.envelope("steal", "s2", node=str(uuid.uuid4()),
                                  capacity_steps_per_s=50.0)))  # fmt: skip
    reply = p.parse_peer_reply(_recv(peer))
    assert reply.type == "error" and reply.get("code") == ErrorCode.FORBIDDEN.value
    assert reply.get("field") == "node"
    peer.send(p.encode(p.envelope("steal", "s3", **good)))  # a real peer: nothing queued now
    reply = p.parse_peer_reply(_recv(peer))
    assert reply.type == "steal_reply" and reply.get("given") is False
    assert reply.get("reason") == "nothing queued"
    after = _stealing(victim)
    assert after["refused"] == at_victim["refused"] + 1
    assert after["declined"] == at_victim["declined"] + 1 and after["given"] == len(stolen)


def _recv(peer: Any) -> list[bytes]:
    assert peer.socket.poll(10_000), "no reply"
    return peer.socket.recv_multipart()


def test_a_thief_killed_after_it_journaled_the_hand_over_costs_no_second_result(
    cluster_factory: Any,
) -> None:
    victim, thief = cluster_factory(
        {"emulated_steps_per_second": 50.0},  # 1 s per task here
        {"emulated_steps_per_second": 25.0, "work_stealing": True},  # 2 s there: still sooner
        policy="local",  # every task queues at the victim, its origin
    )
    wait_capacity_known(thief)
    victim_node = _node(victim)
    request = GenerationRequest(prompt="kill the thief", steps=50, width=512, height=512)
    tasks = [str(uuid.uuid4()) for _ in range(4)]
    client = _dealer(victim.endpoint)
    try:
        for task in tasks:
            wire = p.request_to_wire(request)
            client.send(p.encode(p.envelope("submit", f"c-{task}", **wire, task=task)))

        def stolen() -> str | None:
            with thief.client() as c:
                rows = [r for r in c.tasks() if r["task"] in tasks]
            return rows[0]["task"] if rows else None

        task = wait_for(stolen, 20.0, "the thief to journal a stolen task")
        assert thief.proc is not None
        thief.proc.send_signal(signal.SIGKILL)
        thief.proc.wait(10)
        dones = _dones(client, tasks, timeout_s=30.0)
    finally:
        client.close(0)
    assert all(len(d) == 1 for d in dones.values()), {t: len(d) for t, d in dones.items()}
    done = dones[task][0]
    assert done.get("ran_on")["node"] == victim_node  # reclaimed: it ran at its origin
    placement = done.get("placement")
    assert placement["redispatches"] == 1 and "down" in placement["reclaimed"], placement
    with victim.client() as c:
        rows = [r for r in c.tasks() if r["task"] == task]
    assert len(rows) == 1 and rows[0]["state"] == "done" and rows[0]["attempts"] == 1
    view = cluster_view(victim)
    assert view["forwarding"]["reclaimed"] == 1 and view["forwarding"]["stealing"]["given"] == 1


def test_steal_from_a_client_is_forbidden_and_changes_nothing(
    agent_factory: Any, raw_peer: Any
) -> None:
    lone = agent_factory("lone", emulated_steps_per_second=400.0).start()  # no peers
    with lone.client() as client:
        before = client.status()["counters"]
    sock = raw_peer(lone.endpoint)
    sock.send(p.encode(p.envelope("steal", "q1", node=ORIGIN, capacity_steps_per_s=10.0)))
    reply = sock.recv()
    assert reply.type == "error" and reply.get("code") == ErrorCode.FORBIDDEN.value
    assert reply.id == "q1" and "peer message" in reply.get("message")
    with lone.client() as client:
        status = client.status()
    assert status["counters"] == before and status["queue"]["queued"] == 0


# --- the wire ----------------------------------------------------------------------------


def test_steal_parses_typed_and_its_reply_is_a_peer_reply_only() -> None:
    frame = p.encode(p.envelope("steal", "steal:1", node=ORIGIN.upper(), capacity_steps_per_s=7))
    msg = p.parse_request([frame])
    assert msg == p.Steal("steal:1", ORIGIN, 7.0) and isinstance(msg, p.Probe)
    assert type(msg.capacity_steps_per_s) is float
    for missing in ("node", "capacity_steps_per_s"):
        body = {"node": ORIGIN, "capacity_steps_per_s": 7.0}
        del body[missing]
        with pytest.raises(ProtocolError) as caught:
            p.parse_request([p.encode(p.envelope("steal", "s", **body))])
        assert caught.value.code is ErrorCode.BAD_FIELD and caught.value.field == missing
    huge = msgpack.packb({"v": 1, "type": "steal", "id": "s", "node": ORIGIN,
                          "capacity_steps_per_s": 1e7})  # fmt: skip
    with pytest.raises(ProtocolError):
        p.parse_request([huge])
    reply = p.envelope("steal_reply", "steal:1", given=True, task=ORIGIN)
    assert p.parse_peer_reply([p.encode(reply)]).get("given") is True
    with pytest.raises(ProtocolError) as caught:  # no client ever gets one
        p.parse_reply([p.encode(reply)])
    assert caught.value.code is ErrorCode.BAD_TYPE
    for bad in ({"given": "yes"}, {"given": True, "task": "x"}, {"task": ORIGIN}):
        with pytest.raises(ProtocolError):
            p.parse_peer_reply([p.encode(p.envelope("steal_reply", "steal:1", **bad))])


def test_work_stealing_is_off_by_default() -> None:
    assert AgentConfig().work_stealing is False


# --- the victim's choice and the thief's bookkeeping -------------------------------------

REQ = GenerationRequest(prompt="q", steps=20, width=512, height=512)


def _task(n: int) -> TaskRecord:
    return TaskRecord(id=TaskId(f"{n:08d}-0000-4000-8000-000000000000"), origin="o",
                      request=REQ, seq=n, submitted_at=0.0)  # fmt: skip


def _queue(n: int, transfer_s: float = 0.0) -> list[Candidate]:
    return [Candidate(_task(i), 20.0, transfer_s) for i in range(n)]


def test_the_victim_gives_its_last_task_only_when_the_thief_finishes_it_sooner() -> None:
    # 10 steps/s here; 3 queued behind 10 steps of the running task: the tail ends at 7 s.
    offer, why = choose_offer(_queue(3), 10.0, 10.0, 10.0, lambda t: True)
    assert offer is not None and offer.task.id == _task(2).id and why == ""
    assert offer.here_s == pytest.approx(7.0) and offer.there_s == pytest.approx(2.0)
    # A thief 4x slower: 8 s there for any of them, later than here. Nothing moves; why:
    offer, why = choose_offer(_queue(3), 10.0, 10.0, 2.5, lambda t: True)
    assert offer is None and why.startswith("not sooner there: best 8.00 s there vs 7.00")
    # The transfer counts: 2 s of work there + 4.9 s < 7 s here; + 5.1 s it is not.
    offer, _ = choose_offer(_queue(3, transfer_s=4.9), 10.0, 10.0, 10.0, lambda t: True)
    assert offer is not None and offer.there_s == pytest.approx(6.9)
    offer, _ = choose_offer(_queue(3, transfer_s=5.1), 10.0, 10.0, 10.0, lambda t: True)
    assert offer is None
    # An ineligible tail (e.g. its origin is the thief) is passed over for the one before.
    offer, _ = choose_offer(_queue(3), 10.0, 10.0, 10.0, lambda t: t.id != _task(2).id)
    assert offer is not None and offer.task.id == _task(1).id
    # Nothing running: the head would start at once here, so only the rest may move.
    offer, why = choose_offer(_queue(1), 0.0, 10.0, 100.0, lambda t: True)
    assert offer is None and "may move" in why
    assert choose_offer([], 0.0, 10.0, 10.0, lambda t: True) == (None, "nothing queued")


def test_the_thief_asks_the_most_backlogged_peer_twice_per_interval_at_most() -> None:
    thief = Stealing(enabled=True)
    reports = [(1, 2.0), (2, 5.0), (3, 0.0)]
    assert thief.choose(reports) == 2
    first = thief.open(2, 10.0, MIN_REPLY_TIMEOUT_S)
    assert thief.waiting(10.0, lambda t: False)  # one request in flight at a time
    assert thief.answered(first, 2, None, False, 10.01, 3.0)  # nothing for us there
    assert thief.choose(reports) == 1  # the next most backlogged
    second = thief.open(1, 10.02, MIN_REPLY_TIMEOUT_S)
    assert not thief.expired(10.02 + MIN_REPLY_TIMEOUT_S / 2)
    assert thief.expired(10.03 + MIN_REPLY_TIMEOUT_S)  # no answer in time: given up
    assert not thief.answered(second, 1, None, False, 11.0, 3.0)  # late
    assert len(thief.asked) == TRIES_PER_SPELL and thief.choose(reports) is None
    thief.busy()  # it got work: its next idle spell may ask again
    assert thief.choose(reports) == 2
    thief.open(2, 10.6, MIN_REPLY_TIMEOUT_S)
    thief.answered(f"steal:{thief.stats(0)['sent']}", 2, None, False, 10.61, 3.0)
    thief.open(1, 10.62, MIN_REPLY_TIMEOUT_S)
    thief.answered(f"steal:{thief.stats(0)['sent']}", 1, None, False, 10.63, 3.0)
    assert thief.choose(reports) is None  # 2 asked, nothing given: wait for the interval
    thief.new_interval()  # fresh reports: ask again
    third = thief.open(thief.choose(reports) or 0, 12.0, 1.0)
    given = TaskId(_task(7).id)
    assert thief.answered(third, 2, given, False, 12.01, 3.0)
    assert thief.waiting(12.02, lambda t: False)  # the given task has not arrived yet
    assert not thief.waiting(12.03, lambda t: t == given)  # arrived
    assert given in thief.stolen  # it stays here: never given away again
    stats = thief.stats(stolen_out=0)
    assert (stats["sent"], stats["stolen_in"], stats["empty"], stats["timed_out"]) == (5, 1, 3, 1)
    assert stats["late"] == 1 and stats["in_flight"] == 0


# --- the victim in process (links replaced by a list) -----------------------------------

SELF, THIEF = "tcp://127.0.0.1:7700", "tcp://127.0.0.1:7701"
THIEF_NODE = "00000001-0000-4000-8000-000000000000"


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[tuple[Cluster, list[tuple[int, dict[str, Any]]]]]:
    """A victim at 10 steps/s whose peer in slot 1 (the thief) is up; sends go to a list."""
    config = AgentConfig(endpoint=SELF, peers=(THIEF,), state_dir=str(tmp_path), policy="local")
    core = AgentCore(NodeId("11111111-1111-4111-8111-111111111111"), 64, FakeStore())
    core.profile = SpeedProfile({"512x512": 10.0}, "emulated", emulated=True)
    context = zmq.Context()
    cluster = Cluster(config, core, ResultStore(tmp_path / "results"), context, SELF, dict)
    core.join_cluster(cluster.identity, peers=True)
    info = {"node": THIEF_NODE, "name": "thief", "capacity_steps_per_s": 40.0,
            "backlog_steps": 0.0, "interval_load_steps": 0.0, "accepting": True,
            "started_at": 1.0}  # fmt: skip
    cluster.table.apply_(1, Heard(100.0, info, rtt_s=0.001))
    sent: list[tuple[int, dict[str, Any]]] = []
    cluster.links.send = lambda slot, message: sent.append((slot, message)) is None  # type: ignore[method-assign]
    yield cluster, sent
    cluster.close()
    context.term()


def _queue_tasks(core: AgentCore, n: int, origin: str | None = None) -> list[TaskRecord]:
    tasks = []
    for i in range(n):
        task = _task(100 + i)
        if origin is not None:
            task = TaskRecord(id=task.id, origin=origin, request=REQ, seq=i, submitted_at=0.0,
                              placement=Placement(forwarded_by=origin, via="key:o"))  # fmt: skip
        else:
            task = TaskRecord(id=task.id, origin=core.node, request=REQ, seq=i, submitted_at=0.0)
        core.tasks[task.id] = task
        core.queue.append(task.id)
        tasks.append(task)
    return tasks


def test_the_victim_hands_over_through_the_forward_path_journaled_first(victim: Any) -> None:
    cluster, sent = victim
    core = cluster.core
    tasks = _queue_tasks(core, 3, origin=ORIGIN)  # forwarded here by ORIGIN
    core.plan(100.0)  # the head starts
    msg = p.Steal("steal:1", THIEF_NODE, 40.0)
    effects = cluster.on_steal((b"thief",), msg, 100.0)
    persist, forward, reply = effects
    assert isinstance(persist, Persist) and isinstance(forward, Forward)
    moved = persist.task
    assert moved.id == tasks[2].id and moved.state is TaskState.FORWARDED
    assert moved.placement.target == 1 and moved.placement.forwarded_by == ORIGIN
    assert moved.placement.via == "key:o"  # its origin may still follow it here
    assert moved.placement.reason == "stolen by thief: est 0.50 s there, 6.00 s here"
    assert list(core.queue) == [tasks[1].id] and not core.stealable(moved.id)
    assert isinstance(reply, Send) and reply.message["type"] == "steal_reply"
    assert reply.message["given"] is True and reply.message["task"] == moved.id
    assert cluster.forward(moved, 100.0) == []  # the ordinary forwarded submit goes out
    [(slot, submit)] = sent
    assert slot == 1 and submit["type"] == "submit" and submit["origin"] == ORIGIN
    # A thief that went silent: the victim takes it back and runs it itself, once.
    effects = cluster.forwarding.reclaim_slot(1, "peer down", 104.0)
    assert core.tasks[moved.id].state is TaskState.QUEUED and core.queue[-1] == moved.id
    # Asked again: the reclaimed task is not sent back there (``avoid``); the one before is.
    again = cluster.on_steal((b"thief",), p.Steal("steal:2", THIEF_NODE, 40.0), 104.0)
    assert again[-1].message["given"] is True and again[-1].message["task"] == tasks[1].id
    assert list(core.queue) == [moved.id]
    stats = cluster.stealing.stats(core.counters["stolen_out"])
    assert stats["received"] == 2 and stats["given"] == 2 and stats["stolen_out"] == 2


def test_the_victim_never_gives_back_to_the_origin_nor_to_an_unknown_peer(victim: Any) -> None:
    cluster, _ = victim
    core = cluster.core
    _queue_tasks(core, 3, origin=THIEF_NODE)  # the thief itself forwarded them here
    core.plan(100.0)
    [reply] = cluster.on_steal((b"thief",), p.Steal("steal:1", THIEF_NODE, 40.0), 100.0)
    assert reply.message["given"] is False and len(core.queue) == 2
    assert reply.message["reason"].startswith("no queued task may move")
    stranger = p.Steal("steal:2", str(uuid.uuid4()), 40.0)
    [reply] = cluster.on_steal((b"x",), stranger, 100.0)
    assert reply.message["type"] == "error" and reply.message["code"] == "forbidden"
    [reply] = cluster.on_steal((b"x",), p.Steal("steal:3", str(core.node), 40.0), 100.0)
    assert reply.message["code"] == "forbidden"
    # A flood: each steal reads the queue, so beyond the interval's budget none is read.
    for i in range(MAX_SERVED_PER_INTERVAL):
        cluster.on_steal((b"thief",), p.Steal(f"f{i}", THIEF_NODE, 40.0), 100.0)
    [reply] = cluster.on_steal((b"thief",), p.Steal("late", THIEF_NODE, 40.0), 100.0)
    assert reply.message["given"] is False and "too many" in reply.message["reason"]
    cluster.stealing.new_interval()
    [reply] = cluster.on_steal((b"thief",), p.Steal("next", THIEF_NODE, 40.0), 100.0)
    assert reply.message["reason"].startswith("no queued task may move")


def test_the_core_moves_only_a_queued_task_nobody_else_holds() -> None:
    core = AgentCore(NodeId("11111111-1111-4111-8111-111111111111"), 64, FakeStore())
    first, second, third, fourth = _queue_tasks(core, 4)
    core.plan(1.0)  # first runs
    target = Placement(local=False, target=1, reason="stolen")
    assert core.hand_over(first.id, target, 1.0) == []  # running
    core.held[second.id] = 1.0
    assert core.hand_over(second.id, target, 1.0) == []  # held for its origin
    core.queue.remove(third.id)
    core.placing[third.id] = None  # waiting for its placement (pod2 probes)
    assert core.hand_over(third.id, target, 1.0) == []
    assert core.counters["stolen_out"] == 0
    persist, forward = core.hand_over(fourth.id, target, 1.0)
    assert isinstance(persist, Persist) and isinstance(forward, Forward)
    assert persist.task.state is TaskState.FORWARDED and persist.task.placement == target
    assert fourth.id not in core.queue and core.counters["stolen_out"] == 1
    assert core.hand_over(fourth.id, target, 1.0) == []  # once


def test_a_long_queue_counts_every_task_ahead_of_the_tail(victim: Any) -> None:
    cluster, _ = victim
    core = cluster.core
    tasks = _queue_tasks(core, 70, origin=ORIGIN)  # more than the victim looks at
    core.plan(100.0)  # 20 steps running, 69 x 20 queued at 10 steps/s: the tail ends at 140 s
    persist, _, reply = cluster.on_steal((b"t",), p.Steal("s", THIEF_NODE, 40.0), 100.0)
    assert persist.task.id == tasks[-1].id and reply.message["given"] is True
    assert persist.task.placement.reason.endswith("0.50 s there, 140.00 s here")


def test_a_task_re_dispatched_too_often_stays_at_its_origin(victim: Any) -> None:
    cluster, _ = victim
    core = cluster.core
    for task in _queue_tasks(core, 3):  # first-hop tasks of the victim
        core.tasks[task.id] = replace(task, placement=Placement(force_local=True))
    core.plan(100.0)
    [reply] = cluster.on_steal((b"t",), p.Steal("s", THIEF_NODE, 40.0), 100.0)
    assert reply.message["given"] is False and len(core.queue) == 2
