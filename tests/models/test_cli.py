"""`dedgeai generate` and `dedgeai model plan` through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dedgeai.agent.client import cli_models


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    cli_models.register(app)
    return app


runner = CliRunner()


def test_generate_writes_a_png(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "cat.png"
    args = [
        "generate",
        "a cat",
        "--steps",
        "2",
        "--size",
        "256x256",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, [*args, "--budget", "4GiB"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")
    assert "placement resident" in result.output and "timings: encode" in result.output
    assert "peak memory" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "a cat", "--size", "250x256"], "multiple of 16"),
        (["generate", "a cat", "--size", "big"], "--size"),
        (["generate", "a cat", "--steps", "0"], "steps"),
        (["generate", ""], "prompt"),
        (["generate", "x" * 2001], "2000"),
        (["generate", "a cat", "--budget", "lots"], "memory size"),
        (["generate", "a cat", "--model", "/no/such/weights"], "does not exist"),
        (["model", "plan", "--placement", "everywhere"], "unknown placement"),
    ],
)
def test_bad_input_exits_2_with_one_line(app: typer.Typer, args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_corrupt_weights_exit_2(app: typer.Typer, tmp_path: Path) -> None:
    for name in ("sd3_medium", "clip_g", "clip_l"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("")
    result = runner.invoke(app, ["generate", "a cat", "--model", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2
    assert "not a valid safetensors file" in result.output


@pytest.mark.parametrize(
    ("budget", "kind"), [("24GiB", "resident"), ("8GiB", "staged-encoders"), ("5GiB", "sequential")]
)
def test_model_plan_for_sd3_medium_on_a_gpu(app: typer.Typer, budget: str, kind: str) -> None:
    args = ["model", "plan", "--model", "sd3-medium", "--device", "cuda", "--budget", budget]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"placement {kind} on cuda" in result.output
    assert "MMDiT" in result.output and "2028.3M" in result.output


def test_model_plan_gpu_without_budget_is_bad_input(app: typer.Typer) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so the free memory can be read")
    result = runner.invoke(app, ["model", "plan", "--model", "sd3-medium", "--device", "cuda"])
    assert result.exit_code == 2 and "--budget" in result.output
