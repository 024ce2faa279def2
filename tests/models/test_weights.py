"""Offline weights: a saved tiny diffusers folder and a tiny three-file layout load and match."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dedgeai.models.errors import WeightsError
from dedgeai.models.factory import BackendSpec
from dedgeai.models.placement import PlacementKind, Target, Workload, build_plan
from dedgeai.models.sd3_backend import SD3Backend, make_plan
from dedgeai.models.staging import StagedModule
from dedgeai.models.tiny import build_tiny, tiny_configs
from dedgeai.models.tokenizers import save_tokenizer
from dedgeai.models.weights import load_modules, read_state, resolve_layout, save_diffusers

from .original_format import mmdit_to_original, vae_to_original

REQUEST = {"prompt": "a lighthouse", "steps": 3, "width": 256, "height": 256, "seed": 4}
CPU = Target("cpu", unified_memory=True)


def _png(backend: SD3Backend) -> bytes:
    from dedgeai.models import GenerationRequest

    return backend.generate(GenerationRequest(**REQUEST)).png


def _backend_from(modules, configs=None, kind: str = "resident", loaders=None) -> SD3Backend:
    configs = configs or tiny_configs()
    plan = make_plan(configs, CPU, 2**30, (256, 256), kind)
    return SD3Backend(modules, configs, plan, name="test", loaders=loaders)


@pytest.fixture(scope="module")
def reference_png(tiny_backend: SD3Backend) -> bytes:
    return _png(tiny_backend)


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_diffusers(build_tiny(), tmp_path_factory.mktemp("w") / "tiny-diffusers")


@pytest.fixture(scope="module")
def three_file_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = build_tiny()
    root = tmp_path_factory.mktemp("w") / "tiny-three"
    (root / "text_encoders").mkdir(parents=True)
    layers = tiny_configs().transformer["num_layers"]
    ups = len(tiny_configs().vae["up_block_types"])
    original = {
        **mmdit_to_original(tiny.transformer.state_dict(), layers),
        **vae_to_original(tiny.vae.state_dict(), ups),
    }
    save_file(original, str(root / "sd3_medium.safetensors"))
    clip_l = {
        k: v for k, v in tiny.text_encoder.state_dict().items() if k != "text_projection.weight"
    }
    save_file(clip_l, str(root / "text_encoders" / "clip_l.safetensors"))
    save_file(dict(tiny.text_encoder_2.state_dict()), str(root / "clip_g.safetensors"))
    save_tokenizer(tiny.tokenizer, root / "tokenizer")
    save_tokenizer(tiny.tokenizer_2, root / "tokenizer_2")
    return root


def test_diffusers_folder_loads_offline_and_matches(
    diffusers_dir: Path, reference_png: bytes
) -> None:
    layout = resolve_layout(diffusers_dir)
    assert layout.kind == "diffusers"
    assert _png(_backend_from(load_modules(layout), layout.configs)) == reference_png


def test_from_spec_with_a_path(diffusers_dir: Path, reference_png: bytes) -> None:
    backend = SD3Backend.from_spec(
        BackendSpec(model=str(diffusers_dir), device="cpu", vram_budget_bytes=2**30)
    )
    assert backend.name.startswith("reSD3-m")
    assert _png(backend) == reference_png


def test_three_file_layout_loads_offline_and_matches(
    three_file_dir: Path, tiny_backend: SD3Backend
) -> None:
    layout = resolve_layout(three_file_dir, configs=tiny_configs())
    assert layout.kind == "three-file"
    modules = load_modules(layout)
    # CLIP-L's projection is the identity in SD3 (unprojected pooled output).
    assert torch.equal(modules.text_encoder.text_projection.weight, torch.eye(16))
    reference = build_tiny()
    reference.text_encoder.text_projection.weight.data = torch.eye(16)
    assert _png(_backend_from(modules)) == _png(_backend_from(reference))
    for name in ("transformer", "vae", "text_encoder_2"):
        ours, theirs = modules.module(name).state_dict(), reference.module(name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name


def test_missing_files_are_each_named(diffusers_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    with pytest.raises(WeightsError) as info:
        resolve_layout(broken)
    message = str(info.value)
    for expected in ("transformer/config.json", "vae/diffusion_pytorch_model.safetensors",
                     "text_encoder_2/model.safetensors", "tokenizer/vocab.json", "scheduler/scheduler_config.json"):  # fmt: skip
        assert expected in message


def test_missing_three_file_parts_are_named(tmp_path: Path) -> None:
    (tmp_path / "sd3_medium.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError) as info:
        resolve_layout(tmp_path)
    assert "clip_g.safetensors" in str(info.value) and "clip_l.safetensors" in str(info.value)
    assert "tokenizer" in str(info.value)


def test_not_weights_at_all(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="neither a diffusers"):
        resolve_layout(tmp_path)
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_layout(tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_is_named(diffusers_dir: Path, tmp_path: Path, damage: str) -> None:
    import shutil

    copy = Path(shutil.copytree(diffusers_dir, tmp_path / "copy"))
    target = copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = target.read_bytes()
    target.write_bytes(
        data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file" * 9
    )
    with pytest.raises(
        WeightsError, match="vae/diffusion_pytorch_model.safetensors is not a valid safetensors"
    ):
        resolve_layout(copy)


def test_wrong_architecture_is_a_weights_error(tmp_path: Path) -> None:
    save_file(
        {"model.diffusion_model.nonsense": torch.zeros(2)}, str(tmp_path / "sd3_medium.safetensors")
    )
    save_file({"text_model.nonsense": torch.zeros(2)}, str(tmp_path / "clip_g.safetensors"))
    save_file({"text_model.nonsense": torch.zeros(2)}, str(tmp_path / "clip_l.safetensors"))
    for name in ("tokenizer", "tokenizer_2"):
        save_tokenizer(build_tiny().tokenizer, tmp_path / name)
    layout = resolve_layout(tmp_path, configs=tiny_configs())
    with pytest.raises(WeightsError):
        load_modules(layout)


def test_staging_from_files_frees_and_restores(diffusers_dir: Path, reference_png: bytes) -> None:
    """The unified-memory path: staged modules are re-read from safetensors for their stage."""
    layout = resolve_layout(diffusers_dir)
    modules = load_modules(layout)
    loaders = {
        name: (lambda d, t, n=name: read_state(layout, n, d, t)) for name in ("transformer", "vae")
    }
    configs = layout.configs
    target = Target("cpu", unified_memory=True, reload_from_files=True)
    plan = build_plan(
        PlacementKind.SEQUENTIAL, _sizes(configs), _arch(configs), target, Workload(256, 256)
    )
    backend = SD3Backend(modules, configs, plan, name="files", loaders=loaders)
    staged = backend._placement.staged["transformer"]
    assert isinstance(staged, StagedModule) and staged.loader is not None
    assert all(p.numel() == 0 for p in modules.transformer.parameters())  # freed between requests
    assert _png(backend) == reference_png
    assert all(p.numel() == 0 for p in modules.transformer.parameters())


def _sizes(configs):
    from dedgeai.models.components import measure_sizes

    return measure_sizes(configs)


def _arch(configs):
    from dedgeai.models.placement import Architecture

    return Architecture.from_configs(configs)


def test_clip_vocabulary_from_a_bpe_file(tmp_path: Path) -> None:
    import gzip

    from dedgeai.models.tokenizers import make_tokenizer, vocabulary_from_bpe

    path = tmp_path / "bpe.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("#version: 0.2\nc a\nca t</w>\n")
    vocab, merges = vocabulary_from_bpe(path)
    assert merges == [("c", "a"), ("ca", "t</w>")]
    assert vocab["cat</w>"] == 513 and vocab["<|endoftext|>"] == len(vocab) - 1
    ids = make_tokenizer(vocab, merges, "!")("cat").input_ids
    assert ids == [vocab["<|startoftext|>"], vocab["cat</w>"], vocab["<|endoftext|>"]]
