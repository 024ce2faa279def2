"""The task transition table, exhaustively, without sockets."""

from __future__ import annotations

import itertools
import typing

import pytest

from dedgeai.agent.node.protocol import TaskId
from dedgeai.agent.node.tasks import (
    TRANSITIONS,
    CancelRequested,
    Failed,
    Finished,
    Forwarded,
    Interrupted,
    InvalidTransition,
    Reclaimed,
    Started,
    Stepped,
    Stopped,
    TaskEvent,
    TaskRecord,
    TaskState,
    apply,
    backlog,
)
from dedgeai.models.backend import GenerationRequest, SpeedProfile

EVENTS = [Started(1.0), Stepped(3), Finished(2.0, {"x": 1}), Failed(2.0, "boom"),
          CancelRequested(2.0), Stopped(2.0), Interrupted(), Forwarded(2.0, {"slot": 1}),
          Reclaimed("down")]  # fmt: skip

# The lifecycle written out by hand from docs/agent.md and the diagram in tasks.py, one row per
# state and one column per event (None: refused), so that the table is checked against an
# independent statement rather than against itself.
Q, R, F = TaskState.QUEUED, TaskState.RUNNING, TaskState.FORWARDED
DONE, FAIL, CANC = TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED
COLUMNS = (Started, Stepped, Finished, Failed, CancelRequested, Stopped, Interrupted, Forwarded,
           Reclaimed)  # fmt: skip
ROWS: dict[TaskState, tuple[TaskState | None, ...]] = {
    #      Started Stepped Finished Failed CancelReq Stopped Interrupted Forwarded Reclaimed
    Q:    (R,      None,   None,    None,  CANC,     None,   None,       F,        None),
    R:    (None,   R,      DONE,    FAIL,  R,        CANC,   Q,          None,     None),
    F:    (None,   F,      DONE,    FAIL,  F,        CANC,   None,       None,     Q),
    DONE: (None,) * 9,
    FAIL: (None,) * 9,
    CANC: (None,) * 9,
}  # fmt: skip
EXPECTED = {
    (state, event): target
    for state, row in ROWS.items()
    for event, target in zip(COLUMNS, row, strict=True)
}


def _task(state: TaskState = TaskState.QUEUED, steps: int = 10) -> TaskRecord:
    request = GenerationRequest(prompt="p", steps=steps, width=512, height=512)
    return TaskRecord(TaskId("t"), "origin", request, seq=1, submitted_at=0.0, state=state)


def test_the_expectation_covers_every_state_and_every_event_type():
    assert set(ROWS) == set(TaskState)
    assert set(COLUMNS) == set(typing.get_args(TaskEvent)) == {type(e) for e in EVENTS}


def test_the_table_is_exactly_the_expected_transitions():
    allowed = {pair: target for pair, target in EXPECTED.items() if target is not None}
    assert allowed == TRANSITIONS


@pytest.mark.parametrize(("state", "event"), list(itertools.product(TaskState, EVENTS)))
def test_every_pair_goes_where_expected_or_is_refused(state, event):
    task = _task(state)
    target = EXPECTED[(state, type(event))]
    if target is None:
        with pytest.raises(InvalidTransition):
            apply(task, event)
    else:
        assert apply(task, event).state is target


def test_finished_states_are_terminal():
    for (state, _event), _target in TRANSITIONS.items():
        assert not state.finished


def test_happy_path_records_times_steps_attempts():
    task = apply(_task(), Started(5.0))
    assert task.state is TaskState.RUNNING and task.attempts == 1 and task.started_at == 5.0
    task = apply(apply(task, Stepped(4)), Stepped(3))  # late, out-of-order steps never go back
    assert task.step == 4 and task.remaining_steps == 6
    task = apply(task, Finished(9.0, {"png_bytes": 1}))
    assert task.state is TaskState.DONE and task.step == 10 and task.remaining_steps == 0


def test_cancel_queued_is_immediate_running_is_deferred():
    assert apply(_task(), CancelRequested(1.0)).state is TaskState.CANCELLED
    running = apply(apply(_task(), Started(1.0)), CancelRequested(2.0))
    assert running.state is TaskState.RUNNING and running.cancel_requested
    stopped = apply(apply(running, Stepped(3)), Stopped(3.0))
    assert stopped.state is TaskState.CANCELLED and "step 3 of 10" in (stopped.error or "")


def test_interrupted_run_requeues_and_counts_attempts():
    task = apply(apply(apply(_task(), Started(1.0)), Stepped(5)), Interrupted())
    assert task.state is TaskState.QUEUED and task.step == 0 and task.attempts == 1
    assert apply(task, Started(2.0)).attempts == 2


def test_backlog_in_steps_and_seconds():
    profile = SpeedProfile({"512x512": 10.0}, backend="fake")
    tasks = [apply(apply(_task(), Started(0.0)), Stepped(4)), _task()]
    assert backlog(tasks, profile) == (16, pytest.approx(1.6))
    assert backlog(tasks, None) == (16, None)
