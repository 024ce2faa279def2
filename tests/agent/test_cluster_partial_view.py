"""Partial-view gossip (``gossip = "partial"``): the pure view's merge rules and SWIM timers,
the wire checks of its messages, and four real agents on loopback with fanout 1."""

from __future__ import annotations

import math
import uuid
from typing import Any

import msgpack
import pytest

from dedgeai.agent.cluster.partial_view import (
    ALIVE,
    DEAD,
    INDIRECT_PROBES,
    MAX_DIGEST_ENTRIES,
    SUSPECT,
    GossipMeter,
    PartialView,
    check_entry,
)
from dedgeai.agent.errors import ErrorCode, ProtocolError
from dedgeai.agent.lab.harness import cluster_view, wait_for
from dedgeai.agent.node import protocol as p
from dedgeai.agent.security.authority import Authority, Principal, Role

STARTED = 1_700_000_000.0
NODES = {slot: str(uuid.UUID(int=slot + 1)) for slot in range(40)}
SELF = str(uuid.UUID(int=999))


def view(n: int = 4, **settings: Any) -> PartialView:
    args = {"fanout": 1, "digest_entries": 16, "suspect_intervals": 1, "interval_s": 1.0}
    return PartialView(range(1, n), seed=7, **{**args, **settings})


def entry(slot: int, gen: int, **fields: Any) -> dict[str, Any]:
    base = {
        "node": NODES[slot],
        "started_at": STARTED,
        "gen": gen,
        "age_s": 0.5,
        "state": ALIVE,
        "backlog_steps": 12.0,
        "interval_load_steps": 3.0,
        "capacity_steps_per_s": 50.0,
        "accepting": True,
    }
    return {**base, **fields}


def nodes_of(v: PartialView) -> dict[str, int]:
    return {NODES[s]: s for s in v.members}


def heard_all(v: PartialView, now: float = 0.0, gen: int = 5) -> None:
    for slot in v.members:
        v.heard(slot, now, (STARTED, gen))


# --- entries -------------------------------------------------------------------------


def test_a_well_formed_entry_is_kept_typed() -> None:
    checked = check_entry(entry(1, 3, backlog_steps=4, queued=2, backlog_s=None))
    assert checked is not None
    assert checked["backlog_steps"] == 4.0 and type(checked["backlog_steps"]) is float
    assert checked["queued"] == 2 and checked["backlog_s"] is None


@pytest.mark.parametrize(
    "bad",
    [
        {"backlog_steps": math.nan},
        {"interval_load_steps": math.inf},
        {"capacity_steps_per_s": 1e300},
        {"backlog_steps": -1.0},
        {"backlog_steps": "12"},
        {"gen": True},
        {"gen": 1.5},
        {"gen": -1},
        {"gen": 2**60},
        {"started_at": math.nan},
        {"age_s": 1e12},
        {"state": "zombie"},
        {"node": "not-a-uuid"},
        {"node": None},
        {"accepting": 1},
        {"queued": 2.0},
        {"extra": 1},
        {"telemetry": {"a": 1}},
    ],
)
def test_an_entry_with_any_bad_field_is_refused(bad: dict[str, Any]) -> None:
    assert check_entry({**entry(1, 3), **bad}) is None


@pytest.mark.parametrize("missing", ["node", "started_at", "gen", "age_s", "state"])
def test_an_entry_without_a_required_field_is_refused(missing: str) -> None:
    raw = entry(1, 3)
    del raw[missing]
    assert check_entry(raw) is None


@pytest.mark.parametrize("raw", [None, [], "x", 3, [entry(1, 3)]])
def test_an_entry_that_is_not_a_map_is_refused(raw: Any) -> None:
    assert check_entry(raw) is None


# --- merge rules ---------------------------------------------------------------------


def test_a_newer_relayed_report_is_merged_and_an_older_or_equal_one_is_not() -> None:
    v = view()
    heard_all(v, now=0.0, gen=5)
    merged = v.merge([entry(1, 6, age_s=0.25)], 10.0, nodes_of(v), SELF)
    assert [(s, load["backlog_steps"]) for s, load, _ in merged.updates] == [(1, 12.0)]
    assert merged.updates[0][2] == pytest.approx(9.75)  # birth time: now - age
    assert v.members[1].generation == (STARTED, 6) and v.members[1].relayed == 1
    for gen in (6, 5, 4):
        again = v.merge([entry(1, gen)], 11.0, nodes_of(v), SELF)
        assert again.updates == [] and again.ignored == 1
    assert v.members[1].generation == (STARTED, 6)


