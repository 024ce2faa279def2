"""The per-message schemas: each reproduced crash, each bound, and good messages still parse."""

from __future__ import annotations

import math
import uuid
from typing import Any

import msgpack
import pytest
import zmq

from dedgeai.agent.errors import ErrorCode, ProtocolError
from dedgeai.agent.lab.harness import free_ports
from dedgeai.agent.node import protocol as p
from dedgeai.models.backend import GenerationRequest

TASK = "6f9619ff-8b86-4011-b42d-00cf4fc964ff"
NODE = "0b4a2c9e-3d1f-4e5a-9c7b-2f6d8e1a4b3c"
PNG = p.PNG_MAGIC + b"\x00\x00\x00\rIHDR"


def _pack(msg: Any) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def _request(**msg: Any) -> list[bytes]:
    return [_pack({"v": 1, "id": "r1", **msg})]


def _gossip_body(**changes: Any) -> dict[str, Any]:
    device = {"index": 0, "name": "NVIDIA H200", "kind": "gpu", "utilization_percent": 87.0,
              "memory_used_bytes": 40 << 30, "memory_total_bytes": 141 << 30,
              "temperature_c": None, "power_w": 512.5, "sm_clock_mhz": 1980,
              "memory_clock_mhz": None}  # fmt: skip
    body = {"node": NODE, "name": "edge-3", "endpoint": "tcp://10.0.0.3:7700", "sent_at": 1.8e9,
            "backlog_steps": 112, "backlog_s": 4.1, "interval_load_steps": 28.0,
            "capacity_steps_per_s": 27.3, "model": "sd3-medium", "emulated": False,
            "plan": "placement resident on cuda:0\n  module ...", "accepting": True, "queued": 3,
            "running": TASK, "version": "0.1.0", "started_at": 1.7e9,
            "telemetry": {"source": "nvml", "sampled_at": 1.8e9, "note": "",
                          "devices": [device]}}  # fmt: skip
    body.update(changes)
    return body


def _progress(**changes: Any) -> dict[str, Any]:
    return {**p.progress_reply("fwd:" + TASK, p.TaskId(TASK), "denoise", 3, 28, 0), **changes}


def _done(**changes: Any) -> dict[str, Any]:
    meta = {"task": TASK, "origin": NODE, "prompt": "a cat", "negative_prompt": "",
            "guidance": 5.0, "width": 256, "height": 256, "steps": 4, "seed": 7,
            "backend": "sd3", "emulated": False, "peak_memory_bytes": 1 << 30,
            "png_bytes": len(PNG), "attempts": 1, "submitted_at": 1.8e9, "started_at": 1.8e9,
            "finished_at": 1.8e9 + 2, "timings": {"denoise_s": 1.5},
            "ran_on": {"node": NODE, "name": "edge-3"},
            "placement": {"policy": "lad", "probs": [0.25, 0.75], "local": False}}  # fmt: skip
    return {**p.envelope("done", "r1", **meta), **changes}


def _raises(parse: Any, frames: list[bytes]) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse(frames)
    return caught.value


def _bad_field(parse: Any, frames: list[bytes], field: str) -> None:
    error = _raises(parse, frames)
    assert error.code is ErrorCode.BAD_FIELD, error.message
    assert error.field == field, error.message


# --- the reproduced crashes ----------------------------------------------------------


@pytest.mark.parametrize("kind", [[], {}, [1, [2]], {"a": 1}])
def test_1_unhashable_type_is_bad_type_not_a_crash(kind: Any) -> None:
    error = _raises(p.parse_request, _request(type=kind))
    assert error.code is ErrorCode.BAD_TYPE and error.request_id == "r1"
    reply = _raises(p.parse_reply, [_pack({"v": 1, "type": kind, "id": "x"})])
    assert reply.code is ErrorCode.BAD_TYPE


@pytest.mark.parametrize("step", ["x", float("nan"), float("inf"), [1], None, True, 2.0, -1, 101])
def test_2_progress_step_from_a_peer_must_be_an_int_in_range(step: Any) -> None:
    _bad_field(p.parse_peer_reply, [_pack(_progress(step=step))], "step")


