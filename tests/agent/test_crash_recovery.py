"""Crash-only recovery: kill -9 at every journal transition, restart, every task ends once.

For each point of ``agent/node/failpoints.py`` a real agent (two peers for the forwarding
points) is started with ``DEDGEAI_FAILPOINT`` armed, a task with a client-chosen id is
driven to that transition, and the agent SIGKILLs itself there. It is then started again
on the same port and state directory, without the failpoint, and must: start cleanly (no
traceback, answers ``status``); end the task exactly once (one final state, one ``done``
to the client that retries its submit, ``result`` answers); leave nothing queued or held;
and never run a task to completion twice (one result file without ``relayed_at`` across
every agent, and a result that was on disk at the crash is not written again).
A last test kills the origin after it journaled the cancel of a forwarded task.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from dedgeai.agent.lab.harness import (
    AgentProcess,
    cluster_view,
    free_ports,
    start_peered,
    wait_capacity_known,
    wait_for,
)
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.failpoints import ENV, POINTS
from dedgeai.models.backend import GenerationRequest

FINAL = {"done": "done", "cancelled": "cancelled", "task_failed": "failed"}  # reply -> state
KILL_TIMEOUT_S = 30.0  # bounded waits: an agent on 2 busy cores, torch imported at start
END_TIMEOUT_S = 30.0
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NAMESPACE = uuid.UUID("6f1c2a52-0d7e-4c1b-9a51-3c0f6b1e2d40")


def _task_id(point: str) -> str:
    """A fixed, client-chosen task id per point (seeded runs, readable failures)."""
    return str(uuid.uuid5(NAMESPACE, point))


def _request(steps: int, size: int = 256, seed: int = 7) -> GenerationRequest:
    return GenerationRequest(prompt="crash here", steps=steps, width=size, height=size, seed=seed)


# --- the client: a DEALER that submits once, and again (same task id) after a restart -----


class RetryingClient:
    """A client of one endpoint that keeps every reply it ever got for its task."""

    def __init__(self, endpoint: str, task: str, request: GenerationRequest) -> None:
        self.task, self.request = task, request
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)  # a restart on the same port: zmq reconnects
        self.replies: list[p.Reply] = []
        self._ids = iter(range(1, 1_000))

    def submit(self) -> str:
        """Send the submit (``wait``: ``done`` streams back here); returns its request id."""
        rid = f"s{next(self._ids)}"
        wire = p.request_to_wire(self.request)
        self.socket.send(p.encode(p.envelope("submit", rid, **wire, task=self.task, wait=True)))
        return rid

    def cancel(self) -> None:
        self.socket.send(p.encode(p.envelope("cancel", "c1", task=self.task)))

    def next(self, timeout_s: float) -> p.Reply:
        if not self.socket.poll(int(timeout_s * 1000)):
            raise AssertionError(f"no reply for task {self.task} in {timeout_s} s")
        reply = p.parse_reply(self.socket.recv_multipart())
        self.replies.append(reply)
        return reply

    def until(self, match: Callable[[p.Reply], bool], timeout_s: float, what: str) -> p.Reply:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(left * 1000)):
                reply = self.next(0)
                if match(reply):
                    return reply
                if reply.type == "error":  # not what this test waits for: fail now
                    raise AssertionError(f"while waiting for {what}: {reply.fields}")
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {self.kinds()}")

    def final(self, timeout_s: float = END_TIMEOUT_S) -> p.Reply:
        """The task's final reply (``done`` or an error about it) after a (re)submit."""
        return self.until(
            lambda r: r.type == "done" or (r.type == "error" and r.get("task") == self.task),
            timeout_s,
            f"the end of task {self.task}",
        )

    def drain(self) -> None:
        """Read what is already here, so that a late duplicate ``done`` would be counted."""
        while self.socket.poll(200):
            self.next(0)

    def kinds(self) -> list[str]:
        return [f"{r.type}:{r.get('code') or r.get('stage') or ''}" for r in self.replies]

    def close(self) -> None:
        self.socket.close(0)


