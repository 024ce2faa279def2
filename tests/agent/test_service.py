"""Service behaviour of a real agent: sd_notify, watchdog, journald logs, metrics."""

from __future__ import annotations

import signal
import socket
import urllib.request

from dedgeai.agent.lab.harness import free_ports


def test_notify_watchdog_journald_and_metrics(agent_factory, tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10.0)
    (port,) = free_ports(1)
    agent = agent_factory(metrics_port=port, log_level="info")
    agent.env = {
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "200000",  # ping expected every 0.1 s
        "JOURNAL_STREAM": "8:12345",
    }
    agent.start()
    try:
        messages = [notify.recv(4096).decode() for _ in range(3)]
        assert messages[0].startswith("READY=1") and "WATCHDOG=1" in messages[1:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
        assert "dedgeai_queue_length" in text and "dedgeai_requests_total" in text
        code, _took = agent.stop(signal.SIGTERM, timeout_s=60.0)  # a hang: TimeoutExpired
        assert code == 0
        rest = []
        notify.settimeout(0.5)
        try:
            while True:
                rest.append(notify.recv(4096).decode())
        except TimeoutError:
            pass
        assert any(m.startswith("STOPPING=1") for m in rest)
    finally:
        notify.close()
    lines = [line for line in agent.log().splitlines() if line.strip()]
    assert lines and all(line.startswith("<") for line in lines), lines[:3]  # syslog priority
    assert any(line.startswith("<6>dedgeai.agent: stopped (SIGTERM)") for line in lines)
