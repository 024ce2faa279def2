"""Device telemetry: pynvml on NVIDIA machines, psutil (CPU and RAM) everywhere else.

A background thread samples every ``interval_s`` and publishes an immutable snapshot, so
``status`` requests read a cached value and never wait on NVML.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import psutil

log = logging.getLogger("dedgeai.agent.node.telemetry")


@dataclass(frozen=True)
class DeviceSample:
    """One device at one instant; None where the driver does not report a value."""

    index: int
    name: str
    kind: str  # "gpu" or "cpu"
    utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None


@dataclass(frozen=True)
class TelemetrySnapshot:
    source: str  # "nvml" or "psutil"
    sampled_at: float
    devices: tuple[DeviceSample, ...]
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sampled_at": self.sampled_at,
            "note": self.note,
            "devices": [asdict(d) for d in self.devices],
        }


class Reader(Protocol):
    source: str

    def read(self) -> tuple[DeviceSample, ...]: ...

    def close(self) -> None: ...


class NvmlReader:
    """Every NVIDIA GPU through NVML; values a GPU does not support read as None."""

    source = "nvml"

    def __init__(self) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()  # raises pynvml.NVMLError without a driver
        self._handles = [
            pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
        ]

    def _try(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nvml.NVMLError:
            return None

    def read(self) -> tuple[DeviceSample, ...]:
        nv = self._nvml
        samples = []
        for index, handle in enumerate(self._handles):
            util = self._try(nv.nvmlDeviceGetUtilizationRates, handle)
            mem = self._try(nv.nvmlDeviceGetMemoryInfo, handle)
            power_mw = self._try(nv.nvmlDeviceGetPowerUsage, handle)
            name = self._try(nv.nvmlDeviceGetName, handle) or f"GPU {index}"
            samples.append(
                DeviceSample(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    kind="gpu",
                    utilization_percent=None if util is None else float(util.gpu),
                    memory_used_bytes=None if mem is None else int(mem.used),
                    memory_total_bytes=None if mem is None else int(mem.total),
                    temperature_c=self._try(
                        nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU
                    ),
                    power_w=None if power_mw is None else power_mw / 1000.0,
                    sm_clock_mhz=self._try(nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM),
                    memory_clock_mhz=self._try(
                        nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_MEM
                    ),
                )
            )
        return tuple(samples)

    def close(self) -> None:
        self._try(self._nvml.nvmlShutdown)


class PsutilReader:
    """The CPU and system memory, when no NVIDIA driver is present."""

    source = "psutil"

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)  # the first call only primes the counter

    def read(self) -> tuple[DeviceSample, ...]:
        mem = psutil.virtual_memory()
        freq = psutil.cpu_freq() if hasattr(psutil, "cpu_freq") else None
        temperature = None
        try:
            sensors = psutil.sensors_temperatures()
            readings = [t.current for entries in sensors.values() for t in entries]
            temperature = max(readings) if readings else None
        except (AttributeError, OSError):
            pass  # not available on this platform or container
        return (
            DeviceSample(
                index=0,
                name=f"CPU ({psutil.cpu_count()} threads)",
                kind="cpu",
                utilization_percent=psutil.cpu_percent(interval=None),
                memory_used_bytes=int(mem.total - mem.available),
                memory_total_bytes=int(mem.total),
                temperature_c=temperature,
                sm_clock_mhz=int(freq.current) if freq else None,
            ),
        )

    def close(self) -> None:
        return None


def open_reader() -> tuple[Reader, str]:
    """NVML when a driver answers, else psutil; the note says why psutil was chosen."""
    try:
        import pynvml

        try:
            reader = NvmlReader()
            if reader._handles:
                return reader, ""
            reader.close()
            note = "NVML reports no GPU"
        except pynvml.NVMLError as exc:
            note = f"no NVIDIA driver ({exc})"
    except ImportError:
        note = "nvidia-ml-py is not installed"
    return PsutilReader(), note


class TelemetrySampler:
    """Samples in a daemon thread; ``latest`` is always a complete snapshot."""

    def __init__(self, interval_s: float, reader: Reader | None = None, note: str = "") -> None:
        if reader is None:
            reader, note = open_reader()
        self._reader = reader
        self._note = note
        self.interval_s = interval_s
        self.latest = self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def _sample(self) -> TelemetrySnapshot:
        try:
            devices = self._reader.read()
        except Exception as exc:  # a flaky driver must not kill telemetry
            log.warning("telemetry read failed: %s", exc)
            devices = ()
        return TelemetrySnapshot(self._reader.source, time.time(), devices, self._note)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.latest = self._sample()

    def start(self) -> TelemetrySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._reader.close()