@contextmanager
def _client(endpoint: str, task: str, request: GenerationRequest) -> Iterator[RetryingClient]:
    client = RetryingClient(endpoint, task, request)
    try:
        yield client
    finally:
        client.close()


# --- crash and restart -----------------------------------------------------------------


@dataclass
class Crash:
    """What was on disk when an agent died: result files, and each task's journal row."""

    results: dict[Path, bytes]
    journal: dict[str, tuple[str, int]]  # task -> (state, attempts)

    def attempts_after(self, task: str) -> int:
        """Starts a task needs in all once it ends ``done`` after this crash: one more,
        unless it was done or its result was complete on disk (then it must not run)."""
        state, attempts = self.journal.get(task, ("queued", 0))
        complete = any(path.stem == task for path in self.results)
        return attempts if state == "done" or complete else attempts + 1


def _journal(state_dir: Path) -> dict[str, tuple[str, int]]:
    """The journal's rows, read-only, as the crash left them (the agent is dead)."""
    path = state_dir / "journal.sqlite3"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT id, state, attempts FROM tasks").fetchall()
    return {task: (state, attempts) for task, state, attempts in rows}


def _arm(agent: AgentProcess, point: str | None) -> None:
    agent.env = {**THREADS, **({ENV: point} if point else {})}


def _killed(agent: AgentProcess, point: str) -> Crash:
    """Wait until the agent SIGKILLed itself at ``point``; snapshot its results."""
    assert agent.proc is not None
    try:
        code = agent.proc.wait(KILL_TIMEOUT_S)
    except Exception as exc:
        raise AssertionError(f"the agent did not die at {point}:\n{agent.log()}") from exc
    assert code == -signal.SIGKILL, f"exit {code}, not SIGKILL:\n{agent.log()}"
    assert f"failpoint {point}: SIGKILL" in agent.log()
    results = {f: f.read_bytes() for f in (agent.state_dir / "results").glob("*.json")}
    return Crash(results, _journal(agent.state_dir))


def _start_killed(agent: AgentProcess, point: str) -> Crash:
    """Start ``agent`` armed at a point of its recovery: it dies before it serves."""
    _arm(agent, point)
    with pytest.raises(RuntimeError, match="agent exited with -9"):
        agent.start()
    return _killed(agent, point)


def _restart(agent: AgentProcess) -> None:
    """Start again, unarmed, same port and state: a clean start that answers status."""
    _arm(agent, None)
    offset = len(agent.log())
    agent.start()  # raises unless it wrote its endpoint and answered `status`
    assert "Traceback" not in agent.log()[offset:], agent.log()[offset:]


def _outcome(agent: AgentProcess, task: str) -> str | None:
    """The task's final state as ``result`` answers it; None while it is unfinished."""
    with agent.client() as client:
        reply = client.request({"type": "result", "task": task}, raise_errors=False)
    if reply.type == "done":
        assert reply.get("task") == task, reply.fields  # the PNG file exists (else not_found)
        return "done"
    if reply.type == "error":
        code = reply.get("code")
        assert code in FINAL, f"`result` of {task}: {reply.fields}"
        return FINAL[code]
    assert reply.type == "progress", reply.fields
    return None


def _settled(agent: AgentProcess) -> list[dict[str, Any]]:
    """Every task the agent lists, once none is queued, running, forwarded or held."""

    def rows() -> list[dict[str, Any]] | None:
        with agent.client() as client:
            listed = client.tasks(limit=100)
        return listed if all(r["state"] in FINAL.values() for r in listed) else None

    return wait_for(rows, END_TIMEOUT_S, f"every task of {agent.endpoint} to end")


def _runs(task: str, *agents: AgentProcess) -> list[dict[str, Any]]:
    """Result metadata of ``task`` that an agent produced itself (not a relayed copy)."""
    metas = []
    for agent in agents:
        path = agent.state_dir / "results" / f"{task}.json"
        if path.exists():
            metas.append(json.loads(path.read_bytes()))
    return [m for m in metas if "relayed_at" not in m]


def _kept(crash: Crash) -> None:
    """A result complete at the crash was not produced a second time."""
    for path, data in crash.results.items():
        assert path.read_bytes() == data, f"{path.name} was written again after the restart"


