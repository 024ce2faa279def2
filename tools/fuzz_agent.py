"""Fuzz one live agent: ≥ 100,000 valid, mutated and garbage frames as fast as it answers.

One real agent (``python -m dedgeai.agent``, EMULATED backend, policy ``local``, keyless on
loopback) is started with one configured peer endpoint on 127.0.0.1, where this tool binds a
silent sink. In keyless mode a sender counts as a peer when its address is the host of a
peer endpoint, so DEALERs connected from 127.0.0.1 speak as a *peer* and DEALERs bound to
the source address 127.0.0.2 speak as a *client*: both roles are exercised. Every frame
but a rare oversized one (libzmq drops it and the connection) must be answered; the window
of frames awaiting their first reply is bounded (``--window``).

    python tools/fuzz_agent.py [--frames 100000] [--seed 0] [--out runs/fuzz_agent.json]

Pass (exit 0) when, at the end: the agent is alive, answers ``status``, every frame was
answered, its RSS grew by at most ``--max-rss-growth`` since the warm-up (the first
``--warmup`` frames: imports and allocator arenas), and its open fds are back to baseline.
Exit 1: a criterion failed; exit 2: the agent did not start.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq
from rich.console import Console
from rich.table import Table

from dedgeai.agent.errors import DedgeaiError
from dedgeai.agent.lab.harness import ClusterError, LocalCluster, free_ports
from dedgeai.agent.node import protocol as p

PEER_HOST = "127.0.0.1"  # the configured peer's host: senders from here are peers
CLIENT_HOST = "127.0.0.2"  # any other loopback address: senders from here are clients
STALL_S = 15.0  # no reply at all for this long: the frames still waiting are unanswered
FD_SETTLE_S = 10.0  # closed connections take a moment to leave the agent's fd table
MAX_STRING_CHARS = 200_000  # "huge" strings stay well under the 1 MiB frame limit
RSS_SAMPLE_FRAMES = 10_000  # the agent's RSS is sampled after every this many frames
OVERSIZE_EVERY = 25_000  # one frame over MAX_FRAME_BYTES per this many (on its own socket)
console = Console(width=None if sys.stdout.isatty() else 132)

# --- frames -------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One message to send: its frames, the id its reply must echo, whether it streams."""

    frames: list[bytes]
    kind: str  # the generator that made it (for the table)
    expect_id: str | None  # None: the agent cannot read an id, the reply has id None
    stream: bool = False  # a submit or result: progress and done may follow the first reply

    @classmethod
    def of(cls, frames: list[bytes], kind: str) -> Probe:
        rid, msg = read_as_agent(frames)
        kind_field = msg.get("type") if isinstance(msg, dict) else None
        return cls(frames, kind, rid, kind_field in ("submit", "result"))


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def read_as_agent(frames: list[bytes]) -> tuple[str | None, Any]:
    """(the id the agent will echo, the decoded body), by ``protocol.parse_request``'s rules."""
    body = frames[1:] if len(frames) >= 2 and frames[0] == b"" else frames  # REQ-style
    if len(body) != 1:
        return None, None
    try:
        msg = msgpack.unpackb(body[0], raw=False, strict_map_key=True, use_list=True)
    except Exception:  # any decoder failure: bad_frame, no id
        return None, None
    rid = msg.get("id") if isinstance(msg, dict) else None
    return (rid if isinstance(rid, str) and 0 < len(rid) <= p.MAX_ID_CHARS else None), msg


def strange_values(rng: random.Random) -> list[Any]:
    """Values of every wrong kind: the fuzzer puts them in any field."""
    huge = "x" * rng.randrange(2_001, MAX_STRING_CHARS)
    return [
        None, True, False, 0, -1, 1, 2**63 - 1, 2**64 - 1, -(2**63), 1.5, -0.0,
        math.nan, math.inf, -math.inf, 1e308, "", " ", "x", huge, "<script>alert(1)</script>",
        "\x00\x01\x1b[2J\r\n", "\u202eevil\u200b", "🐱" * 50, b"bytes", b"\x00" * 32, [], {},
        [1, [2, [3, [4]]]], {"a": {"b": [None]}}, msgpack.ExtType(5, b"ext"),
        msgpack.Timestamp(1, 2), list(range(1000)), {str(i): i for i in range(200)},
    ]  # fmt: skip


