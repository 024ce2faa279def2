"""Roles of authorized keys: the key-file metadata, the cache, the CLI and the ZAP side."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth
from typer.testing import CliRunner

from dedgeai.agent.client.cli import app
from dedgeai.agent.errors import SecurityError
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.security import keys as keys_module
from dedgeai.agent.security.curve import (
    AuthorizedKeysProvider,
    ClientSecurity,
    SecurityConfig,
    role_lookup,
    server_security,
)
from dedgeai.agent.security.keys import (
    AUTHORIZED_DIR,
    KeyPair,
    authorize,
    authorized_keys,
    generate_keypair,
    read_role,
    roles_by_key,
)

runner = CliRunner()


def _age(directory: Path) -> None:
    """Date the directory back, out of the cache's racy window: its scan is then kept."""
    past = time.time() - 60
    os.utime(directory, (past, past))


def _key_file(directory: Path, name: str, public: bytes, metadata: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.key"
    path.write_text(f'metadata\n{metadata}curve\n    public-key = "{public.decode()}"\n')
    return path


@pytest.fixture
def pairs(tmp_path: Path) -> dict[str, KeyPair]:
    return {name: generate_keypair(tmp_path / name) for name in ("alice", "bob", "carol")}


# --- key files -------------------------------------------------------------------


def test_authorize_writes_the_role_and_reauthorizing_changes_it(tmp_path, pairs):
    allowed = tmp_path / AUTHORIZED_DIR
    target = authorize(allowed, pairs["alice"].public_path, "alice", role="peer")
    assert zmq.auth.load_certificate(target)[0] == pairs["alice"].public  # still a zmq cert
    assert read_role(target) == "peer"
    assert authorize(allowed, pairs["alice"].public.decode(), "alice", role="admin") == target
    assert read_role(target) == "admin"
    other = authorize(allowed, pairs["alice"].public_path, "alice-laptop", role="client")
    assert read_role(other) == read_role(target) == "client"  # one key, one role
    assert {e.name: e.role for e in authorized_keys(allowed)} == {
        "alice": "client",
        "alice-laptop": "client",
    }
    with pytest.raises(SecurityError, match="--role"):
        authorize(allowed, pairs["bob"].public_path, role="root")
    unnamed = authorize(allowed, pairs["bob"].public_path)  # agent.key: named by fingerprint
    assert unnamed.name == f"key-{keys_module.fingerprint(pairs['bob'].public)}.key"
    assert read_role(unnamed) == "client"


@pytest.mark.parametrize(
    ("metadata", "role"),
    [
        ("", "client"),  # no role: client
        ('    role = "peer"\n', "peer"),
        ('  role="admin"  \n', "admin"),
        ('    role = "root"\n', "client"),  # unknown value
        ("    role = peer\n", "client"),  # unquoted: not a role
        ('    role = "peer"\n    role = "admin"\n', "client"),  # two different roles
        ('    name = "x"\n', "client"),
    ],
)
def test_roles_are_parsed_strictly(tmp_path, pairs, metadata, role):
    path = _key_file(tmp_path / "allowed", "alice", pairs["alice"].public, metadata)
    assert authorized_keys(path.parent)[0].role == role


def test_a_role_outside_the_metadata_section_does_not_count(tmp_path, pairs):
    path = tmp_path / "allowed" / "alice.key"
    path.parent.mkdir()
    public = pairs["alice"].public.decode()
    path.write_text(f'metadata\ncurve\n    role = "admin"\n    public-key = "{public}"\n')
    assert read_role(path) is None and authorized_keys(path.parent)[0].role == "client"
    path.write_text(f'role = "admin"\nmetadata\ncurve\n    public-key = "{public}"\n')
    assert authorized_keys(path.parent)[0].role == "client"


def test_unknown_role_is_warned_about_once(tmp_path, pairs, caplog):
    path = _key_file(tmp_path / "allowed", "alice", pairs["alice"].public, '  role = "god"\n')
    with caplog.at_level(logging.WARNING, logger="dedgeai.agent.security.keys"):
        for _ in range(3):
            authorized_keys(path.parent)
    warnings = [r for r in caplog.records if "god" in r.getMessage()]
    assert len(warnings) == 1 and "client" in warnings[0].getMessage()


def test_a_key_with_two_roles_is_a_client(tmp_path, pairs):
    allowed = tmp_path / "allowed"
    _key_file(allowed, "a1", pairs["alice"].public, '    role = "peer"\n')
    _key_file(allowed, "a2", pairs["alice"].public, '    role = "admin"\n')
    _key_file(allowed, "bob", pairs["bob"].public, '    role = "admin"\n')
    assert roles_by_key(allowed) == {pairs["alice"].public: "client", pairs["bob"].public: "admin"}


def test_roles_by_key_rescans_only_when_the_directory_changes(tmp_path, pairs, monkeypatch):
    allowed = tmp_path / "allowed"
    authorize(allowed, pairs["alice"].public_path, "alice", role="peer")
    _age(allowed)
    scans: list[Path] = []
    real_scan = keys_module._scan
    monkeypatch.setattr(keys_module, "_scan", lambda d: scans.append(d) or real_scan(d))
    for _ in range(100):
        assert roles_by_key(allowed) == {pairs["alice"].public: "peer"}
    assert len(scans) == 1
    authorize(allowed, pairs["bob"].public_path, "bob", role="admin")  # a rename: seen at once
    assert roles_by_key(allowed)[pairs["bob"].public] == "admin"
    authorize(allowed, pairs["alice"].public_path, "alice", role="client")
    assert roles_by_key(allowed)[pairs["alice"].public] == "client"
    (allowed / "bob.key").unlink()
    assert pairs["bob"].public not in roles_by_key(allowed)
    assert roles_by_key(tmp_path / "missing") == {}


# --- the CLI ---------------------------------------------------------------------


def test_keys_cli_authorize_role_and_list(tmp_path, pairs):
    keys = str(tmp_path / "keys")

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["keys", *args, "-d", keys])
        return result.exit_code, " ".join(result.output.split())

    code, output = run(
        "authorize", str(pairs["alice"].public_path), "-n", "alice", "--role", "peer"
    )
    assert code == ExitCode.OK and "peer" in output
    code, _ = run("authorize", pairs["bob"].public.decode(), "-n", "bob")
    assert code == ExitCode.OK
    code, output = run("authorize", str(pairs["carol"].public_path), "--role", "root")
    assert code == ExitCode.BAD_INPUT and "root" in output
    code, output = run("list", "--json")
    assert code == ExitCode.OK
    assert {r["name"]: r["role"] for r in json.loads(output)} == {"alice": "peer", "bob": "client"}
    code, output = run("authorize", str(pairs["alice"].public_path), "-n", "alice", "-r", "admin")
    code, output = run("list")
    assert code == ExitCode.OK and "role" in output and "admin" in output and "client" in output


