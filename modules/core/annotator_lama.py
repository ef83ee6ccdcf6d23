"""The LaMa inpainting network of sd-webui-controlnet's ``inpaint_only+lama`` (the user's
``lama/ControlNetLama.pth``): big-lama's generator, a ResNet of fast Fourier convolutions (LaMa,
Suvorov et al., Apache-2.0), written here from its published architecture.

The file is the generator's plain state dict, under ``model.N``: ``model.1`` a 7x7 convolution of the
4 input channels (the picture with its masked pixels black, then the mask) after 3-pixel reflection
padding (``model.0``); ``model.2`` .. ``model.4`` stride-2 3x3 convolutions doubling the width, the last
one splitting its output into a local and a global part (``ffc.convl2l``, ``ffc.convl2g``); then the
residual blocks (``conv1``, ``conv2``: fast Fourier convolutions on the (local, global) pair, the
global-to-global path a spectral transform, ``convg2g.conv1`` / ``fu`` / ``conv2``, whose ``fu`` runs
a 1x1 convolution over the real and imaginary parts of the 2D FFT); the two parts joined; three
stride-2 transposed convolutions halving the width back, each with batch norm and ReLU; a 7x7
convolution to RGB after reflection padding, and a sigmoid. Every FFC convolution pads by reflection
and has no bias; each is followed by batch norm (``bn_l``, ``bn_g``) and ReLU. The network is built from
the file's shapes (width, downsamplings, blocks, global share) and read with weights only.

``inpaint`` is the extension's ``LamaInpainting`` call (the mask above one half fills, the rest kept);
``fill`` its ``inpaint_only+lama`` preprocessor: the picture at 256 px (short side, padded to 64),
filled, scaled back and laid over the picture where the mask is, the mask kept as alpha.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotator_files import NetworkCache, load, not_this, read_state, resize_with_pad

FILE = "lama/ControlNetLama.pth"  # under the annotator folder, as the extension's annotator/downloads
WHAT = "LaMa inpainting generator (inpaint_only+lama)"
RESOLUTION = 256  # the extension always runs LaMa at 256 px, the size it was trained at

_NETWORKS = NetworkCache(size=1)


# -- fast Fourier convolution ----------------------------------------------------------------------

def _conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False, padding_mode="reflect")


class FourierUnit(nn.Module):
    """A 1x1 convolution, batch norm and ReLU over the (real, imaginary) channel pairs of the
    picture's orthonormal 2D real FFT, then back."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_layer = nn.Conv2d(2 * channels, 2 * channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        spectrum = torch.fft.rfft2(x.float(), norm="ortho")
        pairs = torch.stack((spectrum.real, spectrum.imag), dim=2).reshape(b, 2 * c, h, -1)  # c0.re, c0.im, c1.re...
        pairs = F.relu(self.bn(self.conv_layer(pairs.to(x.dtype)))).float()
        pairs = pairs.reshape(b, -1, 2, h, pairs.shape[-1])
        return torch.fft.irfft2(torch.complex(pairs[:, :, 0], pairs[:, :, 1]), s=(h, w), norm="ortho").to(x.dtype)


