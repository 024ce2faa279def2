"""The cluster's side of partial-view gossip: what ``Cluster`` calls on its loop thread when
``gossip = "partial"``. The decisions are ``PartialView``'s (pure); this sends the messages,
writes relayed hints into the peer table and marks a dead member's link down.

A relayed report is written into the peer's stored ``info`` (its load and speed, after
``sanitize_report``) with its age-corrected birth time as ``info_at``: the policies read it
as they read today's gossip. It never changes the peer's link state (``PeerState``), which
still learns only from this agent's own link.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from typing import Any

from dedgeai.agent.cluster.gossip_sanity import sanitize_report
from dedgeai.agent.cluster.links import GOSSIP_ID
from dedgeai.agent.cluster.partial_view import MAX_SERVED, PartialView, entry_of
from dedgeai.agent.cluster.peers import PeerState, Silent
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.core import Effect, Route, Send

# ``dedgeai.agent.cluster.coordinator.Cluster``; not imported, even for typing: the
# coordinator imports this module, and the package has no import circles.
Cluster = Any

log = logging.getLogger("dedgeai.agent.cluster.partial_gossip")

_ids = itertools.count(1)


def new_view(cluster: Cluster, seed: int) -> PartialView | None:
    """The partial view for ``gossip = "partial"``; None for all-to-all gossip."""
    config = cluster.config
    if config.gossip != "partial":
        return None
    return PartialView(
        (peer.slot for peer in cluster.table),
        fanout=config.gossip_fanout,
        digest_entries=config.gossip_digest_entries,
        suspect_intervals=config.suspect_intervals,
        interval_s=cluster.interval_s,
        seed=seed,
    )


def _view(cluster: Cluster) -> PartialView:
    assert cluster.partial is not None
    return cluster.partial


def partial_fields(cluster: Cluster, now: float) -> dict[str, Any]:
    """The generation and digest added to this agent's gossip (requests and replies)."""
    view = _view(cluster)
    reports = {q.slot: {**q.info, "node": q.node} for q in cluster.table if q.node and q.info}
    return {"gen": view.gen, "digest": view.digest(now, reports)}


def send_gossip(cluster: Cluster, slot: int, message: dict[str, Any], size: int = 0) -> bool:
    """One gossip request on this agent's link, counted by the meter when it left."""
    if not cluster.links.send(slot, message):
        return False
    cluster.gossip_meter.sent(size or len(p.encode(message)))
    return True


def _exchange(cluster: Cluster, slots: list[int], now: float) -> None:
    """Direct exchanges: our report and digest to each slot; its reply is due soon."""
    if not slots:
        return
    view = _view(cluster)
    message = p.envelope("gossip", GOSSIP_ID, **cluster.body(now), **partial_fields(cluster, now))
    size = len(p.encode(message))
    for slot in slots:
        send_gossip(cluster, slot, message, size)  # a send that fails is a silent target
        view.exchange_sent(slot, now)


def start_round(cluster: Cluster, now: float) -> list[Effect]:
    """One gossip interval: overdue suspects declared dead, then ``fanout`` exchanges."""
    view = _view(cluster)
    effects: list[Effect] = []
    for slot in view.overdue():
        effects += _declare_dead(cluster, slot, now)
    _exchange(cluster, view.start_round(), now)
    cluster.gossip_meter.mark(now)
    return effects


def _declare_dead(cluster: Cluster, slot: int, now: float) -> list[Effect]:
    """Our own checks of ``slot`` failed and no fresher report came: its link is down."""
    peer = cluster.table.by_slot[slot]
    old, new = cluster.table.apply_(slot, Silent(now, 0.0))  # 0: no grace left
    log.warning("peer %s (slot %d) is dead: direct and indirect probes failed", peer.endpoint, slot)
    if old is new or new is not PeerState.DOWN:
        return []
    cluster.links.reset(slot, now)
    return cluster.forwarding.reclaim_slot(slot, "peer dead (partial gossip probes failed)", now)


def _helpers(cluster: Cluster, target: int) -> list[int]:
    """Peers that may probe ``target`` for us: up on our own link, not masked. None when
    ``target``'s node id is unknown (a helper could not name it)."""
    view = _view(cluster)
    peer = cluster.table.get(target)
    if peer is None or peer.node is None:
        return []
    return [
        q.slot
        for q in cluster.table
        if q.slot != target and q.state is PeerState.UP and not view.masked(q.slot)
    ]


