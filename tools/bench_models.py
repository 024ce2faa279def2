"""Benchmark every reSD3-m placement: latency and peak memory, predicted vs measured.

Full-size SD3-medium architecture with random fp16 weights (memory and time do not depend on
weight values), every kind at 512x512 and 1024x1024, 28 steps, guidance 5, one process, modules
built once and re-placed per kind. One JSON row per scenario, written after each row so a run
cut short still leaves results; a table and the issue's targets are printed at the end.

    python tools/bench_models.py                      # H200: writes $OUT/bench_models.json
    python tools/bench_models.py --tiny               # CPU smoke test with the tiny model

Whole-image latencies are seconds long, so each scenario runs one short warm-up and ``--reps``
timed requests (no blocked_autorange, no torch.compile) to fit a 15-minute GPU lease.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dedgeai.models.backend import GenerationRequest
from dedgeai.models.components import (
    MODULE_NAMES,
    SD3Configs,
    SD3Modules,
    build_module,
    build_scheduler,
)
from dedgeai.models.devices import resolve_device, target_for
from dedgeai.models.placement import GIB, PlacementKind
from dedgeai.models.sd3_backend import SD3Backend, make_plan
from dedgeai.models.tiny import build_tiny, tiny_configs
from dedgeai.models.tokenizers import tiny_tokenizer

GUIDANCE = 5.0
# Targets from issue 3 (H200, fp16, 1024x1024).
STAGED_MAX_PEAK_GIB, STAGED_MAX_SLOWDOWN = 6.6, 1.10
SEQUENTIAL_MAX_PEAK_GIB, SEQUENTIAL_MAX_SLOWDOWN = 4.5, 1.5
PLANNER_TOLERANCE = 0.15


@dataclass(frozen=True)
class Scenario:
    kind: PlacementKind
    side_px: int
    steps: int


@dataclass
class Row:
    mode: str
    res: int
    steps: int
    latency_s: float | None = None
    latency_all_s: list[float] | None = None
    encode_s: float | None = None
    denoise_s: float | None = None
    decode_s: float | None = None
    predicted_peak_GiB: float | None = None  # noqa: N815 (unit in the name, as in the anchor JSON)
    peak_alloc_GiB: float | None = None  # noqa: N815
    peak_reserved_GiB: float | None = None  # noqa: N815
    planner_error_pct: float | None = None
    vae_tiling: bool = False
    error: str | None = None


def full_size_random(device: torch.device) -> SD3Modules:
    """SD3-medium modules with random weights, built directly on ``device`` in fp16 (like the anchor)."""
    configs = SD3Configs.builtin("sd3_medium")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        built = {name: build_module(name, configs, device) for name in MODULE_NAMES}
    finally:
        torch.set_default_dtype(previous)
    # The tokenizer's ids only need to be valid; the vocabulary does not change cost.
    return SD3Modules(
        scheduler=build_scheduler(configs),
        tokenizer=tiny_tokenizer("tokenizer"),
        tokenizer_2=tiny_tokenizer("tokenizer_2"),
        **built,  # type: ignore[arg-type]
    )


def run_scenario(
    modules: SD3Modules, configs: SD3Configs, scenario: Scenario, device: torch.device, reps: int
) -> Row:
    row = Row(mode=scenario.kind.value, res=scenario.side_px, steps=scenario.steps)
    target = target_for(device, reload_from_files=False)
    size = (scenario.side_px, scenario.side_px)
    plan = make_plan(configs, target, 1 << 50, size, scenario.kind.value)
    row.predicted_peak_GiB = round(plan.predicted_peak_bytes / GIB, 3)
    row.vae_tiling = plan.vae_tiling
    backend = SD3Backend(modules, configs, plan, name=f"bench({scenario.kind.value})")
    try:
        side = scenario.side_px
        backend.generate(
            GenerationRequest("warm-up", steps=2, width=side, height=side, guidance=GUIDANCE)
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        results = []
        for rep in range(reps):
            # A new prompt each time: the encode cost is paid, as for a new user request.
            request = GenerationRequest(
                f"a photograph of lighthouse number {rep} at {side}px",
                steps=scenario.steps, width=side, height=side, guidance=GUIDANCE, seed=rep,
            )  # fmt: skip
            results.append(backend.generate(request))
        best = min(results, key=lambda r: r.timings.total_s)
        row.latency_s = round(best.timings.total_s, 3)
        row.latency_all_s = [round(r.timings.total_s, 3) for r in results]
        row.encode_s = round(best.timings.encode_s, 3)
        row.denoise_s = round(best.timings.denoise_s, 3)
        row.decode_s = round(best.timings.decode_s, 3)
        peaks = [r.peak_memory_bytes for r in results if r.peak_memory_bytes is not None]
        if peaks:
            row.peak_alloc_GiB = round(max(peaks) / GIB, 3)
            row.peak_reserved_GiB = round(torch.cuda.max_memory_reserved(device) / GIB, 3)
            row.planner_error_pct = round(
                100 * (row.predicted_peak_GiB / row.peak_alloc_GiB - 1), 1
            )
    finally:
        backend.close()
        del backend
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def check_targets(rows: list[Row]) -> list[str]:
    """The issue's figures, as PASS/FAIL lines (measured rows only)."""
    by = {(r.mode, r.res): r for r in rows if r.error is None and r.latency_s is not None}
    lines = []
    resident = by.get(("resident", 1024))
    for mode, max_peak, max_slow in (
        ("staged-encoders", STAGED_MAX_PEAK_GIB, STAGED_MAX_SLOWDOWN),
        ("sequential", SEQUENTIAL_MAX_PEAK_GIB, SEQUENTIAL_MAX_SLOWDOWN),
    ):
        row = by.get((mode, 1024))
        if row is None or resident is None or row.peak_alloc_GiB is None:
            lines.append(f"{mode} @1024: not measured")
            continue
        slowdown = row.latency_s / resident.latency_s  # type: ignore[operator]
        ok = row.peak_alloc_GiB <= max_peak and slowdown <= max_slow
        lines.append(
            f"{'PASS' if ok else 'FAIL'} {mode} @1024: peak {row.peak_alloc_GiB:.2f} GiB (<= {max_peak}), "
            f"{slowdown:.2f}x resident latency (<= {max_slow})"
        )
    for row in by.values():
        if row.planner_error_pct is not None:
            ok = abs(row.planner_error_pct) <= 100 * PLANNER_TOLERANCE
            lines.append(
                f"{'PASS' if ok else 'FAIL'} planner {row.mode} @{row.res}: {row.planner_error_pct:+.1f} %"
            )
    return lines


