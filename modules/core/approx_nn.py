"""A1111's "Approx NN" live preview: a small convolutional net from latents to a picture at a quarter
of the full size, from the files A1111 keeps in ``models/VAE-approx`` (``model.pt`` for SD1/SD2
latents, ``vaeapprox-sdxl.pt`` for SDXL's).

The file format is a state dict of eight unpadded convolutions ``conv1`` … ``conv8``; the net
upsamples the latents twice (nearest), pads them by 11 on every side (which the convolutions'
kernels use up exactly) and puts a leaky ReLU (slope 0.1) after every convolution. The layers are
built from the shapes in the file, read weights-only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

FILES = {"sd1": "model.pt", "sd2": "model.pt", "sdxl": "vaeapprox-sdxl.pt", "sdxl_refiner": "vaeapprox-sdxl.pt"}
PAD = 11


class ApproxNNError(ValueError):
    """A file that is missing or cannot be used; the message names the file."""


class ApproxNN(nn.Module):
    def __init__(self, shapes: list[tuple[int, int, int, int]]):
        super().__init__()
        self.count = len(shapes)
        for i, (out_ch, in_ch, kh, kw) in enumerate(shapes, 1):
            setattr(self, f"conv{i}", nn.Conv2d(in_ch, out_ch, (kh, kw)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(F.interpolate(x, size=(x.shape[2] * 2, x.shape[3] * 2)), (PAD, PAD, PAD, PAD))
        for i in range(1, self.count + 1):
            x = F.leaky_relu(getattr(self, f"conv{i}")(x), 0.1)
        return x


def model_path(folder: Path, family: str) -> Path:
    name = FILES.get(family)
    if name is None:
        raise ApproxNNError(f"Approx NN has no model for {family} models")
    path = folder / name
    if not path.is_file():
        raise ApproxNNError(f"Approx NN preview needs {name} in {folder}")
    return path


def load(path: Path) -> ApproxNN:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file, pickle refusals included
        raise ApproxNNError(f"{path.name}: cannot be read ({str(error).splitlines()[0] if str(error) else error!r})") \
            from None
    if not isinstance(state, dict):
        raise ApproxNNError(f"{path.name}: not a state dict")
    shapes = []
    while isinstance(state.get(f"conv{len(shapes) + 1}.weight"), torch.Tensor):
        weight = state[f"conv{len(shapes) + 1}.weight"]
        if weight.ndim != 4:
            raise ApproxNNError(f"{path.name}: conv{len(shapes) + 1} is not a convolution")
        shapes.append(tuple(weight.shape))
    if not shapes or shapes[-1][0] != 3:
        raise ApproxNNError(f"{path.name}: not an Approx NN model (conv1 … conv8 ending in 3 channels)")
    model = ApproxNN(shapes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ApproxNNError(f"{path.name}: not an Approx NN model ({str(error).splitlines()[0]})") from None
    return model.eval()


@torch.no_grad()
def decode(model: ApproxNN, latents: torch.Tensor) -> Image.Image:
    """The first latent of the batch as a picture (twice the latent's size)."""
    weight = next(model.parameters())
    x = model(latents[:1].to(device=weight.device, dtype=weight.dtype))[0].float().cpu()
    array = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))