def test_generations_order_by_start_time_then_counter_and_a_direct_report_always_wins() -> None:
    v = view()
    heard_all(v, gen=5)
    v.merge([entry(1, 9)], 1.0, nodes_of(v), SELF)
    v.heard(1, 2.0, (STARTED, 7))  # the member itself, on our link: the truth
    assert v.members[1].generation == (STARTED, 7)
    # a relayed restart (a new started_at) is ignored: only the member's own link says so
    restarted = v.merge([entry(1, 1, started_at=STARTED + 60)], 3.0, nodes_of(v), SELF)
    assert restarted.updates == [] and v.members[1].generation == (STARTED, 7)
    v.heard(1, 4.0, (STARTED + 60, 1))
    newer = v.merge([entry(1, 2, started_at=STARTED + 60)], 5.0, nodes_of(v), SELF)
    assert [s for s, _, _ in newer.updates] == [1]


def test_entries_about_this_box_unknown_nodes_or_members_never_heard_are_ignored() -> None:
    v = view()
    v.heard(1, 0.0, (STARTED, 1))  # slot 2 and 3: never heard on our own link
    nodes = {**nodes_of(v), SELF: 0}
    stranger = entry(1, 9, node=str(uuid.uuid4()))
    merged = v.merge([entry(1, 9, node=SELF), stranger, entry(2, 9)], 1.0, nodes, SELF)
    assert merged.updates == [] and merged.ignored == 3 and merged.dropped == 0


def test_hostile_entries_are_dropped_one_by_one_and_an_oversized_list_whole() -> None:
    v = view()
    heard_all(v, gen=1)
    mixed = [entry(1, 2, backlog_steps=math.nan), "junk", {**entry(2, 2), "gen": True}, entry(3, 2)]
    merged = v.merge(mixed, 1.0, nodes_of(v), SELF)
    assert merged.dropped == 3 and [s for s, _, _ in merged.updates] == [3]
    huge = [entry(1, 3 + i) for i in range(MAX_DIGEST_ENTRIES + 1)]
    too_many = v.merge(huge, 2.0, nodes_of(v), SELF)
    assert too_many.updates == [] and too_many.dropped == MAX_DIGEST_ENTRIES + 1
    assert v.merge({"not": "a list"}, 2.0, nodes_of(v), SELF).dropped == 1
    assert v.members[1].generation == (STARTED, 1)


def test_a_relayed_dead_notice_only_starts_this_boxs_own_check() -> None:
    v = view()
    heard_all(v, gen=1)
    v.start_round()
    merged = v.merge([entry(2, 9, state=DEAD)], 1.0, nodes_of(v), SELF)
    assert merged.checks == [2] and merged.updates == []
    assert v.members[2].state == ALIVE and not v.masked(2)
    v.exchange_sent(2, 1.0)  # the cluster starts the check...
    v.heard(2, 1.2, (STARTED, 2))  # ...and the member answers: nothing happens to it
    assert v.members[2].state == ALIVE and v.overdue() == []


def test_a_dead_notice_then_failed_own_checks_is_dead_at_once_unless_ours_is_fresher() -> None:
    v = view()
    heard_all(v, gen=4)
    v.start_round()
    v.merge([entry(2, 4, state=DEAD), entry(3, 3, state=DEAD)], 1.0, nodes_of(v), SELF)
    for slot in (2, 3):
        v.exchange_sent(slot, 1.0)
    v.due(1.6, lambda s: [1])
    due = v.due(2.2, lambda s: [1])
    assert due.dead == [2] and v.members[2].state == DEAD  # its report was no older than ours
    assert due.suspected == [3] and v.members[3].state == SUSPECT  # ours is fresher: wait


# --- the digest ------------------------------------------------------------------------