class SpectralTransform(nn.Module):
    """The global-to-global path: 1x1 down to half the width (norm, ReLU), plus its Fourier unit,
    1x1 back up."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        half = cout // 2
        self.conv1 = nn.Sequential(nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.fu = FourierUnit(half)
        self.conv2 = nn.Conv2d(half, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(x + self.fu(x))


class FFC(nn.Module):
    """A convolution on a (local, global) pair of feature maps: local outputs from both inputs by plain
    convolutions, global outputs from the local input by a convolution and from the global input by the
    spectral transform; paths whose ends have no channels are absent (None)."""

    def __init__(self, cin: int, cout: int, kernel: int, in_global: int, out_global: int,
                 stride: int = 1, padding: int = 0):
        super().__init__()
        in_local, out_local = cin - in_global, cout - out_global
        both = in_local and out_local
        self.convl2l = _conv(in_local, out_local, kernel, stride, padding) if both else None
        self.convl2g = _conv(in_local, out_global, kernel, stride, padding) if in_local and out_global else None
        self.convg2l = _conv(in_global, out_local, kernel, stride, padding) if in_global and out_local else None
        self.convg2g = SpectralTransform(in_global, out_global) if in_global and out_global else None
        self.out_local, self.out_global = out_local, out_global

    def forward(self, pair):
        x_l, x_g = pair
        out_l = out_g = None
        if self.out_local:
            out_l = sum(conv(x) for conv, x in ((self.convl2l, x_l), (self.convg2l, x_g)) if conv is not None)
        if self.out_global:
            out_g = sum(conv(x) for conv, x in ((self.convl2g, x_l), (self.convg2g, x_g)) if conv is not None)
        return out_l, out_g


class FFCNormAct(nn.Module):
    """An FFC, then batch norm and ReLU on each part it outputs."""

    def __init__(self, cin: int, cout: int, kernel: int, in_global: int, out_global: int,
                 stride: int = 1, padding: int = 0):
        super().__init__()
        self.ffc = FFC(cin, cout, kernel, in_global, out_global, stride, padding)
        self.bn_l = nn.BatchNorm2d(cout - out_global) if cout - out_global else None
        self.bn_g = nn.BatchNorm2d(out_global) if out_global else None

    def forward(self, pair):
        x_l, x_g = self.ffc(pair if isinstance(pair, tuple) else (pair, None))
        return (F.relu(self.bn_l(x_l)) if self.bn_l is not None else None,
                F.relu(self.bn_g(x_g)) if self.bn_g is not None else None)


class FFCBlock(nn.Module):
    """Two 3x3 FFCs (reflection-padded by one) added to the block's input, part by part."""

    def __init__(self, width: int, global_width: int):
        super().__init__()
        self.conv1 = FFCNormAct(width, width, 3, global_width, global_width, padding=1)
        self.conv2 = FFCNormAct(width, width, 3, global_width, global_width, padding=1)

    def forward(self, pair):
        out = self.conv2(self.conv1(pair))
        return tuple(None if x is None else x + y for x, y in zip(pair, out))


class _JoinParts(nn.Module):
    def forward(self, pair):
        return torch.cat([x for x in pair if x is not None], dim=1)


