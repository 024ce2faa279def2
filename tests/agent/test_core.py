"""AgentCore with a fake store: effects and their order, without sockets or threads."""

from __future__ import annotations

from typing import Any

from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.core import AgentCore, CancelJob, Persist, Place, Send, StartJob
from dedgeai.agent.node.protocol import NodeId, TaskId
from dedgeai.agent.node.records import Placement
from dedgeai.agent.node.tasks import Started, TaskRecord, TaskState, apply
from dedgeai.agent.node.worker import JobFinished, JobStopped, StepDone
from dedgeai.agent.security.authority import Principal, Role
from dedgeai.models.backend import GenerationRequest

ROUTE = (b"client",)


class FakeStore:
    def __init__(self) -> None:
        self.saved: dict[str, TaskRecord] = {}
        self.images: dict[str, bytes] = {}
        self.metas: dict[str, dict[str, Any]] = {}
        self.seq = 0

    def persist(self, effects: list) -> None:  # noqa: ANN001
        for effect in effects:
            if isinstance(effect, Persist):
                self.saved[effect.task.id] = effect.task

    def finished(self, task: str) -> TaskRecord | None:
        record = self.saved.get(task)
        return record if record is not None and record.state.finished else None

    def png(self, task: str) -> bytes | None:
        return self.images.get(task)

    def result_meta(self, task: str) -> dict[str, Any] | None:
        return self.metas.get(task)

    def recent(self, limit: int, state: str | None, owner: str | None = None) -> list[TaskRecord]:
        rows = [t for t in self.saved.values() if owner in (None, t.owner)]
        return rows[-limit:]

    def take_seq(self) -> int:
        self.seq += 1
        return self.seq


def _core(max_queue: int = 4) -> tuple[AgentCore, FakeStore]:
    store = FakeStore()
    return AgentCore(NodeId("node-1"), max_queue, store), store


def _submit(rid: str, steps: int = 3, task: str | None = None) -> p.Submit:
    request = GenerationRequest(prompt="p", steps=steps, width=256, height=256)
    return p.Submit(rid, request, TaskId(task) if task else None)


def _sends(effects: list) -> list[dict[str, Any]]:  # noqa: ANN001
    return [e.message for e in effects if isinstance(e, Send)]


def test_submit_persists_before_accepting_and_plan_starts_it():
    core, store = _core()
    effects = core.handle(ROUTE, _submit("r1"), now=1.0)
    assert [type(e) for e in effects] == [Persist, Send]  # journal first, then `accepted`
    accepted = effects[1].message
    assert accepted["type"] == "accepted" and accepted["position"] == 0
    assert accepted["origin"] == "node-1"
    store.persist(effects)
    planned = core.plan(now=2.0)
    assert isinstance(planned[0], Persist) and planned[0].task.state is TaskState.RUNNING
    assert isinstance(planned[1], StartJob) and planned[1].job.task == accepted["task"]
    assert core.plan(now=3.0) == []  # one task at a time


def test_queue_bound_answers_busy():
    core, _ = _core(max_queue=2)
    for i in range(2):
        core.handle(ROUTE, _submit(f"r{i}"), now=1.0)
    reply = _sends(core.handle(ROUTE, _submit("r9"), now=1.0))[0]
    assert reply["type"] == "error" and reply["code"] == "busy"


def test_progress_and_done_reach_the_submitter():
    core, store = _core()
    task = core.handle(ROUTE, _submit("r1", steps=2), now=1.0)[1].message["task"]
    core.plan(now=1.0)
    progress = _sends(core.on_worker(StepDone(task, 1, 2), now=1.1))
    assert (
        progress[0]["stage"] == "denoise" and progress[0]["step"] == 1 and progress[0]["id"] == "r1"
    )
    assert _sends(core.on_worker(StepDone(task, 2, 2), now=1.2))[0]["stage"] == "decode"
    effects = core.on_worker(JobFinished(task, 2.0, {"task": task, "steps": 2}, b"PNG"), now=2.0)
    store.persist(effects)
    done = [e for e in effects if isinstance(e, Send)][0]
    assert done.message["type"] == "done" and done.png == b"PNG"
    assert store.saved[task].state is TaskState.DONE and core.running is None
    assert task not in core.tasks  # finished tasks live on disk only


def test_queued_subscribers_learn_their_new_position():
    core, _ = _core()
    core.handle(ROUTE, _submit("a"), now=1.0)
    core.handle(ROUTE, _submit("b"), now=1.0)
    third = core.handle(ROUTE, _submit("c"), now=1.0)[1].message
    assert third["position"] == 2
    updates = [m for m in _sends(core.plan(now=2.0)) if m["stage"] == "queued"]
    assert [(m["id"], m["position"]) for m in updates] == [("b", 1), ("c", 2)]


