"""`dedgeai generate` and `dedgeai model plan`: make one image, or show where the weights would go.

Exit codes: 0 done · 1 internal model error · 2 bad input, weights or budget · 4 cancelled.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dedgeai.agent.exit_codes import ExitCode, exit_code_of
from dedgeai.models.backend import GenerationRequest
from dedgeai.models.errors import InvalidRequest, ModelError
from dedgeai.models.sizes import SizeError, parse_size

if TYPE_CHECKING:
    from dedgeai.models.components import SD3Configs
    from dedgeai.models.placement import Target

GIB = 2**30
PLAN_ONLY_MODEL = "sd3-medium"
PRESET_NAMES = (  # mirrors models/presets.PRESETS, kept here so `--help` imports no torch
    "jetson-orin-nano-8gb",
    "jetson-orin-8gb",
    "jetson-orin-16gb",
    "jetson-agx-orin-32gb",
    "jetson-agx-orin-64gb",
    "rtx-3060-12gb",
    "rtx-4060-8gb",
    "rtx-4070-12gb",
    "rtx-4090-24gb",
    "a100-40gb",
    "h200-141gb",
)  # the packaged SD3-medium configs, for `model plan` without weights
console = Console()
err_console = Console(stderr=True)

model_app = typer.Typer(help="Inspect models and their placement.", no_args_is_help=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        envvar="DEDGEAI_MODEL",
        help="'tiny' (built-in, images are noise) or a weights path.",
    ),
]
BudgetOpt = Annotated[
    str | None,
    typer.Option("--budget", help="Memory budget, e.g. 8GiB; default: free memory minus a margin."),
]
SizeOpt = Annotated[str, typer.Option("--size", help="WIDTHxHEIGHT, multiples of 16 in 256..2048.")]
PlacementOpt = Annotated[
    str | None,
    typer.Option(
        "--placement", help="Force resident, staged-encoders, cpu-encoders or sequential."
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="cuda, cuda:N or cpu; default: cuda if present.")
]


def _fail(message: str, code: ExitCode) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=int(code))


def _parse_size(size: str) -> tuple[int, int]:
    try:
        return parse_size(size)
    except SizeError as exc:
        raise _fail(f"--size: {exc}", ExitCode.BAD_INPUT) from None


def _parse_budget(budget: str | None) -> int | None:
    if budget is None:
        return None
    from dedgeai.models.placement import parse_budget

    try:
        return parse_budget(budget)
    except ValueError as exc:
        raise _fail(str(exc), ExitCode.BAD_INPUT) from None


def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    model: ModelOpt = "tiny",
    steps: Annotated[int, typer.Option("--steps", help="Denoising steps, 1..100.")] = 28,
    size: SizeOpt = "1024x1024",
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed gives the same image.")
    ] = 1,
    out: Annotated[Path, typer.Option("--out", help="Where to write the PNG.")] = Path("out.png"),
    budget: BudgetOpt = None,
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "",
    guidance: Annotated[
        float, typer.Option("--guidance", help="Classifier-free guidance scale.")
    ] = 5.0,
    placement: PlacementOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Generate one image and print the plan, the stage timings and the peak memory."""
    width, height = _parse_size(size)
    request = GenerationRequest(prompt, negative, steps, width, height, guidance, seed)
    try:
        request.validate()
    except InvalidRequest as exc:
        raise _fail(str(exc), ExitCode.BAD_INPUT) from None
    from dedgeai.models.factory import BackendSpec, create_backend

    spec = BackendSpec(
        model=model, vram_budget_bytes=_parse_budget(budget), device=device, placement=placement
    )
    try:
        with console.status("loading model"):
            backend = create_backend(spec)
        console.print(str(backend.memory_plan()), highlight=False)
        columns = (TextColumn("denoising"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("denoise", total=request.steps)

            def on_step(done: int, total: int) -> None:
                progress.update(task, completed=done)

            result = backend.generate(request, on_step)
        backend.close()
    except ModelError as exc:  # bad input, weights or budget: 2; cancelled: 4; else 1
        raise _fail(str(exc), exit_code_of(exc)[1]) from None
    try:
        out.write_bytes(result.png)
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}", ExitCode.BAD_INPUT) from None
    t = result.timings
    console.print(
        f"timings: encode {t.encode_s:.3f} s, denoise {t.denoise_s:.3f} s "
        f"({result.steps / max(t.denoise_s, 1e-9):.2f} steps/s), decode {t.decode_s:.3f} s, "
        f"total {t.total_s:.3f} s",
        highlight=False,
    )
    peak = (
        "n/a (CPU run)"
        if result.peak_memory_bytes is None
        else f"{result.peak_memory_bytes / GIB:.2f} GiB"
    )
    console.print(f"peak memory: {peak}", highlight=False)
    console.print(
        f"wrote {out} ({result.width}x{result.height}, seed {result.seed}, {result.backend})"
    )


PlanModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        envvar="DEDGEAI_MODEL",
        help="'sd3-medium' (the real layout, from the packaged configs: no weights needed), "
        "'tiny' (the built-in test model) or a weights path.",
    ),
]
PlanDeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="A board to plan for without having it: "
        + ", ".join(PRESET_NAMES)
        + "; or cuda, cuda:N, cpu (default: this machine).",
    ),
]


