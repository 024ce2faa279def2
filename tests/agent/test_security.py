"""CURVE security: key files, the loopback rule, and real agents that refuse unknown keys."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from typer.testing import CliRunner

from dedgeai.agent.client.cli import app
from dedgeai.agent.client.library import AgentClient
from dedgeai.agent.errors import HandshakeFailed, SecurityError
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.lab.harness import AgentProcess
from dedgeai.agent.security.curve import ClientSecurity, SecurityConfig, curve_required
from dedgeai.agent.security.keys import (
    KeyPair,
    authorize,
    authorized_keys,
    generate_keypair,
    load_keypair,
    load_public_key,
)
from dedgeai.models.backend import GenerationRequest

runner = CliRunner()
# A refused handshake is reported by the socket monitor (HandshakeFailed), never by the
# timeout (PeerUnavailable): the timeout is long, so only the monitor can end the wait.
REFUSAL_TIMEOUT_S = 60.0


def _run(*args: str) -> tuple[int, str]:
    """Exit code and output, with rich's line wrapping undone for substring checks."""
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def _request(steps: int = 2) -> GenerationRequest:
    return GenerationRequest(prompt="a fox", steps=steps, width=256, height=256, seed=1)


# --- key files -------------------------------------------------------------------


def test_generate_writes_a_private_secret_and_refuses_to_overwrite(tmp_path):
    keys = tmp_path / "keys"
    pair = generate_keypair(keys)
    secret, public = keys / "agent.key_secret", keys / "agent.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert "secret-key" not in public.read_text() and pair.public.decode() in public.read_text()
    assert load_keypair(keys) == pair and load_public_key(public) == pair.public
    assert sorted(p.name for p in keys.iterdir()) == ["agent.key", "agent.key_secret"]
    with pytest.raises(SecurityError, match="--force"):
        generate_keypair(keys)
    assert load_keypair(keys) == pair  # untouched
    replaced = generate_keypair(keys, force=True)
    assert replaced.public != pair.public and stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_authorize_copies_only_the_public_half(tmp_path):
    alice = generate_keypair(tmp_path / "alice")
    allowed = tmp_path / "authorized_keys"
    target = authorize(allowed, tmp_path / "alice" / "agent.key_secret", name="alice")
    assert target == allowed / "alice.key" and "secret" not in target.read_text().split("curve")[1]
    assert authorize(allowed, alice.public.decode(), name="alice") == target  # idempotent
    unnamed = authorize(allowed, alice.public_path)  # agent.key: named by fingerprint
    assert unnamed.name.startswith("key-")
    bob = generate_keypair(tmp_path / "bob")
    with pytest.raises(SecurityError, match="another key"):
        authorize(allowed, bob.public_path, name="alice")
    with pytest.raises(SecurityError, match="--name"):
        authorize(allowed, bob.public_path, name="../evil")
    with pytest.raises(SecurityError, match="40-character"):
        authorize(allowed, "not-a-key")
    (allowed / "broken.key").write_text("curve\n")
    listed = {entry.name: entry.public for entry in authorized_keys(allowed)}
    assert listed == {"alice": alice.public, unnamed.stem: alice.public, "broken": None}


def test_curve_rule_loopback_keys_and_insecure(tmp_path):
    no_keys = SecurityConfig(tmp_path / "none", tmp_path / "none" / "authorized_keys")
    assert not curve_required(no_keys, "tcp://127.0.0.1:7700")  # the quick start
    assert not curve_required(no_keys, "ipc:///tmp/agent.sock")
    with pytest.raises(SecurityError, match="dedgeai keys generate"):
        curve_required(no_keys, "tcp://0.0.0.0:7700")
    insecure = SecurityConfig(no_keys.keys_dir, no_keys.authorized_keys_dir, insecure=True)
    assert not curve_required(insecure, "tcp://0.0.0.0:7700")
    generate_keypair(no_keys.keys_dir)
    assert curve_required(no_keys, "tcp://127.0.0.1:7700")  # keys exist: CURVE everywhere
    off = SecurityConfig(no_keys.keys_dir, no_keys.authorized_keys_dir, curve=False)
    assert not curve_required(off, "tcp://127.0.0.1:7700")


