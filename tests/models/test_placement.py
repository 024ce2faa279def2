"""Planner: real parameter counts on meta, plan choice by budget, predictions vs the H200 anchor."""

from __future__ import annotations

import pytest
import torch

from dedgeai.models.components import MODULE_NAMES, SD3Configs, build_module, measure_sizes
from dedgeai.models.errors import PlacementError
from dedgeai.models.placement import (
    GIB,
    Architecture,
    PlacementKind,
    Residency,
    Target,
    Workload,
    build_plan,
    choose_plan,
    parse_bytes,
)

CUDA = Target("cuda", unified_memory=False)
JETSON = Target("cuda", unified_memory=True, reload_from_files=True)

# Peak GiB allocated on the H200 (fp16, 28 steps, 333 context tokens), from
# shared/reference/sd3_memory_modes_h200.json: the anchor modes our kinds reproduce.
ANCHOR_PEAKS_GIB = {
    (PlacementKind.RESIDENT, 512): 6.38,
    (PlacementKind.RESIDENT, 1024): 8.16,
    (PlacementKind.STAGED_ENCODERS, 512): 5.79,
    (PlacementKind.STAGED_ENCODERS, 1024): 6.61,
    (PlacementKind.SEQUENTIAL, 1024): 4.38,
}


@pytest.fixture(scope="module")
def medium() -> tuple[dict, Architecture]:
    configs = SD3Configs.builtin("sd3_medium")
    return measure_sizes(configs), Architecture.from_configs(configs)


def test_meta_parameter_counts_match_sd3_medium(medium) -> None:
    sizes, _ = medium
    millions = {name: round(sizes[name].parameters / 1e6, 1) for name in MODULE_NAMES}
    assert millions == {
        "transformer": 2028.3,
        "text_encoder_2": 694.7,
        "text_encoder": 123.7,
        "vae": 83.8,
    }


def test_meta_build_allocates_nothing() -> None:
    module = build_module("transformer", SD3Configs.builtin("sd3_medium"), "meta")
    assert all(p.is_meta for p in module.parameters())


def test_fp16_bytes_include_the_position_buffer(medium) -> None:
    sizes, _ = medium
    mmdit = sizes["transformer"]
    assert mmdit.bytes_fp16 == 2 * (mmdit.parameters + 192 * 192 * 1536)
    assert mmdit.bytes_fp32 == 2 * mmdit.bytes_fp16


@pytest.mark.parametrize(
    ("budget_gib", "kind", "tiling"),
    [
        (24, PlacementKind.RESIDENT, False),
        (8, PlacementKind.STAGED_ENCODERS, False),
        (5, PlacementKind.SEQUENTIAL, False),
    ],
)
def test_plan_choice_by_budget(medium, budget_gib: int, kind: PlacementKind, tiling: bool) -> None:
    sizes, arch = medium
    plan = choose_plan(budget_gib * GIB, sizes, arch, CUDA, Workload(1024, 1024))
    assert (plan.kind, plan.vae_tiling) == (kind, tiling)
    assert plan.predicted_peak_bytes <= budget_gib * GIB


def test_tiling_is_used_only_when_no_kind_fits_without_it(medium) -> None:
    sizes, arch = medium
    untiled = build_plan(PlacementKind.SEQUENTIAL, sizes, arch, CUDA, Workload(2048, 2048))
    plan = choose_plan(untiled.predicted_peak_bytes - 1, sizes, arch, CUDA, Workload(2048, 2048))
    assert plan.vae_tiling
    assert plan.predicted_peak_bytes < untiled.predicted_peak_bytes


def test_nothing_fits_names_the_smallest_need(medium) -> None:
    sizes, arch = medium
    with pytest.raises(PlacementError, match=r"sequential, needs 4\.\d\d GiB"):
        choose_plan(2 * GIB, sizes, arch, CUDA, Workload(1024, 1024))


@pytest.mark.parametrize(("kind", "side"), sorted(ANCHOR_PEAKS_GIB, key=str))
def test_prediction_within_15_percent_of_anchor(medium, kind: PlacementKind, side: int) -> None:
    sizes, arch = medium
    plan = build_plan(kind, sizes, arch, CUDA, Workload(side, side))
    measured = ANCHOR_PEAKS_GIB[(kind, side)]
    assert plan.predicted_peak_bytes / GIB == pytest.approx(measured, rel=0.15)


def test_unified_memory_counts_host_modules(medium) -> None:
    sizes, arch = medium
    work = Workload(1024, 1024)
    discrete = build_plan(PlacementKind.CPU_ENCODERS, sizes, arch, CUDA, work)
    unified = build_plan(PlacementKind.CPU_ENCODERS, sizes, arch, JETSON, work)
    host_fp32 = sizes["text_encoder"].bytes_fp32 + sizes["text_encoder_2"].bytes_fp32
    assert unified.predicted_peak_bytes - discrete.predicted_peak_bytes == host_fp32
    # Re-reading staged weights from files frees them between stages; host copies would not.
    kept = build_plan(PlacementKind.SEQUENTIAL, sizes, arch, Target("cuda", True, False), work)
    reread = build_plan(PlacementKind.SEQUENTIAL, sizes, arch, JETSON, work)
    assert kept.predicted_peak_bytes > reread.predicted_peak_bytes


def test_plan_table_and_dict(medium) -> None:
    sizes, arch = medium
    plan = choose_plan(8 * GIB, sizes, arch, CUDA, Workload(1024, 1024))
    text = str(plan)
    assert "staged-encoders" in text and "MMDiT" in text and "predicted peak" in text
    data = plan.as_dict()
    assert data["kind"] == "staged-encoders"
    assert {m["name"]: m["residency"] for m in data["modules"]}[
        "text_encoder_2"
    ] == Residency.STAGED.value
    assert data["predicted_peak_bytes"] == plan.predicted_peak_bytes
    assert plan.module("text_encoder").dtype == "float16"
    cpu_plan = build_plan(PlacementKind.CPU_ENCODERS, sizes, arch, CUDA, Workload())
    assert cpu_plan.module("text_encoder").dtype == "float32"
    assert cpu_plan.module("text_encoder").run_device == "cpu"


def test_cpu_target_is_fp32(medium) -> None:
    sizes, arch = medium
    plan = build_plan(PlacementKind.RESIDENT, sizes, arch, Target("cpu", True), Workload(512, 512))
    assert {m.dtype for m in plan.modules} == {"float32"}
    assert plan.predicted_peak_bytes > sum(s.bytes_fp32 for s in sizes.values())


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8GiB", 8 * 2**30), ("7.5 GB", 7_500_000_000), ("512MiB", 512 * 2**20), ("1234", 1234)],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "eight", "8 parsecs", "-1GiB"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes(text)


def test_fp16_itemsize_used_on_cuda(medium) -> None:
    sizes, _ = medium
    assert sizes["vae"].bytes_for(torch.float16) * 2 == sizes["vae"].bytes_for(torch.float32)
