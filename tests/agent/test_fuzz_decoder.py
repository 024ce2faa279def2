"""Hypothesis against the decoders, as a client and as a peer: valid frames parse to the right
message; mutated, truncated and random ones raise ProtocolError and nothing else.

A valid message is a typical one of its type with a few fields redrawn from their documented
values (docs/protocol.md, not the schemas in agent/node/protocol.py: a schema stricter or looser
than the docs fails here) and a few optional fields dropped. Few draws per message keep
the 500 messages per role (DEDGEAI_FUZZ_EXAMPLES for a deeper run) within a second or two.
Whatever parses must be sane (``_assert_sane``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedgeai.agent.errors import ErrorCode, ProtocolError
from dedgeai.agent.node import protocol as p

EXAMPLES = int(os.environ.get("DEDGEAI_FUZZ_EXAMPLES", "500"))  # per role; derandomized
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TASK = "6f9619ff-8b86-4011-b42d-00cf4fc964ff"
NODE = "0b4a2c9e-3d1f-4e5a-9c7b-2f6d8e1a4b3c"
MARKUP = re.compile(r"\[[a-zA-Z#/@]")  # docs: a name has no `[` before a letter, `#`, `/`, `@`

# --- documented values ----------------------------------------------------------------

ALPHABET = "abcXYZ019 -_.:[]{}#/@()ü€中\U0001f600"  # printable, some markup-ish characters
TOKEN = ALPHABET.replace(" ", "")
uuids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
ids = st.text(ALPHABET + "\x00\n", min_size=1, max_size=64) | st.just("i" * 64)
names = st.text(ALPHABET, max_size=64).map(lambda s: MARKUP.sub("(", s)) | st.sampled_from(
    ["n" * 64, "gpu[1] (lab)", ""]
)
tokens = st.text(TOKEN, min_size=1, max_size=64) | st.just("t" * 64)
times = st.floats(0, 1e12) | st.integers(0, 10**12)
loads = st.floats(0, 1e9) | st.integers(0, 10**9)
sides = st.sampled_from(range(256, 2049, 16))
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.sampled_from([None, True, False, 0, -1, 2**63 - 1, -(2**63), 0.5, -1e300, "",
                           "nvml", "ü" * 20]) | finite  # fmt: skip
device = st.fixed_dictionaries({"index": st.integers(0, 16), "power_w": scalars})
telemetry = st.fixed_dictionaries(
    {}, optional={"source": st.sampled_from(["nvml", "psutil"]), "extra": scalars,
                  "devices": st.lists(device, max_size=3),
                  "note": st.text(max_size=30) | st.just("n" * 1024)},
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Kind:
    """A message type: a typical body, the documented values of each field, what may go."""

    name: str
    typical: dict[str, Any]
    values: dict[str, st.SearchStrategy[Any]]
    required: tuple[str, ...] = ()


SUBMIT = {
    "prompt": st.text(max_size=40).map(lambda s: "p" + s) | st.just("p" * 2000),  # never blank
    "negative_prompt": st.text(max_size=20) | st.just("n" * 2000),
    "steps": st.integers(1, 100),
    "width": sides,
    "height": sides,
    "guidance": st.floats(0, 30) | st.integers(0, 30),
    "seed": st.integers(0, 2**63 - 1),
    "task": uuids,
    "wait": st.booleans(),
}
GOSSIP = {
    "node": uuids, "sent_at": times, "backlog_steps": loads, "interval_load_steps": loads,
    "name": names, "endpoint": st.sampled_from(["tcp://10.0.0.3:7700", "ipc:///run/a",
                                                 "inproc://x", "tcp://" + "h" * 250]),
    "backlog_s": st.none() | loads,
    "capacity_steps_per_s": st.none() | st.floats(1e-9, 1e6) | st.integers(1, 10**6),
    "model": st.text(max_size=20) | st.just("m" * 256), "emulated": st.booleans(),
    "plan": st.text(max_size=20) | st.just("p\n" * 2048), "accepting": st.booleans(),
    "queued": st.integers(0, 10**6), "running": st.none() | uuids, "telemetry": telemetry,
    "version": st.text(max_size=64) | st.just("v" * 64), "started_at": times,
}  # fmt: skip
GOSSIP_BODY = {"node": NODE, "name": "edge-3", "endpoint": "tcp://10.0.0.3:7700", "sent_at": 1.8e9,
               "backlog_steps": 112.0, "backlog_s": 4.1, "interval_load_steps": 28.0,
               "capacity_steps_per_s": 27.3, "model": "sd3", "emulated": False, "plan": "gpu",
               "accepting": True, "queued": 3, "running": TASK, "version": "0.1.0",
               "started_at": 1.7e9,
               "telemetry": {"source": "nvml", "devices": [{"index": 0}]}}  # fmt: skip
GOSSIP_REQUIRED = ("node", "sent_at", "backlog_steps", "interval_load_steps")

CLIENT = [
    Kind("submit", {"prompt": "a cat", "steps": 4, "width": 256, "height": 256, "task": TASK},
         SUBMIT, ("prompt",)),
    Kind("status", {}, {}),
    Kind("result", {"task": TASK, "wait": True}, {"task": uuids, "wait": st.booleans()}, ("task",)),
    Kind("cancel", {"task": TASK}, {"task": uuids}, ("task",)),
    Kind("tasks", {"limit": 50, "state": "done"},
         {"limit": st.integers(1, 1000), "state": st.sampled_from(p.TASK_STATES)}),
]  # fmt: skip
OWNERS = st.text(TOKEN, min_size=1, max_size=128) | st.sampled_from(["o" * 128, "local"])
PEER = [
    Kind("submit", {"prompt": "a cat", "task": TASK, "origin": NODE, "owner": "local"},
         {**SUBMIT, "origin": tokens, "owner": OWNERS}, ("prompt", "task", "origin")),
    Kind("gossip", GOSSIP_BODY, GOSSIP, GOSSIP_REQUIRED),
    Kind("cancel", {"task": TASK}, {"task": uuids}, ("task",)),
]  # fmt: skip
DONE = {"task": TASK, "origin": NODE, "prompt": "a cat", "negative_prompt": "", "guidance": 5.0,
        "width": 256, "height": 256, "steps": 4, "seed": 7, "backend": "sd3", "emulated": False,
        "peak_memory_bytes": 1 << 30, "png_bytes": 9, "attempts": 1, "submitted_at": 1.8e9,
        "started_at": 1.8e9, "finished_at": 1.8e9, "timings": {"denoise_s": 1.5},
        "ran_on": {"node": NODE, "name": "edge-3"},
        "placement": {"policy": "lad", "probs": [0.25, 0.75], "local": False}}  # fmt: skip
TIMINGS = st.dictionaries(st.text(max_size=8), st.floats(0, 1e6), max_size=4)
PLACEMENT = st.fixed_dictionaries({"probs": st.lists(st.floats(0, 1), max_size=8)})
REPLIES = [
    Kind("accepted", {"task": TASK, "position": 0, "origin": NODE, "forwarded_to": "edge-3"},
         {"task": uuids, "position": st.integers(0, 10**9), "origin": tokens,
          "forwarded_to": names}, ("task", "position", "origin")),
    Kind("progress", {"task": TASK, "stage": "denoise", "step": 3, "steps": 28, "position": 0},
         {"task": uuids, "stage": st.sampled_from(p.STAGES), "step": st.integers(0, 100),
          "steps": st.integers(1, 100), "position": st.integers(0, 10**9)},
         ("task", "stage", "step", "steps", "position")),
    Kind("done", DONE, {"task": uuids, "origin": tokens, "guidance": st.floats(0, 30),
                        "width": sides, "seed": st.integers(0, 2**63 - 1),
                        "emulated": st.booleans(), "finished_at": st.none() | times,
                        "peak_memory_bytes": st.none() | st.integers(0, 2**40),
                        "future_field": scalars, "timings": TIMINGS, "placement": PLACEMENT},
         ("task",)),
    Kind("error", {"code": "busy", "message": "full", "task": TASK, "field": "steps"},
         {"code": st.sampled_from([c.value for c in ErrorCode]) | tokens,
          "message": st.text(max_size=50) | st.just("m" * 2000), "task": uuids, "field": ids},
         ("code", "message")),
    Kind("cancelled", {"task": TASK, "state": "cancelled"},
         {"task": uuids, "state": st.sampled_from(["cancelled", "cancelling"])}, ("task", "state")),
    Kind("gossip", {**GOSSIP_BODY, "echo_sent_at": 1.8e9}, {**GOSSIP, "echo_sent_at": times},
         (*GOSSIP_REQUIRED, "echo_sent_at")),
]  # fmt: skip


def valid(kinds: list[Kind]) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """A typical message of one of ``kinds``, some optional fields dropped, some redrawn."""
    plans = []  # strategies built once: building them per example would dominate the run
    for kind in kinds:
        optional = [k for k in kind.typical if k not in kind.required]
        drops = st.integers(0, (1 << len(optional)) - 1) if optional else st.just(0)  # a bitmask
        pairs = st.one_of([st.tuples(st.just(k), v) for k, v in kind.values.items()])
        changes = st.lists(pairs, max_size=3) if kind.values else st.just([])
        plans.append((kind, optional, drops, changes))
    pick = st.sampled_from(plans)

    @st.composite
    def draw_valid(draw: Any) -> tuple[str, dict[str, Any]]:
        kind, optional, drops, changes = draw(pick)
        mask = draw(drops)
        body = {
            k: v
            for k, v in kind.typical.items()
            if k not in optional or not mask >> optional.index(k) & 1
        }
        body.update(draw(changes))
        if kind.name == "progress":
            body["step"] = min(body["step"], body["steps"])  # docs: step <= steps
        return kind.name, body

    return draw_valid()


# --- mutations ------------------------------------------------------------------------


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


STRANGE = st.sampled_from([
    math.nan, math.inf, -math.inf, 2**64 - 1, -(2**63), 2**63 - 1, True, False, None, [], {},
    [[]], {"a": {"b": {"c": {"d": {"e": 1}}}}}, _deep(40), _deep(900), b"bytes", b"", "",
    "x" * 70_000, "\x00\x1b[31m", "[bold]x[/]", 1e308, -1, 0, 1.5, -0.0, "nan", "٠" * 32,
    msgpack.ExtType(1, b"x"), msgpack.Timestamp(0), "6F9619FF8B86D011B42D00CF4FC964FF",
    {"k" * 300: 1}, [math.nan], {"x": math.inf}, list(range(5000)), {"a": [1, "b", None]},
    [{"devices": [{"x": [1]}]}], "{6f9619ff-8b86-4011-b42d-00cf4fc964ff}", "tcp://a b",
]) | scalars | st.binary(max_size=8) | st.lists(scalars, max_size=3) | st.integers(
    -(2**63), 2**64 - 1)  # fmt: skip
KEYS = st.sampled_from(["v", "type", "id", "task", "steps", "step", "prompt", "node", "png",
                        "telemetry", "code", "echo_sent_at", "origin", "owner", "x"])  # fmt: skip
KINDS = st.sampled_from([*p.REQUEST_TYPES, *p.REPLY_TYPES, "", "SUBMIT"]) | STRANGE


ACTIONS = st.lists(st.sampled_from(["set", "set", "set", "drop", "add", "type", "v", "id"]),
                   min_size=1, max_size=2)  # fmt: skip
INDEX = st.integers(0, 1 << 16)
TAILS = st.sampled_from(["none", "png", "png", "junk", "cut", "extra", "empty"])


@st.composite
def mutated(draw: Any, valid_messages: Any) -> list[bytes]:
    kind, body = draw(valid_messages)
    msg: dict[Any, Any] = {"v": 1, "type": kind, "id": "r1", **body}
    for action in draw(ACTIONS):
        keys = list(msg)
        if action == "set" and keys:
            msg[keys[draw(INDEX) % len(keys)]] = draw(STRANGE)
        elif action == "drop" and keys:
            msg.pop(keys[draw(INDEX) % len(keys)])
        elif action == "add":
            msg[draw(KEYS | st.binary(max_size=4))] = draw(STRANGE)  # bytes keys stay bytes
        elif action == "type":
            msg["type"] = draw(KINDS)
        else:
            msg[action] = draw(STRANGE | ids)
    frames = [msgpack.packb(msg, use_bin_type=True)]
    tail = draw(TAILS)
    if tail == "png":
        frames.append(p.PNG_MAGIC + draw(st.binary(max_size=8)))
    elif tail == "junk":
        frames.append(draw(st.binary(max_size=16)))
    elif tail == "cut":
        frames[0] = frames[0][: draw(INDEX) % len(frames[0])]
    elif tail == "extra":
        frames += [b"", b"x"]
    elif tail == "empty":
        frames = []
    return frames


VALID_CLIENT, VALID_PEER, VALID_REPLIES = valid(CLIENT), valid(PEER), valid(REPLIES)
BAD_CLIENT, BAD_PEER, BAD_REPLIES = (mutated(v) for v in (VALID_CLIENT, VALID_PEER, VALID_REPLIES))
# One strategy per role, drawn by @given directly (st.data() costs more per draw).
CLIENT_CASES = st.tuples(st.just("request"), VALID_CLIENT) | st.tuples(st.just("bad"), BAD_CLIENT)
PEER_CASES = (
    st.tuples(st.just("request"), VALID_PEER)
    | st.tuples(st.just("reply"), st.tuples(VALID_REPLIES, st.booleans(), st.binary(max_size=8)))
    | st.tuples(st.just("bad request"), BAD_PEER)
    | st.tuples(st.just("bad reply"), BAD_REPLIES)
)

# --- properties -----------------------------------------------------------------------


def _frames(kind: str, body: dict[str, Any], png: bytes = b"") -> list[bytes]:
    frames = [msgpack.packb(p.envelope(kind, "r1", **body), use_bin_type=True)]
    return frames + [png] if kind == "done" else frames


def _assert_sane(value: Any) -> None:
    """Whatever a decoder lets through: finite, bounded, not deeply nested."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)  # type: ignore[arg-type]
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        assert depth <= 12, "nested too deep"
        if isinstance(item, float):
            assert math.isfinite(item)
        elif isinstance(item, int):
            assert -(2**63) <= item < 2**63
        elif isinstance(item, str):
            assert len(item) <= 65_536
        elif isinstance(item, dict):
            assert all(isinstance(k, str) and len(k) <= 4096 for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
        else:
            assert item is None or isinstance(item, bytes), type(item)


def _only_protocol_errors(parse: Any, frames: list[bytes]) -> None:
    try:
        parsed = parse(frames)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode) and len(exc.message) < 600
        return
    _assert_sane(parsed)


