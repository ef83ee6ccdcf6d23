"""Stable Diffusion 2.x: one OpenCLIP-H text encoder read at its penultimate layer, 64-channel heads,
epsilon or v prediction (768-pixel v models)."""

from __future__ import annotations

from ..checkpoint_shapes import Shapes, TextEncoderSpec, openclip_config
from .base import ModelFamily, has_prefix, has_unet

TEXT_PREFIX = "cond_stage_model.model."


class SD2(ModelFamily):
    name = "sd2"
    label = "SD2.x"
    a1111_flags = {"is_sdxl": False, "is_sd2": True, "is_sd1": False, "is_ssd": False}
    can_probe_v_prediction = True

    def claims(self, shapes: Shapes) -> bool:
        return has_unet(shapes) and has_prefix(shapes, TEXT_PREFIX)

    def text_encoders(self, shapes: Shapes) -> tuple[TextEncoderSpec, ...]:
        config = openclip_config(shapes, TEXT_PREFIX)
        # SD2 conditions on the penultimate layer followed by the final norm; the diffusers
        # convention (which we follow) is to build the encoder without its last layer.
        config["num_hidden_layers"] -= 1
        return (TextEncoderSpec(TEXT_PREFIX, "openclip", config, False, "!", drop_last_layer=True),)

    def native_size(self, prediction_type: str | None) -> tuple[int, int]:
        side = 768 if prediction_type == "v_prediction" else 512
        return side, side