def test_the_digest_is_bounded_freshest_first_with_notices_ahead() -> None:
    v = view(n=40, digest_entries=16)
    reports = {}
    for slot in v.members:
        v.heard(slot, float(slot), (STARTED, 1))  # slot s heard at time s: higher is fresher
        reports[slot] = {"node": NODES[slot], "backlog_steps": 1.0, "interval_load_steps": 0.0}
    v.members[5].state, v.members[5].notices = SUSPECT, 2
    digest = v.digest(100.0, reports)
    assert len(digest) == 16
    assert digest[0]["node"] == NODES[5] and digest[0]["state"] == SUSPECT
    assert [e["node"] for e in digest[1:4]] == [NODES[39], NODES[38], NODES[37]]
    assert all(check_entry(e) is not None for e in digest)
    assert digest[1]["age_s"] == pytest.approx(100.0 - 39)
    assert view(digest_entries=0).digest(1.0, reports) == []


# --- failure detection ------------------------------------------------------------------


def test_a_silent_target_gets_indirect_probes_then_is_suspect_masked_then_dead() -> None:
    v = view(n=6, suspect_intervals=2)
    heard_all(v, gen=1)
    v.start_round()
    v.exchange_sent(1, 0.0)
    assert v.due(0.4, lambda s: list(v.members)).ping_reqs == []  # not due yet
    due = v.due(0.6, lambda s: list(v.members))
    ((target, helpers),) = due.ping_reqs
    assert target == 1 and len(helpers) == INDIRECT_PROBES and 1 not in helpers
    assert v.members[1].state == ALIVE and not v.masked(1)
    due = v.due(1.7, lambda s: list(v.members))
    assert due.suspected == [1] and v.masked(1) and v.members[1].state == SUSPECT
    v.start_round()
    assert v.overdue() == []  # one round of suspicion: not yet (suspect_intervals = 2)
    v.start_round()
    assert v.overdue() == [1] and v.members[1].state == DEAD
    assert v.members[1].detected_after == 3


def test_a_fresher_relayed_report_keeps_a_suspect_alive_but_masked_until_heard_directly() -> None:
    v = view()
    heard_all(v, gen=1)
    v.start_round()
    v.exchange_sent(1, 0.0)
    v.due(0.6, lambda s: [])  # no helper: suspect at once
    assert v.members[1].state == SUSPECT and v.masked(1)
    v.start_round()
    merged = v.merge([entry(1, 2)], 2.0, nodes_of(v), SELF)
    assert merged.checks == [1]  # check our own link again
    assert v.members[1].state == ALIVE and v.masked(1)
    assert v.overdue() == []
    v.heard(1, 2.1)
    assert not v.masked(1)


def test_an_ack_through_a_helper_ends_the_check_and_a_never_heard_member_is_not_suspected() -> None:
    v = view()
    heard_all(v, gen=1)
    v.exchange_sent(1, 0.0)
    assert v.due(0.6, lambda s: [2, 3]).ping_reqs
    v.acked(1)
    assert v.due(5.0, lambda s: [2, 3]).suspected == []
    fresh = view()
    fresh.exchange_sent(1, 0.0)  # never heard: its link is "connecting", not suspect
    assert fresh.due(0.6, lambda s: [2, 3]).ping_reqs == []
    assert fresh.due(5.0, lambda s: [2, 3]).suspected == [] and not fresh.masked(1)


def test_a_served_ping_req_is_acked_when_its_target_answers_or_fails_at_its_deadline() -> None:
    v = view()
    v.serve(("r1",), "id-1", 2, NODES[2], now=0.0)
    v.serve(("r2",), "id-2", 3, NODES[3], now=0.0)
    (served,) = v.heard(2, 0.1, (STARTED, 1))
    assert served.route == ("r1",) and served.request_id == "id-1"
    (failed,) = v.due(1.0, lambda s: []).failed_acks
    assert failed.request_id == "id-2" and v.served == []


def test_the_round_robin_visits_every_member_once_per_cycle_with_distinct_targets() -> None:
    v = view(n=9, fanout=3)
    seen: list[int] = []
    for _ in range(8):
        targets = v.start_round()
        assert len(targets) == len(set(targets)) == 3
        seen += targets
    assert set(seen[:8]) == set(range(1, 9))  # one full cycle first
    assert v.gen == 8


