"""The process's life signals: systemd notifications (READY, STATUS, WATCHDOG, STOPPING)
and the stop flag that SIGTERM/SIGINT set. No sockets of the agent, no daemon import."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Generic, TypeVar

import sdnotify

T = TypeVar("T")


class Notifier:
    """sd_notify when NOTIFY_SOCKET is set, nothing otherwise."""

    def __init__(self) -> None:
        self._sd = sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", str(os.getpid()))
        enabled = self._sd is not None and usec.isdigit() and pid == str(os.getpid())
        # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval_s = int(usec) / 2e6 if enabled else None
        self._last_ping = 0.0

    def send(self, state: str) -> None:
        if self._sd is not None:
            self._sd.notify(state)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def tick(self, now: float) -> None:
        """Ping the watchdog when due; called from the daemon's loop on every turn."""
        if (
            self.watchdog_interval_s is not None
            and now - self._last_ping >= self.watchdog_interval_s
        ):
            self._last_ping = now
            self.send("WATCHDOG=1")


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it on every turn of its poll."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class Handoff(Generic[T]):
    """A value made by one thread (the main one loads the model) and awaited by another.

    Torch models built off the main thread run several times slower on CPU here (measured:
    the tiny model at 1-2 steps/s instead of 20-40), so the main thread builds the backend
    while the loop, in its own thread, already answers; the worker waits on ``get``.
    """

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def make(self, build: Callable[[], T]) -> None:
        """Run ``build`` here; its value or its exception goes to the waiting thread."""
        try:
            self._value = build()
        except BaseException as exc:  # handed over: the worker reports it as BackendFailed
            self._error = exc
        finally:
            self._done.set()

    def get(self) -> T:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
