"""Wire protocol v1 between clients and an agent (documented in docs/protocol.md).

Every message is one msgpack map in one frame, ``{v, type, id, ...}``; ``done`` adds a
second frame holding the PNG. ``parse_request`` turns client frames into a frozen message
or raises ProtocolError with a stable code: it never trusts a field it has not checked.
Replies are built by the small constructors below and read back by ``parse_reply``.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any, NewType

import msgpack

from dedgeai.agent.errors import ErrorCode, ProtocolError
from dedgeai.models.backend import (
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE_PX,
    MAX_STEPS,
    MIN_SIDE_PX,
    SIDE_MULTIPLE_PX,
    GenerationRequest,
)
from dedgeai.models.errors import InvalidRequest

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1 << 20  # set as ZMQ_MAXMSGSIZE: larger frames are dropped by libzmq
MAX_ID_CHARS = 64
MAX_TASKS_LIMIT = 1000
DEFAULT_TASKS_LIMIT = 50

TaskId = NewType("TaskId", str)  # canonical lower-case UUID string, global across agents
NodeId = NewType("NodeId", str)  # UUID of one agent, persisted in its state directory

REQUEST_TYPES = ("submit", "status", "result", "cancel", "tasks", "gossip")
REPLY_TYPES = (
    "accepted",
    "progress",
    "done",
    "error",
    "agent_status",
    "task_list",
    "cancelled",
    "gossip",
)
TASK_STATES = ("queued", "running", "done", "failed", "cancelled", "forwarded")
STAGES = ("queued", "denoise", "decode")


def new_task_id() -> TaskId:
    return TaskId(str(uuid.uuid4()))


# --- client -> agent ------------------------------------------------------------------


@dataclass(frozen=True)
class Submit:
    id: str
    request: GenerationRequest
    task: TaskId | None = None  # client-chosen id makes retried submits idempotent
    origin: str | None = None  # the agent that first accepted the task (forwarding)
    wait: bool = True  # stream progress and done to the submitter


@dataclass(frozen=True)
class StatusRequest:
    id: str


@dataclass(frozen=True)
class ResultRequest:
    id: str
    task: TaskId
    wait: bool = False  # when unfinished: subscribe to progress and done


@dataclass(frozen=True)
class CancelRequest:
    id: str
    task: TaskId


@dataclass(frozen=True)
class TasksRequest:
    id: str
    limit: int = DEFAULT_TASKS_LIMIT
    state: str | None = None


@dataclass(frozen=True)
class Gossip:
    """A peer's telemetry (agent -> agent, about once a second); answered with ours."""

    id: str
    body: dict[str, Any]


ClientMessage = Submit | StatusRequest | ResultRequest | CancelRequest | TasksRequest | Gossip

# field -> accepted Python types; every other key is an error ("no unknown fields").
_ENVELOPE = {"v": (int,), "type": (str,), "id": (str,)}
_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "submit": {
        "prompt": (str,),
        "negative_prompt": (str,),
        "steps": (int,),
        "width": (int,),
        "height": (int,),
        "guidance": (int, float),
        "seed": (int,),
        "task": (str,),
        "origin": (str,),
        "wait": (bool,),
    },
    "status": {},
    "result": {"task": (str,), "wait": (bool,)},
    "cancel": {"task": (str,)},
    "tasks": {"limit": (int,), "state": (str,)},
    "gossip": {  # docs/protocol.md, "Peers"; None where a value is unknown
        "node": (str,),
        "name": (str,),
        "endpoint": (str,),
        "sent_at": (int, float),
        "backlog_steps": (int, float),
        "backlog_s": (int, float, type(None)),
        "interval_load_steps": (int, float),
        "capacity_steps_per_s": (int, float, type(None)),
        "model": (str,),
        "emulated": (bool,),
        "plan": (str,),
        "accepting": (bool,),
        "queued": (int,),
        "running": (str, type(None)),
        "telemetry": (dict,),
        "version": (str,),
        "started_at": (int, float),  # when the agent started: a new value means it restarted
    },
}
_REQUIRED = {
    "submit": ("prompt",),
    "result": ("task",),
    "cancel": ("task",),
    "gossip": ("node", "sent_at", "backlog_steps", "interval_load_steps"),
}


