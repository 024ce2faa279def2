"""Device presets for `dedgeai model plan --device NAME`: memory, memory system, compute dtype.

The figures are the boards' data-sheet memory, less what the system keeps for itself: on a
unified-memory Jetson the OS and its services (an estimate, ``UNIFIED_OS_RESERVE_BYTES``), on a
discrete GPU the display and driver (``DISCRETE_RESERVE_BYTES``). The slow-downs of each plan
kind against everything resident are the ratios measured on the H200 anchor run at 1024x1024,
28 steps (``sd3_memory_modes_h200.json``); they are estimates for any other board.
"""

from __future__ import annotations

from dataclasses import dataclass

from dedgeai.models.placement import GIB, PlacementKind, Target

UNIFIED_OS_RESERVE_BYTES = int(1.5 * GIB)  # estimate: L4T with no desktop, plus the agent
DISCRETE_RESERVE_BYTES = int(0.5 * GIB)  # estimate: driver, display, other processes


@dataclass(frozen=True)
class DevicePreset:
    """One board a plan can be made for without having it."""

    name: str
    description: str
    memory_bytes: int  # data-sheet memory (GPU memory, or the board's shared LPDDR)
    unified_memory: bool
    dtype: str = "float16"

    @property
    def budget_bytes(self) -> int:
        """What a plan may use: the memory less the system's own share (an estimate)."""
        reserve = UNIFIED_OS_RESERVE_BYTES if self.unified_memory else DISCRETE_RESERVE_BYTES
        return self.memory_bytes - reserve

    def target(self) -> Target:
        # A deployed agent has the weight files, so staged modules are re-read from them.
        return Target("cuda", unified_memory=self.unified_memory, reload_from_files=True)

    def summary(self) -> str:
        memory = "unified memory" if self.unified_memory else "GPU memory"
        return (
            f"{self.name}: {self.description}, {self.memory_bytes / GIB:.0f} GiB {memory}, "
            f"{self.dtype}; plan budget {self.budget_bytes / GIB:.2f} GiB (estimate)"
        )


PRESETS: dict[str, DevicePreset] = {
    p.name: p
    for p in (
        DevicePreset("jetson-orin-nano-8gb", "Jetson Orin Nano 8GB", 8 * GIB, True),
        DevicePreset("jetson-orin-8gb", "Jetson Orin NX 8GB", 8 * GIB, True),
        DevicePreset("jetson-orin-16gb", "Jetson Orin NX 16GB", 16 * GIB, True),
        DevicePreset("jetson-agx-orin-32gb", "Jetson AGX Orin 32GB", 32 * GIB, True),
        DevicePreset("jetson-agx-orin-64gb", "Jetson AGX Orin 64GB", 64 * GIB, True),
        DevicePreset("rtx-3060-12gb", "GeForce RTX 3060 12GB", 12 * GIB, False),
        DevicePreset("rtx-4060-8gb", "GeForce RTX 4060 8GB", 8 * GIB, False),
        DevicePreset("rtx-4070-12gb", "GeForce RTX 4070 12GB", 12 * GIB, False),
        DevicePreset("rtx-4090-24gb", "GeForce RTX 4090 24GB", 24 * GIB, False),
        DevicePreset("a100-40gb", "A100 40GB", 40 * GIB, False),
        DevicePreset("h200-141gb", "H200 141GB", 141 * GIB, False),
    )
}

# Latency of each kind over `resident`, H200, 1024x1024, 28 steps, new prompt each request
# (sd3_memory_modes_h200.json: no_t5_resident 1.537 s, staged_encoders 2.016 s,
# paper_reSD3m 2.929 s). cpu-encoders was not measured: None.
MEASURED_SLOWDOWN: dict[PlacementKind, float | None] = {
    PlacementKind.RESIDENT: 1.0,
    PlacementKind.STAGED_ENCODERS: round(2.016 / 1.537, 2),
    PlacementKind.CPU_ENCODERS: None,
    PlacementKind.SEQUENTIAL: round(2.929 / 1.537, 2),
}


def preset(name: str) -> DevicePreset:
    """The preset called ``name``; ValueError listing the known ones otherwise."""
    try:
        return PRESETS[name.strip().lower()]
    except KeyError:
        known = ", ".join(PRESETS)
        raise ValueError(f"unknown device preset {name!r}; known: {known}") from None


def slowdown_text(kind: PlacementKind, vae_tiling: bool) -> str:
    """Expected slow-down against everything resident, labelled as the estimate it is."""
    ratio = MEASURED_SLOWDOWN[kind]
    if ratio is None:
        text = "not measured (CLIP encoders run in fp32 on the CPU for each new prompt)"
    elif ratio == 1.0:
        text = "none: everything stays on the GPU"
    else:
        text = f"~{ratio:.2f}x the all-on-GPU latency (estimate: H200 ratio, 1024x1024)"
    if vae_tiling:
        text += "; VAE tiling adds decode time (not measured)"
    return text
