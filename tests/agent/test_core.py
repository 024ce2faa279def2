"""AgentCore with a fake store: effects and their order, without sockets or threads."""

from __future__ import annotations

from typing import Any

from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.core import AgentCore, CancelJob, Persist, Send, StartJob
from dedgeai.agent.node.protocol import NodeId, TaskId
from dedgeai.agent.node.tasks import Started, TaskRecord, TaskState, apply
from dedgeai.agent.node.worker import JobFinished, JobStopped, StepDone
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
