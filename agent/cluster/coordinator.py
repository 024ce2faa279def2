"""The agent's cluster: peer slots, gossip, the scheduler's state, forwarding, on the loop thread.

Server indices are fixed at start: this agent and every configured peer, sorted by
endpoint (``cluster_size`` may reserve spare slots for peers found by mDNS; one found when
no slot is free is shown but never scheduled). ``Cluster`` owns the peer links and the peer
table, answers peers' gossip, builds the scheduler's ``ClusterState`` for each submitted
task (down peers masked), and hands forwarded tasks and their replies to ``Forwarding``.
With ``pod2`` a first-hop task's placement waits for ``probe`` replies (``Probes``): it is
decided in a later turn, when the probed peers answered or at the round's deadline.
The links' handshake events go to ``PeerSecurity`` (CURVE keys per peer); a peer that
restarted (its gossip's ``started_at`` changed) is asked again at once for the tasks
forwarded to it, which it resumes from its journal.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from dedgeai.agent.cluster import partial_gossip as partial
from dedgeai.agent.cluster.discovery import Discovery, Found, admit
from dedgeai.agent.cluster.forwarding import Forwarding, cancel_message, forward_message
from dedgeai.agent.cluster.gossip_sanity import sanitize_report
from dedgeai.agent.cluster.learning import SchedulerHost
from dedgeai.agent.cluster.links import (
    PeerLinks,
    SocketSetup,
    gossip_message,
    read_peer_reply,
    version_refusal,
)
from dedgeai.agent.cluster.partial_view import GossipMeter
from dedgeai.agent.cluster.peers import Heard, Peer, PeerState, PeerTable, Refused, VersionMismatch
from dedgeai.agent.cluster.probes import Probes, Round, probe_timeout_s
from dedgeai.agent.cluster.stealing import (
    MAX_SCAN,
    Candidate,
    Stealing,
    choose_offer,
    reply_timeout_s,
)
from dedgeai.agent.errors import ConfigError, ErrorCode, ProtocolError
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.config import AgentConfig
from dedgeai.agent.node.core import AgentCore, Effect, Route, Send
from dedgeai.agent.node.records import Placement
from dedgeai.agent.node.results import ResultStore
from dedgeai.agent.node.tasks import TaskRecord, TaskState
from dedgeai.agent.security.authority import Authority
from dedgeai.agent.security.keys import fingerprint
from dedgeai.agent.security.peer_keys import NEXT, OK, REFUSED, PeerSecurity, split_peer
from dedgeai.scheduler.cluster_state import (
    ClusterState,
    TaskSpec,
    estimated_finish_s,
    probe_weights,
    soft_greedy,
)
from dedgeai.scheduler.policy_names import probes_of

log = logging.getLogger("dedgeai.agent.cluster.coordinator")

REFERENCE_PIXELS = 512 * 512  # work is counted in 512x512-equivalent denoising steps
LINK_MBIT_PER_S = 100.0  # assumed link speed for the forwarding-overhead estimate
REQUEST_OVERHEAD_BYTES = 200  # envelope and fields of a forwarded submit, beyond the prompts
GUARD_CONTROL = "pod2"  # a learned policy's control arm: the heuristic that wins in the twin
PROBE_ANSWER_MAX_AGE_S = 0.01  # a probe answer is reused this long (a flood of probes)
DECISION_SAMPLES = 4096  # scheduling latencies kept for the status percentiles
QUIET_INTERVALS = 3  # a forwarded task silent this many gossip intervals is asked again
HOLD_INTERVALS = 10  # a resumed forwarded task its origin (up) has not asked for is dropped
HINT_EVERY_S = 0.2  # at most this often, a peer's own gossip makes us ask it at once
HOLD_MAX_S = 3600.0  # ... and one whose origin never comes back, after this long


def node_seed(node: str) -> int:
    """A seed of this agent's own: agents that explore in step would pile onto one peer."""
    return int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "little")


def equivalent_steps(steps: int, width: int, height: int) -> float:
    return steps * (width * height) / REFERENCE_PIXELS


def assign_slots(
    self_endpoints: tuple[str, ...], peers: tuple[str, ...], cluster_size: int
) -> tuple[int, dict[int, str], int]:
    """(self index, {slot: peer endpoint}, number of slots): self and peers sorted by endpoint."""
    others = sorted({e for e in (split_peer(x)[0] for x in peers) if e not in self_endpoints})
    ordered = sorted([self_endpoints[0], *others])
    n = max(len(ordered), cluster_size)
    if cluster_size and cluster_size < len(ordered):
        raise ConfigError(
            f"`cluster_size` {cluster_size} is smaller than this agent plus its "
            f"{len(others)} configured peer(s)"
        )
    self_index = ordered.index(self_endpoints[0])
    return self_index, {i: e for i, e in enumerate(ordered) if i != self_index}, n


