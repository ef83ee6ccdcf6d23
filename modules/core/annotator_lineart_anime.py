"""The networks of sd-webui-controlnet's ``lineart_anime`` (the user's ``lineart_anime/netG.pth``, a
pix2pix U-Net) and ``lineart_anime_denoise`` (``manga_line/erika.pth``, the res_skip network of
MangaLineExtraction), read with weights only and built from the files' shapes.

``netG.pth``: a U-Net of nested levels, keys ``model.model.*`` (often under a DataParallel ``module.``
prefix). The outermost level is a 4x4 stride-2 convolution from RGB, the inner levels, then ReLU, a
4x4 stride-2 transposed convolution to one channel and tanh. Each inner level is LeakyReLU(0.2), a
4x4 stride-2 convolution, instance norm (the innermost has none), the levels inside it, ReLU, a
transposed convolution back and instance norm; its output is its input and that, stacked. Eight
downsamplings in the real file; the picture is resized to multiples of 256, in -1..1, and the drawing
(dark lines on white) resized back; the extension's map is 255 minus it.

``erika.pth``: residual stages ``block0`` .. ``block9`` of basic blocks (``conv1``, ``residual``: batch
norm (eps 1e-3), LeakyReLU(0.2), 3x3 convolution; a ``shortcut`` 1x1 convolution where the width or the
stride changes). ``block1`` .. ``block4`` end with a stride-2 block, ``block5`` .. ``block8`` start with
one that upsamples (nearest, x2) and each adds the encoder stage of its size; ``block9`` and ``conv15``
(1x1 to one channel) finish. It takes the grey picture in 0..255; the map is 255 minus its output
(white lines on black: the extension inverts it no further).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotator_files import load, not_this, read_state
from .annotator_lineart import cached

FILE_ANIME = "lineart_anime/netG.pth"  # under the annotator folder, as the extension's annotator/downloads
FILE_MANGA = "manga_line/erika.pth"
WHAT_ANIME = "lineart_anime U-Net"
WHAT_MANGA = "lineart_anime_denoise (manga_line) network"
MAX_DOWNS = 8  # the real file's; the picture's sides are made multiples of 2**8 = 256


# -- lineart_anime: the U-Net -------------------------------------------------------------------------

class _UnetLevel(nn.Module):
    """One inner level: ``model`` is down (LeakyReLU, conv, norm), ``inside``, up (ReLU, transposed conv,
    norm); the innermost level (no ``inside``) has no norm on the way down."""

    def __init__(self, outer: int, inner: int, inside: _UnetLevel | None):
        super().__init__()
        down = nn.Conv2d(outer, inner, 4, stride=2, padding=1)
        up = nn.ConvTranspose2d(inner if inside is None else 2 * inner, outer, 4, stride=2, padding=1)
        if inside is None:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, nn.InstanceNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.InstanceNorm2d(inner), inside, nn.ReLU(), up,
                      nn.InstanceNorm2d(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.model(x)], 1)


class _UnetOutermost(nn.Module):
    def __init__(self, width: int, inside: _UnetLevel):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(3, width, 4, stride=2, padding=1), inside, nn.ReLU(),
                                   nn.ConvTranspose2d(2 * width, 1, 4, stride=2, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class AnimeUnet(nn.Module):
    """``model``: the outermost level over inner levels of (outer, inner) widths, outside in
    (the real file: (64, 128), (128, 256), (256, 512), then (512, 512) four times)."""

    def __init__(self, levels: list[tuple[int, int]]):
        super().__init__()
        inside = None
        for outer, inner in reversed(levels):
            inside = _UnetLevel(outer, inner, inside)
        self.model = _UnetOutermost(levels[0][0], inside)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_unet(path: Path) -> AnimeUnet:
    """The U-Net of a netG file (CheckpointError when it is not one)."""
    state = read_state(path, WHAT_ANIME)
    levels, prefix = [], "model.model.1"
    while f"{prefix}.model.1.weight" in state and state[f"{prefix}.model.1.weight"].ndim == 4:
        inner, outer = state[f"{prefix}.model.1.weight"].shape[:2]
        levels.append((outer, inner))
        prefix += ".model.3"
    first = state.get("model.model.0.weight")
    if not levels or first is None or first.ndim != 4:
        raise not_this(path, WHAT_ANIME, "model.model.0, model.model.1.model.1, ..., model.model.3")
    if len(levels) + 1 > MAX_DOWNS:
        raise not_this(path, WHAT_ANIME, f"{len(levels) + 1} downsamplings, the real one has {MAX_DOWNS}")
    widths = [first.shape[0]] + [inner for _, inner in levels]
    if [outer for outer, _ in levels] != widths[:-1]:
        raise not_this(path, WHAT_ANIME, f"level widths {levels} do not chain")
    return load(AnimeUnet(levels), state, path, WHAT_ANIME)


def unet(path: Path) -> AnimeUnet:
    return cached(path, build_unet)


@torch.no_grad()
def anime_drawing(net: AnimeUnet, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8: the U-Net's drawing, dark lines on white. The picture is
    resized (bicubic) to multiples of 256 and the drawing back, as the extension does."""
    h, w = image.shape[:2]
    size = 2 ** MAX_DOWNS
    hn, wn = size * int(np.ceil(h / size)), size * int(np.ceil(w / size))
    x = cv2.resize(np.ascontiguousarray(image), (wn, hn), interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(x).float().div(127.5).sub(1.0).permute(2, 0, 1)[None]
    line = (net(x)[0, 0] * 127.5 + 127.5).numpy()
    return cv2.resize(line, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


# -- lineart_anime_denoise: res_skip ------------------------------------------------------------------

class _BnReluConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, upsample: bool = False):
        super().__init__()
        layers = [nn.BatchNorm2d(cin, eps=1e-3), nn.LeakyReLU(0.2),
                  nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)]
        self.model = nn.Sequential(*layers, *([nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Block(nn.Module):
    """``conv1`` (strided or upsampling), ``residual``, and the ``shortcut`` the sum takes the input by:
    itself, or a 1x1 convolution (with the same stride or upsampling) where the width or size changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False):
        super().__init__()
        self.conv1 = _BnReluConv(cin, cout, stride=stride, upsample=upsample)
        self.residual = _BnReluConv(cout, cout)
        self.shortcut = _Shortcut(cin, cout, stride, upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(self.conv1(x))


class _Shortcut(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, upsample: bool):
        super().__init__()
        self.model = None
        if cin != cout or stride != 1:
            self.model = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride),
                                       *([nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.model is None else self.model(x)


class _Stage(nn.Module):
    """``model``: ``repeats`` blocks; ``down`` ends with a stride-2 block, ``up`` starts with an
    upsampling one, ``flat`` keeps the size."""

    def __init__(self, cin: int, cout: int, repeats: int, kind: str):
        super().__init__()
        self.model = nn.Sequential(*[
            _Block(cin if i == 0 else cout, cout, stride=2 if kind == "down" and i == repeats - 1 else 1,
                   upsample=kind == "up" and i == 0) for i in range(repeats)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MangaLineNetwork(nn.Module):
    """``block0`` .. ``block9`` of ``widths`` and ``repeats`` (the real file: 24, 48, 96, 192, 384, 192,
    96, 48, 24, 16 wide; 2, 3, 5, 7, 12, 7, 5, 3, 2, 2 blocks) and ``conv15``."""

    def __init__(self, widths: list[int], repeats: list[int]):
        super().__init__()
        channels = 1
        for index, (width, count) in enumerate(zip(widths, repeats)):
            kind = "flat" if index in (0, 9) else "down" if index < 5 else "up"
            self.add_module(f"block{index}", _Stage(channels, width, count, kind))
            channels = width
        self.conv15 = _BnReluConv(channels, 1, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index in range(5):
            x = getattr(self, f"block{index}")(x)
            skips.append(x)
        skips.pop()
        for index in range(5, 9):
            x = getattr(self, f"block{index}")(x) + skips.pop()
        return self.conv15(self.block9(x))


def build_manga(path: Path) -> MangaLineNetwork:
    """The res_skip network of an erika file (CheckpointError when it is not one)."""
    state = read_state(path, WHAT_MANGA)
    widths, repeats = [], []
    for index in range(10):
        count = 0
        while f"block{index}.model.{count}.conv1.model.2.weight" in state:
            count += 1
        if count == 0:
            raise not_this(path, WHAT_MANGA, "block0..block9.model.N.conv1/residual/shortcut, conv15")
        widths.append(state[f"block{index}.model.0.conv1.model.2.weight"].shape[0])
        repeats.append(count)
    if widths[5:9] != widths[3::-1]:
        raise not_this(path, WHAT_MANGA, f"decoder widths {widths[5:9]} do not match the encoder's {widths[3::-1]}")
    if any(widths[i - 1] == widths[i] for i in range(5, 9)):
        raise not_this(path, WHAT_MANGA, "an upsampling stage keeps its width (no shortcut to upsample)")
    return load(MangaLineNetwork(widths, repeats), state, path, WHAT_MANGA)


def manga_network(path: Path) -> MangaLineNetwork:
    return cached(path, build_manga)


@torch.no_grad()
def manga_lines(net: MangaLineNetwork, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8: white lines on black. The grey picture is edge-padded to
    multiples of 16 (the four downsamplings; the extension's pictures already are) and cut back."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    x = torch.from_numpy(grey).float()[None, None]
    x = F.pad(x, (0, -w % 16, 0, -h % 16), mode="replicate")
    line = 255.0 - net(x)[0, 0, :h, :w].numpy()
    return line.clip(0, 255).astype(np.uint8)
