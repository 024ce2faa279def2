"""`dedgeai generate` and `dedgeai model plan`: make one image, or show where the weights would go.

Exit codes: 0 done · 1 internal model error · 2 bad input, weights or budget · 4 cancelled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dedgeai.agent.exit_codes import ExitCode
from dedgeai.models.backend import GenerationRequest
from dedgeai.models.errors import (
    GenerationCancelled,
    InvalidRequest,
    ModelError,
    PlacementError,
    WeightsError,
)

GIB = 2**30
PLAN_ONLY_MODEL = "sd3-medium"  # the packaged SD3-medium configs, for `model plan` without weights
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
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=int(code))


def _parse_size(size: str) -> tuple[int, int]:
    parts = size.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise _fail(f"--size must look like 1024x1024, got {size!r}", ExitCode.BAD_INPUT)
    return int(parts[0]), int(parts[1])


def _parse_budget(budget: str | None) -> int | None:
    if budget is None:
        return None
    from dedgeai.models.placement import parse_bytes

    try:
        return parse_bytes(budget)
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
    except (InvalidRequest, WeightsError, PlacementError) as exc:
        raise _fail(str(exc), ExitCode.BAD_INPUT) from None
    except GenerationCancelled as exc:
        raise _fail(str(exc), ExitCode.TASK_FAILED) from None
    except ModelError as exc:
        raise _fail(str(exc), ExitCode.INTERNAL) from None
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


@model_app.command("plan")
def plan(
    model: ModelOpt = "tiny",
    budget: BudgetOpt = None,
    size: SizeOpt = "1024x1024",
    placement: PlacementOpt = None,
    device: DeviceOpt = None,
    unified: Annotated[
        bool, typer.Option("--unified", help="Plan for a unified-memory board (Jetson) instead.")
    ] = False,
) -> None:
    """Print the placement plan and its predicted peak, without loading any weights.

    ``--model sd3-medium`` plans with the packaged SD3-medium configs (no files needed);
    ``--device cuda`` with ``--budget`` plans for a GPU this machine need not have.
    """
    import torch

    from dedgeai.models import devices
    from dedgeai.models.components import SD3Configs
    from dedgeai.models.placement import Target
    from dedgeai.models.sd3_backend import make_plan
    from dedgeai.models.tiny import tiny_configs
    from dedgeai.models.weights import resolve_layout

    width, height = _parse_size(size)
    budget_bytes = _parse_budget(budget)
    try:
        layout = None if model in ("", "tiny", PLAN_ONLY_MODEL) else resolve_layout(model)
        if layout is not None:
            configs = layout.configs
        else:
            configs = (
                SD3Configs.builtin("sd3_medium") if model == PLAN_ONLY_MODEL else tiny_configs()
            )
        if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
            if budget_bytes is None:
                raise _fail(
                    "planning for a GPU this machine lacks needs --budget", ExitCode.BAD_INPUT
                )
            target = Target(
                device, unified_memory=unified, reload_from_files=unified and layout is not None
            )
        else:
            where = devices.resolve_device(device)
            target = devices.target_for(where, reload_from_files=layout is not None)
            if budget_bytes is None:
                budget_bytes = devices.default_budget_bytes(where)
        chosen = make_plan(configs, target, budget_bytes, (width, height), placement)
    except (InvalidRequest, WeightsError, PlacementError, ValueError) as exc:
        raise _fail(str(exc), ExitCode.BAD_INPUT) from None
    console.print(str(chosen), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.add_typer(model_app, name="model")
