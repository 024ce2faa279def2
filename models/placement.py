"""Placement plans: where each reSD3-m module lives, chosen from a memory budget. Pure, no torch work.

A plan is one :class:`PlacementKind` (fastest first) plus VAE tiling when the budget needs it.
Its predicted peak is the real parameter bytes (modules built on ``meta``) plus an activation
estimate per stage, calibrated on the H200 anchor run (``sd3_memory_modes_h200.json``):

  peak(stage) = resident bytes + bytes staged in for the stage + activations(stage) + runtime
  peak        = max over the stages encode, denoise, decode

On unified memory (Jetson, or the CPU itself) host memory is device memory, so modules kept
on the host count too, and staging frees something only when weights are re-read from files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dedgeai.models.components import MODULE_LABELS, MODULE_NAMES, ModuleSize, SD3Configs
from dedgeai.models.errors import PlacementError

GIB = 2**30
CLIP_TOKENS = 77
# Activation estimates, in "tensors of the stage's natural size" (anchor fit, fp16, H200):
# denoise: batch x (image + context tokens) x hidden; decode: height x width x first VAE width.
DENOISE_ACTIVATION_TENSORS = 11.8
DECODE_ACTIVATION_TENSORS = 9.6
# Encode keeps every hidden state (output_hidden_states) plus a few working tensors per layer.
ENCODE_EXTRA_TENSORS = 8
# CUDA context-side allocations seen with the MMDiT resident (cuBLAS workspaces and the like).
CUDA_RUNTIME_BYTES = int(0.2 * GIB)
# Tiled VAE decode works on tiles of this many pixels a side (diffusers' own default for the
# SD3 VAE is 1024, which would not tile a 1024x1024 image at all).
VAE_TILE_PX = 512
STAGES: tuple[str, ...] = ("encode", "denoise", "decode")
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "encode": ("text_encoder", "text_encoder_2"),
    "denoise": ("transformer",),
    "decode": ("vae",),
}


class PlacementKind(str, Enum):
    """Where the modules live between requests, fastest first."""

    RESIDENT = "resident"  # everything on the device
    STAGED_ENCODERS = "staged-encoders"  # CLIPs brought in to encode, released after
    CPU_ENCODERS = "cpu-encoders"  # CLIPs in fp32 on the CPU (the authors' choice)
    SEQUENTIAL = "sequential"  # the authors' layout: MMDiT and VAE moved in and out per request


class Residency(str, Enum):
    RESIDENT = "resident"  # on the compute device for the backend's life
    STAGED = "staged"  # on the device only during its stage
    HOST = "host"  # on the CPU in fp32, runs there


KIND_RESIDENCY: dict[PlacementKind, dict[str, Residency]] = {
    PlacementKind.RESIDENT: dict.fromkeys(MODULE_NAMES, Residency.RESIDENT),
    PlacementKind.STAGED_ENCODERS: {
        "text_encoder": Residency.STAGED,
        "text_encoder_2": Residency.STAGED,
        "transformer": Residency.RESIDENT,
        "vae": Residency.RESIDENT,
    },
    PlacementKind.CPU_ENCODERS: {
        "text_encoder": Residency.HOST,
        "text_encoder_2": Residency.HOST,
        "transformer": Residency.RESIDENT,
        "vae": Residency.RESIDENT,
    },
    PlacementKind.SEQUENTIAL: {
        "text_encoder": Residency.HOST,
        "text_encoder_2": Residency.HOST,
        "transformer": Residency.STAGED,
        "vae": Residency.STAGED,
    },
}


@dataclass(frozen=True)
class Architecture:
    """The few shape facts the activation estimate needs, read from the configs."""

    hidden_size: int
    patch_size: int
    vae_scale_factor: int
    vae_first_channels: int
    clip_widths: tuple[tuple[int, int], ...]  # (hidden size, layers) per CLIP encoder

    @classmethod
    def from_configs(cls, configs: SD3Configs) -> Architecture:
        t, v = configs.transformer, configs.vae
        return cls(
            hidden_size=int(t["num_attention_heads"]) * int(t["attention_head_dim"]),
            patch_size=int(t["patch_size"]),
            vae_scale_factor=2 ** (len(v["block_out_channels"]) - 1),
            vae_first_channels=int(v["block_out_channels"][0]),
            clip_widths=tuple(
                (int(c["hidden_size"]), int(c["num_hidden_layers"]))
                for c in (configs.text_encoder, configs.text_encoder_2)
            ),
        )


@dataclass(frozen=True)
class Target:
    """The device and memory system a plan is made for."""

    device: str  # "cuda", "cuda:1", "cpu"
    unified_memory: bool  # host memory is device memory (Jetson, or the CPU itself)
    reload_from_files: bool = False  # staged weights can be re-read from safetensors files

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def itemsize(self) -> int:
        return 2 if self.is_cuda else 4  # fp16 on GPU, fp32 on CPU


@dataclass(frozen=True)
class Workload:
    """The largest request a plan must serve."""

    width: int = 1024
    height: int = 1024
    cfg_batch: int = 2  # classifier-free guidance runs the MMDiT on 2 latents
    context_tokens: int = CLIP_TOKENS + 256  # CLIP tokens plus the zero T5 slots


@dataclass(frozen=True)
class ModulePlacement:
    name: str
    residency: Residency
    run_device: str
    dtype: str
    parameters: int
    bytes: int

    @property
    def label(self) -> str:
        return MODULE_LABELS[self.name]


@dataclass(frozen=True)
class PlacementPlan:
    """Where each module lives and what peak memory that should cost. Print it for a table."""

    kind: PlacementKind
    target: Target
    workload: Workload
    modules: tuple[ModulePlacement, ...]
    vae_tiling: bool
    stage_peak_bytes: dict[str, int]
    budget_bytes: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def predicted_peak_bytes(self) -> int:
        return max(self.stage_peak_bytes.values())

    @property
    def vae_slicing(self) -> bool:
        # Slicing splits a batch of images; with one image per request it changes nothing, so
        # it follows tiling and the estimate ignores it.
        return self.vae_tiling

    def module(self, name: str) -> ModulePlacement:
        return next(m for m in self.modules if m.name == name)

    def staged_in(self, stage: str) -> tuple[str, ...]:
        return tuple(
            n for n in STAGE_MODULES[stage] if self.module(n).residency is Residency.STAGED
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "device": self.target.device,
            "unified_memory": self.target.unified_memory,
            "width": self.workload.width,
            "height": self.workload.height,
            "vae_tiling": self.vae_tiling,
            "vae_slicing": self.vae_slicing,
            "budget_bytes": self.budget_bytes,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "stage_peak_bytes": dict(self.stage_peak_bytes),
            "modules": [
                {
                    "name": m.name,
                    "label": m.label,
                    "residency": m.residency.value,
                    "run_device": m.run_device,
                    "dtype": m.dtype,
                    "parameters": m.parameters,
                    "bytes": m.bytes,
                }
                for m in self.modules
            ],
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        budget = "none" if self.budget_bytes is None else f"{self.budget_bytes / GIB:.2f} GiB"
        lines = [
            f"placement {self.kind.value} on {self.target.device}"
            f"{' (unified memory)' if self.target.unified_memory else ''}, "
            f"{self.workload.width}x{self.workload.height}, budget {budget}",
            f"  {'module':<8} {'params':>9} {'bytes':>10} {'dtype':<8} {'lives':<9} runs on",
        ]
        for m in self.modules:
            lines.append(
                f"  {m.label:<8} {_count(m.parameters):>9} {m.bytes / GIB:>6.2f} GiB "
                f"{m.dtype:<8} {m.residency.value:<9} {m.run_device}"
            )
        stages = ", ".join(f"{s} {b / GIB:.2f}" for s, b in self.stage_peak_bytes.items())
        lines.append(
            f"  VAE tiling {'on' if self.vae_tiling else 'off'}; stage peaks (GiB): {stages}"
        )
        lines.append(f"  predicted peak {self.predicted_peak_bytes / GIB:.2f} GiB")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 10**5 else f"{n / 1e3:.1f}k"


def activation_bytes(
    stage: str, arch: Architecture, work: Workload, target: Target, tiling: bool
) -> int:
    """Estimated working memory of one stage beyond its weights."""
    item = target.itemsize
    if stage == "encode":
        return sum(
            (layers + 1 + ENCODE_EXTRA_TENSORS) * CLIP_TOKENS * width * item
            for width, layers in arch.clip_widths
        )
    if stage == "denoise":
        image_tokens = (work.width // arch.vae_scale_factor // arch.patch_size) * (
            work.height // arch.vae_scale_factor // arch.patch_size
        )
        tokens = image_tokens + work.context_tokens
        return int(DENOISE_ACTIVATION_TENSORS * work.cfg_batch * tokens * arch.hidden_size * item)
    if stage == "decode":
        side_w = min(work.width, VAE_TILE_PX) if tiling else work.width
        side_h = min(work.height, VAE_TILE_PX) if tiling else work.height
        tile = DECODE_ACTIVATION_TENSORS * side_w * side_h * arch.vae_first_channels * item
        image = 3 * work.width * work.height * 4 * 2  # decoded image plus its float copy
        return int(tile + image)
    raise ValueError(f"unknown stage {stage!r}")


def build_plan(
    kind: PlacementKind,
    sizes: Mapping[str, ModuleSize],
    arch: Architecture,
    target: Target,
    workload: Workload,
    *,
    vae_tiling: bool = False,
    budget_bytes: int | None = None,
) -> PlacementPlan:
    """The plan of one kind, with its predicted peak per stage."""
    residency = KIND_RESIDENCY[PlacementKind(kind)]
    compute_dtype = "float16" if target.is_cuda else "float32"
    modules = []
    for name in MODULE_NAMES:
        where = residency[name]
        dtype = "float32" if where is Residency.HOST else compute_dtype
        size = sizes[name]
        modules.append(
            ModulePlacement(
                name=name,
                residency=where,
                run_device="cpu" if where is Residency.HOST else target.device,
                dtype=dtype,
                parameters=size.parameters,
                bytes=size.bytes_fp32 if dtype == "float32" else size.bytes_fp16,
            )
        )
    base = sum(m.bytes for m in modules if m.residency is Residency.RESIDENT)
    if target.unified_memory:
        base += sum(m.bytes for m in modules if m.residency is Residency.HOST)
        if not target.reload_from_files:  # host copies of staged modules stay in the same memory
            base += sum(m.bytes for m in modules if m.residency is Residency.STAGED)
    runtime = CUDA_RUNTIME_BYTES if target.is_cuda else 0
    by_name = {m.name: m for m in modules}
    stage_peaks: dict[str, int] = {}
    for stage in STAGES:
        staged = sum(
            by_name[n].bytes
            for n in STAGE_MODULES[stage]
            if by_name[n].residency is Residency.STAGED
        )
        on_device = target.unified_memory or any(
            by_name[n].residency is not Residency.HOST for n in STAGE_MODULES[stage]
        )
        act = activation_bytes(stage, arch, workload, target, vae_tiling) if on_device else 0
        stage_peaks[stage] = base + staged + act + runtime
    notes: list[str] = []
    if target.unified_memory and not target.is_cuda:
        notes.append("CPU run: every module is in host memory; kinds differ only in copies")
    elif target.unified_memory and any(m.residency is Residency.STAGED for m in modules):
        notes.append(
            "unified memory: staged modules are re-read from safetensors"
            if target.reload_from_files
            else "unified memory without weight files: staging keeps host copies and frees nothing"
        )
    return PlacementPlan(
        kind=PlacementKind(kind),
        target=target,
        workload=workload,
        modules=tuple(modules),
        vae_tiling=vae_tiling,
        stage_peak_bytes=stage_peaks,
        budget_bytes=budget_bytes,
        notes=tuple(notes),
    )


def choose_plan(
    budget_bytes: int,
    sizes: Mapping[str, ModuleSize],
    arch: Architecture,
    target: Target,
    workload: Workload | None = None,
) -> PlacementPlan:
    """The fastest plan whose predicted peak fits ``budget_bytes``.

    Every kind is tried without VAE tiling before any kind with it: tiling blends tile seams,
    so it changes the image, while the kinds give the same image.

    Raises:
        PlacementError: nothing fits; the message gives the smallest predicted peak.
    """
    work = workload or Workload()
    candidates = [
        build_plan(kind, sizes, arch, target, work, vae_tiling=tiling, budget_bytes=budget_bytes)
        for tiling in (False, True)
        for kind in PlacementKind
    ]
    for plan in candidates:
        if plan.predicted_peak_bytes <= budget_bytes:
            return plan
    smallest = min(candidates, key=lambda p: p.predicted_peak_bytes)
    raise PlacementError(
        f"no placement fits a budget of {budget_bytes / GIB:.2f} GiB at {work.width}x{work.height}: "
        f"the smallest, {smallest.kind.value}{' with VAE tiling' if smallest.vae_tiling else ''}, "
        f"needs {smallest.predicted_peak_bytes / GIB:.2f} GiB; raise the budget or lower the size"
    )


def parse_bytes(text: str) -> int:
    """'8GiB', '7.5 GB', '512MiB', '123456' -> bytes (binary units for Ki/Mi/Gi, decimal otherwise)."""
    units = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    units |= {
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "K": 2**10,
        "M": 2**20,
        "G": 2**30,
    }
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(
            f"cannot read a memory size from {text!r}; write e.g. 8GiB or 7.5GB"
        ) from None
    if unit not in units or value <= 0:
        raise ValueError(f"cannot read a memory size from {text!r}; write e.g. 8GiB or 7.5GB")
    return int(value * units[unit])


def parse_budget(text: str) -> int:
    """A memory budget as a person writes it, units required: '8GiB', '8GB', '512MiB'.

    A bare number is refused (``--budget 8`` would otherwise be 8 bytes).
    """
    cleaned = text.strip().upper().replace(" ", "")
    if not cleaned or cleaned[-1].isdigit() or cleaned[-1] == ".":
        raise ValueError(f"--budget {text!r} needs a unit: write e.g. 8GiB, 8GB or 512MiB")
    return parse_bytes(text)
