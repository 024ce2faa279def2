"""The ``status`` reply of one agent, read from the daemon's parts (no sockets touched)."""

from __future__ import annotations

import functools
import os
from importlib import metadata
from typing import Any, Protocol

from dedgeai.agent.cluster.status import cluster_status
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.config import AgentConfig
from dedgeai.agent.node.core import AgentCore
from dedgeai.agent.node.disk_store import DiskStore
from dedgeai.agent.node.journal import Journal
from dedgeai.agent.node.records import AgentStatus


class PhaseView(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def doing(self) -> str: ...

    @property
    def since(self) -> float: ...


class NodeView(Protocol):
    """What a status body reads from the daemon (``AgentDaemon`` is one)."""

    config: AgentConfig
    core: AgentCore
    journal: Journal
    store: DiskStore
    endpoint: str
    started_at: float
    public_key: str | None
    authenticator: object | None
    backend: Any  # models.Backend, None while the model loads
    phase: PhaseView
    cluster: Any  # cluster.Cluster, None before the peers exist
    _plan: dict[str, Any]
    _profile_state: dict[str, Any]
    _unsaved: dict[Any, Any]

    @property
    def emulated(self) -> bool: ...

    def telemetry_dict(self) -> dict[str, Any]: ...


@functools.cache
def package_version() -> str:
    try:
        return metadata.version("dedgeai")
    except metadata.PackageNotFoundError:
        return "unknown"


def status_body(daemon: NodeView, now: float) -> dict[str, Any]:
    """The body of a ``status`` reply, as sent (see :func:`agent_status`)."""
    return agent_status(daemon, now).to_wire()


def agent_status(daemon: NodeView, now: float) -> AgentStatus:
    """This agent, its backend, queue, capacity, storage, retention and cluster."""
    core = daemon.core
    backlog_steps, backlog_s = core.backlog()
    running = core.tasks.get(core.running) if core.running else None
    profile = core.profile
    phase = daemon.phase
    backend = daemon.backend
    return AgentStatus(
        agent={
            "node": core.node,
            "name": daemon.config.display_name,
            "endpoint": daemon.endpoint,
            "protocol": p.PROTOCOL_VERSION,
            "version": package_version(),
            "pid": os.getpid(),
            "uptime_s": now - daemon.started_at,
            "state": phase.name,  # loading (the model), ready or failed
            "doing": phase.doing,
            "state_since": phase.since,
            "accepting": core.accepting,
            "curve": daemon.authenticator is not None,
            "public_key": daemon.public_key,
        },
        backend={
            "name": backend.name
            if backend is not None
            else f"{daemon.config.model} ({phase.name})",
            "model": daemon.config.model,
            "emulated": daemon.emulated,
            "plan": daemon._plan,
        },
        telemetry=daemon.telemetry_dict(),
        queue={
            "queued": len(core.queue),
            "held": len(core.held),  # forwarded here, waiting for their origin to ask again
            "owned": core.owned(),  # what admission counts against max_queue
            "max_queue": core.max_queue,
            "running": running.id if running else None,
            "running_step": running.step if running else None,
            "running_steps": running.request.steps if running else None,
            "backlog_steps": backlog_steps,
            "backlog_s": backlog_s,
        },
        capacity={
            "steps_per_second": profile.steps_per_second if profile else None,
            **daemon._profile_state,
        },
        counters=dict(core.counters),
        storage={
            "ok": core.storage_error is None,
            "error": core.storage_error,
            "unsaved": len(daemon._unsaved),
            "corrupt_rows": daemon.journal.corrupt_rows(),
        },
        retention=daemon.store.retention_summary(now),
        cluster=cluster_status(daemon.cluster, now) if daemon.cluster is not None else None,
    )