def decode_frame(frame: bytes) -> Any:
    """msgpack-decode one frame; any decoder failure becomes ProtocolError(bad_frame)."""
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ...
        raise ProtocolError(ErrorCode.BAD_FRAME, f"not a msgpack message: {exc}") from exc


def encode(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _bad(request_id: str | None, name: str, why: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, f"field `{name}` {why}", request_id, name)


def _typed(msg: dict[str, Any], name: str, types: tuple[type, ...], rid: str | None) -> Any:
    value = msg[name]
    # bool is an int subclass in Python but never a valid number on the wire.
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        want = " or ".join(t.__name__ for t in types)
        raise _bad(rid, name, f"must be of type {want}, got {type(value).__name__}")
    return value


def _task_id(value: str, rid: str | None) -> TaskId:
    try:
        return TaskId(str(uuid.UUID(value)))
    except (ValueError, AttributeError) as exc:
        raise _bad(rid, "task", "must be a UUID string") from exc


def parse_request(frames: list[bytes]) -> ClientMessage:
    """Validate the frames of one client message (identity already removed)."""
    if len(frames) != 1:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"expected 1 frame, got {len(frames)}")
    msg = decode_frame(frames[0])
    if not isinstance(msg, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"expected a map, got {type(msg).__name__}")
    rid = msg.get("id")
    rid = rid if isinstance(rid, str) and 0 < len(rid) <= MAX_ID_CHARS else None
    version = msg.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # 1.0 and True are not 1
        raise ProtocolError(
            ErrorCode.BAD_VERSION,
            f"protocol version {version!r} is not supported; this agent speaks v{PROTOCOL_VERSION}",
            rid,
            "v",
        )
    kind = msg.get("type")
    if kind not in _FIELDS:
        raise ProtocolError(
            ErrorCode.BAD_TYPE,
            f"unknown message type {kind!r}; expected one of {REQUEST_TYPES}",
            rid,
        )
    if rid is None:
        raise _bad(None, "id", f"must be a string of 1..{MAX_ID_CHARS} characters")
    fields = _FIELDS[kind]
    unknown = sorted(str(k) for k in msg if k not in fields and k not in _ENVELOPE)
    if unknown:
        raise _bad(rid, unknown[0], f"is not part of `{kind}` (allowed: {sorted(fields)})")
    for name in _REQUIRED.get(kind, ()):
        if name not in msg:
            raise _bad(rid, name, "is required")
    for name, types in fields.items():
        if name in msg:
            _typed(msg, name, types, rid)
    if kind == "submit":
        return _parse_submit(msg, rid)
    if kind == "status":
        return StatusRequest(rid)
    if kind == "gossip":
        return Gossip(rid, {k: v for k, v in msg.items() if k not in _ENVELOPE})
    if kind == "result":
        return ResultRequest(rid, _task_id(msg["task"], rid), msg.get("wait", False))
    if kind == "cancel":
        return CancelRequest(rid, _task_id(msg["task"], rid))
    limit = msg.get("limit", DEFAULT_TASKS_LIMIT)
    if not 1 <= limit <= MAX_TASKS_LIMIT:
        raise _bad(rid, "limit", f"must be in 1..{MAX_TASKS_LIMIT}, got {limit}")
    state = msg.get("state")
    if state is not None and state not in TASK_STATES:
        raise _bad(rid, "state", f"must be one of {TASK_STATES}, got {state!r}")
    return TasksRequest(rid, limit, state)


