"""Control-LoRA files (Stability AI's ``control-lora-canny-rank128.safetensors``, ``-rank256``, the
depth / recolor / sketch ones) -> a diffusers ControlNetModel built on the job's UNet, offline.

A Control-LoRA is a ControlNet in the LDM layout without prefix (``input_blocks`` / ``middle_block``,
``input_hint_block``, ``zero_convs``, ``middle_block_out``) whose layers copied from the base UNet
are stored as low-rank deltas only: for a layer ``X``, ``X.up`` (out, rank[, 1, 1]) and ``X.down``
(rank, in[, kh, kw]). The ControlNet's weight is the base UNet's ``X.weight`` + up @ down (both
flattened past their first axis, the product reshaped to the weight's shape); every other tensor of
the file (the hint encoder, the zero convolutions, ``middle_block_out``, the label embedding, norms,
biases) replaces the copy's; what the file lacks is the base UNet's. The ``lora_controlnet`` tensor
marks such files. This is what ComfyUI's ``ControlLora`` and sd-webui-controlnet's
``controlnet_lora`` do; as there, the file alone is not a ControlNet: it needs the job's checkpoint,
of the family it was trained on (SDXL for Stability's files).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ControlNetModel

from . import ldm_parts
from .checkpoint_file import CheckpointFile
from .controlnet_file import ControlNetFile, read_hint_encoder
from .checkpoint_shapes import UnsupportedCheckpoint
from .ldm_export import unet_to_ldm

MARKER = "lora_controlnet"
REQUIRED = ("input_hint_block.0.weight", "zero_convs.0.0.weight", "middle_block_out.0.weight")
CONTEXT_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}  # cross-attention width -> family
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


@dataclass
class ControlLoraFile:
    """A Control-LoRA as read: its tensors (LDM ControlNet names, the marker left out) and the family
    of the checkpoints it goes with (None where the file does not tell)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    family: str | None

    @property
    def rank(self) -> int:
        return next(v.shape[0] for k, v in self.tensors.items() if k.endswith(".down"))


def looks_like_control_lora(shapes) -> bool:
    return MARKER in shapes


def _family(tensors: dict[str, torch.Tensor]) -> str | None:
    """SDXL when the file has the added (label) embedding, else from the cross-attention width."""
    if any(k.startswith("label_emb.") for k in tensors):
        return "sdxl"
    for key, value in tensors.items():
        if key.endswith("attn2.to_k.down") or key.endswith("attn2.to_k.weight"):
            return CONTEXT_FAMILIES.get(value.shape[-1])
    return None


def read(ckpt: CheckpointFile, dtype: torch.dtype = torch.float32) -> ControlLoraFile:
    """The tensors of a Control-LoRA file (already opened), checked for what a build needs."""
    tensors = {k: ckpt.get(k, dtype) for k in ckpt.shapes if k != MARKER}
    missing = [k for k in REQUIRED if k not in tensors]
    if missing:
        raise UnsupportedCheckpoint(f"Control-LoRA is incomplete: no {', '.join(missing)}")
    ups = {k[: -len(".up")] for k in tensors if k.endswith(".up")}
    downs = {k[: -len(".down")] for k in tensors if k.endswith(".down")}
    if not ups or ups != downs:
        odd = sorted(ups ^ downs)[:3]
        raise UnsupportedCheckpoint("Control-LoRA has no low-rank layers (.up / .down)" if not ups else
                                    f"Control-LoRA layers without their .up / .down pair: {', '.join(odd)}")
    for name in ups:
        up, down = tensors[name + ".up"], tensors[name + ".down"]
        if up.shape[1] != down.shape[0]:
            raise UnsupportedCheckpoint(f"Control-LoRA layer {name}: up {tuple(up.shape)} and down "
                                        f"{tuple(down.shape)} have different ranks")
    return ControlLoraFile(Path(ckpt.path), tensors, _family(tensors))


