"""Offline SD3-medium weights: a diffusers directory or the authors' three-file layout.

Every file is checked before anything loads, so one WeightsError names each missing file, and a
corrupt safetensors file is reported by path. Nothing here can reach the network.

  diffusers:  model_index.json, transformer/, vae/, text_encoder/, text_encoder_2/, scheduler/,
              tokenizer/, tokenizer_2/   (text_encoder_3/ and tokenizer_3/ are ignored)
  three-file: sd3_medium.safetensors (MMDiT + VAE), clip_g.safetensors, clip_l.safetensors
              (at the top or under text_encoders/), configs from this package, tokenizers from
              tokenizer/ + tokenizer_2/ or vocab.json + merges.txt there or in ``tokenizer_dir``,
              else from the CLIP BPE file of an installed open_clip.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from dedgeai.models.components import (
    CONFIG_NAMES,
    MODULE_NAMES,
    SD3Configs,
    SD3Modules,
    build_module,
    build_scheduler,
)
from dedgeai.models.errors import WeightsError
from dedgeai.models.tokenizers import (
    find_packaged_bpe,
    make_tokenizer,
    save_tokenizer,
    tokenizer_files_missing,
    tokenizer_from_folder,
    vocabulary_from_bpe,
)

THREE_FILES = {"transformer": "sd3_medium.safetensors", "text_encoder_2": "clip_g.safetensors",
               "text_encoder": "clip_l.safetensors"}  # fmt: skip
WEIGHT_NAMES = {"transformer": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
                "text_encoder": "model", "text_encoder_2": "model"}  # fmt: skip
CONFIG_FILES = {"scheduler": "scheduler_config.json"}
MMDIT_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
CLIP_PREFIXES = ("text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.",
                 "cond_stage_model.transformer.", "transformer.text_model.")  # fmt: skip

Converter = Callable[[dict[str, torch.Tensor], SD3Configs], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ModuleFiles:
    """Where one module's weights are and how their keys become diffusers keys."""

    name: str
    files: tuple[Path, ...]
    converter: Converter | None = None


@dataclass(frozen=True)
class WeightsLayout:
    kind: str  # "diffusers" or "three-file"
    root: Path
    configs: SD3Configs
    modules: dict[str, ModuleFiles]
    tokenizer_dirs: tuple[Path | None, Path | None]  # None: build from the CLIP BPE file
    bpe_file: Path | None = None


