"""Typed records that cross the wire: a task's ``Placement`` and the ``status`` body.

Standard library only, so that the node and the client (no torch) both import them. Each has
``to_wire()`` (what is sent, and what the journal stores) and ``from_wire()`` (tolerant of
keys it does not know, as a newer or older agent may send; strict on the types of those it
does). A misspelt field is an AttributeError, KeyError or TypeError, never a silent ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

_NUMBER = (int, float)

# Every key a placement may carry, and the types its value may have (None: not set).
PLACEMENT_FIELDS: dict[str, tuple[type, ...]] = {
    "local": (bool,),  # decided: runs at its origin
    "target": (int,),  # the slot it runs on
    "node": (str,),  # the target's node id, name and endpoint
    "name": (str,),
    "endpoint": (str,),
    "policy": (str,),  # who decided: lad, greedy, round-robin, local...
    "reason": (str,),
    "probs": (list,),  # the policy's probability per slot
    "decision_us": _NUMBER,  # state + policy time
    "probed": (list,),  # pod2: the peer slots asked for their load before deciding
    "probe_ms": _NUMBER,  # pod2: how long the decision waited for their answers
    "redispatches": (int,),  # carried across re-dispatches (``CARRIED``)
    "reclaimed": (str,),  # why it was last taken back from a peer
    "avoid": (list,),  # slots that lost it before: not chosen again
    "force_local": (bool,),  # re-dispatched too often: runs at its origin
    "forwarded_by": (str,),  # at a peer: the origin that forwarded it ...
    "via": (str,),  # ... and that origin's principal (it may follow the task here)
}
CARRIED = ("redispatches", "reclaimed", "avoid", "force_local")  # kept across re-dispatches


def _check(key: str, value: Any) -> None:
    kinds = PLACEMENT_FIELDS.get(key)
    if kinds is None:
        raise KeyError(f"no placement field {key!r} (fields: {', '.join(PLACEMENT_FIELDS)})")
    if value is None:
        return
    if isinstance(value, tuple) and list in kinds:
        return
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise TypeError(f"placement {key} is {type(value).__name__}: {value!r}")


class Placement(dict[str, Any]):
    """Where and why a task runs: a read-only map of ``PLACEMENT_FIELDS`` with typed access.

    A ``dict`` underneath because it *is* its wire form (msgpack and the journal's JSON
    take it as it is), but frozen and closed: an unknown key raises at construction, in
    ``[]`` and in ``get``; attributes (``placement.target``) give the typed value or its
    default. Change one with ``with_``.
    """

    __slots__ = ()

    def __init__(self, fields: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        merged = {**(fields or {}), **more}
        for key, value in merged.items():
            _check(key, value)
        super().__init__(
            (k, list(v) if isinstance(v, tuple) else v) for k, v in merged.items() if v is not None
        )

    @classmethod
    def from_wire(cls, value: Any) -> Placement:
        """From a reply or a journal row: keys it does not know are dropped (another version
        wrote them), a known key of the wrong type raises ValueError."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ValueError(f"placement is {type(value).__name__}, not a map")
        known = {k: v for k, v in value.items() if k in PLACEMENT_FIELDS}
        try:
            return cls(known)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def to_wire(self) -> dict[str, Any]:
        return dict(self)

    def with_(self, **changes: Any) -> Placement:
        return Placement({**self, **changes})

    def carried(self) -> dict[str, Any]:
        """The keys a re-dispatch keeps (see ``CARRIED``)."""
        return {k: self[k] for k in CARRIED if k in self}

    def __getitem__(self, key: str) -> Any:
        if key not in PLACEMENT_FIELDS:
            raise KeyError(f"no placement field {key!r}")
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if key not in PLACEMENT_FIELDS:
            raise KeyError(f"no placement field {key!r}")
        return super().get(key, default)

    def __getattr__(self, name: str) -> Any:
        """``placement.target`` and every other field of ``PLACEMENT_FIELDS`` (its type there):
        the value, its default (``_DEFAULTS``) or None; a misspelt name raises."""
        if name not in PLACEMENT_FIELDS:
            raise AttributeError(f"Placement has no field {name!r}")
        value = super().get(name, _DEFAULTS.get(name))
        return list(value) if isinstance(value, list) else value  # the record stays frozen

    def _frozen(self, *_: Any, **__: Any) -> NoReturn:
        raise TypeError("a Placement is read-only; use with_()")

    __setitem__ = __delitem__ = __ior__ = _frozen  # type: ignore[assignment]
    update = pop = popitem = clear = setdefault = _frozen  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (Placement, (dict(self),))

    def __repr__(self) -> str:
        return f"Placement({dict.__repr__(self)})"


