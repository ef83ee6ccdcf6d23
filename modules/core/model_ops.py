"""What the first pass, hires fix and img2img do with a loaded model, in one place: the denoiser
call (the family's), pixels <-> latents through the VAE, and an inpainting UNet's conditioning.

Every use of a part goes through the model's memory owner (``model.memory.use``), and the outputs
are checked for NaN as A1111 does (``model.run_options.nan_check``): a UNet giving only NaN stops
the job with A1111's message; a half-precision VAE giving NaN is turned into fp32 and decodes again
(``auto_vae_precision``), saying so once. Big pictures go through the VAE in tiles (vae_tiling).

A1111's ``sd_vae_encode_method`` / ``sd_vae_decode_method`` = "TAESD" (``run_options.vae_encode_method`` /
``vae_decode_method``): pictures are encoded / latents decoded by the tiny autoencoder of the model's
family instead of its VAE (``run_options.taesd(family, "encoder" | "decoder")`` gives it, owned by the
memory owner like the VAE); TAESD takes and gives the latents as the UNet sees them. A missing file is
a RequestError on the option, naming the file and its folder (models/VAE-approx)."""

from __future__ import annotations

import sys

import numpy as np
import torch
from PIL import Image

from . import memory as memory_owner
from . import taesd as tiny_vae
from . import vae_tiling
from .devices import VAE_FP32_RETRY_MESSAGE, NansException, nans_message
from .families.base import Denoiser
from .model_loader import LoadedModel
from .types import RequestError

# the option that chooses each direction's method (A1111's names: the RequestError's field)
_METHOD_OPTIONS = {"encoder": "sd_vae_encode_method", "decoder": "sd_vae_decode_method"}


