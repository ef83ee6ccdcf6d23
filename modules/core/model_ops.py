"""What the first pass, hires fix and img2img do with a loaded model, in one place: the denoiser
call (the family's), pixels <-> latents through the VAE, and an inpainting UNet's conditioning."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .families.base import Denoiser
from .model_loader import LoadedModel


def denoiser(model: LoadedModel) -> Denoiser:
    """``call(x, t, cond)``: the model's raw prediction (eps, v, ...) in float32."""
    return model.family.denoiser(model)


@torch.no_grad()
def encode_pixels(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> scaled latents; the distribution's mean, so it is deterministic."""
    vae = model.vae
    dist = vae.encode(pixels.to(model.device, model.policy.vae_dtype)).latent_dist
    return (dist.mean.float() - _shift(vae)) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    vae = model.vae
    scaled = (latents.to(model.device).float() / vae.config.scaling_factor + _shift(vae)).to(model.policy.vae_dtype)
    pixels = vae.decode(scaled).sample.float()
    array = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def edit_image_conditioning(model: LoadedModel, init_latents: torch.Tensor | None, batch: int,
                            latent_shape: tuple[int, ...]) -> torch.Tensor:
    """What an instruct-pix2pix UNet reads beside the latents: the init picture's latents without the
    VAE's scaling (A1111 and diffusers take the encoder's mode as is); zeros without a picture."""
    if init_latents is None:
        return torch.zeros(batch, *latent_shape, device=model.device)
    unscaled = init_latents / model.vae.config.scaling_factor + _shift(model.vae)
    per_image = unscaled.expand(batch, *unscaled.shape[1:]) if unscaled.shape[0] == 1 else unscaled
    return per_image.to(model.device).clone()


def _shift(vae) -> float:
    """Flux's and SD3's VAEs centre their latents (diffusers' shift_factor); SD's do not."""
    return getattr(vae.config, "shift_factor", None) or 0.0


def txt2img_image_conditioning(model: LoadedModel, batch: int, width: int, height: int) -> torch.Tensor:
    """What an inpainting UNet sees in txt2img (A1111): everything masked, over a grey image."""
    grey = torch.zeros(1, 3, height, width)  # 0.5 grey in [-1, 1]
    latent = encode_pixels(model, grey)
    mask = torch.ones_like(latent[:, :1])
    return torch.cat([mask, latent], dim=1).repeat(batch, 1, 1, 1)
