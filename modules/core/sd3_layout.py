"""SD3 / SD3.5 MMDiT weights: Stability's single-file layout <-> diffusers' SD3Transformer2DModel.

As for Flux (``flux_layout``), one table serves both directions: renames, fused q/k/v split into
three, and the (shift, scale) modulations diffusers keeps as (scale, shift) — the final layer's and
the last block's context modulation (that block only conditions the picture, "context pre only", so
it has no context output projection or MLP). SD3.5 adds q/k RMS norms and, in Medium, a second
attention on the picture tokens in the first blocks ("dual attention"). The config comes from the
tensors' shapes.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from .checkpoint_shapes import Shapes, UnsupportedCheckpoint, indices, marker_prefix, require

MARKER = "joint_blocks.0.x_block.attn.qkv.weight"
_TOP = {"x_embedder.proj": "pos_embed.proj", "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
        "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
        "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2", "context_embedder": "context_embedder",
        "final_layer.linear": "proj_out"}
_BLOCK = {"x_block.attn.proj": "attn.to_out.0", "x_block.adaLN_modulation.1": "norm1.linear",
          "x_block.mlp.fc1": "ff.net.0.proj", "x_block.mlp.fc2": "ff.net.2"}
_BLOCK_CONTEXT = {"context_block.attn.proj": "attn.to_add_out", "context_block.adaLN_modulation.1": "norm1_context.linear",
                  "context_block.mlp.fc1": "ff_context.net.0.proj", "context_block.mlp.fc2": "ff_context.net.2"}
_NORMS = {"x_block.attn.ln_q": "attn.norm_q", "x_block.attn.ln_k": "attn.norm_k",
          "context_block.attn.ln_q": "attn.norm_added_q", "context_block.attn.ln_k": "attn.norm_added_k"}
_QKV = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_DUAL = {"x_block.attn2.proj": "attn2.to_out.0"}
_DUAL_NORMS = {"x_block.attn2.ln_q": "attn2.norm_q", "x_block.attn2.ln_k": "attn2.norm_k"}
_DUAL_QKV = {"x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}
HEAD_DIM = 64  # SD3's heads are 64 channels wide (its hidden size is 64 x depth)


def find_prefix(shapes: Shapes) -> str | None:
    """The prefix before Stability's block names; None: not SD3."""
    return marker_prefix(shapes, MARKER)


def config_from_shapes(shapes: Shapes, prefix: str) -> dict:
    p = prefix
    hidden, in_channels, patch, _ = require(shapes, p + "x_embedder.proj.weight")
    layers = len(indices(shapes, re.escape(p) + r"joint_blocks\.(\d+)\."))
    head_dim = shapes[p + "joint_blocks.0.x_block.attn.ln_q.weight"][0] if p + "joint_blocks.0.x_block.attn.ln_q.weight" \
        in shapes else HEAD_DIM
    positions = require(shapes, p + "pos_embed")[1]
    side = math.isqrt(positions)
    if side * side != positions or hidden % head_dim:
        raise UnsupportedCheckpoint("SD3 positional embeddings or head sizes do not fit a square grid")
    return {
        "sample_size": min(128, side),
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": require(shapes, p + "context_embedder.weight")[1],
        "caption_projection_dim": require(shapes, p + "context_embedder.weight")[0],
        "pooled_projection_dim": require(shapes, p + "y_embedder.mlp.0.weight")[1],
        "out_channels": require(shapes, p + "final_layer.linear.weight")[0] // (patch * patch),
        "pos_embed_max_size": side,
        "dual_attention_layers": tuple(i for i in range(layers) if p + f"joint_blocks.{i}.x_block.attn2.qkv.weight" in shapes),
        "qk_norm": "rms_norm" if p + "joint_blocks.0.x_block.attn.ln_q.weight" in shapes else None,
    }


def _rows(config: dict) -> tuple[list[tuple[str, str]], list[tuple[str, tuple[str, ...]]], list[tuple[str, str]]]:
    """(renames, fused q/k/v, swapped modulations) as (file name, diffusers name) pairs, with .weight/.bias."""
    renames, fused, swapped = [("pos_embed", "pos_embed.pos_embed")], [], []
    both = ("weight", "bias")
    for ours, theirs in _TOP.items():
        renames += [(f"{ours}.{k}", f"{theirs}.{k}") for k in both]
    last = config["num_layers"] - 1
    norms = config["qk_norm"] is not None
    for i in range(config["num_layers"]):
        b, d = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        tables = [_BLOCK] + ([{k: v for k, v in _BLOCK_CONTEXT.items() if "adaLN" not in k}] if i != last else [])
        if i in config["dual_attention_layers"]:
            tables.append(_DUAL)
        for table in tables:
            renames += [(f"{b}{ours}.{k}", f"{d}{theirs}.{k}") for ours, theirs in table.items() for k in both]
        modulation = (f"{b}context_block.adaLN_modulation.1", f"{d}norm1_context.linear")
        (swapped if i == last else renames).extend((f"{modulation[0]}.{k}", f"{modulation[1]}.{k}") for k in both)
        if norms:
            renames += [(f"{b}{ours}.weight", f"{d}{theirs}.weight") for ours, theirs in _NORMS.items()]
            if i in config["dual_attention_layers"]:
                renames += [(f"{b}{ours}.weight", f"{d}{theirs}.weight") for ours, theirs in _DUAL_NORMS.items()]
        qkv = dict(_QKV, **(_DUAL_QKV if i in config["dual_attention_layers"] else {}))
        fused += [(f"{b}{ours}.{k}", tuple(f"{d}{t}.{k}" for t in theirs)) for ours, theirs in qkv.items() for k in both]
    swapped += [(f"final_layer.adaLN_modulation.1.{k}", f"norm_out.linear.{k}") for k in both]
    return renames, fused, swapped


def lora_layers(config: dict) -> tuple[list[tuple[str, tuple[str, ...]]], list[tuple[str, str]]]:
    """(fused layers, renamed layers) as module names (no .weight): what kohya's SD3 LoRAs name."""
    renames, fused, _swapped = _rows(config)
    strip = lambda name: name[: -len(".weight")]  # noqa: E731
    return ([(strip(ours), tuple(strip(p) for p in parts)) for ours, parts in fused if ours.endswith(".weight")],
            [(strip(ours), strip(theirs)) for ours, theirs in renames if ours.endswith(".weight")])


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_diffusers(state: Mapping[str, torch.Tensor], config: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    renames, fused, swapped = _rows(config)
    out = {}
    try:
        for ours, theirs in renames:
            out[theirs] = state[prefix + ours]
        for ours, parts in fused:
            out.update(zip(parts, state[prefix + ours].chunk(3, dim=0)))
        for ours, theirs in swapped:
            out[theirs] = _swap_halves(state[prefix + ours])
    except KeyError as exc:
        raise UnsupportedCheckpoint(f"SD3 checkpoint is missing the tensor {exc.args[0]!r}") from None
    return out


def to_sd3(state: Mapping[str, torch.Tensor], config: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    renames, fused, swapped = _rows(config)
    out = {prefix + ours: state[theirs] for ours, theirs in renames}
    out.update({prefix + ours: torch.cat([state[p] for p in parts], dim=0) for ours, parts in fused})
    out.update({prefix + ours: _swap_halves(state[theirs]) for ours, theirs in swapped})
    return out