def test_keys_cli_exit_codes(tmp_path):
    keys = str(tmp_path / "keys")
    code, output = _run("keys", "show", "--dir", keys)
    assert code == ExitCode.BAD_INPUT and "dedgeai keys generate" in output
    code, output = _run("keys", "generate", "--dir", keys)
    assert code == ExitCode.OK and "agent.key_secret" in output
    code, output = _run("keys", "generate", "--dir", keys)
    assert code == ExitCode.BAD_INPUT and "--force" in output
    code, output = _run("keys", "show", "--dir", keys, "--json")
    assert code == ExitCode.OK
    assert json.loads(output)["public_key"] == load_keypair(Path(keys)).public.decode()
    code, _output = _run("keys", "generate", "--dir", keys, "--force")
    assert code == ExitCode.OK
    peer = generate_keypair(tmp_path / "peer")
    code, output = _run("keys", "authorize", str(peer.public_path), "--name", "peer", "-d", keys)
    assert code == ExitCode.OK and "peer.key" in output
    code, output = _run("keys", "authorize", str(tmp_path / "missing.key"), "-d", keys)
    assert code == ExitCode.BAD_INPUT
    code, output = _run("keys", "list", "--dir", keys, "--json")
    assert code == ExitCode.OK and [r["name"] for r in json.loads(output)] == ["peer"]
    assert json.loads(output)[0]["public_key"] == peer.public.decode()


# --- real agents with CURVE on --------------------------------------------------


class CurveAgent(AgentProcess):
    """An agent with its own key pair; its helper client is an authorized CURVE client."""

    def __init__(self, directory: Path, **settings: Any) -> None:
        super().__init__(directory, **settings)
        self.keys = generate_keypair(directory / "keys")  # the keys_dir AgentProcess sets
        self.operator = generate_keypair(directory / "operator")
        authorize(directory / "keys" / "authorized_keys", self.operator.public_path, "operator")

    def client(self, timeout_s: float = 5.0, retries: int = 3) -> AgentClient:
        return self.client_with(self.operator, timeout_s=timeout_s, retries=retries)

    def client_with(
        self, keys: KeyPair | None, server_key: bytes | None = None, **options: Any
    ) -> AgentClient:
        security = ClientSecurity(server_key or self.keys.public, keys) if keys else None
        return AgentClient(self.endpoint, security=security, **options)


@pytest.fixture(scope="module")
def curve_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CurveAgent]:
    agent = CurveAgent(tmp_path_factory.mktemp("curve"), emulated_steps_per_second=400.0)
    agent.start()
    yield agent
    agent.close()


def _refused(agent: CurveAgent, keys: KeyPair | None, **options: Any) -> HandshakeFailed:
    """The HandshakeFailed a client with ``keys`` gets (one try, a timeout it never reaches)."""
    with (
        pytest.raises(HandshakeFailed) as caught,
        agent.client_with(keys, timeout_s=REFUSAL_TIMEOUT_S, retries=1, **options) as c,
    ):
        c.status()
    return caught.value


def test_authorized_client_runs_a_task_end_to_end(curve_agent):
    with curve_agent.client() as client:
        status = client.status()
        _accepted, done = client.generate(_request(steps=3))
    assert status["agent"]["curve"] is True
    assert status["agent"]["public_key"] == curve_agent.keys.public.decode()
    assert done.type == "done" and done.get("steps") == 3


def test_unknown_client_key_is_refused_clearly(curve_agent, tmp_path):
    stranger = generate_keypair(tmp_path / "stranger")
    failure = _refused(curve_agent, stranger)
    assert failure.reason == "auth"
    assert "refused this client's key" in str(failure)
    assert str(stranger.public_path) in str(failure)  # says which file to authorize
    assert "refused a connection with unknown CURVE key" in curve_agent.log()


