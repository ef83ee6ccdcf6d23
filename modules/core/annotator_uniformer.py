"""The ADE20K segmenter of sd-webui-controlnet's ``segmentation`` preprocessor (label ``seg_ufade20k``),
run from the user's ``uniformer/upernet_global_small.pth`` (UniFormer's "upernet_global_small": a
UniFormer-S backbone with global attention and an mmsegmentation UperNet head, 150 ADE20K classes).

The file is an mmcv checkpoint ``{"meta": ..., "state_dict": ...}`` (read_state unwraps ``state_dict``)
of an mmseg ``EncoderDecoder``:

- ``backbone``: four stages, each a ``patch_embedN`` (a convolution with kernel = stride = 4, then 2, 2,
  2, to 64, 128, 320 and 512 channels, and a LayerNorm over the channels, eps 1e-5) and ``blocksN`` (3,
  4, 8 and 3 blocks). Every block first adds a depthwise 3x3 ``pos_embed`` of itself. The blocks of
  stages 1 and 2 are convolutional: ``x + conv2(attn(conv1(norm1(x))))`` (batch norm, 1x1, depthwise
  5x5, 1x1), then ``x + mlp(norm2(x))`` (batch norm, 1x1 ``fc1`` to 4x, GELU, 1x1 ``fc2``). The blocks
  of stages 3 and 4 attend globally over all positions: ``x + attn(norm1(x))`` (LayerNorm eps 1e-6,
  ``qkv`` with bias, heads of 64 channels, softmax(q k^T / 8) v, ``proj``), then ``x + mlp(norm2(x))``
  (linear ``fc1`` to 4x, GELU, ``fc2``). After each stage its output is taken through ``normN``
  (LayerNorm eps 1e-6 over the channels); the next stage embeds the un-normalised features.
- ``decode_head`` (UperNet, 512 channels; every ``ConvModule`` a bias-free ``conv``, batch norm ``bn``
  and ReLU): a pooling pyramid ``psp_modules`` on the last stage (adaptive average pools to 1, 2, 3 and
  6, a 1x1 ConvModule each, resized back bilinearly) concatenated with it into the 3x3 ``bottleneck``;
  1x1 ``lateral_convs`` of stages 1..3, a top-down path adding each level resized (bilinear) to the one
  below, 3x3 ``fpn_convs`` of levels 1..3, every level resized to the first and concatenated into the 3x3
  ``fpn_bottleneck`` and the 1x1 classifier ``conv_seg`` (with bias). Interpolations do not align corners.
- ``auxiliary_head`` (an FCN head on stage 3: one 3x3 ConvModule to 256 and ``conv_seg``): stored and
  loaded, unused at inference.

The sizes (widths, blocks per stage, MLP widths, head width, classes) are read off the state dict.

The extension runs it on its padded picture (``resize_with_pad``) through mmseg's ADE20K test pipeline:
resized (cv2 bilinear) by min(2048 / long side, 512 / short side) to int(side * scale + 0.5), its
channels swapped by the ``to_rgb`` of a pipeline made for BGR files (the RGB picture reaches the network
as BGR), normalised with ImageNet's mean and std in 0..255. The logits are resized (bilinear) to the
network input's size and then to the padded picture's, each pixel takes its most likely class, and the
map paints the class in the ADE20K palette (RGB). The preprocessor then cuts the padding off.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotator_files import NetworkCache, load, not_this, read_state

FILE = "uniformer/upernet_global_small.pth"  # under the annotator folder, as the extension's annotator/ckpts
WHAT = "UniFormer UperNet ADE20K segmenter (seg_ufade20k)"
HEAD_DIM = 64  # channels per attention head
POOL_SCALES = (1, 2, 3, 6)
TEST_SCALE = (2048, 512)  # mmseg's ADE20K test pipeline: img_scale, keep_ratio
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
CHUNK = 16  # classes resized at once (the full-size logits of 150 classes would take gigabytes)

# mmseg's ADE20K palette (RGB, by class index: wall, building, sky, floor, tree, ...)
PALETTE = np.array([
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80], [140, 140, 140],
    [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70],
    [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3], [0, 102, 200],
    [61, 230, 250], [255, 6, 51], [11, 102, 255], [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220],
    [255, 9, 92], [112, 9, 255], [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10],
    [7, 255, 255], [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255], [140, 140, 140],
    [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0], [153, 255, 0], [0, 0, 255],
    [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255], [11, 200, 200], [255, 82, 0], [0, 255, 245],
    [0, 61, 255], [0, 255, 112], [0, 255, 133], [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0],
    [0, 143, 255], [51, 255, 0], [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0],
    [0, 255, 153], [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194], [0, 255, 82],
    [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255], [0, 255, 163], [255, 153, 0],
    [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255], [163, 255, 0], [255, 235, 0], [8, 184, 170],
    [133, 0, 255], [0, 255, 92], [184, 0, 255], [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112],
    [92, 255, 0], [0, 224, 255], [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0],
    [255, 0, 163], [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255], [255, 255, 0],
    [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0], [173, 0, 255], [0, 245, 255],
    [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255], [184, 255, 0], [0, 133, 255], [255, 214, 0],
    [25, 194, 194], [102, 255, 0], [92, 0, 255]], dtype=np.uint8)


def _channels_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """A LayerNorm over the channels of (B, C, H, W)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()  # contiguous: as the original's convolutions see it