def check_safetensors(path: Path) -> None:
    """Read the header; a truncated or garbled file is a WeightsError naming it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(
            f"{path} is not a valid safetensors file ({exc}); copy it again"
        ) from exc


def _weight_files(folder: Path, stem: str) -> tuple[Path, ...] | None:
    for candidate in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / candidate).is_file():
            return (folder / candidate,)
    for index_name in (f"{stem}.safetensors.index.json", f"{stem}.fp16.safetensors.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, KeyError, json.JSONDecodeError) as exc:
                raise WeightsError(f"cannot read the shard index {index}: {exc}") from exc
            return tuple(folder / s for s in shards)
    return None


def _diffusers_layout(root: Path) -> WeightsLayout:
    missing: list[str] = []
    config_paths: dict[str, Path] = {}
    for name in CONFIG_NAMES:
        path = root / name / CONFIG_FILES.get(name, "config.json")
        config_paths[name] = path
        if not path.is_file():
            missing.append(str(path))
    modules: dict[str, ModuleFiles] = {}
    for name in MODULE_NAMES:
        files = _weight_files(root / name, WEIGHT_NAMES[name])
        if files is None:
            missing.append(str(root / name / f"{WEIGHT_NAMES[name]}.safetensors"))
        else:
            missing.extend(str(f) for f in files if not f.is_file())
            modules[name] = ModuleFiles(name, files)
    for folder in (root / "tokenizer", root / "tokenizer_2"):
        missing.extend(str(p) for p in tokenizer_files_missing(folder))
    if missing:
        raise WeightsError(
            f"diffusers weights in {root} are incomplete; missing: " + ", ".join(missing)
        )
    return WeightsLayout(
        kind="diffusers",
        root=root,
        configs=SD3Configs.from_files(config_paths),
        modules=modules,
        tokenizer_dirs=(root / "tokenizer", root / "tokenizer_2"),
    )


def _three_file_layout(
    root: Path, tokenizer_dir: Path | None, configs: SD3Configs | None
) -> WeightsLayout:
    missing: list[str] = []
    paths: dict[str, Path] = {}
    for name, filename in THREE_FILES.items():
        found = next(
            (p for p in (root / filename, root / "text_encoders" / filename) if p.is_file()), None
        )
        if found is None:
            missing.append(str(root / filename))
        else:
            paths[name] = found
    dirs, bpe = _three_file_tokenizers(root, tokenizer_dir)
    if dirs is None and bpe is None:
        where = tokenizer_dir or root
        missing.append(
            f"tokenizer files ({where}/vocab.json + {where}/merges.txt, or tokenizer/ and tokenizer_2/ "
            "folders; no installed package ships the CLIP BPE vocabulary)"
        )
    if missing:
        raise WeightsError(
            f"three-file weights in {root} are incomplete; missing: " + ", ".join(missing)
        )
    mmdit = paths["transformer"]
    return WeightsLayout(
        kind="three-file",
        root=root,
        configs=configs or SD3Configs.builtin("sd3_medium"),
        modules={
            "transformer": ModuleFiles("transformer", (mmdit,), _convert_mmdit),
            "vae": ModuleFiles("vae", (mmdit,), _convert_vae),
            "text_encoder": ModuleFiles("text_encoder", (paths["text_encoder"],), _convert_clip_l),
            "text_encoder_2": ModuleFiles(
                "text_encoder_2", (paths["text_encoder_2"],), _convert_clip_g
            ),
        },
        tokenizer_dirs=dirs or (None, None),
        bpe_file=bpe,
    )


def _three_file_tokenizers(
    root: Path, tokenizer_dir: Path | None
) -> tuple[tuple[Path, Path] | None, Path | None]:
    for base in (tokenizer_dir, root):
        if base is None:
            continue
        if not (
            tokenizer_files_missing(base / "tokenizer")
            or tokenizer_files_missing(base / "tokenizer_2")
        ):
            return (base / "tokenizer", base / "tokenizer_2"), None
        has_files = (base / "vocab.json").is_file() or (base / "tokenizer.json").is_file()
        if has_files and not tokenizer_files_missing(base):
            return (base, base), None
    return None, find_packaged_bpe()


def resolve_layout(
    path: str | Path, tokenizer_dir: str | Path | None = None, configs: SD3Configs | None = None
) -> WeightsLayout:
    """Recognise the layout at ``path`` and check that every file is there and readable.

    ``configs`` replaces the packaged SD3-medium configs for the three-file layout (tests use
    the tiny ones).
    """
    root = Path(path).expanduser()
    if root.is_file() and root.name == THREE_FILES["transformer"]:
        root = root.parent
    if not root.is_dir():
        raise WeightsError(f"weights path {root} does not exist or is not a directory")
    tok = Path(tokenizer_dir).expanduser() if tokenizer_dir else None
    if (root / "model_index.json").is_file() or (root / "transformer").is_dir():
        layout = _diffusers_layout(root)
    elif any(
        (root / f).is_file() or (root / "text_encoders" / f).is_file() for f in THREE_FILES.values()
    ):
        layout = _three_file_layout(root, tok, configs)
    else:
        raise WeightsError(
            f"{root} holds neither a diffusers SD3 folder (model_index.json, transformer/, ...) nor the "
            f"three-file layout ({', '.join(THREE_FILES.values())})"
        )
    for files in {f for m in layout.modules.values() for f in m.files}:
        check_safetensors(files)
    return layout


# ---- key conversion for the three-file layout ------------------------------------------------


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _convert_mmdit(state: dict[str, torch.Tensor], configs: SD3Configs) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    return convert_sd3_transformer_checkpoint_to_diffusers(_strip(state, MMDIT_PREFIX))


def _convert_vae(state: dict[str, torch.Tensor], configs: SD3Configs) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(_strip(state, VAE_PREFIX), configs.vae)


def _clip_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in CLIP_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            stripped = _strip(state, prefix)
            return {
                (k if k.startswith("text_") else f"text_model.{k}"): v for k, v in stripped.items()
            }
    return dict(state)


def _convert_clip_l(state: dict[str, torch.Tensor], configs: SD3Configs) -> dict[str, torch.Tensor]:
    converted = _clip_keys(state)
    # SD3 conditions on CLIP-L's unprojected pooled output (the reference code and diffusers'
    # single-file loader agree), so the projection is the identity whatever the file holds.
    width = int(configs.text_encoder["hidden_size"])
    converted["text_projection.weight"] = torch.eye(width, dtype=torch.float32)
    return converted


def _convert_clip_g(state: dict[str, torch.Tensor], configs: SD3Configs) -> dict[str, torch.Tensor]:
    return _clip_keys(state)


# ---- loading -----------------------------------------------------------------------------------


def read_state(
    layout: WeightsLayout, name: str, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """One module's state dict with diffusers key names, on ``device`` in ``dtype``."""
    spec = layout.modules[name]
    state: dict[str, torch.Tensor] = {}
    for path in spec.files:
        try:
            state.update(load_file(str(path), device=str(device)))
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"cannot read {path} ({exc}); copy it again") from exc
    if spec.converter is not None:
        try:
            state = spec.converter(state, layout.configs)
        except (KeyError, IndexError, ValueError, RuntimeError) as exc:
            raise WeightsError(
                f"{spec.files[0]} does not hold SD3 {name} weights ({exc!r})"
            ) from exc
    return {
        k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
        for k, v in state.items()
    }


