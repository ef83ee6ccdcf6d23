"""The Extras upscale (A1111's "Upscale" postprocessing script), for one picture at a time.

A1111's semantics, from ``scripts/postprocessing_upscale.py`` and ``modules/upscaler.py``:

- ``upscaler_1`` "None" means no upscale at all (the picture comes back unchanged, as RGB);
- mode 0 ("Scale by") multiplies both sides by ``upscale_by`` and rounds each down to a
  multiple of 8; mode 1 ("Scale to") scales by ``max(width / w, height / h)`` the same way and,
  with ``crop``, cuts the centre ``width`` x ``height`` out of it;
- with ``upscaler_2`` other than "None" and a visibility above 0, the original is upscaled a
  second time with it and blended over the first result with that visibility;
- the infotext records ``Postprocess upscale by`` / ``Postprocess upscale to``,
  ``Postprocess crop to``, ``Postprocess upscaler`` and ``Postprocess upscaler 2``.

One deliberate difference: A1111 pastes the rounded-down upscale onto a black canvas of the
target size, which leaves up to 7 black pixels at the edges; here the crop is taken from an
upscale that covers the target, so every pixel is picture.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

from PIL import Image

from . import upscaling
from .infotext import quote
from .types import RequestError


@dataclass(frozen=True)
class UpscaleSettings:
    """A1111's Extras fields (API names in comments)."""

    mode: int = 0  # resize_mode: 0 scale by, 1 scale to
    upscale_by: float = 2.0  # upscaling_resize
    width: int = 512  # upscaling_resize_w
    height: int = 512  # upscaling_resize_h
    crop: bool = True  # upscaling_crop
    upscaler_1: str = "None"  # upscaler_1
    upscaler_2: str = "None"  # upscaler_2
    upscaler_2_visibility: float = 0.0  # extras_upscaler_2_visibility
    # face restoration after the upscale (A1111's GFPGAN and CodeFormer postprocessing scripts)
    gfpgan_visibility: float = 0.0  # gfpgan_visibility
    codeformer_visibility: float = 0.0  # codeformer_visibility
    codeformer_weight: float = 0.0  # codeformer_weight (A1111's API default; its UI's is 0)

    def check(self, max_pixels: int | None = None, source: tuple[int, int] | None = None) -> None:
        """RequestError naming the API field for anything A1111 would trip over (or we cannot do)."""
        if self.mode not in (0, 1):
            raise RequestError("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {self.mode}")
        for field, name in (("upscaler_1", self.upscaler_1), ("upscaler_2", self.upscaler_2)):
            if name not in image_upscaler_names():
                upscaling.refresh()  # a model file added since the last look
            if name not in image_upscaler_names():
                raise RequestError(field, f"unknown upscaler '{name}'; known: {', '.join(image_upscaler_names())}")
        for field in ("extras_upscaler_2_visibility", "gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
            value = getattr(self, field.removeprefix("extras_"))
            if not 0.0 <= value <= 1.0:
                raise RequestError(field, f"must be between 0 and 1, got {value}")
        if self.mode == 0 and not self.upscale_by > 0:
            raise RequestError("upscaling_resize", f"must be above 0, got {self.upscale_by}")
        if self.mode == 1 and (self.width < 1 or self.height < 1):
            field = "upscaling_resize_w" if self.width < 1 else "upscaling_resize_h"
            raise RequestError(field, f"must be at least 1, got {min(self.width, self.height)}")
        if max_pixels and source and self.upscaler_1 != "None":
            scale = _scale(source, self)
            if not math.isfinite(scale) or source[0] * scale * source[1] * scale > 4 * max_pixels:
                field = "upscaling_resize" if self.mode == 0 else "upscaling_resize_w"
                raise RequestError(field, f"scaling {source[0]}x{source[1]} by {scale:g} goes far over the limit of {max_pixels} pixels")
            w, h = output_size(source, self)
            if w * h > max_pixels:
                field = "upscaling_resize" if self.mode == 0 else "upscaling_resize_w"
                raise RequestError(field, f"the result would be {w}x{h}, over the limit of {max_pixels} pixels")
            if w < 1 or h < 1:
                raise RequestError("upscaling_resize", f"the result would be {w}x{h}: nothing left")


def image_upscaler_names() -> list[str]:
    return [u.name for u in upscaling.image_upscalers()]


def _scale(size: tuple[int, int], s: UpscaleSettings) -> float:
    w, h = size
    return max(s.width / w, s.height / h) if s.mode == 1 else s.upscale_by


def _rounded(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """A1111's Upscaler.upscale target: each side times the scale, down to a multiple of 8."""
    return int(size[0] * scale // 8 * 8), int(size[1] * scale // 8 * 8)


def output_size(size: tuple[int, int], s: UpscaleSettings) -> tuple[int, int]:
    if s.upscaler_1 == "None":
        return size
    if s.mode == 1 and s.crop:
        return s.width, s.height
    return _rounded(size, _scale(size, s))


def _upscale_once(image: Image.Image, name: str, s: UpscaleSettings, info: dict) -> Image.Image:
    scale = _scale(image.size, s)
    if s.mode == 1:
        info["Postprocess upscale to"] = f"{s.width}x{s.height}"
    else:
        info["Postprocess upscale by"] = s.upscale_by
    if s.mode == 1 and s.crop:
        cover = (max(s.width, math.ceil(image.width * scale)), max(s.height, math.ceil(image.height * scale)))
        big = upscaling.upscale_image(image, cover[0], cover[1], name)
        left, top = (big.width - s.width) // 2, (big.height - s.height) // 2
        info["Postprocess crop to"] = f"{s.width}x{s.height}"
        return big.crop((left, top, left + s.width, top + s.height))
    width, height = _rounded(image.size, scale)
    return upscaling.upscale_image(image, width, height, name)


def upscale(image: Image.Image, s: UpscaleSettings) -> tuple[Image.Image, dict]:
    """(upscaled RGB picture, A1111's postprocessing info for it)."""
    image = image.convert("RGB")
    info: dict = {}
    if s.upscaler_1 == "None":
        return image, info
    result = _upscale_once(image, s.upscaler_1, s, info)
    info["Postprocess upscaler"] = s.upscaler_1
    if s.upscaler_2 != "None" and s.upscaler_2_visibility > 0:
        second = _upscale_once(image, s.upscaler_2, s, info)
        result = Image.blend(result, second.convert(result.mode), s.upscaler_2_visibility)
        info["Postprocess upscaler 2"] = s.upscaler_2
    return result, info


def infotext(info: dict) -> str:
    """A1111's postprocessing infotext: `key: value` pairs, a bare key when value == key."""
    return ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in info.items() if v is not None)


def plaintext_to_html(text: str) -> str:
    """A1111's ui_common.plaintext_to_html (the `html_info` of the Extras API)."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"