class FrameMaker:
    """Seeded generator of valid, mutated and garbage frames for every message type.

    Args:
        seed: the only source of randomness.
        n_tasks: size of the pool of task ids that submits, results and cancels share, so
            results and cancels also hit real tasks and resubmits are idempotent.
        submit_share: fraction of frames that are valid submits (tiny steps).
    """

    def __init__(
        self,
        seed: int,
        n_tasks: int = 256,
        submit_share: float = 0.02,
        exclude: tuple[str, ...] = (),
    ) -> None:
        self.rng = random.Random(seed)
        self.tasks = [
            str(uuid.UUID(int=self.rng.getrandbits(128), version=4)) for _ in range(n_tasks)
        ]
        self.origins = [str(uuid.UUID(int=self.rng.getrandbits(128), version=4)) for _ in range(4)]
        self.submit_share = submit_share
        self.count = 0
        self.strange = strange_values(self.rng)
        valid: list[tuple[float, Callable[[], Probe]]] = [
            (submit_share * 0.6, self.submit),
            (submit_share * 0.4, self.forwarded_submit),
            (0.10, self.status),
            (0.07, self.result),
            (0.05, self.cancel),
            (0.05, self.tasks_request),
            (0.06, self.gossip),
        ]
        mutated: list[tuple[float, Callable[[], Probe]]] = [
            (0.14, self.wrong_type_field),
            (0.05, self.unhashable_type),
            (0.05, self.unknown_type),
            (0.06, self.missing_field),
            (0.06, self.extra_field),
            (0.05, self.bad_envelope),
            (0.05, self.garbage),
            (0.05, self.truncated),
            (0.05, self.frame_count),
            (0.04, self.not_a_map),
            (0.03, self.bad_encoding),
        ]
        chosen = [(w, m) for w, m in valid + mutated if m.__name__ not in exclude]
        self.makers = [maker for _, maker in chosen]
        self.weights = [weight for weight, _ in chosen]

    def next(self) -> Probe:
        self.count += 1
        return self.rng.choices(self.makers, self.weights)[0]()

    # --- building blocks ---------------------------------------------------------------

    def rid(self) -> str:
        return f"f{self.count}"

    def probe(self, msg: Any, kind: str) -> Probe:
        return Probe.of([pack(msg)], kind)

    def task(self) -> str:
        return self.rng.choice(self.tasks)

    def request_fields(self) -> dict[str, Any]:
        rng = self.rng
        return {
            "prompt": rng.choice(["a cat", "two dogs on a beach", "<b>markup</b> \x07 prompt"]),
            "steps": rng.randint(1, 2),
            "width": 256,
            "height": rng.choice([256, 272]),
            "guidance": rng.choice([0, 3.5, 7]),
            "seed": rng.randrange(2**31),
        }

    def valid_message(self) -> dict[str, Any]:
        """A valid message of a random type (the base that mutations change)."""
        maker = self.rng.choice(
            [self.submit, self.status, self.result, self.cancel, self.tasks_request, self.gossip]
        )
        frame = maker().frames[0]
        return msgpack.unpackb(frame, raw=False)

    # --- valid messages ----------------------------------------------------------------

    def submit(self) -> Probe:
        wait = self.rng.random() < 0.5
        msg = {"v": 1, "type": "submit", "id": self.rid(), **self.request_fields(), "wait": wait}
        if self.rng.random() < 0.8:
            msg["task"] = self.task()
        return self.probe(msg, "submit")

    def forwarded_submit(self) -> Probe:
        msg = {"v": 1, "type": "submit", "id": "fwd:" + self.rid(), **self.request_fields()}
        msg.update(task=self.task(), origin=self.rng.choice(self.origins), wait=True)
        if self.rng.random() < 0.5:
            msg["owner"] = self.rng.choice(["local", "key:" + "A" * 40])
        return self.probe(msg, "forwarded_submit")

    def status(self) -> Probe:
        return self.probe({"v": 1, "type": "status", "id": self.rid()}, "status")

    def result(self) -> Probe:
        wait = self.rng.random() < 0.3
        msg = {"v": 1, "type": "result", "id": self.rid(), "task": self.task(), "wait": wait}
        return self.probe(msg, "result")

    def cancel(self) -> Probe:
        return self.probe(
            {"v": 1, "type": "cancel", "id": self.rid(), "task": self.task()}, "cancel"
        )

    def tasks_request(self) -> Probe:
        msg: dict[str, Any] = {"v": 1, "type": "tasks", "id": self.rid()}
        msg["limit"] = self.rng.choice([1, 10, 50, 1000])
        if self.rng.random() < 0.5:
            msg["state"] = self.rng.choice(p.TASK_STATES)
        return self.probe(msg, "tasks")

    def gossip(self) -> Probe:
        rng = self.rng
        msg = {
            "v": 1,
            "type": "gossip",
            "id": self.rid(),
            "node": rng.choice(self.origins),
            "sent_at": time.time(),
            "backlog_steps": rng.choice([0, 5, 1e6]),
            "interval_load_steps": rng.random() * 10,
        }
        if rng.random() < 0.5:
            msg.update(capacity_steps_per_s=rng.choice([None, 10.0]), accepting=True, queued=0)
            msg.update(started_at=rng.choice([1.0, 2.0]), telemetry={"gpu": {"util": 0.5}})
        return self.probe(msg, "gossip")

    # --- mutated messages --------------------------------------------------------------

    def wrong_type_field(self) -> Probe:
        msg = self.valid_message()
        names = [k for k in msg if k not in ("v", "type", "id")] or ["id"]
        msg[self.rng.choice(names)] = self.rng.choice(self.strange)
        return self.probe(msg, "wrong_type_field")

    def unhashable_type(self) -> Probe:
        value = self.rng.choice([[], {}, ["submit"], {"submit": 1}, [[]]])
        return self.probe({"v": 1, "type": value, "id": self.rid()}, "unhashable_type")

    def unknown_type(self) -> Probe:
        kind = self.rng.choice(["submitt", "", "STATUS", "done", "accepted", "error", 7, None])
        kind = kind if self.rng.random() < 0.9 else self.rng.choice(self.strange)
        return self.probe({"v": 1, "type": kind, "id": self.rid()}, "unknown_type")

    def missing_field(self) -> Probe:
        msg = self.valid_message()
        if len(msg) > 1:
            del msg[self.rng.choice(sorted(msg))]
        return self.probe(msg, "missing_field")

    def extra_field(self) -> Probe:
        msg = self.valid_message()
        name = self.rng.choice(["priority", "Prompt", "png", "x" * 300, "", "\x00", "owner"])
        msg[name] = self.rng.choice(self.strange)
        return self.probe(msg, "extra_field")

    def bad_envelope(self) -> Probe:
        msg = self.valid_message()
        key = self.rng.choice(["v", "id"])
        if self.rng.random() < 0.3:
            del msg[key]
        else:
            msg[key] = self.rng.choice([*self.strange, "i" * 65, 2, "1", 1.0])
        return self.probe(msg, "bad_envelope")

    def garbage(self) -> Probe:
        size = self.rng.choice([0, 1, 7, 64, 4096, 200_000])
        data = self.rng.randbytes(size)
        return Probe.of([data], "garbage")

    def truncated(self) -> Probe:
        whole = pack(self.valid_message())
        cut = whole[: self.rng.randrange(1, len(whole))]
        head = self.rng.choice([b"", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff"])
        frames = [cut if self.rng.random() < 0.7 else head + cut]
        return Probe.of(frames, "truncated")

    def frame_count(self) -> Probe:
        whole = pack(self.valid_message())
        frames = self.rng.choice(
            [[whole, whole], [b"", whole], [b"", b"", whole], [whole, b""], [b""], [b"", b""]]
        )
        return Probe.of(frames, "frame_count")

    def not_a_map(self) -> Probe:
        value = self.rng.choice([[1, 2], 7, "submit", None, 1.5, True, [], b"\x00", [{"v": 1}]])
        deep = b"\x91" * self.rng.choice([10, 5000, 200_000])
        frames = [pack(value) if self.rng.random() < 0.8 else deep]
        return Probe.of(frames, "not_a_map")

    def bad_encoding(self) -> Probe:
        """Byte-level tricks: invalid UTF-8 in a str, non-str map keys, duplicate keys."""
        rid = self.rid().encode()
        choices = [
            b"\x83\xa1v\x01\xa4type\xa6status\xa2id\xa2\xff\xfe",  # id: invalid UTF-8
            b"\x81\x01\x02",  # int key
            b"\x81\xc0\xc0",  # nil key
            b"\x84\xa1v\x01\xa4type\xa6status\xa2id\xa1a\xa2id" + bytes([0xA0 + len(rid)]) + rid,
            b"\x83\xa1v\x01\xa4type\xa6status\xa2id\xc4\x01a",  # id as bin
        ]
        frames = [self.rng.choice(choices)]
        return Probe.of(frames, "bad_encoding")


# --- the run ------------------------------------------------------------------------


@dataclass
class Connection:
    socket: zmq.Socket
    role: str  # "peer" or "client"
    pending: Counter[str | None] = field(default_factory=Counter)  # first replies awaited
    streams: set[str] = field(default_factory=set)


@dataclass
class Tally:
    sent: int = 0
    first_replies: int = 0
    stream_replies: int = 0
    unexpected: int = 0  # replies for an id never sent (or a second first reply)
    unparseable: int = 0
    samples: list[str] = field(default_factory=list)  # the first odd replies, for the report
    oversize_sent: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)  # "role type[/code]"

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, count) pairs.
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}


