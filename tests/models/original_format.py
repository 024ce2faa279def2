"""Test helper: write diffusers-named SD3 weights in the authors' original key layout.

The inverse of diffusers' single-file converters, for the shapes the tiny model uses (no dual
attention, no QK norm). If it were wrong, loading the three-file layout would fail strictly
or give a different image, which the tests check.
"""

from __future__ import annotations

import re

import torch


def _swap(t: torch.Tensor) -> torch.Tensor:  # (shift, scale) <-> (scale, shift); its own inverse
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def mmdit_to_original(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    out = {
        "pos_embed": sd["pos_embed.pos_embed"],
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "context_embedder.weight": sd["context_embedder.weight"],
        "context_embedder.bias": sd["context_embedder.bias"],
        "final_layer.linear.weight": sd["proj_out.weight"],
        "final_layer.linear.bias": sd["proj_out.bias"],
        "final_layer.adaLN_modulation.1.weight": _swap(sd["norm_out.linear.weight"]),
        "final_layer.adaLN_modulation.1.bias": _swap(sd["norm_out.linear.bias"]),
    }
    for ours, theirs in (("timestep_embedder", "t_embedder"), ("text_embedder", "y_embedder")):
        for n, m in (("1", "0"), ("2", "2")):
            for p in ("weight", "bias"):
                out[f"{theirs}.mlp.{m}.{p}"] = sd[f"time_text_embed.{ours}.linear_{n}.{p}"]
    for i in range(num_layers):
        b, j = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        last = i == num_layers - 1
        for p in ("weight", "bias"):
            out[f"{j}.x_block.attn.qkv.{p}"] = torch.cat(
                [sd[f"{b}.attn.to_{x}.{p}"] for x in "qkv"]
            )
            out[f"{j}.context_block.attn.qkv.{p}"] = torch.cat(
                [sd[f"{b}.attn.add_{x}_proj.{p}"] for x in "qkv"]
            )
            out[f"{j}.x_block.attn.proj.{p}"] = sd[f"{b}.attn.to_out.0.{p}"]
            out[f"{j}.x_block.adaLN_modulation.1.{p}"] = sd[f"{b}.norm1.linear.{p}"]
            ctx_mod = sd[f"{b}.norm1_context.linear.{p}"]
            out[f"{j}.context_block.adaLN_modulation.1.{p}"] = _swap(ctx_mod) if last else ctx_mod
            out[f"{j}.x_block.mlp.fc1.{p}"] = sd[f"{b}.ff.net.0.proj.{p}"]
            out[f"{j}.x_block.mlp.fc2.{p}"] = sd[f"{b}.ff.net.2.{p}"]
            if not last:
                out[f"{j}.context_block.attn.proj.{p}"] = sd[f"{b}.attn.to_add_out.{p}"]
                out[f"{j}.context_block.mlp.fc1.{p}"] = sd[f"{b}.ff_context.net.0.proj.{p}"]
                out[f"{j}.context_block.mlp.fc2.{p}"] = sd[f"{b}.ff_context.net.2.{p}"]
    return {f"model.diffusion_model.{k}": v.contiguous() for k, v in out.items()}


def vae_to_original(sd: dict[str, torch.Tensor], num_up_blocks: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, value in sd.items():
        k = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", k)
        k = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", k)
        k = re.sub(
            r"up_blocks\.(\d+)\.resnets\.",
            lambda m: f"up.{num_up_blocks - 1 - int(m.group(1))}.block.",
            k,
        )
        k = re.sub(
            r"up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"up.{num_up_blocks - 1 - int(m.group(1))}.upsample.",
            k,
        )
        if "mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
            for ours, theirs in attn.items():
                k = k.replace(f"attn_1.{ours}.", f"attn_1.{theirs}.")
            if value.dim() == 2:
                value = value[:, :, None, None]
        out[f"first_stage_model.{k}"] = value.contiguous()
    return out
