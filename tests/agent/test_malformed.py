"""1,000 malformed frames against a live agent: every one answered with the right code."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack

from dedgeai.agent.node import protocol as p
from dedgeai.models.backend import GenerationRequest

Case = tuple[list[bytes], str, str | None]  # frames, expected code, expected echoed id


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _submit(rid: str, **changes: Any) -> dict[str, Any]:
    msg = {"v": 1, "type": "submit", "id": rid, "prompt": "a cat", "steps": 4,
           "width": 256, "height": 256, "guidance": 3.0, "seed": 7, "wait": False}  # fmt: skip
    msg.update(changes)
    return {k: v for k, v in msg.items() if v is not _DROP}


_DROP = object()
_BAD_FIELD_VALUES: list[tuple[str, Any]] = [
    ("prompt", 5), ("prompt", ""), ("prompt", "   "), ("prompt", "x" * 2001), ("prompt", b"cat"),
    ("prompt", None), ("steps", 0), ("steps", 101), ("steps", "4"), ("steps", 4.0),
    ("steps", True), ("steps", 2**64 - 1), ("steps", -(2**63)), ("width", 250), ("width", 4096),
    ("width", 128), ("height", [512]), ("height", {"a": 1}), ("guidance", float("nan")),
    ("guidance", float("inf")), ("guidance", 1e308), ("guidance", -0.5), ("guidance", "high"),
    ("seed", -1), ("seed", 2**64 - 1), ("seed", 1.5), ("wait", "yes"), ("task", "not-a-uuid"),
    ("task", 12), ("origin", ""), ("origin", "o" * 65), ("negative_prompt", 3),
]  # fmt: skip


def _cases(rng: random.Random) -> list[Callable[[int], Case]]:
    def random_bytes(i: int) -> Case:
        tail = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        return [b"\xc1" + tail], "bad_frame", None  # 0xc1 is never valid msgpack

    def truncated(i: int) -> Case:
        whole = _pack(_submit(f"t{i}"))
        return [whole[: rng.randrange(1, len(whole) - 1)]], "bad_frame", None

    def not_a_map(i: int) -> Case:
        value = rng.choice([[1, 2], 7, "submit", b"\x00", None, 1.5, True, []])
        return [_pack(value)], "bad_frame", None

    def odd_frames(i: int) -> Case:
        frames = rng.choice([[b""], [_pack(_submit(f"m{i}")), b"extra"], [b"a", b"b", b"c"]])
        return frames, "bad_frame", None

    def deep_or_keyed(i: int) -> Case:
        return [rng.choice([b"\x91" * 5000, _pack({1: 2}), b"\x81\xc0\xc0"])], "bad_frame", None

    def wrong_version(i: int) -> Case:
        msg = {"v": rng.choice([0, 2, -1, "1", 1.0, True, None, 2**64 - 1]), "type": "status"}
        if rng.random() < 0.2:
            del msg["v"]
        msg["id"] = f"v{i}"
        return [_pack(msg)], "bad_version", f"v{i}"

    def wrong_type(i: int) -> Case:
        kind = rng.choice(["submitt", "", "STATUS", 5, None, "done", "accepted"])
        return [_pack({"v": 1, "type": kind, "id": f"k{i}"})], "bad_type", f"k{i}"

    def bad_id(i: int) -> Case:
        rid = rng.choice([None, 5, "", "i" * 65, ["x"]])
        msg = {"v": 1, "type": "status", "id": rid}
        if rid is None:
            del msg["id"]
        return [_pack(msg)], "bad_field", None

    def missing_field(i: int) -> Case:
        kind, msg = rng.choice([
            ("submit", _submit(f"f{i}", prompt=_DROP)),
            ("result", {"v": 1, "type": "result", "id": f"f{i}"}),
            ("cancel", {"v": 1, "type": "cancel", "id": f"f{i}"}),
        ])  # fmt: skip
        return [_pack(msg)], "bad_field", f"f{i}"

    def extra_field(i: int) -> Case:
        base = rng.choice([_submit(f"e{i}"), {"v": 1, "type": "status", "id": f"e{i}"}])
        base[rng.choice(["priority", "Prompt", "x", "png"])] = 1
        return [_pack(base)], "bad_field", f"e{i}"

    def bad_value(i: int) -> Case:
        name, value = rng.choice(_BAD_FIELD_VALUES)
        return [_pack(_submit(f"b{i}", **{name: value}))], "bad_field", f"b{i}"

    def bad_other(i: int) -> Case:
        msg = rng.choice([
            {"type": "result", "task": "nope"}, {"type": "cancel", "task": 3},
            {"type": "tasks", "limit": 0}, {"type": "tasks", "limit": 10**6},
            {"type": "tasks", "state": "sleeping"}, {"type": "result", "task": "x", "wait": 1},
        ])  # fmt: skip
        return [_pack({"v": 1, "id": f"o{i}", **msg})], "bad_field", f"o{i}"

    return [random_bytes, truncated, not_a_map, odd_frames, deep_or_keyed, wrong_version,
            wrong_type, bad_id, missing_field, extra_field, bad_value, bad_other]  # fmt: skip


def test_1000_malformed_frames_are_answered_and_the_agent_survives(tiny_agent, raw_peer):
    rng = random.Random(20261130)
    makers = _cases(rng)
    cases = [rng.choice(makers)(i) for i in range(1000)]
    peer = raw_peer(tiny_agent.endpoint)
    for start in range(0, len(cases), 100):
        chunk = cases[start : start + 100]
        for frames, _code, _rid in chunk:
            peer.send(*frames)
        for frames, code, rid in chunk:
            reply = peer.recv(timeout_s=20)
            assert reply.type == "error", (frames[:1], reply.fields)
            assert reply.get("code") == code, (frames[0][:80], reply.fields)
            if rid is not None:
                assert reply.id == rid
    with tiny_agent.client() as client:  # still alive, still correct
        assert client.status()["agent"]["protocol"] == p.PROTOCOL_VERSION
        request = GenerationRequest(prompt="still fine", steps=1, width=256, height=256)
        reply = client.submit(request)
        assert reply.type == "accepted"


def test_oversized_frame_is_dropped_without_harm(tiny_agent):
    with tiny_agent.client(timeout_s=2.0) as sender, tiny_agent.client() as other:
        sender.send_raw([b"\x00" * (p.MAX_FRAME_BYTES + 1024)])  # libzmq drops it (MAXMSGSIZE)
        assert other.status()["agent"]["protocol"] == 1
        assert sender.status()["agent"]["protocol"] == 1  # retries reconnect if need be
