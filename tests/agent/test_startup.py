"""Start-up: the agent binds and answers ``status`` while its model loads (issue 11).

The daemon runs in this process (its real ROUTER, journal and worker thread) with the
backend factory gated by an event, so "still loading" is a state the test holds, not a race.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dedgeai.agent.client.library import AgentClient
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.lab.harness import AgentProcess, wait_for
from dedgeai.agent.node import daemon as daemon_module
from dedgeai.agent.node.config import AgentConfig
from dedgeai.agent.node.daemon import AgentDaemon
from dedgeai.agent.node.lifecycle import Notifier, StopFlag
from dedgeai.models.backend import Backend, BackendSpec, GenerationRequest
from dedgeai.models.emulated import EmulatedBackend
from dedgeai.models.errors import ModelError

REQUEST = GenerationRequest(prompt="a kite", steps=2, width=256, height=256)


class Gate:
    """A backend factory that waits until the test opens it (or fails when told to)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.open, self.entered, self.error = threading.Event(), threading.Event(), error

    def __call__(self, spec: BackendSpec) -> Backend:
        self.entered.set()
        assert self.open.wait(30.0), "the test never opened the gate"
        if self.error is not None:
            raise self.error
        return EmulatedBackend(spec.emulated_steps_per_second)


def _config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        endpoint="tcp://127.0.0.1:*",
        state_dir=str(tmp_path / "state"),
        keys_dir=str(tmp_path / "keys"),
        model="emulated",
        emulated_steps_per_second=200.0,
        profile_sizes=("256x256",),
        profile_steps=1,
        policy="local",
    )


@pytest.fixture
def gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start an in-process daemon whose model load waits for ``gate.open``."""
    started: list[tuple[AgentDaemon, threading.Thread]] = []

    def make(gate: Gate) -> AgentDaemon:
        monkeypatch.setattr(daemon_module, "create_backend", gate)
        made: list[AgentDaemon] = []
        bound = threading.Event()

        def run() -> None:  # sqlite wants the journal used by the thread that opened it
            made.append(AgentDaemon(_config(tmp_path), StopFlag(), Notifier()))
            bound.set()
            try:
                made[0].serve()
            finally:
                made[0].close()

        thread = threading.Thread(target=run, name="test-agent-loop", daemon=True)
        thread.start()
        assert bound.wait(30.0), "the daemon did not bind"
        started.append((made[0], thread))
        return made[0]

    yield make
    for daemon, thread in started:
        daemon.stop.set()
        thread.join(30.0)
        assert not thread.is_alive(), "the daemon did not stop"


def test_status_answers_while_loading_and_tasks_wait_for_the_model(gated):
    gate = Gate()
    daemon = gated(gate)
    assert gate.entered.wait(10.0)
    with AgentClient(daemon.endpoint, timeout_s=5.0) as client:
        status = client.status()
        agent = status["agent"]
        assert agent["state"] == "loading" and agent["doing"] == "loading model emulated"
        assert agent["state_since"] <= agent["uptime_s"] + daemon.started_at + 1.0
        assert status["backend"]["name"] == "emulated (loading)" and status["backend"]["emulated"]
        accepted = client.submit(REQUEST, wait=False)  # accepted and queued meanwhile
        queue = client.status()["queue"]
        assert queue["queued"] == 1 and queue["running"] is None
        gate.open.set()
        row = wait_for(
            lambda: (r := client.result(accepted.get("task"))).type == "done" and r,
            30.0,
            "the queued task to run once the model is loaded",
        )
        assert row.get("task") == accepted.get("task")
        after = client.status()["agent"]
        assert after["state"] == "ready" and after["state_since"] >= agent["state_since"]


def test_a_model_that_fails_to_load_stops_the_agent_with_exit_2(gated):
    gate = Gate(ModelError("no weights at /nowhere"))
    daemon = gated(gate)
    with AgentClient(daemon.endpoint, timeout_s=5.0) as client:
        assert client.status()["agent"]["state"] == "loading"
    gate.open.set()
    wait_for(daemon.stop.is_set, 10.0, "the failed load to stop the agent")
    assert daemon.exit_code == ExitCode.BAD_INPUT
    assert daemon.phase.name == "failed" and "no weights at /nowhere" in daemon.phase.doing


def test_the_process_logs_what_it_loads_then_ready(tmp_path):
    agent = AgentProcess(tmp_path / "a", policy="local", log_level="info").start()
    try:
        wait_for(lambda: "ready in" in agent.log(), 30.0, "the 'ready in' log line")
        log = agent.log()
        loading, listening = log.index("loading model emulated"), log.index("listening on")
        assert loading < listening < log.index("model emulated ready in")
        with agent.client() as client:
            assert client.status()["agent"]["state"] == "ready"
    finally:
        agent.close()
