"""sd-webui-controlnet's ``depth_zoe`` run from the user's annotator file ``zoedepth/ZoeD_M12_N.pt``
(ZoeDepth-N: MiDaS v3.1 DPT over a BEiT-L/16-384 backbone, plus ZoeDepth's metric-bin head).

The file is a torch checkpoint holding ``{"model": state dict}`` (345 million weights) with the original's
names: ``core.core.pretrained.model.*`` is timm 0.6's BEiT (relative position bias per block, layer
scales ``gamma_1``/``gamma_2``, its unused classifier ``fc_norm``/``head``), ``core.core.pretrained.
act_postprocess1..4`` MiDaS's reassemble stages (readout projection, 1x1 conv, 4x/2x/1x/0.5x resize),
``core.core.scratch`` the DPT fusion and output convolutions, and beside ``core`` the metric head:
``conv2``, ``seed_bin_regressor``, ``seed_projector``, ``projectors``, ``attractors`` and
``conditional_log_binomial``. Every size (width, depth, heads, MLP, reassemble and fusion widths, bins,
attractors) is read off the file's shapes, so a small file in the same layout builds a small network;
what the shapes do not say comes from the extension's ``config_zoedepth.json`` ("infer"): softplus bin
centres, inverse attractors averaged (alpha 300 and gamma 2, the defaults the layer calls them with),
temperatures 0.0212 .. 50.

As the extension: the padded picture (RGB, 0..1) is reflect-padded by ``int(sqrt(side / 2) * 3)`` on
each edge, resized (bilinear, corners aligned) to ZoeDepth's "minimal" fit of 384 x 512 in multiples of
32, scaled to -1..1; the metric depth is resized back (bicubic), cut, averaged with the run on the
mirrored picture, and mapped to uint8 between its 2nd and 85th percentiles, inverted (near is bright).
BEiT's relative position table is resized (bilinear) to the token grid of each picture, as MiDaS does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotator_depth import _count
from .annotator_files import NetworkCache, load, not_this, read_state
from .checkpoint_file import CheckpointError

FILE = "zoedepth/ZoeD_M12_N.pt"  # under the annotator folder, as the extension's annotator/downloads
WHAT = "depth_zoe"

# config_zoedepth.json ("infer"): what the file's shapes do not say. Its attractor_alpha (1000) never
# reaches the attractors: they call inv_attractor(dx) with its defaults, alpha 300 and gamma 2
ATTRACTOR_ALPHA, ATTRACTOR_GAMMA = 300.0, 2  # attractor_type "inv", attractor_kind "mean"
MIN_TEMP, MAX_TEMP = 0.0212, 50.0
NET_SIZE = (384, 512)  # img_size (height, width): the "minimal" resize target, keep_aspect_ratio
MULTIPLE = 32
_LN_EPS = 1e-6  # timm BEiT's LayerNorm


@dataclass(frozen=True)
class ZoeConfig:
    """The sizes of a ZoeDepth-N network; the defaults are ZoeD_M12_N.pt's (BEiT-L/16-384)."""
    dim: int = 1024          # BEiT width
    depth: int = 24          # BEiT blocks
    heads: int = 16          # attention heads (the relative position tables' columns)
    mlp: int = 4096          # BEiT MLP width
    patch: int = 16
    window: int = 24         # the relative position table's token grid (384 / 16)
    layer_scale: bool = True  # gamma_1 / gamma_2
    classes: int = 1000      # timm's classifier (fc_norm, head): in the file, unused; 0: none
    features: tuple[int, int, int, int] = (256, 512, 1024, 1024)  # the reassemble stages' widths
    fusion: int = 256        # DPT fusion width (scratch.layer*_rn)
    head_mid: int = 32       # the output convolutions' last hidden width (ZoeDepth's N_MIDAS_OUT)
    bins: int = 64
    embedding: int = 128     # bin embedding width
    seed_mlp: int = 256
    mlp_dim: int = 128       # projectors' and attractors' hidden width
    attractors: tuple[int, ...] = (16, 8, 4, 1)

    @property
    def hooks(self) -> tuple[int, ...]:
        """The blocks MiDaS reads: (5, 11, 17, 23) of BEiT-L's 24, (2, 5, 8, 11) of BEiT-B's 12."""
        return tuple(self.depth * (i + 1) // 4 - 1 for i in range(4))


# ------------------------------------------------------------------------------------------ BEiT (timm 0.6)

def relative_position_index(rows: int, cols: int) -> torch.Tensor:
    """timm's gen_relative_position_index for a (rows, cols) token grid plus the class token: (N+1, N+1)
    indices into a table of (2 rows - 1)(2 cols - 1) offsets and 3 class-token entries (cls->token,
    token->cls, cls->cls)."""
    distances = (2 * rows - 1) * (2 * cols - 1) + 3
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    offsets = (ys[:, None] - ys[None, :] + rows - 1) * (2 * cols - 1) + (xs[:, None] - xs[None, :] + cols - 1)
    index = torch.zeros((rows * cols + 1,) * 2, dtype=offsets.dtype)
    index[1:, 1:] = offsets
    index[0, :] = distances - 3
    index[:, 0] = distances - 2
    index[0, 0] = distances - 1
    return index


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2 + 3, heads))
        self.register_buffer("relative_position_index", relative_position_index(window, window))  # in the file
        self.proj = nn.Linear(dim, dim)

    def position_bias(self, rows: int, cols: int, index: torch.Tensor) -> torch.Tensor:
        """(heads, N+1, N+1): the table's offsets resized (bilinear) to a (rows, cols) grid, as MiDaS's
        _get_rel_pos_bias does (also when the grid is the table's own); ``index``: the grid's
        relative_position_index, flat."""
        table, side = self.relative_position_bias_table, 2 * self.window - 1
        grid = table[:-3].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(2 * rows - 1, 2 * cols - 1), mode="bilinear")
        table = torch.cat([grid.permute(0, 2, 3, 1).reshape(-1, table.shape[1]), table[-3:]])
        return table[index].view(rows * cols + 1, rows * cols + 1, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, qkv_bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1) + bias[None]
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, c: ZoeConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.dim, eps=_LN_EPS)
        self.attn = _Attention(c.dim, c.heads, c.window)
        self.norm2 = nn.LayerNorm(c.dim, eps=_LN_EPS)
        self.mlp = _Mlp(c.dim, c.mlp)
        if c.layer_scale:
            self.gamma_1 = nn.Parameter(torch.ones(c.dim))
            self.gamma_2 = nn.Parameter(torch.ones(c.dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x, bias):
        if self.gamma_1 is None:
            x = x + self.attn(self.norm1(x), bias)
            return x + self.mlp(self.norm2(x))
        x = x + self.gamma_1 * self.attn(self.norm1(x), bias)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, c: ZoeConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, c.dim, c.patch, stride=c.patch)