def _typed(key: str, value: Any) -> Any:
    return value.lower() if key in ("task", "node", "running") and value else value


def _expect_request(kind: str, body: dict[str, Any]) -> None:
    msg = p.parse_request(_frames(kind, body))
    expected = {"submit": p.Submit, "status": p.StatusRequest, "result": p.ResultRequest,
                "cancel": p.CancelRequest, "tasks": p.TasksRequest,
                "gossip": p.Gossip}[kind]  # fmt: skip
    assert type(msg) is expected and msg.id == "r1"
    if "task" in body:
        assert getattr(msg, "task", None) == body["task"].lower()
    if isinstance(msg, p.Submit):
        assert msg.request.prompt == body["prompt"] and msg.owner == body.get("owner")
        assert msg.request.steps == body.get("steps", 28) and msg.origin == body.get("origin")
        assert msg.request.guidance == body.get("guidance", 5.0)
    if isinstance(msg, p.Gossip):
        assert msg.body == {k: _typed(k, v) for k, v in body.items()}
        assert all(type(msg.body[k]) is float for k in GOSSIP_REQUIRED[1:])
    _assert_sane(msg)


def _expect_reply(kind: str, body: dict[str, Any], png: bytes) -> None:
    reply = p.parse_peer_reply(_frames(kind, body, png))
    assert reply.type == kind and reply.id == "r1"
    assert reply.fields == {k: _typed(k, v) for k, v in body.items()}
    assert type(reply.get("step", 0)) is int and reply.png == (png if kind == "done" else b"")
    _assert_sane(reply)


