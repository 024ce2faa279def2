"""Power of two choices (``pod2``, issue 12): ``probe`` between real agents, and its parts.

The origin asks 2 random peers for their load now and decides when both answered or at a
deadline: a frozen (SIGSTOPped) peer is masked after the deadline and the task is still
placed. ``probe`` is a peer message (a client gets ``forbidden``); a malformed
``probe_reply`` never reaches the decision (the schema refuses it).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from dedgeai.agent.cluster.coordinator import PROBE_ANSWER_MAX_AGE_S, Cluster
from dedgeai.agent.cluster.peers import Heard
from dedgeai.agent.cluster.probes import MIN_TIMEOUT_S, RTT_FACTOR, Probes, probe_timeout_s
from dedgeai.agent.errors import ErrorCode, ProtocolError
from dedgeai.agent.lab.harness import cluster_view, peer_states, wait_capacity_known, wait_for
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.config import AgentConfig
from dedgeai.agent.node.core import AgentCore, Forward, Persist, Place, Send
from dedgeai.agent.node.protocol import NodeId, TaskId
from dedgeai.agent.node.results import ResultStore
from dedgeai.agent.node.tasks import TaskRecord, TaskState
from dedgeai.agent.security.authority import LOCAL_CLIENT, LOCAL_PEER, Authority
from dedgeai.models.backend import GenerationRequest
from tests.agent.test_core import FakeStore

REQUEST = GenerationRequest(prompt="two choices", steps=4, width=256, height=256)


def _placements(agent: Any, tasks: list[str]) -> dict[str, dict[str, Any]]:
    with agent.client() as client:
        rows = client.tasks(limit=100)
    return {r["task"]: r for r in rows if r["task"] in tasks}


def _all_done(agent: Any, tasks: list[str]) -> bool:
    rows = _placements(agent, tasks)
    return len(rows) == len(tasks) and all(r["state"] == "done" for r in rows.values())


# --- real agents -------------------------------------------------------------------------


def test_pod2_places_every_task_on_probed_state_and_peers_answer(
    cluster_factory: Any, raw_peer: Any
) -> None:
    a, b, c = cluster_factory(
        {"emulated_steps_per_second": 20.0},
        {"emulated_steps_per_second": 400.0},
        {"emulated_steps_per_second": 400.0},
        policy="pod2",
        probe_timeout_s=10.0,  # every answer counts, however loaded the test machine
    )
    wait_capacity_known(a)
    with a.client() as client:
        tasks = [client.submit(REQUEST, wait=False).get("task") for _ in range(8)]
    wait_for(lambda: _all_done(a, tasks), 30.0, "every task done at the origin")
    placements = [row["placement"] for row in _placements(a, tasks).values()]
    for placement in placements:
        assert placement["policy"] == "pod2", placement
        assert placement["reason"].startswith("probed 2/2"), placement
        assert len(placement["probed"]) == 2 and placement["probe_ms"] >= 0
    assert any(not placement["local"] for placement in placements)  # 20x faster peers
    probes = cluster_view(a)["probes"]
    assert probes["rounds"] == 8 and probes["sent"] == 16
    assert probes["answered"] == 16 and probes["in_flight"] == 0
    served = [cluster_view(x)["probes"]["served"] for x in (b, c)]
    assert sum(served) == 16 and min(served) > 0  # both peers probed every time (d = 2)

    # On the wire: a peer's probe is answered with the load fields of its gossip.
    peer = raw_peer(b.endpoint)  # keyless loopback: every local process is a peer
    peer.send(p.encode(p.envelope("probe", "probe:x")))
    assert peer.socket.poll(10_000)
    reply = p.parse_peer_reply(peer.socket.recv_multipart())
    assert reply.type == "probe_reply" and reply.id == "probe:x"
    assert set(reply.fields) == set(p.PROBE_REPLY_FIELDS)
    assert reply.get("capacity_steps_per_s") == pytest.approx(400.0, rel=0.5)


def test_informed_probes_find_the_fast_peer_that_uniform_probes_miss_a_third_of_the_time(
    cluster_factory: Any,
) -> None:
    # Three peers, one 20 x faster: uniform probes (d = 2) skip it in 1 of 3 rounds, so 15 or
    # more of 16 rounds probe it with chance 1.4 %; drawn from soft-greedy's choice on gossip,
    # it is probed in every round but about 1 in 4,000. One round is let go: on a loaded
    # machine a late gossip can leave the fast peer out of one draw's candidates. One task at
    # a time: a burst would pile work sent to the fast peer into the origin's view until its
    # next report, and soft-greedy rightly spreads the probes then.
    a, *_, fast = cluster_factory(
        {"emulated_steps_per_second": 20.0, "probe_targets": "soft-greedy"},
        {"emulated_steps_per_second": 20.0},
        {"emulated_steps_per_second": 20.0},
        {"emulated_steps_per_second": 400.0},
        policy="pod2",
        probe_timeout_s=10.0,
    )
    wait_capacity_known(a)
    tasks: list[str] = []
    for _ in range(16):
        with a.client() as client:
            tasks.append(client.submit(REQUEST, wait=False).get("task"))
        wait_for(lambda: _all_done(a, tasks), 30.0, "the task done at the origin")
    fast_slot = next(
        s["slot"] for s in cluster_view(a)["servers"] if s["endpoint"] == fast.endpoint
    )
    rows = _placements(a, tasks).values()
    assert all(row["placement"]["policy"] == "pod2" for row in rows)
    missed = [row["placement"] for row in rows if fast_slot not in row["placement"]["probed"]]
    assert len(missed) <= 1, [(m["probed"], m["reason"], fast_slot) for m in missed]
    assert cluster_view(fast)["probes"]["served"] == 16 - len(missed)


def test_probe_from_a_non_peer_is_forbidden(agent_factory: Any, raw_peer: Any) -> None:
    lone = agent_factory("lone").start()  # no peers: every sender is a client
    sock = raw_peer(lone.endpoint)
    sock.send(p.encode(p.envelope("probe", "q1")))
    reply = sock.recv()
    assert reply.type == "error" and reply.get("code") == ErrorCode.FORBIDDEN.value
    assert reply.id == "q1" and "peer message" in reply.get("message")


def test_a_frozen_probed_peer_is_masked_and_the_task_still_placed(cluster_factory: Any) -> None:
    # Gossip every 2 s: the frozen peer stays "up" (3 silent intervals, 6 s) while the task
    # is placed, so only the probe's deadline (1 s: room for the live peer on a loaded
    # machine) can mask it.
    a, b, c = cluster_factory(
        {"emulated_steps_per_second": 100.0},
        {"emulated_steps_per_second": 400.0},
        {"emulated_steps_per_second": 400.0},
        policy="pod2",
        gossip_interval_s=2.0,
        probe_timeout_s=1.0,
    )
    wait_capacity_known(a)
    assert b.proc is not None
    b.proc.send_signal(signal.SIGSTOP)
    try:
        with a.client(timeout_s=5.0, retries=1) as client:
            task = client.submit(REQUEST, wait=False).get("task")
        wait_for(lambda: _all_done(a, [task]), 20.0, "the task done")
        placement = _placements(a, [task])[task]["placement"]
        b_slot = next(s["slot"] for s in cluster_view(a)["servers"] if s["endpoint"] == b.endpoint)
        assert f"masked slot {b_slot} (no answer in time)" in placement["reason"], placement
        assert placement["reason"].startswith("probed 1/2") and placement["target"] != b_slot
        probes = cluster_view(a)["probes"]
        assert probes["timed_out"] >= 1 and probes["in_flight"] == 0
    finally:
        b.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: peer_states(a).get(b.endpoint) == "up", 20.0, "the peer up again")


# --- the schema, the authority table and the bookkeeping, without sockets ---------------

GOOD_REPLY = {
    "v": 1,
    "type": "probe_reply",
    "id": "probe:1",
    "sent_at": 1.0e9,
    "backlog_steps": 12.0,
    "interval_load_steps": 4.0,
    "capacity_steps_per_s": 30.0,
    "accepting": True,
}


def _frames(**changes: Any) -> list[bytes]:
    body = {k: v for k, v in {**GOOD_REPLY, **changes}.items() if v is not _DROP}
    return [msgpack.packb(body, use_bin_type=True)]


_DROP = object()


def test_a_sane_probe_reply_parses() -> None:
    reply = p.parse_peer_reply(_frames())
    assert reply.type == "probe_reply" and reply.get("backlog_steps") == 12.0
    assert (
        p.parse_peer_reply(_frames(capacity_steps_per_s=None)).get("capacity_steps_per_s") is None
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"backlog_steps": _DROP}, "backlog_steps"),
        ({"backlog_steps": -1.0}, "backlog_steps"),
        ({"backlog_steps": float("nan")}, "backlog_steps"),
        ({"interval_load_steps": "4"}, "interval_load_steps"),
        ({"capacity_steps_per_s": float("inf")}, "capacity_steps_per_s"),
        ({"capacity_steps_per_s": 0}, "capacity_steps_per_s"),
        ({"capacity_steps_per_s": _DROP}, "capacity_steps_per_s"),
        ({"accepting": 1}, "accepting"),
        ({"sent_at": True}, "sent_at"),
        ({"backlog_steps": 2e9}, "backlog_steps"),
    ],
)
def test_malformed_probe_replies_are_refused_by_the_schema(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        p.parse_peer_reply(_frames(**changes))
    assert caught.value.code is ErrorCode.BAD_FIELD and caught.value.field == field


def test_probe_is_a_peer_request_and_its_reply_a_peer_reply() -> None:
    msg = p.parse_request([p.encode(p.envelope("probe", "q"))])
    assert msg == p.Probe("q")
    refusal = Authority.check(LOCAL_CLIENT, msg)
    assert refusal is not None and refusal.code is ErrorCode.FORBIDDEN
    assert Authority.check(LOCAL_PEER, msg) is None
    with pytest.raises(ProtocolError) as caught:  # a client never gets one
        p.parse_reply(_frames())
    assert caught.value.code is ErrorCode.BAD_TYPE
    with pytest.raises(ProtocolError):  # no fields of its own
        p.parse_request([p.encode(p.envelope("probe", "q", backlog_steps=1.0))])


def _task(n: int) -> TaskRecord:
    return TaskRecord(TaskId(f"{n:08d}-0000-4000-8000-000000000000"), "o", REQUEST, n, 0.0)


def test_a_round_completes_on_its_answers_or_masks_the_silent_at_its_deadline() -> None:
    probes = Probes(2, seed=7)
    chosen = probes.choose([1, 2, 3, 4])
    assert len(set(chosen)) == 2 and set(chosen) <= {1, 2, 3, 4}
    assert probes.choose([3]) == [3]

    rnd, ids = probes.open(_task(1), [1, 2], {1: 0.0, 2: 0.0}, now=10.0, timeout_s=0.05)
    assert probes.next_deadline() == pytest.approx(10.05)
    assert probes.answer(ids[1], 2, {"backlog_steps": 1.0}) is None  # not slot 2's id
    assert probes.answer(ids[1], 1, {"backlog_steps": 1.0}) is None  # one of two
    assert probes.answer(ids[2], 2, None, "answered error bad_type") is rnd  # complete
    assert rnd.answers.keys() == {1} and rnd.failed == {2: "answered error bad_type"}
    probes.close(rnd.task.id)

    silent, ids = probes.open(_task(2), [1, 3], {}, now=20.0, timeout_s=0.05)
    assert probes.answer(ids[3], 3, {"backlog_steps": 0.0}) is None
    assert probes.expired(20.01) == []
    assert probes.expired(20.05) == [silent]
    assert silent.failed == {1: "no answer in time"}
    probes.close(silent.task.id)
    assert probes.answer(ids[1], 1, {"backlog_steps": 0.0}) is None  # late: ignored
    stats = probes.stats()
    assert (stats["rounds"], stats["sent"], stats["answered"]) == (2, 4, 2)
    assert (stats["refused"], stats["timed_out"], stats["late"]) == (1, 1, 2)
    assert stats["in_flight"] == 0 and probes.next_deadline() is None


def test_the_probe_deadline_follows_the_slowest_link_or_the_config() -> None:
    assert probe_timeout_s([None, None], 0.0) == MIN_TIMEOUT_S
    assert probe_timeout_s([0.001, 0.002], 0.0) == MIN_TIMEOUT_S
    assert probe_timeout_s([0.01, 0.03, None], 0.0) == pytest.approx(RTT_FACTOR * 0.03)
    assert probe_timeout_s([0.03], 0.5) == 0.5


# --- the origin's decision, in process (links replaced by a list) ------------------------

SELF, B, C = "tcp://127.0.0.1:7700", "tcp://127.0.0.1:7701", "tcp://127.0.0.1:7702"
BIG = GenerationRequest(prompt="a queue", steps=20, width=512, height=512)  # 20 steps


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[Cluster, list[tuple[int, dict[str, Any]]]]]:
    """A pod2 origin (10 steps/s) whose peers in slots 1 and 2 gossiped 40 and 25 steps/s;
    what it sends to peers is appended to the list instead."""
    config = AgentConfig(
        endpoint=SELF, peers=(B, C), state_dir=str(tmp_path), policy="pod2", probe_timeout_s=0.05
    )
    core = AgentCore(NodeId("11111111-1111-4111-8111-111111111111"), 64, FakeStore())
    context = zmq.Context()
    cluster = Cluster(config, core, ResultStore(tmp_path / "results"), context, SELF, dict)
    core.join_cluster(cluster.identity, peers=True)
    for slot, speed in SPEEDS.items():
        info = {"node": f"{slot:08d}-0000-4000-8000-000000000000", "name": f"peer{slot}",
                "capacity_steps_per_s": speed, "backlog_steps": 0.0,
                "interval_load_steps": 0.0, "accepting": True, "started_at": 1.0}  # fmt: skip
        cluster.table.apply_(slot, Heard(100.0, info, rtt_s=0.001))
    sent: list[tuple[int, dict[str, Any]]] = []
    cluster.links.send = lambda slot, message: sent.append((slot, message)) is None  # type: ignore[method-assign]
    yield cluster, sent
    cluster.close()
    context.term()


def _submit(cluster: Cluster, now: float) -> TaskRecord:
    [place] = cluster.core.handle((b"client",), p.Submit("s", BIG), now)
    assert isinstance(place, Place)
    return place.task


SPEEDS = {1: 40.0, 2: 25.0}


def _reply(slot: int, probe_id: str, accepting: bool = True) -> p.Reply:
    """An idle peer's answer, as ``parse_peer_reply`` returns it."""
    body = {"v": 1, "type": "probe_reply", "id": probe_id, "sent_at": 100.0,
            "backlog_steps": 0.0, "interval_load_steps": 0.0,
            "capacity_steps_per_s": SPEEDS[slot], "accepting": accepting}  # fmt: skip
    return p.parse_peer_reply([p.encode(body)])


