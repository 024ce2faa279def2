"""Power of d choices (``pod2``): probe d random peers for their load now, then decide.

Gossip is up to an interval old, and every agent reading the same report sends its tasks to
the same "least loaded" peer (Mitzenmacher, "How useful is old information?"). With ``pod2``
the origin asks d random schedulable peers for a fresh backlog (``probe``, answered
``probe_reply``) and decides when all answered or at a deadline, whichever comes first:
greedy on a state with itself and the answered peers fresh and every other peer masked
(as the twin's ``PowerOfD`` does). A probed peer that does not answer in time, or answers
with an error or an insane report, is masked; with no answer at all the task runs here.

This module is the bookkeeping only (rounds, ids, deadlines, counters), without sockets:
``Cluster`` sends the probes on its links and builds the state. The task waits at its
origin meanwhile (queued, not started, not journaled: its submitter has no ``accepted``
yet), and the daemon's loop never blocks on it: ``next_deadline`` shortens its poll.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dedgeai.agent.node.protocol import TaskId
from dedgeai.agent.node.tasks import TaskRecord

PROBE_ID_PREFIX = "probe:"
MIN_TIMEOUT_S = 0.02  # the deadline is at least this long after the probes left ...
RTT_FACTOR = 4.0  # ... and at least this many of the slowest probed link's round trips


@dataclass
class Round:
    """One task's probes: which peers were asked, what they said, when to stop waiting."""

    task: TaskRecord
    sent_at: float
    deadline: float
    asked: list[int]  # slots, in the order they were drawn
    work_at_send: dict[int, float]  # work this agent had forwarded to each slot by then
    answers: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # slot -> why it is masked
    view: Any = None  # lad_mode = probe: the gossip (task, state) LAD-TS drew the probes on
    draw_s: float = 0.0  # time spent choosing whom to probe (part of the decision's time)
    drawn_by: str = ""  # lad_mode = probe: LAD-TS, or soft-greedy when it could not answer

    @property
    def complete(self) -> bool:
        return len(self.answers) + len(self.failed) >= len(self.asked)


def probe_timeout_s(rtts: list[float | None], configured_s: float) -> float:
    """How long a round waits: ``configured_s`` when set (> 0), else the larger of
    ``MIN_TIMEOUT_S`` and ``RTT_FACTOR`` x the slowest probed link's measured round trip."""
    if configured_s > 0:
        return configured_s
    known = [r for r in rtts if r is not None]
    return max(MIN_TIMEOUT_S, RTT_FACTOR * max(known, default=0.0))


class Probes:
    """The probe rounds in flight at one origin (the loop thread is the only user)."""

    def __init__(self, d: int, seed: int) -> None:
        self.d = d
        self.rng = np.random.default_rng([seed, 0x9D2])
        self.rounds: dict[TaskId, Round] = {}
        self.ids: dict[str, tuple[TaskId, int]] = {}  # probe id -> (task, slot)
        self.counters: Counter[str] = Counter()
        self._next_id = 0

    def choose(self, candidates: list[int], weights: np.ndarray | None = None) -> list[int]:
        """Up to d distinct slots drawn from ``candidates``: uniformly, or in proportion to
        ``weights`` (one per candidate, finite and > 0: the caller mixes in a uniform share)."""
        if len(candidates) <= self.d:
            return list(candidates)
        p = None if weights is None else weights / weights.sum()
        picked = self.rng.choice(len(candidates), size=self.d, replace=False, p=p)
        return [candidates[int(i)] for i in picked]

    def open(
        self,
        task: TaskRecord,
        slots: list[int],
        work_at_send: dict[int, float],
        now: float,
        timeout_s: float,
    ) -> tuple[Round, dict[int, str]]:
        """Start a round for ``task``; returns it and the probe id to send to each slot."""
        self.close(task.id)  # a re-dispatch while an older round is open starts afresh
        rnd = Round(task, now, now + timeout_s, list(slots), dict(work_at_send))
        self.rounds[task.id] = rnd
        ids: dict[int, str] = {}
        for slot in slots:
            self._next_id += 1
            probe_id = f"{PROBE_ID_PREFIX}{self._next_id}"
            self.ids[probe_id] = (task.id, slot)
            ids[slot] = probe_id
        self.counters["rounds"] += 1
        self.counters["sent"] += len(slots)
        return rnd, ids

    def unsent(self, task: TaskId, slot: int) -> None:
        """The probe to ``slot`` could not be queued on its link: masked at once."""
        rnd = self.rounds.get(task)
        if rnd is not None:
            rnd.failed[slot] = "link not connected"
            self.counters["unsent"] += 1

    @staticmethod
    def is_probe(reply_id: str | None) -> bool:
        return bool(reply_id) and str(reply_id).startswith(PROBE_ID_PREFIX)

    def answer(
        self, probe_id: str, slot: int, fields: dict[str, Any] | None, why: str = ""
    ) -> Round | None:
        """A reply to a probe: ``fields`` (a sane ``probe_reply``) or None (an error, an
        insane report: ``why``). Returns the round when this reply completed it."""
        entry = self.ids.get(probe_id)
        if entry is None or entry[1] != slot:
            self.counters["late"] += 1  # its round was decided already (or not ours)
            return None
        del self.ids[probe_id]
        rnd = self.rounds.get(entry[0])
        if rnd is None or slot in rnd.answers or slot in rnd.failed:
            self.counters["late"] += 1
            return None
        if fields is None:
            rnd.failed[slot] = why or "refused"
            self.counters["refused"] += 1
        else:
            rnd.answers[slot] = fields
            self.counters["answered"] += 1
        return rnd if rnd.complete else None

    def expired(self, now: float) -> list[Round]:
        """Rounds past their deadline; each silent peer in them is masked (``timed_out``)."""
        due = [r for r in self.rounds.values() if now >= r.deadline]
        for rnd in due:
            for slot in rnd.asked:
                if slot not in rnd.answers and slot not in rnd.failed:
                    rnd.failed[slot] = "no answer in time"
                    self.counters["timed_out"] += 1
        return due

    def close(self, task: TaskId) -> Round | None:
        """Forget a round (decided, or its task gone); its late replies count as ``late``."""
        rnd = self.rounds.pop(task, None)
        if rnd is not None:
            for probe_id in [i for i, (t, _) in self.ids.items() if t == task]:
                del self.ids[probe_id]
        return rnd

    def next_deadline(self) -> float | None:
        return min((r.deadline for r in self.rounds.values()), default=None)

    def stats(self) -> dict[str, Any]:
        """What ``status`` shows: probes sent, answered, refused, timed out, served..."""
        keys = ("rounds", "sent", "answered", "refused", "timed_out", "unsent", "late", "served")
        out: dict[str, Any] = {"d": self.d, **{k: self.counters[k] for k in keys}}
        out["in_flight"] = len(self.rounds)
        return out
