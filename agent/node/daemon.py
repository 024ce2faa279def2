"""The agent process: one ROUTER socket, one loop thread that owns it, one GPU worker.

The loop polls the ROUTER and the worker's wake-up socket, hands what arrives to
``AgentCore`` and carries out the effects it returns (journal first, then sends). It
never lets a client message raise out of the loop: anything unexpected becomes an
``error: internal`` reply and a log line.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from dedgeai.agent.cluster.coordinator import Cluster
from dedgeai.agent.errors import ConfigError, ErrorCode, JournalError, ProtocolError, SecurityError
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.node import protocol as p
from dedgeai.agent.node.config import AgentConfig
from dedgeai.agent.node.core import (
    AgentCore,
    CancelJob,
    CancelRemote,
    Effect,
    Forward,
    Persist,
    Place,
    Route,
    Send,
    StartJob,
)
from dedgeai.agent.node.disk_store import DiskStore, RetentionLimits
from dedgeai.agent.node.failpoints import failpoint
from dedgeai.agent.node.journal import open_journal
from dedgeai.agent.node.lifecycle import Notifier, StopFlag
from dedgeai.agent.node.metrics import AgentMetrics
from dedgeai.agent.node.protocol import TaskId
from dedgeai.agent.node.records import Placement
from dedgeai.agent.node.results import ResultStore
from dedgeai.agent.node.state_lock import StateLock
from dedgeai.agent.node.status import package_version, status_body
from dedgeai.agent.node.tasks import TaskRecord, TaskState
from dedgeai.agent.node.telemetry import TelemetrySampler
from dedgeai.agent.node.worker import BackendFailed, BackendReady, ProfileReady, Worker
from dedgeai.agent.security.authority import Authority, Principal
from dedgeai.agent.security.curve import SecurityConfig, curve_required, server_security
from dedgeai.agent.security.keys import load_keypair, roles_by_key
from dedgeai.agent.security.peer_keys import PeerSecurity, split_peer
from dedgeai.models.backend import Backend
from dedgeai.models.errors import ModelError
from dedgeai.models.factory import BackendSpec, create_backend

log = logging.getLogger("dedgeai.agent")

POLL_INTERVAL_MS = 100  # the loop's heartbeat: watchdog, metrics and stop checks
MAX_BATCH = 256  # client messages handled per turn, committed in one transaction
METRICS_REFRESH_S = 1.0
RETENTION_EVERY_S = 60.0
STORAGE_PROBE_S = 1.0  # after a failed commit: how often to try again
LOOP_ERROR_PAUSE_S = 0.05
SOCKET_HWM = 10_000  # per peer; beyond it ROUTER drops (clients re-poll with `result`)
CLOSE_LINGER_MS = 500  # let the last replies leave on shutdown
# A loop that did not turn for this many gossip intervals was frozen (SIGSTOP, suspend): its
# peers mark it down after 3 silent intervals and may have run its forwarded tasks already.
PAUSE_INTERVALS = 2.0
# A status body is reused while nothing changed, for at most this long (its clocks, peer
# ages and retention figures move on their own): ~0.1 ms saved per status request.
STATUS_MAX_AGE_S = 0.02


@dataclass(frozen=True)
class Phase:
    """What the agent is doing: ``loading`` (the model), ``ready`` or ``failed``, since when."""

    name: str
    doing: str
    since: float = field(default_factory=time.time)


@dataclass(frozen=True)
class _StatusCache:
    """The last status body, and what it was built from."""

    changes: int  # ``AgentDaemon._changes`` then
    sample: object  # the telemetry snapshot it shows
    at: float
    body: dict[str, Any]


def _is_status_reply(effect: Effect) -> bool:
    return isinstance(effect, Send) and effect.message.get("type") == "agent_status"


def _freeze_heap(collect: bool = True) -> None:
    """Move every object alive now out of the cyclic GC's reach (``gc.freeze``).

    Startup objects (modules, the config, the model) live as long as the process, yet each
    full collection walks them all, on the loop thread, at a moment no request chooses:
    ~30 ms with numpy loaded, ~250 ms with the tiny model's torch (400k objects) on this
    2-core box. Frozen, they are never walked again; objects made later are collected as
    usual, and refcounting still frees frozen ones. ``collect=False`` skips the collection
    first (it would be that same pause): the cycles left by a model load stay, once.
    """
    if collect:
        gc.collect()
    gc.freeze()


class AgentDaemon:
    def __init__(
        self,
        config: AgentConfig,
        stop: StopFlag,
        notifier: Notifier,
        load: Callable[[], Backend] | None = None,
    ) -> None:
        """``load`` gives the worker its backend (default: built in the worker thread)."""
        self.config, self.stop, self.notifier = config, stop, notifier
        # Recovery below runs effects before the peers exist: they must see "no cluster yet".
        self.cluster: Cluster | None = None
        self._unsaved: dict[TaskId, TaskRecord] = {}  # changes a failed commit left in memory
        self._changes = 0  # bumped whenever what ``status`` shows may have changed
        self._status_cache: _StatusCache | None = None
        self._last_turn_at = time.time()
        # Decided before the journal and the model: a missing or bad key pair fails at once.
        self.security = SecurityConfig.from_config(config)
        self.public_key: str | None = None
        if curve_required(self.security, config.endpoint):
            self.public_key = load_keypair(self.security.keys_dir).public.decode()
        self.started_at = time.time()
        self.state_dir = config.state_path()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # One agent per state directory, decided before anything in it is read or written.
        self.state_lock = StateLock(self.state_dir).acquire()
        self.journal = open_journal(self.state_dir, config.journal_sync)
        self.results = ResultStore(self.state_dir / "results", fsync=config.journal_sync == "full")
        self.results.sweep_temporary()
        self.store = DiskStore(self.journal, self.results)
        self.core = AgentCore(self.journal.require_node_id(), config.max_queue, self.store)
        self.metrics = AgentMetrics()
        recovered = self.core.recover(
            self.journal.unfinished(),
            time.time(),
            hold_forwarded=bool(config.peers) or config.discovery,
        )
        self._execute([e for e in recovered if not isinstance(e, Forward)])  # Forward: below
        self.core.remember(self.journal.ids())  # new task ids then need no journal read
        self._apply_retention(time.time())
        if self.core.queue:
            log.info("resuming %d unfinished task(s) from the journal", len(self.core.queue))
        if self.core.held:
            log.info(
                "holding %d forwarded task(s) from the journal until their origin asks again",
                len(self.core.held),
            )

        self._spec = BackendSpec(
            model=config.model,
            vram_budget_bytes=config.vram_budget_bytes or None,
            device=config.device or None,
            emulated_steps_per_second=config.emulated_steps_per_second,
            placement=config.placement or None,
        )
        # The model loads in the worker thread, after the bind: until it is ready the agent
        # answers ``status`` (state "loading") and accepts and queues tasks.
        self.backend: Backend | None = None
        where = f" on {config.device}" if config.device else ""
        self.phase = Phase("loading", f"loading model {config.model}{where}")
        self.exit_code = 0  # set when the model cannot be loaded
        self._plan: dict[str, Any] = {}
        self._profile_state: dict[str, Any] = {"measuring": True, "error": None, "cached": False}

        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME_BYTES)
        self.router.setsockopt(zmq.SNDHWM, SOCKET_HWM)
        self.router.setsockopt(zmq.RCVHWM, SOCKET_HWM)
        self.router.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        self.authenticator = server_security(self.router, self.security, config.endpoint)
        try:
            self.router.bind(config.endpoint)
        except zmq.ZMQError as exc:
            self.router.close(0)
            if self.authenticator is not None:
                self.authenticator.stop()
            self.context.term()
            raise ConfigError(f"cannot bind {config.endpoint}: {exc}") from exc
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        try:  # peers, gossip, the scheduling policy (a checkpoint that does not fit: exit 2)
            peer_security = PeerSecurity.from_config(config, self.security, self.endpoint)
            self.cluster = Cluster(
                config,
                self.core,
                self.results,
                self.context,
                self.endpoint,
                self._describe,
                setup=peer_security.setup,
                security=peer_security,
            )
        except (ConfigError, SecurityError):
            self.router.close(0)
            if getattr(self, "authenticator", None) is not None:
                self.authenticator.stop()
            self.context.term()
            raise
        self.authority = Authority(
            curve=self.authenticator is not None,
            role_of_key=self._role_of_key,
            peer_keys=peer_security.peer_keys,
            peer_endpoints=[split_peer(entry)[0] for entry in config.peers],
        )
        self.cluster.authority = self.authority
        # With peers (configured or found by mDNS) first-hop tasks are placed by the cluster.
        self.core.join_cluster(self.cluster.identity, peers=self.cluster.n_slots > 1)
        # Tasks this agent had forwarded before a crash: ask their peers again, now that the
        # peer links exist (idempotent by task id; the result streams back on the new link).
        resumed = [e for e in recovered if isinstance(e, Forward)]
        for effect in resumed:
            if self.cluster is not None:
                self.cluster.forwarding.resumed(effect.task, time.time())
        self._execute(resumed)
        self.wake = self.context.socket(zmq.PULL)
        wake_endpoint = f"inproc://worker-wake-{uuid.uuid4().hex}"
        self.wake.bind(wake_endpoint)
        log.info("%s…", self.phase.doing)
        self.worker = Worker(
            load or self.build_backend,
            self.results,
            self.context,
            wake_endpoint,
            self.state_dir / "capacity.json",
            config.profile_size_pairs,
            config.profile_steps,
        ).start()
        self.telemetry = TelemetrySampler(config.telemetry_interval_s).start()
        self._telemetry_cache: tuple[object, dict[str, Any]] = (None, {})
        if config.metrics_port:
            self.metrics.serve(config.metrics_port, config.metrics_address)
        log.info(
            "agent %s (%s) listening on %s; state in %s",
            self.core.node,
            config.display_name,
            self.endpoint,
            self.state_dir,
        )
        if self.authenticator is not None:
            log.info(
                "CURVE on: public key %s; authorized keys in %s",
                self.public_key,
                self.security.authorized_keys_dir,
            )
        else:
            why = "curve = false" if not self.security.curve else "loopback, no key pair"
            log.info("CURVE off (%s): plain TCP; keys in %s", why, self.security.keys_dir)

    def _role_of_key(self, key: bytes) -> str | None:
        """The role written in the sender's authorized key file (re-read when it changes)."""
        return roles_by_key(self.security.authorized_keys_dir).get(key)

    def _describe(self) -> dict[str, Any]:
        """What gossip says about this agent besides its queue (model, plan, GPU telemetry)."""
        return {
            "model": self.config.model,
            "emulated": self.emulated,
            "plan": str(self._plan.get("text", ""))[: p.MAX_PLAN_CHARS],
            "telemetry": self.telemetry_dict() if hasattr(self, "telemetry") else {},
            "version": package_version(),
            "started_at": self.started_at,  # a new value tells peers this agent restarted
        }

    def _write_endpoint_files(self) -> None:
        """Where clients and tests find a ``*`` port: <state>/agent.endpoint (+ runtime dir)."""
        targets = [self.state_dir / "agent.endpoint"]
        runtime = os.environ.get("RUNTIME_DIRECTORY")
        if runtime:
            targets.append(Path(runtime.split(":")[0]) / "agent.endpoint")
        for target in targets:
            tmp = target.with_suffix(".tmp")
            tmp.write_text(self.endpoint + "\n")
            tmp.chmod(0o644)  # not a secret; readable by clients of any user despite UMask=0027
            tmp.replace(target)

    def build_backend(self) -> Backend:
        """The configured backend, loaded now (in the calling thread); ModelError if not."""
        return create_backend(self._spec)

    @property
    def emulated(self) -> bool:
        """Whether the backend is a timing stand-in (known from the config before the load)."""
        if self.backend is not None:
            return bool(self.backend.emulated)
        return self.config.model == "emulated"

    @property
    def ready(self) -> bool:
        return self.backend is not None

    # --- the loop ------------------------------------------------------------------

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.wake, zmq.POLLIN)
        assert self.cluster is not None
        self.cluster.start(poller)
        self._last_turn_at = time.time()  # the model load above is no frozen loop
        _freeze_heap()
        last_metrics = last_retention = last_probe = 0.0
        while not self.stop.is_set():
            try:
                self._turn(poller, self.cluster.poll_ms(POLL_INTERVAL_MS, time.time()))
                now = time.time()
                self.notifier.tick(time.monotonic())
                # The gauges come from a whole status body (~1 ms): only when someone scrapes.
                if self.config.metrics_port and now - last_metrics >= METRICS_REFRESH_S:
                    last_metrics = now
                    self.metrics.update(self.status_body(now))
                if self.core.storage_error is not None and now - last_probe >= STORAGE_PROBE_S:
                    last_probe = now
                    self._probe_storage()
                    self._changes += 1
                if now - last_retention >= RETENTION_EVERY_S:
                    last_retention = now
                    self._apply_retention(now)
                    self._changes += 1
            except Exception:  # the last line of defence: one bad turn, not a dead agent
                log.exception("a loop turn failed; the agent goes on")
                self.core.counters["loop_errors"] += 1
                time.sleep(LOOP_ERROR_PAUSE_S)  # a fault that repeats must not spin the CPU
        self._drain()

    def _turn(self, poller: zmq.Poller, timeout_ms: int) -> None:
        ready = dict(poller.poll(timeout_ms))
        now = time.time()
        effects: list[Effect] = []
        if self.wake in ready:
            effects += self._worker_events(now)
        if now - self._last_turn_at > PAUSE_INTERVALS * self.config.gossip_interval_s:
            effects += self._resumed_from_pause(now)
        if self.router in ready:
            for _ in range(MAX_BATCH):
                try:
                    frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                effects += self._on_frames(frames, now)
        if self.cluster is not None:
            effects += self.cluster.on_ready(ready, now)  # peers' replies: acks, progress, results
            effects += self.cluster.tick(now)  # gossip, liveness, forwarding deadlines
        if self.backend is not None:  # while the model loads, tasks wait in the queue
            effects += self.core.plan(now)
        if ready.keys() - {self.router} or not all(map(_is_status_reply, effects)):
            self._changes += 1  # the worker, a peer or a message moved: a new status body
        self._execute(effects)
        if self.journal.checkpoint_due(idle=not ready):
            self.journal.checkpoint()  # after this turn's replies left, never inside a commit
        self._last_turn_at = time.time()
        self.worker.loop_alive_at = time.monotonic()

    def _resumed_from_pause(self, now: float) -> list[Effect]:
        """The loop did not turn for several gossip intervals (SIGSTOP, a suspended VM, a
        stalled disk): origins may have marked this agent down and run its forwarded tasks
        elsewhere. None of them runs here before its origin asks for it again."""
        gap = now - self._last_turn_at
        stale_for_s = PAUSE_INTERVALS * self.config.gossip_interval_s
        effects = self.core.hold_forwarded(now, stale_for_s)
        if self.cluster is not None:
            self.cluster.resumed_from_pause(now)
        if self.core.held:
            log.warning(
                "the loop was frozen for %.1f s: holding %d forwarded task(s) until their "
                "origin asks for them again",
                gap,
                len(self.core.held),
            )
        return effects

    def _worker_events(self, now: float) -> list[Effect]:
        while True:  # the wake frames only say "look"; the events queue has the content
            try:
                self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        effects: list[Effect] = []
        while not self.worker.events.empty():
            event = self.worker.events.get_nowait()
            if isinstance(event, BackendReady | BackendFailed):
                self._loaded(event)
                continue
            if isinstance(event, ProfileReady):
                self.core.profile = event.profile
                self._profile_state = {
                    "measuring": False,
                    "error": event.error,
                    "cached": event.cached,
                }
                if event.profile is not None:
                    log.info("capacity: %s steps/s", event.profile.steps_per_second)
                continue
            effects += self.core.on_worker(event, now)
        return effects

    def _loaded(self, event: BackendReady | BackendFailed) -> None:
        """The worker finished loading the model: serve tasks, or say why not and stop."""
        if isinstance(event, BackendFailed):
            self.phase = Phase("failed", f"cannot load model {self.config.model}: {event.error}")
            log.error("cannot start: %s", self.phase.doing)
            bad_input = isinstance(event.exception, ModelError | ConfigError | OSError)
            self.exit_code = ExitCode.BAD_INPUT if bad_input else ExitCode.INTERNAL
            self.stop.set()
            return
        self.backend, self._plan = event.backend, event.plan
        self.phase = Phase("ready", f"serving on {self.endpoint}")
        _freeze_heap(collect=False)  # what loading the model made lives as long as we do
        log.info(
            "model %s ready in %.1f s: backend %s",
            self.config.model,
            event.load_s,
            event.backend.name,
        )
        # Like READY=1, the endpoint file says "can run tasks" (launchers wait for it);
        # ``status`` answers from the bind on, for clients that know the port.
        self._write_endpoint_files()
        self.notifier.ready(f"listening on {self.endpoint}; backend {event.backend.name}")

    def _sender(self, frame: zmq.Frame) -> Principal:
        """Who sent this frame: its CURVE key (ZAP's User-Id) or, keyless, its TCP address."""
        name = "User-Id" if self.authority.curve else "Peer-Address"
        try:
            value: str | None = frame.get(name)
        except zmq.ZMQError:  # not a TCP connection, or no ZAP handler stamped it
            value = None
        if self.authority.curve:
            return self.authority.principal(value, None)
        return self.authority.principal(None, value)

    def _on_frames(self, raw: list[zmq.Frame], now: float) -> list[Effect]:
        sender = self._sender(raw[-1])
        frames = [f.bytes for f in raw]
        if len(frames) >= 3 and frames[1] == b"":  # a REQ peer: keep its empty delimiter
            route: Route = (frames[0], b"")
            body = frames[2:]
        else:
            route, body = (frames[0],), frames[1:]
        try:
            msg = p.parse_request(body)
            refusal = self.authority.check(sender, msg)
            if refusal is not None:
                raise refusal
        except ProtocolError as exc:
            self.metrics.error(exc.code.value)
            reply = p.error_reply(exc.request_id, exc.code, exc.message, field=exc.field)
            return [Send(route, reply)]
        except Exception as exc:  # a bug in a check costs one reply, not the agent
            log.exception("checking a frame failed")
            text = f"{type(exc).__name__} while checking the message"
            return [Send(route, p.error_reply(None, ErrorCode.INTERNAL, text))]
        kind = type(msg).__name__
        self.metrics.request(kind)
        if not isinstance(msg, p.StatusRequest):
            self._changes += 1  # a status later in this batch must show what this one did
        try:
            if isinstance(msg, p.Gossip) and self.cluster is not None:
                return self.cluster.on_gossip(route, msg, now)
            if isinstance(msg, p.Steal) and self.cluster is not None:
                return self.cluster.on_steal(route, msg, now)
            if isinstance(msg, p.Probe) and self.cluster is not None:
                return self.cluster.on_probe(route, msg, now)
            if isinstance(msg, p.StatusRequest):
                return [Send(route, p.envelope("agent_status", msg.id, **self.status_body(now)))]
            effects = self.core.handle(route, msg, now, sender)
        except Exception as exc:  # a bug must cost one reply, not the agent
            log.exception("handling %s failed", kind)
            text = f"{type(exc).__name__}: {exc}"
            return [Send(route, p.error_reply(msg.id, ErrorCode.INTERNAL, text))]
        for effect in effects:
            if isinstance(effect, Send) and effect.message.get("type") == "error":
                self.metrics.error(effect.message["code"])
        return effects

    def _execute(self, effects: list[Effect]) -> None:
        if any(isinstance(e, Place) for e in effects):
            effects = self._place(effects)
        persisted = [e.task for e in effects if isinstance(e, Persist)]
        try:
            self._save(persisted)  # before any send: "journaled before accepted"
        except JournalError as exc:
            effects = self._unjournaled(effects, persisted, exc)
            persisted = []
        for task in persisted:
            failpoint(f"persisted:{self._journal_point(task)}")
        for task in persisted:
            if task.state.finished:
                wait = task.started_at - task.submitted_at if task.started_at else None
                service = task.finished_at - task.submitted_at if task.finished_at else None
                self.metrics.finished(task.state.value, wait, service)
                if self.cluster is not None:
                    self.cluster.completed(task)  # the policy's reward
        for effect in effects:
            match effect:
                case Send(route=route, message=message, png=png):
                    self._send(route, message, png)
                case StartJob(job=job):
                    self.worker.run_job(job)
                case CancelJob(task=task):
                    self.worker.cancel(task)
                case Forward(task=task) if self.cluster is not None:
                    self._execute(self.cluster.forward(task, time.time()))
                case CancelRemote(task=task) if self.cluster is not None:
                    self.cluster.cancel_remote(task)

    def _place(self, effects: list[Effect]) -> list[Effect]:
        """Answer each ``Place`` (the cluster decides, the core acts on it), in place, before
        the batch is committed: one commit, and still journaled before ``accepted``."""
        out: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Place):
                task, now = effect.task, time.time()
                placement = self.cluster.place(task, now) if self.cluster else Placement()
                if placement is not None:  # None: pod2 probes; the cluster answers later
                    out += self.core.placed(task.id, placement, now)
            else:
                out.append(effect)
        return out

    def _save(self, records: list[TaskRecord]) -> None:
        """Commit ``records`` and any that an earlier failed commit left in memory."""
        if self._unsaved:
            pending = {**self._unsaved, **{t.id: t for t in records}}
            self.journal.save(list(pending.values()))
            self._unsaved.clear()
            if self.core.storage_error is not None:
                log.warning("the journal is writable again: accepting new tasks")
            self.core.storage_error = None
            return
        self.journal.save(records)

    def _unjournaled(
        self, effects: list[Effect], records: list[TaskRecord], exc: JournalError
    ) -> list[Effect]:
        """A commit failed (disk full, I/O error): the agent keeps serving what it can.

        Tasks admitted in this batch were never acknowledged: they are forgotten and their
        submitters told ``storage``. Every other change stays in memory and is committed with
        the next batch that succeeds; until then new submits are refused. Forwards of
        unjournaled tasks wait, so a crash now cannot run a task both here and at a peer.
        """
        if self.core.storage_error is None:
            log.error("cannot write the journal: %s; refusing new tasks until it can", exc)
        self.core.storage_error = str(exc)
        self.metrics.errors.labels(ErrorCode.STORAGE.value).inc()
        new = {
            TaskId(e.message["task"])
            for e in effects
            if isinstance(e, Send) and e.message.get("type") == "accepted"
        }
        new -= {t for t in new if self.journal.get(t) is not None}
        for task_id in new:
            self.core.drop_unjournaled(task_id)
        self._unsaved.update((t.id, t) for t in records if t.id not in new)
        kept: list[Effect] = []
        for effect in effects:
            match effect:
                case Send(route=route, message=message) if message.get("task") in new:
                    if message.get("type") == "accepted":
                        text = f"the agent cannot journal new tasks ({exc}); retry later"
                        reply = p.error_reply(message["id"], ErrorCode.STORAGE, text)
                        kept.append(Send(route, reply))
                case StartJob(job=job) if job.task in new:
                    pass
                case Forward(task=task) if task.id in new or task.id in self._unsaved:
                    pass  # asked again by the forwarding tick once the journal has it
                case Persist():
                    pass
                case _:
                    kept.append(effect)
        return kept

    def _journal_point(self, task: TaskRecord) -> str:
        """The name of the journal transition ``task`` just made (see ``failpoints.POINTS``)."""
        if task.state is TaskState.RUNNING and task.cancel_requested:
            return "cancelling"
        if task.id in self.core.held:
            return "held"
        return task.state.value

    def _send(self, route: Route, message: dict[str, Any], png: bytes | None) -> None:
        frames = [*route, p.encode(message)]
        if png is not None:
            frames.append(png)
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK, copy=png is None or len(png) < 65536)
        except zmq.Again:
            log.debug("dropped a %s reply: the peer's queue is full", message.get("type"))
        except zmq.ZMQError as exc:  # e.g. the peer vanished; it will ask again
            log.debug("could not send %s: %s", message.get("type"), exc)

    def _probe_storage(self) -> None:
        """After a failed commit: commit what waits in memory, or see that a commit works."""
        try:
            if self._unsaved:
                self._save([])
            elif self.journal.writable():
                log.warning("the journal is writable again: accepting new tasks")
                self.core.storage_error = None
        except JournalError as exc:
            log.debug("the journal is still not writable: %s", exc)

    def _apply_retention(self, now: float) -> None:
        gone = self.store.apply_retention(RetentionLimits.from_config(self.config), now)
        self.core.forget(gone)

    # --- status --------------------------------------------------------------------

    def telemetry_dict(self) -> dict[str, Any]:
        snapshot = self.telemetry.latest  # converted once per sample, not once per request
        if self._telemetry_cache[0] is not snapshot:
            self._telemetry_cache = (snapshot, snapshot.as_dict())
        return self._telemetry_cache[1]

    def status_body(self, now: float) -> dict[str, Any]:
        """The status body, rebuilt only when something changed or it is ``STATUS_MAX_AGE_S``
        old: a client polling ``status`` in a tight loop costs a reply, not a body each."""
        cached, sample = self._status_cache, self.telemetry.latest
        if (
            cached is not None
            and cached.changes == self._changes
            and cached.sample is sample
            and 0 <= now - cached.at < STATUS_MAX_AGE_S
        ):
            return cached.body
        body = status_body(self, now)
        self._status_cache = _StatusCache(self._changes, sample, now, body)
        return body

    # --- shutdown ------------------------------------------------------------------

    def _drain(self) -> None:
        """Stop taking tasks, let the current step end (checkpoint), keep answering meanwhile."""
        log.info("stopping: no new tasks; waiting for the current step")
        self.notifier.stopping()
        self.core.accepting = False
        self._changes += 1
        self.worker.stop()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.wake, zmq.POLLIN)
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while time.monotonic() < deadline:
            self._turn(poller, 20)
            if self.worker.join(0) and self.worker.events.empty():
                break
            if self.backend is None and self.core.running is None:
                break  # still loading the model: nothing to checkpoint
        self._execute(self._worker_events(time.time()))
        if self.core.running is not None:
            log.warning(
                "task %s did not reach a step boundary; it reruns at next start", self.core.running
            )

    def close(self) -> None:
        self.telemetry.stop()
        self.metrics.close()
        if self.cluster is not None:
            self.cluster.close()
        self.router.close()
        if self.authenticator is not None:
            self.authenticator.stop()  # its ZAP socket would block context.term()
        self.wake.close(0)
        worker_done = self.worker.join(0.5)
        if worker_done:
            self.context.term()  # would block on the worker's socket otherwise
            if self.backend is not None:
                self.backend.close()
        self.journal.close()
        for target in (self.state_dir / "agent.endpoint",):
            target.unlink(missing_ok=True)
        self.state_lock.release()  # last: the directory is ours until here
