"""diffusers / transformers state dicts -> original LDM (A1111) single-file key layout.

The inverse of what a single-file loader does: it writes the key names that real SD1.x, SD2.x and
SDXL checkpoints carry, so that tests can produce tiny files in the real layout and a merger can
save what it merged. The structure (levels, layers per level, which levels have attention) is read
from the diffusers keys themselves, so any UNet / VAE configuration works without its config.

Every tensor of the input must land somewhere: an unknown key raises, it is never dropped silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."  # + text_model.…
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."  # + text_model.…
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."

# OpenCLIP's learned temperature, stored in real SD2 / SDXL files; ln(100) once training clamps it.
OPENCLIP_LOGIT_SCALE = math.log(100.0)


def _as_state_dict(obj) -> dict[str, torch.Tensor]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise TypeError(f"expected a module or a state dict, got {type(obj).__name__}")


def _fail_on_leftovers(component: str, leftovers) -> None:
    if leftovers:
        shown = ", ".join(sorted(leftovers)[:8])
        raise ValueError(f"{component}: {len(leftovers)} keys have no LDM name (e.g. {shown})")


# --------------------------------------------------------------------------------------------- UNet

_UNET_TOP_LEVEL = {
    "conv_in.": "input_blocks.0.0.",
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    # SDXL's text_time embedding and the upscaler's class embedding both live in LDM's label_emb.
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "class_embedding.linear_1.": "label_emb.0.0.",
    "class_embedding.linear_2.": "label_emb.0.2.",
}

_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

_BLOCK_KEY = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID_KEY = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _resnet_tail(tail: str) -> str:
    head, _, rest = tail.partition(".")
    if head not in _UNET_RESNET_PARTS:
        raise ValueError(f"unet: unknown resnet parameter {tail!r}")
    return f"{_UNET_RESNET_PARTS[head]}.{rest}"


def _unet_layout(keys):
    """{(kind, block): {"resnets": n, "attentions": set(j), "sampler": bool}} from diffusers keys."""
    layout: dict[tuple[str, int], dict] = {}
    for key in keys:
        m = _BLOCK_KEY.match(key)
        if not m:
            continue
        kind, block, part, idx = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        entry = layout.setdefault((kind, block), {"resnets": 0, "attentions": set(), "sampler": False})
        if part == "resnets":
            entry["resnets"] = max(entry["resnets"], idx + 1)
        elif part == "attentions":
            entry["attentions"].add(idx)
        else:
            entry["sampler"] = True
    return layout


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel (or its state dict) -> LDM keys without the model prefix."""
    sd = _as_state_dict(unet)
    layout = _unet_layout(sd)
    # diffusers prefix -> LDM prefix, filled level by level in LDM's running block numbering
    prefixes: dict[str, tuple[str, str]] = {}  # value: (ldm prefix, part kind)

    n_down = 1 + max((b for k, b in layout if k == "down_blocks"), default=-1)
    ldm_index = 1  # input_blocks.0 is conv_in
    for block in range(n_down):
        entry = layout[("down_blocks", block)]
        for j in range(entry["resnets"]):
            prefixes[f"down_blocks.{block}.resnets.{j}."] = (f"input_blocks.{ldm_index}.0.", "resnet")
            if j in entry["attentions"]:
                prefixes[f"down_blocks.{block}.attentions.{j}."] = (f"input_blocks.{ldm_index}.1.", "attention")
            ldm_index += 1
        if entry["sampler"]:
            prefixes[f"down_blocks.{block}.downsamplers.0."] = (f"input_blocks.{ldm_index}.0.op.", "sampler")
            ldm_index += 1

    # LDM's middle_block is [resnet, transformer, resnet]: diffusers' resnets and attentions interleave.
    mid_resnets = {int(m.group(2)) for m in map(_MID_KEY.match, sd) if m and m.group(1) == "resnets"}
    mid_attentions = {int(m.group(2)) for m in map(_MID_KEY.match, sd) if m and m.group(1) == "attentions"}
    for r in mid_resnets:
        prefixes[f"mid_block.resnets.{r}."] = (f"middle_block.{2 * r}.", "resnet")
    for a in mid_attentions:
        prefixes[f"mid_block.attentions.{a}."] = (f"middle_block.{2 * a + 1}.", "attention")

    n_up = 1 + max((b for k, b in layout if k == "up_blocks"), default=-1)
    ldm_index = 0
    for block in range(n_up):
        entry = layout[("up_blocks", block)]
        for j in range(entry["resnets"]):
            prefixes[f"up_blocks.{block}.resnets.{j}."] = (f"output_blocks.{ldm_index}.0.", "resnet")
            has_attention = j in entry["attentions"]
            if has_attention:
                prefixes[f"up_blocks.{block}.attentions.{j}."] = (f"output_blocks.{ldm_index}.1.", "attention")
            if entry["sampler"] and j == entry["resnets"] - 1:
                slot = 2 if has_attention else 1
                prefixes[f"up_blocks.{block}.upsamplers.0."] = (f"output_blocks.{ldm_index}.{slot}.conv.", "sampler")
            ldm_index += 1

    out: dict[str, torch.Tensor] = {}
    leftovers = []
    for key, tensor in sd.items():
        new_key = None
        for old, new in _UNET_TOP_LEVEL.items():
            if key.startswith(old):
                new_key = new + key[len(old):]
                break
        if new_key is None:
            m = _BLOCK_KEY.match(key) or _MID_KEY.match(key)
            if m:
                tail = m.groups()[-1]
                prefix = key[: len(key) - len(tail)]
                if prefix in prefixes:
                    ldm_prefix, part = prefixes[prefix]
                    if part == "resnet":
                        new_key = ldm_prefix + _resnet_tail(tail)
                    elif part == "sampler":
                        # diffusers' Downsample2D/Upsample2D hold one `conv`; LDM names it op / conv
                        new_key = ldm_prefix + tail.removeprefix("conv.") if tail.startswith("conv.") else None
                    else:
                        # transformer internals (proj_in, transformer_blocks.K.attn1.to_q,
                        # ff.net.0.proj, norm1-3, proj_out) are named identically in LDM
                        new_key = ldm_prefix + tail
        if new_key is None:
            leftovers.append(key)
            continue
        if new_key in out:
            raise ValueError(f"unet: two diffusers keys map to {new_key!r}")
        out[new_key] = tensor
    _fail_on_leftovers("unet", leftovers)
    return out