def _materialise(module: torch.nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0:3]
        raise WeightsError(
            f"{label} weights do not match the SD3 architecture: {' '.join(first_line)}"
        ) from exc
    for owner in module.modules():  # non-persistent buffers are not in files: rebuild them
        for key, buffer in list(owner.named_buffers(recurse=False)):
            if buffer.is_meta:
                if key != "position_ids":
                    raise WeightsError(f"{label}: buffer {key} has no value after loading")
                ids = torch.arange(buffer.numel(), dtype=buffer.dtype).view(buffer.shape)
                owner.register_buffer(key, ids, persistent=False)


def load_module(
    layout: WeightsLayout, name: str, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """Build one module on ``meta`` and fill it straight from the files (no random init)."""
    module = build_module(name, layout.configs, device="meta")
    _materialise(module, read_state(layout, name, device, dtype), name)
    return module


def load_modules(layout: WeightsLayout, dtype: torch.dtype = torch.float32) -> SD3Modules:
    """Every module on the CPU in ``dtype``, plus scheduler and tokenizers."""
    cpu = torch.device("cpu")
    loaded = {name: load_module(layout, name, cpu, dtype) for name in MODULE_NAMES}
    tokenizer, tokenizer_2 = load_tokenizers(layout)
    return SD3Modules(
        scheduler=build_scheduler(layout.configs),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        **loaded,
    )  # type: ignore[arg-type]


def load_tokenizers(layout: WeightsLayout) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    first, second = layout.tokenizer_dirs
    if first is not None and second is not None:
        return tokenizer_from_folder(first, "tokenizer"), tokenizer_from_folder(
            second, "tokenizer_2"
        )
    if layout.bpe_file is None:
        raise WeightsError("no tokenizer files and no CLIP BPE vocabulary on this machine")
    vocab, merges = vocabulary_from_bpe(layout.bpe_file)
    return make_tokenizer(vocab, merges, "<|endoftext|>"), make_tokenizer(vocab, merges, "!")


def save_diffusers(modules: SD3Modules, folder: str | Path) -> Path:
    """Write ``modules`` as a diffusers SD3 folder without T5 (used to export the tiny model)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for name in MODULE_NAMES:
        modules.module(name).save_pretrained(root / name)
    modules.scheduler.save_pretrained(root / "scheduler")
    for name, tokenizer in (("tokenizer", modules.tokenizer), ("tokenizer_2", modules.tokenizer_2)):
        if tokenizer is None:
            raise WeightsError(f"cannot save: {name} is missing")
        save_tokenizer(tokenizer, root / name)
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "text_encoder_3": [None, None],
        "tokenizer_3": [None, None],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root
