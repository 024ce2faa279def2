"""``dedgeai sim train --env cluster``: a checkpoint an agent loads, and one-line bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dedgeai.agent.client.cli import app
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.scheduler.config import LearnConfig, Switches
from dedgeai.scheduler.env import EnvConfig
from dedgeai.scheduler.online import ClusterScheduler
from dedgeai.scheduler.policy import OnlinePolicy

runner = CliRunner()


def test_trains_in_the_twin_and_writes_what_an_agent_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dedgeai.scheduler.twin_train.SEGMENT_S", 20.0)
    start = tmp_path / "start.pt"  # an untrained actor: no warm start, seconds saved
    learn = LearnConfig(warmup=16, batch_size=8)
    OnlinePolicy("lad", EnvConfig(n_servers=8), 0, Switches(eps_softmax=False), learn, 1).save(
        start
    )
    out = tmp_path / "out"
    args = ["sim", "train", "--env", "cluster", "--boxes", "8", "--hours", str(40 / 3600)]
    args += ["--train-steps-per-s", "0.25", "--resume", str(start), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"] == "cluster" and summary["boxes"] == 8
    assert len(summary["segments"]) == 2 and summary["trained_steps"] > 0
    assert (out / "learning.png").stat().st_size > 0
    agent = ClusterScheduler("lad", 8, 1, checkpoint=out / "policy.pt")  # as an agent does
    assert agent.trained_steps == summary["trained_steps"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--method", "greedy"], "learned daemon policy"),
        (["--boxes", "1"], "--boxes"),
        (["--boxes", "5000"], "--boxes"),
        (["--spread", "mars"], "--spread"),
        (["--hours", "0"], "--hours"),
        (["--hours", "nan"], "--hours"),
        (["--env", "moon"], "--env"),
        (["--train-steps-per-s", "0"], "--train-steps-per-s"),
    ],
)
def test_bad_options_are_one_line_before_any_work(tmp_path: Path, extra: list[str], says: str):
    out = tmp_path / "never"
    result = runner.invoke(
        app, ["sim", "train", "--env", "cluster", *extra, "--out", str(out)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not out.exists()