class Fuzzer:
    """Sends probes over a few DEALERs with a bounded window and reads every reply."""

    def __init__(self, endpoint: str, maker: FrameMaker, connections: int, window: int) -> None:
        self.endpoint, self.maker, self.window = endpoint, maker, window
        self.context = zmq.Context()
        self.connections = [
            self._connect(PEER_HOST if i % 2 == 0 else CLIENT_HOST) for i in range(connections)
        ]
        self.poller = zmq.Poller()
        for conn in self.connections:
            self.poller.register(conn.socket, zmq.POLLIN)
        self.tally = Tally()
        self.unanswered = 0

    def _connect(self, source: str) -> Connection:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        port = self.endpoint.rsplit(":", 1)[1]
        sock.connect(f"tcp://{source}:0;127.0.0.1:{port}")
        return Connection(sock, "peer" if source == PEER_HOST else "client")

    @property
    def pending(self) -> int:
        return sum(sum(c.pending.values()) for c in self.connections)

    def close(self) -> None:
        for conn in self.connections:
            conn.socket.close(0)
        self.context.term()

    def send_oversize(self) -> None:
        """A frame over MAX_FRAME_BYTES on a throwaway socket: libzmq drops it and the link."""
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(self.endpoint)
        sock.send(b"\x00" * (p.MAX_FRAME_BYTES + 1))
        sock.close()
        self.tally.oversize_sent += 1

    def _send(self, conn: Connection, probe: Probe) -> None:
        conn.socket.send_multipart(probe.frames)
        conn.pending[probe.expect_id] += 1
        if probe.stream and probe.expect_id is not None:
            conn.streams.add(probe.expect_id)
        self.tally.sent += 1
        self.tally.by_kind[probe.kind] += 1

    def _sample(self, text: str) -> None:
        if len(self.tally.samples) < 20:
            self.tally.samples.append(text[:300])

    def _read(self, conn: Connection) -> None:
        frames = conn.socket.recv_multipart()
        if len(frames) > 1 and frames[0] == b"":  # the REQ-style delimiter we sent
            frames = frames[1:]
        try:
            reply = p.parse_reply(frames)
        except DedgeaiError as exc:
            self.tally.unparseable += 1
            self._sample(f"{conn.role} unparseable: {exc} {frames[0][:200]!r}")
            return
        label = reply.type + (f"/{reply.get('code')}" if reply.type == "error" else "")
        self.tally.replies[f"{conn.role} {label}"] += 1
        if conn.pending[reply.id] > 0:
            conn.pending[reply.id] -= 1
            if conn.pending[reply.id] == 0:
                del conn.pending[reply.id]
            self.tally.first_replies += 1
        elif reply.id in conn.streams:
            self.tally.stream_replies += 1
        else:
            self.tally.unexpected += 1
            self._sample(f"{conn.role} unexpected {reply.type} id={reply.id!r} {reply.fields}")

    def pump(self, timeout_ms: int) -> bool:
        """Read every reply that is ready (waiting up to ``timeout_ms``); False: none came."""
        ready = dict(self.poller.poll(timeout_ms))
        for conn in self.connections:
            if conn.socket in ready:
                while conn.socket.poll(0):
                    self._read(conn)
        return bool(ready)

    def run(self, frames: int, alive: Callable[[], bool]) -> None:
        """Send ``frames`` probes (window-bounded) and wait for all their first replies."""
        heard = time.monotonic()
        target = self.tally.sent + frames
        turn = 0
        while self.tally.sent < target or self.pending:
            while self.tally.sent < target and self.pending < self.window:
                conn = self.connections[turn % len(self.connections)]
                turn += 1
                self._send(conn, self.maker.next())
                if self.tally.sent % OVERSIZE_EVERY == 0:
                    self.send_oversize()
            if self.pump(100):
                heard = time.monotonic()
            elif time.monotonic() - heard > STALL_S or not alive():
                self.unanswered += self.pending
                for conn in self.connections:
                    conn.pending.clear()
                return
        self.pump(0)