def test_2_progress_comes_out_typed() -> None:
    reply = p.parse_peer_reply([_pack(_progress(task=TASK.upper()))])
    assert reply.type == "progress" and reply.get("task") == TASK
    assert type(reply.get("step")) is int and type(reply.get("position")) is int
    error = _raises(p.parse_peer_reply, [_pack(_progress(step=29, steps=28))])
    assert error.code is ErrorCode.BAD_FIELD and "step" in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("interval_load_steps", float("nan")),
        ("interval_load_steps", -1),
        ("interval_load_steps", 1e9 + 1),
        ("backlog_steps", float("inf")),
        ("backlog_s", -0.5),
        ("capacity_steps_per_s", 0),
        ("capacity_steps_per_s", -3.0),
        ("capacity_steps_per_s", 1e6 + 1),
        ("capacity_steps_per_s", float("-inf")),
        ("name", "[bold red]boss[/]"),
        ("name", "\x1b[31mred"),
        ("name", "two\nlines"),
        ("name", "x" * 65),
        ("name", "rtl\u202eevil"),
        ("endpoint", "http://10.0.0.3:7700"),
        ("endpoint", "tcp://" + "h" * 251),
        ("endpoint", "tcp://a b:1"),
        ("node", "n"),
        ("running", "not-a-task"),
        ("queued", -1),
        ("queued", 10**6 + 1),
        ("queued", 1.0),
        ("sent_at", -1.0),
        ("sent_at", float("nan")),
        ("started_at", 1e13),
        ("model", "m" * 257),
        ("plan", "p" * 4097),
        ("version", "v" * 65),
        ("emulated", 1),
        ("telemetry", [1, 2]),
        ("telemetry", {"a": {"b": [{"c": 1}]}}),
        ("telemetry", {f"k{i}": i for i in range(65)}),
        ("telemetry", {"note": "n" * 1025}),
        ("telemetry", {"devices": [{"power_w": float("nan")}]}),
        ("telemetry", {"big": 2**64 - 1}),
        ("telemetry", {"raw": b"\x00"}),
    ],
)
def test_3_gossip_values_are_bounded(field: str, value: Any) -> None:
    frames = _request(type="gossip", **_gossip_body(**{field: value}))
    _bad_field(p.parse_request, frames, field)
    reply = _pack(p.envelope("gossip", "gossip", **_gossip_body(**{field: value}), echo_sent_at=1))
    _bad_field(p.parse_peer_reply, [reply], field)


def test_3_gossip_comes_out_typed() -> None:
    msg = p.parse_request(_request(type="gossip", **_gossip_body(node=NODE.upper())))
    assert isinstance(msg, p.Gossip) and msg.body["node"] == NODE
    assert type(msg.body["backlog_steps"]) is float and msg.body["backlog_steps"] == 112.0
    assert msg.body["telemetry"]["devices"][0]["name"] == "NVIDIA H200"
    minimal = {"node": NODE, "sent_at": 0, "backlog_steps": 0, "interval_load_steps": 0}
    assert p.parse_request(_request(type="gossip", **minimal)).body == {
        "node": NODE, "sent_at": 0.0, "backlog_steps": 0.0, "interval_load_steps": 0.0}  # fmt: skip
    wire = _gossip_body(name="gpu[1] x", capacity_steps_per_s=1e6, backlog_s=None, running=None)
    assert p.parse_request(_request(type="gossip", **wire)).body["name"] == "gpu[1] x"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (p.envelope("accepted", "r1", position=0, origin=NODE), "task"),
        (p.envelope("accepted", "r1", task=TASK, position=-1, origin=NODE), "position"),
        (p.envelope("accepted", "r1", task=TASK, position="0", origin=NODE), "position"),
        (p.envelope("accepted", "r1", task=TASK, position=0, origin=""), "origin"),
        (
            p.envelope("accepted", "r1", task=TASK, position=0, origin=NODE, forwarded_to="[x]"),
            "forwarded_to",
        ),
        (_progress(stage="thinking"), "stage"),
        (_progress(steps=0), "steps"),
        (_done(task=5), "task"),
        (_done(guidance=float("nan")), "guidance"),
        (_done(width=1 << 40), "width"),
        (_done(finished_at=-1.0), "finished_at"),
        (_done(timings={"a": [[[[["deep"]]]]]}), "timings"),
        (_done(placement={"probs": [float("nan")]}), "placement"),
        (_done(extra={"x": float("inf")}), "extra"),
        (_done(extra="e" * 4001), "extra"),
        (p.envelope("error", "r1", message="m"), "code"),
        (p.envelope("error", "r1", code="busy", message="m" * 2001), "message"),
        (p.envelope("error", "r1", code="has space", message="m"), "code"),
        (p.envelope("error", "r1", code="c" * 65, message="m"), "code"),
        (p.envelope("error", "r1", code="busy", message="m", task="t"), "task"),
        (p.envelope("cancelled", "r1", task=TASK, state="gone"), "state"),
        (p.envelope("gossip", "g", **_gossip_body()), "echo_sent_at"),
        (
            p.envelope(
                "agent_status",
                "r1",
                agent=[],
                backend={},
                telemetry={},
                queue={},
                capacity={},
                counters={},
            ),
            "agent",
        ),  # fmt: skip
        (p.envelope("task_list", "r1", tasks=[{"task": TASK}, 3]), "tasks"),
        (p.envelope("task_list", "r1", tasks={"task": TASK}), "tasks"),
        ({**p.envelope("progress", "r1"), "id": "i" * 65}, "id"),
    ],
)
def test_4_replies_are_checked_per_type(message: dict[str, Any], field: str) -> None:
    frames = [_pack(message)] + ([PNG] if message["type"] == "done" else [])
    _bad_field(p.parse_reply, frames, field)


