"""The UNet's attention, as A1111's "Cross attention optimization" chooses it.

A1111 patches its model's CrossAttention with one of several implementations; Easel gives the
diffusers UNet's self- and cross-attention layers (attn1/attn2) a processor doing the same thing:

- ``sdp``: PyTorch's scaled dot product attention (diffusers' own processor; Easel's default),
- ``sdp-no-mem``: the same without the memory-efficient kernel (flash or plain math: deterministic),
- ``Doggettx``: queries split into as many slices as the free memory asks for (a power of two; more
  than 64 is "not enough memory"),
- ``V1``: two heads at a time,
- ``InvokeAI``: heads, else queries, split so that no score tensor passes a size (32 MB on the CPU,
  the free memory / 3.3 on CUDA),
- ``sub-quadratic``: queries in chunks (``--sub-quad-q-chunk-size``) against keys in chunks
  (``--sub-quad-kv-chunk-size``) with a running softmax, unless the whole fits in
  ``--sub-quad-chunk-threshold`` percent of the free memory,
- ``None``: plain attention (the scores, their softmax, the weighted sum) in one piece,
- ``xformers``: diffusers' xformers processor (CUDA, when xformers is installed).

``upcast`` (A1111's upcast_attn, and ``--upcast-sampling``) computes the attention itself in float32
whatever the weights' precision. Every backend gives the same result up to float rounding; they differ
in peak memory and speed. Models of the flow families (Flux, SD3) keep their own attention."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import memory

# A1111's titles (the option's values), in its priority order
BACKEND_TITLES = (
    "xformers",
    "sdp-no-mem - scaled dot product without memory efficient attention",
    "sdp - scaled dot product",
    "sub-quadratic",
    "V1 - original v1",
    "InvokeAI",
    "Doggettx",
)
NAMES = tuple(title.split(" - ")[0] for title in BACKEND_TITLES) + ("None",)
# the command line's flags, as A1111's cmd_opt of each (in its priority order)
FLAG_BACKENDS = (
    ("xformers", "xformers"), ("opt_sdp_no_mem_attention", "sdp-no-mem"), ("opt_sdp_attention", "sdp"),
    ("opt_sub_quad_attention", "sub-quadratic"), ("opt_split_attention_v1", "V1"),
    ("opt_split_attention_invokeai", "InvokeAI"), ("opt_split_attention", "Doggettx"),
)
UNET_FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")  # the families whose UNet has attn1/attn2 layers


class NotEnoughMemory(RuntimeError):
    """Doggettx's split would need more than 64 slices."""


@dataclass(frozen=True)
class SubQuadratic:
    """``--sub-quad-*``: query and key chunk sizes (tokens) and the share of the free memory (percent)
    under which no chunking is done (None: always chunk)."""

    q_chunk: int = 1024
    kv_chunk: int | None = None
    threshold: float | None = None


def flagged(flags: object) -> tuple[str, ...]:
    """The backends the command line names (``flags``: an object with A1111's attribute names), in
    A1111's priority order."""
    return tuple(backend for flag, backend in FLAG_BACKENDS if getattr(flags, flag, False))


def sub_quadratic_settings(flags: object) -> SubQuadratic:
    return SubQuadratic(int(getattr(flags, "sub_quad_q_chunk_size", None) or 1024),
                        getattr(flags, "sub_quad_kv_chunk_size", None),
                        getattr(flags, "sub_quad_chunk_threshold", None))


def choose(option: str, flags: tuple[str, ...] = (), disabled: bool = False, xformers_ready: bool = False) -> str:
    """The backend's name for the option's value (a title, a name, "Automatic" or "None") and the
    command line's backends (``flagged``). Automatic: the flagged backend of highest priority (xformers
    only where it runs), else ``sdp`` (A1111 picks Doggettx on CUDA and InvokeAI on the CPU; PyTorch's
    SDPA is faster and needs less memory than either). ``--disable-opt-split-attention`` (``disabled``)
    wins over everything: plain attention. xformers where it cannot run: ``sdp``."""
    if disabled:
        return "None"
    name = str(option or "Automatic").split(" - ")[0]
    if name == "Automatic":
        usable = [b for b in flags if b != "xformers" or xformers_ready]
        return usable[0] if usable else "sdp"
    if name == "xformers" and not xformers_ready:
        return "sdp"
    return name if name in NAMES else "sdp"


