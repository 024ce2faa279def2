"""Files written by ``dedgeai sim``: metrics.csv, summary.json and the learning-curve plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dedgeai.scheduler.report import smoothed
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


def write_summary(path: Path, summary: dict[str, object]) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def plot_learning(path: Path, history: dict[str, list[EpisodeStats]], title: str) -> None:
    """The analogue of the paper's learning figure: mean delay per episode, smoothed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for method, stats in history.items():
        episodes = np.array([s.episode for s in stats])
        delays = np.array([s.mean_delay_s for s in stats])
        style = "--" if method == "opt" else "-"
        ax.plot(
            episodes,
            smoothed(delays),
            style,
            label=METHOD_TITLES.get(method, method),
            linewidth=1.6,
        )
    ax.set_xlabel("episode")
    ax.set_ylabel("average service delay per task (s), 10-episode mean")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