def test_the_decision_waits_for_both_answers_and_counts_what_it_sent_since(origin: Any) -> None:
    cluster, sent = origin
    first, second = _submit(cluster, 100.0), _submit(cluster, 100.0)  # one burst, one turn
    assert cluster.place(first, 100.0) is None and cluster.place(second, 100.0) is None
    probes = {(slot, m["id"]) for slot, m in sent if m["type"] == "probe"}
    assert {slot for slot, _ in probes} == {1, 2} and len(probes) == 4  # both peers, twice
    assert cluster.poll_ms(100, 100.0) <= 50  # the loop wakes up for the deadline
    effects: list[Any] = []
    for slot, probe_id in sorted(probes, key=lambda x: int(x[1].split(":")[1])):
        effects += cluster.on_probe_reply(slot, _reply(slot, probe_id), 100.01)  # both idle
    forwarded = {e.task.id: e.task.placement for e in effects if isinstance(e, Forward)}
    # Both answers said "idle"; the first task went to the fastest (0.5 s there, 2 s here),
    # and the second saw it there: 40 steps at 40/s = 1 s, so the 25 steps/s peer (0.8 s).
    assert forwarded[first.id].target == 1 and forwarded[second.id].target == 2
    assert forwarded[first.id].policy == "pod2"
    assert forwarded[second.id].reason.startswith("probed 2/2: est 0.80 s on peer2 vs here")
    accepted = [e.message for e in effects if isinstance(e, Send)]
    assert [m["type"] for m in accepted] == ["accepted", "accepted"]  # owed until placed
    assert cluster.probes is not None and cluster.probes.stats()["in_flight"] == 0


