"""SDXL refiner: OpenCLIP-bigG alone (as ``conditioner.embedders.0``), read at its penultimate layer,
and an aesthetic score in place of SDXL base's target size: five numbers (original size, crop
top/left, score), the score high for prompts and low for negative prompts (A1111's
``sdxl_refiner_high/low_aesthetic_score``)."""

from __future__ import annotations

from ..checkpoint_shapes import Shapes, TextEncoderSpec, openclip_config
from ..conditioning_options import ConditioningOptions
from .base import has_prefix, has_unet
from .sdxl import SDXL

CLIP_G_PREFIX = "conditioner.embedders.0.model."


class SDXLRefiner(SDXL):
    name = "sdxl_refiner"
    label = "SDXL refiner"
    embedding_keys = ("clip_g",)
    # A1111 loads a refiner as an SDXL model (shared.sd_model.is_sdxl is true for it)
    a1111_flags = {"is_sdxl": True, "is_sd2": False, "is_sd1": False, "is_ssd": False}

    def claims(self, shapes: Shapes) -> bool:
        return has_unet(shapes) and has_prefix(shapes, CLIP_G_PREFIX)

    def text_encoders(self, shapes: Shapes) -> tuple[TextEncoderSpec, ...]:
        return (TextEncoderSpec(CLIP_G_PREFIX, "openclip", openclip_config(shapes, CLIP_G_PREFIX), True, "!"),)

    def time_ids(self, width: int, height: int, negative: bool, options: ConditioningOptions) -> list[float]:
        score = options.low_aesthetic_score if negative else options.high_aesthetic_score
        return [height, width, options.crop_top, options.crop_left, score]
