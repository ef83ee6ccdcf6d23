"""Inpainting masks and the image geometry around them, with A1111's semantics.

A mask is an 8-bit ``L`` image: white (255) marks what is to be repainted. The steps, in the order
A1111's img2img applies them:

1. :func:`binary_mask`: any user mask to black/white. An RGBA mask whose alpha is not fully
   opaque is read from its alpha channel (brush strokes on a transparent layer); anything else
   from its greyscale. Values above 128 become 255, the rest 0.
2. :func:`invert` for "Inpaint not masked".
3. :func:`blur`: separable Gaussian, ``sigma_x`` horizontally then ``sigma_y`` vertically, with
   A1111's kernel size ``2 * int(2.5 * sigma + 0.5) + 1``.
4. "Only masked": :func:`crop_region` (bounding box of the mask plus padding) widened by
   :func:`expand_to_aspect` to the aspect ratio of the processing size.

:func:`fill` is "Masked content: fill": the masked area gets colours spread in from its
surroundings, so the sampler does not start from whatever was painted over.
:func:`resize_image` is A1111's ``resize_image`` for the four resize modes.

Pure PIL/numpy/OpenCV; no options are read here.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "RESIZE_MODES",
    "binary_mask",
    "invert",
    "blur",
    "blur_kernel_size",
    "is_empty",
    "crop_region",
    "expand_to_aspect",
    "fill",
    "resize_image",
]

# A1111's resize modes; 3 resizes the latents instead of the pixels (the pixel part is mode 0).
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")

_LANCZOS = Image.Resampling.LANCZOS


# --------------------------------------------------------------------------- mask values

def binary_mask(mask: Image.Image) -> Image.Image:
    """A user mask -> ``L`` with only 0 and 255 (see the module docstring for the rules)."""
    if mask.mode == "RGBA" and mask.getextrema()[3] != (255, 255):
        grey = mask.getchannel("A")
    elif mask.mode in ("LA", "La", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        rgba = mask.convert("RGBA")
        grey = rgba.getchannel("A") if rgba.getextrema()[3] != (255, 255) else rgba.convert("L")
    else:
        grey = _to_grey(mask)
    values = np.asarray(grey, dtype=np.uint8)
    return Image.fromarray(np.where(values > 128, 255, 0).astype(np.uint8), "L")


def _to_grey(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0) <= 1.0:
            top = 1.0
        return Image.fromarray(np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8), "L")
    return image.convert("L")


def invert(mask: Image.Image) -> Image.Image:
    return Image.fromarray(255 - np.asarray(mask.convert("L"), dtype=np.uint8), "L")


def blur_kernel_size(sigma: float) -> int:
    """A1111's Gaussian kernel width for a mask blur of ``sigma`` pixels."""
    return 2 * int(2.5 * sigma + 0.5) + 1


def blur(mask: Image.Image, sigma_x: float, sigma_y: float) -> Image.Image:
    """Gaussian blur, horizontal pass (``sigma_x``) then vertical (``sigma_y``); 0 skips a pass."""
    values = np.asarray(mask.convert("L"), dtype=np.uint8)
    if sigma_x > 0:
        values = cv2.GaussianBlur(values, (blur_kernel_size(sigma_x), 1), sigma_x)
    if sigma_y > 0:
        values = cv2.GaussianBlur(values, (1, blur_kernel_size(sigma_y)), sigma_y)
    return Image.fromarray(np.ascontiguousarray(values), "L")


def is_empty(mask: Image.Image) -> bool:
    return mask.convert("L").getbbox() is None


# --------------------------------------------------------------------------- "Only masked" region

def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x1, y1, x2, y2)`` (x2/y2 exclusive) of the mask's non-zero pixels, grown by
    ``padding`` on every side and clamped to the image; None for an empty mask."""
    box = mask.convert("L").getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def _grow(lo: int, hi: int, wanted: int, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) to ``wanted`` pixels, half on each side, shifted back inside [0, limit)."""
    extra = wanted - (hi - lo)
    lo -= extra // 2
    hi += extra - extra // 2
    if hi > limit:
        lo -= hi - limit
        hi = limit
    if lo < 0:
        hi -= lo
        lo = 0
    return lo, min(hi, limit)


