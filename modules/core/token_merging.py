"""Token merging for the UNet's self-attention (ToMe for Stable Diffusion, Bolya & Hoffman 2023), as
A1111 applies it: A1111's ``token_merging_ratio`` settings run ``tomesd`` with ``use_rand=False``,
2x2 strides, merging only in the blocks at the latent's full resolution (``max_downsample=1``) and
only around self-attention (``merge_attn``; not cross-attention, not the MLP).

Before a transformer block's self-attention, a fraction ``ratio`` of its tokens is merged into
others: the tokens are split into destinations (one per 2x2 cell of the latent grid, its top-left
token) and sources (the rest); each source finds its most similar destination (cosine similarity of
the block's input), and the ``ratio * N`` sources with the best matches are averaged into their
destinations. Attention runs on the remaining tokens; afterwards every merged source gets its
destination's output back (unmerge), so the block's output has all N tokens again. Each picture
of the batch is matched on its own. Fewer tokens make the attention (quadratic in N) cheaper.

:func:`merging` installs it on a UNet for the duration of a ``with`` block with removable hooks
(the UNet's weights and modules are untouched, and nothing stays behind after the block).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

Merge = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


def _split_indices(h: int, w: int, sy: int, sx: int, device) -> tuple[Tensor, Tensor]:
    """(source indices, destination indices) into the h*w tokens: the top-left token of every full
    sy x sx cell is a destination, every other token (incl. a ragged edge) a source."""
    cells_h, cells_w = h // sy, w // sx
    is_dst = torch.zeros(h, w, dtype=torch.bool, device=device)
    is_dst[: cells_h * sy: sy, : cells_w * sx: sx] = True
    flat = is_dst.flatten()
    order = torch.argsort((~flat).to(torch.int8), stable=True)  # destinations first, in raster order
    num_dst = cells_h * cells_w
    return order[num_dst:], order[:num_dst]


def bipartite_merge(metric: Tensor, h: int, w: int, r: int, sx: int = 2, sy: int = 2) -> tuple[Merge, Merge]:
    """(merge, unmerge) for tokens (B, N = h * w, C) whose similarity is read from ``metric``.
    ``merge`` maps (B, N, C) to (B, N - r, C) (the unmerged sources, then the destinations with
    their merged sources averaged in); ``unmerge`` maps (B, N - r, C) back to (B, N, C)."""
    batch, tokens, _ = metric.shape
    if r <= 0 or h // sy == 0 or w // sx == 0:
        return _identity, _identity
    src_index, dst_index = _split_indices(h, w, sy, sx, metric.device)
    r = min(r, len(src_index))
    with torch.no_grad():
        normed = metric / metric.norm(dim=-1, keepdim=True)
        a, b = normed[:, src_index], normed[:, dst_index]
        best, best_dst = (a @ b.transpose(-1, -2)).max(dim=-1)  # each source's closest destination
        ranked = best.argsort(dim=-1, descending=True)[..., None]  # (B, n_src, 1)
        kept, merged = ranked[:, r:], ranked[:, :r]
        merged_dst = best_dst[..., None].gather(1, merged)  # (B, r, 1)
    n_src, n_kept = len(src_index), len(src_index) - r

    def merge(x: Tensor) -> Tensor:
        channels = x.shape[-1]
        src, dst = x[:, src_index], x[:, dst_index]
        stay = src.gather(1, kept.expand(batch, n_kept, channels))
        moved = src.gather(1, merged.expand(batch, r, channels))
        dst = dst.scatter_reduce(1, merged_dst.expand(batch, r, channels), moved, reduce="mean")
        return torch.cat([stay, dst], dim=1)

    def unmerge(x: Tensor) -> Tensor:
        channels = x.shape[-1]
        stay, dst = x[:, :n_kept], x[:, n_kept:]
        out = x.new_zeros(batch, tokens, channels)
        out[:, dst_index] = dst
        src_pos = src_index.view(1, n_src, 1).expand(batch, n_src, 1)
        out.scatter_(1, src_pos.gather(1, kept).expand(batch, n_kept, channels), stay)
        moved = dst.gather(1, merged_dst.expand(batch, r, channels))  # each merged source: its destination's
        out.scatter_(1, src_pos.gather(1, merged).expand(batch, r, channels), moved)
        return out

    return merge, unmerge


def _transformer_blocks(unet: nn.Module) -> list[nn.Module]:
    """The UNet's transformer blocks that have a self-attention (diffusers' BasicTransformerBlock)."""
    return [m for m in unet.modules() if hasattr(m, "attn1") and hasattr(m, "norm1")
            and not getattr(m, "only_cross_attention", False)]


@contextlib.contextmanager
def merging(unet: nn.Module, ratio: float, *, max_downsample: int = 1, sx: int = 2, sy: int = 2) -> Iterator[int]:
    """Token merging on ``unet`` inside the block (A1111's tomesd settings); ratio 0 does nothing.
    Yields the number of transformer blocks it was installed on."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"token merging ratio must be within [0, 1), got {ratio}")
    blocks = _transformer_blocks(unet) if ratio > 0 else []
    if not blocks:
        yield 0
        return
    size: list[tuple[int, int]] = []
    handles = []

    def record_size(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        size[:] = [tuple(sample.shape[-2:])]

    handles.append(unet.register_forward_pre_hook(record_size, with_kwargs=True))
    for block in blocks:
        plan: dict[str, Merge] = {}

        def plan_block(module, args, kwargs, plan=plan):
            hidden = args[0] if args else kwargs["hidden_states"]
            plan.clear()
            if not size or hidden.ndim != 3:
                return
            height, width = size[0]
            tokens = hidden.shape[1]
            downsample = int(math.ceil(math.sqrt(height * width // tokens)))
            if downsample > max_downsample:
                return
            h, w = int(math.ceil(height / downsample)), int(math.ceil(width / downsample))
            if h * w != tokens:
                return
            plan["merge"], plan["unmerge"] = bipartite_merge(hidden, h, w, int(tokens * ratio), sx, sy)

        def merge_input(module, args, kwargs, plan=plan):
            if "merge" not in plan or kwargs.get("encoder_hidden_states") is not None:
                return None
            if args:
                return (plan["merge"](args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": plan["merge"](kwargs["hidden_states"])}

        def unmerge_output(module, args, kwargs, output, plan=plan):
            if "merge" not in plan or kwargs.get("encoder_hidden_states") is not None:
                return None
            return plan["unmerge"](output)

        handles.append(block.register_forward_pre_hook(plan_block, with_kwargs=True))
        handles.append(block.attn1.register_forward_pre_hook(merge_input, with_kwargs=True))
        handles.append(block.attn1.register_forward_hook(unmerge_output, with_kwargs=True))
    try:
        yield len(blocks)
    finally:
        for handle in handles:
            handle.remove()
