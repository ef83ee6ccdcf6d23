"""The TEED edge detector of sd-webui-controlnet's ``softedge_teed`` (the user's ``TEED/7_model.pth``,
Xavier Soria's MIT-licensed Tiny and Efficient Edge Detector) and ``softedge_anyline`` (the same network
with TheMistoAI's ``TEED/MTEED.pth`` weights, plus the extension's lineart_standard touch-up).

Both files are plain state dicts of one fixed layout (about 58 thousand weights, every convolution with
a bias): ``block_1`` (3 -> 16, a stride-2 3x3 ``conv1`` and a 3x3 ``conv2``, Smish after each),
``block_2`` (16 -> 32, two 3x3 convolutions, Smish after the first only), ``side_1`` and ``pre_dense_3``
(1x1 ``conv``: 16 -> 32 with stride 2, 32 -> 48), ``dblock_3.denselayer1`` (a 3x3 ``conv1`` padded by 2
and an unpadded 3x3 ``conv2``, 32 -> 48), three upsampling heads ``up_block_1..3`` (``features``: a 1x1
convolution, Smish, a stride-2 transposed convolution, once for the first two and twice for the third)
and the fusion ``block_cat`` (two depthwise 3x3 convolutions, ``DWconv1`` 3 -> 24 and ``DWconv2`` 24 ->
24). Smish is x * tanh(log(1 + sigmoid(x))). It reads RGB in 0..255 as it is, on a picture whose sides
are multiples of 4 (the extension's padded pictures are of 64); the edge map is the sigmoid of the mean
of its four maps (three heads and the fusion), optionally cut into ``safe_steps`` levels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotator_files import NetworkCache, load, not_this, read_state

FILE = "TEED/7_model.pth"  # under the annotator folder, as the extension's annotator/downloads
FILE_MTEED = "TEED/MTEED.pth"  # Anyline's weights (TheMistoAI/MistoLine), the same network
WHAT = "TEED edge detector (softedge_teed / softedge_anyline)"
ANYLINE_MIN_PIXELS = 12  # the extension drops lineart specks of fewer 4-connected pixels (see anyline_map)


def smish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(torch.log(1 + torch.sigmoid(x)))


class Smish(nn.Module):
    """Smish as a layer (it holds no weights; it keeps the indices of the ``features`` lists)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smish(x)