_DEFAULTS: dict[str, Any] = {"redispatches": 0, "avoid": [], "force_local": False}


# --- the status body -------------------------------------------------------------------


def _map(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"status {where} is {type(value).__name__}, not a map")
    return dict(value)


def _rows(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"status {where} is {type(value).__name__}, not a list")
    return tuple(_map(row, f"{where} row") for row in value)


def _typed(value: Mapping[str, Any], key: str, kinds: tuple[type, ...], where: str) -> Any:
    item = value.get(key)
    wrong = isinstance(item, bool) and bool not in kinds or not isinstance(item, kinds)
    if item is not None and wrong:
        raise ValueError(f"status {where}.{key} is {type(item).__name__}: {item!r}")
    return item


@dataclass(frozen=True)
class ClusterStatus:
    """The ``cluster`` section of ``status``: this agent's slot, the policy host, every peer."""

    self_index: int
    n_servers: int
    gossip_interval_s: float
    scheduler: dict[str, Any]  # the policy host: state, warm start, training, rewards
    decisions: dict[str, Any]  # count and p50/p99/max placement time (µs)
    forwarding: dict[str, Any]
    servers: tuple[dict[str, Any], ...]  # one row per slot, this agent's included
    discovered_unused: tuple[dict[str, Any], ...] = ()
    probes: dict[str, Any] = field(default_factory=dict)  # pod2: sent, answered, timed out...

    def to_wire(self) -> dict[str, Any]:
        return {
            "self_index": self.self_index,
            "n_servers": self.n_servers,
            "gossip_interval_s": self.gossip_interval_s,
            "scheduler": self.scheduler,
            "decisions": self.decisions,
            "forwarding": self.forwarding,
            "servers": list(self.servers),
            "discovered_unused": list(self.discovered_unused),
            **({"probes": self.probes} if self.probes else {}),  # a probing policy only
        }

    @classmethod
    def from_wire(cls, value: Any) -> ClusterStatus:
        body = _map(value, "cluster")
        return cls(
            self_index=_typed(body, "self_index", (int,), "cluster") or 0,
            n_servers=_typed(body, "n_servers", (int,), "cluster") or 1,
            gossip_interval_s=float(_typed(body, "gossip_interval_s", _NUMBER, "cluster") or 0.0),
            scheduler=_map(body.get("scheduler") or {}, "cluster.scheduler"),
            decisions=_map(body.get("decisions") or {}, "cluster.decisions"),
            forwarding=_map(body.get("forwarding") or {}, "cluster.forwarding"),
            servers=_rows(body.get("servers") or [], "cluster.servers"),
            discovered_unused=_rows(body.get("discovered_unused") or [], "cluster.unused"),
            probes=_map(body.get("probes") or {}, "cluster.probes"),
        )


_SECTIONS = ("agent", "backend", "telemetry", "queue", "capacity", "counters", "storage")


@dataclass(frozen=True)
class AgentStatus:
    """The body of an ``agent_status`` reply (docs/protocol.md, "status").

    The sections are maps whose keys grow with releases (a client shows what it knows);
    ``cluster`` is typed, None on an agent without a cluster.
    """

    agent: dict[str, Any]  # node, name, endpoint, protocol, version, state, doing, ...
    backend: dict[str, Any]
    telemetry: dict[str, Any]
    queue: dict[str, Any]
    capacity: dict[str, Any]
    counters: dict[str, Any]
    storage: dict[str, Any] = field(default_factory=dict)
    retention: dict[str, Any] = field(default_factory=dict)
    cluster: ClusterStatus | None = None

    @property
    def state(self) -> str | None:
        """loading (the model), ready or failed."""
        return self.agent.get("state")

    def to_wire(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "backend": self.backend,
            "telemetry": self.telemetry,
            "queue": self.queue,
            "capacity": self.capacity,
            "counters": self.counters,
            "storage": self.storage,
            "retention": self.retention,
            "cluster": self.cluster.to_wire() if self.cluster is not None else None,
        }

    @classmethod
    def from_wire(cls, value: Mapping[str, Any]) -> AgentStatus:
        """From a reply's fields (its ``type``, ``id`` and ``v`` are ignored, as any key it
        does not know); a section of the wrong type raises ValueError."""
        body = _map(value, "body")
        sections = {k: _map(body.get(k) or {}, k) for k in _SECTIONS}
        cluster = body.get("cluster")
        return cls(
            **sections,
            retention=_map(body.get("retention") or {}, "retention"),
            cluster=ClusterStatus.from_wire(cluster) if cluster is not None else None,
        )
