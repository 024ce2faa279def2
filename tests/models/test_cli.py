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


@pytest.mark.parametrize(
    ("board", "unified", "budget"),
    [
        ("jetson-orin-8gb", "unified memory", "6.50 GiB"),
        ("jetson-orin-16gb", "unified memory", "14.50 GiB"),
        ("rtx-3060-12gb", "GPU memory", "11.50 GiB"),
        ("rtx-4090-24gb", "GPU memory", "23.50 GiB"),
    ],
)
def test_model_plan_answers_for_a_board(
    app: typer.Typer, board: str, unified: str, budget: str
) -> None:
    result = runner.invoke(app, ["model", "plan", "--device", board])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"device: {board}" in out and unified in out and "float16" in out
    assert "model: sd3-medium" in out and "2028.3M" in out  # the real layout, not tiny
    assert "answer: fits: plan " in out and f"of {budget} (estimate)" in out
    assert "predicted peak" in out and "expected slow-down:" in out
    assert "float32" not in out


def test_model_plan_on_a_board_too_small_says_so(app: typer.Typer) -> None:
    args = ["model", "plan", "--device", "jetson-orin-8gb", "--budget", "2GiB"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "does not fit" in result.output and "Traceback" not in result.output


def test_model_plan_slowdown_of_a_staged_plan_is_labelled(app: typer.Typer) -> None:
    args = ["model", "plan", "--device", "rtx-4060-8gb", "--budget", "7GiB"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "answer: fits: plan staged-encoders" in result.output
    assert "~1.31x the all-on-GPU latency (estimate" in result.output


def test_unified_alone_plans_fp16_on_the_gpu(app: typer.Typer) -> None:
    result = runner.invoke(app, ["model", "plan", "--unified"])
    assert result.exit_code == 2 and "--budget" in result.output
    result = runner.invoke(app, ["model", "plan", "--unified", "--budget", "8GiB"])
    assert result.exit_code == 0, result.output
    assert "on cuda (unified memory)" in result.output and "float32" not in result.output


@pytest.mark.parametrize("budget", ["8", "8.5", "512"])
def test_budget_needs_units(app: typer.Typer, budget: str) -> None:
    args = ["model", "plan", "--device", "cuda", "--budget", budget]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "needs a unit" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_model_plan_help_names_sd3_medium_and_boards(app: typer.Typer) -> None:
    result = runner.invoke(app, ["model", "plan", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "sd3-medium" in result.output and "jetson-orin-8gb" in result.output


def test_tiny_plan_says_it_is_the_test_model(app: typer.Typer) -> None:
    result = runner.invoke(app, ["model", "plan", "--model", "tiny", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "TEST model" in result.output


def test_preset_names_in_help_match_the_presets() -> None:
    from dedgeai.models.presets import PRESETS

    assert tuple(PRESETS) == cli_models.PRESET_NAMES
