"""Wire protocol v1 between clients, agents and peers (documented in docs/protocol.md).

Every message is one msgpack map in one frame, ``{v, type, id, ...}``; ``done`` adds a
second frame holding the PNG. Every inbound frame is hostile until checked: one declarative
``Schema`` per message type (a ``Field`` per field: types, range, finiteness, length,
choices, UUID-ness) is applied by one generic validator, and the only exception that
leaves ``parse_request``, ``parse_reply`` and ``parse_peer_reply`` is ProtocolError with a
stable code. Values come out typed: numbers are finite floats, counts are ints, task ids
canonical UUID strings, so callers use them without converting.
"""

from __future__ import annotations

import math
import re
import reprlib
import uuid
from collections.abc import Callable
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
MAX_OWNER_CHARS = 128  # principal id: "local" or "key:<z85 public key>"
MAX_NAME_CHARS = 64  # an agent's display name
MAX_PLAN_CHARS = 4096  # the placement plan's text in gossip
MAX_ENDPOINT_CHARS = 256
MAX_MESSAGE_CHARS = 2000  # `error` message; error_reply() clips longer texts
MAX_CODE_CHARS = 64
MAX_UNIX_S = 1e12  # any time on the wire (Unix or monotonic seconds) lies in [0, this]
MAX_LOAD_STEPS = 1e9  # backlog and interval load, in 512x512-equivalent steps (or seconds)
MAX_CAPACITY_STEPS_PER_S = 1e6
MAX_QUEUED = 1_000_000
MAX_POSITION = 1_000_000_000
MAX_PNG_BYTES = 64 << 20
MAX_REPLY_BYTES = 16 << 20  # first frame of `agent_status` / `task_list` (the CLI reads them)
MAX_REQUEST_ITEMS = 4096  # msgpack array/map headers longer than this fail at decode
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

TaskId = NewType("TaskId", str)  # canonical lower-case UUID string, global across agents
NodeId = NewType("NodeId", str)  # UUID of one agent, persisted in its state directory

REQUEST_TYPES = (
    "submit",
    "status",
    "result",
    "cancel",
    "tasks",
    "gossip",
    "probe",
    "steal",
    "ping_req",
)
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
PEER_REPLY_TYPES = (
    "ping_ack",
    "accepted",
    "progress",
    "done",
    "error",
    "cancelled",
    "gossip",
    "probe_reply",
    "steal_reply",
)
TASK_STATES = ("queued", "running", "done", "failed", "cancelled", "forwarded")
STAGES = ("queued", "denoise", "decode")
CANCEL_STATES = ("cancelled", "cancelling")


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
    owner: str | None = None  # the task's principal, set by a forwarding peer only


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
    body: dict[str, Any]  # validated: see GOSSIP_FIELDS


@dataclass(frozen=True)
class Probe:
    """A peer asks for this agent's load now (power of d choices); answered ``probe_reply``."""

    id: str


@dataclass(frozen=True)
class Steal(Probe):
    """An idle peer asks for one queued task (work stealing); answered ``steal_reply``.

    A ``Probe`` subclass, so the authority table refuses it from non-peers as it does a
    probe; the daemon hands it to ``Cluster.on_steal``."""

    node: str  # the asking peer's node id: the task is forwarded to that peer's slot
    capacity_steps_per_s: float  # its measured 512x512 speed


@dataclass(frozen=True)
class PingReq(Gossip):
    """A peer asks this agent to probe ``body["target"]`` (a node id) for it: SWIM's
    indirect probe (``gossip = "partial"``); answered ``ping_ack`` when the target answers
    or the probe times out. A ``Gossip`` subclass: peer-only, handed to the cluster."""


ClientMessage = (
    Submit | StatusRequest | ResultRequest | CancelRequest | TasksRequest | Gossip | Probe
)


# --- schemas: one Field per wire field, one Schema per message type -------------------


@dataclass(frozen=True)
class Bounds:
    """Limits on a free-form value (a map or list whose keys are not all known)."""

    depth: int  # containers nested below the value itself
    items: int  # entries per map or list
    nodes: int  # values in all
    chars: int  # characters per string, keys included