# --- the ZAP side ------------------------------------------------------------------


def test_provider_accepts_every_role_and_tells_it(tmp_path, pairs):
    allowed = tmp_path / "allowed"
    for name, role in (("alice", "client"), ("bob", "peer"), ("carol", "admin")):
        authorize(allowed, pairs[name].public_path, name, role=role)
    own = generate_keypair(tmp_path / "own")
    provider = AuthorizedKeysProvider(allowed, own.public)
    for name, role in (("alice", "client"), ("bob", "peer"), ("carol", "admin")):
        assert provider.callback("dedgeai", pairs[name].public) is True
        assert provider.role_of(pairs[name].public) == role
        assert provider.role_of(pairs[name].public.decode()) == role  # a ZAP User-Id is str
    assert provider.callback("dedgeai", own.public) and provider.role_of(own.public) == "peer"
    stranger = generate_keypair(tmp_path / "stranger").public
    assert not provider.callback("dedgeai", stranger) and provider.role_of(stranger) is None


def test_role_lookup_reads_the_user_id_of_a_curve_frame(tmp_path, pairs):
    keys = SecurityConfig(tmp_path / "agent", tmp_path / "agent" / AUTHORIZED_DIR)
    generate_keypair(keys.keys_dir)
    authorize(keys.authorized_keys_dir, pairs["bob"].public_path, "bob", role="peer")
    context = zmq.Context()
    lookup = role_lookup(context)
    assert lookup(pairs["bob"].public) is None  # no authenticator yet: keyless
    server = context.socket(zmq.ROUTER)
    client = context.socket(zmq.DEALER)
    auth = None
    try:
        auth = server_security(server, keys, "tcp://127.0.0.1:*")
        server.bind("tcp://127.0.0.1:*")
        endpoint = server.getsockopt_string(zmq.LAST_ENDPOINT)
        ClientSecurity(keys_module.load_keypair(keys.keys_dir).public, pairs["bob"]).apply(client)
        client.connect(endpoint)
        client.send(b"hello")
        assert server.poll(10_000), "no frame through the CURVE handshake"
        _identity, payload = server.recv_multipart(copy=False)
        user_id = payload.get("User-Id")
        assert user_id == pairs["bob"].public.decode()
        assert lookup(user_id) == "peer" and role_lookup(context)(user_id) == "peer"
        assert lookup(pairs["alice"].public) is None
    finally:
        client.close(0)
        server.close(0)
        if auth is not None:
            auth.stop()
        context.term()
