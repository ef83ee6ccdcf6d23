"""ParseNet, facexlib's face parsing network, and the mask A1111 pastes restored faces through.

A1111 builds facexlib's ``FaceRestoreHelper(..., use_parse=True)`` with its model folder pointed at
``models/GFPGAN``, where facexlib keeps ``parsing_parsenet.pth``. With parsing on, a restored face
is not pasted through a soft square: each pixel of the restored crop is classified (19 classes:
skin, brows, eyes, nose, lips, ..., hair, hat, neck, cloth, background) and only the face proper —
not the background, neck, cloth, hair or hat — is pasted, with a wide soft edge.

The network (PSFRGAN's parsing branch) is built here from the state dict with facexlib's key names
(``encoder.N``, ``body.N``, ``decoder.N``; each block's ``conv1``/``conv2``/``shortcut_func``, each
layer's ``conv2d`` and batch norm ``norm.norm``; ``out_img_conv``, ``out_mask_conv``), its widths
and depths read from the tensor shapes, so the release (64 base channels clipped to 32..256, four
steps down from 512 px to 32, ten residual blocks, four up) and narrower test networks load alike.
The file is read weights-only.

The mask follows facexlib's ``paste_faces_to_input_image``: the restored crop resized to 512 px,
scaled to -1..1; the most likely class per pixel; 255 where the class is part of the face, else 0;
two Gaussian blurs (101 px, sigma 11); a 10 px border zeroed; /255; resized to the crop. The caller
warps it back into the picture with the inverse of the crop's alignment.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import upscaler_models

FILE_NAME = "parsing_parsenet.pth"
INPUT_SIZE = 512  # facexlib parses every restored face at 512 px, whatever the restorer's size
CLASSES = 19
# facexlib's MASK_COLORMAP: 0 background, 14 neck, 16 cloth, 17 hair, 18 hat are left out
EXCLUDED = (0, 14, 16, 17, 18)
BLUR_KERNEL, BLUR_SIGMA = 101, 11
BORDER = 10  # px of the 512 px mask zeroed: the crop's edge never shows
LEAKY_SLOPE = 0.2


class FaceParsingError(ValueError):
    """A file that is not facexlib's ParseNet (the message says why)."""


class _BatchNorm(nn.Module):
    """facexlib's NormLayer: the batch norm sits one level down (``norm.norm.*``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.norm(x)


class _Conv(nn.Module):
    """A 3x3 convolution over a reflection-padded input: optionally after a nearest 2x upsampling
    ("up") or with stride 2 ("down"), optionally batch-normed (then without a bias) and LeakyReLU'd."""

    def __init__(self, cin: int, cout: int, scale: str = "none", norm: bool = False, act: bool = False):
        super().__init__()
        self.scale, self.act = scale, act
        self.conv2d = nn.Conv2d(cin, cout, 3, 2 if scale == "down" else 1, bias=not norm)
        self.norm = _BatchNorm(cout) if norm else None

    def forward(self, x):
        if self.scale == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if self.norm is not None:
            x = self.norm(x)
        return F.leaky_relu(x, LEAKY_SLOPE) if self.act else x


class _Block(nn.Module):
    """A residual block: two normed convolutions (the first activated), the scale change on the
    second going down and on the first going up; a plain convolution as the shortcut where the
    scale or the width changes, else the identity."""

    def __init__(self, cin: int, cout: int, scale: str = "none"):
        super().__init__()
        first, second = {"down": ("none", "down"), "up": ("up", "none")}.get(scale, ("none", "none"))
        self.shortcut_func = _Conv(cin, cout, scale) if scale != "none" or cin != cout else None
        self.conv1 = _Conv(cin, cout, first, norm=True, act=True)
        self.conv2 = _Conv(cout, cout, second, norm=True)

    def forward(self, x):
        identity = x if self.shortcut_func is None else self.shortcut_func(x)
        return identity + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """Encoder (a convolution, then blocks going down), a residual body added to its input, a
    decoder (blocks going up), and two heads: the parsing logits and a reconstructed picture.

    ``encoder``/``body``/``decoder`` are lists of (in, out) widths per block; the defaults are
    facexlib's ``ParseNet(in_size=512, out_size=512, parsing_ch=19)``."""

    def __init__(self, stem: int = 64, encoder: list[tuple[int, int]] | None = None,
                 body: list[tuple[int, int]] | None = None, decoder: list[tuple[int, int]] | None = None,
                 classes: int = CLASSES):
        super().__init__()
        encoder = encoder if encoder is not None else [(64, 128), (128, 256), (256, 256), (256, 256)]
        body = body if body is not None else [(256, 256)] * 10
        decoder = decoder if decoder is not None else [(256, 256), (256, 256), (256, 128), (128, 64)]
        self.encoder = nn.Sequential(_Conv(3, stem), *(_Block(i, o, "down") for i, o in encoder))
        self.body = nn.Sequential(*(_Block(i, o) for i, o in body))
        self.decoder = nn.Sequential(*(_Block(i, o, "up") for i, o in decoder))
        width = decoder[-1][1] if decoder else (body[-1][1] if body else (encoder[-1][1] if encoder else stem))
        self.out_img_conv = _Conv(width, 3)
        self.out_mask_conv = _Conv(width, classes)

    def forward(self, x):
        features = self.encoder(x)
        x = self.decoder(features + self.body(features))
        return self.out_mask_conv(x), self.out_img_conv(x)