def test_4_reply_frames_and_png() -> None:
    done = _pack(_done())
    assert p.parse_peer_reply([done, PNG]).png == PNG
    assert _raises(p.parse_reply, [done]).code is ErrorCode.BAD_FRAME  # the PNG frame is missing
    assert _raises(p.parse_reply, [done, b"GIF89a"]).code is ErrorCode.BAD_FRAME
    assert _raises(p.parse_reply, [done, b""]).code is ErrorCode.BAD_FRAME  # not emulated
    assert p.parse_reply([_pack(_done(emulated=True)), b""]).png == b""
    assert _raises(p.parse_reply, [_pack(_progress()), PNG]).code is ErrorCode.BAD_FRAME
    assert _raises(p.parse_reply, []).code is ErrorCode.BAD_FRAME
    assert _raises(p.parse_reply, [_pack([1])]).code is ErrorCode.BAD_FRAME  # not a version error
    status = _pack(p.envelope("agent_status", "r1", agent={}, backend={}, telemetry={},
                              queue={}, capacity={}, counters={}, cluster=None))  # fmt: skip
    assert p.parse_reply([status]).type == "agent_status"
    assert _raises(p.parse_peer_reply, [status]).code is ErrorCode.BAD_TYPE  # not from a peer


def test_4_png_and_meta_sizes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p, "MAX_PNG_BYTES", 64)
    big = PNG + bytes(64)
    assert _raises(p.parse_peer_reply, [_pack(_done()), big]).code is ErrorCode.BAD_FRAME
    fat = _done(**{f"k{i}": "x" * 2000 for i in range(600)})  # ~1.2 MB of "unknown meta"
    assert _raises(p.parse_reply, [_pack(fat), PNG]).code is ErrorCode.BAD_FRAME


def test_4_unknown_reply_fields_and_codes_are_kept() -> None:
    reply = p.parse_reply([_pack(_done(future={"a": [1, 2.5, None]})), PNG])
    assert reply.get("future") == {"a": [1, 2.5, None]} and reply.get("prompt") == "a cat"
    teapot = p.parse_reply([_pack(p.envelope("error", None, code="teapot", message="short"))])
    assert teapot.get("code") == "teapot" and teapot.id is None
    long = p.error_reply("r1", ErrorCode.TASK_FAILED, "OOM " * 2000, task=TASK, field="f" * 99)
    parsed = p.parse_reply([_pack(long)])
    assert len(parsed.get("message")) == p.MAX_MESSAGE_CHARS and len(parsed.get("field")) == 64