def _alive(*agents: AgentProcess) -> None:
    for agent in agents:
        assert agent.proc is not None and agent.proc.poll() is None, agent.log()


# --- one agent ---------------------------------------------------------------------------


def _single(agent_factory: Any, point: str, **settings: Any) -> AgentProcess:
    port = free_ports(1)[0]
    agent = agent_factory("solo", endpoint=f"tcp://127.0.0.1:{port}", policy="local", **settings)
    _arm(agent, point)
    return agent


def _end_once(agent: AgentProcess, client: RetryingClient, crash: Crash, expect: str) -> p.Reply:
    """The client retries its submit after the restart; the task ends once, as ``expect``."""
    client.submit()
    final = client.final()
    client.drain()
    assert _outcome(agent, client.task) == expect, client.kinds()
    dones = [r for r in client.replies if r.type == "done"]
    rows = [r for r in _settled(agent) if r["task"] == client.task]
    assert len(rows) == 1 and rows[0]["state"] == expect, rows
    runs = _runs(client.task, agent)
    if expect == "done":
        assert len(dones) == 1 and final is dones[0] and final.get("task") == client.task
        assert len(runs) == 1 and (agent.state_dir / "results" / f"{client.task}.png").exists()
    else:
        assert final.type == "error" and not dones and not runs, client.kinds()
    _kept(crash)
    _alive(agent)
    return final


def _queued_or_running_or_done(agent_factory: Any, point: str) -> None:
    """Killed after the queued / running / done commit, or with the PNG but no commit."""
    agent = _single(agent_factory, point).start()
    with _client(agent.endpoint, _task_id(point), _request(steps=3)) as client:
        client.submit()
        crash = _killed(agent, point)
        _restart(agent)
        _end_once(agent, client, crash, "done")
    row = next(r for r in _settled(agent) if r["task"] == client.task)
    assert row["attempts"] == crash.attempts_after(client.task), (row, crash.journal)
    if point in ("persisted:done", "result:written"):
        assert set(crash.results) == {agent.state_dir / "results" / f"{client.task}.json"}


def _cancelling(agent_factory: Any, point: str) -> None:
    """A cancel journaled while the step runs; recovery ends the task as cancelled."""
    agent = _single(agent_factory, point, emulated_steps_per_second=10.0).start()
    with _client(agent.endpoint, _task_id(point), _request(steps=100, size=512)) as client:
        client.submit()
        client.until(
            lambda r: r.type == "progress" and r.get("stage") == "denoise" and r.get("step") >= 1,
            END_TIMEOUT_S,
            "the first denoising step",
        )
        client.cancel()
        crash = _killed(agent, point)
        _restart(agent)
        final = _end_once(agent, client, crash, "cancelled")
    assert final.get("code") == "cancelled" and final.get("task") == client.task, final.fields


# --- two peers ---------------------------------------------------------------------------


def _pair(
    agent_factory: Any, a_point: str | None, b_point: str | None, b_steps_per_s: float = 10.0
) -> tuple[Any, Any]:
    """Origin a and peer b (round-robin), both up, a knowing b's capacity; a's next task
    goes to b (round-robin's first one, run here, ran at a)."""
    ends = [f"tcp://127.0.0.1:{port}" for port in free_ports(2)]
    common = {"peers": ends, "policy": "round-robin", "gossip_interval_s": 0.2}
    a = agent_factory("a", endpoint=ends[0], **common)
    b = agent_factory("b", endpoint=ends[1], emulated_steps_per_second=b_steps_per_s, **common)
    _arm(a, a_point)
    _arm(b, b_point)
    start_peered((a, b))
    wait_capacity_known(a)
    with a.client() as client:
        client.generate(_request(steps=1))
    return a, b


def _accepted(client: RetryingClient) -> p.Reply:
    return client.until(lambda r: r.type == "accepted", END_TIMEOUT_S, "accepted")


