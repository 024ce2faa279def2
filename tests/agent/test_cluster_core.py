"""Peer lifecycle, slot assignment and forwarding at the origin, without sockets."""

from __future__ import annotations

import typing
from dataclasses import replace
from typing import Any

import pytest

from dedgeai.agent.cluster.coordinator import assign_slots
from dedgeai.agent.cluster.forwarding import MAX_REDISPATCHES, Forwarding, forward_message
from dedgeai.agent.cluster.peers import (
    LIVENESS_INTERVALS,
    TRANSITIONS,
    Heard,
    Peer,
    PeerEvent,
    PeerState,
    PeerTable,
    Refused,
    Silent,
    VersionMismatch,
    apply,
)
from dedgeai.agent.errors import ConfigError
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.core import AgentCore, Forward, Persist, Place, Send
from dedgeai.agent.node.protocol import NodeId, Reply
from dedgeai.agent.node.records import Placement
from dedgeai.agent.node.tasks import TaskState
from dedgeai.models.backend import GenerationRequest

# --- peers ---------------------------------------------------------------------------


# Written out by hand (docs/agent.md, "Peers"), independently of peers.TRANSITIONS: the state
# each event leads to from each state. "Silent" is a liveness check past the deadline.
_C, _U, _D = PeerState.CONNECTING, PeerState.UP, PeerState.DOWN
_X, _R = PeerState.INCOMPATIBLE, PeerState.REFUSED
PEER_COLUMNS = (Heard, Silent, VersionMismatch, Refused)
PEER_ROWS: dict[PeerState, tuple[PeerState, ...]] = {
    #    Heard Silent VersionMismatch Refused
    _C: (_U,   _D,    _X,             _R),
    _U: (_U,   _D,    _X,             _R),
    _D: (_U,   _D,    _X,             _R),
    _X: (_U,   _X,    _X,             _R),
    _R: (_U,   _R,    _X,             _R),
}  # fmt: skip
PEER_EVENTS = {
    Heard: Heard(50.0, {"node": "n1", "name": "b"}, rtt_s=0.01),
    Silent: Silent(100.0 + LIVENESS_INTERVALS * 1.0, 1.0),
    VersionMismatch: VersionMismatch(50.0, "speaks v2"),
    Refused: Refused(50.0, "refused our key"),
}


def test_the_peer_expectation_covers_every_state_and_event_type() -> None:
    assert set(PEER_ROWS) == set(PeerState)
    assert set(PEER_COLUMNS) == set(typing.get_args(PeerEvent)) == set(PEER_EVENTS)


def test_the_peer_table_is_exactly_the_expected_transitions() -> None:
    expected = {
        (state, event): target
        for state, row in PEER_ROWS.items()
        for event, target in zip(PEER_COLUMNS, row, strict=True)
    }
    assert expected == TRANSITIONS


@pytest.mark.parametrize("state", list(PeerState))
@pytest.mark.parametrize("event", PEER_COLUMNS)
def test_every_peer_state_and_event_goes_where_expected(state: PeerState, event: type) -> None:
    peer = Peer(1, "tcp://x:1", since=100.0, state=state)
    target = PEER_ROWS[state][PEER_COLUMNS.index(event)]
    assert apply(peer, PEER_EVENTS[event]).state is target
    if event is Silent:  # before the deadline a liveness check changes nothing
        assert apply(peer, Silent(100.0 + LIVENESS_INTERVALS * 1.0 - 0.1, 1.0)).state is state


def test_a_peer_is_down_after_3_silent_intervals_and_up_when_heard() -> None:
    peer = Peer(1, "tcp://x:1", since=100.0)
    assert apply(peer, Silent(100.0 + 2.9, 1.0)).state is PeerState.CONNECTING
    peer = apply(peer, Heard(101.0, {"node": "n1", "name": "b"}, rtt_s=0.01))
    assert peer.state is PeerState.UP and peer.node == "n1" and peer.rtt_s == 0.01
    assert apply(peer, Silent(101.0 + LIVENESS_INTERVALS - 0.1, 1.0)).state is PeerState.UP
    down = apply(peer, Silent(101.0 + LIVENESS_INTERVALS, 1.0))
    assert down.state is PeerState.DOWN and down.info  # the last telemetry is kept for status
    back = apply(down, Heard(110.0))  # any traffic counts, not only gossip
    assert back.state is PeerState.UP and back.info == down.info