def _parse_submit(msg: dict[str, Any], rid: str) -> Submit:
    defaults = GenerationRequest(prompt="-")
    prompt = msg["prompt"]
    if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise _bad(rid, "prompt", f"must be non-empty and at most {MAX_PROMPT_CHARS} characters")
    negative = msg.get("negative_prompt", defaults.negative_prompt)
    if len(negative) > MAX_PROMPT_CHARS:
        raise _bad(rid, "negative_prompt", f"must be at most {MAX_PROMPT_CHARS} characters")
    steps = msg.get("steps", defaults.steps)
    if not 1 <= steps <= MAX_STEPS:
        raise _bad(rid, "steps", f"must be in 1..{MAX_STEPS}, got {steps}")
    for name in ("width", "height"):
        side = msg.get(name, getattr(defaults, name))
        if not MIN_SIDE_PX <= side <= MAX_SIDE_PX or side % SIDE_MULTIPLE_PX:
            raise _bad(
                rid,
                name,
                f"must be a multiple of {SIDE_MULTIPLE_PX} in [{MIN_SIDE_PX}, {MAX_SIDE_PX}], "
                f"got {side}",
            )
    guidance = msg.get("guidance", defaults.guidance)
    if not (math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        raise _bad(rid, "guidance", f"must be a number in [0, {MAX_GUIDANCE:g}], got {guidance}")
    seed = msg.get("seed", defaults.seed)
    if not 0 <= seed <= MAX_SEED:
        raise _bad(rid, "seed", f"must be in [0, 2**63-1], got {seed}")
    origin = msg.get("origin")
    if origin is not None and not 0 < len(origin) <= MAX_ID_CHARS:
        raise _bad(rid, "origin", f"must be 1..{MAX_ID_CHARS} characters")
    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        steps=steps,
        width=msg.get("width", defaults.width),
        height=msg.get("height", defaults.height),
        guidance=float(guidance),
        seed=seed,
    )
    try:
        request.validate()  # the backend's own rules stay authoritative
    except InvalidRequest as exc:
        raise ProtocolError(ErrorCode.BAD_FIELD, str(exc), rid) from exc
    task = _task_id(msg["task"], rid) if "task" in msg else None
    return Submit(rid, request, task, origin, msg.get("wait", True))


def request_to_wire(request: GenerationRequest) -> dict[str, Any]:
    return {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "steps": request.steps,
        "width": request.width,
        "height": request.height,
        "guidance": request.guidance,
        "seed": request.seed,
    }


# --- agent -> client ------------------------------------------------------------------


def envelope(kind: str, request_id: str | None, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": kind, "id": request_id, **fields}


def error_reply(
    request_id: str | None,
    code: ErrorCode,
    message: str,
    task: str | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    reply = envelope("error", request_id, code=code.value, message=message)
    if task is not None:
        reply["task"] = task
    if field is not None:
        reply["field"] = field
    return reply


def accepted_reply(request_id: str, task: TaskId, position: int, origin: str) -> dict[str, Any]:
    return envelope("accepted", request_id, task=task, position=position, origin=origin)


def progress_reply(
    request_id: str, task: TaskId, stage: str, step: int, steps: int, position: int
) -> dict[str, Any]:
    return envelope(
        "progress", request_id, task=task, stage=stage, step=step, steps=steps, position=position
    )


@dataclass(frozen=True)
class Reply:
    """A decoded agent reply: its type, its fields, and the PNG frame of ``done``."""

    type: str
    id: str | None
    fields: dict[str, Any]
    png: bytes = b""

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def parse_reply(frames: list[bytes]) -> Reply:
    """Decode an agent reply on the client side (checks the envelope, keeps the rest)."""
    if not frames or len(frames) > 2:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"reply has {len(frames)} frames")
    msg = decode_frame(frames[0])
    if not isinstance(msg, dict) or msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.BAD_VERSION, f"agent sent an unsupported reply: {msg!r:.200}")
    kind = msg.get("type")
    if kind not in REPLY_TYPES:
        raise ProtocolError(ErrorCode.BAD_TYPE, f"agent sent unknown reply type {kind!r}")
    rid = msg.get("id")
    fields = {k: v for k, v in msg.items() if k not in _ENVELOPE}
    png = frames[1] if len(frames) == 2 else b""
    return Reply(kind, rid if isinstance(rid, str) else None, fields, png)
