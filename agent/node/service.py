"""Running the agent as a service: logging, systemd notifications, signals, exit status.

Under systemd (``Type=notify``) the agent binds and answers ``status`` at once (state
``loading``) and reports READY=1 once the model is loaded and it can run tasks. It pings the
watchdog from its loop (so a stalled loop gets restarted) and reports STOPPING=1 on SIGTERM.
The model loads in the main thread while the loop runs in its own (see ``Handoff``). Logs go
to stderr; under journald each line carries a ``<N>`` syslog priority prefix instead of a
timestamp, which journald adds itself.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from dedgeai.agent.errors import ConfigError, DedgeaiError, JournalError
from dedgeai.agent.exit_codes import ExitCode
from dedgeai.agent.node.config import AgentConfig
from dedgeai.agent.node.journal import StorageError
from dedgeai.agent.node.lifecycle import Handoff, Notifier, StopFlag
from dedgeai.models.backend import Backend
from dedgeai.models.errors import ModelError

__all__ = ["Notifier", "StopFlag", "run_agent", "setup_logging"]  # the first two: lifecycle

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


def run_agent(config: AgentConfig, stop: StopFlag | None = None) -> int:
    """Start the daemon, serve until SIGTERM, return the process exit code."""
    setup_logging(config.log_level)
    log = logging.getLogger("dedgeai.agent")
    log.info("starting: config from %s; endpoint %s", config.source, config.endpoint)
    from dedgeai.agent.node.daemon import AgentDaemon  # imports zmq, the backend factory

    # The loop thread decides where tasks run; a background thread (training, telemetry,
    # the worker's Python) otherwise keeps the GIL up to 5 ms before handing it over.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    stop = stop or StopFlag().install()
    notifier = Notifier()
    started = time.monotonic()
    backend: Handoff[Backend] = Handoff()
    outcome: dict[str, Any] = {}
    bound = threading.Event()

    def loop() -> None:  # binds, answers and schedules while this thread loads the model
        try:
            daemon = AgentDaemon(config, stop, notifier, load=backend.get)
        except Exception as exc:
            outcome["code"] = _start_failure(exc, log)
            bound.set()
            return
        outcome["daemon"] = daemon
        bound.set()
        try:
            daemon.serve()
        except Exception:
            log.exception("the agent failed")
            outcome["code"] = ExitCode.INTERNAL
        finally:
            daemon.close()

    thread = threading.Thread(target=loop, name="agent-loop", daemon=True)
    thread.start()
    bound.wait()
    daemon = outcome.get("daemon")
    if daemon is not None:
        backend.make(daemon.build_backend)  # in the main thread: see Handoff
    while thread.is_alive():
        thread.join(0.5)  # wakes for SIGTERM's handler
    if "code" in outcome:
        return int(outcome["code"])
    if daemon is not None and daemon.exit_code:  # the model could not be loaded (logged)
        return int(daemon.exit_code)
    log.info("stopped (%s) after %.1f s", stop.signal_name or "request", time.monotonic() - started)
    return ExitCode.OK


def _start_failure(exc: Exception, log: logging.Logger) -> int:
    """Log why the daemon could not start; the exit code that says whether to retry."""
    log.error("cannot start: %s", exc)
    if isinstance(exc, StorageError):  # a full disk may pass: systemd restarts it
        return ExitCode.INTERNAL
    if isinstance(exc, ConfigError | ModelError | JournalError):  # say what to fix
        return ExitCode.BAD_INPUT
    if isinstance(exc, DedgeaiError | OSError):
        return ExitCode.INTERNAL
    log.exception("unexpected error while starting")
    return ExitCode.INTERNAL
