"""Files written by ``dedgeai sim``: metrics.csv, summary.json and the learning-curve plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from dedgeai.scheduler.errors import ConfigurationError
from dedgeai.scheduler.report import SMOOTHING_WINDOW, smoothed
from dedgeai.scheduler.simulate import METHOD_TITLES, EpisodeStats

CSV_COLUMNS = (
    "method",
    "episode",
    "mean_delay_s",
    "p95_delay_s",
    "n_decisions",
    "offloaded_fraction",
    "seconds",
    "updates",
)
REQUIRED_COLUMNS = ("method", "episode", "mean_delay_s")  # tools/bench_scheduler.py writes fewer


class MetricsWriter:
    """Appends one CSV row per episode as it finishes, so a long run can be watched and resumed."""

    def __init__(self, path: Path, extra_columns: tuple[str, ...] = ()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", newline="")
        self._columns = CSV_COLUMNS + extra_columns
        self._writer = csv.DictWriter(self._file, fieldnames=self._columns, extrasaction="ignore")
        self._writer.writeheader()

    def write(self, stats: EpisodeStats) -> None:
        self._writer.writerow(stats.row())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> dict[str, list[EpisodeStats]]:
    """Episodes per method from a metrics CSV (``dedgeai sim`` or ``tools/bench_scheduler.py``)."""
    try:
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ConfigurationError(f"{path} is not a metrics CSV: no {', '.join(missing)} column")
    if not rows:
        raise ConfigurationError(f"{path} has no episodes")
    history: dict[str, list[EpisodeStats]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            stats = EpisodeStats(
                method=row["method"],
                episode=int(row["episode"]),
                mean_delay_s=float(row["mean_delay_s"]),
                p95_delay_s=float(row.get("p95_delay_s") or "nan"),
                n_decisions=int(row.get("n_decisions") or 0),
                offloaded_fraction=float(row.get("offloaded_fraction") or "nan"),
                seconds=float(row.get("seconds") or "nan"),
                updates=int(row.get("updates") or 0),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{path}, line {line}: {exc}") from exc
        history.setdefault(stats.method, []).append(stats)
    return history


def write_summary(path: Path, summary: dict[str, object]) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def mean_curves(runs: list[dict[str, list[EpisodeStats]]]) -> dict[str, np.ndarray]:
    """Per method, the per-episode mean delay averaged over runs (seeds), cut to the shortest."""
    curves: dict[str, np.ndarray] = {}
    for method in runs[0]:
        series = [[s.mean_delay_s for s in run[method]] for run in runs if method in run]
        length = min(len(values) for values in series)
        curves[method] = np.mean([values[:length] for values in series], axis=0)
    return curves


def plot_learning(path: Path, runs: list[dict[str, list[EpisodeStats]]], title: str) -> None:
    """The analogue of the paper's learning figure: mean delay per episode, smoothed.

    Several runs (seeds of the same methods) are averaged episode by episode.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    for method, delays in mean_curves(runs).items():
        ax.plot(
            np.arange(1, delays.size + 1),
            smoothed(delays),
            "--" if method == "opt" else "-",
            label=METHOD_TITLES.get(method, method),
            linewidth=1.5,
        )
    runs_note = f", mean of {len(runs)} runs" if len(runs) > 1 else ""
    ax.set_xlabel("episode")
    ax.set_ylabel(f"delay per task (s), {SMOOTHING_WINDOW}-episode mean{runs_note}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version stamp: same data, same file
    plt.close(fig)