def _model_line(model: str) -> str:
    if model == PLAN_ONLY_MODEL:
        return "model: sd3-medium (the real layout, from the packaged configs)"
    if model in ("", "tiny"):
        return "model: tiny (the built-in TEST model, not SD3-medium: use --model sd3-medium)"
    return f"model: weights at {model}"


@model_app.command("plan")
def plan(
    model: PlanModelOpt = PLAN_ONLY_MODEL,
    budget: BudgetOpt = None,
    size: SizeOpt = "1024x1024",
    placement: PlacementOpt = None,
    device: PlanDeviceOpt = None,
    unified: Annotated[
        bool,
        typer.Option(
            "--unified", help="Plan for a unified-memory GPU board (a Jetson); needs --budget."
        ),
    ] = False,
) -> None:
    """Will the model fit? Print the plan, its predicted peak and the expected slow-down.

    Loads no weights. ``--device jetson-orin-8gb`` (or another preset) answers for that board;
    ``--device cuda --budget 8GiB`` or ``--unified --budget 8GiB`` for any GPU this machine
    need not have. Peaks and slow-downs are estimates (see docs/models.md).
    """
    from dedgeai.models.presets import PRESETS, slowdown_text

    width, height = _parse_size(size)
    budget_bytes = _parse_budget(budget)
    board = PRESETS.get(device.strip().lower()) if device else None
    try:
        configs, has_files = _plan_configs(model)
        if board is not None:
            target = board.target() if has_files else _no_files(board.target())
            budget_bytes = board.budget_bytes if budget_bytes is None else budget_bytes
            console.print(f"device: {board.summary()}", highlight=False, soft_wrap=True)
        else:
            target, budget_bytes = _plan_target(device, unified, has_files, budget_bytes)
        console.print(_model_line(model), highlight=False, soft_wrap=True)
        from dedgeai.models.sd3_backend import make_plan

        chosen = make_plan(configs, target, budget_bytes, (width, height), placement)
    except ModelError as exc:
        label, code = exit_code_of(exc)
        raise _fail(f"{label}: {exc}" if label != "error" else str(exc), code) from None
    except ValueError as exc:
        raise _fail(str(exc), ExitCode.BAD_INPUT) from None
    console.print(str(chosen), highlight=False)
    peak, room = chosen.predicted_peak_bytes / GIB, budget_bytes / GIB
    fits = chosen.predicted_peak_bytes <= budget_bytes
    verdict = "fits" if fits else "does NOT fit (forced placement)"
    console.print(
        f"answer: {verdict}: plan {chosen.kind.value}"
        f"{' with VAE tiling' if chosen.vae_tiling else ''}, predicted peak {peak:.2f} GiB "
        f"of {room:.2f} GiB (estimate)",
        highlight=False,
        soft_wrap=True,
    )
    slowdown = slowdown_text(chosen.kind, chosen.vae_tiling)
    console.print(f"expected slow-down: {slowdown}", highlight=False, soft_wrap=True)
    if not fits:
        raise typer.Exit(int(ExitCode.BAD_INPUT))


def _plan_configs(model: str) -> tuple[SD3Configs, bool]:
    """The configs to plan with, and whether weight files exist to re-read staged modules."""
    from dedgeai.models.components import SD3Configs
    from dedgeai.models.tiny import tiny_configs
    from dedgeai.models.weights import resolve_layout

    if model == PLAN_ONLY_MODEL:
        return SD3Configs.builtin("sd3_medium"), True  # a deployed board has the files
    if model in ("", "tiny"):
        return tiny_configs(), False
    return resolve_layout(model).configs, True


def _no_files(target: Target) -> Target:
    from dedgeai.models.placement import Target

    return Target(target.device, target.unified_memory, reload_from_files=False)


def _plan_target(
    device: str | None, unified: bool, has_files: bool, budget_bytes: int | None
) -> tuple[Target, int]:
    """The target and budget for ``--device cuda|cpu`` and ``--unified`` (no preset)."""
    from dedgeai.models.placement import Target

    if unified or (device is not None and device.startswith("cuda")):
        gpu = device or "cuda"
        if not gpu.startswith("cuda"):
            raise ValueError(f"--unified plans for a GPU board; --device {device!r} is not one")
        if unified:  # a Jetson: host memory is its GPU memory, and fp16 on the GPU
            if budget_bytes is None:
                raise ValueError("--unified needs --budget (the board's free memory, e.g. 6GiB)")
            return Target(gpu, unified_memory=True, reload_from_files=has_files), budget_bytes
        import torch

        if not torch.cuda.is_available():
            if budget_bytes is None:
                raise ValueError("planning for a GPU this machine lacks needs --budget")
            return Target(gpu, unified_memory=False), budget_bytes
    import torch  # noqa: F401 (devices needs it; planning for this machine)

    from dedgeai.models import devices

    where = devices.resolve_device(device)
    target = devices.target_for(where, reload_from_files=has_files)
    if budget_bytes is None:
        budget_bytes = devices.default_budget_bytes(where)
    return target, budget_bytes


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.add_typer(model_app, name="model")