# ---------------------------------------------------------------------------------------------- VAE

_VAE_TOP_LEVEL = {
    "encoder.conv_in.": "encoder.conv_in.",
    "encoder.conv_out.": "encoder.conv_out.",
    "encoder.conv_norm_out.": "encoder.norm_out.",
    "decoder.conv_in.": "decoder.conv_in.",
    "decoder.conv_out.": "decoder.conv_out.",
    "decoder.conv_norm_out.": "decoder.norm_out.",
    "quant_conv.": "quant_conv.",
    "post_quant_conv.": "post_quant_conv.",
}
_VAE_ATTENTION_PARTS = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_VAE_BLOCK = re.compile(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_VAE_MID = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _vae_resnet_tail(tail: str) -> str:
    head, _, rest = tail.partition(".")
    if head not in ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"):
        raise ValueError(f"vae: unknown resnet parameter {tail!r}")
    return ("nin_shortcut" if head == "conv_shortcut" else head) + "." + rest


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL (or its state dict) -> LDM keys without the first_stage_model prefix."""
    sd = _as_state_dict(vae)
    # LDM numbers the decoder's levels from the lowest resolution up: diffusers' up_blocks.0 is up.{L-1}
    n_up = 1 + max((int(m.group(3)) for m in map(_VAE_BLOCK.match, sd) if m and m.group(2) == "up_blocks"), default=-1)

    out: dict[str, torch.Tensor] = {}
    leftovers = []
    for key, tensor in sd.items():
        new_key = None
        for old, new in _VAE_TOP_LEVEL.items():
            if key.startswith(old):
                new_key = new + key[len(old):]
                break
        m = _VAE_BLOCK.match(key) if new_key is None else None
        if m:
            coder, kind, block, part, idx, tail = m.groups()
            block, idx = int(block), int(idx)
            if part == "resnets":
                level = block if kind == "down_blocks" else n_up - 1 - block
                name = "down" if kind == "down_blocks" else "up"
                new_key = f"{coder}.{name}.{level}.block.{idx}.{_vae_resnet_tail(tail)}"
            elif part == "downsamplers" and idx == 0 and tail.startswith("conv."):
                new_key = f"{coder}.down.{block}.downsample.{tail}"
            elif part == "upsamplers" and idx == 0 and tail.startswith("conv."):
                new_key = f"{coder}.up.{n_up - 1 - block}.upsample.{tail}"
        m = _VAE_MID.match(key) if new_key is None else None
        if m:
            coder, part, idx, tail = m.groups()
            idx = int(idx)
            if part == "resnets":
                new_key = f"{coder}.mid.block_{idx + 1}.{_vae_resnet_tail(tail)}"
            elif idx == 0:
                for old, new in _VAE_ATTENTION_PARTS.items():
                    if tail.startswith(old + "."):
                        new_key = f"{coder}.mid.attn_1.{new}.{tail[len(old) + 1:]}"
                        # LDM's attention projections are 1x1 convolutions: store them 4-D
                        if new != "norm" and tail.endswith("weight") and tensor.ndim == 2:
                            tensor = tensor[:, :, None, None]
                        break
        if new_key is None:
            leftovers.append(key)
            continue
        if new_key in out:
            raise ValueError(f"vae: two diffusers keys map to {new_key!r}")
        out[new_key] = tensor
    _fail_on_leftovers("vae", leftovers)
    return out


# ------------------------------------------------------------------------------------ text encoders

def _hf_text_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """HF CLIP keys with the `text_model.` prefix: transformers >= 5.6 flattened CLIPTextModel
    (no prefix) while CLIPTextModelWithProjection still wraps it; real files always have it."""
    sd = _as_state_dict(text_encoder)
    out = {}
    for key, tensor in sd.items():
        if key.endswith("embeddings.position_ids"):
            continue  # a non-persistent buffer in transformers; written back explicitly below
        if key.startswith("text_model.") or key == "text_projection.weight":
            out[key] = tensor
        else:
            out["text_model." + key] = tensor
    return out


def _position_ids(sd: dict[str, torch.Tensor]) -> torch.Tensor:
    n_positions = sd["text_model.embeddings.position_embedding.weight"].shape[0]
    return torch.arange(n_positions, dtype=torch.int64)[None]


def clip_to_ldm(text_encoder, *, include_position_ids: bool = True) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel -> `text_model.…` keys (the layout SD1's and SDXL's CLIP-L use).

    A text_projection, if the model has one, is not part of this layout and is left out."""
    sd = _hf_text_state_dict(text_encoder)
    out = {k: v for k, v in sd.items() if k.startswith("text_model.")}
    if include_position_ids:
        # real SD1 / SDXL files carry this int64 buffer (sometimes as broken floats: loaders recompute it)
        out["text_model.embeddings.position_ids"] = _position_ids(sd)
    return out


_OPENCLIP_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")
_OPENCLIP_LAYER_PARTS = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_OPENCLIP_TOP_LEVEL = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}