def denoiser(model: LoadedModel, residuals=None) -> Denoiser:
    """``call(x, t, cond)``: the model's raw prediction (eps, v, ...) in float32. ``residuals``
    (ControlNet, ``modules.core.controlnet.UnetResiduals``): called with the UNet's inputs, it gives
    extra UNet keyword arguments (the additional down/mid block residuals)."""
    call = model.family.denoiser(model) if residuals is None else model.family.denoiser(model, residuals=residuals)

    def run(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        with _using(model, model.unet):
            out = call(x, t, cond)
        if model.run_options.nan_check and torch.isnan(out).all():
            raise NansException(nans_message("unet", model.policy.unet_dtype != torch.float32, False))
        return out

    return run


def _using(model: LoadedModel, part: torch.nn.Module):
    owner = model.memory if model.memory is not None else memory_owner.DeviceMemory(model.device)
    return owner.use(part)


def vae_method(model: LoadedModel, part: str) -> str:
    """"Full" (the model's VAE) or "TAESD" for ``part`` "encoder" / "decoder" (the options')."""
    options = model.run_options
    return (options.vae_encode_method if part == "encoder" else options.vae_decode_method) or "Full"


def _tiny(model: LoadedModel, part: str) -> torch.nn.Module | None:
    """The TAESD encoder / decoder to use instead of the VAE, or None when the option says "Full"."""
    if vae_method(model, part) != "TAESD":
        return None
    option = _METHOD_OPTIONS[part]
    find = model.run_options.taesd
    if find is None:
        raise RequestError(option, f"TAESD needs its {part} file in models/VAE-approx (no such folder here)")
    try:
        return find(model.spec.family, part)
    except tiny_vae.TaesdError as error:
        raise RequestError(option, str(error)) from None


def vae_dtype(vae: torch.nn.Module) -> torch.dtype:
    """The dtype the VAE runs in: its weights' (fp32 after a NaN retry, whatever the policy said)."""
    return next(vae.parameters()).dtype


@torch.no_grad()
def encode_pixels(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> scaled latents; the distribution's mean, so it is deterministic.
    With sd_vae_encode_method "TAESD", TAESD's encoder's latents."""
    encoder = _tiny(model, "encoder")
    if encoder is not None:
        with _using(model, encoder):
            return tiny_vae.encode_tensor(encoder, pixels)
    vae = model.vae
    with _using(model, vae):
        dtype = vae_dtype(vae)

        def encode(x: torch.Tensor) -> torch.Tensor:
            return vae.encode(x.to(model.device, dtype)).latent_dist.mean

        tile = _tile(model, "encode", pixels.shape, dtype)
        if tile:
            overlap = _overlap(model, tile)
            mean = vae_tiling.tiled_with_shared_norms(encode, vae.encoder, pixels, tile, overlap,
                                                      1 / model.latent_scale, vae.config.latent_channels, overlap)
        else:
            mean = encode(pixels)
    return (mean.float() - _shift(vae)) * vae.config.scaling_factor


@torch.no_grad()
def decode_pixels(model: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> (B, 3, H, W) float pixels in about [-1, 1], checked for NaN (see the
    module's docstring), in tiles when the whole picture would not fit. With sd_vae_decode_method
    "TAESD", TAESD's decoder's pictures of the latents as they are."""
    decoder = _tiny(model, "decoder")
    if decoder is not None:
        with _using(model, decoder):
            return tiny_vae.decode_tensor(decoder, latents)
    vae = model.vae
    scaled = latents.to(model.device).float() / vae.config.scaling_factor + _shift(vae)
    options = model.run_options
    pixels = _decode(model, scaled)
    if options.nan_check and not torch.isfinite(pixels).all():
        half = vae_dtype(vae) != torch.float32
        if half and options.auto_vae_precision:
            if not model.extra.get("vae_fp32_retry_said"):
                print(VAE_FP32_RETRY_MESSAGE, file=sys.stderr)
                model.extra["vae_fp32_retry_said"] = True
            memory_owner.move(vae, dtype=torch.float32)  # for good, as A1111 does
            if model.memory is not None:
                model.memory.refresh(vae)
            pixels = _decode(model, scaled)
        if torch.isnan(pixels).all():
            raise NansException(nans_message("vae", half, half))
    return pixels


def _decode(model: LoadedModel, scaled: torch.Tensor) -> torch.Tensor:
    vae = model.vae
    with _using(model, vae):
        dtype = vae_dtype(vae)

        def decode(z: torch.Tensor) -> torch.Tensor:
            return vae.decode(z.to(dtype)).sample

        tile = _tile(model, "decode", scaled.shape, dtype)
        if tile:
            scale = model.latent_scale
            overlap = _overlap(model, tile * scale) // scale
            return vae_tiling.tiled_with_shared_norms(decode, vae.decoder, scaled, tile, overlap, scale,
                                                      vae.config.out_channels, overlap)
        return decode(scaled).float()


def _tile(model: LoadedModel, direction: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """The tile side (in the input's units) when this picture goes through in tiles, else 0."""
    options = model.run_options
    if options.vae_tiling == "Never":
        return 0
    scale = model.latent_scale
    pixel_tile = max(2 * scale, options.vae_tile_size // scale * scale)
    tile = pixel_tile // scale if direction == "decode" else pixel_tile
    if shape[2] <= tile and shape[3] <= tile:
        return 0
    if options.vae_tiling == "Always":
        return tile
    height, width = (shape[2] * scale, shape[3] * scale) if direction == "decode" else (shape[2], shape[3])
    estimate = (vae_tiling.decode_bytes if direction == "decode" else vae_tiling.encode_bytes)(
        dict(model.vae.config), shape[0], height, width, dtype)
    return tile if estimate > free_bytes(model) else 0


def _overlap(model: LoadedModel, tile_pixels: int) -> int:
    return min(model.run_options.vae_tile_overlap, tile_pixels // 4)


def free_bytes(model: LoadedModel) -> int:
    """Memory free for activations: the owner's budget less what is resident; else the device's."""
    owner = model.memory
    if owner is not None and owner.budget_bytes is not None:
        return owner.budget_bytes - owner.resident_bytes
    free = memory_owner.free_device_bytes(model.device)
    if free is not None:
        return free
    return memory_owner.available_bytes(model.device)  # the CPU: what the kernel could give


@torch.no_grad()
def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    pixels = decode_pixels(model, latents)
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