# --- the agent ----------------------------------------------------------------------


def start_agent(root: Path | None, sink_port: int) -> LocalCluster:
    settings = {
        "peers": [f"tcp://{PEER_HOST}:{sink_port}"],
        "policy": "local",
        "model": "emulated",
        "emulated_steps_per_second": 2000.0,
        "log_level": "warning",
        "max_queue": 256,
        "gossip_interval_s": 1.0,
    }
    return LocalCluster([settings], root=root, peers=False, curve=False).start()


def agent_status(cluster: LocalCluster) -> dict[str, Any] | None:
    try:
        with cluster.client(0, timeout_s=5.0, retries=2) as client:
            return client.status()
    except DedgeaiError:
        return None


def measure(proc: psutil.Process) -> tuple[int, int]:
    """(RSS bytes, open fds) of the agent; (0, 0) once it is gone."""
    try:
        return proc.memory_info().rss, proc.num_fds()
    except psutil.NoSuchProcess:
        return 0, 0


def settle_fds(proc: psutil.Process, baseline: int) -> int:
    """The agent's fd count, waiting (bounded) for closed links to leave its table."""
    deadline = time.monotonic() + FD_SETTLE_S
    while True:
        fds = measure(proc)[1]
        if fds <= baseline or time.monotonic() > deadline:
            return fds
        time.sleep(0.1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--connections", type=int, default=4, help="DEALERs, half peer, half client"
    )
    parser.add_argument("--window", type=int, default=64, help="frames awaiting a first reply")
    parser.add_argument("--warmup", type=int, default=2_000, help="frames before the baseline")
    parser.add_argument("--max-rss-growth", type=float, default=0.10, help="fraction")
    parser.add_argument("--out", type=Path, default=Path("runs/fuzz_agent.json"))
    parser.add_argument("--root", type=Path, help="keep the agent's state and log here")
    parser.add_argument(
        "--exclude", nargs="*", default=[], help="generators to leave out (to bisect a finding)"
    )
    return parser.parse_args(argv)


