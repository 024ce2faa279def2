"""Per-task scheduling for a live cluster: the agent daemon's view of the paper's MDP (§1.6, §6).

The daemon knows, from telemetry gossip, each server's backlog, the work placed on it in the
current interval, its measured speed and whether it is up. This module turns that into the
paper's state, asks a policy for a target and keeps the learned policy's delayed rewards.
Pure: no sockets, no threads (the agent serialises calls), no disk except explicit save/load.

Units: the simulator counts work in Gcycles, the daemon in denoising steps at 512x512. The
paper models a task's work as density x steps (c_n = ρ_n q_n, §1.2), so one 512x512 step is
taken as ``DENSITY_GCYCLES_PER_STEP`` Gcycles, the middle of the paper's ρ range. Backlogs
enter the (scaled) state as seconds of work, which does not depend on that choice.

The state, the task, the placement and the heuristics are torch-free and live in
``cluster_state.py`` (re-exported here); this module adds the learned policies (torch).

Gossip is hostile input: a state with a NaN/inf, negative or absurd value (bounds in
``state_checks.py``) never reaches a learned policy. ``decide`` then takes greedy's
decision on a sanitised state (the faulty servers masked), says so in the reason, records
no transition and counts it in ``insane_states``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dedgeai.scheduler.checkpoints import StateLayout
from dedgeai.scheduler.cluster_state import (
    LEARNED,
    MIN_TEMPERATURE_S,
    POLICIES,
    SOFT_GREEDY_TEMPERATURE,
    ClusterState,
    HeuristicScheduler,
    Placement,
    TaskSpec,
    estimated_finish_s,
    soft_greedy,
)
from dedgeai.scheduler.config import EnvConfig, LearnConfig, Switches
from dedgeai.scheduler.env import state_dim
from dedgeai.scheduler.errors import ConfigurationError, WarmStartCancelled
from dedgeai.scheduler.lad_scorer import DEFAULT_CHECKPOINT, LADScorer
from dedgeai.scheduler.lad_scorer_learning import ScorerLearning
from dedgeai.scheduler.learner import latent_to_memory
from dedgeai.scheduler.policy import OnlinePolicy
from dedgeai.scheduler.state_checks import sane_capacities

__all__ = [
    "DENSITY_GCYCLES_PER_STEP",
    "LEARNED",
    "MIN_TEMPERATURE_S",
    "POLICIES",
    "SOFT_GREEDY_TEMPERATURE",
    "ClusterScheduler",
    "ClusterState",
    "Placement",
    "TaskSpec",
    "estimated_finish_s",
    "soft_greedy",
]

DENSITY_GCYCLES_PER_STEP = 0.2048  # middle of U[0.1024, 0.3072) Gcycles per step (§1.2)
WARM_START_SAMPLES = 4096
WARM_START_STEPS = 2000  # ~3 s of CPU at hidden 64 (measured: 300 left LAD at ~30 % agreement)


class ClusterScheduler(HeuristicScheduler):
    """One agent's scheduler: a heuristic, or a learned LAD-TS / SAC-TS / DQN-TS actor."""

    def __init__(
        self,
        policy: str,
        n_servers: int,
        self_index: int,
        seed: int = 0,
        checkpoint: Path | None = None,
        learn: bool = False,
        switches: Switches | None = None,
        learn_config: LearnConfig | None = None,
        deterministic: bool = False,
        explore_epsilon: float = 0.0,
        capacities: np.ndarray | None = None,
        mean_path: bool = False,
        should_stop: Callable[[], bool] | None = None,
        warm_start_steps: int | None = None,
        actor: str = "ladn",
        packaged_default: bool = True,
    ) -> None:
        """``deterministic``: a learned policy takes the most likely action (argmax of π,
        masked) instead of sampling it, and a uniformly drawn live server with probability
        ``explore_epsilon`` (deployment; the default samples, as in training).
        ``mean_path`` (deployment, not deterministic): the action is drawn from π of LAD's
        noiseless chain, the π the warm start fitted (DQN: argmax of Q).
        ``capacities``: every server's measured speed (steps/s), for a fresh actor's warm
        start (see ``_warm_start``). ``should_stop``: asked during that warm start; when it
        says so the constructor raises :class:`WarmStartCancelled` (an agent stopping).
        ``warm_start_steps``: cloning steps of that warm start (the agent's setting; None:
        ``WARM_START_STEPS``).
        ``actor`` (``lad`` only): ``ladn``, the paper's network over the whole state, or
        ``scorer``, the per-server LAD scorer of ``lad_scorer.py`` (any cluster size; with
        ``learn`` it learns online, ``lad_scorer_learning.py``). Without a ``checkpoint`` the
        scorer starts from the packaged default (``lad_scorer.DEFAULT_CHECKPOINT``) unless
        ``packaged_default`` is False: then a fresh warm start on ``capacities``.
        ``loaded_from``: the checkpoint the learned policy came from (None: a warm start)."""
        super().__init__(policy, n_servers, self_index, seed=seed)
        self._interval_index = 0
        self._learned: OnlinePolicy | None = None
        self._scorer: LADScorer | None = None
        self._scorer_learning: ScorerLearning | None = None
        self.loaded_from: Path | None = None
        if actor not in ("ladn", "scorer") or (actor == "scorer" and policy != "lad"):
            raise ConfigurationError(f"actor {actor!r}: ladn, or scorer for the lad policy")
        if actor == "scorer":
            self._start_scorer(
                n_servers,
                seed,
                checkpoint,
                learn,
                learn_config,
                capacities,
                should_stop,
                warm_start_steps,
                packaged_default,
            )
        elif checkpoint is not None and Path(checkpoint).exists():
            self.loaded_from = Path(checkpoint)
        self._learn = learn and policy in LEARNED
        if not 0.0 <= explore_epsilon <= 1.0:
            raise ConfigurationError(f"explore_epsilon {explore_epsilon} outside [0, 1]")
        self.deterministic, self.explore_epsilon = deterministic, explore_epsilon
        self.mean_path = mean_path and not deterministic
        if policy in LEARNED and n_servers >= 2 and self._scorer is None:
            # A fresh actor's ε is unconstrained (B7 off): the warm start's soft-greedy π needs
            # more sharpness than B7 allows. A checkpoint keeps the switches it was made with.
            switches = switches or Switches(eps_softmax=False)
            env = EnvConfig(n_servers=n_servers)
            if checkpoint is not None and Path(checkpoint).exists():
                layout = StateLayout(
                    n_servers,
                    state_dim(n_servers, switches.inslot_load_in_state),
                    switches.inslot_load_in_state,
                    switches.state_scaling,
                )
                self._learned = OnlinePolicy.load(
                    checkpoint,
                    agent=self_index if _stacked(checkpoint) else 0,
                    expect=layout,
                    seed=seed,
                )
                if self._learned.method != policy:
                    raise ConfigurationError(
                        f"{checkpoint}: a {self._learned.method} checkpoint, not {policy}"
                    )
                if learn_config is not None:  # the deployment's pacing wins over the file's
                    self._learned.set_pacing(learn_config.warmup, learn_config.batch_size)
            else:
                self._learned = OnlinePolicy(
                    policy, env, agent=self_index, switches=switches, learn=learn_config, seed=seed
                )
                memory = self._learned.learner.memory
                if memory is not None:
                    # Start X_b[n] at the uniform policy: the paper's N(0, 1) start is scaled by
                    # about 12.5 through the chain (§2.2) and would drown the cloned actor.
                    memory.copy_(
                        latent_to_memory(torch.zeros_like(memory), switches.memory_pre_softmax)
                    )
                self._warm_start(capacities, should_stop, warm_start_steps)

    def _start_scorer(
        self,
        n_servers: int,
        seed: int,
        checkpoint: Path | None,
        learn: bool,
        learn_config: LearnConfig | None,
        capacities: np.ndarray | None,
        should_stop: Callable[[], bool] | None,
        warm_start_steps: int | None,
        packaged_default: bool,
    ) -> None:
        """The per-server scorer: from ``checkpoint``, else the packaged default, else a
        fresh warm start (the actor cloned, and with ``learn`` the critics fitted)."""
        path = Path(checkpoint) if checkpoint is not None and Path(checkpoint).exists() else None
        if path is None and packaged_default and DEFAULT_CHECKPOINT.exists():
            path = DEFAULT_CHECKPOINT
        self.loaded_from = path
        pacing = None if learn_config is None else (learn_config.warmup, learn_config.batch_size)
        if path is not None and learn:
            self._scorer_learning = ScorerLearning.load(
                path, n_servers, seed=seed, pacing=pacing, should_stop=should_stop
            )
            self._scorer = self._scorer_learning.scorer
            return
        if path is not None:
            self._scorer = LADScorer.load(path)
            return
        self._scorer = LADScorer(seed=seed)
        capacities = sane_capacities(capacities, n_servers)
        steps = {} if warm_start_steps is None else {"steps": warm_start_steps}
        self._scorer.warm_start(capacities, should_stop=should_stop, **steps)
        if learn:
            self._scorer_learning = ScorerLearning(self._scorer, n_servers, seed=seed)
            if pacing is not None:
                self._scorer_learning.set_pacing(*pacing)
            # warm_start_steps (the agent's setting) paces the critics' fit as the clone's
            self._scorer_learning.fit_critics(
                capacities, steps=warm_start_steps, should_stop=should_stop
            )

    @property
    def learns(self) -> bool:
        if self._scorer_learning is not None:
            return self._learn
        return self._learned is not None and self._learn

    @property
    def draws_from_capped_lad(self) -> bool:
        """Drawing from a LAD actor whose ε goes through a softmax (B7, e.g. an older
        checkpoint): its π_max is about 0.6 at most, so draws often pick slow servers."""
        learned = self._learned
        return (
            self.mean_path
            and learned is not None
            and learned.method == "lad"
            and learned.switches.eps_softmax
        )

    def start_interval(self) -> None:
        """A new gossip interval: LAD's in-interval task index n starts again at 0 (§2.3)."""
        self._interval_index = 0

    def _decide_sane(self, task: TaskSpec, cluster: ClusterState, task_id: str | None) -> Placement:
        if self._scorer is not None:
            return self._decide_scorer(task, cluster, task_id)
        if self._learned is not None:
            return self._decide_learned(task, cluster, task_id)
        return self._decide_heuristic(self.policy, task, cluster)

    def _states(self, task: TaskSpec, cluster: ClusterState) -> np.ndarray:
        assert self._learned is not None
        rho = DENSITY_GCYCLES_PER_STEP
        return self._learned.build_states(
            np.array([task.size_mbit]),
            np.array([task.demand_steps * rho]),
            np.asarray(cluster.backlog_steps, dtype=np.float64) * rho,
            np.asarray(cluster.interval_load_steps, dtype=np.float64) * rho,
            np.maximum(np.asarray(cluster.capacity_steps_per_s, dtype=np.float64), 1e-9) * rho,
        )

    def _decide_learned(
        self, task: TaskSpec, cluster: ClusterState, task_id: str | None
    ) -> Placement:
        assert self._learned is not None
        index = np.array([self._interval_index])
        self._interval_index += 1
        ids = [task_id] if (task_id is not None and self._learn) else None
        decision = self._learned.decide(
            self._states(task, cluster),
            mask=cluster.available,
            task_index=index,
            task_ids=ids,
            greedy=self.deterministic,
            explore_epsilon=self.explore_epsilon,
            mean_path=self.mean_path,
        )
        target = int(decision.actions[0])
        probs = decision.probs[0]
        chosen, most = float(probs[target]), float(probs.max())  # floats format faster
        how = ""
        if self.deterministic:
            how = "argmax " if chosen >= most else "explore "
        elif self.mean_path:
            how = "drawn "
        return Placement(target, probs, self.policy, f"{how}p={chosen:.2f} (max {most:.2f})")

    def _decide_scorer(
        self, task: TaskSpec, cluster: ClusterState, task_id: str | None
    ) -> Placement:
        """π of the scorer's mean path: drawn, or its argmax (ε-explore) if deterministic;
        learning, the decision is recorded for its reward (``complete``)."""
        assert self._scorer is not None
        # candidates (above 64 live servers) drawn from this box's own generator: agents
        # that load one checkpoint must not draw correlated candidates
        probs = self._scorer.state_probs(task, cluster, rng=self._rng)
        up = np.flatnonzero(cluster.available)
        if self.deterministic:
            if self._rng.random() < self.explore_epsilon:
                target, how = int(up[self._rng.integers(0, up.size)]), "explore"
            else:
                target, how = int(np.argmax(probs)), "argmax"
        else:
            cdf = np.cumsum(probs)
            target = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
            if target >= probs.size or probs[target] <= 0.0:
                target = int(np.argmax(probs))
            how = "drawn"
        if task_id is not None and self._scorer_learning is not None and self._learn:
            self._scorer_learning.record(task_id, task, cluster, target)
        chosen, most = float(probs[target]), float(probs.max())
        reason = f"scorer {how} p={chosen:.2f} (max {most:.2f})"
        return Placement(target, probs, self.policy, reason)

    def probe_probs(self, task: TaskSpec, cluster: ClusterState) -> np.ndarray | None:
        """The scorer's π on ``cluster`` (the gossip view), for drawing whom to probe
        (``lad_mode = "probe"``); nothing is recorded. None without a scorer, or on an insane
        state (the caller then draws as soft-greedy would)."""
        if self._scorer is None:
            return None
        cluster.validate(self.n_servers)
        if task.problems() or cluster.problems():
            self.insane_states += 1
            return None
        return self._scorer.state_probs(task, cluster, rng=self._rng)

    def record(self, task_id: str, task: TaskSpec, cluster: ClusterState, target: int) -> bool:
        """A placement made for the scorer on another state (``lad_mode = "probe"``: pod2's
        choice on the probed state) recorded as its action on ``cluster``, the gossip view
        it drew the probes from; its reward comes with ``complete``. Off-policy data, which
        discrete SAC's critics learn from as they do from its own draws. False when not
        learning, or the view is insane."""
        if self._scorer_learning is None or not self._learn:
            return False
        if not 0 <= target < self.n_servers or task.problems() or cluster.problems():
            return False
        self._scorer_learning.record(task_id, task, cluster, int(target))
        return True

    def complete(self, task_id: str, delay_s: float) -> bool:
        """The observed service delay of a task that ran to completion: its reward (−delay).
        False for an unknown id, or a delay that is not a finite number ≥ 0 (dropped)."""
        if not self.learns:
            return False
        return self._online.complete(task_id, delay_s)

    def abandon(self, task_id: str) -> bool:
        """A decided task that failed or was cancelled: its transition goes, no reward."""
        if not self.learns:
            return False
        return self._online.abandon(task_id)

    @property
    def _online(self) -> OnlinePolicy | ScorerLearning:
        """Whichever learner this scheduler has (the scorer's, or the paper actor's)."""
        online = self._scorer_learning or self._learned
        assert online is not None
        return online

    @property
    def rejected_updates(self) -> int:
        online = self._scorer_learning or self._learned
        return 0 if online is None else online.rejected_updates

    @property
    def dropped_transitions(self) -> int:
        online = self._scorer_learning or self._learned
        return 0 if online is None else online.dropped_transitions

    def train_step(self) -> dict[str, float] | None:
        if not self.learns:
            return None
        return self._online.train_step()

    @property
    def trained_steps(self) -> int:
        online = self._scorer_learning or self._learned
        return 0 if online is None else online.trained_steps

    def save(self, path: Path) -> bool:
        """Checkpoint a learned policy; False for heuristics (nothing to save).
        ``CheckpointError`` (nothing written) when a weight is NaN/inf."""
        if self._scorer_learning is not None:
            self._scorer_learning.save(path)  # the actor and its critics
            return True
        if self._scorer is not None:
            self._scorer.save(path)
            return True
        if self._learned is None:
            return False
        self._learned.save(path)
        return True

    def _warm_start(
        self,
        capacities: np.ndarray | None,
        should_stop: Callable[[], bool] | None = None,
        steps: int | None = None,
    ) -> None:
        """Clone the greedy rule on synthetic cluster states, so a fresh actor starts sane.

        The paper's state carries backlogs in seconds but no server speeds: the actor has to
        learn them. Given the measured ``capacities`` (steps/s, from telemetry), the synthetic
        states use them (±15 %), and the clone learns where this cluster's fast servers are;
        without them, capacities are drawn from the paper's relative spread (§1.2), and the
        clone can only learn to prefer short backlogs.
        """
        assert self._learned is not None
        rng = np.random.default_rng(1234)
        B, K = self.n_servers, WARM_START_SAMPLES
        capacities = sane_capacities(capacities, B)
        if capacities is None:
            capacity = rng.uniform(10, 50, size=(K, B))
        else:
            capacity = np.asarray(capacities, dtype=np.float64)[None] * rng.uniform(
                0.85, 1.15, size=(K, B)
            )
        # Backlogs as a live cluster has them: often empty, otherwise up to 12 s of work.
        idle = rng.uniform(size=(K, B)) < 0.4
        backlog = np.where(idle, 0.0, rng.uniform(0, 12, size=(K, B))) * capacity
        quiet = rng.uniform(size=(K, B)) < 0.5
        load = np.where(quiet, 0.0, rng.uniform(0, 3, size=(K, B))) * capacity
        demand = rng.uniform(5, 40, size=K)
        size = rng.uniform(0.001, 0.05, size=K)
        available = rng.uniform(size=(K, B)) > 0.1
        available[np.arange(K), rng.integers(0, B, K)] = True
        states = np.empty((K, self._learned.layout.state_dim), dtype=np.float32)
        finish = np.empty((K, B))
        for k in range(K):
            if should_stop is not None and k % 256 == 0 and should_stop():
                raise WarmStartCancelled("the warm start was stopped")
            cluster = ClusterState(self.self_index, backlog[k], load[k], capacity[k], available[k])
            task = TaskSpec(float(demand[k]), float(size[k]))
            states[k] = self._states(task, cluster)[0]
            finish[k] = estimated_finish_s(task, cluster)
        self._learned.imitate(
            states,
            soft_greedy(finish),
            available,
            steps=WARM_START_STEPS if steps is None else steps,
            lr=1e-2,
            should_stop=should_stop,
        )
        if not self._learned.learner.weights_finite():
            raise ConfigurationError("the warm start diverged (NaN/inf weights)")


def _stacked(checkpoint: Path) -> bool:
    """True for a ``dedgeai sim train`` checkpoint (one row per server)."""
    from dedgeai.scheduler.checkpoints import load_checkpoint

    config, _ = load_checkpoint(checkpoint)
    return int(config.get("n_agents", 1)) > 1
