"""A1111-format hypernetworks (``models/hypernetworks/*.pt``, ``<hypernet:name:strength>``).

A hypernetwork holds, per context width (768 for SD1, 1024 for SD2), two small MLPs: one reshapes
the text context the cross-attention keys are computed from, the other the context of its values:
``context + mlp(context) * strength``. Several hypernetworks apply one after the other. The file is
a dict of tensors, numbers and strings, read with ``torch.load(weights_only=True)``; the MLP is
rebuilt from the file's own description (A1111's rules: ``layer_structure`` scales the width, an
activation after each layer except the last unless ``activate_output``, optional layer norms and
dropout slots, which only shift the parameter indices at inference).

While a job uses hypernetworks, the UNet's cross-attention modules get a processor that applies
them; ``deactivate`` puts the original processors back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import extra_networks, memory
from .checkpoint_file import CheckpointError, probe

ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish, "tanh": nn.Tanh,
               "sigmoid": nn.Sigmoid, "softsign": nn.Softsign, "mish": nn.Mish, "gelu": nn.GELU, "silu": nn.SiLU,
               "hardswish": nn.Hardswish, "prelu": nn.PReLU, "softplus": nn.Softplus}
_OLD_NAMES = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
              "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


class HypernetworkError(ValueError):
    pass


class _Module(nn.Module):
    def __init__(self, width: int, state: dict, options: dict):
        super().__init__()
        structure = [float(x) for x in options["layer_structure"]]
        activation = options["activation_func"]
        layers: list[nn.Module] = []
        for i in range(len(structure) - 1):
            layers.append(nn.Linear(int(width * structure[i]), int(width * structure[i + 1])))
            last = i >= len(structure) - 2
            if activation not in ("linear", None) and not (last and not options["activate_output"]):
                if activation not in ACTIVATIONS:
                    raise HypernetworkError(f"unknown activation function {activation!r}")
                layers.append(ACTIVATIONS[activation]())
            if options["is_layer_norm"]:
                layers.append(nn.LayerNorm(int(width * structure[i + 1])))
            if options["use_dropout"] and (i < len(structure) - 3 or (options["last_layer_dropout"] and not last)):
                layers.append(nn.Dropout(p=0.0))  # inference: only its slot in the numbering matters
        self.linear = nn.Sequential(*layers)
        state = {_OLD_NAMES.get(k, k): v for k, v in state.items()}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise HypernetworkError(f"its {width}-wide layers do not match their description "
                                    f"({'missing ' + str(missing[:3]) if missing else 'unexpected ' + str(unexpected[:3])})")
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, strength: float) -> torch.Tensor:
        return x + self.linear(x) * strength


@dataclass
class Hypernetwork:
    name: str
    path: Path
    layers: dict[int, tuple[_Module, _Module]] = field(default_factory=dict)  # width -> (keys, values)


def load(path: str | Path) -> Hypernetwork:
    """Read a hypernetwork file; HypernetworkError (a ValueError) naming the problem."""
    path = Path(path)
    try:
        probe(path)  # a torch file's magic bytes, else a clear refusal
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (CheckpointError, OSError) as exc:
        raise HypernetworkError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - what weights-only unpickling refuses
        raise HypernetworkError(f"{path.name} cannot be read as weights only: {exc}") from exc
    if not isinstance(data, dict):
        raise HypernetworkError(f"{path.name} is not a hypernetwork (no dict of layers)")
    options = {"layer_structure": data.get("layer_structure") or [1, 2, 1],
               "activation_func": data.get("activation_func"), "is_layer_norm": bool(data.get("is_layer_norm")),
               "use_dropout": bool(data.get("use_dropout")),
               "activate_output": bool(data.get("activate_output", True)),  # A1111: on when the file is silent
               "last_layer_dropout": bool(data.get("last_layer_dropout", True))}
    network = Hypernetwork(path.stem, path)
    for width, pair in data.items():
        if not isinstance(width, int):
            continue
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, dict) for s in pair)):
            raise HypernetworkError(f"{path.name}: the {width}-wide entry is not a pair of layers")
        network.layers[width] = (_Module(width, pair[0], options), _Module(width, pair[1], options))
    if not network.layers:
        raise HypernetworkError(f"{path.name} holds no hypernetwork layers")
    return network


def dropout_structure(layer_structure, use_dropout: bool, last_layer_dropout: bool) -> list:
    """A1111's ``parse_dropout_structure``: the dropout rate after each layer a file without its own
    ``dropout_structure`` implies (0.3 where A1111 trains with dropout)."""
    structure = list(layer_structure) if layer_structure is not None else [1, 2, 1]
    if not use_dropout:
        return [0] * len(structure)
    return [0, *[0.3] * (len(structure) - 3), 0.3 if last_layer_dropout else 0, 0]


def extra_info(data: dict) -> list[str]:
    """The lines A1111 prints with its print_hypernet_extra option when it loads a hypernetwork file
    (``data``, the file's dict), read with A1111's defaults for what the file leaves out."""
    structure = data.get("layer_structure", [1, 2, 1])
    dropouts = data.get("dropout_structure", None)
    use_dropout = True if dropouts is not None and any(dropouts) else data.get("use_dropout", False)
    if dropouts is None:
        dropouts = dropout_structure(structure, use_dropout, data.get("last_layer_dropout", False))
    lines = []
    if data.get("optional_info") is not None:
        lines.append(f"  INFO:\n {data['optional_info']}\n")
    lines += [f"  Layer structure: {structure}",
              f"  Activation function: {data.get('activation_func', None)}",
              f"  Weight initialization: {data.get('weight_initialization', 'Normal')}",
              f"  Layer norm: {data.get('is_layer_norm', False)}",
              f"  Dropout usage: {use_dropout}",
              f"  Activate last layer: {data.get('activate_output', True)}",
              f"  Dropout structure: {dropouts}"]
    return lines


def read_extra_info(path: str | Path) -> list[str]:
    """``extra_info`` of a hypernetwork file; HypernetworkError when it cannot be read."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - what weights-only unpickling refuses
        raise HypernetworkError(f"{path.name} cannot be read as weights only: {exc}") from exc
    if not isinstance(data, dict):
        raise HypernetworkError(f"{path.name} is not a hypernetwork (no dict of layers)")
    return extra_info(data)


class _Processor:
    """Cross-attention with the hypernetworks' keys and values contexts (scaled dot-product)."""

    def __init__(self, applied: list[tuple[Hypernetwork, float]]):
        self.applied = applied

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        context_k = context_v = context
        for network, strength in self.applied:
            pair = network.layers.get(context.shape[-1])
            if pair is not None:
                keys, values = (memory.move(m, context.device, torch.float32) for m in pair)
                context_k = keys(context_k.float(), strength).to(context.dtype)
                context_v = values(context_v.float(), strength).to(context.dtype)
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(context_k), attn.to_v(context_v)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _cross_attentions(unet) -> dict[str, nn.Module]:
    return {name: m for name, m in unet.named_modules() if name.endswith("attn2") and hasattr(m, "set_processor")}


def activate(model, applied: list[tuple[Hypernetwork, float]]) -> None:
    """Apply these (hypernetwork, strength) pairs from now on (an empty list: none)."""
    deactivate(model)
    applied = [(n, s) for n, s in applied if s != 0]
    if not applied:
        return
    attentions = _cross_attentions(model.unet)
    widths = {m.to_k.in_features for m in attentions.values()}
    for network, _strength in applied:
        if not widths & set(network.layers):
            raise HypernetworkError(f"hypernetwork '{network.name}' has layers for context widths "
                                    f"{sorted(network.layers)}, this model's are {sorted(widths)} "
                                    "(made for another model type?)")
    model.extra["hypernetworks"] = {name: m.processor for name, m in attentions.items()}
    processor = _Processor(applied)
    for module in attentions.values():
        module.set_processor(processor)


def deactivate(model) -> None:
    saved = model.extra.pop("hypernetworks", None)
    if not saved:
        return
    for name, module in _cross_attentions(model.unet).items():
        if name in saved:
            module.set_processor(saved[name])


def mentioned(prompt: str) -> list[tuple[str, float]]:
    """The ``<hypernet:name:strength>`` tags of a prompt (strength 1 when not given), as written."""
    _text, found = extra_networks.parse_prompt(prompt)
    out = []
    for params in found.get("hypernet", []):
        if not params.positional or not params.positional[0]:
            raise HypernetworkError("a <hypernet:...> tag needs a name")
        try:
            strength = float(params.positional[1]) if len(params.positional) > 1 else 1.0
        except ValueError:
            raise HypernetworkError(f"<hypernet:{params.positional[0]}:...>: '{params.positional[1]}' is not a number") \
                from None
        out.append((params.positional[0], strength))
    return out