def _forwarded(agent_factory: Any, point: str) -> None:
    """The origin journaled the forward and died before asking its peer: it asks at restart."""
    a, b = _pair(agent_factory, point, None)
    with _client(a.endpoint, _task_id(point), _request(steps=4)) as client:
        client.submit()
        crash = _killed(a, point)
        _restart(a)
        client.submit()
        final = client.final()
        client.drain()
    assert final.type == "done" and [r.type for r in client.replies].count("done") == 1
    assert final.get("ran_on")["node"] != final.get("origin")  # it ran at b, as placed
    _kept(crash)
    _check_pair(a, b, client.task, "done")


def _held(agent_factory: Any, point: str) -> None:
    """b dies running a forwarded task; a reclaims and runs it; b restarts, journals it as
    held, dies there; restarted once more, b drops it and a's result is the only one."""
    a, b = _pair(agent_factory, None, "persisted:running")
    with _client(a.endpoint, _task_id(point), _request(steps=4)) as client:
        client.submit()
        assert _accepted(client).get("forwarded_to") is not None, client.kinds()
        _killed(b, "persisted:running")
        wait_for(lambda: cluster_view(a)["forwarding"]["reclaimed"] >= 1, 20.0, "a reclaims it")
        crash = _start_killed(b, point)
        _restart(b)
        final = client.final()
        client.drain()
    assert final.type == "done" and [r.type for r in client.replies].count("done") == 1
    assert final.get("placement").get("redispatches") == 1
    _kept(crash)
    b_row = _check_pair(a, b, client.task, "done")
    assert b_row is not None and b_row["state"] == "cancelled" and b_row["attempts"] == 1


def _check_pair(a: AgentProcess, b: AgentProcess, task: str, expect: str) -> dict | None:
    """Both agents settle, the origin's answer is ``expect``, one run in all; b's row."""
    assert _outcome(a, task) == expect
    a_rows = [r for r in _settled(a) if r["task"] == task]
    b_rows = [r for r in _settled(b) if r["task"] == task]
    assert len(a_rows) == 1 and a_rows[0]["state"] == expect and len(b_rows) <= 1, (a_rows, b_rows)
    assert len(_runs(task, a, b)) == (1 if expect == "done" else 0), _runs(task, a, b)
    _alive(a, b)
    return b_rows[0] if b_rows else None


SCENARIOS: dict[str, Callable[[Any, str], None]] = {
    "persisted:queued": _queued_or_running_or_done,
    "persisted:running": _queued_or_running_or_done,
    "persisted:cancelling": _cancelling,
    "persisted:forwarded": _forwarded,
    "persisted:held": _held,
    "persisted:done": _queued_or_running_or_done,
    "result:written": _queued_or_running_or_done,
}


def test_every_failpoint_has_a_scenario():
    assert set(SCENARIOS) == set(POINTS)


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_failpoint_then_restart_ends_every_task_once(agent_factory, point):
    assert point in SCENARIOS, f"add a crash scenario for the new failpoint {point}"
    SCENARIOS[point](agent_factory, point)


def test_origin_killed_after_journaling_a_cancel_of_a_forwarded_task(agent_factory):
    """The cancel of a forwarded task is journaled (``forwarded`` + cancel requested, the
    point's second hit) and the origin dies before passing it on: recovery must pass it on,
    as it honours a journaled cancel of a task running here; the task ends cancelled."""
    point = "persisted:forwarded"
    a, b = _pair(agent_factory, f"{point}@2", None, b_steps_per_s=2.0)  # outlives a's restart
    task = _task_id("cancel of a forwarded task")
    with _client(a.endpoint, task, _request(steps=40, size=512)) as client:  # 20 s at b
        client.submit()
        client.until(
            lambda r: r.type == "progress" and r.get("stage") == "denoise" and r.get("step") >= 1,
            END_TIMEOUT_S,
            "the first step, relayed from b",
        )
        client.cancel()
        crash = _killed(a, point)
        assert crash.journal[task][0] == "forwarded"
        _restart(a)
        client.submit()  # the client follows its task; it does not send the cancel again
        final = client.final()
        client.drain()
    assert final.type == "error" and final.get("code") == "cancelled", client.kinds()
    b_row = _check_pair(a, b, task, "cancelled")
    assert b_row is not None and b_row["state"] == "cancelled", b_row
