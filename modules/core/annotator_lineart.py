"""The line-drawing generator of sd-webui-controlnet's ``lineart`` (label lineart_realistic, the user's
``lineart/sk_model.pth``) and ``lineart_coarse`` (``lineart/sk_model2.pth``): the informative-drawings
network (MIT); ``annotator_lineart_anime`` has the other two.

Both files are plain state dicts of one layout: ``model0`` (3-pixel reflection padding, a 7x7
convolution, instance norm, ReLU), ``model1`` (two stride-2 3x3 convolutions doubling the width, each
with instance norm and ReLU), ``model2`` (residual blocks, ``conv_block``: reflection pad, 3x3, norm,
ReLU, reflection pad, 3x3, norm, added to the block's input), ``model3`` (two stride-2 transposed
convolutions halving the width back) and ``model4`` (reflection pad, a 7x7 convolution to one channel,
sigmoid). The network is built from the file's shapes (width, residual blocks), read with weights only.
It takes RGB in 0..1 and draws dark lines on white (0..1); the extension's map is 255 minus the drawing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .annotator_files import NetworkCache, load, not_this, read_state

FILE = "lineart/sk_model.pth"  # under the annotator folder, as the extension's annotator/downloads
FILE_COARSE = "lineart/sk_model2.pth"
WHAT = "lineart generator (lineart / lineart_coarse)"


_NETWORKS = NetworkCache()  # the lineart networks' (both files here and annotator_lineart_anime's)


def cached(path: Path, build: Callable[[Path], nn.Module]) -> nn.Module:
    """``build(path)``, kept while the file is unchanged (the last two lineart networks built)."""
    return _NETWORKS.get(path, build, build.__module__, build.__name__)


# -- the generator -------------------------------------------------------------------------------------

def _conv_norm_relu(conv: nn.Module, width: int) -> list[nn.Module]:
    return [conv, nn.InstanceNorm2d(width), nn.ReLU()]


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv_block = nn.Sequential(nn.ReflectionPad2d(1), *_conv_norm_relu(nn.Conv2d(width, width, 3), width),
                                        nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), nn.InstanceNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """``model0`` .. ``model4`` of the files, for a first width ``width`` (64 in the real files) and
    ``blocks`` residual blocks (3)."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        w = width
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), *_conv_norm_relu(nn.Conv2d(3, w, 7), w))
        self.model1 = nn.Sequential(*_conv_norm_relu(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), 2 * w),
                                    *_conv_norm_relu(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), 4 * w))
        self.model2 = nn.Sequential(*[_Residual(4 * w) for _ in range(blocks)])
        up = dict(kernel_size=3, stride=2, padding=1, output_padding=1)
        self.model3 = nn.Sequential(*_conv_norm_relu(nn.ConvTranspose2d(4 * w, 2 * w, **up), 2 * w),
                                    *_conv_norm_relu(nn.ConvTranspose2d(2 * w, w, **up), w))
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(w, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


def build_generator(path: Path) -> LineartGenerator:
    """The generator of an sk_model file (CheckpointError when it is not one)."""
    state = read_state(path, WHAT)
    first = state.get("model0.1.weight")
    if first is None or first.ndim != 4 or "model4.1.weight" not in state:
        raise not_this(path, WHAT, "model0.1, model1.*, model2.N.conv_block.*, model3.*, model4.1")
    blocks = 0
    while f"model2.{blocks}.conv_block.1.weight" in state:
        blocks += 1
    return load(LineartGenerator(first.shape[0], blocks), state, path, WHAT)


def generator(path: Path) -> LineartGenerator:
    return cached(path, build_generator)


@torch.no_grad()
def drawing(net: LineartGenerator, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8: the generator's drawing, dark lines on white."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0).permute(2, 0, 1)[None]
    return (net(x)[0, 0].numpy() * 255.0).clip(0, 255).astype(np.uint8)
