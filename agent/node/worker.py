"""The GPU worker: one thread that loads the backend, then owns it and runs one job at a time.

The model is loaded here, off the loop, so the agent binds and answers ``status`` at once;
the worker posts ``BackendReady`` (or ``BackendFailed``) when the load ends. The daemon's loop
hands it jobs; it reports back through ``events`` (a thread-safe queue)
and wakes the loop with one byte on an inproc PUSH socket that only this thread uses.
Results are written to the store here, off the loop, before ``JobFinished`` is posted.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from dedgeai.agent.node.failpoints import failpoint
from dedgeai.agent.node.protocol import TaskId
from dedgeai.agent.node.results import ResultStore
from dedgeai.models.backend import Backend, GenerationRequest, SpeedProfile
from dedgeai.models.errors import GenerationCancelled

log = logging.getLogger("dedgeai.agent.node.worker")
LOOP_STALE_S = 0.5  # the loop turns every 0.1 s: staler than this, the process was frozen
LOOP_WAIT_S = 0.01


@dataclass(frozen=True)
class Job:
    task: TaskId
    origin: str
    request: GenerationRequest
    submitted_at: float
    started_at: float
    attempts: int


@dataclass(frozen=True)
class BackendReady:
    """The model is loaded: the worker runs jobs from now on."""

    backend: Backend
    plan: dict[str, Any]
    load_s: float


@dataclass(frozen=True)
class BackendFailed:
    """The model could not be loaded: the agent cannot run tasks (``error`` says why)."""

    error: str
    exception: BaseException


@dataclass(frozen=True)
class ProfileReady:
    profile: SpeedProfile | None
    error: str | None = None
    cached: bool = False


@dataclass(frozen=True)
class StepDone:
    task: TaskId
    step: int
    steps: int


@dataclass(frozen=True)
class JobFinished:
    task: TaskId
    at: float
    meta: dict[str, Any]
    png: bytes


@dataclass(frozen=True)
class JobFailed:
    task: TaskId
    at: float
    error: str


@dataclass(frozen=True)
class JobStopped:
    """The backend stopped between steps (cancel, or shutdown checkpoint)."""

    task: TaskId
    at: float
    step: int


WorkerEvent = (
    BackendReady | BackendFailed | ProfileReady | StepDone | JobFinished | JobFailed | JobStopped
)


def load_or_measure_profile(
    backend: Backend, cache: Path, sizes: list[tuple[int, int]], steps: int
) -> tuple[SpeedProfile, bool]:
    """The capacity profile from the cache file when it matches, else measured and cached."""
    key = json.dumps([backend.name, bool(backend.emulated), sizes, steps])
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return SpeedProfile(
                cached["steps_per_second"], cached["backend"], cached["emulated"]
            ), True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no cache or an unreadable one: measure again
    profile = backend.profile(sizes, steps)
    record = {
        "key": key,
        "steps_per_second": profile.steps_per_second,
        "backend": profile.backend,
        "emulated": profile.emulated,
        "measured_at": time.time(),
    }
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(cache)
    return profile, False


class Worker:
    """Loads the backend, then runs jobs on it in a daemon thread (a hung step or load
    cannot block exit). Jobs handed over before the load ends wait in its queue."""

    def __init__(
        self,
        load: Callable[[], Backend],
        results: ResultStore,
        context: zmq.Context,
        wake_endpoint: str,
        profile_cache: Path,
        profile_sizes: list[tuple[int, int]],
        profile_steps: int,
    ) -> None:
        self._load = load
        self.backend: Backend | None = None  # set by this thread once loaded
        self.events: queue.SimpleQueue[WorkerEvent] = queue.SimpleQueue()
        self._results = results
        self._context = context
        self._wake_endpoint = wake_endpoint
        self._profile = (profile_cache, profile_sizes, profile_steps)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._cancel: TaskId | None = None  # read between steps; a str swap is atomic
        self.loop_alive_at = time.monotonic()  # the daemon's loop sets it every turn
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gpu-worker", daemon=True)
        self._wake: zmq.Socket | None = None

    def start(self) -> Worker:
        self._thread.start()
        return self

    def run_job(self, job: Job) -> None:
        self._jobs.put(job)

    def cancel(self, task: TaskId) -> None:
        self._cancel = task

    def stop(self) -> None:
        """Stop at the next step boundary; the current job reports JobStopped."""
        self._stopping = True
        self._jobs.put(None)

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _post(self, event: WorkerEvent) -> None:
        self.events.put(event)
        if self._wake is not None:
            self._wake.send(b"", zmq.NOBLOCK)

    def _run(self) -> None:
        self._wake = self._context.socket(zmq.PUSH)
        self._wake.setsockopt(zmq.LINGER, 0)
        self._wake.connect(self._wake_endpoint)
        try:
            if not self._load_backend():
                return
            self._measure()
            while not self._stopping:
                job = self._jobs.get()
                if job is None:
                    break
                self._execute(job)
        finally:
            self._wake.close()
            self._wake = None

    def _load_backend(self) -> bool:
        started = time.monotonic()
        try:
            backend = self._load()
            plan = backend.memory_plan()
            described = {"text": str(plan), **(plan.as_dict() if hasattr(plan, "as_dict") else {})}
        except Exception as exc:  # the daemon says why and exits (a bad model is bad input)
            self._post(BackendFailed(f"{type(exc).__name__}: {exc}", exc))
            return False
        self.backend = backend
        self._post(BackendReady(backend, described, time.monotonic() - started))
        return True

    def _measure(self) -> None:
        cache, sizes, steps = self._profile
        assert self.backend is not None
        try:
            profile, cached = load_or_measure_profile(self.backend, cache, sizes, steps)
            self._post(ProfileReady(profile, cached=cached))
        except Exception as exc:  # capacity is advisory: the agent still serves tasks
            log.exception("measuring the backend's speed failed")
            self._post(ProfileReady(None, f"{type(exc).__name__}: {exc}"))

    def _wait_for_loop(self) -> None:
        """After a freeze (SIGSTOP, a suspended VM) both threads wake at once: let the loop
        turn first, since it may take this job back (its origin may have run it elsewhere)
        before the worker finishes it. A live loop turns every poll interval."""
        while not self._stopping and time.monotonic() - self.loop_alive_at > LOOP_STALE_S:
            time.sleep(LOOP_WAIT_S)

    def _execute(self, job: Job) -> None:
        task, steps = job.task, job.request.steps

        def on_step(step: int, total: int) -> bool:
            self._post(StepDone(task, step, total))
            self._wait_for_loop()
            return not (self._stopping or self._cancel == task)

        assert self.backend is not None  # jobs are taken only after the load
        try:
            if self._stopping or self._cancel == task:
                raise GenerationCancelled(0, steps)
            result = self.backend.generate(job.request, on_step)
        except GenerationCancelled as exc:
            self._post(JobStopped(task, time.time(), exc.step))
            return
        except Exception as exc:  # any backend failure fails this task, not the agent
            log.exception("task %s failed", task)
            self._post(JobFailed(task, time.time(), f"{type(exc).__name__}: {exc}"))
            return
        finished = time.time()
        t = result.timings
        meta = {
            "task": task,
            "origin": job.origin,
            "prompt": job.request.prompt,
            "negative_prompt": job.request.negative_prompt,
            "guidance": job.request.guidance,
            "width": result.width,
            "height": result.height,
            "steps": result.steps,
            "seed": result.seed,
            "backend": result.backend,
            "emulated": result.emulated,
            "peak_memory_bytes": result.peak_memory_bytes,
            "png_bytes": len(result.png),
            "attempts": job.attempts,
            "submitted_at": job.submitted_at,
            "started_at": job.started_at,
            "finished_at": finished,
            "timings": {
                "queue_wait_s": max(0.0, job.started_at - job.submitted_at),
                "encode_s": t.encode_s,
                "denoise_s": t.denoise_s,
                "decode_s": t.decode_s,
                "backend_s": t.total_s,
            },
        }
        try:
            self._results.write(task, result.png, meta)
        except OSError as exc:
            self._post(JobFailed(task, finished, f"cannot store the result: {exc}"))
            return
        failpoint("result:written")
        self._post(JobFinished(task, finished, meta, result.png))