@dataclass(frozen=True)
class Field:
    """The rule for one field: exact Python types msgpack may yield, then value checks."""

    types: tuple[type, ...]
    required: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # (low, high] instead of [low, high]
    min_chars: int = 0
    max_chars: int = 0
    choices: tuple[str, ...] = ()
    is_uuid: bool = False  # a UUID string, returned canonical (lower case)
    bounds: Bounds | None = None  # for map and list values
    rule: Callable[[Any], str | None] | None = None  # extra check: why the value is bad


@dataclass(frozen=True)
class Schema:
    fields: dict[str, Field]
    rest: Bounds | None = None  # None: unknown fields are errors (requests); else kept, bounded
    max_bytes: int = MAX_FRAME_BYTES  # of the map frame


_NONE = type(None)


def integer(low: int, high: int, *, required: bool = False, nullable: bool = False) -> Field:
    return Field((int, _NONE) if nullable else (int,), required, low, high)


def number(
    low: float,
    high: float,
    *,
    required: bool = False,
    nullable: bool = False,
    open_low: bool = False,
) -> Field:
    types = (int, float, _NONE) if nullable else (int, float)
    return Field(types, required, low, high, low_open=open_low)


def text(
    max_chars: int,
    *,
    min_chars: int = 0,
    required: bool = False,
    nullable: bool = False,
    choices: tuple[str, ...] = (),
    rule: Callable[[Any], str | None] | None = None,
) -> Field:
    types = (str, _NONE) if nullable else (str,)
    return Field(types, required, min_chars=min_chars, max_chars=max_chars, choices=choices,
                 rule=rule)  # fmt: skip


def uuid_field(*, required: bool = False, nullable: bool = False) -> Field:
    return Field((str, _NONE) if nullable else (str,), required, is_uuid=True)


def flag(*, required: bool = False) -> Field:
    return Field((bool,), required)


def tree(
    kind: type,
    bounds: Bounds,
    *,
    required: bool = False,
    nullable: bool = False,
    rule: Callable[[Any], str | None] | None = None,
) -> Field:
    return Field((kind, _NONE) if nullable else (kind,), required, bounds=bounds, rule=rule)


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_MARKUP = re.compile(r"\[[a-zA-Z#/@]")  # what rich would read as a style tag
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = _SHOW.maxlong = 40
_SHOW.maxlevel = 2


def show(value: Any) -> str:
    """A short repr of a hostile value for messages (bounded size, safe for deep nesting)."""
    return _SHOW.repr(value)


def _not_blank(value: str) -> str | None:
    return None if value.strip() else "must not be blank"


def _side(value: int) -> str | None:
    return None if value % SIDE_MULTIPLE_PX == 0 else f"must be a multiple of {SIDE_MULTIPLE_PX}"


def _token(value: str) -> str | None:
    ok = value.isprintable() and " " not in value  # isprintable() refuses other whitespace
    return None if ok else "must be printable characters without spaces"


def valid_name(value: str) -> bool:
    """A display name peers accept: printable, no control characters, no rich markup."""
    return len(value) <= MAX_NAME_CHARS and value.isprintable() and not _MARKUP.search(value)


def _name(value: str) -> str | None:
    return None if valid_name(value) else "must be printable text without markup like `[b]`"


def _endpoint(value: str) -> str | None:
    if value.startswith(ENDPOINT_SCHEMES) and _token(value) is None:
        return None
    return f"must start with one of {ENDPOINT_SCHEMES}, without spaces"


def _rows(value: list[Any]) -> str | None:
    return None if all(type(row) is dict for row in value) else "must be a list of maps"


def _scalar_error(value: Any, chars: int) -> str | None:
    kind = type(value)
    if kind is str:
        return None if len(value) <= chars else f"holds a string over {chars} characters"
    if kind is float:
        return None if math.isfinite(value) else "holds NaN or infinity"
    if kind is int:
        ok = INT64_MIN <= value <= INT64_MAX
        return None if ok else "holds an integer outside the signed 64-bit range"
    if value is None or kind is bool:
        return None
    return f"holds a value of type {kind.__name__}"


