"""Typed wire records: Placement, AgentStatus, ClusterStatus (to_wire / from_wire)."""

from __future__ import annotations

import json
import pickle

import msgpack
import pytest

from dedgeai.agent.node.records import (
    PLACEMENT_FIELDS,
    AgentStatus,
    ClusterStatus,
    Placement,
)
from dedgeai.agent.node.tasks import Reclaimed, TaskRecord, TaskState, apply
from dedgeai.models.backend import GenerationRequest

DECIDED = {"local": False, "target": 1, "node": "n-b", "name": "b", "endpoint": "tcp://b:1",
           "policy": "lad", "reason": "drawn 0.7", "probs": [0.3, 0.7], "decision_us": 41.5}  # fmt: skip


def test_a_misspelt_placement_field_is_an_error_not_a_silent_none() -> None:
    placement = Placement(DECIDED)
    assert placement.target == 1 and placement.policy == "lad" and placement.probs == [0.3, 0.7]
    with pytest.raises(AttributeError):
        _ = placement.taget  # type: ignore[attr-defined]
    with pytest.raises(KeyError):
        placement.get("polcy")
    with pytest.raises(KeyError):
        _ = placement["redispatch"]
    with pytest.raises(KeyError):
        Placement(targte=1)
    with pytest.raises(TypeError):
        Placement(target="1")
    with pytest.raises(TypeError):
        Placement(target=True)  # a bool is no slot
    with pytest.raises(TypeError):
        placement["target"] = 2  # type: ignore[index]


def test_defaults_changes_and_what_a_redispatch_carries() -> None:
    empty = Placement()
    assert empty.to_wire() == {} and not empty
    assert empty.redispatches == 0 and empty.avoid == [] and empty.force_local is False
    assert empty.local is None and empty.name is None
    moved = Placement(DECIDED).with_(avoid=(1,), redispatches=2, reclaimed="peer down")
    assert moved.avoid == [1] and moved.carried() == {
        "avoid": [1],
        "redispatches": 2,
        "reclaimed": "peer down",
    }
    assert Placement(DECIDED).to_wire() == DECIDED  # unchanged by with_


def test_the_wire_form_is_what_msgpack_and_the_journal_take() -> None:
    placement = Placement(DECIDED, redispatches=1, avoid=[2], force_local=False)
    wire = placement.to_wire()
    assert type(wire) is dict
    assert msgpack.unpackb(msgpack.packb(placement)) == wire
    assert Placement.from_wire(json.loads(json.dumps(placement))) == placement
    assert pickle.loads(pickle.dumps(placement)) == placement


def test_from_wire_is_tolerant_of_unknown_keys_and_strict_on_types() -> None:
    assert Placement.from_wire(None) == {}
    future = Placement.from_wire({**DECIDED, "carbon_g": 3.2})  # a newer agent's key
    assert future.to_wire() == DECIDED
    assert Placement.from_wire({"policy": "local"}).policy == "local"  # an older row
    with pytest.raises(ValueError, match="target"):
        Placement.from_wire({"target": "one"})
    with pytest.raises(ValueError, match="map"):
        Placement.from_wire(["target", 1])


def test_every_placement_field_round_trips() -> None:
    samples = {int: 3, float: 1.5, str: "x", bool: True, list: [1, 2]}
    full = {k: samples[kinds[0]] for k, kinds in PLACEMENT_FIELDS.items()}
    assert Placement.from_wire(Placement(full).to_wire()).to_wire() == full


def test_a_task_record_holds_a_placement_even_from_an_old_journal_map() -> None:
    request = GenerationRequest(prompt="x", steps=4, width=256, height=256)
    task = TaskRecord("t", "origin", request, 1, 0.0, TaskState.FORWARDED, placement=DECIDED)  # type: ignore[arg-type]
    assert isinstance(task.placement, Placement) and task.placement.target == 1
    back = apply(task, Reclaimed("peer down"))
    assert isinstance(back.placement, Placement)
    assert back.placement.redispatches == 1 and back.placement.reclaimed == "peer down"
    with pytest.raises(ValueError):
        TaskRecord("t", "o", request, 1, 0.0, placement={"target": [1]})  # type: ignore[arg-type]


CLUSTER = {"self_index": 0, "n_servers": 2, "gossip_interval_s": 1.0,
           "scheduler": {"policy": "lad", "state": "ready"}, "decisions": {"count": 0},
           "forwarding": {"outstanding": 0, "forwarded": 1, "reclaimed": 0},
           "servers": [{"slot": 0, "self": True, "state": "up"},
                       {"slot": 1, "self": False, "state": "down", "endpoint": "tcp://b:1"}],
           "discovered_unused": []}  # fmt: skip
STATUS = {"agent": {"node": "n-a", "state": "ready", "accepting": True},
          "backend": {"name": "emulated"}, "telemetry": {"source": "none"},
          "queue": {"queued": 1, "max_queue": 64}, "capacity": {"steps_per_second": 4.0},
          "counters": {"accepted": 3}, "storage": {"ok": True}, "retention": {"files": 0},
          "cluster": CLUSTER}  # fmt: skip


def test_the_status_body_round_trips_and_tolerates_what_it_does_not_know() -> None:
    status = AgentStatus.from_wire({**STATUS, "type": "agent_status", "id": "r1", "v": 1})
    assert status.to_wire() == STATUS and status.state == "ready"
    assert (
        isinstance(status.cluster, ClusterStatus) and status.cluster.servers[1]["state"] == "down"
    )
    single = AgentStatus.from_wire({**STATUS, "cluster": None, "future_section": {}})
    assert single.cluster is None and single.to_wire()["cluster"] is None
    older = AgentStatus.from_wire({k: v for k, v in STATUS.items() if k != "retention"})
    assert older.retention == {}
    with pytest.raises(ValueError, match="queue"):
        AgentStatus.from_wire({**STATUS, "queue": [1]})
    with pytest.raises(ValueError, match="n_servers"):
        ClusterStatus.from_wire({**CLUSTER, "n_servers": "2"})
