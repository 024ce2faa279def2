"""`dedgeai sim` reports: convergence cells, --out checked first, a light import, plots from data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dedgeai.agent.client import cli_sim
from dedgeai.agent.client.cli import app
from dedgeai.agent.client.sim_output import read_metrics
from dedgeai.scheduler.config import PRESETS
from dedgeai.scheduler.report import converged_label, convergence_episode, summarize
from dedgeai.scheduler.simulate import LEARNERS, METHODS, EpisodeStats

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
runner = CliRunner()


def _stats(method: str, delays: list[float]) -> list[EpisodeStats]:
    return [EpisodeStats(method, i + 1, d, 2 * d, 100, 0.5, 0.01, 0) for i, d in enumerate(delays)]


def test_convergence_episode_none_when_still_moving() -> None:
    flat = np.full(40, 5.0)
    assert convergence_episode(flat, 5.0) == 1
    falling = np.concatenate([np.linspace(20.0, 5.0, 20), np.full(30, 5.0)])
    converged = convergence_episode(falling, 5.0)
    assert converged is not None and 10 < converged <= 30
    still_falling = np.linspace(20.0, 5.0, 40)
    assert convergence_episode(still_falling, float(still_falling[-8:].mean())) is None


def test_summary_cells_for_learners_and_heuristics() -> None:
    rng = np.random.default_rng(0)
    history = {
        "opt": _stats("opt", list(5.0 + rng.normal(0, 0.05, 30))),
        "local": _stats("local", list(12.0 + rng.normal(0, 0.05, 30))),
        "lad": _stats("lad", [5.5 + 10.0 * 0.7**i for i in range(30)]),
        "dqn": _stats("dqn", list(np.linspace(30.0, 6.0, 30))),
    }
    summary = summarize(history)
    assert summary["opt"]["converged_episode"] is None and converged_label(summary["opt"]) == "—"
    assert converged_label(summary["local"]) == "—"
    assert converged_label(summary["lad"]) == str(summary["lad"]["converged_episode"])
    assert summary["dqn"]["converged_episode"] is None
    assert converged_label(summary["dqn"]) == "> 30"
    assert summary["opt"]["ratio_to_opt"] == pytest.approx(1.0)


def test_cli_names_match_the_simulator() -> None:
    assert cli_sim.LEARNER_NAMES == LEARNERS
    assert cli_sim.METHOD_NAMES == METHODS


def test_help_and_docs_count_the_papers_slots() -> None:
    slots = PRESETS["paper"].env.n_slots
    assert slots == 60  # docs/paper.md §1.1: |T| = 60, slots 0..58 decided
    result = runner.invoke(app, ["sim", "train", "--help"], env={"COLUMNS": "200"})
    assert f"{slots} slots each, the first {slots - 1} decided" in result.output
    assert f"{slots} slots ({slots - 1} decided" in (DOCS / "results.md").read_text()


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_cli_import_is_light() -> None:
    run = _python(
        "import sys, dedgeai.agent.client.cli, dedgeai.agent.client.cli_sim\n"
        "print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", ["file", "below a file", "unwritable"])
def test_train_out_checked_before_training(tmp_path: Path, kind: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = {"file": a_file, "below a file": a_file / "sub", "unwritable": Path("/proc/dedgeai")}[
        kind
    ]
    run = _python(
        "import sys\n"
        "from dedgeai.agent.client.cli import app\n"
        "try:\n"
        f"    app(['sim', 'train', '--preset', 'small', '--episodes', '1', '--out', {str(out)!r}])\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code, 'torch' in sys.modules)\n"
    )
    assert run.stdout.strip() == "exit 2 False", run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def test_train_writes_the_learning_plot(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["sim", "train", "--method", "least-backlog", "--preset", "small", "--episodes", "2"]
        + ["--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "learning.png" in result.output.replace("\n", "")  # a long tmp path wraps


def test_plot_from_committed_metrics(tmp_path: Path) -> None:
    csv_path = DOCS / "results" / "reference_compatible" / "metrics.csv"
    out = tmp_path / "curves.png"
    result = runner.invoke(app, ["sim", "plot", str(csv_path), str(csv_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = runner.invoke(app, ["sim", "plot", str(DOCS / "results.md"), "--out", str(out)])
    assert bad.exit_code == 2 and "not a metrics CSV" in bad.output


def test_results_table_matches_the_committed_data() -> None:
    summary = summarize(read_metrics(DOCS / "results" / "metrics_seed0.csv"))
    assert summary["lad"]["converged_episode"] == 20
    assert summary["dqn"]["converged_episode"] == 224
    assert summary["opt"]["converged_episode"] is None
    assert summary["lad"]["ratio_to_opt"] == pytest.approx(1.030, abs=5e-4)


def test_docs_images_are_in_the_repository() -> None:
    images = []
    for doc in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", doc.read_text()):
            images.append(doc.parent / target)
    assert images, "no embedded images found"
    for image in images:
        assert image.is_file(), image
        assert image.stat().st_size < 200_000, image  # small enough to commit
        ignored = subprocess.run(["git", "check-ignore", "-q", str(image)], cwd=ROOT, check=False)
        assert ignored.returncode == 1, f"{image} is git-ignored"


def test_results_cite_nothing_outside_the_repository() -> None:
    text = (DOCS / "results.md").read_text()
    assert "shared/" not in text
    for path in re.findall(r"`(docs/results/[^`\s]+)`", text):
        if "{" not in path:
            assert (ROOT / path).exists(), path
