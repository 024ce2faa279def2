"""The built-in ``tiny`` model: SD3's architecture at toy size, seeded random weights, offline tokenizers.

It runs the same pipeline code as SD3-medium, fast enough for tests and for agents on machines
without weights. Its images are noise: it exists so that everything around the model can run.
"""

from __future__ import annotations

import torch

from dedgeai.models.components import (
    MODULE_NAMES,
    SD3Configs,
    SD3Modules,
    build_module,
    build_scheduler,
)
from dedgeai.models.notices import TINY_WARNING as TINY_WARNING  # re-exported
from dedgeai.models.tokenizers import tiny_tokenizer

TINY_SEED = 0


def tiny_configs() -> SD3Configs:
    return SD3Configs.builtin("tiny")


def build_tiny(seed: int = TINY_SEED) -> SD3Modules:
    """Tiny SD3 modules on the CPU in fp32; the same ``seed`` gives the same weights."""
    configs = tiny_configs()
    built: dict[str, torch.nn.Module] = {}
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state untouched
        for offset, name in enumerate(MODULE_NAMES):
            torch.manual_seed(seed + offset)
            module = build_module(name, configs, device="cpu")
            # Default inits leave some outputs near zero; a plain normal keeps signals alive.
            for tensor in module.parameters():
                if tensor.dim() > 1:
                    tensor.normal_(0.0, 0.2)
            built[name] = module
    return SD3Modules(
        scheduler=build_scheduler(configs),
        tokenizer=tiny_tokenizer("tokenizer"),
        tokenizer_2=tiny_tokenizer("tokenizer_2"),
        **built,  # type: ignore[arg-type]
    )
