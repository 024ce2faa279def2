"""Partial-view gossip (``gossip = "partial"``): SWIM-style exchanges, a relayed digest and
failure detection, without sockets (the cluster sends what this module decides).

Membership is the peer table's fixed slots (the learned policies' state layout depends on
them). Each gossip interval (a *round*) a box exchanges gossip with its next ``fanout``
peers from a shuffled round-robin, not with every peer. Each gossip message carries the
sender's own report, stamped with a generation ``(started_at, gen)`` (``gen`` is bumped once
per round, ``started_at`` makes a restart newer), and a ``digest``: the freshest reports the
sender holds about other members, at most ``digest_entries``, each with its age.

Trust (docs/scaling.md §2):

- A relayed entry is merged only when it passes the same checks as a direct report (every
  field typed and bounded here, then ``gossip_sanity`` in the cluster), is about a member
  this box has heard from directly (its node id was learned on this box's own link), is not
  about this box, keeps the ``started_at`` this box saw directly, and is newer than the copy
  held. A direct report always replaces the copy: it is the member speaking.
- A relayed report is a load/speed hint. It can keep a member alive in the membership
  sense, never make this box schedule on a peer whose own link check failed: a suspect is
  masked until this box hears it on its own link.
- A relayed ``suspect``/``dead`` notice only starts this box's own check (a direct exchange,
  then ``ping_req`` through ``INDIRECT_PROBES`` other peers); the member is suspected when
  those fail, and declared dead after ``suspect_intervals`` rounds without a fresher report
  (at once when a relayer already declared it dead holding a report no older than ours:
  its suspicion time is spent, and our own checks failed too).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dedgeai.agent.errors import ProtocolError
from dedgeai.agent.node import protocol as p

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"
INDIRECT_PROBES = 3  # peers asked to probe a target that did not answer (SWIM's k)
ACK_FRACTION = 0.5  # a direct exchange's reply is due within this share of an interval
INDIRECT_FRACTION = 0.5  # ... and the indirect probes' acks in this much more (SWIM: 1 period)
NOTICE_FACTOR = 2  # a suspect/dead notice rides on this x ceil(log2(N + 1)) messages
MAX_DIGEST_ENTRIES = 256  # config bound and the protocol's list bound
MAX_GEN = 2**53  # generations are counters below this
MAX_AGE_S = 1e6  # a relayed report older than this is no load hint (11 days)
METER_ROUNDS = 10  # the per-second rates are over the last this many rounds
# ping_reqs served at once (each costs a gossip exchange of ours): a peer that floods them
# gets "not ok" beyond this instead of a gossip message per request
MAX_SERVED = 32

LOAD_FIELDS = (
    "backlog_steps",
    "interval_load_steps",
    "capacity_steps_per_s",
    "accepting",
    "backlog_s",
    "queued",
)
# Every field of a digest entry, checked with the protocol's own field rules.
ENTRY_FIELDS: dict[str, p.Field] = {
    "node": p.uuid_field(required=True),
    "started_at": p.number(0, p.MAX_UNIX_S, required=True),
    "gen": p.integer(0, MAX_GEN, required=True),
    "age_s": p.number(0, MAX_AGE_S, required=True),
    "state": p.text(8, required=True, choices=(ALIVE, SUSPECT, DEAD)),
    **{k: p.GOSSIP_FIELDS[k] for k in LOAD_FIELDS},
}

Generation = tuple[float, int]


def check_entry(raw: Any) -> dict[str, Any] | None:
    """One digest entry, typed and bounded; None when any field is wrong or unknown."""
    if type(raw) is not dict:
        return None
    if any(key not in ENTRY_FIELDS for key in raw):
        return None
    try:
        out = {}
        for name, spec in ENTRY_FIELDS.items():
            if name in raw:
                out[name] = p.check_value(spec, raw[name], name)
            elif spec.required:
                return None
    except ProtocolError:
        return None
    return out


def entry_of(body: dict[str, Any], age_s: float = 0.0, state: str = ALIVE) -> dict[str, Any]:
    """A digest entry from a report (a gossip body, or a peer's stored info)."""
    entry = {k: body[k] for k in LOAD_FIELDS if k in body}
    entry.update(
        node=body.get("node"), started_at=body.get("started_at"), gen=body.get("gen"),
        age_s=max(0.0, min(MAX_AGE_S, age_s)), state=state,
    )  # fmt: skip
    return entry


@dataclass
class Member:
    """What the partial view knows about one peer slot."""

    state: str = ALIVE
    generation: Generation | None = None  # of the freshest report held
    born_at: float | None = None  # this box's time at that report's birth (age-corrected)
    direct: Generation | None = None  # of the last report heard on this box's own link
    fresh_round: int = 0  # the round the freshest report arrived in
    awaiting: float | None = None  # a direct exchange's reply is due by then
    probing: float | None = None  # indirect probes' acks are due by then
    suspect_round: int | None = None
    masked: bool = False  # this box's own check failed: not scheduled until heard directly
    notices: int = 0  # messages left that carry this member's suspect/dead notice
    noticed_dead: bool = False  # a relayer declared it dead, with no fresher report since
    checked_round: int = -1  # last round a check was started (one per round)
    relayed: int = 0  # reports merged from relays
    detected_after: int | None = None  # rounds from its last fresh report to "dead"


@dataclass
class Served:
    """A ``ping_req`` this box serves: probe ``target`` and ack ``route`` when it answers."""

    route: Any
    request_id: str
    target_node: str
    deadline: float


@dataclass
class Merged:
    """What a digest changed: reports to store, members to check, entries dropped."""

    updates: list[tuple[int, dict[str, Any], float]] = field(default_factory=list)
    checks: list[int] = field(default_factory=list)
    dropped: int = 0  # malformed, or a list over the bound
    ignored: int = 0  # about this box, an unknown node, a restart, or not newer


@dataclass
class Due:
    """Timers that fired: indirect probes to send, members now suspect or dead, acks."""

    ping_reqs: list[tuple[int, list[int]]] = field(default_factory=list)
    suspected: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    failed_acks: list[Served] = field(default_factory=list)


class GossipMeter:
    """Gossip messages and bytes sent/received: totals and per-second over recent rounds."""

    KEYS = ("sent_msgs", "sent_bytes", "recv_msgs", "recv_bytes")

    def __init__(self, now: float) -> None:
        self.totals = dict.fromkeys(self.KEYS, 0)
        self.marks: deque[tuple[float, dict[str, int]]] = deque(maxlen=METER_ROUNDS + 1)
        self.marks.append((now, dict(self.totals)))

    def sent(self, nbytes: int, count: int = 1) -> None:
        self.totals["sent_msgs"] += count
        self.totals["sent_bytes"] += nbytes * count

    def received(self, nbytes: int) -> None:
        self.totals["recv_msgs"] += 1
        self.totals["recv_bytes"] += nbytes

    def mark(self, now: float) -> None:
        self.marks.append((now, dict(self.totals)))

    def stats(self, now: float) -> dict[str, Any]:
        since, old = self.marks[0]
        span = now - since
        rates = {
            f"{k}_per_s": round((self.totals[k] - old[k]) / span, 2) if span > 0 else 0.0
            for k in self.KEYS
        }
        return {**self.totals, **rates, "window_s": round(span, 3)}


class PartialView:
    """The round-robin, the members' generations and states, and the SWIM timers."""

    def __init__(
        self,
        slots: Iterable[int],
        *,
        fanout: int,
        digest_entries: int,
        suspect_intervals: int,
        interval_s: float,
        seed: int,
    ) -> None:
        self.fanout, self.digest_entries = fanout, digest_entries
        self.suspect_intervals, self.interval_s = suspect_intervals, interval_s
        self.rng = random.Random(seed)
        self.members: dict[int, Member] = {s: Member() for s in slots}
        self.order: list[int] = []
        self.round = 0
        self.gen = 0  # this box's own report counter
        self.served: list[Served] = []
        self._served_slot: dict[int, str] = {}  # slot -> node of the targets probed for others
        self.counters = dict.fromkeys(
            ("rounds", "exchanges", "ping_reqs_sent", "ping_reqs_served", "ping_reqs_refused",
             "merged", "dropped", "ignored", "suspected", "declared_dead", "refuted"), 0,
        )  # fmt: skip

    def add_slot(self, slot: int) -> None:
        """A peer found after start (mDNS) joins the round-robin."""
        self.members.setdefault(slot, Member())

    # --- rounds ---------------------------------------------------------------------

    def start_round(self) -> list[int]:
        """A new gossip interval: bump the own generation, declare overdue suspects dead,
        and return the next ``fanout`` exchange targets of the shuffled round-robin."""
        self.round += 1
        self.gen += 1
        self.counters["rounds"] += 1
        targets: list[int] = []
        want = min(self.fanout, len(self.members))
        while len(targets) < want:
            if not self.order:
                self.order = list(self.members)
                self.rng.shuffle(self.order)
                if targets and self.order[-1] in targets:  # no slot twice in one round
                    self.order.insert(0, self.order.pop())
            slot = self.order.pop()
            if slot not in targets:
                targets.append(slot)
        return targets

    def overdue(self) -> list[int]:
        """Suspects with no fresher report for ``suspect_intervals`` rounds: now dead."""
        dead = []
        for slot, m in self.members.items():
            if m.state != SUSPECT or m.suspect_round is None:
                continue
            if self.round - m.suspect_round >= self.suspect_intervals:
                self._dead(m)
                dead.append(slot)
        return dead

    def _dead(self, m: Member) -> None:
        m.state, m.notices, m.masked = DEAD, self._notice_count(), True
        m.detected_after = self.round - m.fresh_round
        self.counters["declared_dead"] += 1

    def exchange_sent(self, slot: int, now: float) -> None:
        """A direct exchange (our gossip) went to ``slot``: its reply is due soon."""
        m = self.members[slot]
        m.checked_round = self.round
        self.counters["exchanges"] += 1
        if m.awaiting is None and m.probing is None:
            m.awaiting = now + ACK_FRACTION * self.interval_s

    def wants_check(self, slot: int) -> bool:
        """Whether a check of ``slot`` may start now (at most one per member per round)."""
        m = self.members.get(slot)
        return m is not None and m.checked_round < self.round and m.awaiting is None

    # --- what arrives -----------------------------------------------------------------

    def heard(self, slot: int, now: float, generation: Generation | None = None) -> list[Served]:
        """Anything from ``slot`` on this box's own link: alive, its check done, unmasked.
        With a generation (a gossip reply), that report is now the copy held.
        Returns the ``ping_req`` this box serves for it, to be acked."""
        m = self.members.get(slot)
        if m is None:
            return []
        if m.state != ALIVE:
            self.counters["refuted"] += 1
        m.state, m.awaiting, m.probing, m.suspect_round, m.masked = ALIVE, None, None, None, False
        m.notices, m.noticed_dead = 0, False
        if generation is not None:
            m.direct = m.generation = generation
            m.born_at, m.fresh_round = now, self.round
        return self.take_served(slot)

    def take_served(self, slot: int) -> list[Served]:
        """The ping_reqs about ``slot``, removed (their target answered)."""
        node = self._served_slot.get(slot)
        if node is None:
            return []
        done = [s for s in self.served if s.target_node == node]
        self.served = [s for s in self.served if s.target_node != node]
        return done

    def serve(self, route: Any, request_id: str, slot: int, node: str, now: float) -> None:
        """A peer asked this box to probe ``slot`` (``node``); acked when it answers."""
        self.counters["ping_reqs_served"] += 1
        self._served_slot[slot] = node
        deadline = now + ACK_FRACTION * self.interval_s
        self.served.append(Served(route, request_id, node, deadline))

    def acked(self, slot: int) -> None:
        """A helper's ``ping_ack`` says ``slot`` answered it: alive, the check is over.
        Its own link stays as it was (masked only by this box's own failed checks)."""
        m = self.members.get(slot)
        if m is not None and m.state == ALIVE:
            m.awaiting = m.probing = None

    def merge(self, entries: Any, now: float, node_slots: dict[str, int], self_node: str) -> Merged:
        """A digest (or a request's own report as a one-entry list), merged by the rules in
        the module docstring. ``node_slots``: node id -> slot, learned on own links."""
        out = Merged()
        if type(entries) is not list or len(entries) > MAX_DIGEST_ENTRIES:
            out.dropped = len(entries) if type(entries) is list else 1
            self.counters["dropped"] += out.dropped
            return out
        for raw in entries:
            entry = check_entry(raw)
            if entry is None:
                out.dropped += 1
                continue
            slot = node_slots.get(entry["node"])
            m = self.members.get(slot) if slot is not None else None
            if entry["node"] == self_node or m is None or m.direct is None:
                out.ignored += 1
                continue
            if entry["state"] != ALIVE:  # a notice: only this box's own check may follow
                seen = (entry["started_at"], entry["gen"])
                if entry["state"] == DEAD and (m.generation is None or seen >= m.generation):
                    m.noticed_dead = True  # ours is no fresher: its suspicion time is spent
                if m.state == ALIVE and self.wants_check(slot):
                    out.checks.append(slot)
                out.ignored += 1
                continue
            generation = (entry["started_at"], entry["gen"])
            if generation[0] != m.direct[0] or (
                m.generation is not None and generation <= m.generation
            ):
                out.ignored += 1  # a relayed restart, or not newer
                continue
            m.generation, m.born_at = generation, now - entry["age_s"]
            m.fresh_round, m.noticed_dead = self.round, False
            m.relayed += 1
            if m.state != ALIVE:  # a fresher report keeps it alive; its link stays masked
                m.state, m.suspect_round, m.notices = ALIVE, None, 0
                self.counters["refuted"] += 1
            if m.masked and self.wants_check(slot):
                out.checks.append(slot)  # is it back on our own link too?
            load = {k: entry[k] for k in LOAD_FIELDS if k in entry}
            out.updates.append((slot, load, m.born_at))
        self.counters["merged"] += len(out.updates)
        self.counters["dropped"] += out.dropped
        self.counters["ignored"] += out.ignored
        return out

    # --- timers -----------------------------------------------------------------------

    def due(self, now: float, helpers_for: Any) -> Due:
        """Fired timers. ``helpers_for(slot)``: the slots that may probe ``slot`` for us."""
        out = Due()
        for slot, m in self.members.items():
            if m.awaiting is not None and now >= m.awaiting:
                m.awaiting = None
                if m.state == DEAD or m.direct is None:
                    continue  # still gone, or never heard (its link stays "connecting")
                pool = [s for s in helpers_for(slot) if s != slot]
                helpers = self.rng.sample(pool, min(INDIRECT_PROBES, len(pool)))
                if helpers:
                    m.probing = now + INDIRECT_FRACTION * self.interval_s
                    out.ping_reqs.append((slot, helpers))
                    self.counters["ping_reqs_sent"] += len(helpers)
                else:
                    self._suspect(slot, m, out)
            elif m.probing is not None and now >= m.probing:
                m.probing = None
                self._suspect(slot, m, out)
        out.failed_acks = [s for s in self.served if now >= s.deadline]
        if out.failed_acks:
            self.served = [s for s in self.served if now < s.deadline]
        return out

    def _suspect(self, slot: int, m: Member, out: Due) -> None:
        m.masked = True
        if m.state != DEAD and m.noticed_dead:  # our own checks failed too: dead now
            self._dead(m)
            out.dead.append(slot)
        elif m.state == ALIVE:
            m.state, m.suspect_round, m.notices = SUSPECT, self.round, self._notice_count()
            self.counters["suspected"] += 1
            out.suspected.append(slot)

    def _notice_count(self) -> int:
        return NOTICE_FACTOR * math.ceil(math.log2(len(self.members) + 2))

    def forgive(self) -> None:
        """This box was frozen: its timers say nothing about the peers."""
        for m in self.members.values():
            m.awaiting = m.probing = None
            if m.state == SUSPECT:
                m.suspect_round = self.round
        self.served.clear()

    # --- what goes out ----------------------------------------------------------------

    def digest(self, now: float, reports: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """Suspect/dead notices first, then the freshest reports held (``reports``: slot ->
        stored info of members with a known node), ``digest_entries`` at most."""
        limit = self.digest_entries
        if limit <= 0:
            return []
        notices = [s for s, m in self.members.items() if m.notices > 0 and s in reports]
        fresh = sorted(
            (s for s, m in self.members.items()
             if m.state == ALIVE and m.generation is not None and s in reports),
            key=lambda s: -(self.members[s].born_at or 0.0),
        )  # fmt: skip
        out = []
        for slot in [*notices, *fresh][:limit]:
            m = self.members[slot]
            if m.generation is None:
                continue
            if m.notices > 0:
                m.notices -= 1
            info = {**reports[slot], "started_at": m.generation[0], "gen": m.generation[1]}
            age = now - (m.born_at if m.born_at is not None else now)
            entry = entry_of(info, age, m.state)
            if check_entry(entry) is not None:  # never relay what we would refuse
                out.append(entry)
        return out

    def masked(self, slot: int) -> bool:
        m = self.members.get(slot)
        return m is not None and m.masked

    def row(self, slot: int, now: float) -> dict[str, Any]:
        """The status fields of one member."""
        m = self.members.get(slot)
        if m is None:
            return {}
        return {
            "member": m.state,
            "masked": m.masked,
            "generation": list(m.generation) if m.generation else None,
            "report_age_s": round(now - m.born_at, 3) if m.born_at is not None else None,
            "relayed": m.relayed,
            "detected_after_intervals": m.detected_after,
        }