def apply(unet: torch.nn.Module, family: str, run_options, half: bool) -> bool:
    """Installs the run options' backend on a model's UNet when it differs from what it has (only
    the UNet families; ``half``: the UNet's weights are 16-bit, where --upcast-sampling upcasts).
    True when something changed."""
    if family not in UNET_FAMILIES:
        return False
    upcast = bool(run_options.upcast_attn or (run_options.upcast_sampling and half))
    wanted = (run_options.attention, upcast, run_options.sub_quadratic)
    if installed(unet) == wanted:
        return False
    install(unet, *wanted)
    return True


# -- kernels: q, k, v (batch, heads, tokens, dim); mask None or broadcastable to (b, h, q, k) -------------
def _plain(q, k, v, mask, scale):
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    return torch.matmul(scores.softmax(dim=-1), v)


def _mask_part(mask, rows: slice, queries: slice):
    """The mask's part for some (batch*heads) rows and queries (mask flattened like q: (bh, 1|q, k))."""
    if mask is None:
        return None
    part = mask[rows] if mask.shape[0] > 1 else mask
    return part[:, queries] if part.shape[1] > 1 else part


def _sliced(q, k, v, mask, scale, head_slice: int, query_slice: int):
    """Plain attention over slices of the (batch*heads) rows and of the queries: the same result,
    one slice's scores in memory at a time."""
    b, h, n, d = q.shape
    q3, k3, v3 = (t.reshape(b * h, t.shape[2], t.shape[3]) for t in (q, k, v))
    m3 = None if mask is None else mask.expand(b, h, -1, -1).reshape(b * h, mask.shape[-2], mask.shape[-1])
    out = torch.empty(b * h, n, v.shape[-1], dtype=q.dtype, device=q.device)
    head_slice, query_slice = max(1, head_slice), max(1, query_slice)
    for r in range(0, b * h, head_slice):
        rows = slice(r, r + head_slice)
        for i in range(0, n, query_slice):
            queries = slice(i, i + query_slice)
            out[rows, queries] = _plain(q3[rows, queries], k3[rows], v3[rows], _mask_part(m3, rows, queries), scale)
    return out.view(b, h, n, -1)


def _score_bytes(q, k) -> int:
    b, h, n, _ = q.shape
    return b * h * n * k.shape[2] * q.element_size()


