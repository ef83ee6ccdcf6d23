"""What a checkpoint's tensor shapes say, read the same way for every family.

Works on shapes alone (a safetensors header is enough), so a checkpoint of any size, full-size or a
tiny test model, goes through the same code. Everything the weights do not say (attention head
counts, activation functions, VAE scaling) comes from the family (``modules.core.families``):

- CLIP / OpenCLIP text encoders: 64-channel heads; OpenAI CLIP uses quick_gelu, OpenCLIP gelu.
- GroupNorm with 32 groups in UNet and VAE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

Shapes = Mapping[str, tuple[int, ...]]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SDXL_TIME_EMBED_DIM = 256  # each size/crop/score number of SDXL's extra conditioning, embedded in 256 channels


class UnsupportedCheckpoint(ValueError):
    """The file is readable but is not a Stable Diffusion model this version can run."""


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a checkpoint, in terms of transformers' CLIP classes."""

    prefix: str  # LDM key prefix of this encoder in the file
    layout: str  # "hf" (OpenAI CLIP, HF names) or "openclip" (fused qkv, resblocks)
    config: dict  # CLIPTextConfig keyword arguments
    with_projection: bool  # SDXL's second encoder also yields a pooled projection
    pad_token: str  # A1111 pads SD1 prompts with <|endoftext|>, OpenCLIP ones with "!"
    drop_last_layer: bool = False  # SD2 reads the penultimate layer (then the final norm)
    companion: str | None = None  # not in the checkpoint: a companion file of this kind ("clip_l", "t5xxl")


@dataclass(frozen=True)
class ModelSpec:
    family: str  # a registered family's name (modules.core.families): "sd1", "sd2", "sdxl", ...
    inpainting: bool
    prediction_type: str  # "epsilon" | "v_prediction"
    zero_terminal_snr: bool
    native_size: tuple[int, int]  # (width, height)
    unet_config: dict
    vae_config: dict
    text_encoders: tuple[TextEncoderSpec, ...]
    notes: tuple[str, ...] = field(default=())

    family_label: str = ""  # the family's own name for people ("SDXL refiner")

    @property
    def latent_channels(self) -> int:
        return self.vae_config["latent_channels"]

    @property
    def edit_model(self) -> bool:
        """instruct-pix2pix: the UNet also reads the init picture's latents (8 input channels)."""
        return self.unet_config.get("in_channels") == 2 * self.vae_config.get("latent_channels", 0) and not self.inpainting

    @property
    def label(self) -> str:
        name = self.family_label or self.family
        if self.prediction_type == "v_prediction":
            name += " (v-prediction)"
        if self.inpainting:
            name += " inpainting"
        if self.edit_model:
            name += " instruct-pix2pix"
        return name


def marker_prefix(shapes: Shapes, marker: str) -> str | None:
    """What stands before ``marker`` in the key that ends with it (a component's prefix: "",
    "model.diffusion_model.", ...), or None when no key does."""
    return next((k[: -len(marker)] for k in shapes if k.endswith(marker)), None)


def indices(shapes: Shapes, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) over all keys."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in shapes if (m := rx.match(k))}
    return sorted(found)


