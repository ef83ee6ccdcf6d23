"""A built ControlNet and the reading of its hint encoder's shapes: what the ControlNet loaders
(``controlnet_model`` for LDM and diffusers files, ``control_lora`` for Control-LoRAs) share."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from diffusers import ControlNetModel

from .checkpoint_shapes import Shapes, UnsupportedCheckpoint, indices


@dataclass
class ControlNetFile:
    """A built ControlNet: the module (on the CPU, in the dtype asked for) and what it fits."""

    path: Path
    family: str  # "sd1", "sd2", "sdxl": the checkpoints it goes with
    layout: str  # "ldm", "diffusers", or "control-lora" (built on a checkpoint's UNet)
    config: dict
    module: ControlNetModel

    @property
    def cross_attention_dim(self) -> int:
        return self.config["cross_attention_dim"]


def read_hint_encoder(shapes: Shapes, prefix: str) -> tuple[int, tuple[int, ...]]:
    """(picture channels, the hint encoder's widths) from ``input_hint_block``: convolutions at
    0, 2, ... 14, the widths changing at the strided ones (diffusers' conditioning_embedding)."""
    convs = indices(shapes, re.escape(prefix) + r"input_hint_block\.(\d+)\.weight")
    if len(convs) < 2:
        raise UnsupportedCheckpoint("ControlNet hint encoder (input_hint_block) is incomplete")
    widths = [shapes[f"{prefix}input_hint_block.{i}.weight"][0] for i in convs[:-1]]
    channels = tuple(widths[0::2])  # conv_in's width, then each strided pair's output
    return shapes[f"{prefix}input_hint_block.{convs[0]}.weight"][1], channels
