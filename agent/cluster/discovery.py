"""mDNS discovery (``discovery = true``): announce this agent, find others (``_dedgeai._tcp``).

Each agent registers ``<node>._dedgeai._tcp.local.`` with its address and port and the
properties ``proto`` (protocol version), ``node`` (agent id), ``fp`` (fingerprint of its
CURVE public key, empty without one) and ``endpoint``. A ``ServiceBrowser`` thread resolves
the others and puts them on a queue; the daemon's loop drains it (``Discovery.poll``) and
decides with ``admit`` (pure) whether a found agent takes a spare slot: slots are fixed at
start (``cluster_size``), a found peer fills the lowest free one and is treated like a
configured peer from then on. With CURVE only peers whose announced fingerprint matches an
authorized key are used (the link is pinned to that key); the others are listed in
``dedgeai status`` with the reason. Removals are ignored: liveness marks a gone peer down.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.config import is_local_endpoint

log = logging.getLogger("dedgeai.agent.cluster.discovery")

SERVICE_TYPE = "_dedgeai._tcp.local."
RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class Found:
    """An agent announced on the network."""

    endpoint: str
    node: str
    protocol: int | None
    fingerprint: str | None  # None: it announces no CURVE key
    name: str = ""


@dataclass(frozen=True)
class Admission:
    """What to do with a found agent: take ``slot`` (pinned to ``key``), or not, and why."""

    slot: int | None = None
    key: tuple[str, bytes] | None = None
    reason: str | None = None  # why it is not used (None with no slot: it is ourselves/known)


def admit(
    found: Found,
    *,
    self_node: str,
    self_index: int,
    n_slots: int,
    known: dict[int, str],
    known_nodes: set[str],
    curve: bool,
    key_for: Callable[[str], tuple[str, bytes] | None],
    plain_ok: Callable[[str], bool],
) -> Admission:
    """Where a found agent goes (pure). ``known``: slot -> endpoint of every current peer."""
    if found.node == self_node or found.node in known_nodes or found.endpoint in known.values():
        return Admission()
    if found.protocol != p.PROTOCOL_VERSION:
        return Admission(reason=f"it speaks protocol v{found.protocol}, not v{p.PROTOCOL_VERSION}")
    key = None
    if curve:
        if not found.fingerprint:
            return Admission(reason="it announces no CURVE key and this agent uses CURVE")
        key = key_for(found.fingerprint)
        if key is None:
            return Admission(
                reason=f"its key (fingerprint {found.fingerprint}) is not in authorized_keys"
            )
    elif found.fingerprint:
        return Admission(reason="it uses CURVE and this agent has no key pair")
    elif not plain_ok(found.endpoint):
        return Admission(reason="plain TCP beyond loopback needs `insecure = true`")
    free = [s for s in range(n_slots) if s != self_index and s not in known]
    if not free:
        return Admission(reason=f"no free slot (`cluster_size` {n_slots})")
    return Admission(slot=free[0], key=key)


def _endpoint_of(info: Any) -> str | None:
    props = {k.decode(): (v or b"").decode() for k, v in (info.properties or {}).items()}
    announced = props.get("endpoint", "")
    host = announced.removeprefix("tcp://").rpartition(":")[0]
    if announced.startswith("tcp://") and host not in ("*", "0.0.0.0", "[::]", ""):
        return announced
    addresses = info.parsed_addresses()
    return f"tcp://{addresses[0]}:{info.port}" if addresses and info.port else None


def found_from(info: Any) -> Found | None:
    """A resolved ``ServiceInfo`` as ``Found`` (None when it lacks an address or node)."""
    props = {k.decode(): (v or b"").decode() for k, v in (info.properties or {}).items()}
    endpoint = _endpoint_of(info)
    if endpoint is None or not props.get("node"):
        return None
    proto = props.get("proto", "")
    return Found(
        endpoint,
        props["node"],
        int(proto) if proto.isdigit() else None,
        props.get("fp") or None,
        props.get("name", ""),
    )


def _addresses(host: str) -> list[bytes]:
    if host not in ("*", "0.0.0.0", ""):
        return [socket.inet_aton(socket.gethostbyname(host))]
    import ifaddr  # a dependency of zeroconf

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                found.append(socket.inet_aton(ip.ip))
    return found or [socket.inet_aton("127.0.0.1")]


class Discovery:
    """The zeroconf announcer and browser; its threads only ever touch ``self.found``."""

    def __init__(self, endpoint: str, node: str, name: str, fingerprint: str | None) -> None:
        from zeroconf import InterfaceChoice, ServiceBrowser, ServiceInfo, Zeroconf

        host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
        host = host.strip("[]")
        local = is_local_endpoint(endpoint)
        self.found: queue.Queue[Found] = queue.Queue()
        self.zeroconf = Zeroconf(interfaces=["127.0.0.1"] if local else InterfaceChoice.All)
        self.info = ServiceInfo(
            SERVICE_TYPE,
            f"{node}.{SERVICE_TYPE}",
            addresses=_addresses(host),
            port=int(port),
            properties={
                "proto": str(p.PROTOCOL_VERSION),
                "node": node,
                "fp": fingerprint or "",
                "endpoint": endpoint,
                "name": name[:60],
            },
            server=f"{node}.local.",
        )
        self._registered = threading.Event()
        # Registration probes the network for a second or two: not on the loop thread.
        threading.Thread(target=self._register, name="mdns-register", daemon=True).start()
        self.browser = ServiceBrowser(self.zeroconf, SERVICE_TYPE, handlers=[self._on_change])

    def _register(self) -> None:
        try:
            self.zeroconf.register_service(self.info)
            self._registered.set()
        except Exception as exc:  # noqa: BLE001 - a broken network must not stop the agent
            log.warning("mDNS: could not announce this agent: %s", exc)

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change not in (ServiceStateChange.Added, ServiceStateChange.Updated):
            return
        try:
            info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_TIMEOUT_MS)
        except Exception as exc:  # noqa: BLE001 - one bad announcement, not the browser
            log.debug("mDNS: cannot resolve %s: %s", name, exc)
            return
        found = found_from(info) if info is not None else None
        if found is not None:
            self.found.put(found)

    def poll(self) -> list[Found]:
        """Everything found since the last call (loop thread)."""
        items = []
        while True:
            try:
                items.append(self.found.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        self.browser.cancel()
        try:
            if self._registered.is_set():
                self.zeroconf.unregister_service(self.info)
        finally:
            self.zeroconf.close()
