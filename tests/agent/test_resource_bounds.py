"""Bounded resources at the socket edge: refused-key floods, handshake deadline, fd limit."""

from __future__ import annotations

import logging
import os
import socket
import time
import tracemalloc
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from dedgeai.agent.security.curve import (
    HANDSHAKE_IVL_MS,
    REFUSAL_LOG_EVERY_S,
    AuthorizedKeysProvider,
    SecurityConfig,
    server_security,
)
from dedgeai.agent.security.keys import AUTHORIZED_DIR, authorize, generate_keypair

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dedgeai-agent.service"
FLOOD = 10_000
HANDSHAKE_DEADLINE_S = 20.0  # well under libzmq's own 30 s: only our setting passes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fresh_key(index: int) -> bytes:
    return z85.encode(index.to_bytes(32, "big"))


def test_a_flood_of_fresh_keys_costs_neither_memory_nor_log_lines(tmp_path, caplog):
    allowed = tmp_path / "allowed"
    friend = generate_keypair(tmp_path / "friend")
    authorize(allowed, friend.public_path, "friend")
    past = time.time() - 60  # out of the keys cache's racy window: no rescans in the flood
    os.utime(allowed, (past, past))
    clock = FakeClock()
    provider = AuthorizedKeysProvider(allowed, generate_keypair(tmp_path / "own").public, clock)
    with caplog.at_level(logging.WARNING, logger="dedgeai.agent.security.curve"):
        for index in range(1000):  # warm up: first line, caches, interned strings
            assert provider.callback("dedgeai", _fresh_key(index)) is False
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for index in range(1000, 1000 + FLOOD):
                assert provider.callback("dedgeai", _fresh_key(index)) is False
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert provider.callback("dedgeai", friend.public) is True  # still served
        clock.now += REFUSAL_LOG_EVERY_S
        assert provider.callback("dedgeai", _fresh_key(0)) is False
    # Remembering each key would cost >100 bytes a key (>1 MB here).
    assert grown < 64 * 1024, grown
    lines = [r.getMessage() for r in caplog.records if r.name == "dedgeai.agent.security.curve"]
    assert len(lines) == 2, lines
    assert "(1 refused since the last report" in lines[0]
    assert f"({FLOOD + 1000} refused since the last report" in lines[1]
    assert provider.refused_total == FLOOD + 1001


@pytest.mark.parametrize("curve", [False, True])
def test_bound_sockets_get_a_handshake_deadline_and_keepalives(tmp_path, curve):
    keys = SecurityConfig(tmp_path / "keys", tmp_path / "keys" / AUTHORIZED_DIR)
    if curve:
        generate_keypair(keys.keys_dir)
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    try:
        auth = server_security(sock, keys, "tcp://127.0.0.1:7700")
        assert (auth is not None) == curve
        assert sock.getsockopt(zmq.HANDSHAKE_IVL) == HANDSHAKE_IVL_MS < 30_000
        assert sock.getsockopt(zmq.TCP_KEEPALIVE) == 1
        if auth is not None:
            auth.stop()
    finally:
        sock.close(0)
        context.term()


def test_a_half_open_connection_is_dropped(tmp_path):
    keys = SecurityConfig(tmp_path / "keys", tmp_path / "keys" / AUTHORIZED_DIR)
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    try:
        server_security(router, keys, "tcp://127.0.0.1:*")  # keyless: hardened all the same
        router.bind("tcp://127.0.0.1:*")
        host, port = router.getsockopt_string(zmq.LAST_ENDPOINT).rsplit("/", 1)[1].split(":")
        with socket.create_connection((host, int(port)), timeout=HANDSHAKE_DEADLINE_S) as raw:
            # Send nothing: read the agent's greeting until it closes the connection.
            deadline = time.monotonic() + HANDSHAKE_DEADLINE_S
            while time.monotonic() < deadline:
                try:
                    if raw.recv(4096) == b"":
                        break  # closed by the server: the handshake deadline fired
                except ConnectionResetError:
                    break
            else:
                pytest.fail(f"a half-open connection was kept {HANDSHAKE_DEADLINE_S} s")
    finally:
        router.close(0)
        context.term()


def test_the_unit_raises_the_file_descriptor_limit():
    values = [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith("LimitNOFILE=")
    ]
    assert len(values) == 1 and int(values[0]) >= 16_384, values
