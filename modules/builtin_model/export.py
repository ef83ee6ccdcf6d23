"""Write the built-in model as one SD1.x single-file checkpoint (A1111/LDM keys) plus its
.json metadata entry, and check that the project's loader reads it back faithfully."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from . import architecture as arch

TITLE = "Easel shapes v1"
DESCRIPTION = ("Easel's built-in text-to-image model: a small SD1.x-family model trained from scratch "
               "by modules.builtin_model.train on procedural flat-coloured shapes (circle, square, "
               "triangle; 8 colours; 2 sizes; 9 positions; one or two shapes on a coloured background).")


def header_metadata(recipe: dict, times: dict) -> dict[str, str]:
    size = f"{arch.NATIVE_SIZE}x{arch.NATIVE_SIZE}"
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": TITLE,
        "modelspec.description": DESCRIPTION,
        "modelspec.resolution": size,
        "modelspec.prediction_type": "epsilon",
        "modelspec.date": time.strftime("%Y-%m-%d"),
        "easel.native_resolution": size,
        "easel.vae_scaling_factor": str(arch.VAE_SCALING_FACTOR),
        "easel.training_recipe": json.dumps(recipe, sort_keys=True),
        "easel.training_seconds": json.dumps(times, sort_keys=True),
        "easel.trainer": "python -m modules.builtin_model.train --seed %s" % recipe.get("seed", 0),
    }


def describe_architecture(unet, te, vae) -> dict:
    return {
        "family": "sd1",
        "text_encoder": {"class": "CLIPTextModel", "params": arch.count_params(te), **arch.TEXT_CONFIG},
        "unet": {"class": "UNet2DConditionModel", "params": arch.count_params(unet),
                 **{k: list(v) if isinstance(v, tuple) else v for k, v in arch.UNET_CONFIG.items()}},
        "vae": {"class": "AutoencoderKL", "params": arch.count_params(vae),
                **{k: list(v) if isinstance(v, tuple) else v for k, v in arch.VAE_CONFIG.items()}},
        "tokenizer": "models/tokenizers/clip (CLIP BPE, 77 tokens, pad <|endoftext|>)",
        "scheduler": arch.SCHEDULER_CONFIG,
    }


def export_checkpoint(unet, te, vae, out: Path, recipe: dict, times: dict, dtype=torch.float16) -> Path:
    from modules.core.ldm_export import save_single_file, to_ldm_state_dict

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = to_ldm_state_dict("sd1", unet=unet, vae=vae, text_encoder=te)
    save_single_file(out, state, metadata=header_metadata(recipe, times), dtype=dtype)
    entry_path = out.with_suffix(".json")
    old = json.loads(entry_path.read_text()) if entry_path.exists() else {}
    entry = {
        "name": out.stem,
        "title": TITLE,
        "description": DESCRIPTION,
        "file": out.name,
        "file_size_bytes": out.stat().st_size,
        "dtype": str(dtype).replace("torch.", ""),
        "native_resolution": [arch.NATIVE_SIZE, arch.NATIVE_SIZE],
        "prediction_type": "epsilon",
        "vae_scaling_factor": arch.VAE_SCALING_FACTOR,
        "architecture": describe_architecture(unet, te, vae),
        "training_recipe": recipe | {
            "data": "procedural scenes from modules.builtin_model.dataset (train split: held-out "
                    "(colour, shape, background, position) combinations excluded), captions re-drawn "
                    "every step from many templates, 10% caption dropout to the empty string",
            "stages": "VAE (L1+MSE weighted toward shape pixels, 1e-6 KL, two cosine cycles; latents shifted/rescaled "
                      "so 0.18215 gives unit variance) -> encode a pool of scenes -> UNet + CLIP text encoder from "
                      "scratch jointly: epsilon MSE, x0-space weight clamp(SNR, low_snr_floor, min_snr_gamma), "
                      "training noise = white + coarse 4x4/2x2/1x1 noise (coarse_noise), a training-only head "
                      "predicting the caption's stated positions from the pooled text state (text_aux_weight), "
                      "SD scaled_linear schedule, AdamW, cosine LR, EMA; then a refine phase (refine_steps) with "
                      "more colour-free captions (refine_colour_keep) and refine_coarse_noise, the LR continuing the "
                      "cosine over both phases",
            "command": f"python -m modules.builtin_model.train --seed {recipe.get('seed', 0)}",
        },
        "training_seconds": times | ({"total": round(sum(times.values()), 1)} if times else {}),
        "evaluation": old.get("evaluation"),
    }
    entry_path.write_text(json.dumps(entry, indent=2) + "\n")
    return out


@torch.no_grad()
def verify_roundtrip(path: Path, unet, te, vae, atol: float = 5e-2) -> dict[str, float]:
    """Load `path` with Easel's loader and compare each component's output with the
    in-memory modules (fp16 storage allows small differences)."""
    from modules.core.devices import choose_policy
    from modules.core.model_loader import load_checkpoint

    policy, _ = choose_policy(precision="full")
    loaded = load_checkpoint(path, policy)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49408, (2, 77), generator=g)
    x = torch.randn(2, 4, arch.NATIVE_SIZE // 8, arch.NATIVE_SIZE // 8, generator=g)
    img = torch.rand(2, 3, arch.NATIVE_SIZE, arch.NATIVE_SIZE, generator=g) * 2 - 1
    t = torch.tensor([10, 700])
    ctx_a = te(ids).last_hidden_state
    ctx_b = loaded.text_encoders[0](ids).last_hidden_state
    diffs = {
        "text_encoder": (ctx_a - ctx_b).abs().max().item(),
        "unet": (unet(x, t, ctx_a).sample - loaded.unet(x, t, ctx_a).sample).abs().max().item(),
        "vae_decode": (vae.decode(x / 0.18215).sample - loaded.vae.decode(x / loaded.vae.config.scaling_factor).sample).abs().max().item(),
        "vae_encode": (vae.encode(img).latent_dist.mean - loaded.vae.encode(img).latent_dist.mean).abs().max().item()
                      * arch.VAE_SCALING_FACTOR,
    }
    diffs.update(_diffusers_converters_diffs(path, unet, te, vae, ids, x, t, ctx_a))
    bad = {k: v for k, v in diffs.items() if v > atol}
    if bad:
        raise AssertionError(f"loaded checkpoint differs from the trained modules: {bad}")
    return diffs


@torch.no_grad()
def _diffusers_converters_diffs(path, unet, te, vae, ids, x, t, ctx) -> dict[str, float]:
    """Independent second reader: diffusers' own LDM -> diffusers converters."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)
    from safetensors.torch import load_file

    ckpt = {k: v.float() for k, v in load_file(str(path)).items()}
    u2, v2, t2 = arch.build_unet(), arch.build_vae(), arch.build_text_encoder()
    u2.load_state_dict(convert_ldm_unet_checkpoint(ckpt, dict(u2.config)))
    v2.load_state_dict(convert_ldm_vae_checkpoint(ckpt, dict(v2.config)))
    clip = convert_ldm_clip_checkpoint(ckpt)
    own = set(t2.state_dict())
    # transformers 5 keys drop the "text_model." level that the converter keeps
    clip = {k if k in own else k.removeprefix("text_model."): v for k, v in clip.items()}
    t2.load_state_dict({k: v for k, v in clip.items() if not k.endswith("position_ids")})
    return {
        "diffusers_text_encoder": (t2(ids).last_hidden_state - ctx).abs().max().item(),
        "diffusers_unet": (u2(x, t, ctx).sample - unet(x, t, ctx).sample).abs().max().item(),
        "diffusers_vae_decode": (v2.decode(x / 0.18215).sample - vae.decode(x / 0.18215).sample).abs().max().item(),
    }
