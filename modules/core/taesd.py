"""TAESD, the tiny autoencoder: A1111's "TAESD" live preview method, and its ``sd_vae_encode_method`` /
``sd_vae_decode_method`` = "TAESD" (pictures <-> latents without the checkpoint's VAE).

The files are the ones A1111 keeps in ``models/VAE-approx``: ``taesd_decoder.pth`` /
``taesd_encoder.pth`` for SD1/SD2 latents, ``taesdxl_*`` for SDXL's (madebyollin/taesd's layout: an
``nn.Sequential``; the decoder's first entry is the clamp, so its keys are ``1.weight``,
``3.conv.0.weight``, …, the encoder's start at ``0.weight``); ``.safetensors`` files and the
diffusers ``AutoencoderTiny`` layout (``decoder.layers.N…`` / ``encoder.layers.N…``) load too. They
are read weights-only and built as diffusers' ``AutoencoderTiny`` decoder / encoder: the decoder
takes the latents as the UNet sees them and returns a picture in [-1, 1]; the encoder takes a picture
in [-1, 1] and returns such latents.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# model family -> the stem of its TAESD files, as A1111 names them (taesd for SD1/SD2, taesdxl for SDXL; the
# SD3 / Flux ones, which may read the latents at another scale, are not taken): ``<stem>_decoder.pth`` and
# ``<stem>_encoder.pth``
FILE_STEMS = {"sd1": "taesd", "sd2": "taesd", "sdxl": "taesdxl", "sdxl_refiner": "taesdxl"}
DECODER_FILES = {family: f"{stem}_decoder.pth" for family, stem in FILE_STEMS.items()}
ENCODER_FILES = {family: f"{stem}_encoder.pth" for family, stem in FILE_STEMS.items()}
SUFFIXES = (".pth", ".pt", ".safetensors")


class TaesdError(ValueError):
    """A decoder file that is missing or cannot be used; the message names the file."""


def decoder_path(folder: Path, family: str, purpose: str = "TAESD preview") -> Path:
    """The decoder file for a model family in ``folder`` (a .safetensors twin of the A1111 name is
    taken too); TaesdError naming the file and the folder when there is none."""
    return _path(folder, family, DECODER_FILES, "decoder", purpose)


def encoder_path(folder: Path, family: str, purpose: str = "TAESD encode") -> Path:
    """The encoder file for a model family in ``folder``, as ``decoder_path``."""
    return _path(folder, family, ENCODER_FILES, "encoder", purpose)


def _path(folder: Path, family: str, names: dict[str, str], part: str, purpose: str) -> Path:
    name = names.get(family)
    if name is None:
        raise TaesdError(f"TAESD has no {part} for {family} models")
    for candidate in (folder / name, folder / (Path(name).stem + ".safetensors")):
        if candidate.is_file():
            return candidate
    raise TaesdError(f"{purpose} needs {name} in {folder}")


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file, pickle refusals included
        raise TaesdError(f"{path.name}: cannot be read ({str(error).splitlines()[0] if str(error) else error!r})") \
            from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TaesdError(f"{path.name}: not a state dict of tensors")
    return state


def _to_diffusers(state: dict[str, torch.Tensor], part: str = "decoder") -> dict[str, torch.Tensor]:
    """taesd's Sequential keys -> DecoderTiny's / EncoderTiny's ``layers`` (the decoder's index 0 is
    the parameterless clamp, which DecoderTiny applies in its forward; the encoder has none)."""
    if any(k.startswith(f"{part}.layers.") for k in state):
        return {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(f"{part}.")}
    shift = 1 if part == "decoder" else 0
    out = {}
    for key, value in state.items():
        match = re.match(r"^(\d+)\.(.+)$", key)
        if match is None:
            raise TaesdError(f"unexpected key {key!r} for a TAESD {part}")
        out[f"layers.{int(match.group(1)) - shift}.{match.group(2)}"] = value
    return out


def load_decoder(path: Path) -> torch.nn.Module:
    """The decoder of ``path`` on the CPU, in eval mode."""
    return _load(path, "decoder")


def load_encoder(path: Path) -> torch.nn.Module:
    """The encoder of ``path`` on the CPU, in eval mode."""
    return _load(path, "encoder")


def _load(path: Path, part: str) -> torch.nn.Module:
    from diffusers import AutoencoderTiny

    state = _to_diffusers(_read(path), part)
    if part == "decoder":  # the first convolution reads the latents
        first = state.get("layers.0.weight")
        channels = first.shape[1] if first is not None and first.ndim == 4 else None
    else:  # the last one writes them
        last = max((int(k.split(".")[1]) for k in state if re.match(r"^layers\.\d+\.weight$", k)), default=None)
        weight = state.get(f"layers.{last}.weight") if last is not None else None
        channels = weight.shape[0] if weight is not None and weight.ndim == 4 else None
    if channels is None:
        raise TaesdError(f"{path.name}: not a TAESD {part} (no {'first' if part == 'decoder' else 'last'} "
                         f"convolution)")
    module = getattr(AutoencoderTiny(latent_channels=channels), part)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TaesdError(f"{path.name}: not a TAESD {part} ({len(missing)} weights missing, "
                         f"{len(unexpected)} unexpected)")
    return module.eval()


@torch.no_grad()
def decode_tensor(decoder: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Latents as the UNet sees them (B, C, h, w) -> pictures (B, 3, 8h, 8w) in about [-1, 1], float32."""
    weight = next(decoder.parameters())
    return decoder(latents.to(device=weight.device, dtype=weight.dtype)).float()


@torch.no_grad()
def encode_tensor(encoder: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Pictures (B, 3, H, W) in [-1, 1] -> latents as the UNet sees them, float32."""
    weight = next(encoder.parameters())
    return encoder(pixels.to(device=weight.device, dtype=weight.dtype)).float()


@torch.no_grad()
def decode(decoder: torch.nn.Module, latents: torch.Tensor) -> Image.Image:
    """The first latent of the batch as a picture."""
    weight = next(decoder.parameters())
    x = decoder(latents[:1].to(device=weight.device, dtype=weight.dtype))[0].float().cpu()
    array = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))