class PatchEmbed(nn.Module):
    def __init__(self, into: int, out: int, patch: int):
        super().__init__()
        self.norm = nn.LayerNorm(out)
        self.proj = nn.Conv2d(into, out, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_norm(self.norm, self.proj(x))


class Mlp(nn.Module):
    """fc1, GELU, fc2: 1x1 convolutions (``conv``) or linear layers."""

    def __init__(self, dim: int, hidden: int, conv: bool):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1) if conv else nn.Linear(dim, hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1) if conv else nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvBlock(nn.Module):
    """Stages 1 and 2: local aggregation by a depthwise 5x5 convolution."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, hidden, conv=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class AttentionBlock(nn.Module):
    """Stages 3 and 4: global multi-head self-attention over every position."""

    def __init__(self, dim: int, hidden: int, heads: int, bias: bool):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden, conv=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class UniFormer(nn.Module):
    def __init__(self, dims, layers, hidden, bias: bool = True, in_chans: int = 3):
        super().__init__()
        for stage, (into, dim) in enumerate(zip([in_chans, *dims[:-1]], dims), 1):
            setattr(self, f"patch_embed{stage}", PatchEmbed(into, dim, 4 if stage == 1 else 2))
        for stage, (dim, count, wide) in enumerate(zip(dims, layers, hidden), 1):
            blocks = [ConvBlock(dim, wide) if stage <= 2 else AttentionBlock(dim, wide, max(1, dim // HEAD_DIM), bias)
                      for _ in range(count)]
            setattr(self, f"blocks{stage}", nn.ModuleList(blocks))
            setattr(self, f"norm{stage}", nn.LayerNorm(dim, eps=1e-6))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in range(1, 5):
            x = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"blocks{stage}"):
                x = block(x)
            outs.append(_channels_norm(getattr(self, f"norm{stage}"), x))
        return outs


class ConvModule(nn.Module):
    """mmcv's ConvModule as configured here: a bias-free convolution, batch norm, ReLU."""

    def __init__(self, into: int, out: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(into, out, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _resized(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    def __init__(self, dims, channels: int, classes: int):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, classes, 1)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(dims[-1], channels, 1)) for scale in POOL_SCALES)
        self.bottleneck = ConvModule(dims[-1] + len(POOL_SCALES) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(dim, channels, 1) for dim in dims[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in dims[:-1])
        self.fpn_bottleneck = ConvModule(len(dims) * channels, channels, 3)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        pooled = [_resized(pool(top), top.shape[2:]) for pool in self.psp_modules]
        levels = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        levels.append(self.bottleneck(torch.cat([top, *pooled], dim=1)))
        for i in range(len(levels) - 1, 0, -1):  # top-down
            levels[i - 1] = levels[i - 1] + _resized(levels[i], levels[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, levels)] + [levels[-1]]
        outs = [outs[0]] + [_resized(x, outs[0].shape[2:]) for x in outs[1:]]
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(nn.Module):
    """The auxiliary head (training only): kept for the file's keys."""

    def __init__(self, into: int, channels: int, classes: int):
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, classes, 1)
        self.convs = nn.Sequential(ConvModule(into, channels, 3))


