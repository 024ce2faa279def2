"""reSD3-m backend: diffusers' ``StableDiffusion3Pipeline`` without T5, placed by a memory plan.

One request runs three timed stages: encode (CLIP-L + CLIP-G, through the prompt cache),
denoise (the pipeline's own loop, ``on_step`` via ``callback_on_step_end``) and decode (VAE).
fp16 on a GPU, fp32 on the CPU.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from diffusers import StableDiffusion3Pipeline

from dedgeai.models import devices
from dedgeai.models.backend import (
    BackendSpec,
    GenerationRequest,
    GenerationResult,
    SpeedProfile,
    StageTimings,
    StepCallback,
)
from dedgeai.models.components import MODULE_NAMES, SD3Configs, SD3Modules, measure_sizes
from dedgeai.models.errors import GenerationCancelled, InvalidRequest, PlacementError
from dedgeai.models.placement import (
    CLIP_TOKENS,
    GIB,
    Architecture,
    PlacementKind,
    PlacementPlan,
    Residency,
    Target,
    Workload,
    build_plan,
    choose_plan,
)
from dedgeai.models.prompt_cache import PromptEmbedding, PromptEmbeddingCache
from dedgeai.models.sizes import format_size
from dedgeai.models.staging import StateLoader, apply_plan, set_vae_tiling
from dedgeai.models.tiny import TINY_WARNING, build_tiny, tiny_configs
from dedgeai.models.weights import (
    WeightsLayout,
    load_module,
    load_tokenizers,
    read_state,
    resolve_layout,
)

logger = logging.getLogger(__name__)

# diffusers fills the dropped T5's slots with this many zero tokens (its max_sequence_length).
T5_ZERO_TOKENS = 256
DEFAULT_PLAN_SIZE = (1024, 1024)
PROFILE_PROMPT = "a photograph of a lighthouse at dusk"


class _PlacedPipeline(StableDiffusion3Pipeline):
    """The stock pipeline, told where to compute: its modules' homes vary with the plan."""

    _compute_device: torch.device

    @property
    def _execution_device(self) -> torch.device:
        return self._compute_device


