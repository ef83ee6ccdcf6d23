"""Outpainting: a larger canvas and a mask, ready to be inpainted (A1111's "Poor man's outpainting").

:func:`extend_canvas` grows the picture by ``pixels`` on the chosen sides (``left``, ``right``,
``up``, ``down``); the canvas is rounded up to a multiple of 8 (A1111 rounds to 64 because it then
works tile by tile; Easel inpaints the whole canvas at once), the extra going to the extended
sides in proportion. The mask is white over the new area and reaches ``2 * mask_blur`` pixels into
the old picture, the band where old and new are blended; the inpainting request then blurs it by
``4 * mask_blur`` along the extended axes, as A1111 does. :func:`outpaint_request` wraps it all in
an :class:`Img2ImgRequest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import masks
from .types import Img2ImgRequest, RequestError

__all__ = ["DIRECTIONS", "OutpaintCanvas", "extend_canvas", "outpaint_request"]

DIRECTIONS = ("left", "right", "up", "down")


@dataclass
class OutpaintCanvas:
    image: Image.Image  # RGB canvas; the original at `offset`, the new area filled (see extend_canvas)
    mask: Image.Image  # L: white = to be painted (new area + blend band)
    offset: tuple[int, int]  # (x, y) of the original's top-left corner on the canvas
    added: dict  # pixels added per side, after rounding the canvas to a multiple of 8
    mask_blur_x: int  # the request's blur: 4 * mask_blur along extended axes, else 0
    mask_blur_y: int


def _split(extra: int, first: int, second: int) -> tuple[int, int]:
    """Share ``extra`` pixels between two opposite sides that asked for ``first`` and ``second``."""
    if first and second:
        a = first * extra // (first + second)
        return a, extra - a
    return (extra, 0) if first else (0, extra if second else 0)


def extend_canvas(image: Image.Image, pixels: int, directions, mask_blur: int = 4,
                  inpainting_fill: int = 0, multiple: int = 8) -> OutpaintCanvas:
    """The grown canvas and its mask. ``inpainting_fill`` 0 ("fill") pre-fills the new area with
    colours spread from the picture's edges; otherwise it stays black, as in A1111 (the inpainting
    request then applies "latent noise"/"latent nothing" itself)."""
    directions = [directions] if isinstance(directions, str) else list(directions)
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise RequestError("direction", f"choose one or more of {', '.join(DIRECTIONS)}; got {directions}")
    if not isinstance(pixels, int) or isinstance(pixels, bool) or not 8 <= pixels <= 256:
        raise RequestError("pixels", f"must be an integer from 8 to 256, got {pixels!r}")
    if not isinstance(mask_blur, int) or isinstance(mask_blur, bool) or not 0 <= mask_blur <= 64:
        raise RequestError("mask_blur", f"must be an integer from 0 to 64, got {mask_blur!r}")
    image = image.convert("RGB")
    wanted = {side: pixels if side in directions else 0 for side in DIRECTIONS}
    width = math.ceil((image.width + wanted["left"] + wanted["right"]) / multiple) * multiple
    height = math.ceil((image.height + wanted["up"] + wanted["down"]) / multiple) * multiple
    left, right = _split(width - image.width, wanted["left"], wanted["right"])
    up, down = _split(height - image.height, wanted["up"], wanted["down"])
    blur_x = mask_blur if left or right else 0
    blur_y = mask_blur if up or down else 0

    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, (left, up))
    new_area = np.full((height, width), 255, dtype=np.uint8)
    new_area[up:up + image.height, left:left + image.width] = 0
    mask = np.full((height, width), 255, dtype=np.uint8)
    # keep (black) the old picture minus a band of 2 * mask_blur along each extended edge
    x1 = left + (2 * blur_x if left else 0)
    y1 = up + (2 * blur_y if up else 0)
    x2 = left + image.width - (2 * blur_x if right else 0)
    y2 = up + image.height - (2 * blur_y if down else 0)
    mask[y1:max(y2, y1), x1:max(x2, x1)] = 0
    if inpainting_fill == 0:
        canvas = masks.fill(canvas, Image.fromarray(new_area, "L"))
    return OutpaintCanvas(canvas, Image.fromarray(mask, "L"), (left, up),
                          {"left": left, "right": right, "up": up, "down": down}, 4 * blur_x, 4 * blur_y)


def outpaint_request(image: Image.Image, pixels: int = 128, directions=DIRECTIONS, mask_blur: int = 4,
                     inpainting_fill: int = 0, **fields) -> Img2ImgRequest:
    """An inpainting request for the grown canvas; ``fields`` are any other request fields
    (prompt, seed, steps, denoising_strength, …). The canvas is processed at its own size."""
    canvas = extend_canvas(image, pixels, directions, mask_blur, inpainting_fill)
    for owned in ("init_images", "mask", "width", "height", "mask_blur_x", "mask_blur_y", "inpaint_full_res",
                  "resize_mode"):
        if owned in fields:
            raise RequestError(owned, "is set by outpainting; leave it out")
    return Img2ImgRequest(init_images=[canvas.image], mask=canvas.mask, width=canvas.image.width,
                          height=canvas.image.height, mask_blur_x=canvas.mask_blur_x, mask_blur_y=canvas.mask_blur_y,
                          inpainting_fill=inpainting_fill, inpaint_full_res=False, resize_mode=0, **fields)