def test_silent_and_unwilling_peers_are_masked_and_the_task_runs_here(origin: Any) -> None:
    cluster, sent = origin
    task = _submit(cluster, 100.0)
    assert cluster.place(task, 100.0) is None
    ids = {slot: m["id"] for slot, m in sent if m["type"] == "probe"}
    assert cluster.on_probe_reply(1, _reply(1, ids[1], accepting=False), 100.01) == []
    assert not [e for e in cluster.tick(100.02) if isinstance(e, Persist)]  # still waiting
    effects = cluster.tick(100.06)  # past the 50 ms deadline: slot 2 never answered
    [queued] = [e.task for e in effects if isinstance(e, Persist)]
    assert queued.state is TaskState.QUEUED and list(cluster.core.queue) == [task.id]
    reason = queued.placement.reason
    assert reason.startswith("probed 0/2: est 2.00 s here"), reason
    assert "slot 1 (not accepting" in reason and "slot 2 (no answer in time)" in reason
    late = cluster.on_probe_reply(2, _reply(2, ids[2]), 100.07)  # after the decision: dropped
    assert late == [] and cluster.probes is not None and cluster.probes.stats()["late"] == 1


def test_with_no_link_connected_the_task_is_placed_at_once(origin: Any) -> None:
    cluster, _ = origin
    cluster.links.send = lambda slot, message: False  # type: ignore[method-assign]
    placement = cluster.place(_submit(cluster, 100.0), 100.0)
    assert placement is not None and placement.local and placement.policy == "pod2"
    assert "slot 1 (link not connected)" in placement.reason


def test_a_flood_of_probes_walks_the_queue_once_per_answer_age(origin: Any) -> None:
    """Each answer reads the whole queue: a peer sending probes back to back gets the same
    answer for ``PROBE_ANSWER_MAX_AGE_S``, a fresh one after it."""
    cluster, _ = origin
    walks = 0
    real = cluster.load_body

    def counted(now: float) -> dict[str, Any]:
        nonlocal walks
        walks += 1
        return real(now)

    cluster.load_body = counted  # type: ignore[method-assign]
    answers = [cluster.on_probe((b"peer",), p.Probe(f"q{i}"), 200.0 + i * 1e-4) for i in range(50)]
    assert walks == 1 and all(a[0].message["type"] == "probe_reply" for a in answers)
    assert [a[0].message["id"] for a in answers] == [f"q{i}" for i in range(50)]
    cluster.on_probe((b"peer",), p.Probe("later"), 200.0 + 2 * PROBE_ANSWER_MAX_AGE_S)
    assert walks == 2