def test_cancel_queued_then_running():
    core, store = _core()
    first = core.handle(ROUTE, _submit("a", steps=50), now=1.0)[1].message["task"]
    second = core.handle(ROUTE, _submit("b"), now=1.0)[1].message["task"]
    core.plan(now=1.0)
    effects = core.handle(ROUTE, p.CancelRequest("c1", TaskId(second)), now=2.0)
    store.persist(effects)
    messages = _sends(effects)
    assert messages[0]["code"] == "cancelled" and messages[0]["id"] == "b"  # the submitter
    assert messages[-1] == {"v": 1, "type": "cancelled", "id": "c1", "task": second,
                            "state": "cancelled"}  # fmt: skip
    effects = core.handle(ROUTE, p.CancelRequest("c2", TaskId(first)), now=2.0)
    assert any(isinstance(e, CancelJob) for e in effects)
    assert _sends(effects)[-1]["state"] == "cancelling"
    stopped = core.on_worker(JobStopped(first, 3.0, 7), now=3.0)
    store.persist(stopped)
    assert store.saved[first].state is TaskState.CANCELLED
    again = _sends(core.handle(ROUTE, p.CancelRequest("c3", TaskId(first)), now=4.0))[0]
    assert again["code"] == "already_finished"


def test_shutdown_checkpoint_requeues_at_the_front():
    core, _ = _core()
    first = core.handle(ROUTE, _submit("a"), now=1.0)[1].message["task"]
    core.handle(ROUTE, _submit("b"), now=1.0)
    core.plan(now=1.0)
    core.accepting = False
    effects = core.on_worker(JobStopped(first, 2.0, 1), now=2.0)
    assert effects[0].task.state is TaskState.QUEUED and core.queue[0] == first
    assert core.plan(now=3.0) == []  # nothing starts while stopping
    refused = _sends(core.handle(ROUTE, _submit("c"), now=3.0))[0]
    assert refused["code"] == "shutting_down"


def test_resubmit_with_known_id_is_idempotent():
    core, store = _core()
    task = "0b6a8a4e-6d8a-4b8e-9d5e-3f1f2f0a1b2c"
    store.persist(core.handle(ROUTE, _submit("a", task=task), now=1.0))
    again = core.handle(ROUTE, _submit("b", task=task), now=1.1)
    assert [type(e) for e in again] == [Send] and again[0].message["task"] == task
    assert len(core.queue) == 1


def test_a_retried_submit_in_the_turn_its_task_finished_is_not_run_again():
    """The finish leaves ``tasks`` at once but is committed at the end of the turn: a retried
    submit, a result and a cancel read in that turn must see the finished task, not the
    journal's stale row (the crash-recovery test caught a second run this way)."""
    core, store = _core()
    task = "0b6a8a4e-6d8a-4b8e-9d5e-3f1f2f0a1b2c"
    store.persist(core.handle(ROUTE, _submit("a", task=task), now=1.0))
    store.persist(core.plan(now=1.0))
    finished = core.on_worker(JobFinished(task, 2.0, {"task": task, "steps": 3}, b"PNG"), now=2.0)
    store.images[task] = b"PNG"  # the worker wrote the result; the done row is not committed
    assert store.finished(task) is None
    again = core.handle(ROUTE, _submit("b", task=task), now=2.0)
    assert not [e for e in again if isinstance(e, Persist | StartJob)] and not core.queue
    assert _sends(again)[0]["type"] == "accepted" and _sends(again)[0]["task"] == task
    result = _sends(core.handle(ROUTE, p.ResultRequest("r", TaskId(task), wait=False), now=2.0))
    assert result[0]["type"] == "done"
    cancel = _sends(core.handle(ROUTE, p.CancelRequest("c", TaskId(task)), now=2.0))
    assert cancel[0]["type"] == "error" and "already ended" in cancel[0]["message"]
    store.persist(finished)
    assert store.saved[task].attempts == 1


def test_recovery_requeues_running_and_keeps_stored_results():
    core, store = _core()
    request = GenerationRequest(prompt="p", steps=3, width=256, height=256)

    def record(name: str, seq: int) -> TaskRecord:
        return TaskRecord(TaskId(name), "n", request, seq=seq, submitted_at=0.0)

    interrupted = apply(record("t1", 1), Started(1.0))
    stored = apply(record("t2", 2), Started(1.0))
    queued = record("t3", 3)
    store.metas["t2"] = {"task": "t2", "finished_at": 5.0}
    effects = core.recover([queued, stored, interrupted], now=9.0)
    states = {e.task.id: e.task.state for e in effects if isinstance(e, Persist)}
    assert states == {"t1": TaskState.QUEUED, "t2": TaskState.DONE}
    assert list(core.queue) == ["t1", "t3"]  # journal order kept


class CountingStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def finished(self, task: str) -> TaskRecord | None:
        self.lookups += 1
        return super().finished(task)


def test_a_new_task_id_needs_no_journal_read_once_the_ids_are_known():
    store = CountingStore()
    core = AgentCore(NodeId("node-1"), 8, store)
    new = "3f0f4a52-0000-4000-8000-000000000001"
    core.handle(ROUTE, _submit("r0", task=new), now=1.0)
    assert store.lookups == 1  # no ids remembered: every id is looked up
    core.remember([])  # what the daemon does at start with the journal's ids
    fresh = "3f0f4a52-0000-4000-8000-000000000002"
    effects = core.handle(ROUTE, _submit("r1", task=fresh), now=1.0)
    assert store.lookups == 1 and _sends(effects)[0]["type"] == "accepted"
    store.persist(effects)
    store.persist(core.handle(ROUTE, p.CancelRequest("c1", TaskId(fresh)), now=2.0))
    assert store.saved[fresh].state is TaskState.CANCELLED and TaskId(fresh) not in core.tasks
    again = _sends(core.handle(ROUTE, _submit("r2", task=fresh), now=4.0))
    # idempotent, not run twice; a just-finished task is found in memory, no journal read
    assert store.lookups == 1 and again[0]["type"] == "accepted"
    assert TaskId(fresh) not in core.tasks and TaskId(fresh) not in core.queue
    core.recently_finished.clear()  # an older finished task: the journal is read
    again = _sends(core.handle(ROUTE, _submit("r2b", task=fresh), now=4.5))
    assert store.lookups == 2 and again[0]["type"] == "accepted"
    core.forget([fresh])  # deleted by retention: a later submit of it is new again
    core.handle(ROUTE, _submit("r3", task=fresh), now=5.0)
    assert store.lookups == 2 and TaskId(fresh) in core.tasks


def test_a_known_id_of_another_client_is_still_refused_with_known_ids():
    store = CountingStore()
    core = AgentCore(NodeId("node-1"), 8, store)
    taken = "3f0f4a52-0000-4000-8000-000000000003"
    store.saved[taken] = TaskRecord(
        TaskId(taken), "node-1", _submit("x").request, 1, 0.0, TaskState.DONE, owner="key:a"
    )
    core.remember([taken])
    bob = Principal("key:b", Role.CLIENT)
    reply = _sends(core.handle(ROUTE, _submit("r1", task=taken), now=1.0, sender=bob))[0]
    assert reply["code"] == "forbidden" and store.lookups == 1


def test_a_single_box_core_places_nothing_and_a_clustered_one_asks_first():
    core, _ = _core()
    core.join_cluster({"node": "node-1", "name": "a"}, peers=False)
    assert [type(e) for e in core.handle(ROUTE, _submit("r1"), now=1.0)] == [Persist, Send]
    core.join_cluster({"node": "node-1", "name": "a"}, peers=True)
    effects = core.handle(ROUTE, _submit("r2"), now=1.0)
    assert [type(e) for e in effects] == [Place]  # the `accepted` waits for the placement
    task = effects[0].task.id
    assert core.owned() == 2 and task not in core.queue  # counted, not yet runnable
    assert core.plan(now=1.0)[1].job.task != task
    placed = core.placed(task, Placement(local=True, target=0, policy="greedy"), now=1.1)
    assert [type(e) for e in placed] == [Persist, Send]
    assert placed[0].task.placement["policy"] == "greedy" and list(core.queue) == [task]
    assert placed[1].message["type"] == "accepted" and placed[1].message["task"] == task
    assert core.placed(task, Placement(local=True), now=1.2) == []  # answered once


def test_a_task_cancelled_before_its_placement_still_gets_its_accepted_first():
    core, _ = _core()
    core.join_cluster({"node": "node-1"}, peers=True)
    (place,) = core.handle(ROUTE, _submit("r1"), now=1.0)
    task = place.task.id
    cancel = core.handle((b"c2",), p.CancelRequest("r2", task), now=1.0)
    assert _sends(cancel)[-1]["state"] == "cancelled" and task not in core.tasks
    placed = core.placed(task, Placement(local=False, target=1, name="b"), now=1.1)
    assert [type(e) for e in placed] == [Send]  # not forwarded: it ended already
    assert placed[0].message["type"] == "accepted" and placed[0].message["position"] == 0
