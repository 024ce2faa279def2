"""A guard on a learned placement policy: it hands the decisions to a control heuristic (the
best one: pod2 in an agent with peers to probe, else greedy) while the learned policy's recent
delays are worse than the control's on the same traffic, and back when they are not.

Why a control arm: a box cannot know what the heuristic *would* have done for the tasks the
learned policy placed, and delays move with the load. So a small share of decisions
(``CONTROL_SHARE``), drawn at random, goes to the control while the learned policy decides the
rest; both arms then see the same traffic and their recent mean delays compare fairly. When
the learned arm's mean is over ``MARGIN`` x the control's (each with at least ``MIN_SAMPLES`` of
its last ``WINDOW`` delays), the roles swap: the control decides most tasks and the learned
policy keeps a small share,
so the guard sees when it is better again (its mean at or under the control's) and swaps back.
Online learning goes on meanwhile from the tasks the learned policy placed.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from statistics import fmean
from typing import Any, Literal

Arm = Literal["learned", "control"]
LEARNED_STATE, FALLBACK_STATE = "learned", "fallback"
CONTROL_SHARE = 0.1  # of the decisions, the minority arm's share (greedy's while learned)
WINDOW = 50  # recent delays kept per arm
MIN_SAMPLES = 20  # per arm, before any judgement
MARGIN = 1.10  # the learned arm may be this much slower than the control before a swap
MAX_PENDING = 8192  # decided tasks awaiting their delay (the oldest forgotten first)


class PolicyGuard:
    """Which arm decides each task, the recent delays of each, and the state they imply."""

    def __init__(self, seed: int = 0) -> None:
        self.state = LEARNED_STATE
        self._rng = random.Random(seed)
        self._pending: OrderedDict[str, Arm] = OrderedDict()
        self._delays: dict[Arm, deque[float]] = {
            "learned": deque(maxlen=WINDOW),
            "control": deque(maxlen=WINDOW),
        }
        self.swaps = 0

    def arm(self, task_id: str) -> Arm:
        """Draw the arm that decides ``task_id`` (the minority one with ``CONTROL_SHARE``)."""
        minority: Arm = "control" if self.state == LEARNED_STATE else "learned"
        majority: Arm = "learned" if minority == "control" else "control"
        chosen = minority if self._rng.random() < CONTROL_SHARE else majority
        self._pending[task_id] = chosen
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        return chosen

    def observed(self, task_id: str, delay_s: float) -> None:
        """The service delay of a task this guard assigned (others are ignored)."""
        arm = self._pending.pop(task_id, None)
        if arm is None:
            return
        self._delays[arm].append(delay_s)
        learned, control = self.means()
        if learned is None or control is None:
            return
        if self.state == LEARNED_STATE and learned > MARGIN * control:
            self._swap(FALLBACK_STATE)
        elif self.state == FALLBACK_STATE and learned <= control:
            self._swap(LEARNED_STATE)

    def forget(self, task_id: str) -> None:
        """A task that will give no delay (failed, cancelled, reclaimed for good)."""
        self._pending.pop(task_id, None)

    def means(self) -> tuple[float | None, float | None]:
        """Recent mean delay of the learned arm and of the control, once each has enough."""
        out = [
            fmean(self._delays[arm]) if len(self._delays[arm]) >= MIN_SAMPLES else None
            for arm in ("learned", "control")
        ]
        return out[0], out[1]

    def status(self) -> dict[str, Any]:
        learned, control = self.means()
        return {
            "state": self.state,
            "learned_mean_s": learned,
            "control_mean_s": control,
            "samples": {arm: len(delays) for arm, delays in self._delays.items()},
            "swaps": self.swaps,
        }

    def _swap(self, state: str) -> None:
        self.state = state
        self.swaps += 1
        for delays in self._delays.values():  # judge the new arrangement on fresh traffic
            delays.clear()