class Beit(nn.Module):
    """timm 0.6's Beit (no absolute positions, a relative position table per block), by its names."""

    def __init__(self, c: ZoeConfig):
        super().__init__()
        self.patch = c.patch
        self.patch_embed = _PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.depth))
        if c.classes:  # the ImageNet classifier: in the file, never used here
            self.fc_norm = nn.LayerNorm(c.dim, eps=_LN_EPS)
            self.head = nn.Linear(c.dim, c.classes)

    def forward(self, x: torch.Tensor, hooks: tuple[int, ...]) -> list[torch.Tensor]:
        """(B, 3, H, W) -> the tokens (class token first) after each block in ``hooks``."""
        rows, cols = x.shape[2] // self.patch, x.shape[3] // self.patch
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        taken, index = [], relative_position_index(rows, cols).view(-1).to(x.device)
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, block.attn.position_bias(rows, cols, index))
            if i in hooks:
                taken.append(tokens)
        return taken


# ------------------------------------------------------------------------------------------- MiDaS DPT

class _ProjectReadout(nn.Module):
    """act_postprocessN.0: each patch token with the class token, projected back to the width (GELU)."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, x):
        tokens = x[:, 1:]
        return self.project(torch.cat([tokens, x[:, :1].expand_as(tokens)], dim=-1))


def _reassemble(dim: int, width: int, resize: nn.Module | None) -> nn.Sequential:
    """MiDaS's act_postprocessN: readout, (transpose, unflatten: no weights), 1x1 conv, resize."""
    layers = [_ProjectReadout(dim), nn.Identity(), nn.Identity(), nn.Conv2d(dim, width, 1)]
    return nn.Sequential(*layers, *([resize] if resize is not None else []))