@SETTINGS
@given(case=CLIENT_CASES)
def test_client_role(case: tuple[str, Any]) -> None:
    """What a client may send: valid requests parse, anything else is a ProtocolError."""
    choice, drawn = case
    if choice == "request":
        _expect_request(*drawn)
    else:
        _only_protocol_errors(p.parse_request, drawn)


@SETTINGS
@given(case=PEER_CASES)
def test_peer_role(case: tuple[str, Any]) -> None:
    """What a peer may send: forwarded submits and gossip to our ROUTER, replies on our link."""
    choice, drawn = case
    if choice == "request":
        _expect_request(*drawn)
    elif choice == "reply":
        (kind, body), empty, tail = drawn
        empty = empty and body.get("emulated") is True  # no image: the emulated backend
        _expect_reply(kind, body, b"" if empty else p.PNG_MAGIC + tail)
    elif choice == "bad request":
        _only_protocol_errors(p.parse_request, drawn)
    else:
        _only_protocol_errors(p.parse_peer_reply, drawn)
        _only_protocol_errors(p.parse_reply, drawn)


@settings(SETTINGS, max_examples=max(1, EXAMPLES // 4))
@given(frame=st.binary(max_size=64), frames=st.lists(st.binary(max_size=8), max_size=3))
def test_random_bytes(frame: bytes, frames: list[bytes]) -> None:
    for parse in (p.parse_request, p.parse_reply, p.parse_peer_reply):
        _only_protocol_errors(parse, [frame])
        _only_protocol_errors(parse, frames)
