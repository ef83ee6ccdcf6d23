"""Single checkpoint file -> ready diffusers/transformers modules, offline.

Recipe:
1. open the file lazily and detect the spec from shapes (model_detection);
2. per component, read only its tensors (already in the target dtype), rename them
   with diffusers' own LDM converters, build the module on the meta device from the
   detected config and assign the tensors (no random init, no second copy);
3. settle what the weights cannot say (SD2 v-prediction), attach tokenizers shipped
   in the repo.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field, replace
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
from .devices import DevicePolicy
from .model_detection import UNET_PREFIX, VAE_PREFIX, ModelSpec, TextEncoderSpec, UnsupportedCheckpoint, detect

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "models" / "tokenizers" / "clip"


@dataclass
class LoadedModel:
    """Everything one checkpoint needs to generate, on its device."""

    path: Path
    spec: ModelSpec
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[torch.nn.Module]
    tokenizers: list[CLIPTokenizer]
    policy: DevicePolicy
    load_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def latent_scale(self) -> int:
        return 2 ** (len(self.spec.vae_config["block_out_channels"]) - 1)


@functools.lru_cache(maxsize=4)
def load_tokenizer(pad_token: str) -> CLIPTokenizer:
    if not (TOKENIZER_DIR / "vocab.json").is_file():
        raise CheckpointError(f"the shipped CLIP tokenizer is missing from {TOKENIZER_DIR}")
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token=pad_token, local_files_only=True)


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
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


def _build(cls, config: dict, state: dict[str, torch.Tensor], what: str):
    """Construct without allocating (meta device), then adopt the loaded tensors."""
    with torch.device("meta"):
        module = cls(**config)
    _assign(module, state, what)
    return module


def _build_unet(ckpt: CheckpointFile, spec: ModelSpec, dtype: torch.dtype) -> UNet2DConditionModel:
    config = dict(spec.unet_config)
    state = convert_ldm_unet_checkpoint(ckpt.read_prefix(UNET_PREFIX, dtype), config)
    return _build(UNet2DConditionModel, config, state, "UNet")


def _build_vae(ckpt: CheckpointFile, spec: ModelSpec, dtype: torch.dtype) -> AutoencoderKL:
    config = dict(spec.vae_config)
    state = convert_ldm_vae_checkpoint(ckpt.read_prefix(VAE_PREFIX, dtype), config)
    return _build(AutoencoderKL, config, state, "VAE")


def _build_text_encoder(ckpt: CheckpointFile, te: TextEncoderSpec, dtype: torch.dtype) -> torch.nn.Module:
    config = CLIPTextConfig(**te.config)
    cls = CLIPTextModelWithProjection if te.with_projection else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    tensors = ckpt.read_prefix(te.prefix, dtype)
    if te.layout == "hf":
        state = convert_ldm_clip_checkpoint(tensors, remove_prefix=te.prefix)
    else:
        state = convert_open_clip_checkpoint(model, tensors, prefix=te.prefix)
    if te.drop_last_layer:
        last = te.config["num_hidden_layers"]  # layers are 0..n-1 in the model; index n is the dropped one
        state = {k: v for k, v in state.items() if not re.search(rf"encoder\.layers\.{last}\.", k)}
        state.pop("text_projection.weight", None)
    if not hasattr(model, "text_model"):  # transformers >= 5 flattened CLIPTextModel
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    _assign(model, state, "text encoder")
    return model


@torch.no_grad()
def probe_v_prediction(unet: UNet2DConditionModel) -> bool:
    """A1111's test for SD2 checkpoints without a config: a v-model pulls a constant
    grey latent strongly negative at t=999, an epsilon model does not."""
    p = next(unet.parameters())
    x = torch.full((1, 4, 8, 8), 0.5, device=p.device, dtype=p.dtype)
    ctx = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=p.device, dtype=p.dtype)
    out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=ctx).sample
    return (out.float() - x.float()).mean().item() < -1


def load_checkpoint(path: str | Path, policy: DevicePolicy) -> LoadedModel:
    """Load one single-file checkpoint. Raises CheckpointError / UnsupportedCheckpoint
    (both ValueError) with a message fit for users."""
    started = time.perf_counter()
    ckpt = CheckpointFile(path)
    try:
        spec = detect(ckpt.shapes, ckpt.metadata, ckpt.yaml_parameterization())
        unet = _build_unet(ckpt, spec, policy.unet_dtype)
        vae = _build_vae(ckpt, spec, policy.vae_dtype)
        encoders = [_build_text_encoder(ckpt, te, policy.text_dtype) for te in spec.text_encoders]
    finally:
        ckpt.close()

    if "prediction type undetermined" in spec.notes and spec.unet_config["cross_attention_dim"] == 1024:
        # only meaningful for real-size SD2 weights; small models keep epsilon
        if probe_v_prediction(unet):
            spec = replace(spec, prediction_type="v_prediction", native_size=(768, 768))

    for module in (unet, vae, *encoders):
        module.eval().requires_grad_(False)
        module.to(policy.device)
    if policy.attention == "xformers":
        unet.enable_xformers_memory_efficient_attention()
        vae.enable_xformers_memory_efficient_attention()
    tokenizers = [load_tokenizer(te.pad_token) for te in spec.text_encoders]
    return LoadedModel(Path(path), spec, unet, vae, encoders, tokenizers, policy, time.perf_counter() - started)
