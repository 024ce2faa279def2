"""Summaries of learning curves: final level, ratio to Opt-TS, episodes to converge."""

from __future__ import annotations

import numpy as np

from dedgeai.scheduler.simulate import LEARNERS, EpisodeStats

CONVERGENCE_TOLERANCE = 0.05  # "within 5 % of its final value"
SMOOTHING_WINDOW = 10  # episodes; the paper's curves look smoothed

Summary = dict[str, float | int | bool | None]


def final_window(n_episodes: int) -> int:
    """Episodes averaged for the final level: the last 50, or the last fifth of a short run."""
    return max(1, min(50, n_episodes // 5)) if n_episodes < 250 else 50


def smoothed(values: np.ndarray, window: int = SMOOTHING_WINDOW) -> np.ndarray:
    """Trailing moving average (shorter at the start)."""
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def convergence_episode(values: np.ndarray, final: float) -> int | None:
    """First episode (1-based) from which the smoothed curve stays within 5 % of ``final``.

    ``None`` when even the last episode's smoothed value is outside: it has not converged.
    """
    curve = smoothed(values)
    outside = np.flatnonzero(np.abs(curve - final) > CONVERGENCE_TOLERANCE * final)
    if outside.size == 0:
        return 1
    if outside[-1] == curve.size - 1:
        return None
    return int(outside[-1]) + 2


def summarize(history: dict[str, list[EpisodeStats]]) -> dict[str, Summary]:
    """Per method: final mean delay, p95, ratio to Opt-TS, convergence episode, speed.

    With Opt-TS in the run, convergence is read on the per-episode ratio to Opt-TS: every
    method sees the same task streams, so the ratio cancels the episode-to-episode swing of
    the streams themselves (about ±5 % even for Opt-TS), which would otherwise hide it.
    Only learning methods converge: the others get ``converged_episode = None``, and so
    does a learner that has not converged by its last episode (``learns`` tells them apart).
    """
    out: dict[str, Summary] = {}
    finals: dict[str, float] = {}
    opt = np.array([s.mean_delay_s for s in history["opt"]]) if "opt" in history else None
    for method, stats in history.items():
        delays = np.array([s.mean_delay_s for s in stats])
        k = final_window(delays.size)
        finals[method] = final = float(delays[-k:].mean())
        converged: int | None = None
        if method in LEARNERS:
            if opt is not None and opt.size == delays.size:
                ratio = delays / opt
                converged = convergence_episode(ratio, float(ratio[-k:].mean()))
            else:
                converged = convergence_episode(delays, final)
        out[method] = {
            "episodes": int(delays.size),
            "final_window": k,
            "final_mean_delay_s": final,
            "final_p95_delay_s": float(np.mean([s.p95_delay_s for s in stats[-k:]])),
            "first_episode_delay_s": float(delays[0]),
            "learns": method in LEARNERS,
            "converged_episode": converged,
            "offloaded_fraction": float(np.mean([s.offloaded_fraction for s in stats[-k:]])),
            "seconds_per_episode_median": float(np.median([s.seconds for s in stats])),
        }
    if "opt" in finals:
        for method, row in out.items():
            row["ratio_to_opt"] = finals[method] / finals["opt"]
    return out


def converged_label(row: Summary) -> str:
    """A table cell: the episode, ``> N`` for a learner not converged in N episodes, else ``—``."""
    if not row.get("learns"):
        return "—"
    episode = row.get("converged_episode")
    return f"> {row['episodes']}" if episode is None else str(episode)