def _controlnet_name(key: str, ldm_to_unet: dict[str, str], hint_names: dict[int, str]) -> str | None:
    """The diffusers ControlNet name of a file key (LDM name): the UNet's name for the copied layers
    (the ControlNet names them alike), the ControlNet's own for its hint encoder and outputs."""
    if key in ldm_to_unet:
        return ldm_to_unet[key]
    hint = re.fullmatch(r"input_hint_block\.(\d+)\.(weight|bias)", key)
    if hint and int(hint.group(1)) in hint_names:
        return f"controlnet_cond_embedding.{hint_names[int(hint.group(1))]}.{hint.group(2)}"
    zero = re.fullmatch(r"zero_convs\.(\d+)\.0\.(weight|bias)", key)
    if zero:
        return f"controlnet_down_blocks.{zero.group(1)}.{zero.group(2)}"
    mid = re.fullmatch(r"middle_block_out\.0\.(weight|bias)", key)
    if mid:
        return f"controlnet_mid_block.{mid.group(1)}"
    return None


def _hint_names(tensors: dict[str, torch.Tensor]) -> dict[int, str]:
    """``input_hint_block`` conv index -> diffusers' name: conv_in, blocks.0.. , conv_out (the last)."""
    convs = sorted({int(m.group(1)) for k in tensors if (m := re.fullmatch(r"input_hint_block\.(\d+)\.weight", k))})
    names = {convs[0]: "conv_in", convs[-1]: "conv_out"}
    names.update({index: f"blocks.{i}" for i, index in enumerate(convs[1:-1])})
    return names


def build(lora: ControlLoraFile, model, dtype: torch.dtype = torch.float32) -> ControlNetFile:
    """The ControlNet of ``lora`` over ``model``'s UNet (a LoadedModel): the UNet's encoder half and
    middle block copied, the low-rank deltas added, the file's other tensors in place. On the CPU, in
    ``dtype``. UnsupportedCheckpoint when the checkpoint is not of the file's family or its UNet does
    not have the file's layers."""
    family = model.spec.family
    if lora.family is not None and lora.family != family:
        raise UnsupportedCheckpoint(
            f"a Control-LoRA for {FAMILY_NAMES.get(lora.family, lora.family)} models (it is built on the "
            f"checkpoint's UNet), the checkpoint is {model.spec.label}")
    unet = model.unet
    unet_state = unet.state_dict()
    try:
        ldm_to_unet = unet_to_ldm({k: k for k in unet_state})
    except ValueError:
        ldm_to_unet = {}
    if not ldm_to_unet:
        raise UnsupportedCheckpoint(f"a Control-LoRA needs an SD1.x, SD2.x or SDXL UNet, "
                                    f"the checkpoint is {model.spec.label}")
    hint_channels, embedding = read_hint_encoder({k: tuple(v.shape) for k, v in lora.tensors.items()}, "")
    with torch.device("meta"):
        module = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding,
                                           load_weights_from_unet=False, conditioning_channels=hint_channels)
    wanted = module.state_dict()
    state = {k: unet_state[k].detach().to("cpu", dtype, copy=True) for k in wanted if k in unet_state}
    hint_names = _hint_names(lora.tensors)
    unfit = []
    for key, tensor in lora.tensors.items():
        layer, _, part = key.rpartition(".")
        if part == "down":
            continue
        name = _controlnet_name(layer + ".weight" if part == "up" else key, ldm_to_unet, hint_names)
        if name is None or name not in wanted:
            unfit.append(key)
            continue
        if part == "up":
            if name not in state:
                unfit.append(key)
                continue
            down = lora.tensors[layer + ".down"]
            delta = tensor.flatten(1).float() @ down.flatten(1).float()
            if delta.numel() != state[name].numel():
                unfit.append(key)
                continue
            state[name] = (state[name].float() + delta.reshape(state[name].shape)).to(dtype)
        elif tuple(tensor.shape) != tuple(wanted[name].shape):
            unfit.append(key)
        else:
            state[name] = tensor.to(dtype)
    if unfit:
        raise UnsupportedCheckpoint(f"the Control-LoRA does not fit the UNet of the checkpoint "
                                    f"({model.spec.label}): {len(unfit)} tensors have no matching layer "
                                    f"(e.g. {', '.join(sorted(unfit)[:3])})")
    ldm_parts.assign(module, state, "Control-LoRA")
    config = dict(module.config)
    return ControlNetFile(lora.path, family, "control-lora", config,
                                           module.eval().requires_grad_(False))