def fuzz(args: argparse.Namespace) -> dict[str, Any]:
    """Start the agent, fuzz it, measure it; the JSON row (``passed`` says the verdict)."""
    sink_port = free_ports(1)[0]
    context = zmq.Context.instance()
    sink = context.socket(zmq.ROUTER)  # the configured peer: hears gossip, never answers
    sink.setsockopt(zmq.LINGER, 0)
    sink.bind(f"tcp://{PEER_HOST}:{sink_port}")
    cluster = start_agent(args.root, sink_port)
    agent = cluster.agents[0]
    proc = psutil.Process(agent.proc.pid)  # type: ignore[union-attr]
    fuzzer = Fuzzer(
        agent.endpoint,
        FrameMaker(args.seed, exclude=tuple(args.exclude)),
        args.connections,
        args.window,
    )
    row: dict[str, Any] = {"seed": args.seed, "frames": args.frames, "window": args.window}
    try:
        fuzzer.run(min(args.warmup, args.frames), agent.alive)
        rss_before, fds_before = measure(proc)
        started = time.monotonic()
        rss_trace = [[fuzzer.tally.sent, rss_before]]  # flat, or growing with the frames?
        left = max(0, args.frames - args.warmup)
        while left and agent.alive():
            chunk = min(left, RSS_SAMPLE_FRAMES)
            fuzzer.run(chunk, agent.alive)
            left -= chunk
            rss_trace.append([fuzzer.tally.sent, measure(proc)[0]])
        elapsed = time.monotonic() - started
        while fuzzer.pump(200):  # late stream replies (done of tiny tasks)
            pass
        alive = agent.alive()
        status = agent_status(cluster) if alive else None
        rss_after = measure(proc)[0]
        fds_after = settle_fds(proc, fds_before) if agent.alive() else 0
        measured = max(1, fuzzer.tally.sent - min(args.warmup, args.frames))
        growth = (rss_after - rss_before) / rss_before if rss_before else math.inf
        row.update(
            tally=fuzzer.tally.as_dict(),
            unanswered=fuzzer.unanswered,
            seconds=elapsed,
            frames_per_s=measured / elapsed if elapsed else math.nan,
            rss_before_bytes=rss_before,
            rss_after_bytes=rss_after,
            rss_growth=growth,
            rss_trace=rss_trace,
            fds_before=fds_before,
            fds_after=fds_after,
            alive=alive,
            status_answered=status is not None,
        )
        row["criteria"] = {
            "alive": alive and agent.alive(),
            "status answered": status is not None,
            "every frame answered": fuzzer.unanswered == 0 and fuzzer.tally.unparseable == 0,
            f"RSS growth <= {args.max_rss_growth:.0%}": growth <= args.max_rss_growth,
            "fds back to baseline": alive and fds_after <= fds_before,
        }
        row["passed"] = all(row["criteria"].values())
        if not row["passed"]:
            cluster.keep = True
            row["agent_log"] = str(agent.log_path)
            row["log_tail"] = agent.log_tail(30)
    finally:
        fuzzer.close()
        row["exit_code"] = cluster.close().get(agent.name)
        sink.close(0)
    return row


