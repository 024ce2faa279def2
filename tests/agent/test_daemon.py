"""The agent as a real process on loopback: tasks, cancellation, restarts, signals, load."""

from __future__ import annotations

import signal
import uuid

import pytest

from dedgeai.agent.errors import TaskFailed, TaskNotFound
from dedgeai.agent.lab.harness import wait_for
from dedgeai.agent.node import protocol as p
from dedgeai.models.backend import GenerationRequest


def _request(steps: int = 4, seed: int = 1, size: int = 256) -> GenerationRequest:
    return GenerationRequest(prompt="a red cube", steps=steps, width=size, height=size, seed=seed)


def _await_done(client, task: str) -> p.Reply:  # noqa: ANN001
    """``done`` of ``task``: the answer of ``result`` if finished, else what ``wait`` streams."""
    reply = client.result(task, wait=True)
    return reply if reply.type == "done" else client.wait(task)


def test_submit_streams_progress_then_done(tiny_agent):
    events: list[p.Reply] = []
    with tiny_agent.client() as client:
        accepted, done = client.generate(_request(steps=6), events.append)
        node = client.status()["agent"]["node"]
    assert accepted.type == "accepted" and uuid.UUID(accepted.get("task"))
    assert accepted.get("origin") == node  # submitted here, so this agent is the origin
    steps = [e.get("step") for e in events if e.type == "progress" and e.get("stage") != "queued"]
    assert steps == sorted(steps) and steps[-1] == 6
    assert events[-1].get("stage") == "decode"
    assert done.type == "done" and done.get("task") == accepted.get("task")
    assert done.get("steps") == 6 and done.get("emulated") is False and done.png
    assert set(done.get("timings")) >= {"queue_wait_s", "encode_s", "denoise_s", "decode_s"}


def test_result_after_the_fact_and_unknown_ids(tiny_agent):
    with tiny_agent.client() as client:
        accepted = client.submit(_request(steps=2), wait=False)
        task = accepted.get("task")
        done = _await_done(client, task)
    with tiny_agent.client() as other:  # a different connection, later
        again = other.result(task)
        assert again.type == "done" and again.fields == done.fields and again.png == done.png
        with pytest.raises(TaskNotFound):
            other.result(str(uuid.uuid4()))
        listed = {row["task"]: row for row in other.tasks(limit=100)}
        assert listed[task]["state"] == "done"


def test_retried_submit_with_same_id_runs_once(tiny_agent):
    task = p.new_task_id()
    with tiny_agent.client() as client:
        before = client.status()["counters"].get("accepted", 0)
        first = client.submit(_request(steps=2), task=task, wait=False)
        second = client.submit(_request(steps=2), task=task, wait=False)
        assert first.get("task") == second.get("task") == task
        _await_done(client, task)
        third = client.submit(_request(steps=2), task=task, wait=False)  # after done
        assert third.get("task") == task
        assert client.status()["counters"].get("accepted", 0) == before + 1


def test_status_reports_telemetry_backlog_capacity(shared_agent):
    with shared_agent.client() as client:
        status = client.status()
    assert status["agent"]["protocol"] == p.PROTOCOL_VERSION
    assert status["telemetry"]["source"] in ("nvml", "psutil")
    assert status["telemetry"]["devices"], "at least one device sample"
    assert status["capacity"]["steps_per_second"]["512x512"] == pytest.approx(400.0)
    assert status["queue"]["max_queue"] == 256
    assert status["backend"]["emulated"] is True and "EMULATED" in status["backend"]["plan"]["text"]


def test_cancel_queued_and_running(agent_factory):
    agent = agent_factory(emulated_steps_per_second=20.0).start()
    with agent.client() as client, agent.client() as watcher:
        running = client.submit(_request(steps=100, size=512), wait=False).get("task")
        queued = client.submit(_request(steps=100, size=512), wait=False).get("task")
        watcher.result(running, wait=True)  # subscribe, then wait for real progress
        reply = watcher.recv(10.0)
        while reply is not None and not (reply.get("stage") == "denoise" and reply.get("step")):
            reply = watcher.recv(10.0)
        assert reply is not None, "the running task made no progress"
        assert client.cancel(queued).get("state") == "cancelled"
        assert client.cancel(running).get("state") == "cancelling"
        with pytest.raises(TaskFailed) as failed:
            watcher.wait(running)
        assert failed.value.code == "cancelled"
        with pytest.raises(TaskFailed) as failed_queued:
            client.result(queued)
        assert failed_queued.value.code == "cancelled"
        rows = {row["task"]: row for row in client.tasks()}
        assert rows[running]["state"] == rows[queued]["state"] == "cancelled"
        assert rows[running]["step"] < 100
        reply = client.request({"type": "cancel", "task": running}, raise_errors=False)
        assert reply.type == "error" and reply.get("code") == "already_finished"


