"""Sanity bounds of the scheduler's inputs: what a policy may be shown, and what replaces the rest.

Every number in a ``ClusterState`` comes from peers' gossip, so it is hostile input. A value
that is NaN/inf, negative or beyond the bounds below marks its server *faulty*: a learned
policy never sees such a state (``ClusterScheduler.decide`` takes greedy's decision on the
sanitised state instead, with the faulty servers masked, and records no transition).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the fields read, not the dataclasses (cluster_state imports this module)
    from dedgeai.scheduler.state_shapes import ClusterLike as ClusterState
    from dedgeai.scheduler.state_shapes import TaskLike as TaskSpec

# Beyond these a report is broken, not a busy server.
MAX_WORK_STEPS = 1e9  # backlog or in-interval load of one server; a task's demand
CAPACITY_RANGE = (1e-3, 1e6)  # steps/s
MAX_QUEUE_S = 1e5  # (backlog + load) / capacity: about 28 h of work on one server
MAX_TRANSFER_S = 1e4
MAX_TASK_MBIT = 1e4
# Up to this many servers plain Python floats beat NumPy's per-call overhead (measured:
# tools/bench_twin.py's decision path); beyond it the checks run vectorised.
PLAIN_FLOAT_SERVERS = 48


def _arrays(cluster: ClusterState) -> tuple[np.ndarray, ...]:
    return (
        np.asarray(cluster.backlog_steps, dtype=np.float64),
        np.asarray(cluster.interval_load_steps, dtype=np.float64),
        np.asarray(cluster.capacity_steps_per_s, dtype=np.float64),
        cluster.transfer(),
    )


def state_problems(cluster: ClusterState) -> list[str]:
    """Each out-of-bounds value, described (``server 2: backlog_steps nan``); [] when sane."""
    lo, hi = CAPACITY_RANGE
    if len(cluster.backlog_steps) > PLAIN_FLOAT_SERVERS:  # the twin's large clusters: vectorised
        b, load, c, t = _arrays(cluster)
        with np.errstate(all="ignore"):
            sane = (
                (b >= 0) & (b <= MAX_WORK_STEPS) & (load >= 0) & (load <= MAX_WORK_STEPS)
                & (c >= lo) & (c <= hi) & (b + load <= MAX_QUEUE_S * c)
                & (t >= 0) & (t <= MAX_TRANSFER_S)
            )  # fmt: skip
        return [] if bool(sane.all()) else state_faults(cluster)[1]
    # The daemon's case, per server in plain floats: faster than NumPy on a few servers.
    # NaN fails every comparison.
    backlog = np.asarray(cluster.backlog_steps, dtype=np.float64).tolist()
    transfer = [0.0] * len(backlog) if cluster.transfer_s is None else cluster.transfer().tolist()
    columns = zip(
        backlog,
        np.asarray(cluster.interval_load_steps, dtype=np.float64).tolist(),
        np.asarray(cluster.capacity_steps_per_s, dtype=np.float64).tolist(),
        transfer,
        strict=True,
    )
    for b, load, c, t in columns:
        if not (
            0 <= b <= MAX_WORK_STEPS
            and 0 <= load <= MAX_WORK_STEPS
            and lo <= c <= hi
            and b + load <= MAX_QUEUE_S * c
            and 0 <= t <= MAX_TRANSFER_S
        ):
            return state_faults(cluster)[1]
    return []


def state_faults(cluster: ClusterState) -> tuple[np.ndarray, list[str]]:
    """Which servers have a value out of bounds [B] bool, and each such value, described."""
    b, load, c, t = _arrays(cluster)
    lo, hi = CAPACITY_RANGE
    with np.errstate(all="ignore"):
        checks = [
            ("backlog_steps", b, (b >= 0) & (b <= MAX_WORK_STEPS)),
            ("interval_load_steps", load, (load >= 0) & (load <= MAX_WORK_STEPS)),
            ("capacity_steps_per_s", c, (c >= lo) & (c <= hi)),
            ("transfer_s", t, (t >= 0) & (t <= MAX_TRANSFER_S)),
        ]
        queue_s = (b + load) / c
    bad = np.zeros(b.size, dtype=bool)
    notes = []
    for name, values, ok in checks:
        notes += [f"server {i}: {name} {values[i]:g}" for i in np.flatnonzero(~ok)]
        bad |= ~ok
    long_queue = ~bad & ~(queue_s <= MAX_QUEUE_S)
    notes += [f"server {i}: {queue_s[i]:g} s of queued work" for i in np.flatnonzero(long_queue)]
    return bad | long_queue, notes


def sanitized_state(cluster: ClusterState) -> ClusterState:
    """``cluster`` with every faulty server masked and its values neutral (no work, 1
    step/s); if that masks every server, this one stays (it can always run the task)."""
    bad, _ = state_faults(cluster)
    keep = ~bad
    available = np.asarray(cluster.available, dtype=bool) & keep
    if not available.any():
        available[cluster.self_index] = True
    return replace(
        cluster,
        backlog_steps=np.where(keep, cluster.backlog_steps, 0.0),
        interval_load_steps=np.where(keep, cluster.interval_load_steps, 0.0),
        capacity_steps_per_s=np.where(keep, cluster.capacity_steps_per_s, 1.0),
        available=available,
        transfer_s=np.where(keep, cluster.transfer(), 0.0),
    )


def task_problems(task: TaskSpec) -> list[str]:
    out = []
    if not 0 < task.demand_steps <= MAX_WORK_STEPS:  # NaN fails
        out.append(f"task demand_steps {task.demand_steps:g}")
    if not 0 <= task.size_mbit <= MAX_TASK_MBIT:
        out.append(f"task size_mbit {task.size_mbit:g}")
    return out


def sanitized_task(task: TaskSpec) -> TaskSpec:
    demand = task.demand_steps if 0 < task.demand_steps <= MAX_WORK_STEPS else 1.0
    size = task.size_mbit if 0 <= task.size_mbit <= MAX_TASK_MBIT else 0.0
    return replace(task, demand_steps=demand, size_mbit=size)


def sane_capacities(capacities: np.ndarray | None, n_servers: int) -> np.ndarray | None:
    """Measured speeds for a warm start: a value outside ``CAPACITY_RANGE`` (a peer's
    broken report) takes the median of the sane ones; None when none is sane."""
    if capacities is None:
        return None
    speeds = np.asarray(capacities, dtype=np.float64).reshape(-1)
    lo, hi = CAPACITY_RANGE
    with np.errstate(invalid="ignore"):
        sane = (speeds >= lo) & (speeds <= hi)
    if speeds.size != n_servers or not sane.any():
        return None
    return np.where(sane, speeds, float(np.median(speeds[sane])))