def _tree_error(value: Any, bounds: Bounds) -> str | None:
    """Why a free-form value breaks ``bounds`` (None when it does not); never recurses."""
    if type(value) is not dict and type(value) is not list:
        return _scalar_error(value, bounds.chars)
    stack, seen = [(value, 0)], 1
    while stack:
        item, depth = stack.pop()
        if depth > bounds.depth:
            return f"nests deeper than {bounds.depth} levels"
        if len(item) > bounds.items:
            return f"holds a map or list of more than {bounds.items} entries"
        seen += len(item)
        if seen > bounds.nodes:
            return f"holds more than {bounds.nodes} values"
        if type(item) is dict:
            for key in item:
                if type(key) is not str or len(key) > bounds.chars:
                    return f"holds a key that is not a string of at most {bounds.chars} characters"
            item = item.values()
        for v in item:
            kind = type(v)
            if kind is dict or kind is list:
                stack.append((v, depth + 1))
            elif kind is str and len(v) <= bounds.chars or kind is float and math.isfinite(v):
                continue  # the common cases, inline
            else:
                why = _scalar_error(v, bounds.chars)
                if why is not None:
                    return why
    return None


def _clip(name: Any) -> str:
    return name[:MAX_ID_CHARS] if type(name) is str else show(name)[:MAX_ID_CHARS]


def _bad(request_id: str | None, name: Any, why: str) -> ProtocolError:
    name = _clip(name)
    return ProtocolError(ErrorCode.BAD_FIELD, f"field `{name}` {why}", request_id, name)


def _describe(spec: Field) -> str:
    names = [{"NoneType": "null", "dict": "map", "list": "list"}.get(t.__name__, t.__name__)
             for t in spec.types]  # fmt: skip
    return " or ".join(names)


def _span(spec: Field) -> str:
    if float not in spec.types:
        return f"{spec.low}..{spec.high}"
    return f"{'(' if spec.low_open else '['}{spec.low:g}, {spec.high:g}]"


def check_value(spec: Field, value: Any, name: str, rid: str | None = None) -> Any:
    """One field's value, checked and typed (int stays int, numbers become float)."""
    kind = type(value)  # exact: bool is an int subclass but never a number on the wire
    if kind not in spec.types:
        raise _bad(rid, name, f"must be of type {_describe(spec)}, got {kind.__name__}")
    if value is None:
        return None
    if kind is int or kind is float:
        if kind is float and not math.isfinite(value):
            raise _bad(rid, name, f"must be a finite number, got {value}")
        low, high = spec.low, spec.high
        if (low is not None and (value < low or spec.low_open and value == low)) or (
            high is not None and value > high
        ):
            raise _bad(rid, name, f"must be in {_span(spec)}, got {show(value)}")
        if float in spec.types:
            value = float(value)
    elif kind is str:
        if spec.is_uuid:
            if not _UUID.fullmatch(value):
                raise _bad(rid, name, f"must be a UUID string, got {show(value)}")
            value = value.lower()
        elif not spec.min_chars <= len(value) <= spec.max_chars:
            raise _bad(rid, name, f"must be {spec.min_chars}..{spec.max_chars} characters")
        if spec.choices and value not in spec.choices:
            raise _bad(rid, name, f"must be one of {spec.choices}, got {show(value)}")
    elif spec.bounds is not None:
        why = _tree_error(value, spec.bounds)
        if why is not None:
            raise _bad(rid, name, why)
    if spec.rule is not None:
        why = spec.rule(value)
        if why is not None:
            raise _bad(rid, name, why)
    return value


_ENVELOPE = ("v", "type", "id")


