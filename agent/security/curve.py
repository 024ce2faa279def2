"""CURVE security for agent sockets: the ZAP handler, server and client setup, handshakes.

Ironhouse (zguide ch. 5, pyzmq ``ironhouse.py``): every connection is encrypted and both
ends are authenticated. An agent has one key pair in its ``keys_dir`` (``agent.key`` public,
``agent.key_secret`` secret, mode 0600) and accepts the clients and peers whose public keys
sit in ``authorized_keys_dir`` (``*.key`` files) plus its own key (whoever holds its secret
key is the agent already). The ZAP handler is pyzmq's ``ThreadAuthenticator``: the daemon
is a synchronous poll loop with no asyncio event loop, and the thread runs the handler
beside it without one (STYLE.md names ``AsyncioAuthenticator``, which needs a running
loop). Authorized keys are re-read when the directory changes: no restart needed. Every
authorized key is accepted whatever its role; ``role_lookup`` tells the daemon the role of
a frame's ZAP User-Id (the z85 key) for ``agent/security/authority.py``.

Bounded at the socket edge: refused keys are counted, not remembered, and reported in at
most one log line per ``REFUSAL_LOG_EVERY_S`` (a flood of fresh keys costs neither memory
nor log space); ``harden_server_socket`` gives every bound socket, CURVE or not, a
handshake deadline shorter than libzmq's 30 s, so half-open connections are dropped.

When CURVE applies to a bound socket (``curve_required``): ``curve = true`` (the default)
and either the key pair exists or the endpoint is reachable beyond loopback (then the key
pair is required, unless ``insecure = true``). A loopback agent with no keys stays plain
TCP, so the quick start needs no keys.

API (for the daemon, peers and ``dedgeai demo``; the key files are ``keys.py``'s)::

    SecurityConfig.from_config(config: AgentConfig) -> SecurityConfig
    server_security(socket, keys: SecurityConfig, endpoint: str) -> ThreadAuthenticator | None
    harden_server_socket(socket) -> None
    role_lookup(context) -> Callable[[bytes | str], str | None]
    client_security(socket, server_public_key: bytes, client_keys: KeyPair) -> None
    HandshakeMonitor(socket, endpoint, curve: bool, public_key_path: Path | None)
        .socket (register in a poller) · .failure() -> HandshakeFailed | None · .check()

``server_security`` and ``client_security`` must be called before ``bind``/``connect``, and
``HandshakeMonitor`` before ``connect``. One authenticator serves a whole context (ZAP is
per context): ``server_security`` on a second socket of that context reuses it; stop it with
``authenticator.stop()`` before terminating the context.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from dedgeai.agent.errors import HandshakeFailed, SecurityError
from dedgeai.agent.node.config import AgentConfig, is_local_endpoint
from dedgeai.agent.security.handshake import (
    HANDSHAKE_EVENTS,
    HandshakeJudge,
    Outcome,
    Verdict,
    read_monitor_event,
)
from dedgeai.agent.security.keys import (
    AUTHORIZED_DIR,
    SECRET_FILE,
    KeyPair,
    Role,
    authorized_set,
    default_keys_dir,
    load_keypair,
    load_public_key,
)

if TYPE_CHECKING:  # the ZAP thread pulls in asyncio (~100 ms): only an agent with keys needs it
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("dedgeai.agent.security.curve")

ZAP_DOMAIN = "dedgeai"
SERVER_KEY_ENV = "DEDGEAI_SERVER_KEY"
CLIENT_KEYS_ENV = "DEDGEAI_CLIENT_KEYS"
REFUSAL_LOG_EVERY_S = 10.0  # at most one "refused" line per interval, for all keys together
# A connection that has not finished its ZMTP (and CURVE) handshake by then is closed;
# libzmq's default is 30 s, long enough for idle half-open connections to pile up.
HANDSHAKE_IVL_MS = 5_000
# Reap connections whose far end vanished without a FIN (power loss, cable): probes after
# a minute of silence, then every 10 s, dropped after 3 unanswered ones.
TCP_KEEPALIVE_IDLE_S = 60
TCP_KEEPALIVE_INTVL_S = 10
TCP_KEEPALIVE_CNT = 3


# --- server side -----------------------------------------------------------------


@dataclass(frozen=True)
class SecurityConfig:
    keys_dir: Path
    authorized_keys_dir: Path
    curve: bool = True
    insecure: bool = False

    @classmethod
    def from_config(cls, config: AgentConfig) -> SecurityConfig:
        keys_dir = Path(config.keys_dir).expanduser() if config.keys_dir else default_keys_dir()
        authorized = (
            Path(config.authorized_keys_dir).expanduser()
            if config.authorized_keys_dir
            else keys_dir / AUTHORIZED_DIR
        )
        return cls(keys_dir, authorized, config.curve, config.insecure)

    def has_keypair(self) -> bool:
        return (self.keys_dir / SECRET_FILE).exists()


def curve_required(keys: SecurityConfig, endpoint: str) -> bool:
    """Whether a socket bound to ``endpoint`` must be a CURVE server (see the module doc)."""
    if not keys.curve:
        return False
    if keys.has_keypair():
        return True
    if is_local_endpoint(endpoint) or keys.insecure:
        return False
    raise SecurityError(
        f"{endpoint} is reachable beyond this machine and needs CURVE, but there is no key "
        f"pair in {keys.keys_dir}: run `dedgeai keys generate --dir {keys.keys_dir}`, "
        "or set `insecure = true` to accept plain TCP"
    )


class AuthorizedKeysProvider:
    """ZAP credentials provider: the authorized keys (any role) plus our own, re-read on change.

    Called on the authenticator's thread; ``role_of`` is called on the daemon's.
    """

    def __init__(
        self, directory: Path, own_public: bytes, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.directory, self.own_public, self.clock = directory, own_public, clock
        self._lock = threading.Lock()
        self.refused_total = 0  # handshakes refused since start
        self._refused_unreported = 0  # ... since the last log line
        self._reported_at = -math.inf
        self.reload()

    def reload(self) -> frozenset[bytes]:
        """The authorized public keys (z85); rescanned only when the directory changed."""
        return authorized_set(self.directory).keys

    def role_of(self, key: bytes | str) -> str | None:
        """The role of a z85 public key (a ZAP User-Id); None when it is not accepted."""
        z85_key = key.encode("ascii", "replace") if isinstance(key, str) else key
        if z85_key == self.own_public:
            return Role.PEER.value  # whoever holds our secret key is this agent already
        return authorized_set(self.directory).roles.get(z85_key)

    def callback(self, domain: str, key: bytes) -> bool:
        if key == self.own_public or key in self.reload():
            return True
        now = self.clock()
        with self._lock:
            self.refused_total += 1
            self._refused_unreported += 1
            if now - self._reported_at < REFUSAL_LOG_EVERY_S:
                return False
            count, self._refused_unreported, self._reported_at = self._refused_unreported, 0, now
        log.warning(
            "refused a connection with unknown CURVE key %s (%d refused since the last "
            "report, at most one every %g s); to allow a key: `dedgeai keys authorize` its "
            "public key file into %s",
            key.decode("ascii", "replace"),
            count,
            REFUSAL_LOG_EVERY_S,
            self.directory,
        )
        return False


_authenticators: dict[int, ThreadAuthenticator] = {}
_providers: dict[int, AuthorizedKeysProvider] = {}
_authenticators_lock = threading.Lock()


def require_authenticator(
    context: zmq.Context, keys: SecurityConfig, own: KeyPair
) -> ThreadAuthenticator:
    """The context's running ZAP handler (one per context), started on first use."""
    from zmq.auth.thread import ThreadAuthenticator

    with _authenticators_lock:
        auth = _authenticators.get(id(context))
        if auth is not None and auth.is_alive() and auth.context is context:
            return auth
        auth = ThreadAuthenticator(context, log=logging.getLogger("dedgeai.agent.zap"))
        auth.start()
        provider = AuthorizedKeysProvider(keys.authorized_keys_dir, own.public)
        auth.configure_curve_callback(ZAP_DOMAIN, provider)
        _authenticators[id(context)] = auth
        _providers[id(context)] = provider
        return auth