def test_another_protocol_version_makes_a_peer_incompatible_until_it_speaks_ours() -> None:
    peer = apply(Peer(1, "tcp://x:1", since=0.0), VersionMismatch(1.0, "speaks v2"))
    assert peer.state is PeerState.INCOMPATIBLE and not peer.state.schedulable
    assert apply(peer, Silent(100.0, 1.0)).state is PeerState.INCOMPATIBLE
    assert apply(peer, Heard(2.0)).state is PeerState.UP


def test_peer_table_reports_changes() -> None:
    table = PeerTable([Peer(0, "tcp://a:1", since=0.0), Peer(2, "tcp://c:1", since=0.0)])
    table.apply_(0, Heard(0.5))
    assert table.up_slots() == {0}
    assert table.check_liveness_(3.0, 1.0) == [(2, PeerState.DOWN)]  # 0 spoke at 0.5
    assert table.check_liveness_(3.5, 1.0) == [(0, PeerState.DOWN)]
    assert table.check_liveness_(4.0, 1.0) == []


def test_slots_are_sorted_by_endpoint_with_self_skipped_in_the_peer_list() -> None:
    me = "tcp://127.0.0.1:7702"
    index, peers, n = assign_slots((me,), ("tcp://127.0.0.1:7703", me, "tcp://127.0.0.1:7701"), 0)
    assert (index, n) == (1, 3)
    assert peers == {0: "tcp://127.0.0.1:7701", 2: "tcp://127.0.0.1:7703"}
    assert assign_slots((me,), (), 4)[2] == 4  # spare slots for discovered peers
    with pytest.raises(ConfigError, match="cluster_size"):
        assign_slots((me,), ("tcp://h:1", "tcp://h:2"), 2)


# --- forwarding ----------------------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.seq = 0

    def finished(self, task: str) -> None:
        return None

    def png(self, task: str) -> bytes:
        return b""

    def result_meta(self, task: str) -> None:
        return None

    def recent(self, limit: int, state: str | None, owner: str | None = None) -> list[Any]:
        return []

    def take_seq(self) -> int:
        self.seq += 1
        return self.seq


class FakeResults:
    def __init__(self) -> None:
        self.written: list[str] = []

    def write(self, task: str, png: bytes, meta: dict[str, Any]) -> None:
        self.written.append(task)


class Placing(Forwarding):
    """Forwarding at an origin whose cluster sends tasks to ``targets`` in turn (slot 0 is
    this agent): every ``Place`` effect is answered at once, as the daemon's executor does."""

    def __init__(self, core: AgentCore, results: FakeResults, targets: list[int]) -> None:
        super().__init__(core, results, ack_timeout_s=2.0, quiet_s=3.0)  # type: ignore[arg-type]
        self.turn = iter(targets)
        self.placed = 0

    def place(self, task: Any) -> Placement:
        avoid = set(task.placement.get("avoid", ()))  # as the real placer: masked
        target = 0 if task.placement.get("force_local") else next(self.turn, 0)
        target = 0 if target in avoid else target
        return Placement(local=target == 0, target=target, policy="test", name=f"s{target}")

    def run(self, effects: list[Any], now: float) -> list[Any]:
        out: list[Any] = []
        for effect in effects:
            if isinstance(effect, Place):
                self.placed += 1
                out += self.core.placed(effect.task.id, self.place(effect.task), now)
            else:
                out.append(effect)
        return out

    def on_reply(self, slot: int, reply: Reply, now: float) -> list[Any]:
        return self.run(super().on_reply(slot, reply, now), now)

    def reclaim_slot(self, slot: int, why: str, now: float) -> list[Any]:
        return self.run(super().reclaim_slot(slot, why, now), now)

    def tick(self, now: float) -> tuple[list[Any], list[Any]]:
        effects, again = super().tick(now)
        return self.run(effects, now), again


def _origin(targets: list[int]) -> tuple[AgentCore, Placing, FakeResults]:
    core = AgentCore(NodeId("origin"), 16, FakeStore())
    core.join_cluster({"node": "origin"}, peers=True)
    results = FakeResults()
    return core, Placing(core, results, targets), results


