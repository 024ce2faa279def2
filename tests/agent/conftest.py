"""Fixtures of real agent processes on loopback (the launcher lives in dedgeai.agent.lab.harness)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dedgeai.agent.lab.harness import (
    AgentProcess,
    RawPeer,
    free_ports,
    start_peered,
)


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Any]:
    """Start agents that are killed at the end of the test whatever happens."""
    started: list[AgentProcess] = []

    def make(name: str = "a", **settings: Any) -> AgentProcess:
        agent = AgentProcess(tmp_path / name, **settings)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.close()


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One emulated agent shared by the tests of a module that do not restart it."""
    agent = AgentProcess(tmp_path_factory.mktemp("shared"), emulated_steps_per_second=400.0)
    agent.start()
    yield agent
    agent.close()


@pytest.fixture
def raw_peer() -> Iterator[Any]:
    """Factory of RawPeer sockets, closed after the test."""
    peers: list[RawPeer] = []

    def make(endpoint: str) -> RawPeer:
        peer = RawPeer(endpoint)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


@pytest.fixture(scope="session")
def tiny_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """The built-in tiny model (random weights, CPU): real PNGs, started once per session."""
    agent = AgentProcess(
        tmp_path_factory.mktemp("tiny"),
        model="tiny",
        device="cpu",
        profile_sizes=["256x256"],
        profile_steps=1,
    )
    agent.start()
    yield agent
    agent.close()


# --- clusters of agents (issue 5) ----------------------------------------------------


@pytest.fixture
def cluster_factory(agent_factory: Any) -> Any:
    """Start N agents that list each other as peers (started in parallel, all peers up)."""

    def make(*per_agent: dict[str, Any], **common: Any) -> list[AgentProcess]:
        endpoints = [f"tcp://127.0.0.1:{port}" for port in free_ports(len(per_agent))]
        agents = []
        for index, (endpoint, own) in enumerate(zip(endpoints, per_agent, strict=True)):
            settings = {"gossip_interval_s": 0.2, **common, **own}  # an agent's own win
            agent = agent_factory(f"n{index}", endpoint=endpoint, peers=endpoints, **settings)
            agent.env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            agents.append(agent)
        start_peered(agents)
        return agents

    return make