def timers(cluster: Cluster, now: float) -> list[Effect]:
    """Every loop turn: indirect probes for silent targets, suspects, failed acks."""
    view = _view(cluster)
    due = view.due(now, lambda slot: _helpers(cluster, slot))
    for target, helpers in due.ping_reqs:
        node = cluster.table.by_slot[target].node
        for helper in helpers:
            message = p.envelope("ping_req", f"ping-req-{next(_ids)}", target=node)
            send_gossip(cluster, helper, message)
    for slot in due.suspected:
        peer = cluster.table.by_slot[slot]
        log.info("peer %s (slot %d) is suspect: no direct or indirect answer", peer.endpoint, slot)
    effects: list[Effect] = []
    for slot in due.dead:  # its own checks failed after a relayed dead notice
        effects += _declare_dead(cluster, slot, now)
    for served in due.failed_acks:
        effects.append(_ack(cluster, served.route, served.request_id, served.target_node, False))
    return effects


def _ack(cluster: Cluster, route: Route, request_id: str, node: str, ok: bool) -> Send:
    reply = p.envelope("ping_ack", request_id, target=node, ok=ok)
    cluster.gossip_meter.sent(len(p.encode(reply)))
    return Send(route, reply)


def on_ping_req(cluster: Cluster, route: Route, msg: p.PingReq, now: float) -> list[Effect]:
    """A peer asks us to probe a member for it: one exchange of ours, acked when it answers
    (``heard``) or refused at the deadline (``timers``); at once when we cannot probe it."""
    cluster.gossip_meter.received(len(p.encode(p.envelope("ping_req", msg.id, **msg.body))))
    target = str(msg.body["target"])
    peer = cluster.table.by_node(target)
    view = cluster.partial
    if view is None or peer is None or peer.slot not in view.members:
        return [_ack(cluster, route, msg.id, target, False)]
    if len(view.served) >= MAX_SERVED:  # a flood: no gossip exchange of ours per request
        view.counters["ping_reqs_refused"] += 1
        return [_ack(cluster, route, msg.id, target, False)]
    view.serve(route, msg.id, peer.slot, target, now)
    message = p.envelope("gossip", GOSSIP_ID, **cluster.body(now), **partial_fields(cluster, now))
    send_gossip(cluster, peer.slot, message)
    return []


def on_ping_ack(cluster: Cluster, reply: p.Reply) -> None:
    """A helper's answer to our ``ping_req``: ok means the target answered it."""
    view = cluster.partial
    peer = cluster.table.by_node(str(reply.get("target")))
    if view is not None and peer is not None and reply.get("ok") is True:
        view.acked(peer.slot)


def heard(cluster: Cluster, slot: int, reply: p.Reply, now: float) -> list[Effect]:
    """Any reply from ``slot`` on our link (already applied to the peer table): alive; a
    gossip reply also brings its generation and digest. Acks the ping_reqs it settles."""
    view = _view(cluster)
    generation = None
    if reply.type == "gossip":
        started, gen = reply.get("started_at"), reply.get("gen")
        if isinstance(started, float) and isinstance(gen, int):
            generation = (started, gen)
    served = view.heard(slot, now, generation)
    effects: list[Effect] = [
        _ack(cluster, s.route, s.request_id, s.target_node, True) for s in served
    ]
    if reply.type == "gossip" and reply.get("digest") is not None:
        merge(cluster, reply.get("digest"), now)
    return effects


def on_request(cluster: Cluster, body: dict[str, Any], now: float) -> None:
    """A peer's gossip request: its own report and digest are relayed hints (anyone allowed
    to gossip could claim to be any node, so not a direct report)."""
    entries = list(body.get("digest") or [])
    if isinstance(body.get("gen"), int) and len(entries) < p.DIGEST_BOUNDS.items:
        entries.append(entry_of(body))
    if entries:
        merge(cluster, entries, now)


def merge(cluster: Cluster, entries: Any, now: float) -> None:
    """Merge a digest into the peer table's stored reports; start the checks it asks for."""
    view = _view(cluster)
    nodes = {q.node: q.slot for q in cluster.table if q.node}
    merged = view.merge(entries, now, nodes, cluster.core.node)
    for slot, load, born_at in merged.updates:
        peer = cluster.table.by_slot[slot]
        info, why = sanitize_report(peer.info or None, {**peer.info, **load}, cluster._capacity())
        if why:
            log.warning("slot %d relayed report: %s", slot, "; ".join(why))
        cluster.table.by_slot[slot] = replace(peer, info=info, info_at=born_at)
    _exchange(cluster, [s for s in merged.checks if view.wants_check(s)], now)


def gossip_status(cluster: Cluster, now: float) -> dict[str, Any]:
    """The ``gossip`` block of this agent's status row: mode, cost per second, counters."""
    out: dict[str, Any] = {"mode": cluster.config.gossip, **cluster.gossip_meter.stats(now)}
    view = cluster.partial
    if view is not None:
        out.update(fanout=view.fanout, digest_entries=view.digest_entries, **view.counters)
    return out
