"""Work stealing (late binding, ``work_stealing = true``): an idle agent pulls a queued task.

**Thief.** An agent with nothing queued or running (and its speed measured) sends
``{type: "steal", id, node, capacity_steps_per_s}`` to the peer that reported the largest
backlog in seconds among those reporting a queued task. It has one request in flight at a
time, and asks at most ``TRIES_PER_SPELL`` victims per idle spell (a spell ends when it has
work again): then it waits for the next gossip interval's reports.

**Victim.** It looks at its queue from the tail and gives the last queued, not started task
that the thief would finish sooner (``now + transfer + steps / thief speed`` before its
expected finish here, as the twin's ``Twin._steal_request``). The hand-over *is* a forward:
the core takes the task out of its queue and journals it ``forwarded`` to the thief's slot
(``AgentCore.hand_over``), and ``Forwarding`` sends it as an ordinary peer ``submit``. So it
has forwarding's guarantees: no journal ack in time, a refusal or the thief going down
reclaims it here (it runs here, or its origin places it again); a result from a peer the task
no longer belongs to is dropped; the client sees one ``done``. A task forwarded here by its
origin is relayed back the way it came (thief -> victim -> origin). The victim answers
``steal_reply {given, task, reason}`` either way, so the thief stops waiting.

This module is the bookkeeping and the victim's choice, without sockets: ``Cluster`` sends
the messages and asks the core for the hand-over.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dedgeai.agent.node.protocol import TaskId
from dedgeai.agent.node.tasks import TaskRecord

STEAL_ID_PREFIX = "steal:"
TRIES_PER_SPELL = 2  # victims asked per idle spell and interval (the twin's STEAL_TRIES)
MIN_REPLY_TIMEOUT_S = 0.5  # a steal waits at least this long for its reply ...
RTT_FACTOR = 4.0  # ... and at least this many round trips of the victim's link
MAX_SCAN = 64  # queued tasks a victim looks at, from the tail
MAX_REMEMBERED = 4096  # stolen task ids kept, never given away again (no second hop)
MAX_SERVED_PER_INTERVAL = 16  # steals answered per gossip interval; more are declined unread


@dataclass(frozen=True)
class Candidate:
    """One queued task at the victim, in queue order: its work and its transfer time."""

    task: TaskRecord
    demand_steps: float  # 512x512-equivalent steps left
    transfer_s: float  # to the thief: link round trip plus the request's size


@dataclass(frozen=True)
class Offer:
    task: TaskRecord
    here_s: float  # expected finish here, seconds from now
    there_s: float  # expected finish at the thief, transfer included


def choose_offer(
    queued: Sequence[Candidate],
    ahead_steps: float,
    own_speed: float,
    thief_speed: float,
    eligible: Callable[[TaskRecord], bool],
) -> tuple[Offer | None, str]:
    """The last queued task the thief would finish sooner than this agent, and why not.

    ``ahead_steps``: the running task's work left (it is never given). The tail is looked
    at first: it waits longest here. A task that would start here at once (nothing ahead
    of it) stays."""
    if own_speed <= 0 or thief_speed <= 0:
        return None, "no measured speed"
    if not queued:
        return None, "nothing queued"
    total = ahead_steps + sum(c.demand_steps for c in queued)
    best: Offer | None = None
    for candidate in list(reversed(queued))[:MAX_SCAN]:
        demand = candidate.demand_steps
        here = total / own_speed
        start = (total - demand) / own_speed
        total -= demand
        if start <= 0 or not eligible(candidate.task):
            continue
        offer = Offer(candidate.task, here, candidate.transfer_s + demand / thief_speed)
        if offer.there_s < offer.here_s:
            return offer, ""
        if best is None or offer.here_s - offer.there_s > best.here_s - best.there_s:
            best = offer
    if best is None:
        return None, "no queued task may move (starting next, held, cancelling or stolen)"
    return None, f"not sooner there: best {best.there_s:.2f} s there vs {best.here_s:.2f} s here"


@dataclass
class Request:
    """The one steal in flight at a thief."""

    id: str
    slot: int
    sent_at: float
    deadline: float


def reply_timeout_s(rtt_s: float | None) -> float:
    return max(MIN_REPLY_TIMEOUT_S, RTT_FACTOR * (rtt_s or 0.0))


class Stealing:
    """Both sides' state at one agent (the loop thread is the only user)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled  # this agent steals; every agent answers steals
        self.counters: Counter[str] = Counter()
        self.request: Request | None = None
        self.asked: list[int] = []  # victims asked in this idle spell and interval
        self.awaiting: tuple[TaskId, float] | None = None  # (given task, wait until)
        self.stolen: OrderedDict[TaskId, None] = OrderedDict()  # stolen here: stays here
        self.served_in_interval = 0  # steals answered since the interval began (victim)
        self._next_id = 0

    # --- thief ------------------------------------------------------------------------

    def busy(self) -> None:
        """This agent has work: its next idle spell may ask ``TRIES_PER_SPELL`` victims."""
        self.asked.clear()

    def new_interval(self) -> None:
        """Fresh reports are on their way: victims may be asked again (and, as a victim,
        a new budget of steals to answer)."""
        self.asked.clear()
        self.served_in_interval = 0

    def waiting(self, now: float, arrived: Callable[[TaskId], bool]) -> bool:
        """A request is in flight, or a given task has not arrived yet (until its deadline)."""
        if self.request is not None:
            return True
        if self.awaiting is not None:
            task, until = self.awaiting
            if not arrived(task) and now < until:
                return True
            self.awaiting = None
        return False

    def choose(self, reports: Sequence[tuple[int, float]]) -> int | None:
        """The most backlogged peer not asked in this spell, from ``(slot, wait_s)`` pairs
        of peers that report a queued task; None once ``TRIES_PER_SPELL`` were asked."""
        if len(self.asked) >= TRIES_PER_SPELL:
            return None
        fresh = [(wait, slot) for slot, wait in reports if slot not in self.asked and wait > 0]
        return max(fresh)[1] if fresh else None

    def open(self, slot: int, now: float, timeout_s: float) -> str:
        """A steal to ``slot``: its request id."""
        self._next_id += 1
        request_id = f"{STEAL_ID_PREFIX}{self._next_id}"
        self.request = Request(request_id, slot, now, now + timeout_s)
        self.asked.append(slot)
        self.counters["sent"] += 1
        return request_id

    def unsent(self) -> None:
        """The link could not take the request."""
        self.request = None
        self.counters["sent"] -= 1
        self.counters["unsent"] += 1

    @staticmethod
    def is_steal(reply_id: str | None) -> bool:
        return bool(reply_id) and str(reply_id).startswith(STEAL_ID_PREFIX)

    def answered(
        self,
        reply_id: str,
        slot: int,
        given: TaskId | None,
        error: bool,
        now: float,
        arrival_s: float,
    ) -> bool:
        """The victim's reply: ``given`` (the task it forwards to us), None (nothing), or an
        ``error``. False for a reply to no request in flight (late, or not ours)."""
        request = self.request
        if request is None or request.id != reply_id or request.slot != slot:
            self.counters["late"] += 1
            if given is not None:  # it comes anyway (we had stopped waiting): keep it here
                self.remember(given)
            return False
        self.request = None
        if given is not None:
            self.counters["stolen_in"] += 1
            self.remember(given)
            self.awaiting = (given, now + arrival_s)
        else:
            self.counters["errors" if error else "empty"] += 1
        return True

    def remember(self, task: TaskId) -> None:
        self.stolen[task] = None
        while len(self.stolen) > MAX_REMEMBERED:
            self.stolen.popitem(last=False)

    def expired(self, now: float) -> bool:
        """The request in flight passed its deadline: given up (a late reply is ``late``)."""
        if self.request is None or now < self.request.deadline:
            return False
        self.request = None
        self.counters["timed_out"] += 1
        return True

    # --- victim -----------------------------------------------------------------------

    def over_budget(self) -> bool:
        """``MAX_SERVED_PER_INTERVAL`` steals were answered in this interval: each reads the
        queue, so a flood of them must not stall the loop (the next ones are declined)."""
        return self.served_in_interval >= MAX_SERVED_PER_INTERVAL

    def served(self, outcome: str) -> None:
        """A peer's steal, answered: ``given``, ``declined`` (nothing worth moving, or over
        budget) or ``refused`` (an unknown or unreachable peer)."""
        self.served_in_interval += 1
        self.counters["received"] += 1
        self.counters[outcome] += 1

    def stats(self, stolen_out: int) -> dict[str, Any]:
        """What ``status`` shows under ``cluster.forwarding.stealing``."""
        thief = ("sent", "stolen_in", "empty", "errors", "timed_out", "unsent", "late")
        victim = ("received", "given", "declined", "refused")
        out: dict[str, Any] = {"enabled": self.enabled}
        out.update({k: self.counters[k] for k in (*thief, *victim)})
        out["stolen_out"] = stolen_out
        out["in_flight"] = int(self.request is not None)
        return out
