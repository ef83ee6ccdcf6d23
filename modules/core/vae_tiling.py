"""Tiled VAE decode and encode, for pictures whose activations would not fit in memory.

The picture is cut into overlapping tiles; each is decoded (encoded) on its own and the tiles are
blended with weights that ramp linearly across the overlap, so neighbouring tiles fade into each
other instead of meeting at a seam, and each tile is run with some context around it that is cut
away. A tile alone would normalise with its own statistics (the VAE's group norms) and come out
lighter or darker than its neighbours; so the whole picture is first run once shrunk to a tile's
size, every group norm keeps its statistics, and all the tiles normalise with those
(``shared_norms``): the tiles agree with each other. The decoder's attention still sees one tile at
a time, so a tiled picture is close to, not equal to, a whole one (tests/test_tiled_vae.py).

``decode_bytes`` estimates what a whole decode needs (its largest activations at full resolution);
the caller compares it with the free memory to decide (``model_ops``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: every ``tile - overlap``, the last one flush with the end."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    out = list(range(0, length - tile, stride))
    out.append(length - tile)
    return out


def _ramp(size: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    w = torch.ones(size)
    if overlap > 0:
        edge = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        if fade_in:
            w[:overlap] = edge
        if fade_out:
            w[size - overlap:] = edge.flip(0)
    return w


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int, factor: float,
          out_channels: int, context: int = 0) -> torch.Tensor:
    """``fn`` applied to overlapping ``tile``-sized windows of ``x`` (B, C, H, W) and blended;
    ``factor``: output size / input size (8 to decode, 1/8 to encode). Each window is run with
    ``context`` more on every side (where the picture has it) and cut back, so a tile's edge sees
    what the whole picture would show there."""
    batch, _c, height, width = x.shape
    out_h, out_w = round(height * factor), round(width * factor)
    total = torch.zeros(batch, out_channels, out_h, out_w, dtype=torch.float32, device=x.device)
    weights = torch.zeros(1, 1, out_h, out_w, dtype=torch.float32, device=x.device)
    th, tw = min(tile, height), min(tile, width)
    fade = round(overlap * factor)
    for y in starts(height, tile, overlap):
        for x0 in starts(width, tile, overlap):
            top, left = max(0, y - context), max(0, x0 - context)
            bottom, right = min(height, y + th + context), min(width, x0 + tw + context)
            piece = fn(x[:, :, top:bottom, left:right]).float()
            oy, ox = round((y - top) * factor), round((x0 - left) * factor)
            oh, ow = round(th * factor), round(tw * factor)
            piece = piece[:, :, oy:oy + oh, ox:ox + ow]
            # a side fades only where a neighbour overlaps it
            wy = _ramp(oh, min(fade, oh // 2), y > 0, y + th < height)
            wx = _ramp(ow, min(fade, ow // 2), x0 > 0, x0 + tw < width)
            w = (wy[:, None] * wx[None, :]).to(x.device)[None, None]
            py, px = round(y * factor), round(x0 * factor)
            total[:, :, py:py + oh, px:px + ow] += piece * w
            weights[:, :, py:py + oh, px:px + ow] += w
    return total / weights


class shared_norms:
    """``with shared_norms(module) as norms:`` ``with norms.record():`` what runs there (the whole
    picture, small) normalises with its own statistics and every GroupNorm under ``module`` keeps them
    (pooled if it runs several times); after that, all of them normalise with those (per sample and
    group) instead of their own."""

    def __init__(self, module: torch.nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, torch.nn.GroupNorm)]
        self.sums: dict[int, list[torch.Tensor]] = {}  # id -> [count, sum, sum of squares] per (B, group)
        self.stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recording = False

    def __enter__(self):
        for norm in self.norms:
            norm.forward = self._forward(norm)
        return self

    def __exit__(self, *exc):
        for norm in self.norms:
            del norm.forward  # back to the class's forward
        return False

    @contextmanager
    def record(self):
        self.recording = True
        try:
            yield
        finally:
            self.recording = False
            for key, (count, total, squares) in self.sums.items():
                mean = total / count
                self.stats[key] = (mean, (squares / count - mean * mean).clamp_min(0))

    def _forward(self, norm: torch.nn.GroupNorm):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.recording:
                grouped = x.double().reshape(x.shape[0], norm.num_groups, -1)
                seen = [torch.tensor(float(grouped.shape[-1]), dtype=torch.float64), grouped.sum(-1),
                        (grouped * grouped).sum(-1)]
                old = self.sums.get(id(norm))
                self.sums[id(norm)] = seen if old is None else [a + b for a, b in zip(old, seen)]
            if self.recording or id(norm) not in self.stats:
                return torch.nn.functional.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
            mean, var = (t.float() for t in self.stats[id(norm)])  # (B, groups)
            per_channel = x.shape[1] // norm.num_groups
            scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_channel, dim=1)  # (B, C)
            shift = -mean.repeat_interleave(per_channel, dim=1) * scale
            if norm.affine:
                scale, shift = scale * norm.weight.float(), shift * norm.weight.float() + norm.bias.float()
            view = (*scale.shape, *([1] * (x.dim() - 2)))
            return torch.addcmul(shift.view(view).to(x.dtype), x, scale.view(view).to(x.dtype))
        return forward


def tiled_with_shared_norms(fn: Callable[[torch.Tensor], torch.Tensor], part: torch.nn.Module, x: torch.Tensor,
                            tile: int, overlap: int, factor: float, out_channels: int, context: int = 0) -> torch.Tensor:
    """``tiled``, every tile normalised with the statistics of the whole picture, gathered from one run
    of the picture shrunk to a tile's size (one tile's cost)."""
    with shared_norms(part) as norms:
        height, width = x.shape[2], x.shape[3]
        scale = min(1.0, (tile + 2 * context) / max(height, width))
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        with norms.record():
            fn(torch.nn.functional.interpolate(x.float(), size=size, mode="area").to(x.dtype))
        return tiled(fn, x, tile, overlap, factor, out_channels, context)


def decode_bytes(vae_config: dict, batch: int, height: int, width: int, dtype: torch.dtype) -> int:
    """What a whole decode of a (height x width)-pixel picture needs at its peak, roughly: a few
    activations of the last two decoder levels at full resolution (the upsampled wide one and
    the narrow last level), each ``channels x H x W``."""
    channels = list(vae_config.get("block_out_channels") or [128])
    wide = channels[1] if len(channels) > 1 else channels[0]
    element = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    return batch * height * width * element * (3 * wide + 2 * channels[0])


def encode_bytes(vae_config: dict, batch: int, height: int, width: int, dtype: torch.dtype) -> int:
    """The encoder's first level runs at full resolution: a few ``channels[0] x H x W`` activations."""
    channels = list(vae_config.get("block_out_channels") or [128])
    element = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    return batch * height * width * element * (4 * channels[0] + 3)
