"""One agent per state directory: the second is refused in one line, a killed one frees it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.lab.harness import spawn_agent, write_toml
from dedgeai.agent.node.state_lock import StateDirInUse, StateLock


def test_a_second_lock_on_the_same_directory_is_refused_with_the_holders_pid(tmp_path):
    first = StateLock(tmp_path).acquire()
    with pytest.raises(StateDirInUse, match=r"in use by another agent \(pid \d+\)"):
        StateLock(tmp_path).acquire()
    first.release()
    second = StateLock(tmp_path).acquire()  # released: the next one gets it
    assert second.held
    second.release()


def test_the_lock_dies_with_a_killed_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from dedgeai.agent.node.state_lock import StateLock
            lock = StateLock(Path({str(tmp_path)!r})).acquire()
            print("held", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        with pytest.raises(StateDirInUse, match=str(holder.pid)):
            StateLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        StateLock(tmp_path).acquire().release()  # no stale lock after SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_second_agent_on_a_state_directory_in_use_exits_2_in_one_line(agent_factory):
    first = agent_factory("a").start()
    second_config = first.directory / "second.toml"
    settings = {**first.settings, "endpoint": "tcp://127.0.0.1:*"}
    write_toml(second_config, settings)
    log = first.directory / "second.log"
    proc = spawn_agent(second_config, log)
    assert proc.wait(timeout=60) == ExitCode.BAD_INPUT
    text = log.read_text()
    assert "is in use by another agent" in text and "Traceback" not in text
    with first.client() as client:  # the first one is untouched and still serves
        assert client.status()
    assert first.proc is not None and first.proc.poll() is None
