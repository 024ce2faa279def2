"""The agent's scheduling policy: decisions on the loop thread, training on its own thread.

``SchedulerHost`` wraps the scheduler library's ``ClusterScheduler``. The scheduler is not
thread-safe, so one lock guards it, and decisions never wait for it: the loop thread only
*tries* the lock, and while a training step holds it (a few milliseconds, at a bounded
rate) the decision is taken by a greedy fallback and says so in its reason. Rewards (the
observed service delay of a finished task) are queued and handed to the scheduler by the
training thread. The policy is checkpointed in the state directory and reloaded at start.
A fresh learned actor warm-starts (imitates greedy) in the background; greedy decides
until it is ready. A checkpoint for another number of servers stops the agent at start.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dedgeai.agent.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("dedgeai.agent.learning")

SAVE_EVERY_S = 30.0  # checkpoint the learned policy at most this often (and at stop)
MAX_QUEUED_REWARDS = 10_000
IDLE_WAIT_S = 0.5  # the training thread's nap when it has nothing to learn from
CAPACITY_WAIT_S = 15.0  # a fresh actor's warm start waits this long for every peer's speed
CapacityProbe = Callable[[], "np.ndarray | None"]


class SchedulerHost:
    """One ClusterScheduler behind a try-lock, plus its training thread."""

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
        policy_actions: str = "sample",
        explore_epsilon: float = 0.02,
        capacities: CapacityProbe | None = None,
    ) -> None:
        """``capacities``: every server's measured speed once known (None until then); a
        fresh learned actor waits up to ``CAPACITY_WAIT_S`` for it before its warm start."""
        from dedgeai.scheduler.online import LEARNED, ClusterScheduler

        self.policy, self.n_servers, self.self_index = policy, n_servers, self_index
        self.save_path = state_dir / "policy.pt"
        self.learn = learn and policy in LEARNED and n_servers >= 2
        self.train_period_s = 1.0 / train_steps_per_s
        self.lock = threading.Lock()
        self.rewards: collections.deque[tuple[str, float]] = collections.deque(
            maxlen=MAX_QUEUED_REWARDS
        )
        self.fallback = ClusterScheduler("greedy", n_servers, self_index, seed=seed)
        self.capacities = capacities
        self.stats: dict[str, Any] = {
            "trained_steps": 0,
            "rewards": 0,
            "fallback_decisions": 0,
            "last_losses": None,
            "checkpoint": None,
            "loaded_from": None,
            "ready": False,
            "warm_start": None,
        }
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
        }
        self.scheduler: Any = None
        source = self.save_path if self.save_path.exists() else None
        if source is None and checkpoint:
            source = Path(checkpoint).expanduser()
            if not source.is_file():
                raise ConfigError(f"`policy_checkpoint` {source} does not exist")
        if source is not None or policy not in LEARNED or n_servers < 2:
            self.scheduler = self._build(source)  # fast: load or a heuristic; errors stop start
            self.stats.update(ready=True, loaded_from=str(source) if source else None)
        self._thread = threading.Thread(target=self._run, name="policy-trainer", daemon=True)

    @staticmethod
    def _learn_config(warmup: int) -> Any:
        from dedgeai.scheduler.config import LearnConfig

        defaults = LearnConfig()
        return LearnConfig(warmup=warmup, batch_size=min(defaults.batch_size, max(1, warmup)))

    def _build(self, checkpoint: Path | None, capacities: Any = None) -> Any:
        from dedgeai.scheduler.errors import SchedulerError
        from dedgeai.scheduler.online import ClusterScheduler

        try:
            built = ClusterScheduler(**self._kwargs, checkpoint=checkpoint, capacities=capacities)
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

    def start(self) -> SchedulerHost:
        self._thread.start()
        return self

    # --- the loop thread -------------------------------------------------------------

    def decide(self, task: Any, cluster: Any, task_id: str | None) -> Any:
        """A placement now: the policy's when it is free, else greedy's (never waits)."""
        scheduler = self.scheduler
        if scheduler is not None and self.lock.acquire(blocking=False):
            try:
                if self._pending_interval:
                    scheduler.start_interval()
                    self._pending_interval = False
                return scheduler.decide(task, cluster, task_id=task_id)
            finally:
                self.lock.release()
        self.stats["fallback_decisions"] += 1
        placement = self.fallback.decide(task, cluster)
        why = "warming up" if scheduler is None else "busy training"
        return type(placement)(
            placement.target, placement.probs, "greedy", f"{self.policy} {why}: {placement.reason}"
        )

    def start_interval(self) -> None:
        self._pending_interval = True  # applied under the lock by the next decision

    def complete(self, task_id: str, delay_s: float) -> None:
        if self.learn:
            self.rewards.append((task_id, delay_s))

    # --- the training thread ---------------------------------------------------------

    def _run(self) -> None:
        if self.scheduler is None:
            capacities = self._wait_for_capacities()
            self.stats["warm_start"] = (
                "greedy on measured capacities"
                if capacities is not None
                else "greedy on the paper's capacity spread (peer speeds not known in time)"
            )
            started = time.monotonic()
            try:
                built = self._build(None, capacities)
            except ConfigError:
                log.exception("the %s policy could not be built; greedy decides", self.policy)
                return
            with self.lock:
                self.scheduler = built
            self.stats["ready"] = True
            log.info("policy %s ready in %.1f s", self.policy, time.monotonic() - started)
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
                if self.scheduler.complete(task_id, delay_s):
                    self.stats["rewards"] += 1
            losses = self.scheduler.train_step()
        if losses is None:
            return False
        self.stats["trained_steps"] += 1
        self.stats["last_losses"] = {k: float(v) for k, v in losses.items()}
        return True

    def save(self) -> bool:
        if self.scheduler is None or not self.learn:
            return False
        try:
            with self.lock:
                saved = self.scheduler.save(self.save_path)
        except OSError as exc:
            log.warning("could not checkpoint the policy to %s: %s", self.save_path, exc)
            return False
        if saved:
            self.stats["checkpoint"] = str(self.save_path)
            self.stats["saved_at"] = time.time()
        return bool(saved)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        if self.stats["trained_steps"]:
            self.save()

    def status(self) -> dict[str, Any]:
        total = getattr(self.scheduler, "trained_steps", 0) if self.scheduler is not None else 0
        return {"policy": self.policy, "learn": self.learn, **self.stats, "total_steps": total}