def require(shapes: Shapes, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise UnsupportedCheckpoint(f"checkpoint is missing the tensor '{key}'")
    return shapes[key]


def unet_config(shapes: Shapes, heads: Callable[[list[int]], int | list[int]]) -> dict:
    """The UNet's diffusers config; ``heads(block_out_channels)`` is the family's head convention."""
    p = UNET_PREFIX
    conv_in = require(shapes, p + "input_blocks.0.0.weight")
    model_channels, in_channels = conv_in[0], conv_in[1]
    out_channels = require(shapes, p + "out.2.weight")[0]

    input_ids = indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.")
    downsample_ids = [i for i in input_ids if p + f"input_blocks.{i}.0.op.weight" in shapes]
    levels = len(downsample_ids) + 1
    per_level = (len(input_ids) - 1 - len(downsample_ids)) / levels
    if per_level != int(per_level) or per_level < 1:
        raise UnsupportedCheckpoint("UNet input blocks do not form a regular level structure")
    layers_per_block = int(per_level)

    block_out, depths, cross_dims, linear_proj = [], [], set(), set()
    for level in range(levels):
        first = 1 + level * (layers_per_block + 1)
        res_out = require(shapes, p + f"input_blocks.{first}.0.out_layers.3.weight")
        block_out.append(res_out[0])
        blocks = indices(shapes, re.escape(p) + rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        depths.append(len(blocks))
        if blocks:
            cross_dims.add(require(shapes, p + f"input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight")[1])
            linear_proj.add(len(require(shapes, p + f"input_blocks.{first}.1.proj_in.weight")) == 2)

    mid_depth = len(indices(shapes, re.escape(p) + r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if mid_depth:
        cross_dims.add(require(shapes, p + "middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1])
        linear_proj.add(len(require(shapes, p + "middle_block.1.proj_in.weight")) == 2)
    if len(cross_dims) != 1 or len(linear_proj) != 1:
        raise UnsupportedCheckpoint("UNet has no cross-attention or mixes attention layouts")
    if mid_depth and depths[-1] and mid_depth != depths[-1]:
        raise UnsupportedCheckpoint("UNet middle block depth differs from its deepest level")
    # diffusers gives the middle block the last level's depth; a last level without attention ignores
    # its entry, so it carries the middle block's (SDXL refiner: levels 0, 4, 4, 0 and a middle of 4)
    layer_depths = [max(d, 1) for d in depths]
    if not depths[-1] and mid_depth:
        layer_depths[-1] = mid_depth
    layer_depths = tuple(layer_depths)

    config = {
        "sample_size": 64,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "block_out_channels": tuple(block_out),
        "layers_per_block": layers_per_block,
        "down_block_types": tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
        "up_block_types": tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "transformer_layers_per_block": layer_depths,
        "cross_attention_dim": cross_dims.pop(),
        "attention_head_dim": heads(list(block_out)),
        "use_linear_projection": linear_proj.pop(),
        "norm_num_groups": 32,
    }
    if model_channels != block_out[0]:
        raise UnsupportedCheckpoint("UNet conv_in width differs from its first level")
    label_key = p + "label_emb.0.0.weight"
    if label_key in shapes:
        config["addition_embed_type"] = "text_time"
        config["addition_time_embed_dim"] = SDXL_TIME_EMBED_DIM
        config["projection_class_embeddings_input_dim"] = shapes[label_key][1]
    return config


def vae_config(shapes: Shapes, scaling_factor: float, prefix: str = VAE_PREFIX) -> dict:
    p = prefix
    levels = indices(shapes, re.escape(p) + r"encoder\.down\.(\d+)\.")
    if not levels:
        raise UnsupportedCheckpoint("no VAE weights (first_stage_model.*) found in the checkpoint")
    block_out = [require(shapes, p + f"encoder.down.{i}.block.0.conv2.weight")[0] for i in levels]
    layers = len(indices(shapes, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\."))
    config = {
        "in_channels": require(shapes, p + "encoder.conv_in.weight")[1],
        "out_channels": require(shapes, p + "decoder.conv_out.weight")[0],
        "down_block_types": ("DownEncoderBlock2D",) * len(levels),
        "up_block_types": ("UpDecoderBlock2D",) * len(levels),
        "block_out_channels": tuple(block_out),
        "layers_per_block": layers,
        "latent_channels": require(shapes, p + "decoder.conv_in.weight")[1],
        "norm_num_groups": 32,
        "scaling_factor": scaling_factor,
        "sample_size": 512,
    }
    if p + "quant_conv.weight" not in shapes:  # Flux's and SD3's VAEs have no quant convolutions
        config["use_quant_conv"] = config["use_post_quant_conv"] = False
    return config


def hf_clip_config(shapes: Shapes, prefix: str) -> dict:
    tp = prefix + "text_model."
    vocab, hidden = require(shapes, tp + "embeddings.token_embedding.weight")
    layers = indices(shapes, re.escape(tp) + r"encoder\.layers\.(\d+)\.")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": require(shapes, tp + "encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": require(shapes, tp + "embeddings.position_embedding.weight")[0],
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


def openclip_config(shapes: Shapes, prefix: str) -> dict:
    vocab, hidden = require(shapes, prefix + "token_embedding.weight")
    layers = indices(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    proj = shapes.get(prefix + "text_projection")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": require(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": require(shapes, prefix + "positional_embedding")[0],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": proj[1] if proj else hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
    }


