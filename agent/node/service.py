"""Running the agent as a service: logging, systemd notifications, signals, exit status.

Under systemd (``Type=notify``) the agent reports READY=1 once it answers, pings the
watchdog from its loop (so a stalled loop gets restarted), and reports STOPPING=1 on
SIGTERM. Logs go to stderr; under journald each line carries a ``<N>`` syslog priority
prefix instead of a timestamp, which journald adds itself.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType

import sdnotify

from dedgeai.agent.errors import ConfigError, DedgeaiError, JournalError
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.node.config import AgentConfig
from dedgeai.agent.node.journal import StorageError
from dedgeai.models.errors import ModelError

GIL_SWITCH_INTERVAL_S = 0.0005  # Python's default is 0.005

_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournaldFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # journald treats each line as a record: keep tracebacks in one prefixed line each.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if "JOURNAL_STREAM" in os.environ:
        handler.setFormatter(_JournaldFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dedgeai")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


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


def run_agent(config: AgentConfig, stop: StopFlag | None = None) -> int:
    """Start the daemon, serve until SIGTERM, return the process exit code."""
    from dedgeai.agent.node.daemon import AgentDaemon  # imports zmq, the backend factory

    setup_logging(config.log_level)
    log = logging.getLogger("dedgeai.agent")
    # The loop thread decides where tasks run; a background thread (training, telemetry,
    # the worker's Python) otherwise keeps the GIL up to 5 ms before handing it over.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    stop = stop or StopFlag().install()
    notifier = Notifier()
    started = time.monotonic()
    try:
        daemon = AgentDaemon(config, stop, notifier)
    except StorageError as exc:  # a full disk may pass: systemd restarts it
        log.error("cannot start: %s", exc)
        return ExitCode.INTERNAL
    except (ConfigError, ModelError, JournalError) as exc:  # say what to fix; not retried
        log.error("cannot start: %s", exc)
        return ExitCode.BAD_INPUT
    except (DedgeaiError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return ExitCode.INTERNAL
    try:
        daemon.serve()
    except Exception:
        log.exception("the agent failed")
        return ExitCode.INTERNAL
    finally:
        daemon.close()
    log.info("stopped (%s) after %.1f s", stop.signal_name or "request", time.monotonic() - started)
    return ExitCode.OK