def print_table(rows: list[Row]) -> None:
    header = f"{'mode':<16} {'res':>5} {'lat s':>7} {'enc':>6} {'den':>6} {'dec':>6} {'pred GiB':>9} {'peak GiB':>9} {'err %':>6}"
    print(header)
    for r in rows:
        if r.error:
            print(f"{r.mode:<16} {r.res:>5} ERROR {r.error.splitlines()[-1][:80]}")
            continue

        def f(v: float | None, w: int, p: int = 3) -> str:
            return f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"

        print(
            f"{r.mode:<16} {r.res:>5} {f(r.latency_s, 7)} {f(r.encode_s, 6)} {f(r.denoise_s, 6)} "
            f"{f(r.decode_s, 6)} {f(r.predicted_peak_GiB, 9, 2)} {f(r.peak_alloc_GiB, 9, 2)} "
            f"{f(r.planner_error_pct, 6, 1)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke test)")
    parser.add_argument(
        "--res", type=int, nargs="+", default=None, help="sides in px (default 512 1024)"
    )
    parser.add_argument("--steps", type=int, default=None, help="steps (default 28; --tiny: 4)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=[k.value for k in PlacementKind])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("cpu" if args.tiny else None)
    steps = args.steps or (4 if args.tiny else 28)
    sides = args.res or ([256, 512] if args.tiny else [512, 1024])
    started = time.perf_counter()
    if args.tiny:
        configs, modules = tiny_configs(), build_tiny()
    else:
        configs, modules = SD3Configs.builtin("sd3_medium"), full_size_random(device)
    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "model": "tiny" if args.tiny else "sd3-medium architecture, random weights",
        "build_s": round(time.perf_counter() - started, 1),
        "guidance": GUIDANCE,
        "steps": steps,
    }
    print(json.dumps(info), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / "bench_models.json"
    rows: list[Row] = []
    for mode in args.modes:
        for side in sides:
            scenario = Scenario(PlacementKind(mode), side, steps)
            try:
                row = run_scenario(modules, configs, scenario, device, args.reps)
            except Exception:  # one failing scenario (e.g. out of memory) must not lose the others
                row = Row(mode=mode, res=side, steps=steps, error=traceback.format_exc(limit=3))
            rows.append(row)
            print(json.dumps(asdict(row)), flush=True)
            out_file.write_text(
                json.dumps({"info": info, "rows": [asdict(r) for r in rows]}, indent=1)
            )
    print_table(rows)
    targets = check_targets(rows)
    print("\n".join(targets))
    payload = {"info": info, "rows": [asdict(r) for r in rows], "targets": targets}
    out_file.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out_file} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
