"""Apply a :class:`PlacementPlan` to real modules: one function, explicit onload/offload per stage.

Staged modules keep a host copy (pinned on discrete GPUs, so copies are non-blocking and can
overlap CPU work) and swap their tensors' storage in and out. On unified memory moving to the
CPU frees nothing, so when the weights came from files the host copy is not kept at all: the
module is re-read from its safetensors files for its stage and freed after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from dedgeai.models.components import MODULE_NAMES, SD3Modules
from dedgeai.models.placement import STAGE_MODULES, VAE_TILE_PX, PlacementPlan, Residency

# Reads one module's state dict (diffusers key names) onto a device in a dtype.
StateLoader = Callable[[torch.device, torch.dtype], dict[str, torch.Tensor]]

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def _named_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    named: dict[str, torch.Tensor] = dict(module.named_parameters())
    named.update(module.named_buffers())
    return named


def move_(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move and cast floating tensors in place (ModelMixin.to warns on every fp16 cast)."""
    for tensor in _named_tensors(module).values():
        cast = dtype if tensor.is_floating_point() else tensor.dtype
        if tensor.device != device or tensor.dtype != cast:
            tensor.data = tensor.data.to(device=device, dtype=cast)


class StagedModule:
    """One module that lives on the compute device only between ``onload_`` and ``offload_``."""

    def __init__(
        self,
        module: torch.nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        loader: StateLoader | None = None,
    ) -> None:
        self.module = module
        self.device = device
        self.dtype = dtype
        self.loader = loader
        self.on_device = False
        self._host: dict[str, torch.Tensor] = {}
        pin = device.type == "cuda" and loader is None
        if loader is None:
            move_(module, torch.device("cpu"), dtype)
            for name, tensor in _named_tensors(module).items():
                self._host[name] = tensor.data.pin_memory() if pin else tensor.data
                tensor.data = self._host[name]
        else:
            self._free()

    def _free(self) -> None:
        keys = set(self.module.state_dict())
        for name, tensor in _named_tensors(self.module).items():
            if name in keys:  # non-persistent buffers (e.g. position ids) are not in the files
                tensor.data = torch.empty(0, dtype=tensor.dtype, device="cpu")

    def onload_(self) -> None:
        if self.on_device:
            return
        named = _named_tensors(self.module)
        if self.loader is not None:
            state = self.loader(self.device, self.dtype)
            for name, value in state.items():
                if name in named:
                    named[name].data = value
            for name, tensor in named.items():  # non-persistent buffers follow the module
                if name not in state:
                    tensor.data = tensor.data.to(self.device)
        else:
            for name, tensor in named.items():
                # copy=True: on the CPU this is a real copy too, so tests exercise the same path.
                tensor.data = self._host[name].to(self.device, non_blocking=True, copy=True)
        self.on_device = True

    def offload_(self) -> None:
        if not self.on_device:
            return
        if self.loader is not None:
            self._free()
        else:
            for name, tensor in _named_tensors(self.module).items():
                tensor.data = self._host[name]
        self.on_device = False


class AppliedPlacement:
    """Modules placed per a plan; ``stage(name)`` brings a stage's staged modules in and out."""

    def __init__(
        self, plan: PlacementPlan, modules: SD3Modules, staged: dict[str, StagedModule]
    ) -> None:
        self.plan = plan
        self.modules = modules
        self.staged = staged
        self.device = torch.device(plan.target.device)
        self.dtype = _DTYPES[plan.module("transformer").dtype]

    @property
    def encode_device(self) -> torch.device:
        return torch.device(self.plan.module("text_encoder").run_device)

    @property
    def encode_dtype(self) -> torch.dtype:
        return _DTYPES[self.plan.module("text_encoder").dtype]

    def prefetch_(self, stage: str) -> None:
        """Start bringing a stage's modules in now (non-blocking copies overlap host work)."""
        for name in STAGE_MODULES[stage]:
            if name in self.staged:
                self.staged[name].onload_()

    def release_(self) -> None:
        for staged in self.staged.values():
            staged.offload_()

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        names = [n for n in STAGE_MODULES[stage] if n in self.staged]
        try:
            for name in names:
                self.staged[name].onload_()
            yield
        finally:
            for name in names:
                self.staged[name].offload_()


def apply_plan(
    plan: PlacementPlan,
    modules: SD3Modules,
    loaders: Mapping[str, StateLoader] | None = None,
) -> AppliedPlacement:
    """Move, cast and wrap every module as the plan says; enable VAE tiling/slicing if asked.

    ``loaders`` (per module name) are used for staged modules on unified memory when the plan
    says weights can be re-read from files; otherwise staged modules keep host copies.
    """
    device = torch.device(plan.target.device)
    staged: dict[str, StagedModule] = {}
    for name in MODULE_NAMES:
        placement = plan.module(name)
        module = modules.module(name)
        dtype = _DTYPES[placement.dtype]
        if placement.residency is Residency.STAGED:
            loader = loaders.get(name) if (loaders and plan.target.reload_from_files) else None
            staged[name] = StagedModule(module, device, dtype, loader)
        else:
            move_(module, torch.device(placement.run_device), dtype)
    set_vae_tiling(modules.vae, plan.vae_tiling)
    return AppliedPlacement(plan, modules, staged)


def set_vae_tiling(vae: torch.nn.Module, on: bool) -> None:
    """Tiled (and sliced) decode with tiles of VAE_TILE_PX pixels, or whole-image decode."""
    if on:
        vae.enable_tiling()
        vae.tile_sample_min_size = VAE_TILE_PX
        vae.tile_latent_min_size = VAE_TILE_PX // (2 ** (len(vae.config.block_out_channels) - 1))
        vae.enable_slicing()
    else:
        vae.disable_tiling()
        vae.disable_slicing()