def _submit(core: AgentCore, fwd: Placing) -> tuple[p.TaskId, list[Any]]:
    request = GenerationRequest(prompt="x", steps=4, width=256, height=256)
    effects = core.handle((b"client",), p.Submit("r1", request), 10.0)
    assert [type(e) for e in effects] == [Place]  # nothing is decided before the cluster
    effects = fwd.run(effects, 10.0)
    accepted = next(e for e in effects if isinstance(e, Send))
    return accepted.message["task"], effects


def _reply(kind: str, task: str, png: bytes = b"", **fields: Any) -> Reply:
    return Reply(kind, "fwd:" + task, {"task": task, **fields}, png)


def test_a_forwarded_task_is_journaled_before_it_is_sent_and_relayed_once() -> None:
    core, fwd, results = _origin([1])
    task, effects = _submit(core, fwd)
    kinds = [type(e) for e in effects]
    assert kinds.index(Persist) < kinds.index(Forward) < kinds.index(Send)
    assert core.tasks[task].state is TaskState.FORWARDED and not core.queue
    assert core.backlog()[0] == 0  # a peer's work
    message = forward_message(core.tasks[task])
    assert message["origin"] == "origin" and message["task"] == task and message["wait"]
    fwd.sent(core.tasks[task], 10.0)
    assert fwd.on_reply(1, _reply("accepted", task), 10.1) == []
    relayed = fwd.on_reply(1, _reply("progress", task, stage="denoise", step=2, position=0), 10.2)
    assert relayed[0].message["type"] == "progress" and relayed[0].route == (b"client",)
    ran_on = {"node": "peer"}
    done = fwd.on_reply(1, _reply("done", task, png=b"PNG", ran_on=ran_on), 11.0)
    sends = [e for e in done if isinstance(e, Send)]
    assert [s.message["type"] for s in sends] == ["done"] and sends[0].png == b"PNG"
    assert sends[0].message["ran_on"] == ran_on and sends[0].message["placement"]["target"] == 1
    assert results.written == [task] and task not in core.tasks
    # a late duplicate (e.g. after a resend) is dropped, never delivered twice
    assert fwd.on_reply(1, _reply("done", task), 12.0) == []
    assert fwd.dropped_duplicates == 1


def test_no_ack_in_time_or_a_refusal_redispatches_elsewhere_and_late_results_are_dropped() -> None:
    core, fwd, _ = _origin([1, 2])
    task, _ = _submit(core, fwd)
    fwd.sent(core.tasks[task], 10.0)
    effects, again = fwd.tick(12.5)  # no `accepted` within 2 s
    assert not again
    record = core.tasks[task]
    assert record.state is TaskState.FORWARDED and record.placement["target"] == 2
    assert record.placement["redispatches"] == 1 and record.placement["avoid"] == [1]
    assert any(isinstance(e, Forward) for e in effects)
    assert fwd.on_reply(1, _reply("done", task), 13.0) == []  # slot 1 no longer owns it
    fwd.sent(core.tasks[task], 13.0)
    fwd.on_reply(2, Reply("error", "fwd:" + task, {"code": "busy", "message": "full"}), 13.1)
    record = core.tasks[task]
    assert record.state is TaskState.QUEUED and list(core.queue) == [task]  # ran out of peers
    assert record.placement["local"] is True and record.placement["redispatches"] == 2


def test_tasks_of_a_peer_that_went_down_come_back_and_too_many_redispatches_run_locally() -> None:
    core, fwd, _ = _origin(list(range(1, MAX_REDISPATCHES + 3)))
    task, _ = _submit(core, fwd)
    for attempt in range(MAX_REDISPATCHES):
        slot = core.tasks[task].placement["target"]
        fwd.sent(core.tasks[task], 10.0)
        fwd.reclaim_slot(slot, "peer down", 11.0 + attempt)
    record = core.tasks[task]
    assert record.state is TaskState.QUEUED and record.placement["force_local"] is True
    assert record.placement["avoid"] == list(range(1, MAX_REDISPATCHES + 1))


