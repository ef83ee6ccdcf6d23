"""sd-webui-controlnet's ``depth_leres`` and ``depth_leres++``: LeReS relative depth (Yin et al., "Learning
to Recover 3D Scene Shape from a Single Image", the user's ``leres/res101.pth``) and, for ``++``, the
"boosting monocular depth" merge network (Miangoleh et al., the user's ``leres/latest_net_G.pth``).

``res101.pth`` is a torch checkpoint ``{"depth_model": state dict}`` saved from a DataParallel (keys
``module.depth_model.…``). The network:

- ``depth_model.encoder_modules.encoder``: ResNeXt-101 32x8d without pooling and classifier (torchvision's
  layout: a 7x7 stride-2 ``conv1`` to 64, ``bn1``, ReLU, 3x3 stride-2 max pool; ``layer1..4`` of 3, 4, 23
  and 3 bottlenecks, 1x1 ``conv1`` to the block's width (256, 512, 1024, 2048), grouped 3x3 ``conv2`` (32
  groups, the stride of the stage's first block), 1x1 ``conv3`` to 256, 512, 1024, 2048, batch norms
  ``bn1..3``, a 1x1 ``downsample`` on each stage's first block); the four stages' outputs go on.
- ``depth_model.decoder_modules``: ``conv`` (a feature transfer block, FTB: 3x3 ``conv1``, then
  ``x + conv_branch(x)`` with ``conv_branch`` = ReLU, 3x3 conv, batch norm, ReLU, 3x3 conv, then ReLU; the
  branch's first ReLU works in place in the original, so the sum takes the rectified ``x``) of the last
  stage to 512, a 3x3 ``conv1`` to 256 and 2x bilinear upsampling (aligned corners); three feature fusion
  modules ``ffm2/1/0`` (``ftb1`` of the stage's output plus the deeper result, ``ftb2``, 2x upsampling);
  ``outconv.adapt_conv``: 3x3 conv to 128, batch norm, ReLU, 3x3 conv to 1, 2x upsampling.

``latest_net_G.pth`` is pix2pix's U-Net generator (``unet_1024``: ten levels, 64 filters doubling to 512,
no normalisation so no convolution bias but the last transposed convolution's; keys ``model.model.…``):
each level a 4x4 stride-2 convolution down (after LeakyReLU 0.2 but on the outermost), its inner level, a
ReLU and a 4x4 stride-2 transposed convolution up (Tanh on the outermost), and the level's input — after
that LeakyReLU, which the original applies in place — concatenated to its output. Input: the low- and
high-resolution estimates, each scaled to -1..1; output: the merged estimate.

The sizes are read off the state dict (stem, each stage's blocks/width/groups, the decoder's widths; the
U-Net's levels and widths), so a file of the same layout with other sizes builds its network.

The map, as the extension: the picture resized with pad (``resolution`` on the short side, sides to
multiples of 64) goes in BGR, 0..255, normalised with ImageNet's mean and std (the extension's
``ToTensor`` does not scale float pictures); the depth is scaled to 0..65535, truncated to 16 bits, cut to
8 bits, "Remove Near %" zeroes values up to that share of 255 (``cv2.THRESH_TOZERO``), the map is
inverted (near is bright), "Remove Background %" zeroes inverted values up to its share; the pad is cut.

``depth_leres++`` runs the extension's ``estimateboost`` (the boosting paper's pipeline for LeReS: receptive
field 448, merge size 1024, R_max 1600): the resolution R_20 where 20 % of the picture lacks edges within a
receptive field, a double estimate (448 and R_20, merged), and — where the picture's longer padded side is
at least R_20 — local refinement: the picture scaled to twice R_20 over a factor from its edge density,
patches of 896 on a 336 stride kept and grown where their gradient density beats the picture's, each
patch double-estimated (448 and 896), merged with the base estimate's region by the merge network, fitted
linearly to the base and blended in with a Gaussian mask, biggest patches first. Where the original fails
(a flat region or prediction that min-max normalisation divides by zero; a picture whose longer side is
under 160 px, where its resolution search never runs), this uses zeros / the double estimate instead.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotator_files import NetworkCache, load, not_this, read_state, resize_with_pad

LERES_FILE = "leres/res101.pth"  # under the annotator folder, as the extension's annotator/downloads
MERGE_FILE = "leres/latest_net_G.pth"
WHAT = "LeReS depth network (depth_leres)"
MERGE_WHAT = "boosting-depth merge network (depth_leres++)"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, applied to 0..255 BGR as the extension does

ENCODER, DECODER = "depth_model.encoder_modules.encoder.", "depth_model.decoder_modules."
RECEPTIVE_FIELD = 448  # LeReS's, in the boosting pipeline
MERGE_SIZE = 1024  # the merge network's input size (pix2pixsize)
R_MAX = 1600  # whole_size_threshold
SPEED_SCALE = 32


# --- LeReS -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeresSizes:
    """The widths of a LeReS network; the defaults: res101.pth's ResNeXt-101 32x8d."""
    stem: int = 64
    stages: tuple[tuple[int, int, int, int], ...] = (  # (blocks, width, out, groups) of layer1..4
        (3, 256, 256, 32), (4, 512, 512, 32), (23, 1024, 1024, 32), (3, 2048, 2048, 32))
    top: int = 512  # the decoder's FTB on the last stage
    mid: int = 256  # decoder.conv1 and the fusion modules
    head: int = 128  # outconv's hidden width

    @classmethod
    def of(cls, state: dict[str, torch.Tensor]) -> "LeresSizes":
        stages = []
        for i in range(1, 5):
            p = f"{ENCODER}layer{i}."
            blocks = 0
            while f"{p}{blocks}.conv1.weight" in state:
                blocks += 1
            width = state[f"{p}0.conv1.weight"].shape[0]
            stages.append((blocks, width, state[f"{p}0.conv3.weight"].shape[0],
                           width // state[f"{p}0.conv2.weight"].shape[1]))
        return cls(stem=state[f"{ENCODER}conv1.weight"].shape[0], stages=tuple(stages),
                   top=state[f"{DECODER}conv.conv1.weight"].shape[0], mid=state[f"{DECODER}conv1.weight"].shape[0],
                   head=state[f"{DECODER}outconv.adapt_conv.0.weight"].shape[0])


def _conv3(into: int, out: int) -> nn.Conv2d:
    return nn.Conv2d(into, out, 3, padding=1)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _Bottleneck(nn.Module):
    """1x1 to ``width``, grouped 3x3 (the stride), 1x1 to ``out``, each with batch norm; plus the input
    (through ``downsample`` where given), ReLU."""

    def __init__(self, into: int, width: int, out: int, groups: int, stride: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(into, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = nn.Sequential(nn.Conv2d(into, out, 1, stride=stride, bias=False),
                                        nn.BatchNorm2d(out)) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNeXt(nn.Module):
    def __init__(self, sizes: LeresSizes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, sizes.stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(sizes.stem)
        into = sizes.stem
        for i, (blocks, width, out, groups) in enumerate(sizes.stages):
            stride = 1 if i == 0 else 2
            layer = [_Bottleneck(into, width, out, groups, stride, stride != 1 or into != out)]
            layer += [_Bottleneck(out, width, out, groups, 1, False) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            into = out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


class _FTB(nn.Module):
    """Feature transfer block: ReLU(conv1(x)) plus its residual branch, ReLU."""

    def __init__(self, into: int, mid: int):
        super().__init__()
        self.conv1 = _conv3(into, mid)
        self.conv_branch = nn.Sequential(nn.ReLU(), _conv3(mid, mid), nn.BatchNorm2d(mid), nn.ReLU(), _conv3(mid, mid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))  # the original's branch rectifies conv1's output in place, before the sum
        return F.relu(x + self.conv_branch(x))


class _FFM(nn.Module):
    """Feature fusion: ftb2(ftb1(stage output) + deeper result), upsampled 2x."""

    def __init__(self, into: int, mid: int):
        super().__init__()
        self.ftb1 = _FTB(into, mid)
        self.ftb2 = _FTB(mid, mid)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return _up2(self.ftb2(self.ftb1(low) + high))


class _AO(nn.Module):
    def __init__(self, into: int, head: int):
        super().__init__()
        self.adapt_conv = nn.Sequential(_conv3(into, head), nn.BatchNorm2d(head), nn.ReLU(), _conv3(head, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _up2(self.adapt_conv(x))


class _Decoder(nn.Module):
    def __init__(self, sizes: LeresSizes):
        super().__init__()
        outs = [out for _, _, out, _ in sizes.stages]
        self.conv = _FTB(outs[3], sizes.top)
        self.conv1 = _conv3(sizes.top, sizes.mid)
        self.ffm2 = _FFM(outs[2], sizes.mid)
        self.ffm1 = _FFM(outs[1], sizes.mid)
        self.ffm0 = _FFM(outs[0], sizes.mid)
        self.outconv = _AO(sizes.mid, sizes.head)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = _up2(self.conv1(self.conv(features[3])))  # 1/16
        x = self.ffm2(features[2], x)  # 1/8
        x = self.ffm1(features[1], x)  # 1/4
        x = self.ffm0(features[0], x)  # 1/2
        return self.outconv(x)  # the picture's size


class _Encoder(nn.Module):
    def __init__(self, sizes: LeresSizes):
        super().__init__()
        self.encoder = _ResNeXt(sizes)


class _DepthModel(nn.Module):
    def __init__(self, sizes: LeresSizes):
        super().__init__()
        self.encoder_modules = _Encoder(sizes)
        self.decoder_modules = _Decoder(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder_modules(self.encoder_modules.encoder(x))


class LeresNet(nn.Module):
    """The extension's RelDepthModel: (B, 3, H, W) normalised BGR, H and W multiples of 32 -> (B, 1, H, W)
    relative depth (larger: farther)."""

    def __init__(self, sizes: LeresSizes = LeresSizes()):
        super().__init__()
        self.depth_model = _DepthModel(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depth_model(x)


# --- the merge network (pix2pix U-Net) ---------------------------------------------------------------

class _UnetLevel(nn.Module):
    """One level: [LeakyReLU], conv down, [inner level], ReLU, transposed conv up, [Tanh]; the keys' indices
    as pix2pix's UnetSkipConnectionBlock with norm 'none' (Identity where its norms were)."""

    def __init__(self, outer: int, inner: int, into: int, sub: "_UnetLevel | None", outermost: bool):
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(into, inner, 4, stride=2, padding=1, bias=False)
        if outermost:
            layers = [down, sub, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1), nn.Tanh()]
        elif sub is None:  # innermost
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(),
                      nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=False), nn.Identity()]
        else:
            layers = [nn.LeakyReLU(0.2), down, nn.Identity(), sub, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1, bias=False), nn.Identity()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        x = self.model[0](x)  # the original's in-place LeakyReLU: the skip carries it too
        return torch.cat([x, self.model[1:](x)], 1)


class MergeNet(nn.Module):
    """pix2pix's UnetGenerator: ``widths`` the levels' inner widths, outermost first (latest_net_G.pth:
    64, 128, 256, 512 and six more 512s). (B, 2, S, S), S a multiple of 2**levels -> (B, 1, S, S), -1..1."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256) + (512,) * 7, into: int = 2, out: int = 1):
        super().__init__()
        level = None
        for i in range(len(widths) - 1, 0, -1):
            level = _UnetLevel(widths[i - 1], widths[i], widths[i - 1], level, outermost=False)
        self.model = _UnetLevel(out, widths[0], into, level, outermost=True)

    @staticmethod
    def widths_of(state: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], int, int]:
        widths, prefix = [state["model.model.0.weight"].shape[0]], "model.model.1."
        while f"{prefix}model.1.weight" in state:
            widths.append(state[f"{prefix}model.1.weight"].shape[0])
            if f"{prefix}model.3.weight" in state:  # the innermost level's transposed conv
                break
            prefix += "model.3."
        return tuple(widths), state["model.model.0.weight"].shape[1], state["model.model.3.weight"].shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# --- the files -----------------------------------------------------------------------------------------

def build_leres(path: Path) -> LeresNet:
    """The network of a res101.pth file (CheckpointError, naming the file, when it is not one)."""
    state = read_state(path, WHAT)  # the real file keeps it under "depth_model" (read_state unwraps it)
    marks = (f"{ENCODER}conv1.weight", f"{ENCODER}layer4.0.conv3.weight", f"{DECODER}conv.conv1.weight",
             f"{DECODER}conv1.weight", f"{DECODER}outconv.adapt_conv.0.weight")
    if any(m not in state for m in marks) or any(f"{ENCODER}layer{i}.0.conv2.weight" not in state for i in range(1, 5)):
        raise not_this(path, WHAT, "depth_model.encoder_modules.encoder (ResNeXt), depth_model.decoder_modules, "
                                   "under 'depth_model'")
    return load(LeresNet(LeresSizes.of(state)), state, path, WHAT)


def build_merge(path: Path) -> MergeNet:
    """The network of a latest_net_G.pth file (CheckpointError, naming the file, when it is not one)."""
    state = read_state(path, MERGE_WHAT)
    if "model.model.0.weight" not in state or "model.model.3.weight" not in state \
            or "model.model.1.model.1.weight" not in state:
        raise not_this(path, MERGE_WHAT, "pix2pix U-Net generator, model.model.*")
    widths, into, out = MergeNet.widths_of(state)
    return load(MergeNet(widths, into, out), state, path, MERGE_WHAT)


_LERES = NetworkCache(size=1)  # 530 MB
_MERGE = NetworkCache(size=1)  # 220 MB


def leres_network(path: Path) -> LeresNet:
    return _LERES.get(path, build_leres)


def merge_network(path: Path) -> MergeNet:
    return _MERGE.get(path, build_merge)


# --- estimating ------------------------------------------------------------------------------------------

def _param(net: nn.Module) -> torch.Tensor:
    return next(net.parameters())


@torch.no_grad()
def estimate(net: LeresNet, image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The extension's estimateleres: (H, W, 3) uint8 RGB, run at ``width`` x ``height`` (multiples of 32)
    -> (H, W) float32 depth (bicubic back to the picture's size)."""
    bgr = cv2.resize(np.ascontiguousarray(image[:, :, ::-1]), (width, height)).astype(np.float32)
    x = torch.from_numpy(bgr).permute(2, 0, 1)[None]
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    param = _param(net)
    depth = net(x.to(param.device, param.dtype))[0, 0].float().cpu().numpy()
    return cv2.resize(depth, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_CUBIC)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Min-max to 0..1 (zeros where flat; the original divides by zero there)."""
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.zeros_like(x)


@torch.no_grad()
def merge(net: MergeNet, outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The merge network on two (S, S) float32 estimates, each scaled to -1..1 -> (S, S) float32, 0..1
    as ``(output + 1) / 2``."""
    param = _param(net)
    pair = torch.cat([_unit(torch.from_numpy(outer)[None, None]), _unit(torch.from_numpy(inner)[None, None])], 1)
    out = net((pair * 2 - 1).to(param.device, param.dtype)).float().cpu()
    return ((out + 1) / 2).squeeze().numpy()


def double_estimate(net: LeresNet, merger: MergeNet, image: np.ndarray, low: int, high: int) -> np.ndarray:
    """Estimates at ``low`` and ``high`` (square), both bicubic to 1024, merged and min-max to 0..1."""
    size = (MERGE_SIZE, MERGE_SIZE)
    first = cv2.resize(estimate(net, image, low, low), size, interpolation=cv2.INTER_CUBIC)
    second = cv2.resize(estimate(net, image, high, high), size, interpolation=cv2.INTER_CUBIC)
    return _unit(torch.from_numpy(merge(merger, first, second))).numpy()


@functools.lru_cache(maxsize=1)
def blend_mask(size: int = 3000) -> np.ndarray:
    """The extension's generatemask((size, size)): ones on the middle 70 %, Gaussian-blurred (sigma size/16,
    reflect-101 borders), min-max to 0..1; computed as the outer product of the blurred 1-D profile (the
    blur is separable), to a float32 rounding of OpenCV's 2-D blur."""
    sigma = int(size / 16)
    ksize = int(2 * np.ceil(2 * sigma) + 1)
    edge = int(0.15 * size)
    line = np.zeros(size, np.float64)
    line[edge:size - edge] = 1
    blurred = np.convolve(np.pad(line, ksize // 2, mode="reflect"), cv2.getGaussianKernel(ksize, sigma)[:, 0], "valid")
    mask = np.outer(blurred, blurred)
    return ((mask - mask.min()) / (mask.max() - mask.min())).astype(np.float32)


def _gray(image: np.ndarray) -> np.ndarray:
    return np.dot(image[..., :3], [0.2989, 0.5870, 0.1140])


def _gradient(image: np.ndarray) -> np.ndarray:
    gray = _gray(image)
    return np.abs(cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)) + np.abs(cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3))


def _max_pool(x: np.ndarray, size: int) -> np.ndarray:
    """skimage's block_reduce(x, (n, n), np.max), n = floor(rows / size): zero-padded at the end to whole
    blocks."""
    n = max(int(np.floor(x.shape[0] / size)), 1)
    rows, cols = -(-x.shape[0] // n), -(-x.shape[1] // n)
    padded = np.zeros((rows * n, cols * n), x.dtype)
    padded[:x.shape[0], :x.shape[1]] = x
    return padded.reshape(rows, n, cols, n).max(axis=(1, 3))


def processing_resolution(image: np.ndarray, base: int, confidence: float, scale_threshold: float,
                          r_max: int) -> tuple[int, float]:
    """The extension's calculateprocessingres: R_x (the largest resolution, in steps of base/2 up to
    min(r_max, scale_threshold * longer side), where at most ``confidence`` of the picture lacks an edge
    within a receptive field) and the share of the picture near edges (K of section 6)."""
    dim = int(min(image.shape[:2]))
    grad = cv2.resize(_gradient(image), (dim, dim))  # bilinear: the original's cv2.INTER_AREA lands in dst
    low, high = grad.min(), grad.max()
    middle = low + 0.4 * (high - low)
    grad[grad < middle] = 0
    grad[grad >= middle] = 1
    kernel = np.ones((int(base / SPEED_SCALE), int(base / SPEED_SCALE)), float)
    kernel2 = np.ones((int(base / (4 * SPEED_SCALE)), int(base / (4 * SPEED_SCALE))), float)
    threshold = min(r_max, scale_threshold * max(image.shape[:2]))
    best, pooled = base / SPEED_SCALE, None
    for size in range(int(base / SPEED_SCALE), int(threshold / SPEED_SCALE), int(base / (2 * SPEED_SCALE))):
        pooled = cv2.resize(_max_pool(grad, size), (size, size))  # bilinear, as the original's call
        pooled[pooled >= 0.5] = 1
        pooled[pooled < 0.5] = 0
        if (1 - cv2.dilate(pooled, kernel, iterations=1)).mean() > confidence:
            break
        best = size
    # no step (longer side under 160 px: the original fails here): K is then never used
    scale = cv2.dilate(pooled, kernel2, iterations=1).mean() if pooled is not None else 0.0
    return int(best * SPEED_SCALE), float(scale)


def _integral_sum(integral: np.ndarray, rect) -> float:
    x, y, w, h = rect
    return integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]


def select_patches(image: np.ndarray, base: int, factor: float) -> list[list[int]]:
    """The extension's generatepatchs: [x, y, w, h] patches of a grid (size ``base``, stride 3/8 of it)
    whose gradient density beats the picture's, each grown by 32/factor while it stays so and inside,
    biggest first."""
    grad = _gradient(image)
    grad[grad < grad[grad > 0].mean()] = 0
    density = grad.sum() / grad.size
    integral = cv2.integral(grad)
    half = int(round(base / 2))
    stride = int(round(half * 0.75))
    step = int(32 / factor)
    height, width = integral.shape
    patches = []
    for k in range(half, image.shape[1] - half, stride):
        for j in range(half, image.shape[0] - half, stride):
            rect = [k - half, j - half, 2 * half, 2 * half]
            if _integral_sum(integral, rect) / (rect[2] * rect[3]) < density:
                continue
            while True:
                grown = [rect[0] - step // 2, rect[1] - step // 2, rect[2] + step, rect[3] + step]
                if grown[0] < 0 or grown[1] < 0 or grown[1] + grown[3] >= height or grown[0] + grown[2] >= width:
                    break
                if _integral_sum(integral, grown) / (grown[2] * grown[3]) < density:
                    break
                rect = grown
            patches.append(rect)
    return sorted(patches, key=lambda r: r[2], reverse=True)  # stable: grid order among equal sizes


def estimate_boost(net: LeresNet, merger: MergeNet, image: np.ndarray, max_res: int) -> np.ndarray:
    """The extension's estimateboost for LeReS: (H, W, 3) uint8 RGB -> (H, W) float depth."""
    h, w = image.shape[:2]
    best, scale = processing_resolution(image, RECEPTIVE_FIELD, 0.2, 3, R_MAX)
    whole = double_estimate(net, merger, image, RECEPTIVE_FIELD, best)
    if max_res < best:  # no local boosting
        return cv2.resize(whole, (w, h), interpolation=cv2.INTER_CUBIC)

    factor = max(min(1, 4 * scale * best / R_MAX), 0.2)
    if h > w:
        a, b = 2 * best, round(2 * best * w / h)
    else:
        a, b = round(2 * best * h / w), 2 * best
    a, b = int(round(a / factor)), int(round(b / factor))
    big = cv2.resize(image, (b, a), interpolation=cv2.INTER_CUBIC)
    patches = select_patches(big, 2 * RECEPTIVE_FIELD, factor)

    merge_scale = h / big.shape[0]  # the patches merge in at the picture's own size
    target = (round(big.shape[1] * merge_scale), round(big.shape[0] * merge_scale))
    rgb = cv2.resize(big, target, interpolation=cv2.INTER_CUBIC)
    base = cv2.resize(whole, target, interpolation=cv2.INTER_CUBIC)
    updated = base.copy()
    size = (MERGE_SIZE, MERGE_SIZE)
    for rect in patches:
        x, y, pw, ph = np.round(np.array(rect) * merge_scale).astype(int)
        region = base[y:y + ph, x:x + pw]
        patch = double_estimate(net, merger, rgb[y:y + ph, x:x + pw], RECEPTIVE_FIELD, 2 * RECEPTIVE_FIELD)
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_CUBIC)
        region_big = cv2.resize(region, size, interpolation=cv2.INTER_CUBIC)
        mapped = merge(merger, region_big, patch)
        with warnings.catch_warnings():  # float32 points: numpy's rcond (points * eps) is large; as the original
            warnings.simplefilter("ignore", np.exceptions.RankWarning)
            fit = np.polyfit(mapped.reshape(-1), region_big.reshape(-1), deg=1)  # to the base estimate's values
        merged = cv2.resize(np.polyval(fit, mapped.reshape(-1)).reshape(mapped.shape), (region.shape[1], region.shape[0]),
                            interpolation=cv2.INTER_CUBIC)
        mask = cv2.resize(blend_mask(), (region.shape[1], region.shape[0]), interpolation=cv2.INTER_LINEAR)
        updated[y:y + ph, x:x + pw] = updated[y:y + ph, x:x + pw] * (1 - mask) + merged * mask
    return cv2.resize(updated, (w, h), interpolation=cv2.INTER_CUBIC)


def depth_to_map(depth: np.ndarray, remove_near: float, remove_background: float) -> np.ndarray:
    """The extension's apply_leres after the estimate: 16-bit, 8-bit, the sliders, inverted -> (H, W) uint8."""
    low, high = depth.min(), depth.max()
    if high - low > np.finfo("float").eps:
        scaled = 65535 * (depth - low) / (high - low)
    else:
        scaled = np.zeros(depth.shape)
    out = cv2.convertScaleAbs(scaled.astype(np.uint16), alpha=255.0 / 65535.0)
    if remove_near != 0:
        out = cv2.threshold(out, remove_near / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    out = cv2.bitwise_not(out)
    if remove_background != 0:
        out = cv2.threshold(out, remove_background / 100 * 255, 255, cv2.THRESH_TOZERO)[1]
    return out


def leres_map(image: np.ndarray, files: list[Path], remove_near: float, remove_background: float,
              boost: bool) -> np.ndarray:
    """(H, W, 3) uint8 RGB (the padded picture) -> (H, W) uint8 map; ``files``: res101.pth[, latest_net_G.pth]."""
    net = leres_network(files[0])
    h, w = image.shape[:2]
    if boost:
        depth = estimate_boost(net, merge_network(files[1]), image, max(w, h))
    else:
        depth = estimate(net, image, w, h)
    return depth_to_map(depth, remove_near, remove_background)


def _hwc3(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[:, :, None], 3, axis=2)


def depth_leres(img: np.ndarray, res: int, remove_near: float, remove_background: float, files: list[Path]):
    """The ``depth_leres`` preprocessor: res101.pth on the extension's resize_with_pad of the picture."""
    padded, remove_pad = resize_with_pad(img, res)
    return _hwc3(remove_pad(leres_map(padded, files, remove_near, remove_background, boost=False)))


def depth_leres_boost(img: np.ndarray, res: int, remove_near: float, remove_background: float, files: list[Path]):
    """The ``depth_leres++`` preprocessor: res101.pth and latest_net_G.pth, the boosting pipeline."""
    padded, remove_pad = resize_with_pad(img, res)
    return _hwc3(remove_pad(leres_map(padded, files, remove_near, remove_background, boost=True)))
