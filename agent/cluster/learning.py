"""The agent's scheduling policy: decisions on the loop thread, training on its own thread.

``SchedulerHost`` wraps the scheduler library's ``HeuristicScheduler`` or, for a learned
policy, its ``ClusterScheduler`` (the only one that imports torch). The scheduler is not
thread-safe, so one lock guards it, and decisions never wait for it: the loop thread only
*tries* the lock, and while a training step holds it (a few milliseconds, at a bounded
rate) the decision is taken by a greedy fallback and says so in its reason. Rewards (the
observed service delay of a task that ran to completion) are queued and handed to the
scheduler by the training thread; a failed or cancelled task is ``abandon``-ed (its
transition dropped: the time to a cancel says nothing about a server's speed). The policy
is checkpointed in the state directory and reloaded at start. A fresh learned actor
warm-starts (imitates greedy) in the background; greedy decides until it is ready (the
per-server scorer, ``lad_actor = "scorer"``, starts at once from the packaged default,
``scheduler/data/lad_scorer_default.pt``, when no checkpoint is configured or saved). A
checkpoint for another number of servers stops the agent at start; a corrupt one
(unreadable, NaN/inf weights) is refused, kept aside, and a fresh actor warm-starts.

The learner cannot be poisoned: states with NaN/inf or absurd values are decided by greedy
and never recorded (scheduler/state_checks.py), a delay that is not finite and > 0 gives no
reward and a longer one is clipped to ``MAX_REWARD_DELAY_S``, a training step with NaN/inf
losses or weights is rolled back, and no NaN/inf weight is saved or loaded. ``status()``
counts each, and says whether the policy is ``ready``, ``warming`` or ``failed`` (and why).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dedgeai.agent.cluster.guard import LEARNED_STATE, Arm, PolicyGuard
from dedgeai.agent.errors import ConfigError
from dedgeai.scheduler.cluster_state import LEARNED, HeuristicScheduler
from dedgeai.scheduler.errors import (
    CheckpointError,
    CorruptCheckpointError,
    SchedulerError,
    WarmStartCancelled,
)

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("dedgeai.agent.cluster.learning")

SAVE_EVERY_S = 30.0  # checkpoint the learned policy at most this often (and at stop)
MAX_QUEUED_REWARDS = 10_000
IDLE_WAIT_S = 0.5  # the training thread's nap when it has nothing to learn from
CAPACITY_WAIT_S = 15.0  # a fresh actor's warm start waits this long for every peer's speed
# A reward's delay is clipped to this: one task stuck for hours (a paused peer, a clock
# jump) must not dominate the critic's targets; it still reads as the worst outcome.
MAX_REWARD_DELAY_S = 600.0
REFUSED_NAME = "policy.refused.pt"  # where a corrupt <state>/policy.pt is kept aside
READY, WARMING, FAILED = "ready", "warming", "failed"
# stop() waits this long for the training thread: a cancelled warm start ends in ms, a
# training step in ms too, but the warm start's torch import is not cut (seconds).
STOP_JOIN_S = 30.0
CapacityProbe = Callable[[], "np.ndarray | None"]


def _packaged_scorer() -> Path | None:
    """The packaged default scorer checkpoint (``lad_scorer.DEFAULT_CHECKPOINT``), if shipped."""
    from dedgeai.scheduler.lad_scorer import DEFAULT_CHECKPOINT  # torch: a scorer needs it

    return DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.is_file() else None


class HostStats(dict[str, Any]):
    """``SchedulerHost.stats``: written from two threads, read whole by ``status``.

    Each key has one writer (the loop thread: decisions and the rewards it queues; the
    training thread: warm start, training, checkpoints), so ``+=`` loses nothing. What needs
    the lock is reading the whole (``snapshot``) while the other thread adds a key.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()

    def __setitem__(self, key: str, value: Any) -> None:
        with self.lock:
            super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        with self.lock:
            super().update(*args, **kwargs)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return dict(self)