class UniFormerUperNet(nn.Module):
    """The segmenter; the defaults are upernet_global_small's sizes."""

    def __init__(self, dims=(64, 128, 320, 512), layers=(3, 4, 8, 3), hidden=None, channels: int = 512,
                 classes: int = 150, aux_channels: int | None = 256, bias: bool = True, in_chans: int = 3):
        super().__init__()
        hidden = hidden or [4 * dim for dim in dims]
        self.backbone = UniFormer(dims, layers, hidden, bias, in_chans)
        self.decode_head = UPerHead(dims, channels, classes)
        if aux_channels:
            self.auxiliary_head = FCNHead(dims[2], aux_channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, classes, H / 4, W / 4) logits."""
        return self.decode_head(self.backbone(x))


def sizes(state: dict[str, torch.Tensor]) -> dict:
    """UniFormerUperNet's arguments read off a state dict of its layout."""
    dims = [state[f"backbone.patch_embed{i}.proj.weight"].shape[0] for i in range(1, 5)]
    layers = []
    for stage in range(1, 5):
        found = {int(m.group(1)) for k in state if (m := re.match(rf"backbone\.blocks{stage}\.(\d+)\.", k))}
        layers.append(max(found) + 1 if found else 0)
    hidden = [state[f"backbone.blocks{i}.0.mlp.fc1.weight"].shape[0] if layers[i - 1] else 4 * dims[i - 1]
              for i in range(1, 5)]
    classes, channels = state["decode_head.conv_seg.weight"].shape[:2]
    aux = state.get("auxiliary_head.convs.0.conv.weight")
    return dict(dims=dims, layers=layers, hidden=hidden, channels=channels, classes=classes,
                aux_channels=None if aux is None else aux.shape[0],
                bias=not layers[2] or "backbone.blocks3.0.attn.qkv.bias" in state,
                in_chans=state["backbone.patch_embed1.proj.weight"].shape[1])


def build(path: Path) -> UniFormerUperNet:
    """The network of an upernet_global_small.pth file (CheckpointError, naming the file, when it is not one)."""
    state = read_state(path, WHAT)  # the mmcv checkpoint's "state_dict" (read_state unwraps it)
    marks = [f"backbone.patch_embed{i}.proj.weight" for i in range(1, 5)] + ["decode_head.conv_seg.weight"]
    if any(key not in state for key in marks):
        raise not_this(path, WHAT, "backbone.patch_embed1..4/blocks1..4/norm1..4 (UniFormer), decode_head "
                                   "(UperNet), under 'state_dict'")
    return load(UniFormerUperNet(**sizes(state)), state, path, WHAT)


_NETWORKS = NetworkCache(size=1)  # 52 million weights, 210 MB


def network(path: Path) -> UniFormerUperNet:
    """The built network of ``path`` (upernet_global_small.pth), kept while the file is unchanged."""
    return _NETWORKS.get(path, build)


def network_input(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float: mmseg's test pipeline (keep-ratio rescale into
    2048 x 512, bilinear; channels swapped to BGR; ImageNet mean and std in 0..255)."""
    h, w = image.shape[:2]
    scale = min(max(TEST_SCALE) / max(h, w), min(TEST_SCALE) / min(h, w))
    size = (int(w * scale + 0.5), int(h * scale + 0.5))
    resized = cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_LINEAR)
    x = (resized[:, :, ::-1].astype(np.float64) - MEAN.astype(np.float64)) * (1.0 / STD.astype(np.float64))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]


def paint(classes: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB in the ADE20K palette (black past its 150 colours)."""
    palette = np.zeros((max(int(classes.max(initial=0)) + 1, len(PALETTE)), 3), np.uint8)
    palette[:len(PALETTE)] = PALETTE
    return palette[classes]


@torch.no_grad()
def classes_of(net: UniFormerUperNet, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) int64 most likely class of each pixel (the logits resized to the
    network input's size and then to the picture's; a few classes at a time)."""
    param = next(net.parameters())
    x = network_input(image)
    logits = net(x.to(param.device, param.dtype)).float()
    size, full = x.shape[2:], image.shape[:2]
    best = index = None
    for start in range(0, logits.shape[1], CHUNK):
        part = _resized(logits[:, start:start + CHUNK], size)
        if tuple(size) != tuple(full):
            part = _resized(part, full)
        value, which = part[0].max(dim=0)
        if best is None:
            best, index = value, which
        else:
            better = value > best  # the first class wins a tie, as argmax
            best, index = torch.where(better, value, best), torch.where(better, which + start, index)
    return index.cpu().numpy()


def segment(net: UniFormerUperNet, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) uint8 ADE20K segmentation map."""
    return paint(classes_of(net, image))


def segmentation(padded: np.ndarray, files: list[Path], _unused: float) -> np.ndarray:
    """The ``segmentation`` map of the extension's padded picture (files: the upernet_global_small.pth path)."""
    return segment(network(files[0]), padded)
