"""`dedgeai sim`: every method runs on the small preset and writes its files; bad input exits 2."""

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dedgeai.agent.client.cli import app
from dedgeai.scheduler.policy import OnlinePolicy
from dedgeai.scheduler.simulate import METHODS

runner = CliRunner()


def test_compare_small_preset_every_method(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["sim", "compare", "--preset", "small", "--episodes", "3", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 3 * len(METHODS)
    assert {r["method"] for r in rows} == set(METHODS)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["methods"]) == set(METHODS)
    assert summary["methods"]["opt"]["ratio_to_opt"] == pytest.approx(1.0)
    assert (tmp_path / "learning.png").stat().st_size > 10_000


def test_train_writes_a_loadable_policy(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "sim",
            "train",
            "--method",
            "lad",
            "--preset",
            "small",
            "--episodes",
            "3",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list(csv.DictReader((tmp_path / "metrics.csv").open()))) == 3
    policy = OnlinePolicy.load(tmp_path / "policy.pt", agent=0)
    assert policy.trained_steps > 0
    resumed = runner.invoke(
        app,
        [
            "sim",
            "train",
            "--method",
            "lad",
            "--preset",
            "small",
            "--episodes",
            "1",
            "--out",
            str(tmp_path / "more"),
            "--resume",
            str(tmp_path / "policy.pt"),
        ],
    )
    assert resumed.exit_code == 0, resumed.output
    wrong = runner.invoke(
        app,
        [
            "sim",
            "train",
            "--method",
            "sac",
            "--preset",
            "small",
            "--episodes",
            "1",
            "--out",
            str(tmp_path / "x"),
            "--resume",
            str(tmp_path / "policy.pt"),
        ],
    )
    assert wrong.exit_code == 2 and "not 'sac'" in wrong.output


def test_corrupt_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    corrupt = tmp_path / "policy.pt"
    corrupt.write_bytes(b"\x00garbage")
    result = runner.invoke(
        app,
        [
            "sim",
            "train",
            "--preset",
            "small",
            "--episodes",
            "1",
            "--out",
            str(tmp_path),
            "--resume",
            str(corrupt),
        ],
    )
    assert result.exit_code == 2
    assert "not a readable policy checkpoint" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sim", "train", "--method", "nope"], "unknown method"),
        (["sim", "train", "--episodes", "0"], "--episodes must be > 0"),
        (["sim", "train", "--servers", "1", "--episodes", "1"], "at least 2 edge servers"),
        (["sim", "compare", "--methods", "lad,bogus", "--episodes", "1"], "unknown method"),
        (["sim", "train", "--preset", "huge", "--episodes", "1"], "unknown preset"),
    ],
)
def test_bad_arguments_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
