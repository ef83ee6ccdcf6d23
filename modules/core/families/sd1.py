"""Stable Diffusion 1.x: one OpenAI CLIP-L text encoder, 8 attention heads everywhere, CLIP skip."""

from __future__ import annotations

from ..checkpoint_shapes import Shapes, TextEncoderSpec, UnsupportedCheckpoint, hf_clip_config
from .base import ModelFamily, core_text_model, has_prefix, has_unet

TEXT_PREFIX = "cond_stage_model.transformer."


class SD1(ModelFamily):
    name = "sd1"
    label = "SD1.x"
    a1111_flags = {"is_sdxl": False, "is_sd2": False, "is_sd1": True, "is_ssd": False}

    def claims(self, shapes: Shapes) -> bool:
        return has_unet(shapes) and has_prefix(shapes, TEXT_PREFIX)

    def text_encoders(self, shapes: Shapes) -> tuple[TextEncoderSpec, ...]:
        if not has_prefix(shapes, TEXT_PREFIX + "text_model."):
            raise UnsupportedCheckpoint("SD1 text encoder keys lack the 'text_model.' level")
        return (TextEncoderSpec(TEXT_PREFIX, "hf", hf_clip_config(shapes, TEXT_PREFIX), False, "<|endoftext|>"),)

    def attention_heads(self, block_out_channels: list[int]) -> int:
        return 8

    def context(self, output, encoder, clip_skip: int):
        if clip_skip > 1:  # A1111's CLIP skip: an earlier layer's state, then the final norm
            h = output.hidden_states[-min(clip_skip, len(output.hidden_states) - 1)]
            return core_text_model(encoder).final_layer_norm(h)
        return output.last_hidden_state