def check_fields(
    msg: dict[Any, Any], schema: Schema, kind: str, rid: str | None = None
) -> dict[str, Any]:
    """Validate a message's body against its schema; returns the typed body (no envelope)."""
    fields = schema.fields
    extra = [k for k in msg if k not in fields and k not in _ENVELOPE]
    if extra and schema.rest is None:
        unknown = sorted(_clip(k) for k in extra)
        raise _bad(rid, unknown[0], f"is not part of `{kind}` (allowed: {sorted(fields)})")
    for name, spec in fields.items():
        if spec.required and name not in msg:
            raise _bad(rid, name, "is required")
    body = {name: check_value(spec, msg[name], name, rid)
            for name, spec in fields.items() if name in msg}  # fmt: skip
    rest = schema.rest
    if extra and rest is not None:  # a reply's fields from a newer version: kept, bounded
        if len(extra) > rest.items:
            raise _bad(rid, extra[0], f"is one of more than {rest.items} unknown fields")
        for key in extra:
            if type(key) is not str or len(key) > rest.chars:
                raise _bad(rid, key, "is not a string name")
            why = _tree_error(msg[key], rest)
            if why is not None:
                raise _bad(rid, key, why)
            body[key] = msg[key]
    return body


# Free-form values: GPU telemetry (a map of scalars, `devices` a list of maps), result
# metadata (timings, placement, ran_on), and the CLI's status and task list.
TELEMETRY_BOUNDS = Bounds(depth=2, items=64, nodes=4096, chars=1024)
META_BOUNDS = Bounds(depth=4, items=1024, nodes=16_384, chars=MAX_PROMPT_CHARS * 2)
STATUS_BOUNDS = Bounds(depth=8, items=4096, nodes=1_000_000, chars=65_536)

SUBMIT_FIELDS = {
    "prompt": text(MAX_PROMPT_CHARS, min_chars=1, required=True, rule=_not_blank),
    "negative_prompt": text(MAX_PROMPT_CHARS),
    "steps": integer(1, MAX_STEPS),
    "width": Field((int,), low=MIN_SIDE_PX, high=MAX_SIDE_PX, rule=_side),
    "height": Field((int,), low=MIN_SIDE_PX, high=MAX_SIDE_PX, rule=_side),
    "guidance": number(0, MAX_GUIDANCE),
    "seed": integer(0, MAX_SEED),
    "task": uuid_field(),
    "origin": text(MAX_ID_CHARS, min_chars=1, rule=_token),
    "owner": text(MAX_OWNER_CHARS, min_chars=1, rule=_token),
    "wait": flag(),
}
DIGEST_BOUNDS = Bounds(depth=1, items=256, nodes=256 * 16 + 1, chars=MAX_ID_CHARS)
GOSSIP_FIELDS = {  # docs/protocol.md, "Peers"; None where a value is unknown
    "node": uuid_field(required=True),
    "name": text(MAX_NAME_CHARS, rule=_name),
    "endpoint": text(MAX_ENDPOINT_CHARS, rule=_endpoint),
    "sent_at": number(0, MAX_UNIX_S, required=True),
    "backlog_steps": number(0, MAX_LOAD_STEPS, required=True),
    "backlog_s": number(0, MAX_LOAD_STEPS, nullable=True),
    "interval_load_steps": number(0, MAX_LOAD_STEPS, required=True),
    "capacity_steps_per_s": number(0, MAX_CAPACITY_STEPS_PER_S, nullable=True, open_low=True),
    "model": text(256),
    "emulated": flag(),
    "plan": text(MAX_PLAN_CHARS),
    "accepting": flag(),
    "queued": integer(0, MAX_QUEUED),
    "running": uuid_field(nullable=True),
    "telemetry": tree(dict, TELEMETRY_BOUNDS),
    "version": text(64),
    "started_at": number(0, MAX_UNIX_S),  # when the agent started: a new value = it restarted
    # gossip = "partial": the report's generation and the reports it relays (each entry is
    # checked field by field by agent/cluster/partial_view.py before it is merged)
    "gen": integer(0, 2**53),
    "digest": tree(list, DIGEST_BOUNDS, rule=_rows),
}
# A probe's answer: the load fields of a gossip body, fresh (docs/protocol.md, "Peers").
PROBE_REPLY_FIELDS = {
    **{k: GOSSIP_FIELDS[k] for k in ("sent_at", "backlog_steps", "interval_load_steps")},
    "capacity_steps_per_s": number(
        0, MAX_CAPACITY_STEPS_PER_S, required=True, nullable=True, open_low=True
    ),
    "accepting": flag(required=True),
}
REQUESTS: dict[str, Schema] = {
    "submit": Schema(SUBMIT_FIELDS),
    "status": Schema({}),
    "result": Schema({"task": uuid_field(required=True), "wait": flag()}),
    "cancel": Schema({"task": uuid_field(required=True)}),
    "tasks": Schema({"limit": integer(1, MAX_TASKS_LIMIT), "state": text(16, choices=TASK_STATES)}),
    "gossip": Schema(GOSSIP_FIELDS),
    "probe": Schema({}),
    "ping_req": Schema({"target": uuid_field(required=True)}),
    "steal": Schema(
        {
            "node": uuid_field(required=True),
            "capacity_steps_per_s": number(
                0, MAX_CAPACITY_STEPS_PER_S, required=True, open_low=True
            ),
        }
    ),
}
STEAL_REPLY_FIELDS = {  # docs/protocol.md, "steal"
    "given": flag(required=True),
    "task": uuid_field(nullable=True),  # the task handed over (with given), else null
    "reason": text(MAX_MESSAGE_CHARS),  # why nothing was given (for people)
}


