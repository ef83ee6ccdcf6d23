"""Component configs of Easel's built-in model (SD1.x family, shrunk).

Every choice follows SD1's conventions so the single-file checkpoint looks like a small
SD1.5 one to any loader that reads shapes: CLIP text encoder with 64-channel heads and
quick_gelu, UNet with 4 levels / 2 res blocks / conv proj_in / 8 attention heads, VAE with
4 levels (factor 8), 4 latent channels and SD's latent scaling factor 0.18215.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / "models" / "tokenizers" / "clip"

NATIVE_SIZE = 64          # pixels; latents are NATIVE_SIZE // 8
LATENT_CHANNELS = 4
VAE_SCALING_FACTOR = 0.18215  # SD's; the trained VAE is rescaled so this is right

TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=2,        # hidden / 64, as the loader assumes
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=128,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

UNET_CONFIG = dict(
    sample_size=NATIVE_SIZE // 8,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(64, 128),
    layers_per_block=2,
    cross_attention_dim=TEXT_CONFIG["hidden_size"],
    attention_head_dim=8,
    use_linear_projection=False,
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=1,
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=32,
    sample_size=NATIVE_SIZE,
    scaling_factor=VAE_SCALING_FACTOR,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
    clip_sample=False,
)


def alphas_cumprod():
    """SD's training schedule: betas linear in sqrt space from 0.00085 to 0.012, 1000 steps."""
    import torch
    c = SCHEDULER_CONFIG
    betas = torch.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, c["num_train_timesteps"], dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def build_unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**UNET_CONFIG)


def build_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(**VAE_CONFIG)


def load_tokenizer():
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())
