"""SD3 components without T5: configs shipped as package data, built on any device (``meta`` too).

The five modules reSD3-m runs are named as diffusers names them in ``StableDiffusion3Pipeline``;
``text_encoder_3`` (T5-XXL) is always ``None``, which is what "reSD3-m" means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from dedgeai.models.errors import WeightsError

# Weighted modules in the order one request uses them (encode, denoise, decode).
MODULE_ORDER = "text_encoder->text_encoder_2->transformer->vae"
MODULE_NAMES: tuple[str, ...] = tuple(MODULE_ORDER.split("->"))
CONFIG_NAMES: tuple[str, ...] = (*MODULE_NAMES, "scheduler")
BUILTIN_CONFIG_SETS = ("sd3_medium", "tiny")
# Human labels used in plans and reports.
MODULE_LABELS = {
    "text_encoder": "CLIP-L",
    "text_encoder_2": "CLIP-G",
    "transformer": "MMDiT",
    "vae": "VAE",
}


@dataclass(frozen=True)
class SD3Configs:
    """Plain-dict configs of one SD3 variant (diffusers or transformers ``config.json`` content)."""

    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    scheduler: dict[str, Any]

    @classmethod
    def builtin(cls, name: str) -> SD3Configs:
        """Configs shipped with the package: ``sd3_medium`` or ``tiny``."""
        if name not in BUILTIN_CONFIG_SETS:
            raise WeightsError(
                f"no built-in config set {name!r}; known: {', '.join(BUILTIN_CONFIG_SETS)}"
            )
        folder = resources.files("dedgeai.models").joinpath("configs", name)
        return cls(
            **{n: json.loads(folder.joinpath(f"{n}.json").read_text()) for n in CONFIG_NAMES}
        )

    @classmethod
    def from_files(cls, paths: dict[str, Path]) -> SD3Configs:
        """Read one JSON file per component; a missing or unreadable file is a WeightsError."""
        loaded: dict[str, dict[str, Any]] = {}
        for name in CONFIG_NAMES:
            try:
                loaded[name] = json.loads(paths[name].read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise WeightsError(f"cannot read the {name} config {paths[name]}: {exc}") from exc
        return cls(**loaded)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class SD3Modules:
    """The weighted modules plus scheduler and tokenizers of one reSD3-m pipeline."""

    transformer: SD3Transformer2DModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModelWithProjection
    text_encoder_2: CLIPTextModelWithProjection
    scheduler: FlowMatchEulerDiscreteScheduler
    tokenizer: CLIPTokenizer | None = None
    tokenizer_2: CLIPTokenizer | None = None

    def module(self, name: str) -> torch.nn.Module:
        return getattr(self, name)

    def named_modules(self) -> dict[str, torch.nn.Module]:
        return {name: self.module(name) for name in MODULE_NAMES}


def _diffusers_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_module(
    name: str, configs: SD3Configs, device: str | torch.device = "meta"
) -> torch.nn.Module:
    """Instantiate one module from its config on ``device`` (``meta``: no memory, for counting)."""
    config = getattr(configs, name)
    with torch.device(device):
        if name == "transformer":
            module: torch.nn.Module = SD3Transformer2DModel.from_config(_diffusers_kwargs(config))
        elif name == "vae":
            module = AutoencoderKL.from_config(_diffusers_kwargs(config))
        elif name in ("text_encoder", "text_encoder_2"):
            module = CLIPTextModelWithProjection(CLIPTextConfig(**config))
        else:
            raise ValueError(f"unknown module {name!r}; expected one of {MODULE_NAMES}")
    return module.eval().requires_grad_(False)


def build_scheduler(configs: SD3Configs) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler.from_config(_diffusers_kwargs(configs.scheduler))


def build_modules(configs: SD3Configs, device: str | torch.device = "meta") -> SD3Modules:
    """All four weighted modules plus the scheduler; tokenizers are attached by the caller."""
    built = {name: build_module(name, configs, device) for name in MODULE_NAMES}
    return SD3Modules(scheduler=build_scheduler(configs), **built)  # type: ignore[arg-type]


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def state_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes of parameters plus buffers once cast to ``dtype`` (integer buffers keep their type)."""
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        item = tensor.element_size() if not tensor.is_floating_point() else _itemsize(dtype)
        total += tensor.numel() * item
    return total


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


@dataclass(frozen=True)
class ModuleSize:
    """What the planner needs to know about one module: parameters and bytes per dtype."""

    name: str
    parameters: int
    bytes_fp16: int
    bytes_fp32: int

    def bytes_for(self, dtype: torch.dtype) -> int:
        return self.bytes_fp32 if dtype == torch.float32 else self.bytes_fp16


def measure_sizes(configs: SD3Configs) -> dict[str, ModuleSize]:
    """Instantiate every module on ``meta`` and read the real parameter and buffer sizes."""
    sizes: dict[str, ModuleSize] = {}
    for name in MODULE_NAMES:
        module = build_module(name, configs, "meta")
        sizes[name] = ModuleSize(
            name=name,
            parameters=parameter_count(module),
            bytes_fp16=state_bytes(module, torch.float16),
            bytes_fp32=state_bytes(module, torch.float32),
        )
    return sizes
