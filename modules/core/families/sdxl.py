"""SDXL base: CLIP-L and OpenCLIP-bigG read at their penultimate layers and concatenated, the pooled
bigG output and six size/crop numbers as extra conditioning, 1024-pixel native size."""

from __future__ import annotations

import torch

from ..checkpoint_shapes import Shapes, TextEncoderSpec, hf_clip_config, openclip_config
from ..conditioning_options import ConditioningOptions
from .base import ModelFamily, has_prefix, has_unet

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."
PREVIEW_FACTORS = ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163),
                   (-0.3730, -0.2499, -0.2088))


class SDXL(ModelFamily):
    name = "sdxl"
    label = "SDXL"
    native_side = 1024
    vae_scaling = 0.13025
    schedule_knots = "sdxl"
    preview_factors = PREVIEW_FACTORS
    embedding_keys = ("clip_l", "clip_g")
    a1111_flags = {"is_sdxl": True, "is_sd2": False, "is_sd1": False, "is_ssd": False}

    def claims(self, shapes: Shapes) -> bool:
        return has_unet(shapes) and has_prefix(shapes, CLIP_L_PREFIX) and has_prefix(shapes, CLIP_G_PREFIX)

    def text_encoders(self, shapes: Shapes) -> tuple[TextEncoderSpec, ...]:
        return (
            TextEncoderSpec(CLIP_L_PREFIX, "hf", hf_clip_config(shapes, CLIP_L_PREFIX), False, "<|endoftext|>"),
            TextEncoderSpec(CLIP_G_PREFIX, "openclip", openclip_config(shapes, CLIP_G_PREFIX), True, "!"),
        )

    def context(self, output, encoder, clip_skip: int):
        return output.hidden_states[-2]

    def context_for(self, output, encoder, clip_skip: int, options: ConditioningOptions):
        # A1111's sdxl_clip_l_skip ("Clip skip SDXL"): CLIP-L (the encoder without a projection) reads the
        # layer Clip skip names, counted from the last (1: the last layer's output, before the final norm)
        if options.sdxl_clip_l_skip and getattr(output, "text_embeds", None) is None:
            return output.hidden_states[-min(max(1, clip_skip), len(output.hidden_states) - 1)]
        return self.context(output, encoder, clip_skip)

    def time_ids(self, width: int, height: int, negative: bool, options: ConditioningOptions) -> list[float]:
        # original size, crop top/left, target size (A1111: the job's size, its sdxl_crop_* options)
        return [height, width, options.crop_top, options.crop_left, height, width]

    def extra_conditioning(self, pooled, rows, width, height, *, negative, options):
        ids = torch.tensor(self.time_ids(width, height, negative, options), dtype=torch.float32)
        return {"text_embeds": pooled, "time_ids": ids.to(pooled.device).repeat(rows, 1)}

    def added_cond(self, cond: dict, dtype: torch.dtype) -> dict:
        return {"text_embeds": cond["text_embeds"].to(dtype), "time_ids": cond["time_ids"].to(dtype)}