def test_kill9_restart_finishes_everything_once(agent_factory):
    # The crash point is an event, not a moment: the agent SIGKILLs itself as the third task
    # is about to start, so exactly the first two are done whatever the machine's load.
    agent = agent_factory(emulated_steps_per_second=50.0)
    agent.env = {"DEDGEAI_FAILPOINT": "persisted:running@3"}
    agent.start()
    with agent.client() as client:
        tasks = [
            client.submit(_request(steps=20, seed=i), wait=False).get("task") for i in range(8)
        ]
    assert agent.proc is not None and agent.proc.wait(timeout=60) == -signal.SIGKILL
    assert "failpoint persisted:running: SIGKILL" in agent.log()
    done_before = {tasks[0], tasks[1]}

    agent.env = {}
    agent.start()
    with agent.client(timeout_s=10.0) as client:
        before = {row["task"]: row for row in client.tasks(limit=100)}
        assert all(before[t]["state"] == "done" for t in done_before)  # from the journal
        for task in tasks:
            _await_done(client, task)
        after = {row["task"]: row for row in client.tasks(limit=100)}
        counters = client.status()["counters"]
    assert set(after) == set(tasks) and all(row["state"] == "done" for row in after.values())
    assert counters.get("started", 0) == 8 - len(done_before)  # nothing done ran again
    for task in done_before:
        assert after[task]["finished_at"] == before[task]["finished_at"]
        assert after[task]["attempts"] == 1


def test_sigterm_checkpoints_running_task_and_exits_fast(agent_factory):
    agent = agent_factory(emulated_steps_per_second=10.0).start()
    with agent.client() as client:
        task = client.submit(_request(steps=100, size=512), wait=False).get("task")
        wait_for(
            lambda: client.status()["queue"]["running_step"] not in (None, 0),
            30.0,
            "the first step",
        )
    # "fast": it checkpoints instead of finishing the 10 s task (attempts == 2 below says
    # the task was interrupted); a hang is a TimeoutExpired, never a slow pass.
    code, _took = agent.stop(signal.SIGTERM, timeout_s=60.0)
    assert code == 0
    assert "stopped (SIGTERM)" in agent.log()

    agent.start(emulated_steps_per_second=2000.0)
    with agent.client() as client:
        done = _await_done(client, task)
    assert done.get("attempts") == 2  # interrupted once, finished on the second run


def test_burst_of_300_submits_with_max_queue_64(agent_factory, raw_peer):
    # A long task holds the worker while the burst arrives, so the queue cannot drain
    # meanwhile: exactly max_queue submits are accepted whatever the machine's speed.
    agent = agent_factory(max_queue=64, emulated_steps_per_second=20.0).start()
    with agent.client() as client:  # 0.8 s a step, 80 s in all; a burst task takes 12 ms
        blocker = client.submit(_request(steps=100, size=2048), wait=False).get("task")
        wait_for(lambda: client.status()["queue"]["running"] == blocker, 30.0, "the blocker to run")
    peer = raw_peer(agent.endpoint)
    ids = [f"burst-{i}" for i in range(300)]
    for i, rid in enumerate(ids):
        message = {"v": 1, "type": "submit", "id": rid, "prompt": f"p{i}", "steps": 1,
                   "width": 256, "height": 256, "seed": i}  # fmt: skip
        peer.send(p.encode(message))
    verdicts: dict[str, str] = {}
    accepted: dict[str, str] = {}
    finished: set[str] = set()

    def record(reply: p.Reply) -> None:
        if reply.type == "accepted":
            verdicts[reply.id] = "accepted"
            accepted[reply.get("task")] = reply.id
        elif reply.type == "error" and reply.id not in verdicts:
            assert reply.get("code") == "busy", reply.fields
            verdicts[reply.id] = "busy"
        elif reply.type == "done":
            finished.add(reply.get("task"))

    while len(verdicts) < 300:
        record(peer.recv(timeout_s=30))
    assert set(verdicts) == set(ids) and not finished  # the blocker still runs
    counts = {v: list(verdicts.values()).count(v) for v in ("accepted", "busy")}
    assert counts == {"accepted": 64, "busy": 236}, counts
    with agent.client() as client:
        assert client.cancel(blocker).get("state") == "cancelling"
    while finished != set(accepted):  # every accepted task runs once the worker is free
        record(peer.recv(timeout_s=30))
    assert len(verdicts) == 300


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_tiny_model_png_end_to_end_and_on_disk(tiny_agent):
    events: list[p.Reply] = []
    request = GenerationRequest(prompt="a lighthouse", steps=2, width=256, height=272, seed=3)
    with tiny_agent.client(timeout_s=10.0) as client:
        accepted, done = client.generate(request, events.append)
        assert [e.get("step") for e in events if e.get("stage") in ("denoise", "decode")][-1] == 2
        assert _png_size(done.png) == (256, 272) and done.get("emulated") is False
        assert done.get("png_bytes") == len(done.png)
        again = client.result(accepted.get("task"))
    assert again.png == done.png
    stored = tiny_agent.state_dir / "results" / f"{accepted.get('task')}.png"
    assert stored.read_bytes() == done.png