def decode_frame(frame: bytes, max_items: int | None = None) -> Any:
    """msgpack-decode one frame; any decoder failure becomes ProtocolError(bad_frame)."""
    limits = {} if max_items is None else {"max_array_len": max_items, "max_map_len": max_items}
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True, **limits)
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ...
        raise ProtocolError(ErrorCode.BAD_FRAME, f"not a msgpack message: {exc}") from exc


def encode(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _map(frame: bytes, max_items: int | None = None) -> dict[Any, Any]:
    msg = decode_frame(frame, max_items)
    if type(msg) is not dict:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"expected a map, got {type(msg).__name__}")
    return msg


def _version(msg: dict[Any, Any], rid: str | None) -> None:
    version = msg.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # 1.0 and True are not 1
        raise ProtocolError(
            ErrorCode.BAD_VERSION,
            f"protocol version {show(version)} is not supported; "
            f"this agent speaks v{PROTOCOL_VERSION}",
            rid,
            "v",
        )


def _request_id(msg: dict[Any, Any]) -> str | None:
    rid = msg.get("id")
    return rid if type(rid) is str and 0 < len(rid) <= MAX_ID_CHARS else None


def parse_request(frames: list[bytes]) -> ClientMessage:
    """Validate the frames of one client or peer request (identity already removed).

    Raises:
        ProtocolError: ``bad_frame``, ``bad_version``, ``bad_type`` or ``bad_field`` (with
            ``field``); the request id is echoed when it could be read.
    """
    if len(frames) != 1:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"expected 1 frame, got {len(frames)}")
    if len(frames[0]) > MAX_FRAME_BYTES:  # libzmq drops these on the ROUTER already
        raise ProtocolError(ErrorCode.BAD_FRAME, f"frame over {MAX_FRAME_BYTES} bytes")
    msg = _map(frames[0], MAX_REQUEST_ITEMS)
    rid = _request_id(msg)
    _version(msg, rid)
    kind = msg.get("type")
    if type(kind) is not str or kind not in REQUESTS:
        raise ProtocolError(
            ErrorCode.BAD_TYPE,
            f"unknown message type {show(kind)}; expected one of {REQUEST_TYPES}",
            rid,
        )
    if rid is None:
        raise _bad(None, "id", f"must be a string of 1..{MAX_ID_CHARS} characters")
    body = check_fields(msg, REQUESTS[kind], kind, rid)
    match kind:
        case "submit":
            return _submit(body, rid)
        case "status":
            return StatusRequest(rid)
        case "result":
            return ResultRequest(rid, TaskId(body["task"]), body.get("wait", False))
        case "cancel":
            return CancelRequest(rid, TaskId(body["task"]))
        case "tasks":
            return TasksRequest(rid, body.get("limit", DEFAULT_TASKS_LIMIT), body.get("state"))
        case "probe":
            return Probe(rid)
        case "steal":
            return Steal(rid, body["node"], body["capacity_steps_per_s"])
        case "ping_req":
            return PingReq(rid, body)
    return Gossip(rid, body)


