"""Light paths: the client commands and a heuristic agent never import torch & co.

Each check runs in a fresh interpreter (a subprocess), does the real thing and prints the heavy
modules found in ``sys.modules``; the test asserts there are none. Importing torch costs
seconds and ~200 MB on a small box, for a command that only talks to an agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from dedgeai.agent.lab.harness import AgentProcess

HEAVY = ("torch", "diffusers", "transformers", "matplotlib")
REPORT = f"""
import json, sys
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
"""


def heavy_after(script: str, timeout_s: float = 120.0) -> list[str]:
    """Run ``script`` in a fresh interpreter; the heavy modules it left in ``sys.modules``."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script) + REPORT],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_report_sees_a_heavy_import():
    """The check can fail: a module that imports matplotlib is reported."""
    pytest.importorskip("matplotlib")
    assert "matplotlib" in heavy_after("import matplotlib")


def test_client_commands_and_their_help_stay_light():
    script = """
    from typer.testing import CliRunner
    from dedgeai.agent.client.cli import app

    runner = CliRunner()
    for args in (
        ["--help"],
        ["submit", "--help"],
        ["status", "--help"],
        ["tasks", "--help"],
        ["result", "--help"],
        ["cancel", "--help"],
        ["keys", "--help"],
        ["agent", "--help"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output, (args, result.output)
    """
    assert heavy_after(script) == []


def test_version_stays_light():
    script = """
    from typer.testing import CliRunner
    from dedgeai.agent.client.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("dedgeai "), result.output
    """
    assert heavy_after(script) == []


def test_status_against_an_agent_stays_light(tmp_path):
    """``dedgeai status`` for real (an agent subprocess): no torch & co, and no asyncio either
    (the ZAP authenticator thread and pyzmq's monitor helper pull it in: agent side only)."""
    agent = AgentProcess(tmp_path, policy="local").start()
    try:
        script = f"""
        import sys
        from typer.testing import CliRunner
        from dedgeai.agent.client.cli import app

        result = CliRunner().invoke(app, ["status", "--agent", {agent.endpoint!r}])
        assert result.exit_code == 0, result.output
        assert {agent.endpoint!r} in result.output, result.output
        assert "asyncio" not in sys.modules
        """
        assert heavy_after(script) == []
    finally:
        agent.close()


def test_the_demo_client_stays_light():
    """The demo's own process only talks to its agents: no torch (the tiny model's note too)."""
    script = """
    import io
    from rich.console import Console
    from dedgeai.agent.lab.demo import DemoOptions, agent_settings, render_table
    from dedgeai.agent.lab.load import Outcome

    options = DemoOptions()
    agent_settings(options)
    table = render_table([Outcome(0, "t", "agent-0", 3)], ["a dog"], options, "loading")
    Console(file=io.StringIO()).print(table)
    """
    assert heavy_after(script) == []


def test_the_sim_sub_app_still_loads_on_demand():
    """``sim`` is imported lazily, and then it works as before (its commands, its help)."""
    script = """
    import sys
    from typer.testing import CliRunner
    from dedgeai.agent.client.cli import app

    assert "dedgeai.agent.client.cli_sim" not in sys.modules
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "sim" in result.output, result.output
    assert "dedgeai.agent.client.cli_sim" not in sys.modules
    result = CliRunner().invoke(app, ["sim", "--help"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "compare" in result.output, result.output
    result = CliRunner().invoke(app, ["sim", "nope"])
    assert result.exit_code == 2, result.output
    """
    heavy_after(script)  # asserts inside; sim itself may import what it needs


def test_agent_help_stays_light():
    script = """
    import runpy, sys
    sys.argv = ["dedgeai-agent", "--help"]
    try:
        runpy.run_module("dedgeai.agent", run_name="__main__")
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    """
    assert heavy_after(script) == []


@pytest.mark.parametrize("n_servers", [3, 1])
def test_a_heuristic_scheduler_host_stays_light(n_servers):
    """Every heuristic decides without torch; so does a learned policy alone (``local``)."""
    script = f"""
    import tempfile
    from pathlib import Path

    import numpy as np

    from dedgeai.agent.cluster.learning import SchedulerHost
    from dedgeai.scheduler.cluster_state import HEURISTICS, LEARNED, ClusterState, TaskSpec

    n = {n_servers}
    names = HEURISTICS + (LEARNED if n == 1 else ())
    cluster = ClusterState(
        0, np.arange(n) * 10.0, np.zeros(n), np.full(n, 20.0), np.ones(n, dtype=bool)
    )
    with tempfile.TemporaryDirectory() as state:
        for name in names:
            host = SchedulerHost(name, n, 0, Path(state), seed=1).start()
            placement = host.decide(TaskSpec(20.0, 0.01), cluster, task_id="t1")
            assert 0 <= placement.target < n, placement
            assert host.status()["state"] == "ready", host.status()
            host.complete("t1", 1.0)
            host.stop()
            assert not (Path(state) / "policy.pt").exists()
    """
    assert heavy_after(script) == []


@pytest.mark.parametrize("policy", ["greedy", "lad"])
def test_an_emulated_agent_stays_light(tmp_path, policy):
    """A real agent (emulated model) answers ``status`` without torch: a heuristic policy, or
    the default learned one on an agent without peers (it decides ``local``)."""
    script = f"""
    import threading

    from dedgeai.agent.client.library import AgentClient
    from dedgeai.agent.lab.harness import free_ports
    from dedgeai.agent.node.config import load_config
    from dedgeai.agent.node.service import StopFlag, run_agent

    endpoint = f"tcp://127.0.0.1:{{free_ports(1)[0]}}"
    config = load_config(
        None,
        {{"model": "emulated", "policy": {policy!r}, "endpoint": endpoint,
          "state_dir": {str(tmp_path)!r}}},
    )
    stop = StopFlag()
    agent = threading.Thread(target=run_agent, args=(config, stop), daemon=True)
    agent.start()
    status = AgentClient(endpoint, timeout_s=30).status()
    assert isinstance(status, dict) and status, status
    stop.set()
    agent.join(30)
    assert not agent.is_alive()
    """
    assert heavy_after(script) == []