def openclip_to_ldm(text_encoder, *, include_logit_scale: bool = True) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel(WithProjection) -> OpenCLIP keys (SD2's and SDXL's bigG layout).

    q/k/v are fused into `attn.in_proj_weight` / `in_proj_bias` (order q, k, v) and the
    projection is stored as OpenCLIP's [width, proj] matrix, the transpose of HF's Linear weight."""
    sd = _hf_text_state_dict(text_encoder)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    leftovers = []
    for key, tensor in sd.items():
        if key in _OPENCLIP_TOP_LEVEL:
            out[_OPENCLIP_TOP_LEVEL[key]] = tensor
            continue
        if key == "text_projection.weight":
            out["text_projection"] = tensor.t().contiguous()
            continue
        m = _OPENCLIP_LAYER.match(key)
        if m:
            layer, tail = int(m.group(1)), m.group(2)
            q = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", tail)
            if q:
                qkv.setdefault((layer, q.group(2)), {})[q.group(1)] = tensor
                continue
            for old, new in _OPENCLIP_LAYER_PARTS.items():
                if tail.startswith(old):
                    out[f"transformer.resblocks.{layer}.{new}{tail[len(old):]}"] = tensor
                    break
            else:
                leftovers.append(key)
            continue
        leftovers.append(key)
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"openclip: layer {layer} {kind} lacks one of q/k/v")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    _fail_on_leftovers("openclip", leftovers)
    if include_logit_scale:
        out["logit_scale"] = torch.tensor(OPENCLIP_LOGIT_SCALE)
    return out


# ---------------------------------------------------------------------------------- whole checkpoint

def ldm_schedule_buffers(n_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
    """The DDPM buffers that SD1/SD2 training code stored at the top level of its checkpoints."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, n_steps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, 0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    buffers = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.log(torch.clamp(posterior_variance, min=1e-20)),
        "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
    }
    return {k: v.to(torch.float32) for k, v in buffers.items()}


