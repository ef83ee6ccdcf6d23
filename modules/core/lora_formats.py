"""LoRA file layouts -> per-layer weight deltas.

A LoRA file is a flat state dict whose keys are `<layer key>.<part>`. This module groups the parts
of each layer, recognises the kind of the layer and computes its delta ``ΔW`` (float32, already
times ``alpha / rank`` but not times the user's weight):

- LoRA (kohya/A1111 ``lora_down``/``lora_up``/``alpha``, diffusers ``lora.down``/``lora.up`` and
  ``lora_linear_layer``, PEFT ``lora_A``/``lora_B``): ``ΔW = up @ down``, rank = rows of ``down``;
  a conv ``down`` may carry the kernel (LoCon: 3x3 down, 1x1 up); with ``lora_mid`` (Tucker)
  ``ΔW[o,i,k,l] = Σ mid[n,m,k,l] up[o,n] down[m,i]``. ``dyn`` keeps only the first ranks.
- LoHa (``hada_w1_a/b``, ``hada_w2_a/b``, optional Tucker ``hada_t1/t2``):
  ``ΔW = (w1a @ w1b) ⊙ (w2a @ w2b)``, rank = rows of ``w1b``.
- LoKr (``lokr_w1`` or ``lokr_w1_a/b``, ``lokr_w2`` or ``lokr_w2_a/b``, optional ``lokr_t2``):
  ``ΔW = w1 ⊗ w2`` (Kronecker), rank = rows of ``w1_b``, else of ``w2_b``, else no scaling.
- Full (``diff``): ``ΔW = diff``.
- DoRA (any of the above with a magnitude ``dora_scale`` / PEFT's ``lora_magnitude_vector``): the
  merged weight ``W + ΔW`` is renormalised to that magnitude, column by column (per input channel, as
  LyCORIS stores it; per output channel for a magnitude of the output's length, as PEFT stores it), and
  the delta is what that makes of ``W`` (A1111's ``apply_weight_decompose``, then the user's weight).

Scale: ``scale`` when the file stores one, else ``alpha / rank`` when both are known, else 1
(A1111's rule). These are the published formulas; peft / lycoris-lora are not used because they
wrap modules (forward hooks) rather than patch weights and know neither A1111's key names nor the
LDM-named layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# suffix of a file key -> (part name, kept as); longest first so ".lora.down.weight" wins over ".weight"
_PARTS = [
    (".lora_linear_layer.down.weight", "lora_down"), (".lora_linear_layer.up.weight", "lora_up"),
    (".lora_A.default.weight", "lora_down"), (".lora_B.default.weight", "lora_up"),
    (".lora_down.weight", "lora_down"), (".lora_up.weight", "lora_up"), (".lora_mid.weight", "lora_mid"),
    (".lora.down.weight", "lora_down"), (".lora.up.weight", "lora_up"),
    (".lora_A.weight", "lora_down"), (".lora_B.weight", "lora_up"),
    (".hada_w1_a", "hada_w1_a"), (".hada_w1_b", "hada_w1_b"), (".hada_w2_a", "hada_w2_a"),
    (".hada_w2_b", "hada_w2_b"), (".hada_t1", "hada_t1"), (".hada_t2", "hada_t2"),
    (".lokr_w1_a", "lokr_w1_a"), (".lokr_w1_b", "lokr_w1_b"), (".lokr_w1", "lokr_w1"),
    (".lokr_w2_a", "lokr_w2_a"), (".lokr_w2_b", "lokr_w2_b"), (".lokr_w2", "lokr_w2"), (".lokr_t2", "lokr_t2"),
    (".diff", "diff"), (".alpha", "alpha"), (".scale", "scale"),
    # DoRA: the magnitude (LyCORIS / kohya: per input channel; PEFT: per output channel)
    (".dora_scale", "dora_scale"), (".lora_magnitude_vector.default.weight", "dora_scale"),
    (".lora_magnitude_vector.weight", "dora_scale"), (".lora_magnitude_vector", "dora_scale"),
]
# diffusers' first LoRA format: attention processors hold the LoRA of to_q/to_k/to_v/to_out
_PROCESSOR = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def split_key(key: str) -> tuple[str, str] | None:
    """'<layer>.<part>' -> (layer key, part name); None for a key that is no LoRA part."""
    m = _PROCESSOR.match(key)
    if m:
        target = "to_out.0" if m.group(2) == "to_out" else m.group(2)
        return f"{m.group(1)}.{target}", f"lora_{m.group(3)}"
    for suffix, part in _PARTS:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def group_layers(state: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """{layer key: {part: tensor}} and the keys that are no LoRA part."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        split = split_key(key)
        if split is None:
            unknown.append(key)
            continue
        layer, part = split
        layers.setdefault(layer, {})[part] = tensor
    return layers, unknown


def _scalar(parts: dict, name: str) -> float | None:
    value = parts.get(name)
    return None if value is None else float(value.float().reshape(-1)[0])


def _mat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """LyCORIS' Tucker rebuild: t (r1, r2, k, l), wa (r1, out), wb (r2, in) -> (out, in, k, l)."""
    return torch.einsum("i j k l, i p, j q -> p q k l", t, wa, wb)


