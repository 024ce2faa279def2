"""CURVE on peer links: which server key each peer link uses, and what its handshake says.

An agent with a key pair connects to every peer as a CURVE client with its own key pair
(the peer's ZAP handler accepts it when our public key is in the peer's authorized_keys).
A CURVE client must know the server's public key before it connects; a ``peers`` entry
finds it one of two ways:

- ``"tcp://10.0.0.3:7700=node3"``: pinned. ``node3`` names ``node3.key`` in this agent's
  authorized_keys (a key file path or a literal 40-character key also work). Only that
  key is used; a handshake that keeps failing marks the peer ``refused``.
- ``"tcp://10.0.0.3:7700"``: identified. The link tries this agent's own public key (a
  cluster sharing one key pair) and then each key in authorized_keys, one per handshake,
  until the peer proves it holds the secret half of one (the handshake succeeds); that key
  is kept. No authorized key fits: the peer is ``refused`` and tried again with backoff.

Discovered (mDNS) peers are pinned to the authorized key whose fingerprint they announce.
Without a key pair the links stay plain TCP: allowed to loopback peers, and beyond
loopback only with ``insecure = true``. The links' handshake events (``PeerLinks``
monitors) come here; the cluster acts on the verdicts. Loop thread only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from dedgeai.agent.errors import ConfigError
from dedgeai.agent.node.config import AgentConfig, is_local_endpoint
from dedgeai.agent.security.curve import SecurityConfig, client_security
from dedgeai.agent.security.handshake import HandshakeJudge, Outcome
from dedgeai.agent.security.keys import (
    KeyPair,
    authorized_keys,
    fingerprint,
    load_keypair,
    load_public_key,
)

log = logging.getLogger("dedgeai.agent.security.peer_keys")

OK, WAIT, NEXT, REFUSED = "ok", "wait", "next", "refused"  # verdicts of ``judge``


def split_peer(entry: str) -> tuple[str, str | None]:
    """``"tcp://h:p=key"`` -> (``"tcp://h:p"``, ``"key"``); no ``=``: (entry, None)."""
    endpoint, sep, key = entry.partition("=")
    return endpoint.strip(), (key.strip() or None) if sep else None


@dataclass
class _Link:
    candidates: list[tuple[str, bytes]]  # (name, public key) in the order they are tried
    pinned: bool
    judge: HandshakeJudge  # counts the handshakes dropped in a row
    index: int = 0
    confirmed: bool = False  # a handshake with the current candidate succeeded
    tried: int = field(default=0)  # candidates that failed in this round

    def current(self) -> tuple[str, bytes] | None:
        return self.candidates[self.index] if self.candidates else None


class PeerSecurity:
    """Per-endpoint server keys for the peer links, and judgements of their handshakes."""

    def __init__(
        self, own: KeyPair | None, authorized_dir: Path, pinned: dict[str, tuple[str, bytes]]
    ) -> None:
        self.own, self.authorized_dir = own, authorized_dir
        self.pinned = dict(pinned)
        self.links: dict[str, _Link] = {}

    @property
    def curve(self) -> bool:
        return self.own is not None

    @classmethod
    def from_config(
        cls, config: AgentConfig, keys: SecurityConfig, bound: str = ""
    ) -> PeerSecurity:
        """CURVE peer links when this agent has a key pair (and ``curve``); else plain ones.

        ``bound``: the endpoint this agent got (its own entry in ``peers`` is skipped).

        Raises:
            ConfigError: plain links to a peer beyond loopback without ``insecure``.
            SecurityError: a pinned key cannot be found.
        """
        own = load_keypair(keys.keys_dir) if keys.curve and keys.has_keypair() else None
        pinned: dict[str, tuple[str, bytes]] = {}
        for entry in config.peers:
            endpoint, spec = split_peer(entry)
            if endpoint in (config.endpoint, bound):
                continue  # this agent, in a list shared by the whole cluster
            if own is None and not is_local_endpoint(endpoint) and not config.insecure:
                raise ConfigError(
                    f"peer {endpoint} is beyond this machine and the link would be plain TCP: "
                    f"run `dedgeai keys generate --dir {keys.keys_dir}` (CURVE), "
                    "or set `insecure = true`"
                )
            if spec is not None and own is not None:
                pinned[endpoint] = (spec, load_public_key(spec, keys.authorized_keys_dir))
        return cls(own, keys.authorized_keys_dir, pinned)

    def allows_plain(self, endpoint: str, insecure: bool) -> bool:
        return self.curve or is_local_endpoint(endpoint) or insecure

    def pin(self, endpoint: str, name: str, public: bytes) -> None:
        """Use exactly this key for ``endpoint`` (a discovered peer's authorized key)."""
        self.pinned[endpoint] = (name, public)
        self.links.pop(endpoint, None)

    def key_for_fingerprint(self, fp: str) -> tuple[str, bytes] | None:
        """The authorized key (or our own) whose fingerprint is ``fp``."""
        for name, public in self._candidates():
            if fingerprint(public) == fp:
                return name, public
        return None

    def _candidates(self) -> list[tuple[str, bytes]]:
        found: list[tuple[str, bytes]] = []
        if self.own is not None:
            found.append(("(this agent's own key)", self.own.public))
        for entry in authorized_keys(self.authorized_dir):
            if entry.public is not None and all(entry.public != k for _, k in found):
                found.append((entry.name, entry.public))
        return found

    def _link(self, endpoint: str) -> _Link:
        link = self.links.get(endpoint)
        if link is None:
            pinned = self.pinned.get(endpoint)
            candidates = [pinned] if pinned else self._candidates()
            judge = HandshakeJudge(curve=self.curve)
            link = self.links[endpoint] = _Link(candidates, pinned is not None, judge)
        return link

    def setup(self, sock: zmq.Socket, endpoint: str) -> None:
        """``PeerLinks`` setup: CURVE client keys with this endpoint's current server key."""
        if self.own is None:
            return
        link = self._link(endpoint)
        if link.index == 0 and not link.pinned and not link.confirmed:
            link.candidates = self._candidates()  # a new round sees newly authorized keys
        current = link.current()
        client_security(sock, current[1] if current else self.own.public, self.own)

    def peer_keys(self) -> frozenset[bytes]:
        """Keys that belong to agents: ours, the pinned ones, and every peer link's server key
        that a handshake proved. Peers connect to us with that same key pair, so a frame
        signed by one of these keys comes from a peer (``authority.py``)."""
        keys = {public for _, public in self.pinned.values()}
        if self.own is not None:
            keys.add(self.own.public)
        for link in self.links.values():
            current = link.current() if link.confirmed else None
            if current is not None:
                keys.add(current[1])
        return frozenset(keys)

    def key_name(self, endpoint: str) -> str | None:
        link = self.links.get(endpoint)
        current = link.current() if link is not None and link.confirmed else None
        return current[0] if current else None

    def judge(self, endpoint: str, event: int, value: int) -> tuple[str, str | None]:
        """A handshake event on the link to ``endpoint`` -> (verdict, sentence).

        ``ok``: it succeeded; ``wait``: nothing to do yet; ``next``: reopen the link now
        (with the next candidate key); ``refused``: mark the peer refused with the sentence.
        The event itself is judged by ``handshake.HandshakeJudge`` (as the client's is);
        this adds the choice of server key, and words the verdict for the operator.
        """
        where = f"the agent at {endpoint}"
        link = self._link(endpoint)
        # An identifying link moves to the next candidate key at the first drop; a known
        # key (pinned or proved) survives a drop or two (an agent restarting mid-handshake).
        patient = link.pinned or link.confirmed or self.own is None
        verdict = link.judge.judge(event, value, limit=None if patient else 1)
        outcome, value = verdict.outcome, verdict.value
        if outcome is Outcome.OK:
            first = not link.confirmed
            link.confirmed, link.tried = True, 0
            name = link.current()
            if first and name and self.own is not None and not link.pinned:
                return OK, f"{where} holds the authorized key {name[0]}"
            return OK, None
        if outcome is Outcome.KEY_REFUSED:
            link.confirmed = True  # it read our hello: the server key was right
            key = self.own.public_path if self.own else "this agent's agent.key"
            return REFUSED, (
                f"{where} refused this agent's key (ZAP {value}): authorize {key} there "
                "(`dedgeai keys authorize`); retried with backoff"
            )
        if outcome is Outcome.PEER_PLAIN:
            return REFUSED, f"{where} does not use CURVE; peers of a CURVE agent need key pairs too"
        if outcome is Outcome.PEER_NEEDS_CURVE:
            return REFUSED, (
                f"{where} requires CURVE: give this agent a key pair (`dedgeai keys "
                "generate`) and authorize its agent.key there"
            )
        if outcome is Outcome.PROTOCOL:
            return REFUSED, f"handshake with {where} failed: protocol error {value:#x}"
        if outcome is not Outcome.DROPPED:
            return WAIT, None
        if link.pinned:
            name = link.candidates[0][0]
            return REFUSED, (
                f"{where} closed the connection during the handshake: {name} (from "
                "`peers`) is probably not its public key, or it does not use CURVE"
            )
        if self.own is None:
            return REFUSED, f"{where} closed the connection during the handshake: " + (
                "it probably requires CURVE (give this agent a key pair)"
            )
        link.confirmed = False  # it changed keys? identify it again
        link.judge.drops = 0
        link.tried += 1
        if link.tried >= len(link.candidates):
            link.index, link.tried = 0, 0
            n = max(0, len(link.candidates) - 1)
            return REFUSED, (
                f"none of the {n} key(s) in {self.authorized_dir} (nor this agent's own) is "
                f"the public key of {where}, or it does not use CURVE: authorize its agent.key "
                "or pin it in `peers` as ENDPOINT=KEYNAME"
            )
        link.index = (link.index + 1) % len(link.candidates)
        return NEXT, None