def test_plain_client_is_refused_by_a_curve_agent(curve_agent, raw_peer):
    failure = _refused(curve_agent, None)
    # "protocol" (mechanism mismatch) or, when the agent resets first, "dropped": both say so
    assert failure.reason in ("protocol", "dropped") and "requires CURVE" in str(failure)
    raw = raw_peer(curve_agent.endpoint)  # a bare plain-TCP DEALER gets nothing at all
    raw.send(json.dumps({"type": "status"}).encode())
    with pytest.raises(TimeoutError):
        raw.recv(timeout_s=1.0)
    with curve_agent.client() as client:  # ...while authorized clients are still served
        assert client.status()["agent"]["curve"] is True


def test_wrong_server_key_is_reported(curve_agent, tmp_path):
    other = generate_keypair(tmp_path / "other")
    failure = _refused(curve_agent, curve_agent.operator, server_key=other.public)
    assert failure.reason == "dropped" and "server key is not its public key" in str(failure)


def test_authorizing_takes_effect_without_restart(curve_agent, tmp_path):
    late = generate_keypair(tmp_path / "late")
    _refused(curve_agent, late)
    authorize(curve_agent.directory / "keys" / "authorized_keys", late.public_path, "late")
    with curve_agent.client_with(late, timeout_s=5.0) as client:
        assert client.status()["agent"]["curve"] is True


def test_cli_against_a_curve_agent(curve_agent, tmp_path):
    server_key = str(curve_agent.keys.public_path)
    operator = str(curve_agent.directory / "operator")
    args = ("submit", "a boat", "--steps", "2", "--size", "256x256", "-a", curve_agent.endpoint)
    code, output = _run(*args, "--json", "--server-key", server_key, "--client-keys", operator)
    assert code == ExitCode.OK, output
    assert json.loads(output)["steps"] == 2
    generate_keypair(tmp_path / "stranger")
    code, output = _run(
        *args, "--server-key", server_key, "--client-keys", str(tmp_path / "stranger")
    )
    assert code == ExitCode.BAD_INPUT and "refused this client's key" in output
    code, output = _run("status", "-a", curve_agent.endpoint, "--timeout", "5")
    assert code == ExitCode.BAD_INPUT and "requires CURVE" in output
    own = str(curve_agent.directory / "keys")  # the agent's own pair: always accepted
    code, output = _run(
        "status", "-a", curve_agent.endpoint, "--server-key", own, "--client-keys", own, "--json"
    )
    assert code == ExitCode.OK and '"curve": true' in output
    code, output = _run("status", "-a", curve_agent.endpoint, "--server-key", str(tmp_path / "x"))
    assert code == ExitCode.BAD_INPUT and "neither a key file" in output


def test_curve_client_against_a_plain_agent(shared_agent, tmp_path):
    keys = generate_keypair(tmp_path / "client")
    with AgentClient(shared_agent.endpoint, timeout_s=5.0) as plain:
        assert plain.status()["agent"]["curve"] is False  # loopback, no key pair: plain TCP
    security = ClientSecurity(keys.public, keys)
    with (
        pytest.raises(HandshakeFailed, match="not use CURVE"),
        AgentClient(shared_agent.endpoint, timeout_s=5.0, security=security) as client,
    ):
        client.status()


def test_curve_agent_stops_cleanly_on_sigterm(tmp_path):
    agent = CurveAgent(tmp_path / "stopping")
    try:
        agent.start()
        # the ZAP thread must not block the exit: a hang is a TimeoutExpired, not a slow pass
        code, _took = agent.stop(timeout_s=60.0)
    finally:
        agent.close()
    assert code == 0
    assert "CURVE on: public key" in agent.log()


def test_handshake_monitor_sockets_are_released(curve_agent):
    context = zmq.Context()
    try:
        for _ in range(3):
            with (
                AgentClient(curve_agent.endpoint, timeout_s=5.0, context=context) as client,
                pytest.raises(HandshakeFailed),
            ):
                client.status()
    finally:
        context.term()  # would hang if a monitor or DEALER socket were left open
