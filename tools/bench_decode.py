"""Decode + validate cost per inbound message: the hand-written schemas vs msgspec.

Times, side by side in one process, for a typical ``submit``, ``status`` and ``gossip``
request and a ``progress`` and ``done`` reply:

- ``msgpack-only``: ``msgpack.unpackb`` alone (the floor: no checks at all);
- ``schema``: ``protocol.parse_request`` / ``parse_reply`` (msgpack + the Field schemas);
- ``msgspec``: ``msgspec.msgpack.Decoder`` into tagged ``Struct`` types with ``Meta``
  constraints (types, ranges, lengths, patterns), then the same typed message built.

The msgspec variant checks types, ranges and lengths like the schemas, but not everything
(no markup rule, no cross-field checks, unknown reply fields are dropped, not bounded): it
is a lower bound for what msgspec would cost. Each row: median, p10 and p90 of the mean
time per call over ``--rounds`` rounds of ``--calls`` calls, after a warm-up.

    pip install -e '.[bench]'   # msgspec, for the comparison only (the agent does not use it)
    python tools/bench_decode.py [--rounds 21] [--calls 2000] [--out docs/results/bench_decode.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgpack
import msgspec
from msgspec import Meta, Struct
from rich.console import Console
from rich.table import Table

from dedgeai.agent.node import protocol as p
from dedgeai.models.backend import GenerationRequest
from dedgeai.scheduler.stats import percentile

# --- the msgspec variant --------------------------------------------------------------

Rid = Annotated[str, Meta(min_length=1, max_length=p.MAX_ID_CHARS)]
Finite = Annotated[float, Meta(ge=0, le=p.MAX_LOAD_STEPS)]
Time = Annotated[float, Meta(ge=0, le=p.MAX_UNIX_S)]
Steps = Annotated[int, Meta(ge=1, le=100)]
Side = Annotated[int, Meta(ge=256, le=2048, multiple_of=16)]
Short = Annotated[str, Meta(max_length=256)]
Name = Annotated[str, Meta(max_length=p.MAX_NAME_CHARS, pattern=r"^[^\x00-\x1f\x7f]*$")]
Endpoint = Annotated[str, Meta(max_length=256, pattern=r"^(tcp|ipc|inproc)://\S+$")]
Scalar = None | bool | int | float | str


class MSubmit(Struct, tag_field="type", tag="submit", forbid_unknown_fields=True):
    v: Literal[1]
    id: Rid
    prompt: Annotated[str, Meta(min_length=1, max_length=2000)]
    negative_prompt: Annotated[str, Meta(max_length=2000)] = ""
    steps: Steps = 28
    width: Side = 1024
    height: Side = 1024
    guidance: Annotated[float, Meta(ge=0, le=30)] = 5.0
    seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0
    task: uuid.UUID | None = None
    origin: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    owner: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    wait: bool = True


class MStatus(Struct, tag_field="type", tag="status", forbid_unknown_fields=True):
    v: Literal[1]
    id: Rid


class MGossip(Struct, tag_field="type", tag="gossip", forbid_unknown_fields=True):
    v: Literal[1]
    id: Rid
    node: uuid.UUID
    sent_at: Time
    backlog_steps: Finite
    interval_load_steps: Finite
    name: Name = ""
    endpoint: Endpoint | None = None
    backlog_s: Finite | None = None
    capacity_steps_per_s: Annotated[float, Meta(gt=0, le=1e6)] | None = None
    model: Short = ""
    emulated: bool = False
    plan: Annotated[str, Meta(max_length=4096)] = ""
    accepting: bool = True
    queued: Annotated[int, Meta(ge=0, le=p.MAX_QUEUED)] = 0
    running: uuid.UUID | None = None
    telemetry: dict[str, Scalar | list[dict[str, Scalar]]] = {}
    version: Short = ""
    started_at: Time | None = None


class MProgress(Struct, tag_field="type", tag="progress"):
    v: Literal[1]
    id: Rid | None
    task: uuid.UUID
    stage: Literal["queued", "denoise", "decode"]
    step: Annotated[int, Meta(ge=0, le=100)]
    steps: Steps
    position: Annotated[int, Meta(ge=0, le=p.MAX_POSITION)]


class MDone(Struct, tag_field="type", tag="done"):
    v: Literal[1]
    id: Rid | None
    task: uuid.UUID
    origin: Short = ""
    prompt: Annotated[str, Meta(max_length=2000)] = ""
    negative_prompt: Annotated[str, Meta(max_length=2000)] = ""
    guidance: Annotated[float, Meta(ge=0, le=30)] = 0.0
    width: Side = 1024
    height: Side = 1024
    steps: Steps = 28
    seed: Annotated[int, Meta(ge=0)] = 0
    backend: Short = ""
    emulated: bool = False
    peak_memory_bytes: Annotated[int, Meta(ge=0)] | None = None
    png_bytes: Annotated[int, Meta(ge=0)] = 0
    attempts: Annotated[int, Meta(ge=0)] = 0
    submitted_at: Time | None = None
    started_at: Time | None = None
    finished_at: Time | None = None
    timings: dict[str, float] | None = None
    ran_on: dict[str, Scalar] | None = None
    placement: dict[str, Any] | None = None


REQUESTS = msgspec.msgpack.Decoder(MSubmit | MStatus | MGossip)
REPLIES = msgspec.msgpack.Decoder(MProgress | MDone)


def msgspec_request(frames: list[bytes]) -> p.ClientMessage:
    if len(frames) != 1:
        raise ValueError("one frame")
    msg = REQUESTS.decode(frames[0])
    if isinstance(msg, MStatus):
        return p.StatusRequest(msg.id)
    if isinstance(msg, MGossip):
        return p.Gossip(msg.id, msgspec.structs.asdict(msg))
    request = GenerationRequest(
        prompt=msg.prompt,
        negative_prompt=msg.negative_prompt,
        steps=msg.steps,
        width=msg.width,
        height=msg.height,
        guidance=msg.guidance,
        seed=msg.seed,
    ).validate()
    task = None if msg.task is None else p.TaskId(str(msg.task))
    return p.Submit(msg.id, request, task, msg.origin, msg.wait, msg.owner)


def msgspec_reply(frames: list[bytes]) -> p.Reply:
    msg = REPLIES.decode(frames[0])
    fields = msgspec.structs.asdict(msg)
    fields["task"] = str(msg.task)
    png = frames[1] if len(frames) == 2 else b""
    return p.Reply(type(msg).__struct_config__.tag, msg.id, fields, png)


# --- typical messages -----------------------------------------------------------------

TASK, NODE = str(uuid.UUID(int=1, version=4)), str(uuid.UUID(int=2, version=4))


def _messages() -> dict[str, list[bytes]]:
    submit = p.envelope("submit", "r1", **p.request_to_wire(GenerationRequest(
        prompt="a lighthouse on a cliff at dusk, oil painting", steps=28, width=1024,
        height=1024, guidance=5.0, seed=7)), task=TASK, wait=True)  # fmt: skip
    device = {"index": 0, "name": "NVIDIA H200", "kind": "gpu", "utilization_percent": 87.0,
              "memory_used_bytes": 40 << 30, "memory_total_bytes": 141 << 30,
              "temperature_c": 61.0, "power_w": 512.5, "sm_clock_mhz": 1980,
              "memory_clock_mhz": 2619}  # fmt: skip
    gossip = p.envelope("gossip", "gossip", node=NODE, name="edge-3",
        endpoint="tcp://10.0.0.3:7700", sent_at=1.8e9, backlog_steps=112.0, backlog_s=4.1,
        interval_load_steps=28.0, capacity_steps_per_s=27.3, model="sd3-medium",
        emulated=False, plan="placement resident on cuda:0", accepting=True, queued=3,
        running=TASK, telemetry={"source": "nvml", "sampled_at": 1.8e9, "note": "",
        "devices": [device]}, version="0.1.0", started_at=1.7e9)  # fmt: skip
    progress = p.progress_reply("r1", p.TaskId(TASK), "denoise", 12, 28, 0)
    done = p.envelope("done", "r1", task=TASK, origin=NODE, prompt="a lighthouse",
        negative_prompt="", guidance=5.0, width=1024, height=1024, steps=28, seed=7,
        backend="sd3", emulated=False, peak_memory_bytes=17 << 30, png_bytes=1_400_000,
        attempts=1, submitted_at=1.8e9, started_at=1.8e9, finished_at=1.8e9 + 9,
        timings={"queue_wait_s": 0.1, "encode_s": 0.2, "denoise_s": 8.1, "decode_s": 0.4,
        "backend_s": 8.7}, ran_on={"node": NODE, "name": "edge-3",
        "endpoint": "tcp://10.0.0.3:7700"}, placement={"policy": "lad", "reason": "sampled",
        "probs": [0.2, 0.5, 0.3], "target": 1, "local": False, "node": NODE,
        "name": "edge-3", "endpoint": "tcp://10.0.0.3:7700", "decision_us": 310.0})  # fmt: skip
    png = p.PNG_MAGIC + bytes(1_400_000)
    return {
        "submit": [p.encode(submit)],
        "status": [p.encode(p.envelope("status", "r2"))],
        "gossip": [p.encode(gossip)],
        "progress": [p.encode(progress)],
        "done": [p.encode(done), png],
    }


@dataclass(frozen=True)
class Scenario:
    message: str
    variant: str
    run: Callable[[list[bytes]], Any]


def _scenarios() -> list[Scenario]:
    out = []
    for message in ("submit", "status", "gossip", "progress", "done"):
        reply = message in ("progress", "done")
        out.append(Scenario(message, "msgpack-only", lambda f: msgpack.unpackb(f[0], raw=False)))
        out.append(Scenario(message, "schema", p.parse_reply if reply else p.parse_request))
        out.append(Scenario(message, "msgspec", msgspec_reply if reply else msgspec_request))
    return out


@dataclass
class Row:
    message: str
    variant: str
    frame_bytes: int
    calls: int
    median_us: float
    p10_us: float
    p90_us: float


def measure(scenario: Scenario, frames: list[bytes], rounds: int, calls: int) -> Row:
    """Median, p10 and p90 over rounds of the mean µs per call (after a warm-up round)."""
    timer = timeit.Timer(lambda: scenario.run(frames))
    timer.timeit(calls // 4 or 1)  # warm-up: caches, allocator, regex compilation
    per_call = sorted(t / calls * 1e6 for t in timer.repeat(rounds, calls))
    p10, p90 = (percentile(per_call, q) for q in (10, 90))
    return Row(scenario.message, scenario.variant, len(frames[0]), calls * rounds,
               round(statistics.median(per_call), 3), round(p10, 3), round(p90, 3))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    messages = _messages()
    for scenario in _scenarios():  # every variant must accept every typical message
        scenario.run(messages[scenario.message])
    rows = [measure(s, messages[s.message], args.rounds, args.calls) for s in _scenarios()]
    table = Table(title="decode + validate, µs per message: median \\[p10, p90]")
    for column in ("message", "bytes", "msgpack-only", "schema", "msgspec", "schema/msgspec"):
        table.add_column(column, justify="left" if column == "message" else "right")
    by = {(r.message, r.variant): r for r in rows}
    for message in messages:
        rows_ = [by[message, v] for v in ("msgpack-only", "schema", "msgspec")]
        cells = [f"{r.median_us:.1f} \\[{r.p10_us:.1f}, {r.p90_us:.1f}]" for r in rows_]
        ratio = by[message, "schema"].median_us / by[message, "msgspec"].median_us
        table.add_row(message, str(by[message, "schema"].frame_bytes), *cells, f"{ratio:.1f}x")
    Console().print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"rounds": args.rounds, "calls": args.calls, "msgspec": msgspec.__version__,
                   "msgpack": ".".join(map(str, msgpack.version)),
                   "rows": [asdict(r) for r in rows]}  # fmt: skip
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