class Cluster:
    """Everything about the other agents that the daemon's loop needs."""

    def __init__(
        self,
        config: AgentConfig,
        core: AgentCore,
        results: ResultStore,
        context: zmq.Context,
        endpoint: str,
        describe: Callable[[], dict[str, Any]],
        setup: SocketSetup | None = None,
        security: PeerSecurity | None = None,
    ) -> None:
        """``security``: CURVE keys for the links (its ``setup`` is used); None: plain links."""
        self.config, self.core, self.describe = config, core, describe
        self.security = security
        self.endpoint = endpoint
        self.interval_s = config.gossip_interval_s
        self.self_index, endpoints, self.n_slots = assign_slots(
            (endpoint, config.endpoint), config.peers, config.cluster_size
        )
        self.host = SchedulerHost(  # first: a checkpoint that does not fit stops the start
            config.policy,
            self.n_slots,
            self.self_index,
            config.state_path(),
            config.policy_checkpoint,
            config.learn,
            config.train_steps_per_s,
            config.learn_warmup,
            warm_start_steps=config.warm_start_steps,
            policy_actions=config.policy_actions,
            lad_actor=config.lad_actor,
            lad_mode=config.lad_mode,
            explore_epsilon=config.explore_epsilon,
            capacities=lambda: self.capacities_snapshot,  # read on the training thread
            seed=node_seed(core.node),
        )
        self.unused: dict[str, dict[str, Any]] = {}  # found by mDNS, not used: why
        self.discovery: Discovery | None = None
        if config.discovery:  # before any socket: a failure here leaves nothing open
            own = security.own if security is not None else None
            fp = fingerprint(own.public) if own is not None else None
            try:
                self.discovery = Discovery(endpoint, core.node, config.display_name, fp)
            except OSError as exc:
                raise ConfigError(f"`discovery`: cannot start mDNS (zeroconf): {exc}") from exc
        now = time.time()
        self.table = PeerTable(Peer(s, e, since=now) for s, e in endpoints.items())
        if security is not None and setup is None:
            setup = security.setup
        self.links = PeerLinks(context, endpoints, setup, monitor=security is not None)
        self.forwarding = Forwarding(
            core, results, config.forward_ack_timeout_s, QUIET_INTERVALS * self.interval_s
        )
        self.pending = np.zeros(self.n_slots)  # work sent to each peer since its last gossip
        self.sent_work = np.zeros(self.n_slots)  # work sent to each peer since start
        # lad_mode = "probe": LAD-TS draws whom pod2 probes (the twin's pod2-lad)
        self.lad_probes = self.host.mode == "probe"
        d = probes_of(GUARD_CONTROL if self.lad_probes else config.policy)
        self.probing_policy = d > 0
        # tasks the guard drew for its control arm, probed before they are placed
        self.control_tasks: set[str] = set()
        if self.host.guard is not None:  # the guard's control arm is the best heuristic,
            d = d or probes_of(GUARD_CONTROL)  # pod2: its tasks are probed too
            self.host.control_name = GUARD_CONTROL
        self.probes = Probes(d, node_seed(core.node)) if d else None
        self.stealing = Stealing(config.work_stealing)  # answers steals even when off
        self.interval_started = now
        self.last_gossip = 0.0
        self.gossip_meter = GossipMeter(now)  # gossip messages and bytes, either mode
        self.partial = partial.new_view(self, node_seed(core.node))  # gossip = "partial"
        self.decision_s: deque[float] = deque(maxlen=DECISION_SAMPLES)
        self.decisions_made = 0  # every placement since start (the deque keeps the last ones)
        self.decision_summary: tuple[int, dict[str, Any]] = (0, {"count": 0})
        self.up_at: dict[int, float] = {}  # when each peer last came up
        self._probe_answer: tuple[float, dict[str, Any]] | None = None  # (when, body)
        self.probes_served = 0  # probes answered for peers, by an agent that does not probe
        self.hinted_at: dict[int, float] = {}  # last gossip sent early on a peer's hint
        self.authority: Authority | None = None  # set by the daemon: mDNS peers join it
        # Recorded as ``ran_on``; the daemon hands it to ``core.join_cluster``.
        self.identity = {"node": core.node, "name": config.display_name, "endpoint": endpoint}
        # Every slot's speed, computed on the loop thread each gossip interval until the policy
        # is built (``known_capacities``): the training thread reads this reference, never
        # the live peer table.
        self.capacities_snapshot: np.ndarray | None = None

    def start(self, poller: zmq.Poller) -> None:
        self.links.register(poller)
        self.host.start()

    def close(self) -> None:
        self.host.stop()
        self.links.close()
        if self.discovery is not None:
            self.discovery.close()

    # --- what this agent publishes ---------------------------------------------------

    def _own_work(self) -> tuple[float, float]:
        """(backlog, work admitted this interval), in 512x512-equivalent steps."""
        backlog = load = 0.0
        core = self.core
        local = [core.tasks[t] for t in core.queue]  # not core.tasks: forwarded ones are there
        if core.running is not None and core.running in core.tasks:
            local.append(core.tasks[core.running])
        for task in local:
            req = task.request
            work = equivalent_steps(task.remaining_steps, req.width, req.height)
            backlog += work
            if task.submitted_at >= self.interval_started:
                load += work
        return backlog, load

    def _capacity(self) -> float | None:
        profile = self.core.profile
        return profile.at(512, 512) if profile is not None else None

    def known_capacities(self) -> np.ndarray | None:
        """Every slot's speed (steps/s) once this agent and each configured peer reported
        one; spare slots (mDNS) take the median. None until then. On the loop thread only:
        the training thread gets ``capacities_snapshot``."""
        own = self._capacity()
        if not own:
            return None
        speeds = np.full(self.n_slots, np.nan)
        speeds[self.self_index] = own
        for peer in self.table:
            rate = peer.info.get("capacity_steps_per_s")
            if rate:
                speeds[peer.slot] = float(rate)
            elif not peer.discovered:
                return None
        speeds[np.isnan(speeds)] = float(np.nanmedian(speeds))
        return speeds

    def load_body(self, now: float) -> dict[str, Any]:
        """The load part of gossip, also the whole of a ``probe_reply``."""
        backlog, load = self._own_work()
        return {
            "sent_at": now,
            "backlog_steps": backlog,
            "interval_load_steps": load,
            "capacity_steps_per_s": self._capacity(),
            "accepting": self.core.accepting,
        }

    def body(self, now: float) -> dict[str, Any]:
        running = self.core.running
        return {
            "node": self.core.node,
            "name": self.config.display_name,
            "endpoint": self.endpoint,
            **self.load_body(now),
            "backlog_s": self.core.backlog()[1],
            "queued": len(self.core.queue),
            "running": str(running) if running else None,
            **self.describe(),
        }

    # --- messages --------------------------------------------------------------------

    def on_gossip(self, route: Route, msg: p.Gossip, now: float) -> list[Effect]:
        """A peer's gossip on our ROUTER: answered with ours (and its echo).

        What it says about itself is not stored: anyone allowed to gossip could claim to be
        any node. The peer table learns only from the replies on the link this agent opened
        to each peer's endpoint (with CURVE, to the key that endpoint proved it holds). It
        is a hint, though: a peer that says it restarted, or that we do not see up, is asked
        at once on our link, so a restart is noticed within a round trip, not an interval.
        """
        if isinstance(msg, p.PingReq):  # partial gossip: probe a member for a peer
            return partial.on_ping_req(self, route, msg, now)
        body = msg.body
        self.gossip_meter.received(len(p.encode(p.envelope("gossip", msg.id, **body))))
        peer = self.table.by_node(str(body.get("node"))) or next(
            (q for q in self.table if q.endpoint == body.get("endpoint")), None
        )
        news = peer is not None and (
            peer.state is not PeerState.UP or peer.info.get("started_at") != body.get("started_at")
        )
        if news and now - self.hinted_at.get(peer.slot, float("-inf")) >= HINT_EVERY_S:
            self.hinted_at[peer.slot] = now
            partial.send_gossip(self, peer.slot, gossip_message(self.body(now)))
        extra: dict[str, Any] = {}
        if self.partial is not None:  # its report and digest are hints; ours go back
            partial.on_request(self, body, now)
            extra = partial.partial_fields(self, now)
        echo = body["sent_at"]
        reply = p.envelope("gossip", msg.id, **self.body(now), **extra, echo_sent_at=echo)
        self.gossip_meter.sent(len(p.encode(reply)))
        return [Send(route, reply)]

    def on_probe(self, route: Route, msg: p.Probe, now: float) -> list[Effect]:
        """A peer's ``probe`` (it places a task with ``pod2``): our load now."""
        if self.probes is not None:
            self.probes.counters["served"] += 1
        else:
            self.probes_served += 1
        # One queue walk per PROBE_ANSWER_MAX_AGE_S at most, however many probes arrive.
        if self._probe_answer is None or now - self._probe_answer[0] >= PROBE_ANSWER_MAX_AGE_S:
            self._probe_answer = (now, self.load_body(now))
        return [Send(route, p.envelope("probe_reply", msg.id, **self._probe_answer[1]))]

    # --- work stealing (``stealing``) ------------------------------------------------

    def on_steal(self, route: Route, msg: p.Steal, now: float) -> list[Effect]:
        """A peer's ``steal`` (it is idle): hand it our last queued task if it would finish
        it sooner; a ``steal_reply`` either way. The hand-over is a forward (journaled
        first, reclaimed like any other), so the task never runs here unless reclaimed."""
        stealing, core = self.stealing, self.core
        peer = self.table.by_node(msg.node)
        if msg.node == core.node or peer is None or peer.state is not PeerState.UP:
            stealing.served("refused")
            why = "`node` is not a peer this agent has up"
            return [Send(route, p.error_reply(msg.id, ErrorCode.FORBIDDEN, why, field="node"))]
        if stealing.over_budget():
            stealing.served("declined")
            why = "too many steals in this gossip interval; ask again later"
            return [Send(route, p.envelope("steal_reply", msg.id, given=False, reason=why))]
        running = core.tasks.get(core.running) if core.running is not None else None
        ahead = 0.0  # work that runs before the tail looked at: the running task's and ...
        if running is not None:
            req = running.request
            ahead = equivalent_steps(running.remaining_steps, req.width, req.height)
        head = len(core.queue) - MAX_SCAN  # ... the tasks queued before it
        queued = []
        for index, task_id in enumerate(core.queue):
            task = core.tasks[task_id]
            if index < head:
                req = task.request
                ahead += equivalent_steps(task.remaining_steps, req.width, req.height)
                continue
            spec = self._spec(task)
            transfer = (peer.rtt_s or 0.0) + spec.size_mbit / LINK_MBIT_PER_S
            queued.append(Candidate(task, spec.demand_steps, transfer))

        def eligible(task: TaskRecord) -> bool:
            return (
                core.stealable(task.id)
                and task.origin != msg.node  # never back to its origin
                and task.id not in stealing.stolen  # stolen here: no second steal
                and peer.slot not in task.placement.avoid  # lost there before
                and not task.placement.force_local  # re-dispatched too often: stays here
            )

        own = self._capacity() or 0.0
        offer, why = choose_offer(queued, ahead, own, msg.capacity_steps_per_s, eligible)
        effects: list[Effect] = []
        if offer is not None:
            who = peer.name or peer.endpoint
            reason = f"stolen by {who}: est {offer.there_s:.2f} s there, {offer.here_s:.2f} s here"
            placement = offer.task.placement.with_(
                local=False,
                target=peer.slot,
                node=peer.node,
                name=peer.name,
                endpoint=peer.endpoint,
                reason=reason,
            )
            effects = core.hand_over(offer.task.id, placement, now)
            why = why or "the task could not move"
        if not effects:
            stealing.served("declined")
            reply = p.envelope("steal_reply", msg.id, given=False, task=None, reason=why)
            return [Send(route, reply)]
        assert offer is not None
        demand = self._spec(offer.task).demand_steps
        self.pending[peer.slot] += demand
        self.sent_work[peer.slot] += demand
        stealing.served("given")
        log.info("task %s: %s", offer.task.id, placement.reason)
        reply = p.envelope("steal_reply", msg.id, given=True, task=offer.task.id)
        return [*effects, Send(route, reply)]

    def on_steal_reply(self, slot: int, reply: p.Reply, now: float) -> list[Effect]:
        """The answer to our ``steal`` (a heartbeat of its peer). A given task arrives as an
        ordinary forwarded ``submit``; after an empty answer the next victim is asked."""
        self._heard(slot, Heard(now), now)
        ok = reply.type == "steal_reply"
        given = reply.get("task") if ok and reply.get("given") else None
        wait_s = self.config.forward_ack_timeout_s  # the victim reclaims it after this
        answered = self.stealing.answered(str(reply.id), slot, given, not ok, now, wait_s)
        if answered and given is None:
            self._steal(now)
        return []

    def _steal(self, now: float) -> None:
        """With ``work_stealing``, when nothing is queued or running here: ask the peer
        that reports the largest backlog (in seconds, with a task queued) for one task."""
        stealing, core = self.stealing, self.core
        stealing.expired(now)
        if not stealing.enabled:
            return
        if core.running is not None or core.queue or core.placing:
            stealing.busy()  # a new idle spell, when it comes, may ask again
            return
        if not core.accepting or core.storage_error is not None:
            return
        if stealing.waiting(now, lambda t: t in core.tasks or t in core.recently_finished):
            return
        own = self._capacity()
        if not own:
            return
        reports = []
        for peer in self.table:
            rate = peer.info.get("capacity_steps_per_s")
            if peer.state is PeerState.UP and rate and peer.info.get("queued"):
                reports.append((peer.slot, float(peer.info.get("backlog_steps", 0.0)) / rate))
        slot = stealing.choose(reports)
        if slot is None:
            return
        request_id = stealing.open(slot, now, reply_timeout_s(self.table.by_slot[slot].rtt_s))
        message = p.envelope("steal", request_id, node=core.node, capacity_steps_per_s=own)
        if not self.links.send(slot, message):
            stealing.unsent()

    def _handshakes(self, ready: dict[zmq.Socket, int], now: float) -> list[Effect]:
        effects: list[Effect] = []
        if self.security is None:
            return effects
        for slot, event, value in self.links.handshakes(ready):
            endpoint = self.links.endpoints[slot]
            verdict, text = self.security.judge(endpoint, event, value)
            if verdict == OK and text:
                log.info("peer %s: %s", endpoint, text)
            elif verdict == NEXT:
                self.links.reopen(slot)  # identify it with the next authorized key
            elif verdict == REFUSED:
                old, _ = self.table.apply_(slot, Refused(now, text or "handshake failed"))
                if old is not PeerState.REFUSED:
                    log.error("peer %s (slot %d) refused: %s", endpoint, slot, text)
                self.links.suspend(slot, now)  # tried again after a growing backoff
                why = "the CURVE handshake with the peer failed"
                effects += self.forwarding.reclaim_slot(slot, why, now)
        return effects

    def on_ready(self, ready: dict[zmq.Socket, int], now: float) -> list[Effect]:
        effects: list[Effect] = self._handshakes(ready, now)
        for slot, frames in self.links.receive(ready):
            try:
                reply = read_peer_reply(frames)
            except ProtocolError as exc:
                if exc.code is ErrorCode.BAD_VERSION:
                    effects += self._incompatible(slot, exc.message, now)
                else:
                    log.warning("slot %d sent a malformed reply: %s", slot, exc.message)
                continue
            refusal = version_refusal(reply)
            if refusal is not None:
                effects += self._incompatible(slot, refusal, now)
                continue
            if Stealing.is_steal(reply.id):
                try:  # as below: a bug costs that reply (the steal times out)
                    effects += self.on_steal_reply(slot, reply, now)
                except Exception:
                    log.exception("slot %d: could not handle its steal reply", slot)
                continue
            if self.probes is not None and Probes.is_probe(reply.id):
                try:  # as below: a bug costs that reply (its round ends at its deadline)
                    effects += self.on_probe_reply(slot, reply, now)
                except Exception:
                    log.exception("slot %d: could not handle its probe reply", slot)
                continue
            if reply.type in ("gossip", "ping_ack"):
                self.gossip_meter.received(sum(len(f) for f in frames))
            if reply.type == "ping_ack":
                self._heard(slot, Heard(now), now)
                partial.on_ping_ack(self, reply)
                continue
            info, rtt = None, None
            if reply.type == "gossip":
                drop = ("echo_sent_at", "digest")  # the digest is merged by partial.heard
                info = {k: v for k, v in reply.fields.items() if k not in drop}
                info, why = sanitize_report(
                    self.table.by_slot[slot].info or None, info, self._capacity()
                )
                if why:
                    log.warning("slot %d gossip: %s", slot, "; ".join(why))
                echo = reply.get("echo_sent_at")
                rtt = now - echo if isinstance(echo, (int, float)) else None
            try:  # a bug (or a reply no check foresaw) costs that reply, not the agent
                self._heard(slot, Heard(now, info, rtt), now)
                if self.partial is not None:
                    effects += partial.heard(self, slot, reply, now)
                effects += self.forwarding.on_reply(slot, reply, now)
            except Exception:
                log.exception("slot %d: could not handle its %s reply", slot, reply.type)
        return effects

    def on_probe_reply(self, slot: int, reply: p.Reply, now: float) -> list[Effect]:
        """A ``probe_reply`` (or an error) to one of our probes: the peer is alive; its
        report, once sane, counts for its round, which is decided when it is complete."""
        assert self.probes is not None
        self._heard(slot, Heard(now), now)
        fields: dict[str, Any] | None = None
        why = ""
        if reply.type == "probe_reply":
            peer = self.table.by_slot[slot]
            fresh = {k: v for k, v in reply.fields.items() if k in p.PROBE_REPLY_FIELDS}
            report, problems = sanitize_report(
                peer.info or None, {**peer.info, **fresh}, self._capacity()
            )
            if problems:
                log.warning("slot %d probe reply: %s", slot, "; ".join(problems))
            if report.get("capacity_steps_per_s") and report.get("accepting", True):
                fields = report
            else:
                why = "not accepting, or no sane load in its answer"
        else:
            why = f"answered {reply.type} {reply.get('code', '')}".strip()
        rnd = self.probes.answer(str(reply.id), slot, fields, why)
        return self._decide_round(rnd, now) if rnd is not None else []

    def _heard(self, slot: int, event: Heard, now: float) -> None:
        before = self.table.by_slot[slot].info.get("started_at")
        old, new = self.table.apply_(slot, event)
        if event.info is not None:
            self.pending[slot] = 0.0
            started = event.info.get("started_at")
            if before is not None and started is not None and started != before:
                log.info("peer in slot %d restarted: asking again for its tasks", slot)
                self.forwarding.ask_again(slot)
        if old is not PeerState.UP and new is PeerState.UP:
            self.up_at[slot] = now
            self.links.healthy(slot)
            for task in self.forwarding.take_tombstones(slot):
                self.links.send(slot, cancel_message(task))  # it may hold them, frozen
            log.info("peer %s (slot %d) is up", self.table.by_slot[slot].endpoint, slot)

    def _incompatible(self, slot: int, error: str, now: float) -> list[Effect]:
        old, _ = self.table.apply_(slot, VersionMismatch(now, error))
        if old is not PeerState.INCOMPATIBLE:
            log.error("peer %s: %s", self.table.by_slot[slot].endpoint, error)
        return self.forwarding.reclaim_slot(slot, "peer speaks another protocol version", now)

    # --- time ------------------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        """Gossip and liveness once per interval; forwarding deadlines on every turn."""
        effects: list[Effect] = []
        self.links.resume_due(now)  # refused links, after their backoff
        if self.discovery is not None:
            for found in self.discovery.poll():
                self._discovered(found, now)
        if now - self.last_gossip >= self.interval_s:
            self.last_gossip = self.interval_started = now
            self.host.start_interval()
            self.stealing.new_interval()
            if self.host.scheduler is None:  # only a warm start waits for the speeds
                self.capacities_snapshot = self.known_capacities()
            peers = list(self.table)
            if self.partial is not None:  # fanout peers; liveness by SWIM probes
                effects += partial.start_round(self, now)
                peers = []
            elif peers:  # the body walks the whole queue: not built for nobody
                message = gossip_message(self.body(now))
                size = len(p.encode(message))
                for peer in peers:
                    partial.send_gossip(self, peer.slot, message, size)
                self.gossip_meter.mark(now)
            for slot, state in self.table.check_liveness_(now, self.interval_s) if peers else ():
                if state is PeerState.DOWN:
                    endpoint = self.table.by_slot[slot].endpoint
                    log.warning("peer %s (slot %d) is down: silent 3 intervals", endpoint, slot)
                    self.links.reset(slot, now)
                    why = "peer down (silent for 3 gossip intervals)"
                    effects += self.forwarding.reclaim_slot(slot, why, now)
        if self.partial is not None:
            effects += partial.timers(self, now)
        effects += self._release_unclaimed(now)
        if self.probes is not None:
            for rnd in self.probes.expired(now):
                effects += self._decide_round(rnd, now)
        reclaimed, again = self.forwarding.tick(now)
        effects += reclaimed
        for task in again:
            effects += self.forward(task, now)
        self._steal(now)
        return effects

    def resumed_from_pause(self, now: float) -> None:
        """This agent was frozen: its peers' silence meanwhile says nothing about them.

        Each peer, and each forward awaiting an answer, gets a fresh grace period from now:
        otherwise the first tick after a freeze would mark every peer down and run their
        tasks a second time here.
        """
        self.table.forgive_(now)
        self.forwarding.forgive(now)
        if self.partial is not None:
            self.partial.forgive()
        self.last_gossip = 0.0  # gossip at once: the peers hear from us again

    def _release_unclaimed(self, now: float) -> list[Effect]:
        """Resumed forwarded tasks whose origin, up for a while, has not asked for them again.

        An origin asks again at once for every task still forwarded here when it sees this
        agent back (new ``started_at``), and for any quiet one every 3 intervals; one it
        reclaimed while this agent was down it never asks for, so that is not run here.
        """
        effects: list[Effect] = []
        wait = HOLD_INTERVALS * self.interval_s
        for task_id, since in list(self.core.held.items()):
            task = self.core.tasks.get(task_id)
            peer = self.table.by_node(str(task.origin)) if task is not None else None
            if now - since > HOLD_MAX_S:
                why = f"not run: its origin did not ask for it again within {HOLD_MAX_S:g} s"
                log.info("task %s: %s", task_id, why)
                effects += self.core.release_held(task_id, now, why)
                continue
            if peer is None or peer.state is not PeerState.UP:
                continue  # keep it: its origin may still ask for it when it is back
            if now - max(since, self.up_at.get(peer.slot, since)) > wait:
                why = f"not run: its origin {peer.name or peer.endpoint} did not ask for it again"
                log.info("task %s: %s (it was dispatched elsewhere)", task_id, why)
                effects += self.core.release_held(task_id, now, why)
        return effects

    def _discovered(self, found: Found, now: float) -> None:
        security = self.security
        decision = admit(
            found,
            self_node=self.core.node,
            self_index=self.self_index,
            n_slots=self.n_slots,
            known=dict(self.links.endpoints),
            known_nodes={q.node for q in self.table if q.node},
            curve=security is not None and security.curve,
            key_for=security.key_for_fingerprint if security else lambda _fp: None,
            plain_ok=lambda e: security is None or security.allows_plain(e, self.config.insecure),
        )
        if decision.slot is None:
            if decision.reason and found.endpoint not in self.unused:
                log.warning("mDNS: not using %s: %s", found.endpoint, decision.reason)
            if decision.reason:
                self.unused[found.endpoint] = {"node": found.node, "reason": decision.reason}
            return
        self.unused.pop(found.endpoint, None)
        if security is not None and decision.key is not None:
            security.pin(found.endpoint, *decision.key)
        slot = decision.slot
        if self.authority is not None:
            self.authority.add_peer_endpoint(found.endpoint)
        self.table.by_slot[slot] = Peer(slot, found.endpoint, since=now, discovered=True)
        if self.partial is not None:
            self.partial.add_slot(slot)
        self.links.add(slot, found.endpoint)
        log.info("mDNS: peer %s (%s) takes slot %d", found.endpoint, found.node, slot)

    # --- forwarding --------------------------------------------------------------------

    def forward(self, task: TaskRecord, now: float) -> list[Effect]:
        """Send (or resend) a forwarded task; one that cannot be sent is reclaimed."""
        live = self.core.tasks.get(task.id)
        if live is None or live.state is not TaskState.FORWARDED:
            return []
        slot = int(live.placement["target"])
        if self.links.send(slot, forward_message(live)):
            if live.cancel_requested:  # a cancel journaled before a crash, or lost on the way
                self.links.send(slot, cancel_message(live))
            self.forwarding.sent(live, now)
            return []
        track = self.forwarding.outstanding.get(live.id)
        if track is not None and track.acked:
            return []  # it has the task: ask again next turn (liveness reclaims a dead peer)
        return self.forwarding.reclaim(live, "the peer's link is not connected", now)

    def cancel_remote(self, task: TaskRecord) -> None:
        self.links.send(int(task.placement["target"]), cancel_message(task))

    def completed(self, task: TaskRecord) -> None:
        """A task that this agent placed ended: its service delay is the policy's reward.

        Only a task that ran to completion says how fast its server is: a cancelled or
        failed one (its "delay" is the time to the cancel) would teach the policy that the
        server a client cancels on is fast.
        """
        if task.origin != self.core.node or task.placement.policy in (None, "local"):
            return  # not decided by the policy (a single slot, forced local, policy local)
        if task.state is TaskState.DONE and task.finished_at:
            self.host.complete(task.id, task.finished_at - task.submitted_at)
        else:
            self.host.abandon(task.id)

    # --- scheduling ------------------------------------------------------------------

    def _own_arrays(self) -> tuple[np.ndarray, ...]:
        """(backlog, load, capacity, available, transfer) with only this agent filled in."""
        n, me = self.n_slots, self.self_index
        backlog, load, capacity = np.zeros(n), np.zeros(n), np.ones(n)
        available, transfer = np.zeros(n, dtype=bool), np.zeros(n)
        own_backlog, own_load = self._own_work()
        backlog[me], load[me] = max(0.0, own_backlog - own_load), own_load
        capacity[me] = self._capacity() or self.config.emulated_steps_per_second
        available[me] = True
        return backlog, load, capacity, available, transfer

    def _fill(
        self,
        arrays: tuple[np.ndarray, ...],
        peer: Peer,
        info: dict[str, Any],
        sent: float,
        size_mbit: float,
    ) -> None:
        """One peer's row from its report (gossip or a probe reply) plus ``sent``: the work
        this agent sent it that the report cannot include yet."""
        backlog, load, capacity, available, transfer = arrays
        slot = peer.slot
        peer_load = float(info.get("interval_load_steps", 0.0))
        backlog[slot] = max(0.0, float(info.get("backlog_steps", 0.0)) - peer_load)
        load[slot] = peer_load + sent
        capacity[slot] = float(info["capacity_steps_per_s"])
        available[slot] = True
        transfer[slot] = (peer.rtt_s or 0.0) + size_mbit / LINK_MBIT_PER_S

    def state(self, avoid: set[int], size_mbit: float) -> Any:
        """Every schedulable peer from its last gossip (plus what we sent it since)."""
        arrays = self._own_arrays()
        for peer in self.table:
            if self._schedulable(peer, avoid):
                self._fill(arrays, peer, peer.info, self.pending[peer.slot], size_mbit)
        return ClusterState(self.self_index, *arrays)

    def probed_state(self, rnd: Round, size_mbit: float) -> ClusterState:
        """This agent and the peers that answered ``rnd``'s probes, fresh; the rest masked.

        A report counts the tasks that reached the peer before the probe did (one link,
        in order); what this agent forwarded to it after the probe left is added."""
        arrays = self._own_arrays()
        for slot, info in rnd.answers.items():
            peer = self.table.get(slot)
            if peer is None or not peer.state.schedulable:
                continue  # it went down since it answered
            sent = float(self.sent_work[slot]) - rnd.work_at_send.get(slot, 0.0)
            self._fill(arrays, peer, info, max(0.0, sent), size_mbit)
        return ClusterState(self.self_index, *arrays)

    def _local(self, reason: str) -> Placement:
        """A placement here without asking the policy (nothing else it could choose)."""
        probs = [0.0] * self.n_slots
        probs[self.self_index] = 1.0
        return Placement(
            local=True,
            target=self.self_index,
            **self.identity,
            policy="local",
            reason=reason,
            probs=probs,
        )

    def _schedulable(self, peer: Peer, avoid: set[int]) -> bool:
        return bool(
            peer.state.schedulable
            and peer.slot not in avoid
            and not (self.partial is not None and self.partial.masked(peer.slot))
            and peer.info.get("capacity_steps_per_s")
            and peer.info.get("accepting", True)
        )

    def _any_peer_schedulable(self, avoid: set[int]) -> bool:
        return any(self._schedulable(peer, avoid) for peer in self.table)

    @staticmethod
    def _spec(task: TaskRecord) -> TaskSpec:
        req = task.request
        demand = equivalent_steps(req.steps, req.width, req.height)
        size = (len(req.prompt) + len(req.negative_prompt) + REQUEST_OVERHEAD_BYTES) * 8 / 1e6
        return TaskSpec(demand, size)

    def place(self, task: TaskRecord, now: float | None = None) -> Placement | None:
        """Where a first-hop task runs, and why (the daemon's answer to the core's ``Place``).

        None: the decision waits for probes (``pod2``); this cluster hands it to
        ``core.placed`` itself in a later turn (``on_ready`` or ``tick``), the effects
        coming back through those."""
        if task.placement.force_local:
            return self._local("re-dispatched too often: runs at its origin")
        if self.host.policy == "local":
            return self._local("policy local")
        avoid = set(task.placement.avoid)
        if not self._any_peer_schedulable(avoid):  # no state or policy to compute
            return self._local("no peer available: runs here")
        arm = self.host.draw(task.id)  # None: no guard (a heuristic, or still warming up)
        if self.probes is not None and (self.probing_policy or arm == "control"):
            if arm == "control":
                self.control_tasks.add(task.id)
            lad = self.lad_probes and arm != "control"
            return self._probe(task, avoid, time.time() if now is None else now, lad)
        started = time.perf_counter()
        spec = self._spec(task)
        state = self.state(avoid, spec.size_mbit)
        decision = self.host.decide(spec, state, task.id, arm=arm)
        return self._placement(decision, spec, started)

    def _probe(
        self, task: TaskRecord, avoid: set[int], now: float, lad: bool = False
    ) -> Placement | None:
        """Send ``probe`` to d schedulable peers (drawn as ``probe_targets`` says, or from
        LAD-TS's π when ``lad``); None while their answers are due."""
        assert self.probes is not None
        probes = self.probes
        drawing = time.perf_counter()
        candidates = [q.slot for q in self.table if self._schedulable(q, avoid)]
        weights, view, drawn_by = self._probe_draw(task, avoid, candidates, lad)
        slots = probes.choose(candidates, weights)
        rtts = [self.table.by_slot[s].rtt_s for s in slots]
        timeout = probe_timeout_s(rtts, self.config.probe_timeout_s)
        sent = {s: float(self.sent_work[s]) for s in slots}
        rnd, ids = probes.open(task, slots, sent, now, timeout)
        rnd.view, rnd.drawn_by = view, drawn_by
        rnd.draw_s = time.perf_counter() - drawing  # counted in the decision's time
        for slot, probe_id in ids.items():
            if not self.links.send(slot, p.envelope("probe", probe_id)):
                probes.unsent(task.id, slot)
        if not rnd.complete:
            return None
        probes.close(task.id)  # not one probe left: decide now, on what is left (here)
        return self._round_placement(rnd, now)

    def _probe_draw(
        self, task: TaskRecord, avoid: set[int], candidates: list[int], lad: bool
    ) -> tuple[np.ndarray | None, tuple[TaskSpec, ClusterState] | None, str]:
        """Whom to probe: a weight per candidate slot (None: uniform), the gossip view
        ``(spec, state)`` LAD-TS drew on (``lad``: its transition is recorded on it), and
        who drew.

        ``lad`` (``lad_mode = "probe"``): the scorer's π on the last gossip; soft-greedy's
        when it cannot answer now (warming up, a training step, an insane view).
        ``probe_targets = "soft-greedy"``: soft-greedy's π (the twin's ``pod2-soft``).
        Either way 2 % of the draw stays uniform (``cluster_state.probe_weights``). Why:
        uniform probes miss the fast idle peers at low load; the probe replies then give
        exact backlogs, so the stale view cannot herd the choice."""
        assert self.probes is not None
        draw = len(candidates) > self.probes.d  # else every candidate is probed
        if not lad and not (draw and self.config.probe_targets == "soft-greedy"):
            return None, None, ""
        spec = self._spec(task)
        view = (spec, self.state(avoid, spec.size_mbit))
        if not draw:
            return None, view, "every peer"
        probs = self.host.probe_probs(*view) if lad else None
        drawn_by = "LAD-TS" if probs is not None else ("soft-greedy" if lad else "")
        if probs is None:
            probs = soft_greedy(estimated_finish_s(*view)[None])[0]
        weights = probe_weights(np.asarray(probs, dtype=np.float64)[candidates])
        return weights, view if lad else None, drawn_by

    def _decide_round(self, rnd: Round, now: float) -> list[Effect]:
        """A probe round is complete or past its deadline: place its task now."""
        assert self.probes is not None
        self.probes.close(rnd.task.id)
        if rnd.task.id not in self.core.placing:
            self.control_tasks.discard(rnd.task.id)
            self.host.forget(rnd.task.id)  # no delay will come for the guard to judge
            return []  # dropped meanwhile (a failed journal commit): nothing to place
        try:
            placement = self._round_placement(rnd, now)
        except Exception:  # a bug must not leave the task unplaced (its client unanswered)
            log.exception("task %s: the probed decision failed", rnd.task.id)
            placement = self._local("the probed decision failed: runs here")
        return self.core.placed(rnd.task.id, placement, now)

    def _round_placement(self, rnd: Round, now: float) -> Placement:
        started = time.perf_counter() - rnd.draw_s  # the decision's time includes the draw
        spec = self._spec(rnd.task)
        state = self.probed_state(rnd, spec.size_mbit)
        if rnd.task.id in self.control_tasks:  # the guard's control arm: pod2's decision
            self.control_tasks.discard(rnd.task.id)
            decision = self.host.decide(
                spec, state, rnd.task.id, arm="control", control=self.host.control_name
            )
        elif self.lad_probes:  # LAD-TS drew the probes; pod2's choice, recorded for it
            decision = self.host.decide_probed(spec, state, rnd.task.id, rnd.view)
        else:
            decision = self.host.decide(spec, state, rnd.task.id)
        placement = self._placement(decision, spec, started)
        reason = decision.reason
        if decision.policy in (self.host.policy, GUARD_CONTROL):  # not a fallback (insane)
            finish = estimated_finish_s(spec, state)
            me, target = self.self_index, int(decision.target)
            where = "here" if target == me else f"on {placement.name or f'slot {target}'}"
            drawn = f"{rnd.drawn_by} drew probes, " if rnd.drawn_by else ""
            reason = (
                f"{drawn}probed {len(rnd.answers)}/{len(rnd.asked)}: "
                f"est {finish[target]:.2f} s {where}"
            )
            if target != me:
                reason += f" vs here {finish[me]:.2f} s"
            elif others := [s for s in rnd.answers if np.isfinite(finish[s])]:
                best = min(others, key=lambda s: float(finish[s]))  # the best answer passed over
                peer = self.table.get(best)
                name = (peer.name if peer is not None else None) or f"slot {best}"
                reason += f" vs {finish[best]:.2f} s on {name}"
        masked = [f"slot {s} ({why})" for s, why in sorted(rnd.failed.items())]
        if masked:
            reason += "; masked " + ", ".join(masked)
        probe_ms = round((now - rnd.sent_at) * 1e3, 2)
        return placement.with_(reason=reason, probed=list(rnd.asked), probe_ms=probe_ms)

    def _placement(self, decision: Any, spec: TaskSpec, started: float) -> Placement:
        """The typed record of a policy's decision (and its work counted for the target)."""
        target = int(decision.target)
        if target != self.self_index:
            self.pending[target] += spec.demand_steps
            self.sent_work[target] += spec.demand_steps
        elapsed = time.perf_counter() - started
        self.decision_s.append(elapsed)
        self.decisions_made += 1
        peer = self.table.get(target)
        where = (
            self.identity
            if peer is None
            else {
                "node": peer.node,
                "name": peer.name,
                "endpoint": peer.endpoint,
            }
        )
        return Placement(
            local=target == self.self_index,
            target=target,
            **where,
            policy=decision.policy,
            reason=decision.reason,
            probs=[round(float(x), 4) for x in decision.probs],
            decision_us=round(elapsed * 1e6, 1),  # state + policy, as in status' decisions
        )

    def poll_ms(self, default_ms: int, now: float) -> int:
        """The loop's poll timeout: shorter while a probe round's deadline is nearer."""
        deadline = self.probes.next_deadline() if self.probes is not None else None
        if deadline is None:
            return default_ms
        return max(0, min(default_ms, math.ceil((deadline - now) * 1000)))