class LamaGenerator(nn.Module):
    """``model.0`` .. of ControlNetLama.pth for ``inputs`` channels (4), a first width ``width`` (64),
    ``downs`` downsamplings (3), ``blocks`` residual blocks (18), ``global_width`` global channels in
    the blocks (384 of 512) and ``outputs`` channels (3)."""

    def __init__(self, inputs: int = 4, outputs: int = 3, width: int = 64, downs: int = 3, blocks: int = 18,
                 global_width: int = 384, max_width: int = 1024):
        super().__init__()
        widths = [min(max_width, width * 2 ** i) for i in range(downs + 1)]
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), FFCNormAct(inputs, width, 7, 0, 0)]
        for i in range(downs):
            layers.append(FFCNormAct(widths[i], widths[i + 1], 3, 0, global_width if i == downs - 1 else 0,
                                     stride=2, padding=1))
        layers += [FFCBlock(widths[-1], global_width) for _ in range(blocks)]
        layers.append(_JoinParts())
        for i in range(downs, 0, -1):
            layers += [nn.ConvTranspose2d(widths[i], widths[i - 1], 3, stride=2, padding=1, output_padding=1),
                       nn.BatchNorm2d(widths[i - 1]), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, outputs, 7), nn.Sigmoid()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_generator(path: Path) -> LamaGenerator:
    """The generator of a ControlNetLama.pth (CheckpointError when it is not one). Keys under
    ``generator.`` (a training checkpoint's) are read without it; batch-norm counters a file lacks are
    filled in (unused in inference); every other key and shape must fit."""
    state = read_state(path, WHAT)
    if any(k.startswith("generator.model.") for k in state):
        state = {k.removeprefix("generator."): v for k, v in state.items() if k.startswith("generator.model.")}
    first = state.get("model.1.ffc.convl2l.weight")
    if first is None or first.ndim != 4 or first.shape[2] != 7:
        raise not_this(path, WHAT, "model.1.ffc.convl2l, model.N.ffc.convl2g, model.N.conv1.ffc.convg2g.fu, ...")
    downs = 0
    while f"model.{2 + downs}.ffc.convl2l.weight" in state:
        downs += 1
    blocks = 0
    while f"model.{2 + downs + blocks}.conv1.ffc.convl2l.weight" in state:
        blocks += 1
    to_global = state.get(f"model.{1 + downs}.ffc.convl2g.weight")
    last = state.get(f"model.{2 + downs + blocks + 1 + 3 * downs + 1}.weight")
    if downs == 0 or to_global is None or last is None:
        raise not_this(path, WHAT, "model.1 .. model.N: FFC convolutions, blocks, transposed convolutions, output")
    width, inputs = int(first.shape[0]), int(first.shape[1])
    net = LamaGenerator(inputs, int(last.shape[0]), width, downs, blocks, int(to_global.shape[0]),
                        max_width=max(int(state[f"model.{1 + downs}.ffc.convl2l.weight"].shape[0])
                                      + int(to_global.shape[0]), width))
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    return load(net, state, path, WHAT)


def network(path: Path) -> LamaGenerator:
    return _NETWORKS.get(path, build_generator)


# -- running it as the extension ----------------------------------------------------------------------

@torch.no_grad()
def inpaint(net: LamaGenerator, rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8, the mask as alpha -> (H, W, 3) uint8: where the mask is above one half, the
    network's picture; elsewhere the picture itself. H and W: multiples of 8 (the extension's 64)."""
    x = torch.from_numpy(np.ascontiguousarray(rgba)).float().div(255.0).permute(2, 0, 1)[None]
    mask = (x[:, 3:4] > 0.5).float()
    color = x[:, :3] * (1 - mask)
    param = next(net.parameters())
    out = net(torch.cat([color, mask], dim=1).to(param.device, param.dtype)).float().cpu()
    out = out * mask + color * (1 - mask)
    return (out[0].permute(1, 2, 0).numpy() * 255.0).clip(0, 255).astype(np.uint8)


def fill(net: LamaGenerator, rgba: np.ndarray) -> np.ndarray:
    """sd-webui-controlnet's ``inpaint_only+lama`` map of an (H, W, 4) picture with its mask as alpha:
    LaMa's fill at ``RESOLUTION`` (the extension's resize: short side to the size, edges padded to 64)
    cut back, scaled to (W, H) and laid over the picture by the mask; alpha the mask."""
    h, w = rgba.shape[:2]
    padded, remove_pad = resize_with_pad(rgba, RESOLUTION)
    predicted = cv2.resize(remove_pad(inpaint(net, padded)), (w, h))
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    color = (predicted.astype(np.float32) * alpha + rgba[:, :, :3].astype(np.float32) * (1 - alpha))
    return np.concatenate([color.clip(0, 255).astype(np.uint8), rgba[:, :, 3:4]], axis=2)


def preprocess(img: np.ndarray, res, a, b, files: list[Path]) -> np.ndarray:
    """The ``inpaint_only+lama`` row's run: ``files[0]`` the user's ControlNetLama.pth; the slider
    values are unused (the extension shows none, and LaMa always runs at 256 px)."""
    if img.ndim != 3 or img.shape[2] != 4:
        raise ValueError("inpaint_only+lama needs a mask (the unit's mask, or the img2img inpainting mask)")
    return fill(network(files[0]), img)
