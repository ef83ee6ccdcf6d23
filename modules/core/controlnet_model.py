"""ControlNet files -> diffusers' ControlNetModel, offline: detected from the keys and shapes, built
from a config read off the shapes (no config.json, no hub), the tensors assigned as read.

Two layouts are read:

- **LDM / A1111** (``control_v11p_sd15_canny.pth``, ``.safetensors``, fp16 "pruned" files): the
  UNet's encoder half under ``input_blocks`` / ``middle_block`` plus ``input_hint_block``,
  ``zero_convs`` and ``middle_block_out``, with or without the ``control_model.`` prefix of the
  original training checkpoints. The UNet's own shape reader (``checkpoint_shapes.unet_config``)
  applies to the encoder half; diffusers' converter renames the tensors.
- **diffusers** (``diffusion_pytorch_model.safetensors`` of ``diffusers/controlnet-canny-sdxl-1.0``
  and the like): ``controlnet_cond_embedding`` / ``down_blocks`` / ``controlnet_down_blocks``.

The family (SD1, SD2, SDXL) follows from the shapes: SDXL's added time embedding, SD2's linear
attention projections. Control-LoRA files (``modules.core.control_lora``) are read here and built on
the job's UNet by the layer above. T2I-Adapter files (``modules.core.t2i_adapter``) and IP-Adapter files (``modules.core.ip_adapter``)
load through ``load`` too, as the extension takes them all from the same folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from . import control_lora, families, ip_adapter, ldm_parts, t2i_adapter
from .checkpoint_file import CheckpointFile
from .controlnet_file import ControlNetFile, read_hint_encoder
from .checkpoint_shapes import UNET_PREFIX, Shapes, UnsupportedCheckpoint, indices, require, unet_config

LDM_PREFIX = "control_model."
DIFFUSERS_MARKER = "controlnet_cond_embedding.conv_in.weight"
LDM_MARKER = "input_hint_block.0.weight"


def describe(shapes: Shapes) -> str:
    """What a file holds: "controlnet-ldm", "controlnet-diffusers", "control-lora", "t2i-adapter",
    "ip-adapter", or an UnsupportedCheckpoint saying what it is instead."""
    keys = set(shapes)
    if control_lora.looks_like_control_lora(keys):  # before the LDM marker: it has an input_hint_block too
        return "control-lora"
    if DIFFUSERS_MARKER in keys:
        return "controlnet-diffusers"
    if LDM_MARKER in keys or LDM_PREFIX + LDM_MARKER in keys:
        return "controlnet-ldm"
    if ip_adapter.looks_like_ip_adapter(shapes):
        return "ip-adapter"
    if t2i_adapter.looks_like_adapter(shapes):
        return "t2i-adapter"
    if "difference" in keys:
        raise UnsupportedCheckpoint("this is a 'difference' ControlNet (it needs its base model's weights); "
                                    "use the standalone version of the model")
    raise UnsupportedCheckpoint("not a ControlNet (no input_hint_block / controlnet_cond_embedding tensors) "
                                "and not a T2I-Adapter (no conv_in + body / adapter. tensors)")


def _family(addition_embedding: bool, linear_projection: bool) -> str:
    if addition_embedding:
        return "sdxl"
    return "sd2" if linear_projection else "sd1"


def ldm_config(shapes: Shapes) -> tuple[str, dict]:
    """(family, ControlNetModel config) of an LDM-layout ControlNet."""
    prefix = LDM_PREFIX if LDM_PREFIX + LDM_MARKER in shapes else ""
    # the encoder half of the UNet: its reader needs the output conv the ControlNet lacks (unused here)
    unet_shapes = {UNET_PREFIX + k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    conv_in = require(unet_shapes, UNET_PREFIX + "input_blocks.0.0.weight")
    unet_shapes[UNET_PREFIX + "out.2.weight"] = (conv_in[1], conv_in[0], 3, 3)
    projections = [v for k, v in shapes.items() if k.endswith(".proj_in.weight")]
    linear = bool(projections) and len(projections[0]) == 2  # SD2/SDXL: linear; SD1: 1x1 convolutions
    family = _family(UNET_PREFIX + "label_emb.0.0.weight" in unet_shapes, linear)
    config = unet_config(unet_shapes, families.get(family).attention_heads)
    hint_channels, embedding = read_hint_encoder(shapes, prefix)
    return family, _controlnet_config(config, hint_channels, embedding)


def diffusers_config(shapes: Shapes) -> tuple[str, dict]:
    """(family, ControlNetModel config) of a diffusers-layout ControlNet, read off its shapes."""
    levels = indices(shapes, r"down_blocks\.(\d+)\.")
    block_out, depths = [], []
    for level in levels:
        block_out.append(require(shapes, f"down_blocks.{level}.resnets.0.conv1.weight")[0])
        depths.append(len(indices(shapes, rf"down_blocks\.{level}\.attentions\.0\.transformer_blocks\.(\d+)\.")))
    layers = len(indices(shapes, r"down_blocks\.0\.resnets\.(\d+)\."))
    attn = next((k for k in shapes if k.endswith("attn2.to_k.weight")), None)
    if attn is None:
        raise UnsupportedCheckpoint("ControlNet has no cross-attention")
    proj = next(k for k in shapes if k.endswith(".proj_in.weight"))
    linear = len(shapes[proj]) == 2
    mid_depth = len(indices(shapes, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."))
    layer_depths = [max(d, 1) for d in depths]
    if not depths[-1] and mid_depth:
        layer_depths[-1] = mid_depth
    family = _family("add_embedding.linear_1.weight" in shapes, linear)
    config = {
        "in_channels": require(shapes, "conv_in.weight")[1],
        "block_out_channels": tuple(block_out),
        "layers_per_block": layers,
        "down_block_types": tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
        "transformer_layers_per_block": tuple(layer_depths),
        "cross_attention_dim": shapes[attn][1],
        "attention_head_dim": families.get(family).attention_heads(list(block_out)),
        "use_linear_projection": linear,
        "norm_num_groups": 32,
    }
    if "add_embedding.linear_1.weight" in shapes:
        config["addition_embed_type"] = "text_time"
        config["addition_time_embed_dim"] = require(shapes, "add_time_proj.weight")[0] \
            if "add_time_proj.weight" in shapes else 256
        config["projection_class_embeddings_input_dim"] = shapes["add_embedding.linear_1.weight"][1]
    blocks = indices(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")
    embedding = [shapes["controlnet_cond_embedding.conv_in.weight"][0]]
    embedding += [shapes[f"controlnet_cond_embedding.blocks.{i}.weight"][0] for i in blocks if i % 2 == 1]
    return family, _controlnet_config(config, shapes["controlnet_cond_embedding.conv_in.weight"][1], tuple(embedding))


def _controlnet_config(unet: dict, hint_channels: int, embedding: tuple[int, ...]) -> dict:
    keep = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "transformer_layers_per_block",
            "cross_attention_dim", "attention_head_dim", "use_linear_projection", "norm_num_groups",
            "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")
    config = {k: unet[k] for k in keep if k in unet}
    config["conditioning_channels"] = hint_channels
    config["conditioning_embedding_out_channels"] = embedding
    return config


def load(path: str | Path, dtype: torch.dtype = torch.float32) \
        -> ControlNetFile | t2i_adapter.AdapterFile | ip_adapter.IPAdapterFile | control_lora.ControlLoraFile:
    """Read a ControlNet, T2I-Adapter or IP-Adapter file (weights only) and build its module on the CPU
    in ``dtype``; a Control-LoRA's tensors, to build on a checkpoint's UNet (``control_lora.build``)."""
    ckpt = CheckpointFile(path)
    try:
        if not ckpt.shapes and Path(path).suffix.lower() != ".safetensors":
            # no top-level tensors: an IP-Adapter's {"image_proj": {...}, "ip_adapter": {...}} (or nothing)
            return ip_adapter.load(path, dtype)
        layout = describe(ckpt.shapes)
        if layout == "ip-adapter":
            return ip_adapter.from_tensors(path, {k: ckpt.get(k, dtype) for k in ckpt.shapes})
        if layout == "t2i-adapter":
            return t2i_adapter.from_checkpoint(ckpt, dtype)
        if layout == "control-lora":
            return control_lora.read(ckpt, dtype)
        if layout == "controlnet-diffusers":
            family, config = diffusers_config(ckpt.shapes)
            state = {k: ckpt.get(k, dtype) for k in ckpt.shapes}
        else:
            family, config = ldm_config(ckpt.shapes)
            prefix = LDM_PREFIX if LDM_PREFIX + LDM_MARKER in ckpt.shapes else ""
            tensors = {k[len(prefix):]: ckpt.get(k, dtype) for k in ckpt.keys_with_prefix(prefix)}
            tensors = {k: v for k, v in tensors.items() if not k.startswith(("model.", "cond_stage_model.",
                                                                               "first_stage_model."))}
            state = convert_controlnet_checkpoint(tensors, {"layers_per_block": config["layers_per_block"]})
            state = {k: v for k, v in state.items() if v is not None}
            for i, j in ((0, 1), (2, 2)):  # SDXL's added embedding, which the converter leaves out
                for part in ("weight", "bias"):
                    if f"label_emb.0.{i}.{part}" in tensors:
                        state[f"add_embedding.linear_{j}.{part}"] = tensors[f"label_emb.0.{i}.{part}"]
    finally:
        ckpt.close()
    module = ldm_parts.build(ControlNetModel, config, state, "ControlNet")
    return ControlNetFile(Path(path), family, layout.split("-")[1], config, module.eval().requires_grad_(False))
