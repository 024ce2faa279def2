"""The authority model: who sent a frame, what that role may send, whose tasks it may touch.

Pure tests of ``agent/security/authority.py`` and of the core's ownership rules, then real agents:
a keyless one that refuses peer messages from a client, and a CURVE one whose clients see
only their own tasks (issue 10, items 4, 5 and 7).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from dedgeai.agent.errors import ErrorCode, RemoteError
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.core import AgentCore, Persist, Send
from dedgeai.agent.node.protocol import NodeId, TaskId
from dedgeai.agent.node.tasks import Forwarded, TaskState, apply
from dedgeai.agent.security.authority import (
    LOCAL_CLIENT,
    LOCAL_PEER,
    Authority,
    Principal,
    Role,
    may_touch,
)
from dedgeai.agent.security.keys import authorize, generate_keypair
from dedgeai.models.backend import GenerationRequest
from tests.agent.test_core import FakeStore
from tests.agent.test_security import CurveAgent

ALICE = Principal("key:alice", Role.CLIENT)
BOB = Principal("key:bob", Role.CLIENT)
ADMIN = Principal("key:root", Role.ADMIN)
PEER = Principal("key:peer-b", Role.PEER)
ROUTE = (b"r",)


def _request(steps: int = 2) -> GenerationRequest:
    return GenerationRequest(prompt="a fox", steps=steps, width=256, height=256, seed=1)


def _submit(rid: str, task: str | None = None, **fields: Any) -> p.Submit:
    return p.Submit(rid, _request(), TaskId(task) if task else None, **fields)


def _core(max_queue: int = 4) -> tuple[AgentCore, FakeStore]:
    store = FakeStore()
    return AgentCore(NodeId("11111111-1111-4111-8111-111111111111"), max_queue, store), store


def _run(
    core: AgentCore, store: FakeStore, sender: Principal, msg: Any, now: float = 1.0
) -> list[dict]:
    effects = core.handle(ROUTE, msg, now, sender)
    store.persist(effects)
    return [e.message for e in effects if isinstance(e, Send)]


# --- principals and the message table ------------------------------------------------


def test_keyless_senders_are_one_principal_and_peers_only_from_peer_hosts():
    authority = Authority(curve=False, peer_endpoints=["tcp://127.0.0.1:7701"])
    assert authority.principal(None, "127.0.0.1") == LOCAL_PEER
    assert authority.principal(None, "10.9.9.9") == LOCAL_CLIENT
    assert authority.principal(None, None) == LOCAL_CLIENT  # ipc/inproc: no address
    lone = Authority(curve=False)  # one box, no peers: nobody speaks as a peer
    assert lone.principal(None, "127.0.0.1") == LOCAL_CLIENT
    lone.add_peer_endpoint("tcp://127.0.0.1:9")  # found later by mDNS
    assert lone.principal(None, "127.0.0.1") == LOCAL_PEER


def test_curve_roles_come_from_the_key():
    roles = {b"A" * 40: "admin", b"B" * 40: "client", b"C" * 40: "bogus"}
    authority = Authority(
        curve=True, role_of_key=roles.get, peer_keys=lambda: {b"P" * 40}, peer_endpoints=[]
    )
    assert authority.principal("P" * 40, None) == Principal("key:" + "P" * 40, Role.PEER)
    assert authority.principal("A" * 40, None).role is Role.ADMIN
    assert authority.principal("B" * 40, None).role is Role.CLIENT
    assert authority.principal("C" * 40, None).role is Role.CLIENT  # unknown role: least
    assert authority.principal("D" * 40, None).role is Role.CLIENT  # no role written
    assert authority.principal(None, "127.0.0.1").role is Role.CLIENT


@pytest.mark.parametrize(
    "msg",
    [
        p.Gossip("g", {"node": "x"}),
        _submit("s", origin="22222222-2222-4222-8222-222222222222"),
        _submit("s", owner="key:someone"),
        p.Probe("q"),
        p.Steal("t", "22222222-2222-4222-8222-222222222222", 1.0),
    ],
    ids=["gossip", "submit-origin", "submit-owner", "probe", "steal"],
)
def test_peer_messages_from_clients_and_admins_are_forbidden(msg):
    for sender in (LOCAL_CLIENT, ALICE, ADMIN):
        refusal = Authority.check(sender, msg)
        assert refusal is not None and refusal.code is ErrorCode.FORBIDDEN
    assert Authority.check(PEER, msg) is None


def test_client_messages_are_open_to_every_role():
    for msg in (_submit("s"), p.StatusRequest("s"), p.TasksRequest("t")):
        for sender in (LOCAL_CLIENT, ALICE, ADMIN, PEER):
            assert Authority.check(sender, msg) is None


# --- ownership in the core ------------------------------------------------------------


def test_clients_see_read_and_cancel_only_their_own_tasks():
    core, store = _core()
    [accepted] = _run(core, store, ALICE, _submit("a1"))
    task = TaskId(accepted["task"])
    assert core.tasks[task].owner == "key:alice"
    for msg in (p.ResultRequest("r", task), p.CancelRequest("c", task)):
        [reply] = _run(core, store, BOB, msg)
        assert reply["type"] == "error" and reply["code"] == "not_found"
    assert core.tasks[task].state is TaskState.QUEUED  # Bob's cancel touched nothing
    [listing] = _run(core, store, BOB, p.TasksRequest("t"))
    assert listing["tasks"] == []
    [listing] = _run(core, store, ALICE, p.TasksRequest("t"))
    assert [t["task"] for t in listing["tasks"]] == [task]
    [listing] = _run(core, store, ADMIN, p.TasksRequest("t"))
    assert [t["task"] for t in listing["tasks"]] == [task]
    replies = _run(core, store, ADMIN, p.CancelRequest("c", task))
    assert [r["type"] for r in replies if r["id"] == "c"] == ["cancelled"]
    [reply] = _run(core, store, BOB, p.ResultRequest("r", task))  # finished: still hidden
    assert reply["code"] == "not_found"


def test_a_task_id_of_another_client_cannot_be_resubmitted():
    core, store = _core()
    task = "33333333-3333-4333-8333-333333333333"
    _run(core, store, ALICE, _submit("a", task))
    [reply] = _run(core, store, BOB, _submit("b", task))
    assert reply["type"] == "error" and reply["code"] == "forbidden"
    [reply] = _run(core, store, ALICE, _submit("a2", task))  # the owner's retry: same task
    assert reply["type"] == "accepted" and reply["task"] == task


def test_a_forwarded_task_keeps_its_owner_and_its_forwarder_may_follow_it():
    core, store = _core()
    origin = "22222222-2222-4222-8222-222222222222"
    msg = _submit("f", "44444444-4444-4444-8444-444444444444", origin=origin, owner="key:alice")
    [accepted] = _run(core, store, PEER, msg)
    task = core.tasks[TaskId(accepted["task"])]
    assert task.owner == "key:alice" and task.placement["via"] == "key:peer-b"
    assert may_touch(ALICE, task) and may_touch(PEER, task) and not may_touch(BOB, task)
    [reply] = _run(core, store, PEER, p.ResultRequest("r", task.id))
    assert reply["type"] == "progress"


def test_origin_naming_this_agent_is_refused():
    core, store = _core()
    [reply] = _run(core, store, PEER, _submit("f", origin=core.node))
    assert reply["code"] == "bad_field" and reply["field"] == "origin"


def test_admission_counts_forwarded_tasks_too():
    """Item 7: a busy origin's forwarded tasks come back to it; they count from the start."""
    core, store = _core(max_queue=2)
    for rid in ("a", "b"):
        [accepted] = _run(core, store, ALICE, _submit(rid))
        task = core.tasks[TaskId(accepted["task"])]
        core.queue.remove(task.id)  # what dispatch does when the placer forwards it
        core.tasks[task.id] = forwarded = apply(task, Forwarded(1.0, {"target": 1}))
        store.persist([Persist(forwarded)])
    assert not core.queue and core.owned() == 2
    [reply] = _run(core, store, ALICE, _submit("c"))
    assert reply["code"] == "busy"


