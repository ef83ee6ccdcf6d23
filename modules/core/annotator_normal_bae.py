"""The surface normal estimator of sd-webui-controlnet's ``normal_bae`` (the user's ``normal_bae/scannet.pt``,
Gwangbin Bae's MIT-licensed "Estimating and Exploiting the Aleatoric Uncertainty in Surface Normal
Estimation", trained on ScanNet).

The file is a torch checkpoint holding ``{"model": state dict}`` (72.6 million weights). The network:

- ``encoder.original_model``: EfficientNet-B5 (AdvProp, TensorFlow-compatible), named as gen-efficientnet
  names it, without its pooling and classifier: a stride-2 3x3 ``conv_stem`` to 48 channels, ``bn1``,
  swish; seven stages of ``blocks`` (repeats 3, 5, 5, 7, 7, 9, 3; kernels 3, 3, 5, 3, 5, 5, 3; strides 1,
  2, 2, 2, 1, 2, 1; widths 24, 40, 64, 128, 176, 304, 512), the first stage depthwise-separable blocks
  (``conv_dw``, ``bn1``, swish, ``se``, ``conv_pw``, ``bn2``), the others inverted residuals expanding six
  times (``conv_pw``, ``bn1``, swish, ``conv_dw``, ``bn2``, swish, ``se``, ``conv_pwl``, ``bn3``), each with
  squeeze-and-excitation (``conv_reduce`` to a quarter of the block's input width, swish, ``conv_expand``,
  sigmoid gate) and a residual where the width and size stay; a 1x1 ``conv_head`` to 2048 (and ``bn2``,
  stored but not used: the decoder takes the head before it). Convolutions have no bias, pad like
  TensorFlow's "SAME" (a stride-2 convolution of an even size pads one pixel less on the top and left than
  on the bottom and right) and their batch norms have eps 1e-3.
- ``decoder``: a 1x1 ``conv2`` of the head; four ``upN._net`` stages (bilinear upsampling with aligned
  corners to the size of the skip, concatenation, two 3x3 convolutions with batch norm and leaky ReLU) with
  the outputs of stages 5, 3, 2 and 1 (176, 64, 40 and 24 channels) down to 128 channels at half size;
  ``out_conv_res8`` (3x3) predicts (x, y, z, kappa) at an eighth of the size, and three refiners
  ``out_conv_res4/2/1`` (1x1 Conv1d stacks over the pixels: 128, ReLU, 128, ReLU, 128, ReLU, 4) predict it
  again at each doubling from the doubled features and the doubled previous prediction. Each prediction
  is normalised: (x, y, z) to unit length (plus 1e-10) and kappa to elu(kappa) + 1.01. At inference every
  pixel is refined (the uncertainty-guided sampling is only used in training); the last, full-size
  prediction is the result.

The picture (RGB, the extension's padded picture: sides multiples of 64) goes in as 0..1 normalised with
ImageNet's mean and std; the map is ((x, y, z) + 1) / 2 as RGB, clipped and cut to 0..255.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotator_files import NetworkCache, load, not_this, read_state

FILE = "normal_bae/scannet.pt"  # under the annotator folder, as the extension's annotator/downloads
WHAT = "NormalBae normal estimator (normal_bae)"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as the extension normalises

STEM, HEAD, EXPANSION = 48, 2048, 6
# EfficientNet-B5's stages (B0's widened 1.6 times, deepened 2.2 times): (repeats, kernel, stride, width)
STAGES = ((3, 3, 1, 24), (5, 3, 2, 40), (5, 5, 2, 64), (7, 3, 2, 128), (7, 5, 1, 176), (9, 5, 2, 304),
          (3, 3, 1, 512))
SKIPS = (0, 1, 2, 4)  # the stages whose outputs the decoder takes (24, 40, 64 and 176 channels)


class SameConv2d(nn.Conv2d):
    """A convolution without bias padded like TensorFlow's "SAME": the output is ceil(size / stride), the
    padding split with the odd pixel on the bottom and right (for stride 1 and odd kernels: symmetric)."""

    def __init__(self, into: int, out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(into, out, kernel, stride=stride, groups=groups, bias=False,
                         padding=(kernel - 1) // 2 if stride == 1 else 0)  # odd kernels: symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)  # TensorFlow's default


class _SqueezeExcite(nn.Module):
    """The channels gated by sigmoid(conv_expand(swish(conv_reduce(their means))))."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


class _DepthwiseSeparable(nn.Module):
    """The first stage's block: depthwise conv, bn, swish, squeeze-excite, pointwise conv, bn (+ input)."""

    def __init__(self, into: int, out: int, kernel: int):
        super().__init__()
        self.conv_dw = SameConv2d(into, into, kernel, groups=into)
        self.bn1 = _bn(into)
        self.se = _SqueezeExcite(into, into // 4)
        self.conv_pw = SameConv2d(into, out, 1)
        self.bn2 = _bn(out)
        self.residual = into == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(F.silu(self.bn1(self.conv_dw(x))))))
        return y + x if self.residual else y


class _InvertedResidual(nn.Module):
    """Expand six times (1x1, bn, swish), depthwise conv (bn, swish), squeeze-excite (reduced to a quarter
    of the input width), project (1x1, bn); plus the input where the width and size stay."""

    def __init__(self, into: int, out: int, kernel: int, stride: int):
        super().__init__()
        mid = into * EXPANSION
        self.conv_pw = SameConv2d(into, mid, 1)
        self.bn1 = _bn(mid)
        self.conv_dw = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self.bn2 = _bn(mid)
        self.se = _SqueezeExcite(mid, into // 4)
        self.conv_pwl = SameConv2d(mid, out, 1)
        self.bn3 = _bn(out)
        self.residual = into == out and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn2(self.conv_dw(F.silu(self.bn1(self.conv_pw(x))))))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return y + x if self.residual else y


