"""What the machine offers: compute device, unified memory, free memory, peak-memory readings."""

from __future__ import annotations

import logging

import psutil
import torch

from dedgeai.models.placement import Target

logger = logging.getLogger(__name__)

# Kept free for the CUDA context growth, other processes and fragmentation of the allocator.
BUDGET_MARGIN_BYTES = 768 * 2**20
BUDGET_MARGIN_FRACTION = 0.05


def resolve_device(requested: str | None) -> torch.device:
    """``None`` -> cuda when available, else cpu. An unavailable cuda request is a ValueError."""
    if requested is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {requested!r} asked for, but this machine has no usable CUDA device"
            )
        if device.index is None:
            device = torch.device("cuda:0")
    elif device.type != "cpu":
        raise ValueError(f"device {requested!r} is not supported; use cuda, cuda:N or cpu")
    return device


def is_unified_memory(device: torch.device) -> bool:
    """True when host and device share one memory (Jetson, or computing on the CPU)."""
    if device.type == "cpu":
        return True
    return bool(getattr(torch.cuda.get_device_properties(device), "is_integrated", False))


def target_for(device: torch.device, reload_from_files: bool) -> Target:
    unified = is_unified_memory(device)
    return Target(
        device=str(device), unified_memory=unified, reload_from_files=unified and reload_from_files
    )


def free_memory_bytes(device: torch.device) -> int:
    """Free memory the plan may use on ``device`` before the margin is taken off."""
    if is_unified_memory(device):
        return int(psutil.virtual_memory().available)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML missing or unsupported: ask the CUDA runtime instead
        logger.debug("pynvml unavailable (%s); using torch.cuda.mem_get_info", exc)
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)


def default_budget_bytes(device: torch.device) -> int:
    """Free memory minus a margin (the larger of a fixed amount and a fraction)."""
    free = free_memory_bytes(device)
    return max(0, free - max(BUDGET_MARGIN_BYTES, int(free * BUDGET_MARGIN_FRACTION)))


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def read_peak(device: torch.device) -> int | None:
    """Peak bytes allocated on a CUDA device since :func:`reset_peak`; ``None`` on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
