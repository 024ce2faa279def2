"""Prometheus metrics of one agent, on an optional HTTP port (prometheus-client).

Counters move as events happen; gauges are refreshed from the agent's status snapshot
each time the loop publishes one. A private registry keeps tests and several agents in
one process from colliding.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

NAMESPACE = "dedgeai"
_DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, ns = self.registry, NAMESPACE
        self.requests = Counter(
            "requests", "Client messages by type", ["type"], namespace=ns, registry=r
        )
        self.errors = Counter("errors", "error replies by code", ["code"], namespace=ns, registry=r)
        self.tasks_finished = Counter(
            "tasks_finished",
            "Tasks that ended, by final state",
            ["state"],
            namespace=ns,
            registry=r,
        )
        self.queue_wait = Histogram(
            "task_queue_wait_seconds",
            "Submit to start",
            namespace=ns,
            registry=r,
            buckets=_DURATION_BUCKETS_S,
        )
        self.service = Histogram(
            "task_service_seconds",
            "Submit to done",
            namespace=ns,
            registry=r,
            buckets=_DURATION_BUCKETS_S,
        )
        self.queue_length = Gauge("queue_length", "Queued tasks", namespace=ns, registry=r)
        self.running = Gauge("running_tasks", "Tasks on the GPU (0 or 1)", namespace=ns, registry=r)
        self.backlog_steps = Gauge(
            "backlog_steps", "Unfinished denoising steps", namespace=ns, registry=r
        )
        self.backlog_seconds = Gauge(
            "backlog_seconds", "Estimated seconds to clear the backlog", namespace=ns, registry=r
        )
        self.capacity = Gauge(
            "capacity_steps_per_second",
            "Measured speed by image size",
            ["size"],
            namespace=ns,
            registry=r,
        )
        labels = ["device", "name"]
        self.utilization = Gauge(
            "device_utilization_percent", "Device utilisation", labels, namespace=ns, registry=r
        )
        self.memory_used = Gauge(
            "device_memory_used_bytes", "Device memory in use", labels, namespace=ns, registry=r
        )
        self.memory_total = Gauge(
            "device_memory_total_bytes", "Device memory size", labels, namespace=ns, registry=r
        )
        self.temperature = Gauge(
            "device_temperature_celsius", "Device temperature", labels, namespace=ns, registry=r
        )
        self.power = Gauge("device_power_watts", "Device power", labels, namespace=ns, registry=r)
        self._server: Any = None
        # ``labels()`` takes a lock and builds a key each call (~10 us): the loop counts
        # every request, so each label's child is looked up once and kept.
        self._children: dict[tuple[str, str], Any] = {}

    def serve(self, port: int, address: str) -> None:
        self._server, _thread = start_http_server(port, addr=address, registry=self.registry)

    def request(self, kind: str) -> None:
        """Count one client message of type ``kind``."""
        self._child("requests", self.requests, kind).inc()

    def error(self, code: str) -> None:
        """Count one ``error`` reply with ``code``."""
        self._child("errors", self.errors, code).inc()

    def _child(self, family: str, metric: Any, label: str) -> Any:
        child = self._children.get((family, label))
        if child is None:
            child = self._children[family, label] = metric.labels(label)
        return child

    def finished(self, state: str, queue_wait_s: float | None, service_s: float | None) -> None:
        self.tasks_finished.labels(state).inc()
        if queue_wait_s is not None:
            self.queue_wait.observe(queue_wait_s)
        if service_s is not None and state == "done":
            self.service.observe(service_s)

    def update(self, status: dict[str, Any]) -> None:
        """Refresh gauges from an ``agent_status`` body."""
        queue = status["queue"]
        self.queue_length.set(queue["queued"])
        self.running.set(1 if queue["running"] else 0)
        self.backlog_steps.set(queue["backlog_steps"])
        if queue["backlog_s"] is not None:
            self.backlog_seconds.set(queue["backlog_s"])
        for size, rate in (status["capacity"]["steps_per_second"] or {}).items():
            self.capacity.labels(size).set(rate)
        for device in status["telemetry"]["devices"]:
            key = (f"{device['kind']}{device['index']}", device["name"])
            for gauge, field in (
                (self.utilization, "utilization_percent"),
                (self.memory_used, "memory_used_bytes"),
                (self.memory_total, "memory_total_bytes"),
                (self.temperature, "temperature_c"),
                (self.power, "power_w"),
            ):
                if device.get(field) is not None:
                    gauge.labels(*key).set(device[field])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