def role_lookup(context: zmq.Context) -> Callable[[bytes | str], str | None]:
    """The role of a ZAP User-Id on this context's CURVE sockets (``None``: not accepted).

    Without an authenticator on the context (keyless mode) every lookup answers None: the
    sender's role then comes from its address, not from a key (``agent/security/authority.py``).
    """

    def lookup(key: bytes | str) -> str | None:
        with _authenticators_lock:
            auth, provider = _authenticators.get(id(context)), _providers.get(id(context))
        if auth is None or auth.context is not context or provider is None:
            return None
        return provider.role_of(key)

    return lookup


def harden_server_socket(socket: zmq.Socket) -> None:
    """Bound the resources a connection may hold before it proves anything; before ``bind``.

    A handshake deadline (HANDSHAKE_IVL_MS) and TCP keepalives. Applied by
    ``server_security`` to the socket it is given, CURVE or not; call it on any other
    bound socket. ``zmq.MAXMSGSIZE`` stays the caller's (it depends on the socket's job).
    """
    socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
    socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
    socket.setsockopt(zmq.TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE_S)
    socket.setsockopt(zmq.TCP_KEEPALIVE_INTVL, TCP_KEEPALIVE_INTVL_S)
    socket.setsockopt(zmq.TCP_KEEPALIVE_CNT, TCP_KEEPALIVE_CNT)