class _Pretrained(nn.Module):
    def __init__(self, c: ZoeConfig):
        super().__init__()
        f = c.features
        self.model = Beit(c)
        self.act_postprocess1 = _reassemble(c.dim, f[0], nn.ConvTranspose2d(f[0], f[0], 4, stride=4))
        self.act_postprocess2 = _reassemble(c.dim, f[1], nn.ConvTranspose2d(f[1], f[1], 2, stride=2))
        self.act_postprocess3 = _reassemble(c.dim, f[2], None)
        self.act_postprocess4 = _reassemble(c.dim, f[3], nn.Conv2d(f[3], f[3], 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor, hooks) -> list[torch.Tensor]:
        rows, cols = x.shape[2] // self.model.patch, x.shape[3] // self.model.patch
        out = []
        for tokens, stage in zip(self.model(x, hooks), (self.act_postprocess1, self.act_postprocess2,
                                                       self.act_postprocess3, self.act_postprocess4)):
            grid = stage[0](tokens).transpose(1, 2).unflatten(2, (rows, cols))
            for layer in stage[3:]:
                grid = layer(grid)
            out.append(grid)
        return out


class _ResidualConvUnit(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class _Fusion(nn.Module):
    """MiDaS's FeatureFusionBlock_custom (no batch norm, not expanded, corners aligned)."""

    def __init__(self, width: int):
        super().__init__()
        self.out_conv = nn.Conv2d(width, width, 1)
        self.resConfUnit1 = _ResidualConvUnit(width)
        self.resConfUnit2 = _ResidualConvUnit(width)

    def forward(self, x, skip=None, size=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        resize = {"size": tuple(size)} if size is not None else {"scale_factor": 2}
        return self.out_conv(F.interpolate(x, **resize, mode="bilinear", align_corners=True))


class _Upsample2(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _Scratch(nn.Module):
    def __init__(self, c: ZoeConfig):
        super().__init__()
        for i, width in enumerate(c.features, 1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(width, c.fusion, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self, f"refinenet{i}", _Fusion(c.fusion))
        half = c.fusion // 2
        self.output_conv = nn.Sequential(
            nn.Conv2d(c.fusion, half, 3, padding=1), _Upsample2(), nn.Conv2d(half, c.head_mid, 3, padding=1),
            nn.ReLU(), nn.Conv2d(c.head_mid, 1, 1), nn.ReLU(), nn.Identity())


class MidasDPT(nn.Module):
    """MiDaS v3.1's DPTDepthModel over BEiT; forward also gives what ZoeDepth's MidasCore hooks."""

    def __init__(self, c: ZoeConfig):
        super().__init__()
        self.hooks = c.hooks
        self.pretrained = _Pretrained(c)
        self.scratch = _Scratch(c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 3, H, W) in -1..1 -> (relative depth (B, H, W), [out_conv, l4_rn, r4, r3, r2, r1])."""
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(t) for i, t in enumerate(self.pretrained(x, self.hooks), 1))
        r4 = s.refinenet4(l4, size=l3.shape[2:])
        r3 = s.refinenet3(r4, l3, size=l2.shape[2:])
        r2 = s.refinenet2(r3, l2, size=l1.shape[2:])
        r1 = s.refinenet1(r2, l1)
        head = s.output_conv
        out_conv = head[3](head[2](head[1](head[0](r1))))
        relative = head[5](head[4](out_conv)).squeeze(1)
        return relative, [out_conv, l4, r4, r3, r2, r1]


class _MidasCore(nn.Module):
    def __init__(self, c: ZoeConfig):
        super().__init__()
        self.core = MidasDPT(c)


# ------------------------------------------------------------------------------------ ZoeDepth's metric head

def _mlp(into: int, hidden: int, out: int, last: nn.Module | None) -> nn.Sequential:
    layers = [nn.Conv2d(into, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, out, 1)]
    return nn.Sequential(*layers, *([last] if last is not None else []))


class _Net(nn.Module):
    """A 1x1-conv MLP under ``_net`` (the seed regressor, projectors, attractors)."""

    def __init__(self, into: int, hidden: int, out: int, last: nn.Module | None):
        super().__init__()
        self._net = _mlp(into, hidden, out, last)

    def forward(self, x):
        return self._net(x)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class _Attractor(_Net):
    """AttractorLayerUnnormed with inverse attractors, averaged: bin centres moved by
    mean_i (a_i - c) / (1 + alpha (a_i - c)^gamma)."""

    def forward(self, x, centres, previous_embedding):
        x = x + _resize(previous_embedding, x.shape[-2:])
        points = self._net(x)
        centres = _resize(centres, points.shape[-2:])
        dx = points.unsqueeze(2) - centres.unsqueeze(1)
        return centres + torch.mean(dx.div(1 + ATTRACTOR_ALPHA * dx.pow(ATTRACTOR_GAMMA)), dim=1)


class _LogBinomial(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.register_buffer("k_idx", torch.arange(classes).view(1, -1, 1, 1))
        self.register_buffer("K_minus_1", torch.tensor([classes - 1.0]).view(1, -1, 1, 1))

    def forward(self, p: torch.Tensor, t: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        """Softmax over the classes k of log(C(K-1, k) p^k (1-p)^(K-1-k)) / t (Stirling's log C)."""
        classes = self.k_idx.shape[1]
        p = p.unsqueeze(1)
        q, p = torch.clamp(1 - p, eps, 1), torch.clamp(p, eps, 1)
        n, k = self.K_minus_1 + 1e-7, self.k_idx + 1e-7
        log_choose = n * torch.log(n) - k * torch.log(k) - (n - k) * torch.log(n - k + 1e-7)
        y = log_choose + self.k_idx * torch.log(p) + (classes - 1 - self.k_idx) * torch.log(q)
        return torch.softmax(y / t, dim=1)


class _ConditionalLogBinomial(nn.Module):
    def __init__(self, into: int, condition: int, classes: int):
        super().__init__()
        hidden = (into + condition) // 2
        self.mlp = nn.Sequential(nn.Conv2d(into + condition, hidden, 1), nn.GELU(), nn.Conv2d(hidden, 4, 1),
                                 nn.Softplus())
        self.log_binomial_transform = _LogBinomial(classes)

    def forward(self, x, condition, eps: float = 1e-4):
        pt = self.mlp(torch.cat([x, condition], dim=1)) + eps
        p = pt[:, 0] / (pt[:, 0] + pt[:, 1])
        t = (pt[:, 2] / (pt[:, 2] + pt[:, 3])).unsqueeze(1)
        return self.log_binomial_transform(p, (MAX_TEMP - MIN_TEMP) * t + MIN_TEMP)


class ZoeDepthN(nn.Module):
    """ZoeDepth with one metric head over MiDaS (the network of ZoeD_M12_N.pt), by the file's names."""

    def __init__(self, c: ZoeConfig = ZoeConfig()):
        super().__init__()
        self.config = c
        self.core = _MidasCore(c)
        self.conv2 = nn.Conv2d(c.fusion, c.fusion, 1)
        self.seed_bin_regressor = _Net(c.fusion, c.seed_mlp, c.bins, nn.Softplus())
        self.seed_projector = _Net(c.fusion, c.mlp_dim, c.embedding, None)
        self.projectors = nn.ModuleList(_Net(c.fusion, c.mlp_dim, c.embedding, None) for _ in c.attractors)
        self.attractors = nn.ModuleList(_Attractor(c.embedding, c.mlp_dim, n, nn.Softplus()) for n in c.attractors)
        self.conditional_log_binomial = _ConditionalLogBinomial(c.head_mid + 1, c.embedding, c.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in 0..1 -> (B, 1, h, w) metric depth at the network's input size (MidasCore's
        "minimal" resize of the picture to 384 x 512 in multiples of 32, then -1..1)."""
        x = (_resize(x, network_size(*x.shape[2:])) - 0.5) / 0.5
        relative, (last, bottleneck, *blocks) = self.core.core(x)
        x = self.conv2(bottleneck)
        centres = self.seed_bin_regressor(x)
        embedding = self.seed_projector(x)
        for projector, attractor, block in zip(self.projectors, self.attractors, blocks):
            block_embedding = projector(block)
            centres = attractor(block_embedding, centres, embedding)
            embedding = block_embedding
        last = torch.cat([last, _resize(relative.unsqueeze(1), last.shape[2:])], dim=1)
        probabilities = self.conditional_log_binomial(last, _resize(embedding, last.shape[-2:]))
        centres = _resize(centres, probabilities.shape[-2:])
        return torch.sum(probabilities * centres, dim=1, keepdim=True)


def network_size(height: int, width: int) -> tuple[int, int]:
    """ZoeDepth's Resize(512, 384, keep_aspect_ratio, ensure_multiple_of=32, "minimal"): the one scale
    nearer to 1 of 384 / height and 512 / width, both sides rounded to multiples of 32."""
    scale_h, scale_w = NET_SIZE[0] / height, NET_SIZE[1] / width
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    return (int(np.round(scale * height / MULTIPLE) * MULTIPLE), int(np.round(scale * width / MULTIPLE) * MULTIPLE))


# ------------------------------------------------------------------------------------------------ loading

_B = "core.core.pretrained.model."


def zoe_config(shapes: dict, name: str) -> ZoeConfig:
    """The sizes of the network in a ZoeDepth-N state dict, from its shapes."""
    needed = (_B + "cls_token", _B + "blocks.0.attn.relative_position_bias_table", _B + "blocks.0.mlp.fc1.weight",
              _B + "patch_embed.proj.weight", "core.core.scratch.layer1_rn.weight",
              "core.core.scratch.output_conv.2.weight", "seed_bin_regressor._net.2.weight",
              "seed_projector._net.2.weight", "attractors.0._net.2.weight")
    if any(k not in shapes for k in needed):
        raise not_this(name, WHAT, "core.core.pretrained.model (BEiT), core.core.pretrained.act_postprocess1..4, "
                                   "core.core.scratch, seed_bin_regressor, attractors, conditional_log_binomial, "
                                   "under 'model'")

    def size(key: str, dim: int = 0) -> int:
        if key not in shapes:
            raise CheckpointError(f"{WHAT}: {name} lacks {key}")
        return shapes[key][dim]

    rows, heads = shapes[_B + "blocks.0.attn.relative_position_bias_table"]
    window = (math.isqrt(rows - 3) + 1) // 2
    if (2 * window - 1) ** 2 + 3 != rows:
        raise CheckpointError(f"{WHAT}: {name}: the relative position table ({rows} rows) is not a square grid's")
    depth = _count(shapes, re.escape(_B) + r"blocks\.(\d+)\.attn\.qkv\.weight$")
    if depth < 4:
        raise CheckpointError(f"{WHAT}: {name}: MiDaS reads 4 BEiT blocks, this file has {depth}")
    attractors = _count(shapes, r"attractors\.(\d+)\._net\.2\.weight$")
    return ZoeConfig(
        dim=size(_B + "cls_token", -1), depth=depth, heads=heads, mlp=size(_B + "blocks.0.mlp.fc1.weight"),
        patch=size(_B + "patch_embed.proj.weight", -1), window=window,
        layer_scale=_B + "blocks.0.gamma_1" in shapes,
        classes=size(_B + "head.weight") if _B + "head.weight" in shapes else 0,
        features=tuple(size(f"core.core.pretrained.act_postprocess{i}.3.weight") for i in range(1, 5)),
        fusion=size("core.core.scratch.layer1_rn.weight"), head_mid=size("core.core.scratch.output_conv.2.weight"),
        bins=size("seed_bin_regressor._net.2.weight"), embedding=size("seed_projector._net.2.weight"),
        seed_mlp=size("seed_bin_regressor._net.0.weight"), mlp_dim=size("seed_projector._net.0.weight"),
        attractors=tuple(size(f"attractors.{i}._net.2.weight") for i in range(attractors)))


def build(path: Path) -> ZoeDepthN:
    """The network of a ZoeD_M12_N.pt file (CheckpointError, naming the file, when it is not one)."""
    name = Path(path).name
    state = read_state(path, WHAT)  # the real file keeps its weights under "model" (read_state unwraps it)
    config = zoe_config({k: tuple(v.shape) for k, v in state.items()}, name)
    with torch.device("meta"):
        net = ZoeDepthN(config)
    for key in net.state_dict():  # timm >= 0.9 saves no index: it is fixed by the grid
        if key.endswith("relative_position_index") and key not in state:
            state[key] = relative_position_index(config.window, config.window)
    net = net.to_empty(device="cpu")
    return load(net, state, path, WHAT)


_NETWORKS = NetworkCache(size=1)  # 1.4 GB


def network(path: Path) -> ZoeDepthN:
    """The built network of ``path`` (ZoeD_M12_N.pt), kept while the file is unchanged."""
    return _NETWORKS.get(path, build)


# ------------------------------------------------------------------------------------ the preprocessor

def _padded_run(net: ZoeDepthN, x: torch.Tensor) -> torch.Tensor:
    """ZoeDepth's _infer_with_pad_aug: reflect-pad by int(sqrt(side / 2) * 3), run, resize the depth to
    the padded size (bicubic), cut the padding off."""
    pad_h, pad_w = int(np.sqrt(x.shape[2] / 2) * 3), int(np.sqrt(x.shape[3] / 2) * 3)
    padded = F.pad(x, [pad_w, pad_w, pad_h, pad_h], mode="reflect")
    out = net(padded)
    if out.shape[-2:] != padded.shape[-2:]:
        out = F.interpolate(out, size=padded.shape[2:], mode="bicubic", align_corners=False)
    return out[:, :, pad_h:out.shape[2] - pad_h, pad_w:out.shape[3] - pad_w]


@torch.no_grad()
def metric_depth(net: ZoeDepthN, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 metric depth: the mean of the picture's and its mirror's."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
    out = (_padded_run(net, x) + torch.flip(_padded_run(net, torch.flip(x, dims=[3])), dims=[3])) / 2
    return out[0, 0].numpy()


def depth_map(depth: np.ndarray) -> np.ndarray:
    """The extension's ZoeDetector map: 0 at the 2nd percentile, 1 at the 85th, inverted, 0..255."""
    depth = np.array(depth, dtype=np.float32)
    low, high = np.percentile(depth, 2), np.percentile(depth, 85)
    with np.errstate(divide="ignore", invalid="ignore"):  # a flat depth: 0 / 0, as the extension
        depth -= low
        depth /= high - low
        depth = 1.0 - depth
        scaled = (depth * 255.0).clip(0, 255)
    return np.nan_to_num(scaled, nan=0.0).astype(np.uint8)


def depth_zoe(padded: np.ndarray, files: list[Path], a: float) -> np.ndarray:
    """The ``depth_zoe`` map (H, W) uint8 of the extension's padded picture (files: the ZoeD_M12_N.pt path)."""
    net = network(files[0])
    try:
        depth = metric_depth(net, padded)
    except RuntimeError as exc:  # shapes that load but do not compute
        raise CheckpointError(f"{Path(files[0]).name} does not run as a {WHAT} network: "
                              f"{str(exc).splitlines()[0]}") from None
    return depth_map(depth)