# --- hostile shapes: only ProtocolError, with short messages -------------------------


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([_pack({"v": [], "type": "status", "id": "a"})], ErrorCode.BAD_VERSION),
        ([_pack({"v": {"x": 1}, "type": "status", "id": "a"})], ErrorCode.BAD_VERSION),
        ([_pack({"v": True, "type": "status", "id": "a"})], ErrorCode.BAD_VERSION),
        ([_pack({"v": 2**64 - 1, "type": "status", "id": "a"})], ErrorCode.BAD_VERSION),
        ([_pack({"v": 1, "type": "x" * 100_000, "id": "a"})], ErrorCode.BAD_TYPE),
        ([_pack({"v": 1, "type": "status", "id": "a", b"raw": 1})], ErrorCode.BAD_FIELD),
        ([_pack({"v": 1, "type": "status", "id": "a", "k" * 100_000: 1})], ErrorCode.BAD_FIELD),
        (_request(type="submit", prompt=b"bytes"), ErrorCode.BAD_FIELD),
        (_request(type="submit", prompt="a", seed=2**64 - 1), ErrorCode.BAD_FIELD),
        (_request(type="submit", prompt="a", seed=-(2**63)), ErrorCode.BAD_FIELD),
        (_request(type="submit", prompt="a", steps=True), ErrorCode.BAD_FIELD),
        (_request(type="submit", prompt="a", guidance=-float("inf")), ErrorCode.BAD_FIELD),
        (_request(type="submit", prompt="a", width=[[[[[[]]]]]]), ErrorCode.BAD_FIELD),
        (_request(type="submit", prompt=msgpack.Timestamp(1)), ErrorCode.BAD_FIELD),
        (_request(type="submit", prompt=msgpack.ExtType(5, b"x")), ErrorCode.BAD_FIELD),
        (_request(type="result", task="{" + TASK + "}"), ErrorCode.BAD_FIELD),
        (_request(type="result", task="٠" * 32), ErrorCode.BAD_FIELD),  # int() would take it
        (_request(type="gossip", **_gossip_body(telemetry={"d": [[[1]]]})), ErrorCode.BAD_FIELD),
        ([b"\x91" * 5000 + b"\xc0"], ErrorCode.BAD_FRAME),  # deeper than msgpack's stack
        ([b"\xdd\xff\xff\xff\xff"], ErrorCode.BAD_FRAME),  # an array header of 4 billion
        (
            [_pack({"v": 1, "type": "status", "id": "a", **{f"k{i}": 0 for i in range(5000)}})],
            ErrorCode.BAD_FRAME,
        ),  # more entries than a request may have: refused by the decoder
        ([_pack({1: 2})], ErrorCode.BAD_FRAME),  # integer keys
    ],
)
def test_hostile_shapes_raise_only_protocol_error(frames: list[bytes], code: ErrorCode) -> None:
    error = _raises(p.parse_request, frames)
    assert error.code is code, error.message
    assert len(error.message) < 400 and (error.field is None or len(error.field) <= 64)


def test_deep_nesting_in_a_reply_is_refused_without_recursion() -> None:
    deep: Any = None
    for _ in range(1000):  # msgpack decodes it; repr() of it would hit the recursion limit
        deep = [deep]
    _bad_field(p.parse_reply, [_pack(_done(extra=deep)), PNG], "extra")
    error = _raises(p.parse_reply, [_pack({"v": deep, "type": "done"})])
    assert error.code is ErrorCode.BAD_VERSION and len(error.message) < 400


def test_owner_is_a_bounded_token() -> None:
    key = "key:" + "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    msg = p.parse_request(_request(type="submit", prompt="a", task=TASK, origin=NODE, owner=key))
    assert isinstance(msg, p.Submit) and msg.owner == key and msg.origin == NODE
    plain = p.parse_request(_request(type="submit", prompt="a"))
    assert isinstance(plain, p.Submit) and plain.owner is None
    for bad in ("", "o" * 129, "two words", "tab\there", 5, None):
        _bad_field(p.parse_request, _request(type="submit", prompt="a", owner=bad), "owner")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": " \t\n"}, "prompt"),
        ({"negative_prompt": "n" * 2001}, "negative_prompt"),
        ({"width": 264.0}, "width"),
        ({"height": 250}, "height"),
        ({"origin": "o" * 65}, "origin"),
        ({"origin": "has\x00nul"}, "origin"),
        ({"wait": 0}, "wait"),
    ],
)
def test_submit_bounds(fields: dict[str, Any], field: str) -> None:
    _bad_field(p.parse_request, _request(type="submit", **{"prompt": "a cat", **fields}), field)