def _widths(state: dict[str, torch.Tensor], part: str) -> list[tuple[int, int]]:
    """(in, out) of each block of ``part`` (encoder blocks counted from 1), from conv1's weight."""
    pattern = re.compile(rf"^{part}\.(\d+)\.conv1\.conv2d\.weight$")
    found = sorted((int(m.group(1)), state[k]) for k in state if (m := pattern.match(k)))
    return [(int(w.shape[1]), int(w.shape[0])) for _index, w in found]


def load(path: Path) -> ParseNet:
    """The network in ``path`` (weights only), on the CPU in eval mode; FaceParsingError says why
    a file is not one."""
    path = Path(path)
    try:
        state = upscaler_models.read_state_dict(path)
    except upscaler_models.UpscalerFileError as error:
        raise FaceParsingError(str(error)) from None
    stem, head = state.get("encoder.0.conv2d.weight"), state.get("out_mask_conv.conv2d.weight")
    if stem is None or head is None or stem.ndim != 4 or head.ndim != 4 or stem.shape[1] != 3:
        raise FaceParsingError(f"{path.name}: not facexlib's ParseNet (no encoder.0 / out_mask_conv weights)")
    if head.shape[0] != CLASSES:
        raise FaceParsingError(f"{path.name}: parses {head.shape[0]} classes, not facexlib's {CLASSES}")
    try:
        net = ParseNet(int(stem.shape[0]), _widths(state, "encoder"), _widths(state, "body"),
                       _widths(state, "decoder"), int(head.shape[0]))
    except Exception as error:  # noqa: BLE001 - recognised keys, widths that do not chain
        raise FaceParsingError(f"{path.name}: not facexlib's ParseNet: {error}") from None
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    extra = [k for k in state if k not in expected]
    if missing or wrong or extra:
        example = (missing or wrong or extra)[0]
        raise FaceParsingError(f"{path.name}: not facexlib's ParseNet: {len(missing)} tensors missing, "
                               f"{len(wrong)} of another shape, {len(extra)} unknown (e.g. {example})")
    net.load_state_dict({k: state[k] for k in expected if k in state}, strict=False)
    return net.float().eval()


def face_classes(net: ParseNet, face: np.ndarray) -> np.ndarray:
    """The most likely class of each pixel of an (S, S, 3) uint8 RGB face, at 512 px: (512, 512)."""
    if face.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
        face = cv2.resize(face, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    weight = next(net.parameters())
    x = torch.from_numpy(np.ascontiguousarray(face)).float().permute(2, 0, 1).unsqueeze(0) / 255.0
    x = ((x - 0.5) / 0.5).to(weight.device, weight.dtype)  # -1..1, as facexlib normalises
    with torch.inference_mode():
        logits = net(x)[0]
    return logits.argmax(dim=1)[0].cpu().numpy()


def mask_from_classes(classes: np.ndarray, size: int) -> np.ndarray:
    """facexlib's paste mask over a crop of ``size`` px from a (512, 512) class map: 0..1, float64
    as facexlib keeps it (OpenCV warps float32 masks with coarser interpolation weights)."""
    keep = np.ones(CLASSES, dtype=bool)
    keep[list(EXCLUDED)] = False
    mask = np.where(keep[classes], 255.0, 0.0)  # float64, as facexlib's np.zeros
    for _ in range(2):
        mask = cv2.GaussianBlur(mask, (BLUR_KERNEL, BLUR_KERNEL), BLUR_SIGMA)
    mask[:BORDER, :] = 0
    mask[-BORDER:, :] = 0
    mask[:, :BORDER] = 0
    mask[:, -BORDER:] = 0
    mask = mask / 255.0
    if mask.shape != (size, size):
        mask = cv2.resize(mask, (size, size))
    return mask


def face_mask(net: ParseNet, face: np.ndarray) -> np.ndarray:
    """The mask to paste the restored (S, S, 3) uint8 RGB ``face`` through: (S, S), 0..1."""
    return mask_from_classes(face_classes(net, face), face.shape[0])