def test_the_meter_gives_rates_over_recent_rounds() -> None:
    meter = GossipMeter(0.0)
    meter.sent(100, count=4)
    meter.received(50)
    meter.mark(2.0)
    stats = meter.stats(2.0)
    assert stats["sent_msgs"] == 4 and stats["sent_bytes"] == 400
    assert stats["sent_msgs_per_s"] == 2.0 and stats["recv_bytes_per_s"] == 25.0


# --- wire checks ------------------------------------------------------------------------


def _frame(kind: str, **fields: Any) -> list[bytes]:
    return [msgpack.packb({"v": p.PROTOCOL_VERSION, "type": kind, "id": "x1", **fields})]


def _gossip(**fields: Any) -> dict[str, Any]:
    body = {"node": NODES[1], "sent_at": 1.0, "backlog_steps": 0.0, "interval_load_steps": 0.0}
    return {**body, **fields}


def test_ping_req_and_ping_ack_are_checked_field_by_field() -> None:
    msg = p.parse_request(_frame("ping_req", target=NODES[2]))
    assert isinstance(msg, p.PingReq) and isinstance(msg, p.Gossip)  # peer-only
    for bad in ({}, {"target": "x"}, {"target": NODES[2], "more": 1}):
        with pytest.raises(ProtocolError):
            p.parse_request(_frame("ping_req", **bad))
    ack = p.parse_peer_reply(_frame("ping_ack", target=NODES[2], ok=True))
    assert ack.get("ok") is True
    with pytest.raises(ProtocolError):
        p.parse_peer_reply(_frame("ping_ack", target=NODES[2], ok=1))


def test_only_a_peer_may_send_ping_req() -> None:
    msg = p.parse_request(_frame("ping_req", target=NODES[2]))
    for role in (Role.CLIENT, Role.ADMIN):
        refusal = Authority.check(Principal("key:x", role), msg)
        assert refusal is not None and refusal.code is ErrorCode.FORBIDDEN
    assert Authority.check(Principal("key:p", Role.PEER), msg) is None


def test_a_gossip_digest_is_bounded_on_the_wire() -> None:
    ok = p.parse_request(_frame("gossip", **_gossip(gen=3, digest=[entry(2, 1)])))
    assert ok.body["digest"][0]["node"] == NODES[2]
    bad = [
        {"gen": -1},
        {"gen": 1.0},
        {"digest": [entry(2, 1, backlog_steps=math.nan)]},
        {"digest": [entry(2, 1)] * (p.DIGEST_BOUNDS.items + 1)},
        {"digest": [[1, 2]]},
        {"digest": "x"},
    ]
    for fields in bad:
        with pytest.raises(ProtocolError):
            p.parse_request(_frame("gossip", **_gossip(**fields)))


# --- real agents ------------------------------------------------------------------------


def _rows(agent: Any) -> dict[str, dict[str, Any]]:
    return {r["endpoint"]: r for r in cluster_view(agent)["servers"]}


def test_four_agents_with_fanout_1_learn_every_report_through_relays_and_agree_on_a_death(
    cluster_factory: Any,
) -> None:
    agents = cluster_factory(
        {}, {}, {}, {}, gossip="partial", gossip_fanout=1, policy="round-robin"
    )

    def relayed_everywhere() -> bool:
        for agent in agents:
            rows = _rows(agent)
            peers = [r for e, r in rows.items() if e != agent.endpoint]
            if not all(r.get("relayed", 0) > 0 and r["member"] == ALIVE for r in peers):
                return False
        return True

    wait_for(relayed_everywhere, 60.0, "every agent to merge a relayed report of every other")
    own = _rows(agents[0])[agents[0].endpoint]["gossip"]
    assert own["mode"] == "partial" and own["sent_msgs"] > 0 and own["recv_bytes"] > 0

    victim, survivors = agents[3], agents[:3]
    assert victim.proc is not None
    victim.proc.kill()
    victim.proc.wait(timeout=10)

    def dead_everywhere() -> bool:
        return all(_rows(a)[victim.endpoint]["member"] == DEAD for a in survivors)

    wait_for(dead_everywhere, 60.0, "every survivor to declare the killed agent dead")
    counters = [_rows(a)[a.endpoint]["gossip"] for a in survivors]
    assert sum(c["ping_reqs_sent"] for c in counters) > 0  # SWIM's indirect probes ran
    assert sum(c["ping_reqs_served"] for c in counters) > 0
    for agent in survivors:
        row = _rows(agent)[victim.endpoint]
        assert row["state"] == "down"
        # round-robin over 3 peers reaches it within 2N - 1 = 5 rounds; then one round of
        # direct and indirect probes, one of suspicion
        assert row["detected_after_intervals"] <= 9

    def survivors_alive() -> bool:
        return all(
            _rows(a)[b.endpoint]["member"] == ALIVE
            for a in survivors
            for b in survivors
            if a is not b
        )

    wait_for(survivors_alive, 30.0, "the survivors to see each other alive")


