"""Recognise a Stable Diffusion checkpoint from its key names and tensor shapes.

Works on shapes alone (a safetensors header is enough), so a checkpoint of any size,
full-size or a tiny test model, goes through the same code. Everything the weights do
not say (attention head counts, activation functions, VAE scaling) follows the
families' published conventions:

- SD1 UNet: 8 heads everywhere. SD2/SDXL UNet: 64-channel heads.
- CLIP / OpenCLIP text encoders: 64-channel heads; OpenAI CLIP uses quick_gelu,
  OpenCLIP uses gelu.
- GroupNorm with 32 groups in UNet and VAE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

Shapes = Mapping[str, tuple[int, ...]]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")

NATIVE_SIZE = {"sd1": 512, "sd2": 512, "sd2-v": 768, "sdxl": 1024}
VAE_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
SDXL_TIME_EMBED_DIM = 256  # six size/crop numbers, each embedded in 256 channels


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


@dataclass(frozen=True)
class ModelSpec:
    family: str  # "sd1" | "sd2" | "sdxl"
    inpainting: bool
    prediction_type: str  # "epsilon" | "v_prediction"
    zero_terminal_snr: bool
    native_size: tuple[int, int]  # (width, height)
    unet_config: dict
    vae_config: dict
    text_encoders: tuple[TextEncoderSpec, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        name = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}[self.family]
        if self.prediction_type == "v_prediction":
            name += " (v-prediction)"
        if self.inpainting:
            name += " inpainting"
        return name


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) over all keys."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in shapes if (m := rx.match(k))}
    return sorted(found)


def _require(shapes: Shapes, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise UnsupportedCheckpoint(f"checkpoint is missing the tensor '{key}'")
    return shapes[key]


def detect_family(shapes: Shapes) -> str:
    has_unet = any(k.startswith(UNET_PREFIX) for k in shapes)
    if not has_unet:
        raise UnsupportedCheckpoint(
            "no UNet weights (model.diffusion_model.*) found: this is not a full Stable Diffusion "
            "checkpoint (a LoRA, VAE or embedding file belongs in its own folder)"
        )
    if any(k.startswith(SDXL_TEXT_PREFIXES[1]) for k in shapes):
        if not any(k.startswith(SDXL_TEXT_PREFIXES[0]) for k in shapes):
            raise UnsupportedCheckpoint("SDXL refiner checkpoints are not supported yet")
        return "sdxl"
    if any(k.startswith(SD2_TEXT_PREFIX) for k in shapes):
        return "sd2"
    if any(k.startswith(SD1_TEXT_PREFIX) for k in shapes):
        return "sd1"
    raise UnsupportedCheckpoint("no text encoder weights found (expected cond_stage_model.* or conditioner.*)")


def unet_config(shapes: Shapes, family: str) -> dict:
    p = UNET_PREFIX
    conv_in = _require(shapes, p + "input_blocks.0.0.weight")
    model_channels, in_channels = conv_in[0], conv_in[1]
    out_channels = _require(shapes, p + "out.2.weight")[0]

    input_ids = _indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.")
    downsample_ids = [i for i in input_ids if p + f"input_blocks.{i}.0.op.weight" in shapes]
    levels = len(downsample_ids) + 1
    per_level = (len(input_ids) - 1 - len(downsample_ids)) / levels
    if per_level != int(per_level) or per_level < 1:
        raise UnsupportedCheckpoint("UNet input blocks do not form a regular level structure")
    layers_per_block = int(per_level)

    block_out, depths, cross_dims, linear_proj = [], [], set(), set()
    for level in range(levels):
        first = 1 + level * (layers_per_block + 1)
        res_out = _require(shapes, p + f"input_blocks.{first}.0.out_layers.3.weight")
        block_out.append(res_out[0])
        blocks = _indices(shapes, re.escape(p) + rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        depths.append(len(blocks))
        if blocks:
            cross_dims.add(_require(shapes, p + f"input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight")[1])
            linear_proj.add(len(_require(shapes, p + f"input_blocks.{first}.1.proj_in.weight")) == 2)

    mid_depth = len(_indices(shapes, re.escape(p) + r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if mid_depth:
        cross_dims.add(_require(shapes, p + "middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1])
        linear_proj.add(len(_require(shapes, p + "middle_block.1.proj_in.weight")) == 2)
    if len(cross_dims) != 1 or len(linear_proj) != 1:
        raise UnsupportedCheckpoint("UNet has no cross-attention or mixes attention layouts")
    if mid_depth and mid_depth != max(depths[-1], 1):
        raise UnsupportedCheckpoint("UNet middle block depth differs from its deepest level")

    if family == "sd1":
        head_dim: int | list[int] = 8  # diffusers' attention_head_dim means "heads" here
    else:
        head_dim = [max(1, c // 64) for c in block_out]

    config = {
        "sample_size": 64,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "block_out_channels": tuple(block_out),
        "layers_per_block": layers_per_block,
        "down_block_types": tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
        "up_block_types": tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "transformer_layers_per_block": tuple(max(d, 1) for d in depths),
        "cross_attention_dim": cross_dims.pop(),
        "attention_head_dim": head_dim,
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


def vae_config(shapes: Shapes, family: str) -> dict:
    p = VAE_PREFIX
    levels = _indices(shapes, re.escape(p) + r"encoder\.down\.(\d+)\.")
    if not levels:
        raise UnsupportedCheckpoint("no VAE weights (first_stage_model.*) found in the checkpoint")
    block_out = [_require(shapes, p + f"encoder.down.{i}.block.0.conv2.weight")[0] for i in levels]
    layers = len(_indices(shapes, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\."))
    return {
        "in_channels": _require(shapes, p + "encoder.conv_in.weight")[1],
        "out_channels": _require(shapes, p + "decoder.conv_out.weight")[0],
        "down_block_types": ("DownEncoderBlock2D",) * len(levels),
        "up_block_types": ("UpDecoderBlock2D",) * len(levels),
        "block_out_channels": tuple(block_out),
        "layers_per_block": layers,
        "latent_channels": _require(shapes, p + "post_quant_conv.weight")[0],
        "norm_num_groups": 32,
        "scaling_factor": VAE_SCALING[family],
        "sample_size": 512,
    }


def _hf_clip_config(shapes: Shapes, prefix: str) -> dict:
    tp = prefix + "text_model."
    vocab, hidden = _require(shapes, tp + "embeddings.token_embedding.weight")
    layers = _indices(shapes, re.escape(tp) + r"encoder\.layers\.(\d+)\.")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _require(shapes, tp + "encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": _require(shapes, tp + "embeddings.position_embedding.weight")[0],
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }


def _openclip_config(shapes: Shapes, prefix: str) -> dict:
    vocab, hidden = _require(shapes, prefix + "token_embedding.weight")
    layers = _indices(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    proj = shapes.get(prefix + "text_projection")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _require(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": _require(shapes, prefix + "positional_embedding")[0],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": proj[1] if proj else hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
    }


def text_encoder_specs(shapes: Shapes, family: str) -> tuple[TextEncoderSpec, ...]:
    if family == "sd1":
        if not any(k.startswith(SD1_TEXT_PREFIX + "text_model.") for k in shapes):
            raise UnsupportedCheckpoint("SD1 text encoder keys lack the 'text_model.' level")
        return (TextEncoderSpec(SD1_TEXT_PREFIX, "hf", _hf_clip_config(shapes, SD1_TEXT_PREFIX), False, "<|endoftext|>"),)
    if family == "sd2":
        config = _openclip_config(shapes, SD2_TEXT_PREFIX)
        # SD2 conditions on the penultimate layer followed by the final norm; the diffusers
        # convention (which we follow) is to build the encoder without its last layer.
        config["num_hidden_layers"] -= 1
        return (TextEncoderSpec(SD2_TEXT_PREFIX, "openclip", config, False, "!", drop_last_layer=True),)
    clip_l, clip_g = SDXL_TEXT_PREFIXES
    return (
        TextEncoderSpec(clip_l, "hf", _hf_clip_config(shapes, clip_l), False, "<|endoftext|>"),
        TextEncoderSpec(clip_g, "openclip", _openclip_config(shapes, clip_g), True, "!"),
    )


def _parse_resolution(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[x×,]\s*(\d+)\s*", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def detect(shapes: Shapes, metadata: Mapping[str, str] | None = None, yaml_parameterization: str | None = None) -> ModelSpec:
    """Build the full spec of a checkpoint from its tensor shapes.

    Prediction type comes from, in order: a `<checkpoint>.yaml` beside the file
    (A1111's convention, passed in as `yaml_parameterization`), a `v_pred` key in the
    state dict (ComfyUI's convention), the safetensors `modelspec.prediction_type`.
    When none says, SD1/SDXL are epsilon; SD2 is settled by `probe_v_prediction` on
    the loaded UNet (A1111's test), which the loader runs.
    """
    metadata = metadata or {}
    family = detect_family(shapes)
    unet = unet_config(shapes, family)
    vae = vae_config(shapes, family)
    encoders = text_encoder_specs(shapes, family)
    context = sum(e.config["hidden_size"] for e in encoders)
    if unet["cross_attention_dim"] != context:
        raise UnsupportedCheckpoint(
            f"UNet expects {unet['cross_attention_dim']}-wide text context but the text encoder(s) give {context}"
        )
    if unet["in_channels"] not in (4, 9) or vae["latent_channels"] != 4:
        raise UnsupportedCheckpoint(f"unsupported UNet input of {unet['in_channels']} channels")

    prediction = None
    if yaml_parameterization:
        prediction = "v_prediction" if yaml_parameterization.strip().strip("\"'") == "v" else "epsilon"
    elif "v_pred" in shapes:
        prediction = "v_prediction"
    elif metadata.get("modelspec.prediction_type"):
        prediction = "v_prediction" if metadata["modelspec.prediction_type"].lower() in ("v", "v_prediction") else "epsilon"

    native = _parse_resolution(metadata.get("modelspec.resolution"))
    if native is None:
        side = NATIVE_SIZE["sd2-v" if family == "sd2" and prediction == "v_prediction" else family]
        native = (side, side)
    return ModelSpec(
        family=family,
        inpainting=unet["in_channels"] == 9,
        prediction_type=prediction or "epsilon",
        zero_terminal_snr="ztsnr" in shapes,
        native_size=native,
        unet_config=unet,
        vae_config=vae,
        text_encoders=encoders,
        notes=("prediction type undetermined",) if prediction is None and family == "sd2" else (),
    )