def _submit(body: dict[str, Any], rid: str) -> Submit:
    defaults = GenerationRequest(prompt="-")
    request = GenerationRequest(
        prompt=body["prompt"],
        negative_prompt=body.get("negative_prompt", defaults.negative_prompt),
        steps=body.get("steps", defaults.steps),
        width=body.get("width", defaults.width),
        height=body.get("height", defaults.height),
        guidance=body.get("guidance", defaults.guidance),
        seed=body.get("seed", defaults.seed),
    )
    try:
        request.validate()  # the backend's own rules stay authoritative
    except InvalidRequest as exc:
        raise ProtocolError(ErrorCode.BAD_FIELD, str(exc), rid) from exc
    task = body.get("task")
    return Submit(
        rid,
        request,
        None if task is None else TaskId(task),
        body.get("origin"),
        body.get("wait", True),
        body.get("owner"),
    )


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
    if len(message) > MAX_MESSAGE_CHARS:  # e.g. a long backend exception: keep the reply valid
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    reply = envelope("error", request_id, code=code.value, message=message)
    if task is not None:
        reply["task"] = task
    if field is not None:
        reply["field"] = field[:MAX_ID_CHARS]
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
    """A decoded, validated reply: its type, its typed fields, and the PNG frame of ``done``."""

    type: str
    id: str | None
    fields: dict[str, Any]
    png: bytes = b""

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def _progress(body: dict[str, Any]) -> str | None:
    return "`step` must not exceed `steps`" if body["step"] > body["steps"] else None


_TIME = number(0, MAX_UNIX_S, nullable=True)
DONE_FIELDS = {
    "task": uuid_field(required=True),
    "origin": text(MAX_ID_CHARS, rule=_token),
    "prompt": text(MAX_PROMPT_CHARS),
    "negative_prompt": text(MAX_PROMPT_CHARS),
    "guidance": number(0, MAX_GUIDANCE),
    "width": integer(MIN_SIDE_PX, MAX_SIDE_PX),
    "height": integer(MIN_SIDE_PX, MAX_SIDE_PX),
    "steps": integer(1, MAX_STEPS),
    "seed": integer(0, MAX_SEED),
    "backend": text(256),
    "emulated": flag(),
    "peak_memory_bytes": integer(0, INT64_MAX, nullable=True),
    "png_bytes": integer(0, MAX_PNG_BYTES),
    "attempts": integer(0, MAX_QUEUED),
    "submitted_at": _TIME,
    "started_at": _TIME,
    "finished_at": _TIME,
    "relayed_at": _TIME,
    "timings": tree(dict, META_BOUNDS, nullable=True),
    "ran_on": tree(dict, META_BOUNDS, nullable=True),
    "placement": tree(dict, META_BOUNDS, nullable=True),
}
_STATUS_MAP = tree(dict, STATUS_BOUNDS, required=True)
REPLIES: dict[str, Schema] = {
    "accepted": Schema(
        {
            "task": uuid_field(required=True),
            "position": integer(0, MAX_POSITION, required=True),
            "origin": text(MAX_ID_CHARS, min_chars=1, required=True, rule=_token),
            "forwarded_to": text(MAX_NAME_CHARS, nullable=True, rule=_name),
        },
        META_BOUNDS,
    ),
    "progress": Schema(
        {
            "task": uuid_field(required=True),
            "stage": text(16, required=True, choices=STAGES),
            "step": integer(0, MAX_STEPS, required=True),
            "steps": integer(1, MAX_STEPS, required=True),
            "position": integer(0, MAX_POSITION, required=True),
        },
        META_BOUNDS,
    ),
    "done": Schema(DONE_FIELDS, META_BOUNDS),
    "error": Schema(
        {
            "code": text(MAX_CODE_CHARS, min_chars=1, required=True, rule=_token),
            "message": text(MAX_MESSAGE_CHARS, required=True),
            "task": uuid_field(),
            "field": text(MAX_ID_CHARS, nullable=True),
        },
        META_BOUNDS,
    ),
    "cancelled": Schema(
        {
            "task": uuid_field(required=True),
            "state": text(16, required=True, choices=CANCEL_STATES),
        },
        META_BOUNDS,
    ),
    "gossip": Schema(
        {**GOSSIP_FIELDS, "echo_sent_at": number(0, MAX_UNIX_S, required=True)}, TELEMETRY_BOUNDS
    ),
    "probe_reply": Schema(PROBE_REPLY_FIELDS, TELEMETRY_BOUNDS),
    "ping_ack": Schema({"target": uuid_field(required=True), "ok": flag(required=True)}),
    "steal_reply": Schema(STEAL_REPLY_FIELDS, TELEMETRY_BOUNDS),
    "agent_status": Schema(
        {
            **{k: _STATUS_MAP for k in ("agent", "backend", "telemetry", "queue", "capacity")},
            "counters": _STATUS_MAP,
            "cluster": tree(dict, STATUS_BOUNDS, nullable=True),
        },
        STATUS_BOUNDS,
        MAX_REPLY_BYTES,
    ),
    "task_list": Schema(
        {"tasks": tree(list, STATUS_BOUNDS, required=True, rule=_rows)},
        STATUS_BOUNDS,
        MAX_REPLY_BYTES,
    ),
}
_CROSS_CHECKS: dict[str, Callable[[dict[str, Any]], str | None]] = {"progress": _progress}