def print_table(row: dict[str, Any]) -> None:
    tally = row["tally"]
    table = Table(title=f"fuzz: {tally['sent']:,} frames (seed {row['seed']})")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("frames sent", f"{tally['sent']:,} (+{tally['oversize_sent']} oversize)")
    table.add_row(
        "first replies / stream replies",
        f"{tally['first_replies']:,} / {tally['stream_replies']:,}",
    )
    table.add_row(
        "unanswered / unexpected / unparseable",
        f"{row['unanswered']} / {tally['unexpected']} / {tally['unparseable']}",
    )
    table.add_row("rate (after warm-up)", f"{row['frames_per_s']:,.0f} frames/s")
    table.add_row(
        "RSS before -> after",
        f"{row['rss_before_bytes'] / 2**20:.1f} -> {row['rss_after_bytes'] / 2**20:.1f} MiB ({row['rss_growth']:+.1%})",
    )
    table.add_row("fds before -> after", f"{row['fds_before']} -> {row['fds_after']}")
    console.print(table)
    replies = Table(title="replies by sender role, type and error code")
    replies.add_column("reply")
    replies.add_column("count", justify="right")
    for label, count in sorted(tally["replies"].items(), key=lambda kv: -kv[1]):
        replies.add_row(label, f"{count:,}")
    console.print(replies)
    for name, ok in row["criteria"].items():
        console.print(f"{'PASS' if ok else 'FAIL'}  {name}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        row = fuzz(args)
    except ClusterError as exc:
        console.print(f"the agent did not start: {exc}")
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2, default=str))
    print_table(row)
    if not row["passed"]:
        console.print(f"agent log kept at {row.get('agent_log')}:\n{row.get('log_tail', '')}")
    return 0 if row["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