class EfficientNetB5(nn.Module):
    """gen-efficientnet's tf_efficientnet_b5_ap without pooling and classifier (``original_model``)."""

    def __init__(self):
        super().__init__()
        self.conv_stem = SameConv2d(3, STEM, 3, stride=2)
        self.bn1 = _bn(STEM)
        stages, into = [], STEM
        for index, (repeats, kernel, stride, width) in enumerate(STAGES):
            blocks = []
            for repeat in range(repeats):
                step = stride if repeat == 0 else 1
                blocks.append(_DepthwiseSeparable(into, width, kernel) if index == 0
                              else _InvertedResidual(into, width, kernel, step))
                into = width
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = SameConv2d(into, HEAD, 1)
        self.bn2 = _bn(HEAD)  # in the file; the decoder reads the head before it

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of stages 1, 2, 3 and 5 (1/2, 1/4, 1/8, 1/16 size) and of the head (1/32)."""
        x = F.silu(self.bn1(self.conv_stem(x)))
        skips = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in SKIPS:
                skips.append(x)
        return [*skips, self.conv_head(x)]


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.original_model = EfficientNetB5()


class _UpSample(nn.Module):
    """``_net``: the coarser map upsampled (bilinear, aligned corners) to the skip's size, concatenated with
    it, then twice a 3x3 convolution, batch norm and leaky ReLU."""

    def __init__(self, into: int, out: int):
        super().__init__()
        self._net = nn.Sequential(nn.Conv2d(into, out, 3, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU(),
                                  nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([x, skip], dim=1))


def _refiner(into: int) -> nn.Sequential:
    """A per-pixel MLP (1x1 Conv1d layers over the flattened pixels): into -> 128 -> 128 -> 128 -> 4."""
    return nn.Sequential(nn.Conv1d(into, 128, 1), nn.ReLU(), nn.Conv1d(128, 128, 1), nn.ReLU(),
                         nn.Conv1d(128, 128, 1), nn.ReLU(), nn.Conv1d(128, 4, 1))


def normalised(prediction: torch.Tensor) -> torch.Tensor:
    """(B, 4, ...) (x, y, z, kappa) -> the normal of unit length (+ 1e-10) and kappa as elu + 1.01."""
    xyz, kappa = prediction[:, :3], prediction[:, 3:]
    length = torch.sqrt((xyz ** 2).sum(dim=1, keepdim=True)) + 1e-10
    return torch.cat([xyz / length, F.elu(kappa) + 1.0 + 0.01], dim=1)


def _doubled(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(HEAD, HEAD, 1)
        self.up1 = _UpSample(HEAD + 176, 1024)
        self.up2 = _UpSample(1024 + 64, 512)
        self.up3 = _UpSample(512 + 40, 256)
        self.up4 = _UpSample(256 + 24, 128)
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4 = _refiner(512 + 4)
        self.out_conv_res2 = _refiner(256 + 4)
        self.out_conv_res1 = _refiner(128 + 4)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        half, quarter, eighth, sixteenth, head = features
        x16 = self.up1(self.conv2(head), sixteenth)
        x8 = self.up2(x16, eighth)
        x4 = self.up3(x8, quarter)
        x2 = self.up4(x4, half)
        prediction = normalised(self.out_conv_res8(x8))
        for features_map, refine in ((x8, self.out_conv_res4), (x4, self.out_conv_res2), (x2, self.out_conv_res1)):
            both = torch.cat([_doubled(features_map), _doubled(prediction)], dim=1)
            b, c, h, w = both.shape
            prediction = normalised(refine(both.reshape(b, c, h * w))).reshape(b, 4, h, w)
        return prediction


class NormalBae(nn.Module):
    """The network of scannet.pt, with its key names."""

    def __init__(self):
        super().__init__()
        self.encoder = _Encoder()
        self.decoder = _Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised RGB, H and W multiples of 32 -> (B, 4, H, W): unit normal and kappa."""
        return self.decoder(self.encoder.original_model(x))


def build(path: Path) -> NormalBae:
    """The network of a scannet.pt file (CheckpointError, naming the file, when it is not one)."""
    state = read_state(path, WHAT)  # the real file keeps its weights under "model" (read_state unwraps it)
    if "encoder.original_model.conv_stem.weight" not in state or "decoder.out_conv_res1.6.weight" not in state:
        raise not_this(path, WHAT, "encoder.original_model (EfficientNet-B5), decoder.conv2, up1..4, "
                                   "out_conv_res8/4/2/1, under 'model'")
    return load(NormalBae(), state, path, WHAT)


_NETWORKS = NetworkCache(size=1)  # 290 MB each


def network(path: Path) -> NormalBae:
    """The built network of ``path`` (scannet.pt), kept while the file is unchanged."""
    return _NETWORKS.get(path, build)


def to_colours(normal: np.ndarray) -> np.ndarray:
    """(..., 3) unit normals (x, y, z) -> uint8 RGB: ((n + 1) / 2) clipped to 0..1, times 255, cut."""
    return (((normal.astype(np.float32) + 1) * 0.5).clip(0, 1) * 255.0).clip(0, 255).astype(np.uint8)


@torch.no_grad()
def normal_map(net: NormalBae, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB, H and W multiples of 32 -> (H, W, 3) uint8 normal map."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    normal = net(x)[0, :3].permute(1, 2, 0).numpy()
    return to_colours(normal)


def normal_bae(padded: np.ndarray, files: list[Path], a: float) -> np.ndarray:
    """The ``normal_bae`` map of the extension's padded picture (files: the scannet.pt path)."""
    return normal_map(network(files[0]), padded)