def test_good_requests_parse_typed() -> None:
    msg = p.parse_request(_request(type="submit", prompt="a cat", negative_prompt="blur", steps=4,
                                   width=2048, height=256, guidance=0, seed=0, task=TASK.upper(),
                                   wait=False))  # fmt: skip
    assert isinstance(msg, p.Submit) and msg.task == TASK and msg.wait is False
    assert msg.request.guidance == 0.0 and type(msg.request.guidance) is float
    tasks = p.parse_request(_request(type="tasks", limit=1000, state="forwarded"))
    assert tasks == p.TasksRequest("r1", 1000, "forwarded")
    assert p.parse_request(_request(type="cancel", task=TASK)) == p.CancelRequest("r1", TASK)
    assert p.parse_request(_request(type="result", task=TASK, wait=True)) == p.ResultRequest(
        "r1", TASK, True
    )


def test_valid_name_is_what_gossip_accepts() -> None:
    assert p.valid_name("edge-3 (lab)") and p.valid_name("gpu[1]") and p.valid_name("")
    assert not p.valid_name("[link=http://x]click") and not p.valid_name("a\tb")
    assert not p.valid_name("n" * 65) and not p.valid_name("[/]")


def test_show_is_short_for_any_value() -> None:
    assert len(p.show("x" * 10**6)) < 60 and len(p.show(list(range(10**5)))) < 200
    assert p.show(math.nan) == "nan"


# --- a real agent's own messages pass its own schemas --------------------------------


def _exchange(sock: zmq.Socket, message: dict[str, Any], final: set[str]) -> list[list[bytes]]:
    """Send one request; every reply's frames until one of type in ``final``."""
    sock.send(_pack(message))
    replies = []
    while True:
        assert sock.poll(20_000), f"no reply to {message['type']}"
        frames = sock.recv_multipart()
        replies.append(frames)
        if msgpack.unpackb(frames[0])["type"] in final:
            return replies


def test_a_real_agent_sends_only_valid_replies(agent_factory: Any) -> None:
    sink = f"tcp://127.0.0.1:{free_ports(1)[0]}"  # a configured peer: loopback senders are peers
    agent = agent_factory("a", peers=[sink], policy="local", emulated_steps_per_second=400.0)
    agent.start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(agent.endpoint)
    try:
        wire = p.request_to_wire(GenerationRequest(prompt="a cat", steps=3, width=256, height=256))
        task = str(uuid.uuid4())
        submit = p.envelope("submit", "fwd:" + task, **wire, task=task, origin=NODE,
                            owner="local", wait=True)  # fmt: skip
        forwarded = [p.parse_peer_reply(f) for f in _exchange(sock, submit, {"done", "error"})]
        assert [r.type for r in forwarded][0] == "accepted" and forwarded[-1].type == "done"
        assert forwarded[-1].get("task") == task and forwarded[-1].get("emulated") is True
        body = _gossip_body(node=str(uuid.uuid4()), sent_at=5.0)
        (gossip,) = _exchange(sock, p.envelope("gossip", "g1", **body), {"gossip", "error"})
        echo = p.parse_peer_reply(gossip)
        assert echo.type == "gossip" and echo.get("echo_sent_at") == 5.0, echo.fields
        assert type(echo.get("capacity_steps_per_s")) is float
        for request, final in [
            (p.envelope("status", "s1"), "agent_status"),
            (p.envelope("tasks", "t1", limit=10), "task_list"),
            (p.envelope("result", "q1", task=task), "done"),
            (p.envelope("cancel", "c1", task=task), "error"),
            (p.envelope("result", "q2", task=str(uuid.uuid4())), "error"),
            (p.envelope("submit", "bad", prompt="a", steps=0), "error"),
        ]:
            (frames,) = _exchange(sock, request, {final})
            assert p.parse_reply(frames).type == final
    finally:
        sock.close(0)
