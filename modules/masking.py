"""A1111's `modules.masking` over Easel's masks (modules.core.masks): the "Only masked" crop region,
its growth to the job's aspect ratio, and the "fill" masked content."""

from __future__ import annotations

import numpy as np
from PIL import Image

from modules.core import masks as _masks


def _as_image(mask) -> Image.Image:
    return mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask))


def get_crop_region_v2(mask, pad=0):
    """(x1, y1, x2, y2) around the mask's non-zero pixels grown by `pad` and clamped to the picture,
    None for an empty mask (A1111 1.10)."""
    return _masks.crop_region(_as_image(mask), int(pad))


def get_crop_region(mask, pad=0):
    """As get_crop_region_v2, but an empty mask gives A1111's inverted box over the whole picture."""
    image = _as_image(mask)
    box = _masks.crop_region(image, int(pad))
    if box is not None:
        return box
    width, height = image.size
    return max(width - pad, 0), max(height - pad, 0), min(pad, width), min(pad, height)


def expand_crop_region(crop_region, processing_width, processing_height, image_width, image_height):
    """Grow the region to the processing size's aspect ratio, inside the picture."""
    return _masks.expand_to_aspect(tuple(crop_region), processing_width, processing_height, image_width, image_height)


def fill(image, mask):
    """The masked (white) area filled with colours spread from around it (RGB, as A1111)."""
    return _masks.fill(image, mask).convert("RGB")
