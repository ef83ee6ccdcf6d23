"""TAESD, the tiny autoencoder for previews (A1111's "TAESD" live preview method).

The decoder files are the ones A1111 keeps in ``models/VAE-approx``: ``taesd_decoder.pth`` for
SD1/SD2 latents and ``taesdxl_decoder.pth`` for SDXL's (madebyollin/taesd's layout: an
``nn.Sequential`` whose first entry is the clamp, so its keys are ``1.weight``, ``3.conv.0.weight``,
…); ``.safetensors`` files and the diffusers ``AutoencoderTiny`` layout (``decoder.layers.N…``) load
too. They are read weights-only and built as diffusers' ``AutoencoderTiny`` decoder, which takes
the latents as the UNet sees them and returns a picture in [-1, 1].
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DECODER_FILES = {"sd1": "taesd_decoder.pth", "sd2": "taesd_decoder.pth", "sdxl": "taesdxl_decoder.pth",
                 "sdxl_refiner": "taesdxl_decoder.pth"}
SUFFIXES = (".pth", ".pt", ".safetensors")


class TaesdError(ValueError):
    """A decoder file that is missing or cannot be used; the message names the file."""


def decoder_path(folder: Path, family: str) -> Path:
    """The decoder file for a model family in ``folder`` (a .safetensors twin of the A1111 name is
    taken too); TaesdError naming the file and the folder when there is none."""
    name = DECODER_FILES.get(family)
    if name is None:
        raise TaesdError(f"TAESD has no decoder for {family} models")
    for candidate in (folder / name, folder / (Path(name).stem + ".safetensors")):
        if candidate.is_file():
            return candidate
    raise TaesdError(f"TAESD preview needs {name} in {folder}")


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


def _to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """taesd's Sequential keys (index 0 is the parameterless clamp) -> DecoderTiny's ``layers``."""
    if any(k.startswith("decoder.layers.") for k in state):
        return {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    out = {}
    for key, value in state.items():
        match = re.match(r"^(\d+)\.(.+)$", key)
        if match is None:
            raise TaesdError(f"unexpected key {key!r} for a TAESD decoder")
        out[f"layers.{int(match.group(1)) - 1}.{match.group(2)}"] = value
    return out


def load_decoder(path: Path) -> torch.nn.Module:
    """The decoder of ``path`` on the CPU, in eval mode."""
    from diffusers import AutoencoderTiny

    state = _to_diffusers(_read(path))
    first = state.get("layers.0.weight")
    if first is None or first.ndim != 4:
        raise TaesdError(f"{path.name}: not a TAESD decoder (no first convolution)")
    model = AutoencoderTiny(latent_channels=first.shape[1])
    decoder = model.decoder
    missing, unexpected = decoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TaesdError(f"{path.name}: not a TAESD decoder ({len(missing)} weights missing, "
                         f"{len(unexpected)} unexpected)")
    return decoder.eval()


@torch.no_grad()
def decode(decoder: torch.nn.Module, latents: torch.Tensor) -> Image.Image:
    """The first latent of the batch as a picture."""
    weight = next(decoder.parameters())
    x = decoder(latents[:1].to(device=weight.device, dtype=weight.dtype))[0].float().cpu()
    array = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))