class SchedulerHost:
    """One scheduler (a heuristic, or a learned ClusterScheduler) behind a try-lock, plus its
    training thread."""

    def __init__(
        self,
        policy: str,
        n_servers: int,
        self_index: int,
        state_dir: Path,
        checkpoint: str = "",
        learn: bool = True,
        train_steps_per_s: float = 2.0,
        learn_warmup: int = 300,
        seed: int = 0,
        warm_start_steps: int | None = None,  # None: the scheduler's WARM_START_STEPS
        lad_actor: str = "ladn",
        lad_mode: str = "place",
        policy_actions: str = "sample",
        explore_epsilon: float = 0.02,
        capacities: CapacityProbe | None = None,
    ) -> None:
        """``capacities``: every server's measured speed once known (None until then); a
        fresh learned actor waits up to ``CAPACITY_WAIT_S`` for it before its warm start."""
        self.policy, self.n_servers, self.self_index = policy, n_servers, self_index
        # "probe": the scorer draws whom to probe; pod2's choice on the probed state places
        self.mode = lad_mode if policy == "lad" and lad_actor == "scorer" else "place"
        self.save_path = state_dir / "policy.pt"
        # The per-server scorer (scheduler/lad_scorer.py) learns online as the paper's actor
        # does (scheduler/lad_scorer_learning.py).
        scorer = policy == "lad" and lad_actor == "scorer"
        self.learn = learn and policy in LEARNED and n_servers >= 2
        self.train_period_s = 1.0 / train_steps_per_s
        self.lock = threading.Lock()
        # (task id, delay) to reward; (task id, None) to abandon
        self.rewards: collections.deque[tuple[str, float | None]] = collections.deque(
            maxlen=MAX_QUEUED_REWARDS
        )
        self.fallback = HeuristicScheduler("greedy", n_servers, self_index, seed=seed)
        # A learned policy's decisions are shared with greedy as a control (agent/cluster/guard):
        # greedy takes over while the learned policy's recent delays are worse.
        self.guard = PolicyGuard(seed) if policy in LEARNED and n_servers >= 2 else None
        # The heuristic the guard's control arm runs: greedy on gossip, or pod2 when the
        # cluster probes the control's candidates (agent/cluster/coordinator.py sets it).
        self.control_name = "greedy"
        self.capacities = capacities
        stats: dict[str, Any] = {
            "trained_steps": 0,
            "rewards": 0,
            "fallback_decisions": 0,
            "last_losses": None,
            "checkpoint": None,
            "loaded_from": None,
            "ready": False,
            "state": WARMING,
            "reason": None,  # why the state is failed
            "warm_start": None,
            "checkpoint_refused": None,  # a corrupt checkpoint not loaded, and what instead
            "save_refused": None,
            "abandoned": 0,  # transitions dropped without a reward (failed/cancelled tasks)
            "rejected_rewards": 0,  # delays not finite and > 0
            "clipped_rewards": 0,  # delays over MAX_REWARD_DELAY_S
            "guard_decisions": 0,  # decided by the guard's control heuristic (or its fallback)
            "unrecorded_probe_decisions": 0,  # lad_mode = probe: placed, no transition kept
        }
        self.stats = HostStats(stats)
        self._pending_interval = False
        self._stop = threading.Event()
        # DQN has no π to draw from: it always takes argmax of Q (with ε exploration).
        argmax = policy_actions == "argmax" or policy == "dqn"
        self._kwargs = {
            "policy": policy,
            "n_servers": n_servers,
            "self_index": self_index,
            "seed": seed,
            "learn": self.learn,
            "learn_config": self._learn_config(learn_warmup),
            "deterministic": argmax,
            "explore_epsilon": explore_epsilon if argmax else 0.0,
            "mean_path": not argmax,
            "warm_start_steps": warm_start_steps,
        }
        if scorer:  # scheduler/lad_scorer.py; the packaged default is chosen below, not there
            self._kwargs.update(actor="scorer", packaged_default=False)
        self.scheduler: Any = None
        source = self.save_path if self.save_path.exists() else None
        if source is None and checkpoint:
            source = Path(checkpoint).expanduser()
            if not source.is_file():
                raise ConfigError(f"`policy_checkpoint` {source} does not exist")
        if source is None and scorer and n_servers >= 2:
            source = _packaged_scorer()  # None if the package lacks it: a warm start
        if source is not None or policy not in LEARNED or n_servers < 2:
            try:
                self.scheduler = self._build(source)  # fast: load or a heuristic
            except CorruptCheckpointError as exc:  # the thread warm-starts a fresh actor
                assert source is not None
                self._refuse(source, exc)
            else:  # a checkpoint that does not fit raised ConfigError: the start stops
                self.stats.update(
                    ready=True, state=READY, loaded_from=str(source) if source else None
                )
        self._thread = threading.Thread(target=self._run, name="policy-trainer", daemon=True)

    @staticmethod
    def _learn_config(warmup: int) -> Any:
        from dedgeai.scheduler.config import LearnConfig

        defaults = LearnConfig()
        return LearnConfig(warmup=warmup, batch_size=min(defaults.batch_size, max(1, warmup)))

    def _build(self, checkpoint: Path | None, capacities: Any = None) -> Any:
        try:
            built = self._construct(checkpoint, capacities)
        except (CorruptCheckpointError, WarmStartCancelled):
            raise
        except SchedulerError as exc:
            hint = f"; delete {self.save_path} to start afresh" if checkpoint else ""
            raise ConfigError(
                f"policy `{self.policy}` with {self.n_servers} server(s): {exc}{hint}"
            ) from exc
        if built.draws_from_capped_lad:
            log.warning(
                "%s: a LAD actor with ε through a softmax (B7): its π is flat "
                "(π_max ≲ 0.6), and drawing from it (policy_actions = sample) sends "
                "tasks to slow servers; delete %s to warm-start afresh, or set "
                "policy_actions = argmax",
                checkpoint,
                self.save_path,
            )
        return built

    def _construct(self, checkpoint: Path | None, capacities: Any) -> Any:
        """A heuristic needs no torch: only a learned policy with peers to choose from builds
        the torch-backed ``ClusterScheduler`` (imported here, so that a heuristic agent, or a
        learned one alone, never loads torch; alone, a learned policy decides ``local``)."""
        kwargs = self._kwargs
        if kwargs["policy"] not in LEARNED or self.n_servers < 2:
            return HeuristicScheduler(
                kwargs["policy"], kwargs["n_servers"], kwargs["self_index"], seed=kwargs["seed"]
            )
        from dedgeai.scheduler.online import ClusterScheduler

        return ClusterScheduler(
            **kwargs,
            checkpoint=checkpoint,
            capacities=capacities,
            should_stop=self._stop.is_set,  # stop() ends a warm start within one cloning step
        )

    def _refuse(self, source: Path, exc: CorruptCheckpointError) -> None:
        """A corrupt checkpoint: say why, keep our own aside (not overwritten by the next
        save, not refused again at the next start); a fresh actor warm-starts instead."""
        message = str(exc)
        if source == self.save_path:
            aside = self.save_path.with_name(REFUSED_NAME)
            try:
                source.replace(aside)
                message += f"; kept as {aside}"
            except OSError as move:
                message += f"; could not move it aside ({move})"
        message += "; starting afresh (a fresh actor warm-starts, greedy decides meanwhile)"
        log.error("policy checkpoint refused: %s", message)
        self.stats["checkpoint_refused"] = message

    def _fail(self, reason: str) -> None:
        log.error("policy %s: %s", self.policy, reason)
        self.stats.update(state=FAILED, reason=reason)

    def start(self) -> SchedulerHost:
        self._thread.start()
        return self

    # --- the loop thread -------------------------------------------------------------

    def draw(self, task_id: str) -> Arm | None:
        """The guard's arm for ``task_id`` (None: no guard, or no policy to guard yet).

        The cluster draws first when the control is a probing heuristic: a ``control`` task is
        then probed before ``decide(..., arm="control")`` places it on the probed state."""
        if self.guard is None or self.scheduler is None:
            return None
        arm = self.guard.arm(task_id)
        if arm == "control":
            self.stats["guard_decisions"] += 1
        return arm

    def decide(
        self,
        task: Any,
        cluster: Any,
        task_id: str | None,
        arm: Arm | None = None,
        control: str = "greedy",
    ) -> Any:
        """A placement now: the policy's when it is free, else greedy's (never waits).

        ``arm``: drawn by :meth:`draw` already (None: drawn here, when there is a guard).
        ``control``: the name the control arm's decisions carry (``pod2`` on a probed state)."""
        scheduler = self.scheduler
        guard = self.guard if scheduler is not None and task_id is not None else None
        if arm is None and guard is not None:
            arm = self.draw(task_id)  # type: ignore[arg-type]
        if guard is not None and arm == "control":
            placement = self.fallback.decide(task, cluster)  # earliest finish on this state
            why = "guard control" if guard.state == LEARNED_STATE else "guard fallback"
            return type(placement)(
                placement.target,
                placement.probs,
                control,
                f"{self.policy} {why}: {placement.reason}",
            )
        if scheduler is not None and self.lock.acquire(blocking=False):
            try:
                if self._pending_interval:
                    scheduler.start_interval()
                    self._pending_interval = False
                return scheduler.decide(task, cluster, task_id=task_id)
            finally:
                self.lock.release()
        if guard is not None:
            guard.forget(task_id)  # type: ignore[arg-type]  # decided by neither arm
        self.stats["fallback_decisions"] += 1
        placement = self.fallback.decide(task, cluster)
        why = "busy training"
        if scheduler is None:
            why = "warming up" if self.stats["state"] == WARMING else "failed"
        return type(placement)(
            placement.target, placement.probs, "greedy", f"{self.policy} {why}: {placement.reason}"
        )

    def probe_probs(self, task: Any, cluster: Any) -> Any:
        """``lad_mode = "probe"``: the scorer's π on the gossip view ``cluster``, to draw the
        probed peers from; None when it is warming up, failed or busy training (the caller
        draws as soft-greedy would: never waits)."""
        scheduler = self.scheduler
        if scheduler is None or not self.lock.acquire(blocking=False):
            return None
        try:
            return scheduler.probe_probs(task, cluster)
        finally:
            self.lock.release()

    def decide_probed(self, task: Any, probed: Any, task_id: str, view: Any = None) -> Any:
        """``lad_mode = "probe"``, the learned arm: the earliest estimated finish on the probed
        state (pod2's decision), recorded for the scorer as its action on ``view`` (the
        gossip (task, state) it drew the probes from) so that its delay trains it. A busy
        lock loses that one sample, never a decision."""
        insane = self.fallback.insane_states
        placement = self.fallback.decide(task, probed)
        scheduler = self.scheduler
        recorded = False
        learning = view is not None and scheduler is not None and self.learn
        if learning and self.lock.acquire(blocking=False):
            try:
                recorded = scheduler.record(task_id, *view, int(placement.target))
            finally:
                self.lock.release()
        if self.learn and not recorded:
            self.stats["unrecorded_probe_decisions"] += 1
        if self.fallback.insane_states > insane:
            return placement  # greedy on the sanitised state, labelled so
        return type(placement)(placement.target, placement.probs, self.policy, placement.reason)

    def start_interval(self) -> None:
        self._pending_interval = True  # applied under the lock by the next decision

    def complete(self, task_id: str, delay_s: float) -> None:
        """A placed task ran to completion in ``delay_s``: its reward, once checked.

        Only for tasks that are done (``abandon`` the others). A delay that is not a
        finite number > 0 gives no reward (``rejected_rewards``; the transition is dropped);
        one over ``MAX_REWARD_DELAY_S`` is clipped to it (``clipped_rewards``)."""
        try:
            delay = float(delay_s)
        except (TypeError, ValueError):
            delay = math.nan
        if self.guard is not None:
            if math.isfinite(delay) and delay > 0:
                self.guard.observed(task_id, min(delay, MAX_REWARD_DELAY_S))
            else:
                self.guard.forget(task_id)
        if not self.learn:
            return
        if not (math.isfinite(delay) and delay > 0):
            self.stats["rejected_rewards"] += 1
            self.rewards.append((task_id, None))
            return
        if delay > MAX_REWARD_DELAY_S:
            self.stats["clipped_rewards"] += 1
            delay = MAX_REWARD_DELAY_S
        self.rewards.append((task_id, delay))

    def forget(self, task_id: str) -> None:
        """A task drawn for an arm that will never be placed: the guard drops it."""
        if self.guard is not None:
            self.guard.forget(task_id)

    def abandon(self, task_id: str) -> None:
        """A placed task failed, was cancelled or was reclaimed for good: no reward."""
        if self.guard is not None:
            self.guard.forget(task_id)
        if self.learn:
            self.rewards.append((task_id, None))

    # --- the training thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.scheduler is None and not self._warm_start():
                return
        except WarmStartCancelled:  # stop() during the warm start: nothing to keep
            log.info("policy %s: warm start cancelled (stopping)", self.policy)
            return
        try:
            self._train_loop()
        except Exception as exc:  # whatever it was, status must say so, not "ready"
            log.exception("the policy's training thread stopped")
            self.learn = False  # no more rewards queued for a thread that is gone
            self._fail(
                f"training stopped ({type(exc).__name__}: {exc}); "
                "the policy decides with its last good weights, without learning"
            )

    def _warm_start(self) -> bool:
        """Build a fresh actor (imitating greedy); False, with status saying why, if it fails."""
        try:
            capacities = self._wait_for_capacities()
            self.stats["warm_start"] = (
                "greedy on measured capacities"
                if capacities is not None
                else "greedy on the paper's capacity spread (peer speeds not known in time)"
            )
            if self._stop.is_set():  # stopped while waiting for the capacities
                return False
            started = time.monotonic()
            built = self._build(None, capacities)  # stop() cancels it: WarmStartCancelled
        except WarmStartCancelled:
            raise
        except Exception as exc:  # a torch error as much as a ConfigError: greedy decides
            log.exception("the %s policy could not be built", self.policy)
            self._fail(f"warm start failed ({type(exc).__name__}: {exc}); greedy decides")
            return False
        with self.lock:
            self.scheduler = built
        self.stats.update(ready=True, state=READY)
        log.info("policy %s ready in %.1f s", self.policy, time.monotonic() - started)
        return True

    def _train_loop(self) -> None:
        last_save = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            trained = self._train_once()
            if trained and time.monotonic() - last_save >= SAVE_EVERY_S:
                self.save()
                last_save = time.monotonic()
            pause = self.train_period_s if trained else IDLE_WAIT_S
            self._stop.wait(max(0.0, pause - (time.monotonic() - started)))

    def _wait_for_capacities(self) -> Any:
        """Every server's speed (steps/s) once telemetry has it; None after the wait."""
        deadline = time.monotonic() + CAPACITY_WAIT_S
        while self.capacities is not None and not self._stop.is_set():
            known = self.capacities()
            if known is not None or time.monotonic() >= deadline:
                return known
            self._stop.wait(0.2)
        return None

    def _train_once(self) -> bool:
        """Hand over queued rewards, then one training step; True when a step ran."""
        if not self.learn or self.scheduler is None:
            return False
        with self.lock:
            while self.rewards:
                task_id, delay_s = self.rewards.popleft()
                if delay_s is None:
                    self.stats["abandoned"] += int(self.scheduler.abandon(task_id))
                elif self.scheduler.complete(task_id, delay_s):
                    self.stats["rewards"] += 1
            losses = self.scheduler.train_step()  # None too when rolled back (NaN/inf)
        if losses is None:
            return False
        self.stats["trained_steps"] += 1
        self.stats["last_losses"] = {k: float(v) for k, v in losses.items()}
        return True

    def save(self) -> bool:
        """Checkpoint a learning policy; False if there is none, or it could not be written
        (a NaN/inf weight: ``save_refused`` says so, the last checkpoint stays)."""
        if self.scheduler is None or not self.scheduler.learns:
            return False
        try:
            with self.lock:
                saved = self.scheduler.save(self.save_path)
        except OSError as exc:
            log.warning("could not checkpoint the policy to %s: %s", self.save_path, exc)
            return False
        except CheckpointError as exc:
            log.error("policy checkpoint refused: %s", exc)
            self.stats["save_refused"] = str(exc)
            return False
        if saved:
            self.stats["checkpoint"] = str(self.save_path)
            self.stats["saved_at"] = time.time()
        return bool(saved)

    def stop(self) -> None:
        """Stop training (a warm start in progress is cancelled), join, checkpoint."""
        self._stop.set()  # a warm start in progress sees it at its next cloning step
        if self._thread.is_alive():
            self._thread.join(STOP_JOIN_S)
            if self._thread.is_alive():
                log.warning("the policy's training thread did not stop in %g s", STOP_JOIN_S)
        if self.stats["trained_steps"]:
            self.save()

    def status(self) -> dict[str, Any]:
        scheduler = self.scheduler
        insane = self.fallback.insane_states
        total = rejected = dropped = 0
        if scheduler is not None:
            total, insane = scheduler.trained_steps, insane + scheduler.insane_states
            rejected, dropped = scheduler.rejected_updates, scheduler.dropped_transitions
        return {
            "policy": self.policy,
            "actor": self._kwargs.get("actor", "ladn") if self.policy == "lad" else None,
            "mode": self.mode if self.policy == "lad" else None,
            "learn": self.learn,
            "guard": (
                {**self.guard.status(), "control": self.control_name}
                if self.guard is not None
                else None
            ),
            **self.stats.snapshot(),  # the training thread may add a key meanwhile
            "total_steps": total,
            "insane_states": insane,  # decided by greedy on a sanitised state, not recorded
            "rejected_updates": rejected,  # training steps rolled back (NaN/inf)
            "dropped_transitions": dropped,  # completed transitions with NaN/inf, not buffered
        }
