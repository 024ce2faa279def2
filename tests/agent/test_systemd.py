"""The shipped unit passes `systemd-analyze verify` (skipped where systemd is absent)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dedgeai-agent.service"
INSTALLED_PATH = "/opt/dedgeai/venv/bin/dedgeai"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path):
    # verify checks that ExecStart exists: point it at this environment's dedgeai script,
    # as the install instructions do for the real path.
    dedgeai = Path(sys.executable).with_name("dedgeai")
    executable = str(dedgeai if dedgeai.exists() else Path(sys.executable))
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_PATH, executable))
    run = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warn" not in run.stderr.lower(), run.stderr


def test_unit_has_the_required_settings():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=dedgeai",
                 "ConfigurationDirectory=dedgeai", "RuntimeDirectory=dedgeai", "User=dedgeai",
                 f"ExecStart={INSTALLED_PATH} agent run"):  # fmt: skip
        assert line in text, line
    settings = [line.split("=")[0] for line in text.splitlines() if not line.startswith("#")]
    assert "PrivateDevices" not in settings and "DevicePolicy" not in settings  # /dev/nvidia*