def _doggettx(q, k, v, mask, scale):
    free = memory.available_bytes(q.device)
    required = _score_bytes(q, k) * (3 if q.element_size() == 2 else 2.5)
    steps = 1
    if required > free:
        steps = 2 ** math.ceil(math.log2(required / max(free, 1)))
    if steps > 64:
        side = math.floor(math.sqrt(math.sqrt(free / 2.5)) / 8) * 64
        raise NotEnoughMemory(f"Not enough memory, use lower resolution (max approx. {side}x{side}). "
                              f"Need: {required / 64 / 2**30:0.1f}GB free, Have: {free / 2**30:0.1f}GB free")
    n = q.shape[2]
    return _sliced(q, k, v, mask, scale, q.shape[0] * q.shape[1], max(1, n // steps))


def _v1(q, k, v, mask, scale):
    return _sliced(q, k, v, mask, scale, 2, q.shape[2])


def _invokeai(q, k, v, mask, scale):
    if q.device.type == "cuda":
        limit_mb = memory.available_bytes(q.device) / 3.3 / 2**20
    else:
        limit_mb = 32
    size_mb = _score_bytes(q, k) // 2**20
    if size_mb <= limit_mb:
        return _plain(q, k, v, mask, scale)
    rows = q.shape[0] * q.shape[1]
    div = 1 << int((size_mb - 1) / limit_mb).bit_length()
    if div <= rows:
        return _sliced(q, k, v, mask, scale, rows // div, q.shape[2])
    return _sliced(q, k, v, mask, scale, 1, max(q.shape[2] // div, 1))


def _sub_quadratic(q, k, v, mask, scale, settings: SubQuadratic):
    n, m = q.shape[2], k.shape[2]
    if settings.threshold is not None:
        if _score_bytes(q, k) <= memory.available_bytes(q.device) * settings.threshold / 100:
            return _plain(q, k, v, mask, scale)
    q_chunk = max(1, min(settings.q_chunk, n))
    kv_chunk = settings.kv_chunk or max(int(math.sqrt(m)), 512)
    kv_chunk = max(1, min(kv_chunk, m))
    out = torch.empty(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    for i in range(0, n, q_chunk):
        qi = q[:, :, i:i + q_chunk]
        running_max = running_sum = acc = None
        for j in range(0, m, kv_chunk):
            scores = torch.matmul(qi, k[:, :, j:j + kv_chunk].transpose(-1, -2)) * scale
            if mask is not None:
                part = mask[..., i:i + q_chunk, :] if mask.shape[-2] > 1 else mask
                scores = scores + part[..., j:j + kv_chunk]
            chunk_max = scores.amax(dim=-1, keepdim=True)
            if running_max is None:
                new_max = chunk_max
            else:
                new_max = torch.maximum(running_max, chunk_max)
            weights = torch.exp(scores - new_max)
            values = torch.matmul(weights, v[:, :, j:j + kv_chunk])
            if running_max is None:
                running_sum, acc = weights.sum(dim=-1, keepdim=True), values
            else:
                correction = torch.exp(running_max - new_max)
                running_sum = running_sum * correction + weights.sum(dim=-1, keepdim=True)
                acc = acc * correction + values
            running_max = new_max
        out[:, :, i:i + q_chunk] = acc / running_sum
    return out


def _sdp(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _sdp_no_mem(q, k, v, mask, scale):
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def kernel(name: str, sub_quadratic: SubQuadratic | None = None):
    """The attention function (q, k, v, mask, scale) -> out of a backend."""
    if name == "sub-quadratic":
        settings = sub_quadratic or SubQuadratic()
        return lambda q, k, v, mask, scale: _sub_quadratic(q, k, v, mask, scale, settings)
    return {"sdp": _sdp, "sdp-no-mem": _sdp_no_mem, "Doggettx": _doggettx, "V1": _v1, "InvokeAI": _invokeai,
            "None": _plain}[name]


class AttentionProcessor:
    """A diffusers ``Attention`` processor that runs one of the kernels above (in float32 with
    ``upcast``): projections, optional norms, the kernel, the output projection."""

    def __init__(self, name: str, upcast: bool = False, sub_quadratic: SubQuadratic | None = None):
        self.name, self.upcast = name, upcast
        self.kernel = kernel(name, sub_quadratic)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if getattr(attn, "spatial_norm", None) is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, height, width = hidden_states.shape
            hidden_states = hidden_states.view(b, c, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, tokens = context.shape[0], context.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if getattr(attn, "group_norm", None) is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and getattr(attn, "norm_cross", None):
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        dtype = query.dtype
        if self.upcast:
            query, key, value = query.float(), key.float(), value.float()
            if attention_mask is not None:
                attention_mask = attention_mask.float()
        out = self.kernel(query, key, value, attention_mask, attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(b, c, height, width)
        if getattr(attn, "residual_connection", False):
            out = out + residual
        return out / getattr(attn, "rescale_output_factor", 1.0)


def layers(unet: torch.nn.Module) -> list:
    """The UNet's self- and cross-attention layers (attn1/attn2)."""
    return [m for name, m in unet.named_modules() if name.endswith((".attn1", ".attn2")) and hasattr(m, "set_processor")]


def install(unet: torch.nn.Module, name: str, upcast: bool = False,
            sub_quadratic: SubQuadratic | None = None) -> int:
    """Gives the UNet's attn1/attn2 layers the backend's processor; returns how many. ``sdp`` without
    upcast is diffusers' own processor, ``xformers`` diffusers' xformers one (``choose`` names it only
    where it runs)."""
    from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor

    found = layers(unet)
    for module in found:
        if name == "xformers" and not upcast:
            module.set_processor(XFormersAttnProcessor())
        elif name == "sdp" and not upcast:
            module.set_processor(AttnProcessor2_0())
        else:
            module.set_processor(AttentionProcessor("sdp" if name == "xformers" else name, upcast, sub_quadratic))
    unet._easel_attention = (name, upcast, sub_quadratic)
    return len(found)


def installed(unet: torch.nn.Module) -> tuple | None:
    """(name, upcast, sub-quadratic settings) last installed on the UNet, or None."""
    return getattr(unet, "_easel_attention", None)
