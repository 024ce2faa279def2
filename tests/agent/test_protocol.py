"""Protocol validation without sockets."""

from __future__ import annotations

import contextlib
import random

import msgpack
import pytest

from dedgeai.agent.errors import ErrorCode, ProtocolError
from dedgeai.agent.node import protocol as p


def _frame(**msg: object) -> list[bytes]:
    return [msgpack.packb({"v": 1, "id": "r1", **msg}, use_bin_type=True)]


def _code(frames: list[bytes]) -> ErrorCode:
    with pytest.raises(ProtocolError) as caught:
        p.parse_request(frames)
    return caught.value.code


def test_valid_submit_uses_backend_defaults_for_missing_fields():
    msg = p.parse_request(_frame(type="submit", prompt="a cat"))
    assert isinstance(msg, p.Submit)
    assert msg.request.prompt == "a cat" and msg.request.steps == 28 and msg.request.width == 1024
    assert msg.task is None and msg.origin is None and msg.wait is True


def test_task_ids_are_canonicalised():
    task = "6F9619FF-8B86-D011-B42D-00CF4FC964FF"
    msg = p.parse_request(_frame(type="result", task=task))
    assert isinstance(msg, p.ResultRequest) and msg.task == task.lower()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"steps": 0}, "steps"),
        ({"steps": 101}, "steps"),
        ({"steps": True}, "steps"),
        ({"width": 1000}, "width"),
        ({"height": 2064}, "height"),
        ({"guidance": 30.5}, "guidance"),
        ({"guidance": float("nan")}, "guidance"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -1}, "seed"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_submit_field_errors_name_the_field(fields, field):
    msg = {"type": "submit", "prompt": "a cat", **fields}
    with pytest.raises(ProtocolError) as caught:
        p.parse_request(_frame(**msg))
    assert caught.value.code is ErrorCode.BAD_FIELD
    assert caught.value.field == field and caught.value.request_id == "r1"


def test_limits_are_inclusive():
    msg = p.parse_request(
        _frame(type="submit", prompt="x" * 2000, steps=100, width=2048, height=256, guidance=30,
               seed=2**63 - 1)
    )  # fmt: skip
    assert isinstance(msg, p.Submit) and msg.request.seed == 2**63 - 1


def test_envelope_errors_in_order():
    assert _code([b"\xc1"]) is ErrorCode.BAD_FRAME
    assert _code([msgpack.packb([1, 2])]) is ErrorCode.BAD_FRAME
    assert _code(_frame(type="status") * 2) is ErrorCode.BAD_FRAME
    assert _code([msgpack.packb({"v": 2, "type": "status", "id": "a"})]) is ErrorCode.BAD_VERSION
    assert _code([msgpack.packb({"v": 1.0, "type": "status", "id": "a"})]) is ErrorCode.BAD_VERSION
    assert _code(_frame(type="launch")) is ErrorCode.BAD_TYPE
    assert _code([msgpack.packb({"v": 1, "type": "status"})]) is ErrorCode.BAD_FIELD


def test_random_input_only_ever_raises_protocol_error():
    rng = random.Random(7)
    for _ in range(3000):
        frame = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        with contextlib.suppress(ProtocolError):
            p.parse_request([frame])


def test_reply_round_trip_keeps_png_frame():
    # Stricter since issue 10: `task` must be a UUID and the frame must start with the PNG magic.
    task, png = str(p.new_task_id()), p.PNG_MAGIC + b"rest"
    frames = [p.encode(p.envelope("done", "r1", task=task, width=256)), png]
    reply = p.parse_reply(frames)
    assert reply.type == "done" and reply.id == "r1" and reply.png == png
    assert reply.get("width") == 256
    with pytest.raises(ProtocolError):
        p.parse_reply([p.encode({"v": 9, "type": "done"})])


def test_error_reply_carries_code_and_field():
    reply = p.error_reply("r", ErrorCode.BUSY, "full", task="t", field="f")
    assert reply == {"v": 1, "type": "error", "id": "r", "code": "busy", "message": "full",
                     "task": "t", "field": "f"}  # fmt: skip