def test_a_peer_cannot_lie_a_live_member_dead_and_a_nan_digest_is_refused(
    cluster_factory: Any, raw_peer: Any
) -> None:
    a, b = cluster_factory(  # 0.5 s: a's own check of b has 0.25 s, even on a loaded box
        {}, {}, gossip="partial", gossip_fanout=1, policy="round-robin", gossip_interval_s=0.5
    )
    wait_for(lambda: _rows(a)[b.endpoint].get("generation"), 30.0, "a to hold b's report")
    b_row = _rows(a)[b.endpoint]
    liar = raw_peer(a.endpoint)
    started = b_row["generation"][0]  # the real start time and a far newer generation
    lie = {**entry(1, 2**40, node=b_row["node"], started_at=started), "state": DEAD}
    gossip = {**_gossip(node=str(uuid.uuid4()), gen=1), "digest": [lie]}
    before = _rows(a)[a.endpoint]["gossip"]
    for i in range(5):
        liar.send(
            msgpack.packb({"v": p.PROTOCOL_VERSION, "type": "gossip", "id": f"l{i}", **gossip})
        )
        assert liar.recv().type == "gossip"
    nan = {**gossip, "digest": [{**lie, "backlog_steps": math.nan}]}
    liar.send(msgpack.packb({"v": p.PROTOCOL_VERSION, "type": "gossip", "id": "nan", **nan}))
    refused = liar.recv()
    assert refused.type == "error" and refused.get("code") == "bad_field"
    # a's own checks of b (started by the notices) succeed: b is never suspected or dead
    wait_for(
        lambda: _rows(a)[a.endpoint]["gossip"]["rounds"] >= before["rounds"] + 10,
        30.0,
        "ten more gossip rounds",
    )
    row, own = _rows(a)[b.endpoint], _rows(a)[a.endpoint]["gossip"]
    assert row["member"] == ALIVE and row["state"] == "up" and not row["masked"]
    assert own["declared_dead"] == before["declared_dead"] == 0
    assert own["ignored"] > before["ignored"]


def test_a_flood_of_ping_reqs_costs_at_most_max_served_exchanges() -> None:
    """Each served ping_req is a gossip exchange of ours: a peer that floods them gets
    "not ok" beyond ``MAX_SERVED`` pending ones instead of one message per request."""
    from types import SimpleNamespace

    from dedgeai.agent.cluster import partial_gossip
    from dedgeai.agent.cluster.partial_view import MAX_SERVED, GossipMeter

    v = view()
    sent: list[int] = []
    target = SimpleNamespace(slot=2, node=NODES[2], info={})

    class Table:
        def by_node(self, node: str) -> Any:
            return target if node == NODES[2] else None

        def __iter__(self) -> Any:
            return iter([target])

    cluster = SimpleNamespace(
        partial=v,
        table=Table(),
        gossip_meter=GossipMeter(0.0),
        links=SimpleNamespace(send=lambda slot, message: sent.append(slot) is None),
        body=lambda now: {"node": NODES[0], "sent_at": now},
    )
    acks = []
    for i in range(MAX_SERVED + 10):
        msg = p.PingReq(f"q{i}", {"target": NODES[2]})
        acks += partial_gossip.on_ping_req(cluster, ("flood",), msg, 1.0)  # type: ignore[arg-type]
    assert len(sent) == MAX_SERVED  # one exchange per served request, no more
    assert len(acks) == 10 and all(a.message["ok"] is False for a in acks)
    assert v.counters["ping_reqs_refused"] == 10 and len(v.served) == MAX_SERVED