def _check_png(png: bytes, body: dict[str, Any], rid: str | None) -> None:
    if len(png) > MAX_PNG_BYTES:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"PNG frame over {MAX_PNG_BYTES} bytes", rid)
    if png.startswith(PNG_MAGIC) or (not png and body.get("emulated") is True):
        return  # the emulated backend makes no image
    raise ProtocolError(ErrorCode.BAD_FRAME, "the second frame of `done` is not a PNG", rid)


def _parse_reply(frames: list[bytes], allowed: tuple[str, ...]) -> Reply:
    if not 1 <= len(frames) <= 2:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"reply has {len(frames)} frames")
    if len(frames[0]) > MAX_REPLY_BYTES:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"reply map over {MAX_REPLY_BYTES} bytes")
    msg = _map(frames[0])
    rid = _request_id(msg)
    _version(msg, rid)
    kind = msg.get("type")
    if type(kind) is not str or kind not in allowed:
        raise ProtocolError(ErrorCode.BAD_TYPE, f"unknown reply type {show(kind)}", rid)
    if rid is None and msg.get("id") is not None:
        raise _bad(None, "id", f"must be null or a string of 1..{MAX_ID_CHARS} characters")
    schema = REPLIES[kind]
    if len(frames[0]) > schema.max_bytes:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"`{kind}` over {schema.max_bytes} bytes", rid)
    if len(frames) != (2 if kind == "done" else 1):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"`{kind}` with {len(frames)} frames", rid)
    body = check_fields(msg, schema, kind, rid)
    cross = _CROSS_CHECKS.get(kind)
    why = cross(body) if cross is not None else None
    if why is not None:
        raise ProtocolError(ErrorCode.BAD_FIELD, why, rid)
    png = frames[1] if kind == "done" else b""
    if kind == "done":
        _check_png(png, body, rid)
    return Reply(kind, rid, body, png)


def parse_reply(frames: list[bytes]) -> Reply:
    """Validate an agent's reply on the client side: strict known fields, bounded rest.

    Raises:
        ProtocolError: ``bad_frame`` (frame count, size, PNG), ``bad_version``,
            ``bad_type`` or ``bad_field`` (``field`` names it).
    """
    return _parse_reply(frames, REPLY_TYPES)


def parse_peer_reply(frames: list[bytes]) -> Reply:
    """Validate what a peer sends back on the link this agent opened to it.

    Like ``parse_reply``, but only the replies to ``submit``, ``cancel``, ``gossip``,
    ``probe`` and ``steal`` may come from a peer: ``agent_status`` and ``task_list`` are
    ``bad_type`` there.
    """
    return _parse_reply(frames, PEER_REPLY_TYPES)
