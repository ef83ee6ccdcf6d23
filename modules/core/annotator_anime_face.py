"""The anime face segmentation UNet of sd-webui-controlnet's ``anime_face_segment`` (label
``seg_anime_face``), run from the user's ``anime_face_segment/UNet.pth`` (the file the extension fetches
from bdsqlsz/qinglong_controlnet-lllite's ``Annotators/UNet.pth``).

The file is a plain state dict of one fixed layout. The encoder is the first 17 layers of torchvision's
MobileNetV2 ``features`` (written out here, with the same keys) in five stages: ``en_block0`` (the stride-2
3x3 stem, 3 -> 32, and a bottleneck to 16), ``en_block1`` (two bottlenecks to 24, the first at stride 2),
``en_block2`` (three to 32), ``en_block3`` (four to 64 then three to 96) and ``en_block4`` (three to
160); a bottleneck is an optional 1x1 expansion by 6, a depthwise 3x3 and a 1x1 projection, each
convolution without bias and with batch norm, ReLU6 after the first two, the input added back where the
shape is kept. The decoder ``de_block4`` .. ``de_block1`` doubles the size (nearest), applies a biased 3x3
convolution (key ``.1``), instance norm without weights and LeakyReLU(0.1), is resized bilinearly (corners
aligned) to the stage below and concatenated with it; ``de_block0`` doubles once more and convolves to the
seven classes' softmax.

The extension runs it on its padded picture resized (bicubic, PIL) to 512 on the short side, RGB in
0..1 without normalisation, and paints each pixel with the colour of its most likely class
(background, hair, eye, mouth, face, skin, clothes). The map is resized (nearest) back to the padded
picture's size here; the extension cuts its 512-scale map with the padded picture's crop, which gives the
same map at its default resolution of 512 and only a corner of it at smaller ones.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .annotator_files import NetworkCache, load, not_this, read_state

FILE = "anime_face_segment/UNet.pth"  # under the annotator folder, as the extension's annotator/downloads
WHAT = "anime face segmentation UNet (seg_anime_face)"
SIDE = 512  # the short side the network sees
CLASSES = ("background", "hair", "eye", "mouth", "face", "skin", "clothes")
PALETTE = np.array([(255, 255, 0), (0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 255, 0), (0, 255, 255),
                    (255, 0, 255)], dtype=np.uint8)  # RGB, by class index
# MobileNetV2's features 1..16: (expansion, output channels, blocks, stride of the first), and the stage
# (en_block0..4) that ends after each group
BOTTLENECKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2))
STAGE_OF_GROUP = (0, 1, 2, 3, 3, 4)
STEM = 32


def _conv_bn(into: int, out: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True) -> nn.Sequential:
    """Convolution without bias (``.0``), batch norm (``.1``) and optionally ReLU6 (``.2``)."""
    layers = [nn.Conv2d(into, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
    return nn.Sequential(*layers, *([nn.ReLU6()] if relu6 else []))


class Bottleneck(nn.Module):
    """MobileNetV2's inverted residual; ``conv``: [1x1 expansion,] depthwise 3x3, 1x1 projection conv, its bn."""

    def __init__(self, into: int, out: int, stride: int, expansion: int):
        super().__init__()
        hidden = into * expansion
        layers = [_conv_bn(into, hidden, 1)] if expansion != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), *_conv_bn(hidden, out, 1, relu6=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and into == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def _decoder(into: int, out: int, last: bool = False) -> nn.Sequential:
    """Nearest doubling, a biased 3x3 convolution (``.1``), then instance norm and LeakyReLU(0.1), or the
    classes' softmax for the last."""
    tail = [nn.Softmax(dim=1)] if last else [nn.InstanceNorm2d(out), nn.LeakyReLU(0.1)]
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(into, out, 3, padding=1), *tail)


class AnimeFaceUNet(nn.Module):
    """The network of UNet.pth, with its key names."""

    def __init__(self):
        super().__init__()
        stages: list[list[nn.Module]] = [[_conv_bn(3, STEM, 3, stride=2)], [], [], [], []]
        widths, into = [0] * 5, STEM
        for (expansion, out, blocks, stride), stage in zip(BOTTLENECKS, STAGE_OF_GROUP):
            for block in range(blocks):
                stages[stage].append(Bottleneck(into, out, stride if block == 0 else 1, expansion))
                into = widths[stage] = out
        for index, layers in enumerate(stages):
            self.add_module(f"en_block{index}", nn.Sequential(*layers))
        # widths: 16, 24, 32, 96, 160; each decoder block takes the deeper map (and its skip, but for the deepest)
        self.de_block4 = _decoder(widths[4], widths[3])
        for index in (3, 2, 1):
            self.add_module(f"de_block{index}", _decoder(2 * widths[index], widths[index - 1]))
        self.de_block0 = _decoder(2 * widths[0], len(CLASSES), last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) RGB in 0..1 -> (1, 7, H', W') class probabilities (H', W': H, W rounded up to even)."""
        skips = []
        for index in range(5):
            x = getattr(self, f"en_block{index}")(x)
            skips.append(x)
        x = skips.pop()
        for index in (4, 3, 2, 1):
            skip = skips.pop()
            x = getattr(self, f"de_block{index}")(x)
            x = torch.cat((F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=True), skip), dim=1)
        return self.de_block0(x)


def build(path: Path) -> AnimeFaceUNet:
    """The network of a UNet.pth file (CheckpointError, naming the file, when it is not one)."""
    state = read_state(path, WHAT)
    if "en_block4.2.conv.3.running_var" not in state or "de_block0.1.weight" not in state:
        raise not_this(path, WHAT, "en_block0..4 (MobileNetV2 features 0..16), de_block4..0")
    return load(AnimeFaceUNet(), state, path, WHAT)


_NETWORKS = NetworkCache()


def network(path: Path) -> AnimeFaceUNet:
    """The built network of ``path``, kept while the file is unchanged."""
    return _NETWORKS.get(path, build)


def network_input(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float in 0..1, the short side resized to ``SIDE`` with PIL's
    bicubic filter and the long one to int(SIDE * long / short), as torchvision's Resize(512) does."""
    h, w = image.shape[:2]
    long = int(SIDE * max(h, w) / min(h, w))
    width, height = (long, SIDE) if h <= w else (SIDE, long)
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BICUBIC))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].float() / 255.0


def paint(classes: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB in the extension's colours."""
    return PALETTE[classes]


@torch.no_grad()
def segment(net: AnimeFaceUNet, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) uint8 map, every pixel one of ``PALETTE``."""
    h, w = image.shape[:2]
    classes = net(network_input(image))[0].argmax(dim=0).numpy().astype(np.uint8)
    if classes.shape != (h, w):
        classes = cv2.resize(classes, (w, h), interpolation=cv2.INTER_NEAREST)
    return paint(classes)


def anime_face_segment(padded: np.ndarray, files: list[Path], _unused: float) -> np.ndarray:
    """The ``anime_face_segment`` map of the extension's padded picture (files: the UNet.pth path)."""
    return segment(network(files[0]), padded)