def _prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def to_ldm_state_dict(
    family: str,
    unet=None,
    vae=None,
    text_encoder=None,
    text_encoder_2=None,
    *,
    include_extras: bool = True,
) -> dict[str, torch.Tensor]:
    """Whole A1111/LDM single-file state dict for `family` in FAMILIES (the SDXL refiner's one
    encoder, OpenCLIP-bigG, is passed as `text_encoder_2`).

    Components may be modules or their state dicts; any may be None (left out). For "sd2" the text
    encoder is written as OpenCLIP; pass it with the layer that real files carry but diffusers drops
    (SD2 files hold 24 resblocks, the diffusers text encoder 23) if the file should be faithful.
    `include_extras` adds what real files hold beyond the weights: CLIP position_ids, OpenCLIP
    logit_scale and, for SD1/SD2, the DDPM schedule buffers.
    Tensors are not copied (they share memory with the modules) except the fused OpenCLIP q/k/v
    and the transposed projection; save_single_file makes the copies it needs.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if family not in ("sdxl", "sdxl_refiner") and text_encoder_2 is not None:
        raise ValueError(f"{family} has one text encoder; text_encoder_2 is only for sdxl")
    if family == "sdxl_refiner" and text_encoder is not None:
        raise ValueError("the SDXL refiner has only OpenCLIP-bigG: pass it as text_encoder_2")

    out: dict[str, torch.Tensor] = {}
    if unet is not None:
        out.update(_prefixed(UNET_PREFIX, unet_to_ldm(unet)))
    if vae is not None:
        out.update(_prefixed(VAE_PREFIX, vae_to_ldm(vae)))
    if family == "sd1":
        if text_encoder is not None:
            out.update(_prefixed(SD1_CLIP_PREFIX, clip_to_ldm(text_encoder, include_position_ids=include_extras)))
    elif family == "sd2":
        if text_encoder is not None:
            out.update(_prefixed(SD2_OPENCLIP_PREFIX, openclip_to_ldm(text_encoder, include_logit_scale=include_extras)))
    elif family == "sdxl_refiner":
        if text_encoder_2 is not None:
            out.update(_prefixed(SDXL_REFINER_OPENCLIP_PREFIX, openclip_to_ldm(text_encoder_2, include_logit_scale=include_extras)))
    else:
        if text_encoder is not None:
            out.update(_prefixed(SDXL_CLIP_L_PREFIX, clip_to_ldm(text_encoder, include_position_ids=include_extras)))
        if text_encoder_2 is not None:
            out.update(_prefixed(SDXL_OPENCLIP_PREFIX, openclip_to_ldm(text_encoder_2, include_logit_scale=include_extras)))
    if include_extras and family in ("sd1", "sd2"):
        out.update(ldm_schedule_buffers())
    return out


def save_single_file(path, state_dict, metadata: dict[str, str] | None = None, dtype=None) -> Path:
    """Write `state_dict` as .safetensors (with `metadata`) or as a .ckpt holding {"state_dict": …}.

    `dtype` casts floating tensors only (position_ids stay int64). Tensors that share storage are
    cloned, since safetensors refuses shared memory."""
    path = Path(path)
    seen: set[int] = set()
    tensors = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.contiguous()
        if tensor.numel():
            if tensor.untyped_storage().data_ptr() in seen:
                tensor = tensor.clone()
            seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        save_file(tensors, str(path), metadata=metadata)
    elif suffix in (".ckpt", ".pt", ".pth"):
        torch.save({"state_dict": tensors}, path)
    else:
        raise ValueError(f"unknown checkpoint extension {path.suffix!r}: use .safetensors or .ckpt")
    return path
