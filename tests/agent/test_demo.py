"""`dedgeai demo`, the local-cluster harness and the load replayer.

The end-to-end tests run the real command (three agent subprocesses on loopback); the
others check the pieces without processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dedgeai.agent.client.cli import app
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.lab.demo import (
    EMULATED_SPEEDS,
    DemoOptions,
    arrival_rate,
    decision_text,
    render_table,
)
from dedgeai.agent.lab.harness import LocalCluster, free_ports
from dedgeai.agent.lab.load import (
    Outcome,
    Replayer,
    flickr8k_prompts,
    percentile,
    placement_of,
    poisson_trace,
    summarise,
)

DEMO_TIMEOUT_S = 280


def _dedgeai(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from dedgeai.agent.client.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )


# --- end to end ----------------------------------------------------------------------


def test_demo_writes_one_png_per_task(tmp_path: Path) -> None:
    # The real tiny model (torch) in each agent: two agents, three one-step tasks are enough
    # to see PNGs written and the summary filled; the harness itself is tested below.
    out = tmp_path / "pngs"
    proc = _dedgeai(
        "demo", "--tasks", "3", "--agents", "2", "--steps", "1", "--policy", "greedy",
        "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert "noise" in proc.stderr  # the tiny model's warning
    summary = json.loads((out / "demo.json").read_text())
    assert summary["emulated"] is False
    assert [t["state"] for t in summary["tasks"]] == ["done"] * 3
    agents = {f"agent-{i}" for i in range(2)}
    assert {t["ran_on"] for t in summary["tasks"]} <= agents
    assert {t["origin"] for t in summary["tasks"]} <= agents


def test_demo_emulated_is_labelled_and_forwards(tmp_path: Path) -> None:
    out = tmp_path / "emulated"
    proc = _dedgeai(
        "demo", "--tasks", "6", "--emulate", "--policy", "greedy", "--steps", "4-6",
        "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "EMULATED" in proc.stdout
    assert not list(out.glob("*.png"))
    summary = json.loads((out / "demo.json").read_text())
    assert summary["backend"] == "EMULATED" and summary["emulated"] is True
    tasks = summary["tasks"]
    assert all(t["state"] == "done" and t["emulated"] for t in tasks)
    # greedy sends work from the slower agents to faster idle peers
    assert all(t["policy"] == "greedy" for t in tasks)
    assert any(t["ran_on"] != t["origin"] for t in tasks)


def test_demo_does_not_wait_for_a_learned_policy(tmp_path: Path) -> None:
    """A learned policy (lad) warms up in the background: the demo submits once the agents
    can place tasks, greedy decides meanwhile and the output says so; agents stopped in the
    middle of the warm-up still exit cleanly (exit 0 needs every agent's exit code 0)."""
    out = tmp_path / "lad"
    proc = _dedgeai(
        "demo", "--tasks", "3", "--agents", "2", "--emulate", "--steps", "2",
        "--policy", "lad", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tasks = json.loads((out / "demo.json").read_text())["tasks"]
    assert [t["state"] for t in tasks] == ["done"] * 3
    for task in tasks:  # the learned policy, or greedy standing in for it, saying why
        assert task["policy"] == "lad" or (
            task["policy"] == "greedy" and task["reason"].startswith("lad ")
        ), task
    fallbacks = [t for t in tasks if t["policy"] == "greedy"]
    assert all(f"task {tasks.index(t) + 1}: " in proc.stdout for t in tasks)
    if fallbacks:
        assert "greedy (lad warming up)" in proc.stdout or "greedy (lad busy" in proc.stdout


def test_a_warm_up_is_cancelled_by_stop() -> None:
    """``SchedulerHost.stop()`` during a fresh actor's warm start ends the thread; the process
    then exits 0 (a thread left inside torch makes the exit abort: SIGABRT, -6)."""
    script = """
import sys
import tempfile
from pathlib import Path
from dedgeai.agent.cluster.learning import SchedulerHost
from dedgeai.agent.lab.harness import wait_for

with tempfile.TemporaryDirectory() as state:
    host = SchedulerHost("lad", 3, 0, Path(state), seed=1).start()
    # torch and the scheduler imported: the thread is building the actor (or about to)
    wait_for(lambda: "dedgeai.scheduler.online" in sys.modules, 120.0, "the warm start")
    host.stop()
    assert not host._thread.is_alive()
    assert host.status()["state"] == "warming", host.status()  # cancelled, not failed
    assert not (Path(state) / "policy.pt").exists()
print("stopped")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=DEMO_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "stopped"


@pytest.mark.parametrize("where", ["a-file", "/proc/dedgeai-demo"])
def test_demo_refuses_an_unwritable_out_before_starting_anything(tmp_path: Path, where: str):
    out = tmp_path / where if where == "a-file" else Path(where)
    if where == "a-file":
        out.write_text("not a folder")
    result = CliRunner().invoke(app, ["demo", "--tasks", "1", "--out", str(out)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "--out" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_demo_rejects_bad_options() -> None:
    runner = CliRunner()
    for args in (["--policy", "fastest"], ["--steps", "9-3"], ["--size", "100x100"]):
        result = runner.invoke(app, ["demo", *args])
        assert result.exit_code == 2, (args, result.output)


def test_harness_starts_kills_restarts_and_stops(tmp_path: Path) -> None:
    settings = [{"emulated_steps_per_second": 400.0}] * 2
    cluster = LocalCluster(settings, {"model": "emulated", "policy": "local"}, root=tmp_path / "c")
    try:
        cluster.start()
        assert len({a.port for a in cluster.agents}) == 2
        assert all(a.node for a in cluster.agents)
        node = cluster.agents[1].node
        cluster.agents[1].kill()
        assert cluster.agents[1].proc is not None and cluster.agents[1].proc.returncode == -9
        cluster.restart(1)
        assert cluster.agents[1].node == node  # same state directory, same node id
        trace = poisson_trace(4, 50.0, 2, seed=1, steps=(2, 3))
        outcomes = Replayer(cluster, trace, deadline_s=60.0).run()
        assert [o.state for o in outcomes] == ["done"] * 4
        assert all(o.delay_s is not None and o.delay_s > 0 for o in outcomes)
    finally:
        codes = cluster.close()
    assert codes == {"agent-0": 0, "agent-1": 0}


# --- pieces --------------------------------------------------------------------------


def test_prompts_are_the_packaged_flickr8k_list() -> None:
    prompts = flickr8k_prompts()
    assert len(prompts) == 500
    assert all(p and p == p.strip() for p in prompts)


def test_poisson_trace_is_deterministic_and_has_the_rate() -> None:
    a = poisson_trace(2000, 5.0, 8, seed=3)
    assert a == poisson_trace(2000, 5.0, 8, seed=3)
    assert a != poisson_trace(2000, 5.0, 8, seed=4)
    assert all(x.at_s < y.at_s for x, y in zip(a, a[1:], strict=False))
    assert 4.5 < len(a) / a[-1].at_s < 5.5
    assert {x.origin for x in a} == set(range(8))
    assert {x.steps for x in a} == set(range(10, 20))
    assert all(x.prompt in flickr8k_prompts() for x in a)


def test_placement_of_reads_ran_on_and_the_decision() -> None:
    names = {"n-2": "agent-2"}
    fields = {
        "ran_on": {"node": "n-2", "name": "x"},
        "placement": {"policy": "lad", "reason": "p=0.91", "redispatches": 1},
    }
    target, policy, reason = placement_of(fields, names)
    assert (target, policy) == ("agent-2", "lad")
    assert reason.startswith("p=0.91") and "re-dispatched x1" in reason
    assert placement_of({}, names) == (None, "local", "")


def test_percentile_and_summary() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([float(v) for v in range(1, 101)], 95) == 95.0
    outcomes = [
        Outcome(0, "t0", "agent-0", 10, state="done", target="agent-1", delay_s=1.0),
        Outcome(1, "t1", "agent-1", 10, state="done", target="agent-1", delay_s=3.0),
        Outcome(2, "t2", "agent-1", 10, state="lost"),
    ]
    stats = summarise(outcomes)
    assert (stats.count, stats.done, stats.lost, stats.mean_s) == (3, 2, 1, 2.0)
    assert stats.ran_on == {"agent-1": 2}


def test_free_ports_are_distinct() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8 and all(1024 <= p <= 65535 for p in ports)


def test_emulated_arrival_rate_follows_load() -> None:
    options = DemoOptions(emulate=True, steps=(10, 20), size=(512, 512), load=0.5)
    assert arrival_rate(options) == pytest.approx(0.5 * sum(EMULATED_SPEEDS) / 15)


def test_table_labels_emulated_runs() -> None:
    from rich.console import Console

    options = DemoOptions(emulate=True)
    outcome = Outcome(0, "t", "agent-0", 12, state="done", target="agent-2", delay_s=0.5)
    outcome.submitted_at, outcome.policy, outcome.reason = 0.0, "lad", "p=0.80"
    console = Console(width=160, record=True)
    console.print(render_table([outcome], ["a dog runs"], options))
    text = console.export_text()
    assert "EMULATED" in text and "agent-2" in text and "lad: p=0.80" in text


def test_decision_text_says_when_greedy_stands_in() -> None:
    o = Outcome(0, "t", "agent-0", 12, policy="greedy", reason="lad warming up: finish 0.4 s")
    assert decision_text(o) == "greedy (lad warming up): finish 0.4 s"
    o.reason = "sac busy training: finish 0.2 s"
    assert decision_text(o) == "greedy (sac busy training): finish 0.2 s"
    o.policy, o.reason = "greedy", "earliest estimated finish 0.3 s"  # greedy chosen
    assert decision_text(o) == "greedy: earliest estimated finish 0.3 s"
    o.policy, o.reason = "lad", "drawn p=0.8"
    assert decision_text(o) == "lad: drawn p=0.8"
    assert decision_text(Outcome(1, "u", "agent-1", 12)) == ""


def test_table_shows_the_prompts_and_what_it_waits_for() -> None:
    from rich.console import Console

    options = DemoOptions()
    outcomes = [Outcome(i, f"t{i}", "agent-0", 3) for i in range(2)]
    console = Console(width=160, record=True)
    console.print(render_table(outcomes, ["a dog runs", "a red fox"], options, "agent-1: loading"))
    text = console.export_text()
    assert "a dog runs" in text and "a red fox" in text and "agent-1: loading" in text
    assert text.count("waiting") == 2  # the rows' state; nothing submitted yet