def server_security(
    socket: zmq.Socket, keys: SecurityConfig, endpoint: str
) -> ThreadAuthenticator | None:
    """Make ``socket`` a CURVE server when ``curve_required``; call before ``bind``.

    Args:
        socket: a socket that will bind ``endpoint`` (ROUTER, PUB, ...).
        keys: this agent's keys and policy (``SecurityConfig.from_config``).
        endpoint: the endpoint it will bind, for the loopback rule.

    Returns:
        The context's running authenticator, or None when the socket stays plain (it is
        hardened either way: ``harden_server_socket``).

    Raises:
        SecurityError: CURVE is needed and the key pair is missing or unreadable.
    """
    harden_server_socket(socket)
    if not curve_required(keys, endpoint):
        return None
    own = load_keypair(keys.keys_dir)
    auth = require_authenticator(socket.context, keys, own)
    socket.curve_secretkey = own.secret
    socket.curve_publickey = own.public
    socket.curve_server = True
    socket.zap_domain = ZAP_DOMAIN.encode()
    # Refuse every client if no ZAP handler answers, rather than accept all (libzmq's default).
    socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    return auth


# --- client side -----------------------------------------------------------------


def client_security(socket: zmq.Socket, server_public_key: bytes, client_keys: KeyPair) -> None:
    """Make ``socket`` a CURVE client of the server with that public key; call before connect."""
    socket.curve_secretkey = client_keys.secret
    socket.curve_publickey = client_keys.public
    socket.curve_serverkey = server_public_key


@dataclass(frozen=True)
class ClientSecurity:
    """What a client needs for CURVE: the agent's public key and its own key pair."""

    server_key: bytes
    keys: KeyPair

    @classmethod
    def resolve(
        cls, server_key: str | Path | None = None, client_keys: str | Path | None = None
    ) -> ClientSecurity | None:
        """From arguments, else $DEDGEAI_SERVER_KEY / $DEDGEAI_CLIENT_KEYS; None: plain TCP.

        The client key pair defaults to the one ``dedgeai keys generate`` writes.
        """
        server_key = server_key or os.environ.get(SERVER_KEY_ENV) or None
        if server_key is None:
            return None
        client_keys = client_keys or os.environ.get(CLIENT_KEYS_ENV) or default_keys_dir()
        return cls(load_public_key(server_key), load_keypair(Path(client_keys)))

    def apply(self, socket: zmq.Socket) -> None:
        client_security(socket, self.server_key, self.keys)


class HandshakeMonitor:
    """Turns a connecting socket's handshake-failed events into a clear HandshakeFailed.

    Without it a refused client sees only silence: libzmq retries the handshake forever.
    """

    def __init__(
        self,
        socket: zmq.Socket,
        endpoint: str,
        curve: bool,
        public_key_path: Path | None = None,
    ) -> None:
        self.endpoint, self.curve, self.public_key_path = endpoint, curve, public_key_path
        self._target = socket
        self.socket = socket.get_monitor_socket(HANDSHAKE_EVENTS)
        self._judge = HandshakeJudge(curve)
        self._failure: HandshakeFailed | None = None

    def failure(self) -> HandshakeFailed | None:
        """Read pending events without blocking; the first fatal failure, kept once seen."""
        while self._failure is None and self.socket.poll(0):
            event, value = read_monitor_event(self.socket)
            self._failure = self._failure_of(self._judge.judge(event, value))
        return self._failure

    def check(self) -> None:
        failure = self.failure()
        if failure is not None:
            raise failure

    def _failure_of(self, verdict: Verdict) -> HandshakeFailed | None:
        """The judge's verdict, worded for the person running the client."""
        where, value = f"the agent at {self.endpoint}", verdict.value
        key = self.public_key_path or "this client's public key file"
        texts = {
            Outcome.KEY_REFUSED: (
                f"{where} refused this client's key: add {key} to its authorized_keys "
                f"(`dedgeai keys authorize {key}` on that machine)"
                if value == 400
                else f"{where} could not authenticate this client (ZAP status {value})"
            ),
            Outcome.PEER_PLAIN: (
                f"{where} does not use CURVE (plain TCP): connect without --server-key"
            ),
            Outcome.PEER_NEEDS_CURVE: (
                f"{where} requires CURVE: pass --server-key with its public key file "
                f"(or set {SERVER_KEY_ENV}), and have your public key authorized there"
            ),
            Outcome.PROTOCOL: f"handshake with {where} failed: protocol error {value:#x}",
            # A CURVE/plain mismatch can look like a drop too: the agent resets the
            # connection before its greeting is read.
            Outcome.DROPPED: f"{where} closed the connection during the handshake: "
            + (
                "either the server key is not its public key (`dedgeai keys show` there) "
                "or it does not use CURVE"
                if self.curve
                else f"it probably requires CURVE: pass --server-key (or set {SERVER_KEY_ENV})"
            ),
        }
        text = texts.get(verdict.outcome)
        if text is None:  # OK or PENDING
            return None
        reason = {Outcome.KEY_REFUSED: "auth", Outcome.DROPPED: "dropped"}
        return HandshakeFailed(self.endpoint, reason.get(verdict.outcome, "protocol"), text)

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):  # the socket may be closed already
            self._target.disable_monitor()
        self.socket.close(0)