def test_quiet_forwarded_tasks_are_asked_again_and_remote_failures_are_final() -> None:
    core, fwd, _ = _origin([1])
    task, _ = _submit(core, fwd)
    fwd.sent(core.tasks[task], 10.0)
    fwd.on_reply(1, _reply("accepted", task), 10.1)
    assert fwd.tick(12.0) == ([], [])
    _, again = fwd.tick(13.2)
    assert [t.id for t in again] == [task]
    error = Reply("error", "fwd:" + task, {"task": task, "code": "task_failed", "message": "oom"})
    effects = fwd.on_reply(1, error, 14.0)
    assert effects[-1].message["code"] == "task_failed" and task not in core.tasks


def test_cancel_of_a_forwarded_task_is_passed_on_and_its_cancelled_error_ends_it() -> None:
    from dedgeai.agent.node.core import CancelRemote

    core, fwd, _ = _origin([1])
    task, _ = _submit(core, fwd)
    fwd.sent(core.tasks[task], 10.0)
    effects = core.handle((b"c2",), p.CancelRequest("r2", task), 11.0)
    assert any(isinstance(e, CancelRemote) for e in effects)
    assert effects[-1].message["state"] == "cancelling"
    error = Reply("error", "fwd:" + task, {"task": task, "code": "cancelled", "message": "x"})
    fwd.on_reply(1, error, 12.0)
    assert task not in core.tasks


# --- placement at the origin ---------------------------------------------------------


@pytest.fixture
def cluster_of(tmp_path: Any) -> Any:
    """A real ``Cluster`` (its links never connect: the peer's port is closed)."""
    import zmq

    from dedgeai.agent.cluster.coordinator import Cluster
    from dedgeai.agent.node.config import AgentConfig

    made: list[Any] = []
    context = zmq.Context()

    def make(policy: str) -> Any:
        config = AgentConfig(
            state_dir=str(tmp_path / policy),
            policy=policy,
            peers=["tcp://127.0.0.1:9"],
            endpoint="tcp://127.0.0.1:8",
        )
        core = AgentCore(NodeId("origin"), 16, FakeStore())
        cluster = Cluster(config, core, None, context, config.endpoint, dict)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
    context.term()


def _task() -> Any:
    from dedgeai.agent.node.tasks import TaskRecord

    request = GenerationRequest(prompt="x", steps=4, width=256, height=256)
    return TaskRecord(p.TaskId("t1"), "origin", request, 1, 0.0)


def test_no_peer_to_choose_or_policy_local_places_here_without_asking_the_policy(
    cluster_of: Any,
) -> None:
    from dedgeai.agent.cluster.peers import Heard

    for policy in ("round-robin", "local"):
        cluster = cluster_of(policy)
        placement = cluster.place(_task())  # the peer is not up
        assert placement.local is True and placement.policy == "local"
        assert placement.target == cluster.self_index and placement["node"] == "origin"
        assert placement.probs[cluster.self_index] == 1.0 and sum(placement.probs) == 1.0
        assert cluster.decisions_made == 0  # neither the state nor the policy was computed
    peer = next(iter(cluster.table)).slot
    info = {"node": "b", "capacity_steps_per_s": 5.0, "accepting": True}
    rr = cluster_of("round-robin")
    rr.table.apply_(peer, Heard(1.0, info))
    decided = [rr.place(_task()) for _ in range(2)]
    assert rr.decisions_made == 2 and {d.policy for d in decided} == {"round-robin"}
    assert {d.target for d in decided} == {0, 1}  # the policy chose, both slots in turn
    forced = rr.place(replace(_task(), placement=Placement(force_local=True)))
    assert forced.local is True and rr.decisions_made == 2


def test_the_policy_host_stats_are_read_whole_under_the_writers_lock() -> None:
    import threading

    from dedgeai.agent.cluster.learning import HostStats

    stats = HostStats({"trained_steps": 0})
    written = threading.Event()

    def trainer() -> None:  # a key added by the training thread (e.g. ``saved_at``)
        stats["saved_at"] = 1.0
        written.set()

    with stats.lock:  # as ``snapshot`` holds it while it copies
        thread = threading.Thread(target=trainer)
        thread.start()
        assert not written.wait(0.05)  # the writer waits for the reader
        view = dict(stats)
    thread.join()
    assert written.is_set() and view == {"trained_steps": 0}
    snapshot = stats.snapshot()
    stats["trained_steps"] += 1
    assert snapshot == {"trained_steps": 0, "saved_at": 1.0}  # a copy, not a live view
