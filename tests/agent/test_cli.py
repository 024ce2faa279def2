"""The CLI's documented exit codes, against real agents (typer's CliRunner, in process)."""

from __future__ import annotations

import json
import uuid

import pytest
import typer
from typer.testing import CliRunner

from dedgeai.agent.client import cli_tasks as cli_agent
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.lab.harness import free_ports

app = typer.Typer()
cli_agent.register(app)
runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _closed_port_endpoint() -> str:
    """A loopback port that was free a moment ago: nothing answers there."""
    return f"tcp://127.0.0.1:{free_ports(1)[0]}"


def test_submit_done_json(shared_agent):
    code, output = _run("submit", "a cat", "--steps", "2", "--size", "256x256", "--seed", "5",
                        "-a", shared_agent.endpoint, "--json")  # fmt: skip
    assert code == ExitCode.OK, output
    body = json.loads(output)
    assert body["seed"] == 5 and body["steps"] == 2 and body["path"] is None  # emulated
    assert body["client_total_s"] >= body["timings"]["backend_s"]


def test_submit_tiny_writes_png(tiny_agent, tmp_path):
    out = tmp_path / "img" / "cat.png"
    code, output = _run("submit", "a cat", "--steps", "1", "--size", "256x256",
                        "-a", tiny_agent.endpoint, "--out", str(out), "--timeout", "10")  # fmt: skip
    assert code == ExitCode.OK, output
    assert out.read_bytes()[:4] == b"\x89PNG" and "queue wait" in output and "denoise" in output


@pytest.mark.parametrize(
    "args",
    [("--size", "100x100"), ("--steps", "0"), ("--size", "big"), ("--guidance", "31")],
)
def test_bad_input_exits_2(shared_agent, args):
    code, output = _run("submit", "a cat", *args, "-a", shared_agent.endpoint)
    assert code == ExitCode.BAD_INPUT, output


def test_unknown_task_exits_2(shared_agent):
    missing = str(uuid.uuid4())
    assert _run("result", missing, "-a", shared_agent.endpoint)[0] == ExitCode.BAD_INPUT
    assert _run("cancel", missing, "-a", shared_agent.endpoint)[0] == ExitCode.BAD_INPUT
    assert _run("result", "not-a-uuid", "-a", shared_agent.endpoint)[0] == ExitCode.BAD_INPUT


def test_unreachable_exits_5():
    code, output = _run("status", "-a", _closed_port_endpoint(), "--timeout", "0.2")
    assert code == ExitCode.UNREACHABLE and "unreachable" in output


def test_busy_then_cancelled(agent_factory):
    agent = agent_factory(max_queue=1, emulated_steps_per_second=5.0).start()
    ep = agent.endpoint
    common = ("--steps", "100", "--size", "512x512", "-a", ep, "--no-wait")
    code, running = _run("submit", "first", *common)
    assert code == ExitCode.OK
    code, queued = _run("submit", "second", *common)
    assert code == ExitCode.OK
    code, output = _run("submit", "third", *common)
    assert code == ExitCode.BUSY, output
    assert _run("cancel", queued.strip(), "-a", ep) == (
        ExitCode.OK,
        f"{queued.strip()}: cancelled\n",
    )
    code, output = _run("result", queued.strip(), "-a", ep)
    assert code == ExitCode.TASK_FAILED and "cancelled" in output
    code, output = _run("result", running.strip(), "-a", ep, "--no-wait", "--json")
    assert code == ExitCode.OK and json.loads(output)["type"] == "progress"
    code, output = _run("tasks", "-a", ep, "--json")
    states = {row["task"]: row["state"] for row in json.loads(output)}
    assert states[queued.strip()] == "cancelled" and states[running.strip()] == "running"
    code, output = _run("status", "-a", ep)
    assert code == ExitCode.OK and "backlog" in output and "capacity" in output


def test_status_and_tasks_tables(shared_agent):
    code, output = _run("status", "-a", shared_agent.endpoint, "--json")
    assert code == ExitCode.OK and json.loads(output)["backend"]["emulated"] is True
    code, output = _run("tasks", "-a", shared_agent.endpoint, "--limit", "5")
    assert code == ExitCode.OK and "newest first" in output


def test_agent_config_and_config_errors(tmp_path):
    code, output = _run("agent", "config", "--set", "max_queue=3", "--json")
    assert code == ExitCode.OK and json.loads(output)["max_queue"] == 3
    bad = tmp_path / "agent.toml"
    bad.write_text("max_queue = 'lots'\n")
    code, output = _run("agent", "config", "--config", str(bad))
    assert code == ExitCode.BAD_INPUT and "max_queue" in output
    code, output = _run("agent", "run", "--config", str(bad))
    assert code == ExitCode.BAD_INPUT and "max_queue" in output
    no_keys = f'keys_dir="{tmp_path / "no-keys"}"'  # beyond loopback: CURVE needs a key pair
    code, output = _run("agent", "run", "--set", 'endpoint="tcp://0.0.0.0:7700"', "--set", no_keys)
    assert code == ExitCode.BAD_INPUT and "insecure" in output
