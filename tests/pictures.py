"""Test pictures shared by the img2img tests: real structure (gradients and a square), not noise."""

import base64
import io

import numpy as np
from PIL import Image


def picture(width=64, height=64) -> Image.Image:
    """Smooth colour gradients plus a bright square."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 127 // (width + height)], -1)
    array[height // 4:height // 2, width // 4:width // 2] = (250, 240, 30)
    return Image.fromarray(array.astype(np.uint8), "RGB")


def square_mask(size=(64, 64), box=(16, 16, 48, 48)) -> Image.Image:
    """An L mask, white (to repaint) inside `box`."""
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask



def encoded(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def b64(image: Image.Image | bytes, fmt: str = "PNG") -> str:
    """A picture (or a file's bytes) as bare base64, as the API takes images."""
    data = image if isinstance(image, bytes) else encoded(image, fmt)
    return base64.b64encode(data).decode("ascii")
