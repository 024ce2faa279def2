"""Scenarios for the cluster twin: boxes, their speeds, the arrivals and the faults (pure, seeded).

A ``Scenario`` says everything the twin (``scheduler/twin.py``) needs except the policy:
every box's speed (512x512-equivalent denoising steps per second), the links, the gossip,
and the boxes that fail or join. ``arrivals(scenario, seed)`` draws the task stream, the
same for every policy. Presets:

- ``paper``: the paper's capacity spread (f ~ randint(10, 50), its legacy seed, §1.2)
  times 0.4 steps/s per unit, as ``tools/bench_cluster.py`` runs its eight agents.
- ``jetson_rtx``: a mix of Jetson-class and RTX-class boxes. ESTIMATES, not measurements
  (``ESTIMATED_STEPS_PER_S``); only the H200's reSD3-m figure was measured here.
- ``bench_cluster``: the eight emulated agents of ``tools/bench_cluster.py`` on loopback.

Tasks: 10-19 steps at 512x512 (the authors' prototype), request sizes from the packaged
Flickr8k prompts; Poisson or bursty (on/off modulated) arrivals; uniform or Zipf origins.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np

PAPER_CAPACITY_SEED = 2  # EnvConfig.capacity_seed: the authors' legacy numpy seed
PAPER_CAPACITY_RANGE = (10, 50)  # f ~ randint(10, 50 + 1) (§1.2)
STEPS_PER_S_PER_UNIT = 0.4  # tools/bench_cluster.py --scale
TASK_STEPS = (10, 19)  # reSD3-m draws randint(10, 20) steps per task
REQUEST_OVERHEAD_BYTES = 200  # agent/cluster/coordinator.py: envelope and fields beyond the prompt
MEAN_PROMPT_CHARS = 56.3  # the packaged Flickr8k prompts (fallback if they cannot be read)
# Per-step rates at 512x512 for reSD3-m, steps/s. Only the H200 one is measured (0.89 s for
# 28 steps with encoders resident, shared/reference/sd3_memory_modes_h200.json); the others
# are ESTIMATES scaled by each board's fp16 throughput relative to the H200.
ESTIMATED_STEPS_PER_S = {
    "h200 (measured)": 28 / 0.89,
    "rtx-4090 (estimate)": 12.0,
    "rtx-3060 (estimate)": 4.0,
    "jetson-agx-orin (estimate)": 2.0,
    "jetson-orin-nx (estimate)": 0.8,
}
JETSON_RTX_MIX = {  # share of boxes of each kind in the ``jetson_rtx`` preset
    "rtx-4090 (estimate)": 0.1,
    "rtx-3060 (estimate)": 0.3,
    "jetson-agx-orin (estimate)": 0.4,
    "jetson-orin-nx (estimate)": 0.2,
}

Arrival = Literal["poisson", "bursty"]
Origins = Literal["uniform", "skewed"]
GossipMode = Literal["full", "partial"]


@dataclass(frozen=True)
class BoxEvent:
    at_s: float
    box: int
    kind: Literal["fail", "join"]


@dataclass(frozen=True)
class Scenario:
    """One cluster and its traffic; every time in seconds, work in 512x512 steps."""

    name: str
    capacities: np.ndarray = field(repr=False)  # [N] steps/s of every box (joiners too)
    load: float = 0.9  # offered work / total speed of the boxes up at the start
    n_tasks: int = 20_000
    arrival: Arrival = "poisson"
    burst_factor: float = 4.0  # bursty: rate in a burst / rate between bursts
    burst_s: float = 5.0  # bursty: mean burst length
    quiet_s: float = 15.0  # bursty: mean time between bursts
    origins: Origins = "uniform"
    zipf_s: float = 1.0  # skewed: origin k drawn with weight 1 / (k + 1)^s
    steps: tuple[int, int] = TASK_STEPS
    gossip_interval_s: float = 1.0
    gossip_loss: float = 0.0  # each gossip message is lost with this probability
    link_s: float = 0.002  # one-way latency between boxes
    link_jitter_s: float = 0.0  # + exponential jitter with this mean, per forwarded task
    link_mbit_per_s: float = 100.0  # agent/cluster/coordinator.py: LINK_MBIT_PER_S
    result_mbit: float = 0.0  # image sent back to the origin (0: emulated backends)
    ack_timeout_s: float = 3.0  # agent config forward_ack_timeout_s
    client_retry_s: float = 3.0  # a client whose origin died resubmits after this long
    events: tuple[BoxEvent, ...] = ()  # failures and joins
    down_at_start: tuple[int, ...] = ()  # boxes that join later
    gossip: GossipMode = "full"
    fanout: int = 3  # partial view: peers contacted per interval
    digest_entries: int = 16  # partial view: other boxes' reports relayed per message
    warmup_fraction: float = 0.1  # tasks left out of the statistics (queues filling)

    @property
    def n_boxes(self) -> int:
        return int(np.asarray(self.capacities).size)

    def validate(self) -> Scenario:
        caps = np.asarray(self.capacities, dtype=np.float64)
        if caps.ndim != 1 or caps.size < 1 or not (caps > 0).all():
            raise ValueError("capacities must be a non-empty vector of speeds > 0 (steps/s)")
        if not 0 < self.load < 10 or self.n_tasks < 1:
            raise ValueError("load must be in (0, 10) and n_tasks >= 1")
        if self.gossip_interval_s <= 0 or not 0 <= self.gossip_loss < 1:
            raise ValueError("gossip_interval_s must be > 0 and gossip_loss in [0, 1)")
        if self.link_s < 0 or self.link_jitter_s < 0 or self.link_mbit_per_s <= 0:
            raise ValueError("link_s and link_jitter_s must be >= 0, link_mbit_per_s > 0")
        if self.steps[0] < 1 or self.steps[1] < self.steps[0]:
            raise ValueError(f"steps range {self.steps} is not 1 <= lo <= hi")
        up = np.ones(self.n_boxes, dtype=bool)
        up[list(self.down_at_start)] = False
        if not up.any():
            raise ValueError("no box is up at the start")
        if any(not 0 <= e.box < self.n_boxes for e in self.events):
            raise ValueError("a failure or join names a box outside the scenario")
        if self.fanout < 1 or self.digest_entries < 0:
            raise ValueError("fanout must be >= 1 and digest_entries >= 0")
        return self

    def with_(self, **changes: object) -> Scenario:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Arrivals:
    """The task stream, sorted by time."""

    at_s: np.ndarray  # [T]
    origin: np.ndarray  # [T] int
    steps: np.ndarray  # [T] int (512x512: demand = steps)
    size_mbit: np.ndarray  # [T]

    def __len__(self) -> int:
        return int(self.at_s.size)


# ---- speeds -----------------------------------------------------------------------------------
def paper_capacities(n_boxes: int, scale: float = STEPS_PER_S_PER_UNIT) -> np.ndarray:
    """The paper's spread: f ~ randint(10, 50) with its seed; the first eight are the
    ``bench_cluster`` agents (50 25 18 32 28 21 50 17)."""
    rs = np.random.RandomState(PAPER_CAPACITY_SEED)
    lo, hi = PAPER_CAPACITY_RANGE
    return rs.randint(lo, hi + 1, size=n_boxes).astype(np.float64) * scale


def jetson_rtx_capacities(n_boxes: int, seed: int = 0) -> np.ndarray:
    """ESTIMATED speeds of a Jetson/RTX mix in the shares of ``JETSON_RTX_MIX`` (±10 %)."""
    rng = np.random.default_rng([seed, 0x7E75])
    kinds = list(JETSON_RTX_MIX)
    counts = np.floor(np.array([JETSON_RTX_MIX[k] for k in kinds]) * n_boxes).astype(int)
    counts[np.argmax(counts)] += n_boxes - counts.sum()
    speeds = np.concatenate(
        [np.full(c, ESTIMATED_STEPS_PER_S[k]) for k, c in zip(kinds, counts, strict=True)]
    )
    return rng.permutation(speeds) * rng.uniform(0.9, 1.1, n_boxes)


# ---- presets ----------------------------------------------------------------------------------
def paper(n_boxes: int, load: float = 0.9, n_tasks: int = 20_000, **kw: object) -> Scenario:
    return Scenario(f"paper-{n_boxes}", paper_capacities(n_boxes), load, n_tasks, **kw).validate()  # type: ignore[arg-type]


def jetson_rtx(n_boxes: int, load: float = 0.9, n_tasks: int = 20_000, **kw: object) -> Scenario:
    caps = jetson_rtx_capacities(n_boxes)
    return Scenario(f"jetson-rtx-{n_boxes} (estimate)", caps, load, n_tasks, **kw).validate()  # type: ignore[arg-type]


def bench_cluster(load: float = 0.9, n_tasks: int = 20_000, **kw: object) -> Scenario:
    """The eight emulated agents of ``tools/bench_cluster.py`` (loopback: ~0.1 ms links)."""
    kw.setdefault("link_s", 0.0001)
    return Scenario("bench-cluster-8", paper_capacities(8), load, n_tasks, **kw).validate()  # type: ignore[arg-type]


def with_failures(
    scenario: Scenario, n_failures: int, seed: int, rejoin_after_s: float | None = None
) -> Scenario:
    """``n_failures`` boxes fail at random times in the middle of the trace (rejoining
    after ``rejoin_after_s`` when given); box 0 never fails (someone must stay up)."""
    rng = np.random.default_rng([seed, 0xFA11])
    horizon = scenario.n_tasks / arrival_rate(scenario)
    boxes = rng.choice(np.arange(1, scenario.n_boxes), size=n_failures, replace=False)
    times = np.sort(rng.uniform(0.2 * horizon, 0.7 * horizon, n_failures))
    events = [BoxEvent(float(t), int(b), "fail") for t, b in zip(times, boxes, strict=True)]
    if rejoin_after_s is not None:
        events += [BoxEvent(e.at_s + rejoin_after_s, e.box, "join") for e in events]
    events.sort(key=lambda e: e.at_s)
    return scenario.with_(events=tuple(events)).validate()


# ---- arrivals ---------------------------------------------------------------------------------
def arrival_rate(scenario: Scenario) -> float:
    """Tasks per second: ``load`` x the speed of the boxes up at the start / mean demand."""
    caps = np.asarray(scenario.capacities, dtype=np.float64).copy()
    caps[list(scenario.down_at_start)] = 0.0
    return scenario.load * caps.sum() / (sum(scenario.steps) / 2)


@cache
def _prompt_lengths() -> np.ndarray:
    try:
        path = resources.files("dedgeai.agent").joinpath("data", "flickr8k_prompts.txt")
        lines = [x.strip() for x in path.read_text(encoding="utf-8").splitlines()]
        return np.array([len(x.encode()) for x in lines if x], dtype=np.float64)
    except (OSError, ModuleNotFoundError):
        return np.array([MEAN_PROMPT_CHARS])


def _times(scenario: Scenario, rate: float, rng: np.random.Generator) -> np.ndarray:
    n = scenario.n_tasks
    if scenario.arrival == "poisson":
        return np.cumsum(rng.exponential(1.0 / rate, n))
    # Bursty: on/off modulated Poisson with the same mean rate.
    on = scenario.burst_s / (scenario.burst_s + scenario.quiet_s)
    low = rate / (on * scenario.burst_factor + (1.0 - on))
    out: list[np.ndarray] = []
    t, burst, total = 0.0, False, 0
    while total < n:
        length = rng.exponential(scenario.burst_s if burst else scenario.quiet_s)
        r = low * (scenario.burst_factor if burst else 1.0)
        k = rng.poisson(r * length)
        out.append(np.sort(t + rng.uniform(0.0, length, k)))
        total += k
        t += length
        burst = not burst
    return np.concatenate(out)[:n]


def arrivals(scenario: Scenario, seed: int) -> Arrivals:
    """The task stream of ``scenario`` for ``seed``: the same for every policy."""
    scenario.validate()
    rng = np.random.default_rng([seed, 0xA881])
    n = scenario.n_tasks
    at = _times(scenario, arrival_rate(scenario), rng)
    live = np.ones(scenario.n_boxes, dtype=bool)
    live[list(scenario.down_at_start)] = False
    boxes = np.flatnonzero(live)
    if scenario.origins == "uniform":
        origin = boxes[rng.integers(0, boxes.size, n)]
    else:
        weights = 1.0 / (np.arange(boxes.size) + 1.0) ** scenario.zipf_s
        origin = boxes[rng.choice(boxes.size, size=n, p=weights / weights.sum())]
    lo, hi = scenario.steps
    steps = rng.integers(lo, hi + 1, n)
    chars = rng.choice(_prompt_lengths(), size=n)
    size = (chars + REQUEST_OVERHEAD_BYTES) * 8 / 1e6
    return Arrivals(at, origin.astype(np.int64), steps.astype(np.int64), size)
