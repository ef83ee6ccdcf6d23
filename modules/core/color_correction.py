"""img2img colour correction (A1111's option ``img2img_color_correction``).

Repeated img2img passes drift in colour. The correction matches the histogram of every CIELAB
channel of the result to the init image's, then keeps the colour of that match but the luminosity
of the result (a "Luminosity" blend), so detail and shading stay as generated.

``target = color_target(init)`` before sampling, ``correct(target, result)`` after decoding.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

__all__ = ["color_target", "correct", "match_histogram", "luminosity_blend"]

_LUMA = np.array([0.3, 0.59, 0.11], dtype=np.float64)  # the blend-mode luminosity weights


def color_target(image: Image.Image) -> np.ndarray:
    """The reference the results are matched to: the image in 8-bit CIELAB, (H, W, 3)."""
    return cv2.cvtColor(np.asarray(image.convert("RGB"), dtype=np.uint8), cv2.COLOR_RGB2LAB)


def match_histogram(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Map the uint8 values of ``source`` so their cumulative distribution follows ``template``'s
    (classic CDF matching, one channel). Returns float64 values of ``source``'s shape."""
    source = np.asarray(source, dtype=np.uint8)
    template = np.asarray(template, dtype=np.uint8)
    source_cdf = np.cumsum(np.bincount(source.ravel(), minlength=256)) / source.size
    template_counts = np.bincount(template.ravel(), minlength=256)
    present = np.nonzero(template_counts)[0]
    template_cdf = np.cumsum(template_counts[present]) / template.size
    lookup = np.interp(source_cdf, template_cdf, present.astype(np.float64))
    return lookup[source]


def _lum(rgb: np.ndarray) -> np.ndarray:
    return (rgb @ _LUMA)[..., None]


def luminosity_blend(colour: np.ndarray, luminosity: np.ndarray) -> np.ndarray:
    """The "Luminosity" blend mode on float RGB in [0, 1]: hue and saturation of ``colour``, the
    luminosity of ``luminosity``, with out-of-gamut results pulled back towards grey."""
    result = colour + (_lum(luminosity) - _lum(colour))
    lum = _lum(result)
    low = result.min(axis=-1, keepdims=True)
    high = result.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = np.where(low < 0.0, lum + (result - lum) * lum / (lum - low), result)
        result = np.where(high > 1.0, lum + (result - lum) * (1.0 - lum) / (high - lum), result)
    return np.clip(np.nan_to_num(result), 0.0, 1.0)


def correct(target: np.ndarray, image: Image.Image) -> Image.Image:
    """``image`` with the colour statistics of ``target`` (from :func:`color_target`)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    matched = np.stack([match_histogram(lab[..., c], target[..., c]) for c in range(3)], axis=-1)
    matched = np.clip(matched.round(), 0, 255).astype(np.uint8)
    recoloured = cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype(np.float64) / 255.0
    blended = luminosity_blend(recoloured, rgb.astype(np.float64) / 255.0)
    return Image.fromarray((blended * 255.0).round().astype(np.uint8), "RGB")
