"""Building diffusers/transformers modules from a checkpoint's tensors, offline: read only a
component's tensors (already in the target dtype), rename them (diffusers' own LDM converters, or a
family's table), build the module on the meta device from the detected config and assign the
tensors (no random init, no second copy). Tokenizers come from files shipped in the repo."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .checkpoint_file import CheckpointError, CheckpointFile
from .checkpoint_shapes import UNET_PREFIX, VAE_PREFIX, ModelSpec, TextEncoderSpec, UnsupportedCheckpoint

TOKENIZER_ROOT = Path(__file__).resolve().parents[2] / "models" / "tokenizers"
TOKENIZER_DIR = TOKENIZER_ROOT / "clip"


@functools.lru_cache(maxsize=4)
def load_tokenizer(pad_token: str) -> CLIPTokenizer:
    if not (TOKENIZER_DIR / "vocab.json").is_file():
        raise CheckpointError(f"the shipped CLIP tokenizer is missing from {TOKENIZER_DIR}")
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token=pad_token, local_files_only=True)


def assign(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    # CLIP's position_ids is a non-persistent buffer: not in files, rebuilt below.
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        detail = f"missing {missing[:5]}" if missing else f"unexpected {unexpected[:5]}"
        raise UnsupportedCheckpoint(f"{what} weights do not match the detected architecture: {detail}")
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            if not name.endswith("position_ids"):
                raise UnsupportedCheckpoint(f"{what}: buffer {name} has no value")
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)


def build(cls, config: dict, state: dict[str, torch.Tensor], what: str):
    """Construct without allocating (meta device), then adopt the loaded tensors."""
    with torch.device("meta"):
        module = cls(**config)
    assign(module, state, what)
    return module


def build_unet(ckpt: CheckpointFile, spec: ModelSpec, dtype: torch.dtype) -> UNet2DConditionModel:
    config = dict(spec.unet_config)
    state = convert_ldm_unet_checkpoint(ckpt.read_prefix(UNET_PREFIX, dtype), config)
    return build(UNet2DConditionModel, config, state, "UNet")


def build_vae(ckpt: CheckpointFile, spec: ModelSpec, dtype: torch.dtype, prefix: str = VAE_PREFIX) -> AutoencoderKL:
    config = dict(spec.vae_config)
    tensors = ckpt.read_prefix(prefix, dtype)
    if prefix != VAE_PREFIX:  # the converter reads LDM names under first_stage_model.
        tensors = {VAE_PREFIX + k[len(prefix):]: v for k, v in tensors.items()}
    state = convert_ldm_vae_checkpoint(tensors, config)
    return build(AutoencoderKL, config, state, "VAE")


def build_text_encoder(ckpt: CheckpointFile, te: TextEncoderSpec, dtype: torch.dtype) -> torch.nn.Module:
    config = CLIPTextConfig(**te.config)
    cls = CLIPTextModelWithProjection if te.with_projection else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    tensors = ckpt.read_prefix(te.prefix, dtype)
    if te.layout == "hf":  # a text encoder file of its own has no prefix: its names are already HF's
        state = convert_ldm_clip_checkpoint(tensors, remove_prefix=te.prefix) if te.prefix else dict(tensors)
    else:
        state = convert_open_clip_checkpoint(model, tensors, prefix=te.prefix)
    if te.drop_last_layer:
        last = te.config["num_hidden_layers"]  # layers are 0..n-1 in the model; index n is the dropped one
        state = {k: v for k, v in state.items() if not re.search(rf"encoder\.layers\.{last}\.", k)}
        state.pop("text_projection.weight", None)
    if not hasattr(model, "text_model"):  # transformers >= 5 flattened CLIPTextModel
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    assign(model, state, "text encoder")
    return model


