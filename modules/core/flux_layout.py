"""Flux.1 transformer weights: Black Forest Labs' single-file layout <-> diffusers' FluxTransformer2DModel.

One table serves both directions. Each row maps BFL names to diffusers names for one block kind:
plain renames, fused q/k/v (BFL) split into three (diffusers), the single blocks' fused
q/k/v/MLP input projection, and the final layer's (shift, scale) modulation that diffusers keeps as
(scale, shift). The config comes from tensor shapes alone, so a full-size file and a tiny test
model go through the same code.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import torch

from .checkpoint_shapes import Shapes, UnsupportedCheckpoint, indices, marker_prefix, require

# BFL name -> diffusers name, outside the blocks
_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {  # double_blocks.{i}.X -> transformer_blocks.{i}.Y
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_DOUBLE_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
               "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
_SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")  # BFL linear1, in this order
_FINAL_MOD = ("final_layer.adaLN_modulation.1", "norm_out.linear")  # (shift, scale) <-> (scale, shift)

MARKER = "double_blocks.0.img_attn.qkv.weight"


def find_prefix(shapes: Shapes) -> str | None:
    """The prefix before BFL's block names ("", "model.diffusion_model.", ...); None: not Flux."""
    return marker_prefix(shapes, MARKER)


def config_from_shapes(shapes: Shapes, prefix: str) -> dict:
    """FluxTransformer2DModel's config from the BFL tensors' shapes."""
    p = prefix
    hidden, in_channels = require(shapes, p + "img_in.weight")
    head_dim = require(shapes, p + "double_blocks.0.img_attn.norm.query_norm.scale")[0]
    if hidden % head_dim:
        raise UnsupportedCheckpoint(f"Flux hidden size {hidden} is not a multiple of its head size {head_dim}")
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "num_layers": len(indices(shapes, re.escape(p) + r"double_blocks\.(\d+)\.")),
        "num_single_layers": len(indices(shapes, re.escape(p) + r"single_blocks\.(\d+)\.")),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": require(shapes, p + "txt_in.weight")[1],
        "pooled_projection_dim": require(shapes, p + "vector_in.in_layer.weight")[1],
        "guidance_embeds": p + "guidance_in.in_layer.weight" in shapes,
        "axes_dims_rope": rope_axes(head_dim),
    }


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Flux's rotary axes (index, row, column): (16, 56, 56) for its 128-channel heads; other head
    sizes keep those proportions (each axis needs an even width)."""
    if head_dim == 128:
        return (16, 56, 56)
    axes = (head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16)
    if sum(axes) != head_dim or any(a % 2 for a in axes):
        raise UnsupportedCheckpoint(f"Flux heads of {head_dim} channels do not split into rotary axes")
    return axes


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _renames(config: dict) -> list[tuple[str, str]]:
    """(BFL name, diffusers name) of every tensor that is only renamed (weights and biases)."""
    pairs = []
    for bfl, ours in _TOP.items():
        if bfl.startswith("guidance_in") and not config["guidance_embeds"]:
            continue
        pairs += [(f"{bfl}.weight", f"{ours}.weight"), (f"{bfl}.bias", f"{ours}.bias")]
    for i in range(config["num_layers"]):
        for bfl, ours in _DOUBLE.items():
            for kind in ("weight", "bias"):
                pairs.append((f"double_blocks.{i}.{bfl}.{kind}", f"transformer_blocks.{i}.{ours}.{kind}"))
        for bfl, ours in _DOUBLE_NORMS.items():
            pairs.append((f"double_blocks.{i}.{bfl}", f"transformer_blocks.{i}.{ours}"))
    for i in range(config["num_single_layers"]):
        for bfl, ours in _SINGLE.items():
            for kind in ("weight", "bias"):
                pairs.append((f"single_blocks.{i}.{bfl}.{kind}", f"single_transformer_blocks.{i}.{ours}.{kind}"))
        for bfl, ours in _SINGLE_NORMS.items():
            pairs.append((f"single_blocks.{i}.{bfl}", f"single_transformer_blocks.{i}.{ours}"))
    return pairs


def _fused(config: dict) -> list[tuple[str, tuple[str, ...], Callable[[int], list[int]]]]:
    """(BFL name, diffusers names, split sizes from the fused tensor's length) of fused tensors."""
    hidden = config["attention_head_dim"] * config["num_attention_heads"]
    rows = []
    for i in range(config["num_layers"]):
        for bfl, parts in _DOUBLE_QKV.items():
            for kind in ("weight", "bias"):
                rows.append((f"double_blocks.{i}.{bfl}.{kind}",
                             tuple(f"transformer_blocks.{i}.{part}.{kind}" for part in parts),
                             lambda n: [n // 3] * 3))
    for i in range(config["num_single_layers"]):
        for kind in ("weight", "bias"):
            rows.append((f"single_blocks.{i}.linear1.{kind}",
                         tuple(f"single_transformer_blocks.{i}.{part}.{kind}" for part in _SINGLE_FUSED),
                         lambda n, h=hidden: [h, h, h, n - 3 * h]))
    return rows


def fused_layers(config: dict) -> list[tuple[str, tuple[str, ...], Callable[[int], list[int]]]]:
    """(BFL layer, diffusers modules, split sizes) of the fused layers, as module names (no .weight)."""
    return [(bfl[: -len(".weight")], tuple(p[: -len(".weight")] for p in parts), sizes)
            for bfl, parts, sizes in _fused(config) if bfl.endswith(".weight")]


def renamed_layers(config: dict) -> list[tuple[str, str]]:
    """(BFL layer, diffusers module) of the layers that are only renamed, as module names."""
    return [(bfl[: -len(".weight")], ours[: -len(".weight")]) for bfl, ours in _renames(config)
            if bfl.endswith(".weight") and ours.endswith(".weight")]


def to_diffusers(state: Mapping[str, torch.Tensor], config: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """BFL tensors (under ``prefix``) -> FluxTransformer2DModel's state dict."""
    out = {}
    try:
        for bfl, ours in _renames(config):
            out[ours] = state[prefix + bfl]
        for bfl, parts, sizes in _fused(config):
            tensor = state[prefix + bfl]
            out.update(zip(parts, torch.split(tensor, sizes(tensor.shape[0]), dim=0)))
        for kind in ("weight", "bias"):
            out[f"{_FINAL_MOD[1]}.{kind}"] = _swap_halves(state[f"{prefix}{_FINAL_MOD[0]}.{kind}"])
    except KeyError as exc:
        raise UnsupportedCheckpoint(f"Flux checkpoint is missing the tensor {exc.args[0]!r}") from None
    return out


def to_bfl(state: Mapping[str, torch.Tensor], config: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """FluxTransformer2DModel's state dict -> BFL tensors under ``prefix`` (what Flux files hold)."""
    out = {}
    for bfl, ours in _renames(config):
        out[prefix + bfl] = state[ours]
    for bfl, parts, _sizes in _fused(config):
        out[prefix + bfl] = torch.cat([state[part] for part in parts], dim=0)
    for kind in ("weight", "bias"):
        out[f"{prefix}{_FINAL_MOD[0]}.{kind}"] = _swap_halves(state[f"{_FINAL_MOD[1]}.{kind}"])
    return out