def expand_to_aspect(region: tuple[int, int, int, int], width: int, height: int,
                     image_width: int, image_height: int) -> tuple[int, int, int, int]:
    """Grow the region along one axis until its aspect ratio is ``width / height`` (A1111's
    ``expand_crop_region``), keeping it inside the image; it is never shrunk."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, int((x2 - x1) * height / width), image_height)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * width / height), image_width)
    return x1, y1, x2, y2


# --------------------------------------------------------------------------- "Masked content: fill"

# (blur sigma in pixels, times the layer is laid on): wide washes first, then ever sharper ones, so
# each masked pixel ends up with the colour of its nearest surroundings.
_FILL_LAYERS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def _gaussian(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H, W, C) float array; large sigmas work on a shrunk copy (cheap)."""
    if sigma <= 0:
        return values
    height, width = values.shape[:2]
    shrink = max(1.0, sigma / 4.0)
    small_w, small_h = max(1, round(width / shrink)), max(1, round(height / shrink))
    if (small_w, small_h) == (width, height):
        return cv2.GaussianBlur(values, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    small = cv2.resize(values, (small_w, small_h), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / shrink, borderType=cv2.BORDER_CONSTANT)
    if small.ndim == 2:
        small = small[:, :, None]
    grown = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    return grown.reshape(values.shape)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Replace the masked area (white) with colours diffused from the unmasked area.

    Premultiplied layers of the known pixels, blurred from very wide to not at all, are laid over
    one another; unmasked pixels come out unchanged. A fully masked image comes back black."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    known = 1.0 - np.asarray(mask.convert("L").resize(image.size), dtype=np.float32) / 255.0
    layer = np.concatenate([rgb * known[:, :, None], known[:, :, None]], axis=2)  # premultiplied RGBA
    canvas = np.zeros_like(layer)
    for sigma, times in _FILL_LAYERS:
        blurred = _gaussian(layer, sigma)
        alpha = np.clip(blurred[:, :, 3:], 0.0, 1.0)
        for _ in range(times):
            canvas = blurred + canvas * (1.0 - alpha)
    colour = canvas[:, :, :3] / np.maximum(canvas[:, :, 3:], 1e-6)
    filled = (np.clip(colour, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    original = np.asarray(image.convert("RGB"))
    keep = known >= 1.0
    filled[keep] = original[keep]  # exact, not a float round trip
    return Image.fromarray(filled, "RGB")


# --------------------------------------------------------------------------- resize modes

def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
    return image if image.size == (width, height) else image.resize((width, height), resample=_LANCZOS)


def resize_image(mode: int, image: Image.Image, width: int, height: int,
                 resize: Callable[[Image.Image, int, int], Image.Image] | None = None) -> Image.Image:
    """A1111's ``resize_image``: 0 (and 3) stretch to ``width`` x ``height``; 1 scales to cover and
    crops the centre; 2 scales to fit, centres, and fills the two empty bands by stretching the
    picture's outermost row/column of pixels. `resize(image, w, h)`: how the picture is scaled
    (default Lanczos; img2img: the upscaler_for_img2img option's upscaler)."""
    _resize_to = resize or _resize
    if mode in (0, 3):
        return _resize_to(image, width, height)
    if mode not in (1, 2):
        raise ValueError(f"resize mode must be 0..3, got {mode}")
    target_ratio = width / height
    source_ratio = image.width / image.height
    # mode 1 covers the target (the picture's overhang is cropped), mode 2 fits inside it
    full_width = target_ratio > source_ratio if mode == 1 else target_ratio < source_ratio
    if full_width:
        fit_w, fit_h = width, image.height * width // image.width
    else:
        fit_w, fit_h = image.width * height // image.height, height
    fit_w, fit_h = max(fit_w, 1), max(fit_h, 1)
    resized = _resize_to(image, fit_w, fit_h)
    canvas = Image.new(image.mode if image.mode in ("RGB", "L", "RGBA") else "RGB", (width, height))
    left, top = width // 2 - fit_w // 2, height // 2 - fit_h // 2
    canvas.paste(resized, (left, top))
    if mode == 2:
        if target_ratio < source_ratio and top > 0:
            canvas.paste(resized.resize((width, top), box=(0, 0, width, 0)), (0, 0))
            bottom = height - (top + fit_h)
            if bottom > 0:
                canvas.paste(resized.resize((width, bottom), box=(0, fit_h, width, fit_h)), (0, top + fit_h))
        elif target_ratio > source_ratio and left > 0:
            canvas.paste(resized.resize((left, height), box=(0, 0, 0, height)), (0, 0))
            right = width - (left + fit_w)
            if right > 0:
                canvas.paste(resized.resize((right, height), box=(fit_w, 0, fit_w, height)), (left + fit_w, 0))
    return canvas