class _TwoConvs(nn.Module):
    """Two 3x3 convolutions, Smish after the first, and after the second when ``both``."""

    def __init__(self, into: int, out: int, stride: int = 1, both: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(into, out, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        self.both = both

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(smish(self.conv1(x)))
        return smish(x) if self.both else x


class _Pointwise(nn.Module):
    """One 1x1 convolution (``conv``)."""

    def __init__(self, into: int, out: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(into, out, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _DenseLayer(nn.Module):
    """Smish, a 3x3 convolution padded by 2, Smish, an unpadded 3x3: the same size again; the result
    is averaged with the second input."""

    def __init__(self, into: int, out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(into, out, 3, padding=2)
        self.conv2 = nn.Conv2d(out, out, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.conv2(smish(self.conv1(smish(x)))) + skip)


def _upsampler(into: int, doublings: int) -> nn.Module:
    """``features``: per doubling a 1x1 convolution (to 16 channels, the last to 1), Smish and a stride-2
    transposed convolution (kernel 2 with no padding for one doubling, kernel 4 padded by 1 for two)."""
    kernel, padding = {1: (2, 0), 2: (4, 1)}[doublings]
    layers = []
    for step in range(doublings):
        width = 1 if step == doublings - 1 else 16
        layers += [nn.Conv2d(into, width, 1), Smish(),
                   nn.ConvTranspose2d(width, width, kernel, stride=2, padding=padding)]
        into = width
    head = nn.Module()
    head.features = nn.Sequential(*layers)
    return head


class _Fusion(nn.Module):
    """The three heads' maps -> one: depthwise 3x3 to 8 maps each (24), Smish, depthwise 3x3 again; the
    sum of both stages' 24 maps, through Smish."""

    def __init__(self, heads: int = 3):
        super().__init__()
        self.DWconv1 = nn.Conv2d(heads, heads * 8, 3, padding=1, groups=heads)
        self.DWconv2 = nn.Conv2d(heads * 8, heads * 8, 3, padding=1, groups=heads * 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.DWconv1(smish(x))
        second = self.DWconv2(smish(first))
        return smish((second + first).sum(dim=1, keepdim=True))


class TEED(nn.Module):
    """The network of 7_model.pth and MTEED.pth, with their key names."""

    def __init__(self):
        super().__init__()
        self.block_1 = _TwoConvs(3, 16, stride=2)
        self.block_2 = _TwoConvs(16, 32, both=False)
        self.dblock_3 = nn.Module()
        self.dblock_3.denselayer1 = _DenseLayer(32, 48)
        self.side_1 = _Pointwise(16, 32, stride=2)
        self.pre_dense_3 = _Pointwise(32, 48, stride=1)
        self.up_block_1 = _upsampler(16, 1)
        self.up_block_2 = _upsampler(32, 1)
        self.up_block_3 = _upsampler(48, 2)
        self.block_cat = _Fusion(3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(1, 3, H, W) RGB in 0..255, H and W multiples of 4 -> four (1, 1, H, W) maps (before the
        sigmoid): the three heads' (half, half and quarter resolution features) and their fusion."""
        half = self.block_1(x)
        wide = self.block_2(half)
        quarter = F.max_pool2d(wide, kernel_size=3, stride=2, padding=1)
        deep = self.dblock_3.denselayer1(quarter + self.side_1(half), self.pre_dense_3(quarter))
        maps = [self.up_block_1.features(half), self.up_block_2.features(wide), self.up_block_3.features(deep)]
        return [*maps, self.block_cat(torch.cat(maps, dim=1))]


def build(path: Path) -> TEED:
    """The network of a TEED file (CheckpointError, naming the file, when it is not one)."""
    state = read_state(path, WHAT)
    if "block_cat.DWconv1.weight" not in state or "up_block_3.features.5.weight" not in state:
        raise not_this(path, WHAT, "block_1, block_2, dblock_3.denselayer1, side_1, pre_dense_3, "
                                   "up_block_1..3.features, block_cat.DWconv1/2")
    return load(TEED(), state, path, WHAT)


_NETWORKS = NetworkCache()


def network(path: Path) -> TEED:
    """The built network of ``path`` (7_model.pth or MTEED.pth), kept while the file is unchanged."""
    return _NETWORKS.get(path, build)


def safe_steps_of(edge: np.ndarray, steps: int) -> np.ndarray:
    """The extension's safe_step: ``edge`` in 0..1 cut into levels 0, 1/steps, 2/steps, ... (a value of
    exactly 1 lands on (steps + 1) / steps, which the 0..255 clip takes back to 255)."""
    levels = (edge.astype(np.float32) * float(steps + 1)).astype(np.int32)
    return levels.astype(np.float32) / float(steps)


@torch.no_grad()
def edges(net: TEED, image: np.ndarray, safe_steps: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 soft edges (white on black); ``safe_steps`` 0: not cut."""
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None]
    maps = [m[0, 0].numpy().astype(np.float32) for m in net(x)]
    maps = [cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in maps]
    edge = 1 / (1 + np.exp(-np.mean(np.stack(maps, axis=2), axis=2).astype(np.float64)))
    if safe_steps != 0:
        edge = safe_steps_of(edge, safe_steps)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def _faint_lines(image: np.ndarray) -> np.ndarray:
    """The pixels where the extension's lineart_standard map (of the picture at its own size) is exactly 1,
    in 4-connected groups of at least ``ANYLINE_MIN_PIXELS``: (H, W) bool."""
    x = image.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16, float(np.median(strong)) if strong.size else 16)
    lines = (intensity * 127).clip(0, 255).astype(np.uint8) == 1
    count, labels, stats, _ = cv2.connectedComponentsWithStats(lines.astype(np.uint8), connectivity=4)
    big = stats[:, cv2.CC_STAT_AREA] >= ANYLINE_MIN_PIXELS
    big[0] = False  # the background
    return big[labels] & lines


def anyline_map(net: TEED, image: np.ndarray, safe_steps: int = 2) -> np.ndarray:
    """softedge_anyline of the padded picture: (H, W, 3) uint8 RGB -> (H, W) uint8.

    The extension lays the lineart_standard map over the MTEED edges, keeping the lineart pixels whose
    value lies in 0..1 and that sit in groups of 12 or more pixels (skimage's remove_small_objects with
    min_size 36 over the three equal channels), and blends them in with a screen formula written for
    0..1 but computed on uint8 maps: where such a pixel is, the result is 1, elsewhere the edges. This
    does the same (the lineart map of the padded picture at its size, as the extension's is whenever
    its two maps agree in size)."""
    edge = edges(net, image, safe_steps)
    edge[_faint_lines(image)] = 1
    return edge


def softedge_teed(padded: np.ndarray, files: list[Path], safe_steps: float) -> np.ndarray:
    """The ``softedge_teed`` map of the extension's padded picture (files: the 7_model.pth path)."""
    return edges(network(files[0]), padded, int(safe_steps))


def softedge_anyline(padded: np.ndarray, files: list[Path], safe_steps: float) -> np.ndarray:
    """The ``softedge_anyline`` map of the extension's padded picture (files: the MTEED.pth path)."""
    return anyline_map(network(files[0]), padded, int(safe_steps))