def test_storage_errors_refuse_new_tasks_but_serve_the_rest():
    core, store = _core()
    [accepted] = _run(core, store, ALICE, _submit("a"))
    core.storage_error = "database or disk is full"
    [reply] = _run(core, store, ALICE, _submit("b"))
    assert reply["code"] == "storage" and "disk is full" in reply["message"]
    [reply] = _run(core, store, ALICE, p.ResultRequest("r", TaskId(accepted["task"])))
    assert reply["type"] == "progress"


def test_held_forwarded_tasks_wait_after_a_freeze_and_run_when_asked_again():
    """Item 10: a frozen agent runs no forwarded task its origin may have taken back."""
    core, store = _core()
    origin = "22222222-2222-4222-8222-222222222222"
    ids = [f"5555555{i}-5555-4555-8555-555555555555" for i in range(3)]
    for task in ids:
        _run(core, store, PEER, _submit("f", task, origin=origin))
    store.persist(core.plan(2.0))  # the first one runs
    assert core.running == ids[0]
    effects = core.hold_forwarded(3.0)
    assert not core.queue and set(core.held) == set(ids)
    assert [type(e).__name__ for e in effects] == ["CancelJob"]
    assert core.plan(3.0) == []  # nothing starts while they are held
    # the origin still wants it and asks again, after the freeze (time moves forward)
    _run(core, store, PEER, _submit("again", ids[1], origin=origin), now=4.0)
    assert list(core.queue) == [ids[1]] and ids[1] not in core.held


