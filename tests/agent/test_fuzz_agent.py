"""Hypothesis against one live agent, as a client and as a peer: every frame gets its reply.

The agent (emulated, policy ``local``, keyless on loopback) lists one peer endpoint on
127.0.0.1, where a silent ROUTER sinks its gossip. In keyless mode a sender is a peer when
its address is a peer endpoint's host: a DEALER connected from 127.0.0.1 speaks as a peer,
one bound to the source address 127.0.0.2 as a client. Each example is a batch of 1-3
generated messages (valid ones of every type, mutated ones, raw bytes, odd frame counts),
then a sentinel (an unknown type, the cheapest frame to answer): replies on one connection
keep their order, so by the sentinel's reply every frame of the batch has had its answer.

Property: a frame the agent can read an id from gets exactly one reply with that id (a
submit or result that is accepted may stream more); frames without a readable id get one
``id: None`` error each, in order; a frame ``protocol.parse_request`` rejects is answered
with its code; a client's gossip and forwarded submits are ``forbidden``, a peer's never
are (agent/security/authority.py). The agent stays alive and answers ``status`` after both runs.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedgeai.agent.errors import ErrorCode, ProtocolError
from dedgeai.agent.lab.harness import AgentProcess
from dedgeai.agent.node import protocol as p

EXAMPLES = int(os.environ.get("DEDGEAI_FUZZ_EXAMPLES", "500"))  # per role; derandomized
REPLY_TIMEOUT_S = 10.0
ID_SLOT = "\x00id-slot"  # replaced by a fresh unique id when the frame is sent
TASKS = [str(uuid.UUID(int=i + 1, version=4)) for i in range(24)]  # shared by every example
ORIGINS = [str(uuid.UUID(int=1000 + i, version=4)) for i in range(3)]
FORBIDDEN = ErrorCode.FORBIDDEN.value
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies ----------------------------------------------------------------------
# Hypothesis draws cheap choices (a template, an operation, a strange value, a selector)
# from pools built once here with a seeded RNG: thousands of examples per role stay fast.


# Submits are a small share: each one is journaled and run, the rest is answered at once.
KINDS = ("submit", "status", "result", "cancel", "tasks", "gossip", "forwarded", "status",
         "result", "cancel", "tasks", "gossip", "status")  # fmt: skip


def _valid_pool(rng: random.Random, size: int) -> list[dict[str, Any]]:
    """Valid messages of every type, edge values included (``id`` is ID_SLOT)."""
    prompts = ["a cat", "a red bus", "<b>markup</b> & \x07 bell", "é🐱\u202e", "x" * 2000]
    pool: list[dict[str, Any]] = []
    for i in range(size):
        msg: dict[str, Any] = {"v": 1, "id": ID_SLOT}
        kind = KINDS[i % len(KINDS)]
        if kind in ("submit", "forwarded"):
            msg.update(type="submit", prompt=rng.choice(prompts), steps=rng.randint(1, 3))
            msg.update(width=rng.choice([256, 272]), height=rng.choice([256, 272]))
            msg.update(guidance=rng.choice([0, 0.0, 4.5, 30]), seed=rng.choice([0, 7, 2**63 - 1]))
            msg.update(task=rng.choice(TASKS), wait=rng.random() < 0.5)
            if rng.random() < 0.2:
                del msg["task"]
            if kind == "forwarded":
                msg.update(origin=rng.choice(ORIGINS), wait=True)
                if rng.random() < 0.5:
                    msg["owner"] = rng.choice(["local", "key:" + "A" * 40])
        elif kind in ("result", "cancel"):
            msg.update(type=kind, task=rng.choice(TASKS))
            if kind == "result" and rng.random() < 0.5:
                msg["wait"] = rng.random() < 0.5
        elif kind == "tasks":
            msg.update(type="tasks", limit=rng.choice([1, 50, p.MAX_TASKS_LIMIT]))
            if rng.random() < 0.5:
                msg["state"] = rng.choice(p.TASK_STATES)
        elif kind == "gossip":
            msg.update(type="gossip", node=rng.choice(ORIGINS), sent_at=1.7e9 + i)
            msg.update(backlog_steps=rng.choice([0, 2.5]), interval_load_steps=0.5)
            if rng.random() < 0.5:
                msg.update(accepting=True, queued=1, started_at=1.0, capacity_steps_per_s=None)
        else:
            msg["type"] = "status"
        pool.append(msg)
    return pool


VALID = _valid_pool(random.Random(20261202), 260)
RAW = [b"", b"\xc1", b"\x91" * 5000, b"\xdd\xff\xff\xff\xff", b"\x81\x01\x02", b"\x81\xc0\xc0",
       b"\x83\xa1v\x01\xa4type\xa6status\xa2id\xa2\xff\xfe", b"\x93\x01\x02\x03",
       b"\xa6status", b"\xc0", b"\x81\xa2id\xa1x"]  # fmt: skip
STRANGE = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            False,
            0,
            -1,
            2**63 - 1,
            2**64 - 1,
            -(2**63),
            math.nan,
            math.inf,
            -math.inf,
            1e308,
            -0.0,
            "",
            " ",
            "x" * 2001,
            "<script>",
            "\x00\x1b[2J\r\n",
            "\u202e",
            b"",
            b"\x00" * 8,
            [],
            {},
            ["status"],
            {"a": {"b": [None]}},
            list(range(100)),
        ]
    ),  # fmt: skip
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),  # NaN and infinities included
    st.text(max_size=20),
    st.binary(max_size=40),
)
OPS = ("valid", "set", "drop", "add", "type", "unhashable_type", "version", "raw", "truncate",
       "req", "frames")  # fmt: skip
PROBE = st.tuples(st.sampled_from(VALID), st.sampled_from(OPS), STRANGE, st.sampled_from(range(64)))
BATCH = st.lists(PROBE, min_size=1, max_size=3)


def _packed(msg: Any) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def build(template: dict[str, Any], op: str, strange: Any, k: int) -> list[Any]:
    """The frames of one probe (dicts are packed when sent): ``template`` after ``op``."""
    msg = dict(template)
    keys = sorted(msg)
    if op == "set":
        msg[keys[k % len(keys)]] = strange
    elif op == "drop":
        del msg[keys[k % len(keys)]]
    elif op == "add":
        msg[("priority", "Prompt", "png", "", "owner", "x" * 70, "\x00")[k % 7]] = strange
    elif op == "type":
        msg["type"] = strange if k % 2 else ("submitt", "STATUS", "done", "")[k % 4]
    elif op == "unhashable_type":
        msg["type"] = ([], {}, ["status"], {"submit": 1})[k % 4]
    elif op == "version":
        msg["v"] = strange if k % 2 else (0, 2, "1", 1.0, True)[k % 5]
    elif op == "raw":
        return [strange if isinstance(strange, bytes) else RAW[k % len(RAW)]]
    elif op == "truncate":
        whole = _packed(msg)
        return [whole[: max(1, len(whole) * k // 64)]]
    elif op == "req":
        return [b"", msg]  # REQ-style delimiter: still one message
    elif op == "frames":
        return ([msg, msg], [msg, b""], [b"", b"", msg], [b""], [b"", b""], [RAW[1], msg])[k % 6]
    return [msg]


# --- the agent and its two senders -----------------------------------------------------


class Wire:
    """One DEALER from a chosen source address; frames with unique ids, replies in order."""

    def __init__(self, endpoint: str, source: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = endpoint.rsplit(":", 1)[1]
        self.socket.connect(f"tcp://{source}:0;127.0.0.1:{port}")
        self.ids = itertools.count()
        self.killer: str | None = None

    def frames(self, parts: list[Any]) -> list[bytes]:
        frames = []
        for part in parts:
            if isinstance(part, dict):
                rid = part.get("id")
                if isinstance(rid, str) and 0 < len(rid) <= p.MAX_ID_CHARS:  # ID_SLOT too
                    part = {**part, "id": f"h{next(self.ids)}"}  # unique: replies match
                frames.append(_packed(part))
            else:
                frames.append(part)
        return frames

    def replies_until(self, sentinel: str, agent: AgentProcess, batch: Any) -> list[p.Reply]:
        replies: list[p.Reply] = []
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while not self.socket.poll(200):
            alive = agent.proc is not None and agent.proc.poll() is None
            if not alive or time.monotonic() > deadline:
                # Shrinking goes on against a dead agent: name the batch that killed it.
                self.killer = self.killer or repr(batch)[:2000]
                tail = "\n".join(agent.log().splitlines()[-15:])
                raise AssertionError(
                    f"no reply to {sentinel} (agent alive: {alive}); first unanswered "
                    f"batch: {self.killer}\n{tail}"
                )
        while True:
            frames = self.socket.recv_multipart()
            if len(frames) > 1 and frames[0] == b"":
                frames = frames[1:]
            reply = p.parse_reply(frames)
            if reply.id == sentinel:
                return replies
            replies.append(reply)
            if not self.socket.poll(int(REPLY_TIMEOUT_S * 1000)):
                raise AssertionError(f"the reply to {sentinel} did not come")

    def close(self) -> None:
        self.socket.close(0)


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    sink = zmq.Context.instance().socket(zmq.ROUTER)  # the configured peer: never answers
    sink.setsockopt(zmq.LINGER, 0)
    port = sink.bind_to_random_port("tcp://127.0.0.1")
    agent = AgentProcess(
        Path(tmp_path_factory.mktemp("fuzz")),
        policy="local",
        peers=[f"tcp://127.0.0.1:{port}"],
        emulated_steps_per_second=5000.0,
        log_level="warning",
        max_queue=64,
    )
    agent.env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        yield agent.start()
    finally:
        agent.close()
        sink.close(0)


@pytest.fixture(scope="module")
def wires(fuzz_agent: AgentProcess) -> Iterator[dict[str, Wire]]:
    made = {
        "peer": Wire(fuzz_agent.endpoint, "127.0.0.1"),
        "client": Wire(fuzz_agent.endpoint, "127.0.0.2"),
    }
    yield made
    for wire in made.values():
        wire.close()


# --- the property ----------------------------------------------------------------------


def _body(frames: list[bytes]) -> list[bytes]:
    """The frames the agent parses: a leading empty frame is a REQ-style delimiter."""
    return frames[1:] if len(frames) >= 2 and frames[0] == b"" else frames


def _readable_id(body: list[bytes]) -> str | None:
    """The id the agent echoes: a string of 1..64 characters in one msgpack map."""
    if len(body) != 1:
        return None
    try:
        msg = msgpack.unpackb(body[0], raw=False, strict_map_key=True)
    except Exception:  # the agent cannot decode it either: bad_frame, id None
        return None
    rid = msg.get("id") if isinstance(msg, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= p.MAX_ID_CHARS else None


def _expected(body: list[bytes]) -> tuple[ErrorCode | None, p.ClientMessage | None]:
    """What ``parse_request`` makes of the frames, as the agent will see them."""
    try:
        return None, p.parse_request(body)
    except ProtocolError as exc:
        return exc.code, None


def _peer_only(msg: p.ClientMessage | None) -> bool:
    if isinstance(msg, p.Gossip):
        return True
    return isinstance(msg, p.Submit) and (msg.origin is not None or msg.owner is not None)


def check_batch(wire: Wire, role: str, agent: AgentProcess, batch: list[tuple[Any, ...]]) -> None:
    sent = [wire.frames(build(*probe)) for probe in batch]
    # Before sending: a crash of the parser shows here, in this process, with its frame.
    expected = [_expected(_body(frames)) for frames in sent]
    for frames in sent:
        wire.socket.send_multipart(frames)
    sentinel = f"s{next(wire.ids)}"
    # The cheapest message to answer: an unknown type (bad_type) echoes its id.
    wire.socket.send(_packed({"v": 1, "type": "sentinel", "id": sentinel}))
    replies = wire.replies_until(sentinel, agent, batch)
    by_id: dict[str | None, list[p.Reply]] = {}
    for reply in replies:
        by_id.setdefault(reply.id, []).append(reply)
    streaming: set[str] = set()
    ids = [_readable_id(_body(frames)) for frames in sent]  # None: no usable id
    for frames, rid, (code, msg) in zip(sent, ids, expected, strict=True):
        mine = by_id.get(rid) or []
        assert mine, f"{role}: no reply (id {rid!r}) to {frames!r:.300}"
        first = mine.pop(0)  # replies keep their order: the first one left is this frame's
        if code is not None:
            assert (first.type, first.get("code")) == ("error", code.value), (frames, first)
            continue
        assert first.get("code") not in ("bad_frame", "bad_version", "bad_type", "bad_field")
        if role == "client" and _peer_only(msg):
            assert first.get("code") == FORBIDDEN, (msg, first)
        if role == "peer" or not _peer_only(msg):
            assert first.get("code") != FORBIDDEN, (role, msg, first)
        if rid is not None and first.type in ("accepted", "progress"):
            streaming.add(rid)  # an accepted submit or a live result: progress, done follow
    # Progress and done of earlier batches' submits may arrive meanwhile: only ours count.
    extra = {rid: by_id[rid] for rid in set(ids) if by_id.get(rid) and rid not in streaming}
    assert not extra, f"{role}: more than one reply to a frame: {extra}"


@FUZZ_SETTINGS
@given(batch=BATCH)
def test_every_frame_from_a_client_gets_exactly_one_reply(
    fuzz_agent: AgentProcess, wires: dict[str, Wire], batch: list[tuple[Any, ...]]
) -> None:
    check_batch(wires["client"], "client", fuzz_agent, batch)


@FUZZ_SETTINGS
@given(batch=BATCH)
def test_every_frame_from_a_peer_gets_exactly_one_reply(
    fuzz_agent: AgentProcess, wires: dict[str, Wire], batch: list[tuple[Any, ...]]
) -> None:
    check_batch(wires["peer"], "peer", fuzz_agent, batch)


def test_the_agent_is_alive_and_answers_status_after_the_fuzzing(fuzz_agent: AgentProcess) -> None:
    assert fuzz_agent.proc is not None and fuzz_agent.proc.poll() is None
    with fuzz_agent.client(timeout_s=5.0) as client:
        assert client.status()["agent"]["protocol"] == p.PROTOCOL_VERSION
