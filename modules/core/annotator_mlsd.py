"""The M-LSD line-segment network of sd-webui-controlnet's ``mlsd``, run from the user's
``mlsd/mlsd_large_512_fp32.pth`` (NAVER's Apache-2.0 M-LSD, the large MobileNetV2 model).

The file is a plain state dict. ``backbone.features.0`` .. ``features.13`` are MobileNetV2's first
layers: a stride-2 3x3 convolution (4 -> 32; the picture plus a constant plane), then inverted residual
blocks (1x1 expansion, depthwise 3x3, 1x1 projection, each with batch norm; ReLU6 after the first two;
the input added back where the shape is kept) in five stages of 1, 2, 3, 4 and 3 blocks, the first block
of stages 2..4 at stride 2; stride-2 convolutions pad only the right and bottom edges, as TFLite. The
decoder walks back up the stages' last outputs: ``block15``/``17``/``19``/``21`` (two 1x1 convolutions
with batch norm and ReLU, the deeper one doubled in size, except at ``block15``, and the two concatenated),
each followed by ``block16``/``18``/``20``/``22`` (two 3x3 convolutions with a residual), then ``block23``
(a dilated 3x3, a 3x3, a 1x1 to the output channels). Channels 7.. of the output, at half the picture's
size, are the tp map: a line-centre score and the displacements to both ends. The widths come from the
file's shapes; the layer layout is fixed, as the stride of a block cannot be read from its shapes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .annotator_files import NetworkCache, load_named
from .checkpoint_file import CheckpointError, CheckpointFile

FILE = "mlsd/mlsd_large_512_fp32.pth"  # under the annotator folder, as the extension's annotator/downloads
STRIDES = (2, 1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1)  # backbone.features.0..13
STAGE_ENDS = (1, 3, 6, 10, 13)  # the features whose outputs the decoder reads
TOP_K = 200  # line centres looked at
CENTRE_POOL = 3  # a centre must be the maximum of its 3x3 neighbourhood


def _conv_bn(into: int, out: int, size: int, *, stride: int = 1, groups: int = 1, dilation: int = 1,
             bias: bool = False) -> torch.nn.Sequential:
    """Convolution (``.0``) and batch norm (``.1``); stride 2 pads right and bottom only."""
    padding = 0 if stride == 2 else dilation * (size - 1) // 2
    return torch.nn.Sequential(torch.nn.Conv2d(into, out, size, stride, padding, dilation=dilation, groups=groups,
                                               bias=bias), torch.nn.BatchNorm2d(out))


def _run(layer: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    if layer[0].stride[0] == 2:
        x = F.pad(x, (0, 1, 0, 1))
    return layer(x)


class InvertedResidual(torch.nn.Module):
    """``conv``: [expansion (conv, bn),] depthwise (conv, bn), projection conv, projection bn."""

    def __init__(self, into: int, hidden: int, out: int, stride: int, expand: bool):
        super().__init__()
        layers = [_conv_bn(into, hidden, 1)] if expand else []
        layers += [_conv_bn(hidden, hidden, 3, stride=stride, groups=hidden),
                   torch.nn.Conv2d(hidden, out, 1, bias=False), torch.nn.BatchNorm2d(out)]
        self.conv = torch.nn.Sequential(*layers)
        self.residual = stride == 1 and into == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.conv[:-2]:
            y = F.relu6(_run(layer, y))
        y = self.conv[-1](self.conv[-2](y))
        return x + y if self.residual else y


class Merge(torch.nn.Module):
    """Decoder block A: the shallow map (``conv2``) and the deep map (``conv1``, doubled in size when
    ``upscale``), each through a 1x1 convolution, batch norm and ReLU, concatenated."""

    def __init__(self, shallow: int, deep: int, shallow_out: int, deep_out: int, upscale: bool):
        super().__init__()
        self.conv1 = _conv_bn(deep, deep_out, 1, bias=True)
        self.conv2 = _conv_bn(shallow, shallow_out, 1, bias=True)
        self.upscale = upscale

    def forward(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = F.relu(self.conv1(deep))
        if self.upscale:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((F.relu(self.conv2(shallow)), deep), dim=1)


class Refine(torch.nn.Module):
    """Decoder block B: a 3x3 convolution with the input added back, then a 3x3 to ``out``."""

    def __init__(self, channels: int, out: int):
        super().__init__()
        self.conv1 = _conv_bn(channels, channels, 3, bias=True)
        self.conv2 = _conv_bn(channels, out, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x)) + x))


class Head(torch.nn.Module):
    """Decoder block C: a 3x3 dilated by 5, a 3x3 (each with batch norm and ReLU), a 1x1 to ``out``."""

    def __init__(self, channels: int, out: int):
        super().__init__()
        self.conv1 = _conv_bn(channels, channels, 3, dilation=5, bias=True)
        self.conv2 = _conv_bn(channels, channels, 3, bias=True)
        self.conv3 = torch.nn.Conv2d(channels, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))


class MobileNetBackbone(torch.nn.Module):
    def __init__(self, features: list[torch.nn.Module]):
        super().__init__()
        self.features = torch.nn.Sequential(*features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, outs = F.relu6(_run(self.features[0], x)), []
        for index in range(1, STAGE_ENDS[-1] + 1):
            x = self.features[index](x)
            if index in STAGE_ENDS:
                outs.append(x)
        return outs


class MLSD(torch.nn.Module):
    """The backbone and the decoder blocks ``block15`` .. ``block23``; the file's keys."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        stem = shapes["backbone.features.0.0.weight"][0]
        features: list[torch.nn.Module] = [_conv_bn(shapes["backbone.features.0.0.weight"][1], stem, 3, stride=2)]
        widths = [stem]
        for index in range(1, len(STRIDES)):
            prefix = f"backbone.features.{index}.conv"
            expand = f"{prefix}.3.weight" in shapes  # an expansion layer: four entries, else three
            hidden = shapes[f"{prefix}.0.0.weight"][0]
            out = shapes[f"{prefix}.{3 if expand else 2}.weight"][0]  # the projection's batch norm
            features.append(InvertedResidual(widths[-1], hidden, out, STRIDES[index], expand))
            widths.append(out)
        self.backbone = MobileNetBackbone(features)
        skips = [widths[i] for i in STAGE_ENDS]
        deep = skips[-1]
        for number, skip in zip((15, 17, 19, 21), reversed(skips[:-1])):
            merge_deep = shapes[f"block{number}.conv1.0.weight"][0]
            merge_shallow = shapes[f"block{number}.conv2.0.weight"][0]
            self.add_module(f"block{number}", Merge(skip, deep, merge_shallow, merge_deep, upscale=number != 15))
            refined = shapes[f"block{number + 1}.conv2.0.weight"][0]
            self.add_module(f"block{number + 1}", Refine(merge_shallow + merge_deep, refined))
            deep = refined
        self.block23 = Head(deep, shapes["block23.conv3.weight"][0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 4, H, W) -> the tp map (1, C - 7, H / 2, W / 2)."""
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        return self.block23(x)[:, 7:]


def build(path: Path) -> MLSD:
    """The network of an M-LSD large file (CheckpointError when it is not one)."""
    name = Path(path).name
    file = CheckpointFile(path)
    try:
        try:
            net = MLSD(file.shapes)
        except (KeyError, IndexError, ValueError) as exc:
            detail = f"it lacks {exc}" if isinstance(exc, KeyError) else f"its shapes do not fit ({exc})"
            raise CheckpointError(f"{name} is not an M-LSD large state dict (backbone.features.0..13, "
                                  f"block15..block23): {detail}") from None
        if net.block23.conv3.out_channels < 12:
            raise CheckpointError(f"{name}: block23.conv3 has {net.block23.conv3.out_channels} output channels, "
                                  f"M-LSD's tp map needs 12")
        own = net.state_dict()  # batch norms' num_batches_tracked: kept when a converted file drops them
        missing = [k for k in own if k not in file.shapes and not k.endswith("num_batches_tracked")]
        if missing:
            raise CheckpointError(f"{name} lacks {', '.join(missing[:3])}")
        state = {k: file.get(k, torch.float32 if v.is_floating_point() else None) if k in file.shapes else v
                 for k, v in own.items()}
    finally:
        file.close()
    return load_named(net, state, name)


_NETWORKS = NetworkCache()


def network(path: Path) -> MLSD:
    """The built network of ``path``, kept while the file is unchanged (the last two files)."""
    return _NETWORKS.get(path, build)


@torch.no_grad()
def segments(net: MLSD, image: np.ndarray, score_threshold: float, distance_threshold: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (N, 4) float64 segments (x0, y0, x1, y1) in the picture's pixels: the
    centres among the ``TOP_K`` best local maxima scoring over ``score_threshold`` whose ends lie
    more than ``distance_threshold`` (tp-map pixels) apart."""
    h, w = image.shape[:2]
    planes = np.concatenate([image.astype(np.float32), np.ones((h, w, 1), np.float32)], axis=2)
    x = torch.from_numpy(planes / np.float32(127.5) - np.float32(1.0)).permute(2, 0, 1)[None]
    tp = net(x)
    score = torch.sigmoid(tp[0, 0])
    peaks = score * (F.max_pool2d(score[None], CENTRE_POOL, stride=1, padding=CENTRE_POOL // 2)[0] == score)
    best, where = torch.topk(peaks.reshape(-1), min(TOP_K, peaks.numel()))
    width = tp.shape[3]
    ends = tp[0, 1:5].permute(1, 2, 0).numpy()  # (h/2, w/2, 4): start dx, dy, end dx, dy
    length = np.sqrt(np.sum((ends[:, :, :2] - ends[:, :, 2:]) ** 2, axis=-1))
    found = []
    for value, index in zip(best.tolist(), where.tolist()):
        row, col = divmod(index, width)
        # compared in float32, as the scores and lengths are
        if np.float32(value) > np.float32(score_threshold) and length[row, col] > np.float32(distance_threshold):
            found.append([col + float(ends[row, col, 0]), row + float(ends[row, col, 1]),
                          col + float(ends[row, col, 2]), row + float(ends[row, col, 3])])
    return 2.0 * np.array(found, dtype=np.float64).reshape(-1, 4)  # the tp map is at half size


def line_map(net: MLSD, image: np.ndarray, score_threshold: float, distance_threshold: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8: the segments drawn one pixel wide in white on black."""
    out = np.zeros(image.shape[:2], dtype=np.uint8)
    for x0, y0, x1, y1 in segments(net, image, score_threshold, distance_threshold):
        cv2.line(out, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
    return out