def test_unjournaled_tasks_are_forgotten():
    core, store = _core()
    [accepted] = _run(core, store, ALICE, _submit("a"))
    core.drop_unjournaled(TaskId(accepted["task"]))
    assert not core.tasks and not core.queue and not core.subscribers


# --- real agents ------------------------------------------------------------------------


def test_a_lone_keyless_agent_refuses_peer_messages(shared_agent, raw_peer):
    peer = raw_peer(shared_agent.endpoint)
    gossip = p.envelope(
        "gossip",
        "g1",
        node="66666666-6666-4666-8666-666666666666",
        sent_at=1.0,
        backlog_steps=0.0,
        interval_load_steps=float("nan"),
    )
    peer.send(p.encode(gossip))
    reply = peer.recv()
    assert reply.type == "error" and reply.get("code") in ("forbidden", "bad_field")
    forward = p.envelope(
        "submit", "s1", prompt="x", origin="66666666-6666-4666-8666-666666666666", wait=False
    )
    peer.send(p.encode(forward))
    reply = peer.recv()
    assert reply.type == "error" and reply.get("code") == "forbidden"
    with shared_agent.client() as client:
        assert client.status()["queue"]["held"] == 0


@pytest.fixture(scope="module")
def owned_agent(tmp_path_factory: pytest.TempPathFactory) -> Any:
    agent = CurveAgent(tmp_path_factory.mktemp("owned"), emulated_steps_per_second=400.0)
    authorized = agent.directory / "keys" / "authorized_keys"
    agent.alice = generate_keypair(agent.directory / "alice")
    agent.bob = generate_keypair(agent.directory / "bob")
    agent.root = generate_keypair(agent.directory / "root")
    authorize(authorized, agent.alice.public_path, "alice")
    authorize(authorized, agent.bob.public_path, "bob")
    authorize(authorized, agent.root.public_path, "root", role="admin")
    agent.start()
    yield agent
    agent.close()


def test_curve_clients_own_their_tasks(owned_agent):
    """Item 5: two authorized keys on one agent; each sees only its own; admin sees all."""
    with owned_agent.client_with(owned_agent.alice, timeout_s=5.0) as alice:
        accepted = alice.submit(_request(), wait=False)
        task = accepted.get("task")
        gossip = p.envelope(
            "gossip",
            "g",
            node="66666666-6666-4666-8666-666666666666",
            sent_at=1.0,
            backlog_steps=0.0,
            interval_load_steps=1.0,
        )
        reply = alice.request(gossip, raise_errors=False)  # item 4: a client posing as a peer
        assert reply.type == "error" and reply.get("code") == "forbidden"
        assert task in [t["task"] for t in alice.tasks()]
    with owned_agent.client_with(owned_agent.bob, timeout_s=5.0) as bob:
        assert task not in [t["task"] for t in bob.tasks()]
        with pytest.raises(RemoteError):
            bob.result(task)
        with pytest.raises(RemoteError):
            bob.cancel(task)
    with owned_agent.client_with(owned_agent.root, timeout_s=5.0) as root:
        assert task in [t["task"] for t in root.tasks()]


def test_principal_is_frozen_and_hashable():
    assert {ALICE, replace(ALICE)} == {ALICE}
