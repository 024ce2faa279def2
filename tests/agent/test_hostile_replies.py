"""The CLI against a hostile agent: a real ROUTER on loopback that sends crafted replies.

Nothing it sends may write a file outside the working directory, crash the CLI, or reach
the terminal as markup or control sequences; wrong types end in one clear line and exit 1.
"""

from __future__ import annotations

import io
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import typer
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from dedgeai.agent.client import cli_tasks as cli_agent
from dedgeai.agent.client import render
from dedgeai.agent.client.library import MAX_REPLY_BYTES, AgentClient
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.node import protocol as p

app = typer.Typer()
cli_agent.register(app)
runner = CliRunner()

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # only the signature is checked by the CLI
TRAVERSAL = "/../../P"
OTHER_TASK = "0badc0de-0000-4000-8000-000000000000"  # a valid id, not the one asked for
MARKUP = "[/] [red]x[/red] [bold]"
ANSI = "\x1b[31mred\x1b[0m\x1b]0;title\x07"
Respond = Callable[[dict[str, Any]], list[list[bytes]]]


def frame(kind: str, request: dict[str, Any], **fields: Any) -> bytes:
    return msgpack.packb({"v": 1, "type": kind, "id": request.get("id"), **fields})


class FakeAgent:
    """A ROUTER on loopback, in a thread, answering each request with ``respond(request)``."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self._ready, self._stop = threading.Event(), threading.Event()
        self.endpoint = ""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "fake agent did not bind"

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:*")
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(50):
                    continue
                identity, payload = sock.recv_multipart()
                request = msgpack.unpackb(payload)
                self.requests.append(request)
                for reply in self.respond(request):
                    sock.send_multipart([identity, *reply])
        finally:
            sock.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def fake_agent() -> Iterator[Callable[[Respond], FakeAgent]]:
    agents: list[FakeAgent] = []

    def make(respond: Respond) -> FakeAgent:
        agents.append(FakeAgent(respond))
        return agents[-1]

    yield make
    for agent in agents:
        agent.close()


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """No wrapping or cropping of cells, so the checks below see whole strings."""
    monkeypatch.setattr(cli_agent, "out", Console(width=400))
    monkeypatch.setattr(cli_agent, "err", Console(width=400, stderr=True))


def _run(agent: FakeAgent, *args: str, timeout_s: float = 2.0) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "-a", agent.endpoint, "--timeout", str(timeout_s)])
    # A crash is any exception other than the SystemExit of typer.Exit.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# Reply type names of the protocol being rewritten (``status``/``tasks`` -> new names).
STATUS = "agent_status" if "agent_status" in p.REPLY_TYPES else "status"
TASKS = "task_list" if "task_list" in p.REPLY_TYPES else "tasks"


def _refused(code: int, output: str) -> bool:
    """The CLI stopped at a bad reply the documented way: exit 1 and one clear line."""
    lines = output.strip().splitlines()
    return code == ExitCode.INTERNAL and len(lines) == 1 and lines[0].startswith("bad reply:")


# --- file names never come from a reply -------------------------------------------


@pytest.mark.parametrize("sent_task", [OTHER_TASK, TRAVERSAL, "../../../etc/x", 12345])
def test_result_names_the_file_after_the_id_the_user_typed(
    fake_agent, tmp_path, monkeypatch, sent_task
):
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    agent = fake_agent(lambda r: [[frame("done", r, task=sent_task, backend=TRAVERSAL), PNG]])
    task = str(uuid.uuid4()).upper()  # typed in capitals: canonicalised, then sanitised
    code, output = _run(agent, "result", task)
    assert agent.requests[0]["task"] == task.lower()
    if sent_task == OTHER_TASK:  # valid on the wire: the image is saved, under our name
        assert code == ExitCode.OK, output
        assert _files(tmp_path) == {f"work/dedgeai-{task.lower()[:8]}.png"}
    else:  # the protocol layer may refuse it first; nothing is written then
        assert (
            code == ExitCode.OK
            and _files(tmp_path) == {f"work/dedgeai-{task.lower()[:8]}.png"}
            or (_refused(code, output) and _files(tmp_path) == set())
        ), output


@pytest.mark.parametrize("sent_task", [OTHER_TASK, TRAVERSAL])
def test_submit_refuses_an_accepted_for_another_task(fake_agent, tmp_path, monkeypatch, sent_task):
    monkeypatch.chdir(tmp_path)
    accepted = {"task": sent_task, "position": 0, "origin": "x"}
    agent = fake_agent(lambda r: [[frame("accepted", r, **accepted)]])
    code, output = _run(agent, "submit", "a cat", "--steps", "1", "--size", "256x256")
    assert _refused(code, output) and _files(tmp_path) == set(), output


def test_submit_names_the_file_after_its_own_id(fake_agent, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def respond(r: dict[str, Any]) -> list[list[bytes]]:
        if r["type"] == "submit":
            accepted = [frame("accepted", r, task=r["task"], position=0, origin="x")]
            return [accepted, [frame("done", r, task=r["task"], backend=TRAVERSAL), PNG]]
        return []

    agent = fake_agent(respond)
    code, output = _run(agent, "submit", "a cat", "--steps", "1", "--size", "256x256")
    assert code == ExitCode.OK, output
    task = agent.requests[0]["task"]
    assert _files(tmp_path) == {f"dedgeai-{task[:8]}.png"} and TRAVERSAL in output


def test_result_refuses_an_image_that_is_not_a_png(fake_agent, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    agent = fake_agent(lambda r: [[frame("done", r, task=r["task"]), b"#!/bin/sh\nrm -rf ~\n"]])
    code, output = _run(agent, "result", str(uuid.uuid4()))
    assert _refused(code, output) and "PNG" in output and _files(tmp_path) == set(), output


def test_waiting_stops_when_the_agent_answers_for_another_task(fake_agent):
    answers: list[int] = []

    def respond(r: dict[str, Any]) -> list[list[bytes]]:
        answers.append(1)
        if len(answers) == 1:  # "still queued", then silence: the CLI asks again
            progress = {"stage": "queued", "step": 0, "steps": 1, "position": 0}
            return [[frame("progress", r, task=r["task"], **progress)]]
        return [[frame("done", r, task=OTHER_TASK), PNG]]

    code, output = _run(fake_agent(respond), "result", str(uuid.uuid4()), timeout_s=0.3)
    assert _refused(code, output) and len(answers) == 2, output


# --- wrong types: one clear line, exit 1 -------------------------------------------


@pytest.mark.parametrize(
    ("args", "reply"),
    [
        (("tasks",), {"type": TASKS, "tasks": "all of them"}),
        (("tasks",), {"type": TASKS, "tasks": [1, 2]}),
        (("status",), {"type": "error", "code": 7, "message": None}),
        (("cancel", str(uuid.uuid4())), {"type": "error", "code": ["x"], "message": "m"}),
        (("result", str(uuid.uuid4())), {"type": TASKS, "tasks": []}),
        (("status",), {"type": "nonsense"}),
    ],
)
def test_malformed_replies_end_in_one_line_and_exit_1(fake_agent, args, reply):
    agent = fake_agent(lambda r: [[frame(reply["type"], r, **reply)]])
    assert _refused(*_run(agent, *args))


def test_wrong_types_in_tables_render_as_question_marks(fake_agent):
    garbage: dict[str, Any] = {
        "agent": {"name": ["x"], "node": ["n"], "uptime_s": "long", "protocol": {}},
        "backend": {"model": ["m"], "emulated": "yes", "plan": "fast"},
        "queue": {"queued": [1], "running": {"x": 1}, "backlog_s": "soon"},
        "capacity": {"steps_per_second": {"512x512": "fast", "1024x1024": None}},
        "telemetry": {"devices": [None, {"kind": 3, "memory_used_bytes": "1"}], "note": 1},
        "counters": {"done": [1], "failed": None},
        "cluster": {"servers": ["x", {"state": ["up"], "slot": None, "error": {"e": 1}}]},
    }
    rows = [{"task": 1, "state": None, "submitted_at": "now", "ran_on": "me", "steps": [2]}]

    def respond(r: dict[str, Any]) -> list[list[bytes]]:
        if r["type"] == "status":
            return [[frame(STATUS, r, **garbage)]]
        return [[frame(TASKS, r, tasks=rows)]]

    agent = fake_agent(respond)
    for args in (("status", "--json"), ("tasks", "--json")):
        assert _run(agent, *args)[0] == ExitCode.OK, args
    code, output = _run(agent, "status")
    assert code == ExitCode.OK and "agent ?" in output and "? queued" in output, output
    code, output = _run(agent, "tasks")
    assert code == ExitCode.OK and "1 task(s)" in output, output


def test_deeply_nested_status_prints_as_json_or_is_refused(fake_agent):
    def respond(r: dict[str, Any]) -> list[list[bytes]]:
        head = msgpack.packb({"v": 1, "type": STATUS, "id": r["id"]})
        deep = msgpack.packb("deep") + b"\x91" * 1000 + b"\x90"  # json.dumps would recurse
        return [[bytes([head[0] + 1]) + head[1:] + deep]]  # fixmap of 3 entries -> 4

    code, output = _run(fake_agent(respond), "status", "--json")
    assert code == ExitCode.OK and '"deep"' in output or _refused(code, output), output


# --- remote text is never markup, never a control sequence ----------------------------


def test_markup_and_escapes_are_shown_literally(fake_agent):
    hostile = f"{MARKUP} {ANSI}"
    rows = [{"task": MARKUP, "state": "done", "steps": 2, "size": ANSI, "prompt": hostile,
             "submitted_at": 0.0, "ran_on": {"name": MARKUP}}]  # fmt: skip
    status = {
        **{k: {} for k in ("agent", "backend", "telemetry", "queue", "capacity", "counters")},
        "agent": {"name": MARKUP, "endpoint": ANSI},
        "cluster": {"servers": [{"slot": 0, "name": MARKUP, "state": MARKUP, "error": ANSI}]},
    }
    done = {"backend": hostile, "ran_on": {"name": MARKUP, "endpoint": ANSI}}

    def respond(r: dict[str, Any]) -> list[list[bytes]]:
        if r["type"] == "tasks":
            return [[frame(TASKS, r, tasks=rows)]]
        if r["type"] == "status":
            return [[frame(STATUS, r, **status)]]
        if r["type"] == "result":
            return [[frame("done", r, task=r["task"], **done), PNG]]
        return [[frame("error", r, code="internal", message=hostile)]]

    agent = fake_agent(respond)
    task = str(uuid.uuid4())
    for args, want in ((("tasks",), ExitCode.OK), (("status",), ExitCode.OK),
                       (("result", task, "--out", os.devnull), ExitCode.OK),
                       (("cancel", task), ExitCode.INTERNAL)):  # fmt: skip
        code, output = _run(agent, *args)
        assert code == want, (args, output)
        assert "[/]" in output and "[red]x[/red]" in output, output
        assert "\x1b" not in output and "\x07" not in output
        assert "\N{REPLACEMENT CHARACTER}[31mred" in output


# --- the renderers themselves, on arbitrary msgpack values ---------------------------

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
values = st.recursive(
    scalars | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
STATUS_KEYS = ("agent", "backend", "queue", "capacity", "telemetry", "counters")
CLUSTER_KEYS = ("scheduler", "decisions", "n_servers", "servers", "discovered_unused")
DONE_KEYS = ("task", "timings", "backend", "emulated", "ran_on", "placement", "width", "seed")


def _maps(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=dict.fromkeys(keys, values))


@settings(max_examples=60, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=_maps(STATUS_KEYS),
    cluster=_maps(CLUSTER_KEYS),
    done=_maps(DONE_KEYS),
    rows=st.lists(values, max_size=3),
)
def test_renderers_never_raise_and_never_emit_control_characters(status, cluster, done, rows):
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render.status_table(status))
    console.print(render.cluster_table(cluster))
    console.print(render.tasks_table(rows, 0.0))
    console.print(render.done_table(done, 1.0))
    shown = console.file.getvalue()
    assert not any(ord(ch) < 32 and ch != "\n" or 0x7F <= ord(ch) <= 0x9F for ch in shown)


def test_client_caps_reply_size():
    with AgentClient("tcp://127.0.0.1:1", timeout_s=0.1) as client:
        assert client._socket.getsockopt(zmq.MAXMSGSIZE) == MAX_REPLY_BYTES
