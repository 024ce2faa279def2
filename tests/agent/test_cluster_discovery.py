"""mDNS discovery: the found-agent -> slot rule (pure), then real agents announcing on loopback."""

from __future__ import annotations

import queue
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dedgeai.agent.cluster.discovery import SERVICE_TYPE, Found, admit
from dedgeai.agent.lab.harness import wait_for
from dedgeai.agent.node import protocol as p
from dedgeai.agent.security.keys import authorize, fingerprint, generate_keypair

from .test_cluster_security import KeyedAgent  # noqa: TID252

V = p.PROTOCOL_VERSION
KEY = ("b", b"k" * 40)


def _admit(found: Found, **changes: Any) -> Any:
    args: dict[str, Any] = {
        "self_node": "me",
        "self_index": 0,
        "n_slots": 4,
        "known": {1: "tcp://10.0.0.2:7700"},
        "known_nodes": {"n2"},
        "curve": True,
        "key_for": lambda fp: KEY if fp == "fp-b" else None,
        "plain_ok": lambda endpoint: endpoint.startswith("tcp://127."),
        **changes,
    }
    return admit(found, **args)


def test_found_agents_fill_the_lowest_free_slot_when_authorized():
    b = Found("tcp://10.0.0.3:7700", "n3", V, "fp-b")
    assert _admit(b).slot == 2 and _admit(b).key == KEY
    assert _admit(b, known={1: "x", 2: "y"}).slot == 3
    full = _admit(b, known={1: "x", 2: "y", 3: "z"})
    assert full.slot is None and "no free slot" in full.reason
    # ourselves, an endpoint or node already in a slot: nothing to do, nothing to report
    assert _admit(Found("tcp://10.0.0.9:7700", "me", V, "fp-b")) == _admit(b, known_nodes={"n3"})
    assert _admit(Found("tcp://10.0.0.2:7700", "n9", V, "fp-b")).reason is None
    unknown = _admit(Found("tcp://10.0.0.4:7700", "n4", V, "fp-x"))
    assert unknown.slot is None and "not in authorized_keys" in unknown.reason
    assert "no CURVE key" in _admit(Found("tcp://10.0.0.4:7700", "n4", V, None)).reason
    assert "protocol v99" in _admit(Found("tcp://10.0.0.4:7700", "n4", 99, "fp-b")).reason


def test_plain_agents_admit_only_plain_peers_on_loopback_unless_insecure():
    plain = {"curve": False}
    assert _admit(Found("tcp://127.0.0.1:7701", "n5", V, None), **plain).slot == 2
    assert "insecure" in _admit(Found("tcp://10.0.0.5:7700", "n5", V, None), **plain).reason
    assert "uses CURVE" in _admit(Found("tcp://127.0.0.1:7701", "n5", V, "fp"), **plain).reason


# --- real mDNS on loopback ----------------------------------------------------------


@pytest.fixture(scope="module")
def multicast() -> None:
    """Skip unless an mDNS announcement on 127.0.0.1 is seen by a browser here."""
    zeroconf = pytest.importorskip("zeroconf")
    a = zeroconf.Zeroconf(interfaces=["127.0.0.1"])
    b = zeroconf.Zeroconf(interfaces=["127.0.0.1"])
    name = f"probe-{socket.gethostname()}.{SERVICE_TYPE}"
    info = zeroconf.ServiceInfo(
        SERVICE_TYPE, name, addresses=[socket.inet_aton("127.0.0.1")], port=9, properties={}
    )
    seen: queue.Queue[str] = queue.Queue()
    browser = None
    try:
        a.register_service(info)
        browser = zeroconf.ServiceBrowser(
            b,
            SERVICE_TYPE,
            handlers=[lambda zeroconf, service_type, name, state_change: seen.put(name)],
        )
        seen.get(timeout=8.0)
    except (OSError, queue.Empty) as exc:
        pytest.skip(f"mDNS multicast on loopback does not work here: {exc!r}")
    finally:
        if browser is not None:
            browser.cancel()
        a.close()
        b.close()


def test_agents_find_each_other_and_use_only_authorized_keys(multicast, agent_factory, tmp_path):
    operator = generate_keypair(tmp_path / "operator")
    settings = {"discovery": True, "gossip_interval_s": 0.2, "policy": "round-robin"}
    a = KeyedAgent(agent_factory("a", cluster_size=3, **settings), operator)
    b = KeyedAgent(agent_factory("b", cluster_size=2, **settings), operator)
    c = KeyedAgent(agent_factory("c", cluster_size=2, **settings), operator)  # a won't trust it
    authorize(a.authorized, b.keys.public_path, "b")
    authorize(b.authorized, a.keys.public_path, "a")
    agents = (a, b, c)
    for keyed in agents:
        keyed.agent.client = (  # type: ignore[method-assign]
            lambda timeout_s=5.0, retries=3, keyed=keyed: keyed.client()
        )
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda k: k.agent.start(), agents))

    def b_up_in_a() -> dict[str, Any] | None:
        view = a.view()
        rows = [s for s in view["servers"] if s.get("endpoint") == b.agent.endpoint]
        ok = rows and rows[0]["state"] == "up" and view["discovered_unused"]
        return view if ok else None

    view = wait_for(b_up_in_a, 30.0, "a to find b (authorized) and c (not)", every_s=0.2)
    row = next(s for s in view["servers"] if s.get("endpoint") == b.agent.endpoint)
    assert row["discovered"] is True and row["key"] == "b"
    assert view["n_servers"] == 3
    unused = {u["endpoint"]: u for u in view["discovered_unused"]}
    assert c.agent.endpoint in unused, unused
    assert fingerprint(c.keys.public) in unused[c.agent.endpoint]["reason"]
    assert all(s.get("endpoint") != c.agent.endpoint for s in view["servers"])
    wait_for(
        lambda: any(
            s.get("endpoint") == a.agent.endpoint and s["state"] == "up"
            for s in b.view()["servers"]
        ),
        30.0,
        "b to find a",
        every_s=0.2,
    )
