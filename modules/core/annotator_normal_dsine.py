"""The surface normal estimator of sd-webui-controlnet's ``normal_dsine`` (the user's ``normal_dsine/dsine.pt``,
Gwangbin Bae and Andrew Davison's MIT-licensed "Rethinking Inductive Biases for Surface Normal Estimation",
DSINE, CVPR 2024, as the extension runs it through the ``dsine`` package).

The file is a torch checkpoint holding ``{"model": state dict}`` (keys possibly with DataParallel's
``module.``), about 72 million weights:

- ``encoder.original_model``: EfficientNet-B5 (gen-efficientnet's tf_efficientnet_b5_ap without pooling and
  classifier), the same layout as normal_bae's (``annotator_normal_bae.EfficientNetB5``, reused here). The
  decoder takes the outputs of stages 3 and 5 (64 and 176 channels, 1/8 and 1/16 size) and the head before
  its batch norm (2048, 1/32).
- ``decoder``: every input is given the camera rays' (u, v) at its size (2 more channels): a 1x1 ``conv2``
  (2050 -> 2048); ``up1`` and ``up2`` (``_net``: bilinear upsampling without aligned corners to the skip's
  size, concatenation, twice a weight-standardised 3x3 convolution, group norm of 8 groups, leaky ReLU) to
  1024 and 512 channels at 1/8 size; three heads on (features, u, v) (3x3 to 128, ReLU, 1x1 128, ReLU, 1x1):
  ``normal_head`` (3, unit length), ``feature_head`` (64) and ``hidden_head`` (64, the GRU's first state).
- the refinement at 1/8 size: the initial normal through the ray ReLU (a normal may not face away from its
  pixel's ray: its component along the ray is at least 0.01); then, per iteration, ``gru`` (a ConvGRU with
  5x5 ``convz``/``convr``/``convq`` on (state, features, u, v)) updates the state, and from (state, u, v)
  ``prob_head`` gives the weights of the 5x5 neighbours (sigmoid), ``xy_head`` a pixel offset (x, y) per
  neighbour (unit length) and ``angle_head`` an angle per neighbour (sigmoid times pi). Each neighbour's
  normal is rotated by that angle about the axis that takes its plane through its pixel offset by (x, y)
  (the depth change over that plane), normalised, passed through the ray ReLU; their weighted sum,
  normalised, is the new normal. ``up_prob_head`` gives the convex upsampling's weights (softmax over the
  3x3 neighbours, 8x8 per pixel) to full size, normalised again. Neighbourhoods pad by replicating edges;
  the pixel coordinates are the centres (+0.5).

The extension's run: the picture is resized and padded with its resize_image_with_pad (short side to the
resolution, edges replicated to multiples of 64), 0..1 normalised with ImageNet's mean and std; the
intrinsics are the picture's own size's from the Fov slider (focal (longer side / 2) / tan(fov / 2),
centre (W / 2 - 0.5 + l, H / 2 - 0.5 + t) with DSINE's own centring pads l and t of the unresized picture
to multiples of 32, then + 0.5 in the network), read by the network as if they were the padded picture's;
the Iterations slider sets the refinement steps and the last upsampled normal is the result. It is cut at
(t, l) to the unresized picture's size, mapped ((n + 1) / 2, clipped, times 255, cut to uint8) and then
cut to the resized picture's size (so a picture larger than the resolution gives a map of at most that
size, shifted by (t, l) as the extension's is).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotator_files import NetworkCache, hwc3, load, not_this, read_state, resize_with_pad
from .annotator_normal_bae import HEAD, MEAN, STD, EfficientNetB5, to_colours

FILE = "normal_dsine/dsine.pt"  # under the annotator folder, as the extension's model_dir
WHAT = "DSINE normal estimator (normal_dsine)"

PS = 5  # the refinement's neighbourhood (5x5)
DOWN = 8  # the refinement works at 1/8 size
FEATURES, HIDDEN = 64, 64
EIGHTH, SIXTEENTH = 64, 176  # EfficientNet-B5's stage 3 and 5 widths
RAY_EPS = 1e-2


def _head(into: int, hidden: int, out: int) -> nn.Sequential:
    """3x3 conv to ``hidden``, ReLU, 1x1 ``hidden``, ReLU, 1x1 to ``out`` (keys 0, 2, 4)."""
    return nn.Sequential(nn.Conv2d(into, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                         nn.Conv2d(hidden, out, 1))


class _StandardisedConv2d(nn.Conv2d):
    """A 3x3 convolution whose weight is standardised per output channel (minus the mean, over the
    unbiased std + 1e-5) at every use."""

    def __init__(self, into: int, out: int):
        super().__init__(into, out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True)  # unbiased
        return F.conv2d(x, (self.weight - mean) / (var.sqrt() + 1e-5), self.bias, 1, 1)


class _UpSample(nn.Module):
    """``_net``: the coarser map upsampled (bilinear, corners not aligned) to the skip's size,
    concatenated with it, then twice a standardised 3x3 convolution, group norm (8) and leaky ReLU."""

    def __init__(self, into: int, out: int):
        super().__init__()
        self._net = nn.Sequential(_StandardisedConv2d(into, out), nn.GroupNorm(8, out), nn.LeakyReLU(),
                                  _StandardisedConv2d(out, out), nn.GroupNorm(8, out), nn.LeakyReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self._net(torch.cat([x, skip], dim=1))


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(HEAD + 2, HEAD, 1)
        self.up1 = _UpSample(HEAD + SIXTEENTH + 2, HEAD // 2)
        self.up2 = _UpSample(HEAD // 2 + EIGHTH + 2, HEAD // 4)
        self.normal_head = _head(HEAD // 4 + 2, 128, 3)
        self.feature_head = _head(HEAD // 4 + 2, 128, FEATURES)
        self.hidden_head = _head(HEAD // 4 + 2, 128, HIDDEN)

    def forward(self, eighth, sixteenth, head, uv8, uv16, uv32):
        x = self.conv2(torch.cat([head, uv32], dim=1))
        x = self.up1(x, torch.cat([sixteenth, uv16], dim=1))
        x = self.up2(x, torch.cat([eighth, uv8], dim=1))
        x = torch.cat([x, uv8], dim=1)
        return F.normalize(self.normal_head(x), dim=1), self.feature_head(x), self.hidden_head(x)


class _ConvGRU(nn.Module):
    """h' = (1 - z) h + z q; z, r = sigmoid(convz/convr([h, x])), q = tanh(convq([r h, x])) (5x5)."""

    def __init__(self, hidden: int, into: int):
        super().__init__()
        self.convz = nn.Conv2d(hidden + into, hidden, PS, padding=PS // 2)
        self.convr = nn.Conv2d(hidden + into, hidden, PS, padding=PS // 2)
        self.convq = nn.Conv2d(hidden + into, hidden, PS, padding=PS // 2)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        both = torch.cat([h, x], dim=1)
        z, r = torch.sigmoid(self.convz(both)), torch.sigmoid(self.convr(both))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


def ray_relu(normal: torch.Tensor, ray: torch.Tensor) -> torch.Tensor:
    """Normals (B, 3, ...) whose component along their unit ray (B, 3, ...) is raised to at least
    RAY_EPS (cosine below it: the along-ray part replaced), normalised."""
    cos = torch.cosine_similarity(normal, ray, dim=1).unsqueeze(1)
    return F.normalize(normal + ray * (torch.relu(cos - RAY_EPS) + RAY_EPS - cos), dim=1)


def neighbours(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size * size, H, W): each pixel's size x size neighbourhood, edges replicated."""
    b, c, h, w = x.shape
    pad = (size - 1) // 2
    return F.unfold(F.pad(x, (pad, pad, pad, pad), mode="replicate"), size).view(b, c, size * size, h, w)


def convex_upsample(x: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, kH, kW): each output pixel a softmax-weighted mix (mask: (B, 9 k k, H, W),
    the weights of the 3x3 neighbours for each of the k x k sub-pixels) of its pixel's neighbourhood."""
    b, c, h, w = x.shape
    weights = torch.softmax(mask.view(b, 1, 9, k, k, h, w), dim=2)
    mixed = (weights * neighbours(x, 3).view(b, c, 9, 1, 1, h, w)).sum(dim=2)  # (B, C, k, k, H, W)
    return mixed.permute(0, 1, 4, 2, 5, 3).reshape(b, c, k * h, k * w)


def rotate(v: torch.Tensor, axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Vectors (B, 3, ...) rotated anticlockwise about the unit ``axis`` (B, 3, ...) by ``angle`` (B, 1, ...)
    times the axis' length (a zero axis: no rotation) (Rodrigues' formula)."""
    angle = angle * torch.linalg.vector_norm(axis, dim=1, keepdim=True)
    cos, sin = torch.cos(angle), torch.sin(angle)
    dot = (axis * v).sum(dim=1, keepdim=True)
    return v * cos + torch.cross(axis, v, dim=1) * sin + axis * dot * (1 - cos)


def pixel_centres(h: int, w: int, device=None) -> torch.Tensor:
    """(1, 3, h, w): (x + 0.5, y + 0.5, 1) of each pixel."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                            torch.arange(w, dtype=torch.float32, device=device) + 0.5, indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)])[None]


class DSINE(nn.Module):
    """The network of dsine.pt, with its key names."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.original_model = EfficientNetB5()
        self.decoder = _Decoder()
        self.gru = _ConvGRU(HIDDEN, FEATURES + 2)
        self.prob_head = _head(HIDDEN + 2, 64, PS * PS)  # the neighbours' weights
        self.xy_head = _head(HIDDEN + 2, 64, PS * PS * 2)  # their pixel offsets (all x, then all y)
        self.angle_head = _head(HIDDEN + 2, 64, PS * PS)  # their rotation angles
        self.up_prob_head = _head(HIDDEN + 2, 64, 9 * DOWN * DOWN)  # the convex upsampling's weights

    @staticmethod
    def _focal_centre(intrins: torch.Tensor, h: int, w: int, full_h: int, full_w: int):
        """(fu, cu, fv, cv), each (B, 1, 1, 1), of intrinsics for full_h x full_w scaled to h x w."""
        sx, sy = w / full_w, h / full_h
        return tuple((intrins[:, i, j] * s)[:, None, None, None]
                     for i, j, s in ((0, 0, sx), (0, 2, sx), (1, 1, sy), (1, 2, sy)))

    def _uv(self, intrins, h, w, full_h, full_w) -> torch.Tensor:
        """(B, 3, h, w): ((x - cu) / fu, (y - cv) / fv, 1) at the pixel centres of an h x w map."""
        fu, cu, fv, cv = self._focal_centre(intrins, h, w, full_h, full_w)
        p = pixel_centres(h, w, intrins.device).expand(intrins.shape[0], -1, -1, -1)
        return torch.cat([(p[:, :1] - cu) / fu, (p[:, 1:2] - cv) / fv, p[:, 2:]], dim=1)

    def _refine(self, h, feat, normal, intrins, full_h, full_w, uv8, ray8):
        b, _, eh, ew = normal.shape
        fu, cu, fv, cv = self._focal_centre(intrins, eh, ew, full_h, full_w)
        h = self.gru(h, feat)
        state = torch.cat([h, uv8], dim=1)
        prob = torch.sigmoid(self.prob_head(state)).unsqueeze(1)  # (B, 1, 25, h, w)
        xy = F.normalize(self.xy_head(state).view(b, 2, PS * PS, eh, ew), dim=1)  # (B, 2, 25, h, w)
        angle = (torch.sigmoid(self.angle_head(state)) * math.pi).unsqueeze(1)  # (B, 1, 25, h, w)
        normals = neighbours(normal, PS)  # (B, 3, 25, h, w)
        coords = neighbours(pixel_centres(eh, ew, normal.device), PS)  # (1, 3, 25, h, w)

        # the axis rotating each neighbour's plane towards its pixel moved by (x, y)
        du, dv = xy[:, 0] / fu, xy[:, 1] / fv  # (B, 25, h, w)
        tu, tv = (coords[:, 0] + xy[:, 0] - cu) / fu, (coords[:, 1] + xy[:, 1] - cv) / fv
        nx, ny, nz = normals.unbind(1)
        denom = tu * nx + tv * ny + nz
        denom = torch.where(denom.abs() < 1e-8, 1e-8 * torch.sign(denom), denom)
        dz = -(du * nx + dv * ny) / denom
        axes = F.normalize(torch.stack([du + dz * tu, dv + dz * tv, dz], dim=1), dim=1)
        axes = torch.where((~torch.isfinite(axes)).any(dim=1, keepdim=True), 0.0, axes)

        rotated = F.normalize(rotate(normals, axes, angle), dim=1)
        rotated = ray_relu(rotated, ray8.unsqueeze(2))
        normal = F.normalize((prob * rotated).sum(dim=2), dim=1)
        return h, normal, self._upsample(state, normal)

    def _upsample(self, state: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
        return F.normalize(convex_upsample(normal, self.up_prob_head(state), DOWN), dim=1)

    def forward(self, x: torch.Tensor, intrins: torch.Tensor, iterations: int = 5) -> torch.Tensor:
        """(B, 3, H, W) normalised RGB (H, W multiples of 32), (B, 3, 3) intrinsics in pixels with the
        top-left pixel's centre at (0, 0) -> (B, 3, H, W) unit normals after ``iterations`` refinements."""
        _, _, eighth, sixteenth, head = self.encoder.original_model(x)
        full_h, full_w = x.shape[-2:]
        intrins = intrins.clone()
        intrins[:, :2, 2] += 0.5
        uv32, uv16, uv8 = (self._uv(intrins, full_h // s, full_w // s, full_h, full_w)[:, :2] for s in (32, 16, 8))
        ray8 = F.normalize(self._uv(intrins, full_h // 8, full_w // 8, full_h, full_w), dim=1)

        normal, feat, h = self.decoder(eighth, sixteenth, head, uv8, uv16, uv32)
        normal = ray_relu(normal, ray8)
        feat = torch.cat([feat, uv8], dim=1)
        up = self._upsample(torch.cat([h, uv8], dim=1), normal)
        for _ in range(iterations):
            h, normal, up = self._refine(h, feat, normal, intrins, full_h, full_w, uv8, ray8)
        return up


def build(path: Path) -> DSINE:
    """The network of a dsine.pt file (CheckpointError, naming the file, when it is not one)."""
    state = read_state(path, WHAT)  # the real file keeps its weights under "model" (read_state unwraps it)
    if "encoder.original_model.conv_stem.weight" not in state or "gru.convq.weight" not in state:
        raise not_this(path, WHAT, "encoder.original_model (EfficientNet-B5), decoder.conv2/up1/up2/*_head, "
                                   "gru, prob/xy/angle/up_prob_head, under 'model'")
    return load(DSINE(), state, path, WHAT)


_NETWORKS = NetworkCache(size=1)  # 290 MB each


def network(path: Path) -> DSINE:
    """The built network of ``path`` (dsine.pt), kept while the file is unchanged."""
    return _NETWORKS.get(path, build)


def centring_pads(h: int, w: int) -> tuple[int, int]:
    """DSINE's pad_input: the (left, top) pads centring an h x w picture in the next multiples of 32
    (none where a side already is one)."""
    return (-w % 32) // 2, (-h % 32) // 2


def intrinsics(fov: float, h: int, w: int) -> torch.Tensor:
    """(3, 3) float32 intrinsics of an h x w picture with the field of view ``fov`` degrees across its
    longer side, the centre at (w / 2 - 0.5, h / 2 - 0.5) (top-left pixel's centre at (0, 0))."""
    focal = (max(h, w) / 2.0) / np.tan(np.deg2rad(fov / 2.0))
    return torch.tensor([[focal, 0, w / 2.0 - 0.5], [0, focal, h / 2.0 - 0.5], [0, 0, 1]], dtype=torch.float32)


@torch.no_grad()
def normal_map(net: DSINE, image: np.ndarray, resolution: int, fov: float = 60.0, iterations: int = 5) -> np.ndarray:
    """The extension's normal_dsine map of an (H, W, 3) uint8 RGB picture (see the module's notes)."""
    h, w = image.shape[:2]
    left, top = centring_pads(h, w)
    padded, remove_pad = resize_with_pad(image, resolution)
    x = torch.from_numpy(np.array(padded, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    intrins = intrinsics(fov, h, w)[None]
    intrins[:, 0, 2] += left
    intrins[:, 1, 2] += top
    normal = net(x, intrins, iterations)[0, :, top:top + h, left:left + w]
    return remove_pad(to_colours(normal.permute(1, 2, 0).numpy()))


def normal_dsine(image: np.ndarray, resolution: int, fov: float, iterations: float, files: list[Path]) -> np.ndarray:
    """The ``normal_dsine`` preprocessor (sliders Fov and Iterations; files: the dsine.pt path)."""
    return hwc3(normal_map(network(files[0]), image, int(resolution), float(fov), int(iterations)))