def _pipeline(modules: SD3Modules, device: torch.device) -> _PlacedPipeline:
    pipe = _PlacedPipeline(
        transformer=modules.transformer,
        scheduler=modules.scheduler,
        vae=modules.vae,
        text_encoder=modules.text_encoder,
        tokenizer=modules.tokenizer,
        text_encoder_2=modules.text_encoder_2,
        tokenizer_2=modules.tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe._compute_device = device
    pipe.set_progress_bar_config(disable=True)
    return pipe


class SD3Backend:
    """reSD3-m on one device. Build it with :meth:`from_spec` (or directly from modules in tests)."""

    emulated = False

    def __init__(
        self,
        modules: SD3Modules,
        configs: SD3Configs,
        plan: PlacementPlan,
        *,
        name: str,
        loaders: Mapping[str, StateLoader] | None = None,
        t5_zero_tokens: int = T5_ZERO_TOKENS,
        cache_capacity: int = 32,
    ) -> None:
        self.name = name
        self.configs = configs
        self.plan = plan
        self.t5_zero_tokens = t5_zero_tokens
        self._sizes = measure_sizes(configs)
        self._arch = Architecture.from_configs(configs)
        self._placement = apply_plan(plan, modules, loaders)
        self._modules = modules
        self._pipe = _pipeline(modules, self._placement.device)
        self.cache = PromptEmbeddingCache(cache_capacity)

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def from_spec(
        cls, spec: BackendSpec, plan_size: tuple[int, int] = DEFAULT_PLAN_SIZE
    ) -> SD3Backend:
        """``spec.model``: ``"tiny"`` (or empty) for the built-in model, else a weights path."""
        try:
            device = devices.resolve_device(spec.device)
        except (ValueError, RuntimeError) as exc:
            raise PlacementError(str(exc)) from exc
        tiny = spec.model in ("", "tiny")
        layout = None if tiny else resolve_layout(spec.model)
        configs = tiny_configs() if tiny else layout.configs  # type: ignore[union-attr]
        target = devices.target_for(device, reload_from_files=layout is not None)
        budget = (
            spec.vram_budget_bytes
            if spec.vram_budget_bytes is not None
            else devices.default_budget_bytes(device)
        )
        plan = make_plan(configs, target, budget, plan_size, spec.placement)
        if layout is None:
            logger.warning(TINY_WARNING)
            return cls(build_tiny(), configs, plan, name=f"tiny-sd3({plan.kind.value})")
        modules, loaders = _load_for_plan(layout, plan)
        return cls(modules, configs, plan, name=f"reSD3-m({plan.kind.value})", loaders=loaders)

    # ---- Backend interface ----------------------------------------------------------------

    def memory_plan(self) -> PlacementPlan:
        return self.plan

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None = None
    ) -> GenerationResult:
        """Make one PNG; raises GenerationCancelled as soon as ``on_step`` returns False."""
        request.validate()
        tiling = self._tiling_for(request)
        set_vae_tiling(self._modules.vae, tiling)
        device = self._placement.device
        devices.reset_peak(device)
        started = time.perf_counter()
        cfg = request.guidance > 1.0
        if self.plan.staged_in("denoise") and self._cache_misses(request, cfg):
            self._placement.prefetch_("denoise")  # the MMDiT copy overlaps the CPU encode
        try:
            positive = self._embed(request.prompt)
            negative = self._embed(request.negative_prompt) if cfg else None
            devices.synchronize(device)
            encoded = time.perf_counter()
            with self._placement.stage("denoise"):
                latents = self._denoise(request, positive, negative, on_step)
                devices.synchronize(device)
            denoised = time.perf_counter()
            with self._placement.stage("decode"):
                png = self._decode(latents)
            finished = time.perf_counter()
        finally:
            self._placement.release_()
        peak = devices.read_peak(device)
        timings = StageTimings(
            encode_s=encoded - started,
            denoise_s=denoised - encoded,
            decode_s=finished - denoised,
            total_s=finished - started,
        )
        return GenerationResult(
            png=png,
            width=request.width,
            height=request.height,
            steps=request.steps,
            seed=request.seed,
            timings=timings,
            backend=self.name,
            emulated=False,
            peak_memory_bytes=peak,
            extra={
                "placement": self.plan.kind.value,
                "vae_tiling": tiling,
                "cache_hits": self.cache.hits,
            },
        )

    def profile(
        self, sizes: Sequence[tuple[int, int]] = ((512, 512),), steps: int = 4
    ) -> SpeedProfile:
        """Denoising steps per second per size, after one warm-up request (kernels, allocator)."""
        rates: dict[str, float] = {}
        first_w, first_h = sizes[0]
        self.generate(GenerationRequest(PROFILE_PROMPT, steps=1, width=first_w, height=first_h))
        for width, height in sizes:
            result = self.generate(
                GenerationRequest(PROFILE_PROMPT, steps=steps, width=width, height=height)
            )
            rates[format_size(width, height)] = steps / max(result.timings.denoise_s, 1e-9)
        return SpeedProfile(steps_per_second=rates, backend=self.name, emulated=False)

    def close(self) -> None:
        self._placement.release_()
        self.cache.clear()
        if self._placement.device.type == "cuda":
            for name in MODULE_NAMES:
                if name not in self._placement.staged:
                    self._modules.module(name).to("cpu")
            torch.cuda.empty_cache()

    # ---- stages ---------------------------------------------------------------------------

    def _tiling_for(self, request: GenerationRequest) -> bool:
        """Tiling as planned; a request larger than planned may turn it on, or fail clearly."""
        plan_pixels = self.plan.workload.width * self.plan.workload.height
        if request.width * request.height <= plan_pixels or self.plan.budget_bytes is None:
            return self.plan.vae_tiling
        for tiling in sorted({self.plan.vae_tiling, True}):
            bigger = build_plan(
                self.plan.kind, self._sizes, self._arch, self.plan.target,
                self._workload(request.width, request.height), vae_tiling=tiling,
            )  # fmt: skip
            if bigger.predicted_peak_bytes <= self.plan.budget_bytes:
                return tiling
        raise PlacementError(
            f"{request.width}x{request.height} does not fit the {self.plan.budget_bytes / GIB:.2f} GiB budget "
            f"with the {self.plan.kind.value} placement; use at most "
            f"{self.plan.workload.width}x{self.plan.workload.height} or a larger budget"
        )

    def _workload(self, width: int, height: int) -> Workload:
        return Workload(width, height, context_tokens=CLIP_TOKENS + self.t5_zero_tokens)

    def _cache_misses(self, request: GenerationRequest, cfg: bool) -> bool:
        return request.prompt not in self.cache or (
            cfg and request.negative_prompt not in self.cache
        )

    @torch.no_grad()
    def _embed(self, text: str) -> PromptEmbedding:
        cached = self.cache.get(text)
        if cached is not None:
            return cached
        where = self._placement.encode_device
        with self._placement.stage("encode"):
            tokens, _, pooled, _ = self._pipe.encode_prompt(
                prompt=text,
                prompt_2=None,
                prompt_3=None,
                device=where,
                do_classifier_free_guidance=False,
                max_sequence_length=self.t5_zero_tokens,
            )
        embedding = PromptEmbedding(
            tokens=tokens.to("cpu", self._placement.dtype),
            pooled=pooled.to("cpu", self._placement.dtype),
        )
        self.cache.put(text, embedding)
        return embedding

    @torch.no_grad()
    def _denoise(
        self,
        request: GenerationRequest,
        positive: PromptEmbedding,
        negative: PromptEmbedding | None,
        on_step: StepCallback | None,
    ) -> torch.Tensor:
        device = self._placement.device

        def step_end(
            pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            if on_step is not None and on_step(index + 1, request.steps) is False:
                raise GenerationCancelled(index + 1, request.steps)
            return {}

        def to_device(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        output = self._pipe(
            prompt_embeds=to_device(positive.tokens),
            pooled_prompt_embeds=to_device(positive.pooled),
            negative_prompt_embeds=to_device(negative.tokens) if negative else None,
            negative_pooled_prompt_embeds=to_device(negative.pooled) if negative else None,
            height=request.height,
            width=request.width,
            num_inference_steps=request.steps,
            guidance_scale=float(request.guidance),
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="latent",
            callback_on_step_end=step_end,
            callback_on_step_end_tensor_inputs=[],
        )
        return output.images

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> bytes:
        vae = self._modules.vae
        scaled = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(scaled.to(next(vae.parameters()).dtype), return_dict=False)[0]
        pil = self._pipe.image_processor.postprocess(image, output_type="pil")[0]
        buffer = io.BytesIO()
        pil.save(buffer, format="PNG")
        return buffer.getvalue()


def make_plan(
    configs: SD3Configs,
    target: Target,
    budget_bytes: int,
    size: tuple[int, int],
    kind: str | None = None,
    t5_zero_tokens: int = T5_ZERO_TOKENS,
) -> PlacementPlan:
    """Choose by budget, or build the forced ``kind`` (a warning, not an error, if over budget)."""
    sizes, arch = measure_sizes(configs), Architecture.from_configs(configs)
    work = Workload(size[0], size[1], context_tokens=CLIP_TOKENS + t5_zero_tokens)
    if kind is None:
        return choose_plan(budget_bytes, sizes, arch, target, work)
    try:
        forced = PlacementKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in PlacementKind)
        raise InvalidRequest(f"unknown placement {kind!r}; choose one of {known}") from None
    plan = build_plan(forced, sizes, arch, target, work, budget_bytes=budget_bytes)
    if plan.predicted_peak_bytes > budget_bytes:
        tiled = build_plan(
            forced, sizes, arch, target, work, vae_tiling=True, budget_bytes=budget_bytes
        )
        plan = tiled if tiled.predicted_peak_bytes <= budget_bytes else plan
        if plan.predicted_peak_bytes > budget_bytes:
            logger.warning(
                "placement %s is predicted to need %.2f GiB, over the %.2f GiB budget",
                forced.value, plan.predicted_peak_bytes / GIB, budget_bytes / GIB,
            )  # fmt: skip
    return plan


def _load_for_plan(
    layout: WeightsLayout, plan: PlacementPlan
) -> tuple[SD3Modules, dict[str, StateLoader]]:
    """Load each module straight into its planned dtype; staged ones on unified memory stay empty."""
    from dedgeai.models.components import build_module, build_scheduler

    loaded: dict[str, torch.nn.Module] = {}
    loaders: dict[str, StateLoader] = {}
    for name in MODULE_NAMES:
        placement = plan.module(name)
        dtype = torch.float32 if placement.dtype == "float32" else torch.float16
        if placement.residency is Residency.STAGED and plan.target.reload_from_files:
            loaders[name] = partial(read_state, layout, name)
            loaded[name] = build_module(name, layout.configs, device="meta").to_empty(device="cpu")
            continue
        home = placement.run_device if placement.residency is Residency.RESIDENT else "cpu"
        loaded[name] = load_module(layout, name, torch.device(home), dtype)
    tokenizer, tokenizer_2 = load_tokenizers(layout)
    modules = SD3Modules(
        scheduler=build_scheduler(layout.configs),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        **loaded,
    )  # type: ignore[arg-type]
    return modules, loaders


__all__ = ["SD3Backend", "make_plan"]