@dataclass
class LoraLayer:
    """One layer's parts, recognised; `delta(shape)` rebuilds ΔW for a weight of that shape."""

    key: str
    kind: str  # "lora", "loha", "lokr", "full"
    parts: dict[str, torch.Tensor]
    alpha: float | None
    scale: float | None
    rank: int | None

    def factor(self) -> float:
        if self.scale is not None:
            return self.scale
        if self.alpha is not None and self.rank:
            return self.alpha / self.rank
        return 1.0

    def delta(self, shape: torch.Size, device, dyn: int | None = None) -> torch.Tensor:
        """ΔW (float32, on `device`, alpha/rank applied) reshaped to `shape`; ValueError when the
        layer's sizes cannot make a tensor of that shape."""
        p = {k: v.to(device=device, dtype=torch.float32) for k, v in self.parts.items()}
        if self.kind == "lora":
            up, down = _mat(p["lora_up"]), p["lora_down"]
            if "lora_mid" in p:
                mid = p["lora_mid"]
                d = torch.einsum("n m k l, i n, m j -> i j k l", mid, up, _mat(down))
            else:
                if dyn is not None:
                    up, down = up[:, :dyn], down[:dyn]
                d = up @ _mat(down)
        elif self.kind == "loha":
            w1 = (_cp(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"]) if "hada_t1" in p
                  else p["hada_w1_a"] @ p["hada_w1_b"])
            w2 = (_cp(p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"]) if "hada_t2" in p
                  else p["hada_w2_a"] @ p["hada_w2_b"])
            d = w1 * w2
        elif self.kind == "lokr":
            w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
            if "lokr_w2" in p:
                w2 = p["lokr_w2"]
            elif "lokr_t2" in p:
                w2 = _cp(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
            else:
                w2 = p["lokr_w2_a"] @ p["lokr_w2_b"]
            if w2.ndim == 4:
                w1 = w1[:, :, None, None]
            d = torch.kron(w1, w2)
        else:
            d = p["diff"]
        return _fit(d, shape, self.key) * self.factor()

    def decompose(self, delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """DoRA: the delta that renormalises ``weight + delta`` to the stored magnitude (unchanged
        for a layer without one). ``weight`` is the current weight, float32."""
        magnitude = self.parts.get("dora_scale")
        if magnitude is None:
            return delta
        merged = weight + delta
        out_dim, in_dim = merged.shape[0], merged.shape[1]
        m = magnitude.to(merged.device, torch.float32)
        if m.numel() == out_dim and (m.numel() != in_dim or m.shape[0] == out_dim):  # per output (PEFT)
            norm = merged.reshape(out_dim, -1).norm(dim=1).reshape(out_dim, *[1] * (merged.ndim - 1))
            m = m.reshape(out_dim, *[1] * (merged.ndim - 1))
        elif m.numel() == in_dim:  # per input (LyCORIS / kohya)
            norm = merged.transpose(0, 1).reshape(in_dim, -1).norm(dim=1).reshape(1, in_dim, *[1] * (merged.ndim - 2))
            m = m.reshape(1, in_dim, *[1] * (merged.ndim - 2))
        else:
            raise ValueError(f"layer {self.key}: a DoRA magnitude of {tuple(magnitude.shape)} fits no side of "
                             f"the weight {tuple(merged.shape)}")
        return merged * (m / norm) - weight


def _fit(d: torch.Tensor, shape: torch.Size, key: str) -> torch.Tensor:
    if d.numel() == shape.numel():
        return d.reshape(shape)
    # a LoRA of a 4-channel conv_in on an inpainting UNet (9 channels): the extra inputs get none (A1111)
    if len(shape) == 4 and d.numel() == shape[0] * 4 * shape[2] * shape[3] and shape[1] == 9:
        d = d.reshape(shape[0], 4, shape[2], shape[3])
        return torch.nn.functional.pad(d, (0, 0, 0, 0, 0, 5))
    raise ValueError(f"layer {key}: its factors make a {tuple(d.shape)} delta, the model's weight is {tuple(shape)}")


def recognise(key: str, parts: dict[str, torch.Tensor]) -> LoraLayer | None:
    """The layer's kind from the parts present (A1111's order: LoRA, LoHa, LoKr, full)."""
    alpha, scale = _scalar(parts, "alpha"), _scalar(parts, "scale")
    tensors = {k: v for k, v in parts.items() if k not in ("alpha", "scale")}
    if "lora_up" in tensors and "lora_down" in tensors:
        return LoraLayer(key, "lora", tensors, alpha, scale, tensors["lora_down"].shape[0])
    if all(f"hada_w{i}_{s}" in tensors for i in (1, 2) for s in "ab"):
        return LoraLayer(key, "loha", tensors, alpha, scale, tensors["hada_w1_b"].shape[0])
    has_1 = "lokr_w1" in tensors or ("lokr_w1_a" in tensors and "lokr_w1_b" in tensors)
    has_2 = "lokr_w2" in tensors or ("lokr_w2_a" in tensors and "lokr_w2_b" in tensors)
    if has_1 and has_2:
        rank = (tensors["lokr_w1_b"].shape[0] if "lokr_w1_b" in tensors
                else tensors["lokr_w2_b"].shape[0] if "lokr_w2_b" in tensors else None)
        return LoraLayer(key, "lokr", tensors, alpha, scale, rank)
    if "diff" in tensors:
        return LoraLayer(key, "full", tensors, alpha, scale, None)
    return None
