"""CURVE on peer links: real agents on loopback, plus the link's handshake judgement.

An unknown *client* key is covered by test_security.py (test_unknown_client_key_is_refused_clearly).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import zmq

from dedgeai.agent.client.library import AgentClient
from dedgeai.agent.lab.harness import AgentProcess, free_ports, wait_for
from dedgeai.agent.security.curve import ClientSecurity
from dedgeai.agent.security.keys import KeyPair, authorize, fingerprint, generate_keypair
from dedgeai.agent.security.peer_keys import NEXT, OK, REFUSED, WAIT, PeerSecurity, split_peer
from dedgeai.models.backend import GenerationRequest

FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


class KeyedAgent:
    """An agent process with its own key pair and an authorized operator (client) key."""

    def __init__(self, agent: AgentProcess, operator: KeyPair) -> None:
        self.agent = agent
        self.keys = generate_keypair(agent.directory / "keys")
        self.authorized = agent.directory / "keys" / "authorized_keys"
        authorize(self.authorized, operator.public_path, "operator")
        self.operator = operator

    def client(self) -> AgentClient:
        security = ClientSecurity(self.keys.public, self.operator)
        return AgentClient(self.agent.endpoint, timeout_s=10.0, retries=3, security=security)

    def view(self) -> dict[str, Any]:
        with self.client() as client:
            return client.status()["cluster"]

    def peer(self) -> dict[str, Any]:
        return next(s for s in self.view()["servers"] if not s["self"])


def _pair(agent_factory: Any, tmp_path: Path, pin_b: bool) -> tuple[KeyedAgent, KeyedAgent]:
    operator = generate_keypair(tmp_path / "operator")
    ends = [f"tcp://127.0.0.1:{port}" for port in free_ports(2)]
    a_proc = agent_factory("a", endpoint=ends[0], gossip_interval_s=0.2, policy="round-robin")
    b_proc = agent_factory("b", endpoint=ends[1], gossip_interval_s=0.2, policy="round-robin")
    a, b = KeyedAgent(a_proc, operator), KeyedAgent(b_proc, operator)
    # a pins b's key by its name in a's authorized_keys; b identifies a by probing its keys
    a_proc.settings["peers"] = [f"{ends[1]}=b" if pin_b else ends[1]]
    b_proc.settings["peers"] = [ends[0]]
    authorize(a.authorized, b.keys.public_path, "b")
    for agent in (a_proc, b_proc):
        agent.env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return a, b


def _start(*agents: KeyedAgent) -> None:
    started = [k.agent for k in agents]
    for agent, keyed in zip(started, agents, strict=True):  # its own `client` needs CURVE
        agent.client = lambda timeout_s=5.0, retries=3, keyed=keyed: keyed.client()  # type: ignore[method-assign]
    with ThreadPoolExecutor(len(started)) as pool:
        list(pool.map(lambda a: a.start(), started))


def test_curve_peers_with_each_others_keys_forward_a_task(agent_factory, tmp_path):
    a, b = _pair(agent_factory, tmp_path, pin_b=True)
    authorize(b.authorized, a.keys.public_path, "a")
    _start(a, b)
    for agent in (a, b):
        wait_for(lambda agent=agent: agent.peer()["state"] == "up", 30.0, "the CURVE peer up")
    # round-robin takes the peer only once its report (its speed) is in: else both run here
    wait_for(lambda: a.peer().get("capacity_steps_per_s"), 30.0, "b's report at a")
    assert a.peer()["key"] == "b"  # pinned in `peers`
    assert b.peer()["key"] == "a"  # identified: a proved it holds the authorized key "a"
    request = GenerationRequest(prompt="a lighthouse", steps=3, width=256, height=256)
    with a.client() as client:
        _, first = client.generate(request)  # round-robin: here, then the peer
        _, done = client.generate(request)
    ran = {first.get("ran_on")["endpoint"], done.get("ran_on")["endpoint"]}
    assert ran == {a.agent.endpoint, b.agent.endpoint}
    with b.agent.client() as client:
        rows = {r["task"]: r for r in client.tasks()}
    forwarded = done if done.get("ran_on")["endpoint"] == b.agent.endpoint else first
    assert rows[forwarded.get("task")]["state"] == "done"
    assert a.view()["forwarding"]["forwarded"] == 1
    assert "CURVE on" in a.agent.log() and "CURVE on" in b.agent.log()


def test_unauthorized_peer_key_is_refused_and_tasks_run_elsewhere(agent_factory, tmp_path):
    a, b = _pair(agent_factory, tmp_path, pin_b=False)  # b does not authorize a's key
    _start(a, b)
    refused = wait_for(
        lambda: (peer := a.peer())["state"] == "refused" and peer, 20.0, "a marks b refused"
    )
    assert "refused this agent's key" in refused["error"], refused
    assert str(a.keys.public_path) in refused["error"]
    assert re.search(
        r"refused a connection with unknown CURVE key " + re.escape(a.keys.public.decode()),
        b.agent.log(),
    )
    # b cannot identify a either: a's key is in none of b's authorized keys
    unknown = wait_for(lambda: (p := b.peer())["state"] == "refused" and p, 20.0, "b refuses a")
    assert "none of the 1 key(s)" in unknown["error"], unknown
    request = GenerationRequest(prompt="a fox", steps=2, width=256, height=256)
    with a.client() as client:  # b is masked: nothing is forwarded, nothing lost
        dones = [client.generate(request)[1] for _ in range(3)]
    assert {d.get("ran_on")["endpoint"] for d in dones} == {a.agent.endpoint}
    assert a.view()["forwarding"]["forwarded"] == 0
    # authorizing a's key at b takes effect without a restart (the link is retried)
    authorize(b.authorized, a.keys.public_path, "a")
    for agent in (a, b):
        wait_for(lambda agent=agent: agent.peer()["state"] == "up", 30.0, "up once authorized")


# --- the link's judgement (no sockets) ----------------------------------------------


def test_split_peer():
    assert split_peer("tcp://h:1=node3") == ("tcp://h:1", "node3")
    assert split_peer("tcp://h:1") == ("tcp://h:1", None)
    literal = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    assert split_peer(f"tcp://h:1={literal}") == ("tcp://h:1", literal)


def test_identification_tries_each_authorized_key_then_refuses(tmp_path):
    own = generate_keypair(tmp_path / "own")
    allowed = tmp_path / "authorized"
    keys = [generate_keypair(tmp_path / name) for name in ("k1", "k2")]
    for name, pair in zip(("k1", "k2"), keys, strict=True):
        authorize(allowed, pair.public_path, name)
    security = PeerSecurity(own, allowed, {})
    end = "tcp://127.0.0.1:1"
    tried = []
    for _ in range(3):
        sock = SimpleNamespace()  # records the CURVE options set on it
        security.setup(sock, end)  # type: ignore[arg-type]
        tried.append(sock.curve_serverkey)
        verdict, text = security.judge(end, FAILED, 0)
        if verdict == REFUSED:
            break
        assert verdict == NEXT
    assert tried == [own.public, keys[0].public, keys[1].public]
    assert verdict == REFUSED and "none of the 2 key(s)" in (text or "")
    # the next round finds k2, which then stays; a single drop later is tolerated
    for _ in range(2):
        security.judge(end, FAILED, 0)
    verdict, text = security.judge(end, zmq.EVENT_HANDSHAKE_SUCCEEDED, 0)
    assert verdict == OK and "k2" in (text or "") and security.key_name(end) == "k2"
    assert security.judge(end, FAILED, 0)[0] == WAIT
    assert security.key_for_fingerprint(fingerprint(keys[0].public)) == ("k1", keys[0].public)


def test_pinned_key_refusals(tmp_path):
    own, peer = generate_keypair(tmp_path / "own"), generate_keypair(tmp_path / "peer")
    security = PeerSecurity(own, tmp_path / "none", {"tcp://h:1": ("peer", peer.public)})
    verdict, text = security.judge("tcp://h:1", zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
    assert verdict == REFUSED and "refused this agent's key" in (text or "")
    verdicts = [security.judge("tcp://h:1", FAILED, 0)[0] for _ in range(3)]
    assert verdicts == [WAIT, WAIT, REFUSED]
    mismatch = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    verdict, text = security.judge("tcp://h:1", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, mismatch)
    assert verdict == REFUSED and "does not use CURVE" in (text or "")
    plain = PeerSecurity(None, tmp_path / "none", {})
    verdict, text = plain.judge("tcp://h:1", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, mismatch)
    assert verdict == REFUSED and "requires CURVE" in (text or "")


def test_peers_config_pins_keys_and_refuses_plain_links_beyond_loopback(tmp_path):
    from dedgeai.agent.errors import ConfigError
    from dedgeai.agent.node.config import build_config
    from dedgeai.agent.security.curve import SecurityConfig

    keys_dir = tmp_path / "keys"
    generate_keypair(keys_dir)
    node3 = generate_keypair(tmp_path / "node3")
    authorize(keys_dir / "authorized_keys", node3.public_path, "node3")
    peers = ["tcp://127.0.0.1:7700=me-not-authorized", "tcp://127.0.0.1:7703=node3"]
    config = build_config(
        {"endpoint": "tcp://127.0.0.1:7700", "keys_dir": str(keys_dir), "peers": peers}
    )
    security = PeerSecurity.from_config(config, SecurityConfig.from_config(config))
    assert security.curve and security.pinned == {"tcp://127.0.0.1:7703": ("node3", node3.public)}
    keyless = build_config({"keys_dir": str(tmp_path / "none"), "peers": ["tcp://10.0.0.3:7700"]})
    with pytest.raises(ConfigError, match="insecure"):
        PeerSecurity.from_config(keyless, SecurityConfig.from_config(keyless))
    insecure = build_config(
        {"keys_dir": str(tmp_path / "none"), "peers": ["tcp://10.0.0.3:7700"], "insecure": True}
    )
    assert not PeerSecurity.from_config(insecure, SecurityConfig.from_config(insecure)).curve
    with pytest.raises(ConfigError, match="KEY"):
        build_config({"peers": ["10.0.0.3:7700=x"]})
