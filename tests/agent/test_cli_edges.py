"""Rough edges a first-time user hits (issue 11): one line and a documented exit code each.

Real agents on loopback (the emulated backend); typer's CliRunner in process, and one real
``dedgeai submit`` subprocess interrupted with SIGINT.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from dedgeai.agent.client import cli_tasks, render, version
from dedgeai.agent.client.library import AgentClient
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.lab.harness import wait_for
from dedgeai.models.backend import GenerationRequest

app = typer.Typer(no_args_is_help=True)
app.callback()(version.root_options)
cli_tasks.register(app)
runner = CliRunner()


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


def _one_line(output: str) -> None:
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def _task_count(endpoint: str) -> int:
    with AgentClient(endpoint) as client:
        return len(client.tasks(1000))


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:7700", "garbage", "tcp://127.0.0.1:99999", "localhost:99999", "tcp://:7"],
)
def test_bad_endpoint_is_bad_input(endpoint):
    code, output = _run("status", "-a", endpoint, "--timeout", "0.2")
    assert code == ExitCode.BAD_INPUT, output
    _one_line(output)
    assert "endpoint" in output


def test_endpoint_from_the_environment_is_checked():
    code, output = _run("tasks", "--timeout", "0.2", env={"DEDGEAI_AGENT": "garbage"})
    assert code == ExitCode.BAD_INPUT, output
    _one_line(output)


def test_host_port_without_scheme_means_tcp(shared_agent):
    host_port = shared_agent.endpoint.removeprefix("tcp://")
    code, output = _run("status", "-a", host_port, "--json")
    assert code == ExitCode.OK, output


@pytest.mark.parametrize("timeout", ["-1", "0", "nan"])
def test_timeout_must_be_positive(shared_agent, timeout):
    code, output = _run("status", "-a", shared_agent.endpoint, "--timeout", timeout)
    assert code == ExitCode.BAD_INPUT, output
    _one_line(output)
    assert "timeout" in output


@pytest.mark.parametrize("where", ["dir", "/proc/dedgeai-x.png", "readonly"])
def test_submit_out_checked_before_the_task_exists(shared_agent, tmp_path, where):
    if where == "readonly":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere: /proc covers the unwritable case")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        out = str(folder / "cat.png")
    else:
        out = str(tmp_path) if where == "dir" else where
    before = _task_count(shared_agent.endpoint)
    code, output = _run("submit", "a cat", "--steps", "2", "--size", "256x256",
                        "-a", shared_agent.endpoint, "--out", out)  # fmt: skip
    assert code == ExitCode.BAD_INPUT, output
    _one_line(output)
    assert _task_count(shared_agent.endpoint) == before  # nothing was submitted


def test_result_out_unwritable_is_one_line(shared_agent):
    code, task = _run("submit", "a cat", "--steps", "2", "--size", "256x256",
                      "-a", shared_agent.endpoint, "--no-wait")  # fmt: skip
    assert code == ExitCode.OK
    code, output = _run("result", task.strip(), "-a", shared_agent.endpoint,
                        "--out", "/proc/dedgeai-x.png")  # fmt: skip
    assert code == ExitCode.BAD_INPUT, output
    _one_line(output)
    assert "/proc/dedgeai-x.png" in output


def test_unique_prefixes_resolve_and_ambiguous_ones_list_candidates(agent_factory):
    agent = agent_factory(emulated_steps_per_second=2.0).start()
    first = "abcd0000-0000-4000-8000-000000000001"
    second = "abcd1111-0000-4000-8000-000000000002"
    request = GenerationRequest("a cat", steps=50, width=256, height=256, seed=1)
    with AgentClient(agent.endpoint) as client:
        for task in (first, second):
            client.submit(request, task=task, wait=False)
    code, output = _run("result", "abcd", "-a", agent.endpoint, "--no-wait")
    assert code == ExitCode.BAD_INPUT, output
    _one_line(output)
    assert "ambiguous" in output and first in output and second in output
    code, output = _run("cancel", "ABCD1", "-a", agent.endpoint)
    assert (code, output) == (ExitCode.OK, f"{second}: cancelled\n")
    code, output = _run("result", "abcd0", "-a", agent.endpoint, "--no-wait")
    assert code == ExitCode.OK and output.startswith(first), output
    code, output = _run("cancel", "ffff", "-a", agent.endpoint)
    assert code == ExitCode.BAD_INPUT and "no task id starts with" in output, output
    code, output = _run("cancel", "xyz!", "-a", agent.endpoint)
    assert code == ExitCode.BAD_INPUT, output


def test_version():
    code, output = _run("--version")
    assert code == ExitCode.OK and output.startswith("dedgeai "), output
    assert output.strip() == version.version_text()


def _rows(n: int) -> list[dict]:
    prompt = "a lighthouse at dusk over a stormy sea, oil painting, very detailed"
    return [
        {
            "task": str(uuid.UUID(int=i + 1, version=4)),
            "state": state,
            "steps": 28,
            "step": 3,
            "size": "1024x1024",
            "submitted_at": 100.0,
            "ran_on": {"name": "jetson-livingroom"},
            "prompt": prompt,
        }  # fmt: skip
        for i, state in zip(range(n), ("running", "cancelled", "done"), strict=False)
    ]


@pytest.mark.parametrize("width", [60, 80, 100])
def test_tasks_table_never_cuts_an_id(width):
    rows = _rows(3)
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(render.tasks_table(rows, 130.0, console.width))
    shown = console.file.getvalue()
    assert all(row["task"] in shown for row in rows), shown
    assert max(len(line) for line in shown.splitlines()) <= width, shown
    assert "…" not in shown


def test_cluster_headers_readable_at_80_columns():
    servers = [
        {
            "slot": i,
            "self": i == 0,
            "name": f"edge-{i}",
            "state": "up",
            "backlog_steps": 120,
            "backlog_s": 3.2,
            "interval_load_steps": 40,
            "capacity_steps_per_s": 12.5,
            "rtt_s": 0.0012,
            "model": "sd3-medium",
            "emulated": True,
            "telemetry": {
                "devices": [{"kind": "cuda", "utilization_percent": 55, "memory_used_bytes": 7e9}]
            },
        }  # fmt: skip
        for i in range(3)
    ]
    cluster = {"n_servers": 3, "scheduler": {"policy": "lad"}, "servers": servers}
    console = Console(width=80, file=io.StringIO(), color_system=None)
    console.print(render.cluster_table(cluster, 80))
    shown = console.file.getvalue()
    header = next(line for line in shown.splitlines() if "name" in line)
    for name in ("#", "name", "state", "backlog", "capacity"):
        assert f" {name} " in header, shown
    assert "…" not in shown and max(len(line) for line in shown.splitlines()) <= 80


def test_ctrl_c_during_submit_names_the_task_and_the_cancel_command(agent_factory):
    agent = agent_factory(emulated_steps_per_second=1.0).start()
    command = [str(Path(sys.executable).parent / "dedgeai"), "submit", "a cat", "--steps", "100",
               "--size", "256x256", "-a", agent.endpoint]  # fmt: skip
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: _task_count(agent.endpoint) == 1, 120.0, "the submitted task")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    with AgentClient(agent.endpoint) as client:
        (row,) = client.tasks(10)
    text = stderr.decode()
    assert proc.returncode == cli_tasks.INTERRUPTED, text
    assert "Traceback" not in text
    assert row["task"] in text and f"dedgeai cancel {row['task']}" in text
    assert row["state"] in ("queued", "running")  # not cancelled without asking
