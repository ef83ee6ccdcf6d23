"""Settings some model families read while encoding prompts (A1111 option names)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConditioningOptions:
    """Settings some families read while encoding (A1111 option names)."""

    crop_top: int = 0  # sdxl_crop_top
    crop_left: int = 0  # sdxl_crop_left
    high_aesthetic_score: float = 6.0  # sdxl_refiner_high_aesthetic_score (prompts)
    low_aesthetic_score: float = 2.5  # sdxl_refiner_low_aesthetic_score (negative prompts)
    distilled_guidance: float = 3.5  # Flux dev: the job's "Distilled CFG Scale" (Forge's name)
    # comma_padding_backtrack: a chunk's tail after its last comma, if at most this many tokens, moves to
    # the next chunk (0: never)
    comma_padding_backtrack: int = 20
    sdxl_clip_l_skip: bool = False  # sdxl_clip_l_skip: SDXL's CLIP-L follows Clip skip
