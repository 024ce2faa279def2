"""Decisions waiting for their reward: one bookkeeping for every online learner.

A decision's transition needs two things that arrive later and in either order: its reward
(the task's delay, when it is done) and its next state (the same scheduler's next decision,
the paper's §1.6). ``record`` keeps a decision and hands the previous one its next state;
``complete`` gives one its reward; a transition holding both moves to ``ready`` (the learner
takes it into its replay buffer), unless a value is NaN/inf (dropped and counted). Used by
the paper's actor (``policy.OnlinePolicy``) and the per-server scorer
(``lad_scorer_learning.ScorerLearning``), which differ only in the fields they keep and in
how a delay becomes a reward.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

MAX_PENDING = 10_000  # transitions waiting for a reward; the oldest are dropped beyond this
NEXT_STATE = "s2"  # the key a decision's next state is kept under


def _finite(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    return bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())


class DelayedTransitions:
    """Pending decisions by task id, oldest first (see the module's docstring).

    ``reward_key``/``reward``: the field a reward is kept under and how a delay (s, finite,
    ≥ 0) becomes it: the scorer keeps the delay itself, the paper's actor r = −delay/scale."""

    def __init__(
        self,
        reward_key: str = "delay",
        reward: Callable[[float], Any] = np.float32,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.reward_key, self.reward, self.max_pending = reward_key, reward, max_pending
        self.pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.ready: deque[dict[str, Any]] = deque()
        self.last: str | None = None  # the latest decision: the next one is its next state
        self.dropped = 0  # completed transitions holding NaN/inf, not handed to the buffer

    def record(self, task_id: str, fields: dict[str, Any], next_fields: dict[str, Any]) -> None:
        """A decision (``fields``: its state and action); ``next_fields`` (``s2`` and any
        companion) complete the previous decision's transition as its next state."""
        previous = self.pending.get(self.last) if self.last is not None else None
        if previous is not None and NEXT_STATE not in previous:
            previous.update(next_fields)
            self._push_if_complete(self.last)  # type: ignore[arg-type]
        self.pending[task_id] = dict(fields)
        self.last = task_id
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)

    def complete(self, task_id: str, delay_s: float) -> bool:
        """Give a recorded decision its reward. False for an unknown id, or a delay that is
        not a finite number ≥ 0 (the transition is then dropped)."""
        entry = self.pending.get(task_id)
        if entry is None:
            return False
        if not (math.isfinite(delay_s) and delay_s >= 0):
            del self.pending[task_id]
            return False
        with np.errstate(over="ignore"):  # beyond float32: inf, dropped before the buffer
            entry[self.reward_key] = self.reward(delay_s)
        self._push_if_complete(task_id)
        return True

    def abandon(self, task_id: str) -> bool:
        """Drop a recorded decision without a reward (its task failed or was cancelled: the
        time until then says nothing about the server); False if the id is unknown."""
        return self.pending.pop(task_id, None) is not None

    def _push_if_complete(self, task_id: str) -> None:
        entry = self.pending[task_id]
        if self.reward_key in entry and NEXT_STATE in entry:
            del self.pending[task_id]
            if all(_finite(v) for v in entry.values()):
                self.ready.append(entry)
            else:
                self.dropped += 1
