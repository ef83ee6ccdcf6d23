"""Image files the way A1111 writes and reads them.

* PNG: the infotext in a ``parameters`` text chunk (tEXt, or iTXt when not latin-1) placed
  directly after IHDR, so readers that only look at the head of the file find it.
* JPEG / WebP: the infotext in EXIF UserComment (0x9286, Exif IFD), ``b"UNICODE\\0"`` followed
  by UTF-16-BE, byte for byte what A1111 writes with piexif (type UNDEFINED).
* Names: ``NNNNN-SEED.ext`` (5 digits) for images, ``grid-NNNN.ext`` (4 digits) for grids,
  the number being one more than the highest found in the directory.
* Writes are atomic: bytes go to a hidden temporary file in the target directory, which is then
  moved into place without overwriting, under a lock, so concurrent saves get distinct numbers
  and a crash never leaves a half-written file under a real name.

Pure PIL/numpy/stdlib; options (quality, formats, grid rows) come in as arguments.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import io
import logging
import math
import os
import re
import struct
import threading
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image, ImageColor, ImageOps

__all__ = [
    "INFOTEXT_KEY",
    "DEFAULT_MAX_PIXELS",
    "dated_subdir",
    "next_sequence_number",
    "encode_image",
    "save_image",
    "save_grid",
    "save_numbered",
    "save_as",
    "read_infotext",
    "decode_user_comment",
    "grid_layout",
    "image_grid",
    "to_rgb_or_rgba",
    "encode_pil_to_base64",
    "decode_base64_to_image",
    "decode_image",
]

log = logging.getLogger(__name__)

INFOTEXT_KEY = "parameters"
DEFAULT_MAX_PIXELS = 8192 * 8192

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_IFD_POINTER = 0x8769
USER_COMMENT_TAG = 0x9286
_UNICODE_PREFIX = b"UNICODE\0"
_ASCII_PREFIX = b"ASCII\0\0\0"
_JIS_PREFIX = b"JIS\0\0\0\0\0"
_UNDEFINED_PREFIX = b"\0" * 8
# A JPEG APP1 segment holds at most 65533 bytes of payload (its length field counts itself).
_JPEG_MAX_EXIF_BYTES = 65533

_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
_SAVE_LOCK = threading.Lock()

ImageSource = Union[str, os.PathLike, bytes, io.IOBase, Image.Image]


# --------------------------------------------------------------------------- naming

def dated_subdir(root: Path, when: datetime.date) -> Path:
    """``root/YYYY-MM-DD``: A1111's default ``[date]`` sub-directory (not created here)."""
    return Path(root) / when.strftime("%Y-%m-%d")


def next_sequence_number(directory: Path, basename: str = "") -> int:
    """A1111's rule: one more than the largest leading number among the directory's files.

    With a basename (``grid``) only files named ``basename-…`` count and the number is what
    follows the dash. Files whose first part is not a number are ignored; a missing directory
    starts at 0.
    """
    prefix = f"{basename}-" if basename else ""
    highest = -1
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.startswith(prefix):
            continue
        first = os.path.splitext(name[len(prefix):])[0].split("-")[0]
        if first.isdigit():
            highest = max(highest, int(first))
    return highest + 1


def _normalize_extension(extension: str) -> tuple[str, str]:
    ext = str(extension).lower().lstrip(".")
    if ext not in _FORMATS:
        raise ValueError(f"unsupported image extension {extension!r}; expected one of {sorted(_FORMATS)}")
    return ext, _FORMATS[ext]


# --------------------------------------------------------------------------- modes

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale -> 8-bit ``L``."""
    array = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        scaled = array.astype(np.float64) / 257.0  # 65535 -> 255, like A1111's p * 0.00389
    else:  # "F": 0..1 floats are the common case; anything larger is taken as 0..255
        array = array.astype(np.float64)
        finite_max = float(np.nanmax(array)) if array.size else 0.0
        scaled = array * 255.0 if finite_max <= 1.0 else array
    return Image.fromarray(np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8), "L")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )


def to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> ``RGB``, or ``RGBA`` when the image carries transparency.

    16-bit and float grayscale are scaled to 8 bits, CMYK/YCbCr/LAB/HSV become RGB, palette
    images with a transparent index, LA and premultiplied modes become RGBA.
    """
    if image.mode in ("RGB", "RGBA") and not (image.mode == "RGB" and "transparency" in image.info):
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        return _to_8bit_gray(image).convert("RGB")
    return image.convert("RGBA" if _has_alpha(image) else "RGB")


def _prepare_for(image: Image.Image, pil_format: str) -> Image.Image:
    if pil_format == "JPEG":
        # JPEG has no alpha: like A1111, drop it. Keep plain grayscale as grayscale.
        if image.mode in ("RGB", "L"):
            return image
        if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
            return _to_8bit_gray(image)
        return image.convert("RGB")
    if pil_format == "WEBP":
        # A1111 flattens RGBA for WebP too; WebP stores alpha fine, so Easel keeps it.
        return to_rgb_or_rgba(image)
    if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"):
        return image
    return to_rgb_or_rgba(image)


# --------------------------------------------------------------------------- metadata writers

def _png_chunk(chunk_type: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", zlib.crc32(chunk_type + data))


def _png_text_chunk(keyword: str, text: str) -> bytes:
    key = keyword.encode("latin-1")
    try:
        return _png_chunk(b"tEXt", key + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        # iTXt: keyword, compression flag 0, method 0, empty language tag, empty translated keyword.
        return _png_chunk(b"iTXt", key + b"\0\0\0" + b"\0" + b"\0" + text.encode("utf-8"))


def _insert_after_ihdr(png: bytes, chunk: bytes) -> bytes:
    if png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("encoder did not produce a PNG starting with IHDR")
    (ihdr_length,) = struct.unpack(">I", png[8:12])
    end = 8 + 4 + 4 + ihdr_length + 4
    return png[:end] + chunk + png[end:]


def _user_comment_exif(text: str, max_bytes: int | None = None) -> bytes:
    """Big-endian EXIF with one Exif IFD holding UserComment, the layout piexif.dump gives."""
    encoded = text.encode("utf-16-be")
    header_bytes = 6 + 8 + 18 + 18 + len(_UNICODE_PREFIX)
    if max_bytes is not None and header_bytes + len(encoded) > max_bytes:
        keep = (max_bytes - header_bytes) // 2 * 2
        log.warning("infotext of %d characters is too long for JPEG EXIF; truncated to fit", len(text))
        encoded = encoded[:keep]
        if encoded and 0xD8 <= encoded[-2] <= 0xDB:  # do not end on half a surrogate pair
            encoded = encoded[:-2]
    comment = _UNICODE_PREFIX + encoded
    exif_ifd_offset = 8 + 18
    comment_offset = exif_ifd_offset + 18
    tiff = b"MM\0\x2a" + struct.pack(">I", 8)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", EXIF_IFD_POINTER, 4, 1, exif_ifd_offset) + struct.pack(">I", 0)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", USER_COMMENT_TAG, 7, len(comment), comment_offset)
    tiff += struct.pack(">I", 0) + comment
    return b"Exif\0\0" + tiff


def encode_image(
    image: Image.Image,
    extension: str = "png",
    infotext: str | None = None,
    *,
    quality: int = 80,
    webp_lossless: bool | None = None,
    extra_texts: dict[str, str] | None = None,
) -> bytes:
    """Encode to PNG/JPEG/WebP bytes with the infotext embedded the A1111 way.

    `quality` is used by JPEG and WebP. WebP is lossless when `webp_lossless` is True, or when
    it is None and quality is 100 (A1111 itself has a separate ``webp_lossless`` option).
    `extra_texts`: further PNG text entries after the infotext (Extras' ``postprocessing``); the
    other formats carry the infotext only, as in A1111.
    """
    _, pil_format = _normalize_extension(extension)
    prepared = _prepare_for(image, pil_format)
    quality = max(1, min(100, int(quality)))
    buffer = io.BytesIO()
    if pil_format == "PNG":
        prepared.save(buffer, format="PNG")
        data = buffer.getvalue()
        texts = ({INFOTEXT_KEY: infotext} if infotext is not None else {}) | dict(extra_texts or {})
        for key, text in reversed(list(texts.items())):  # each goes right after IHDR: in order once done
            data = _insert_after_ihdr(data, _png_text_chunk(key, text))
        return data
    options: dict[str, object] = {"quality": quality}
    if infotext is not None:
        limit = _JPEG_MAX_EXIF_BYTES if pil_format == "JPEG" else None
        options["exif"] = _user_comment_exif(infotext, limit)
    if pil_format == "WEBP":
        options["lossless"] = quality >= 100 if webp_lossless is None else bool(webp_lossless)
    prepared.save(buffer, format=pil_format, **options)
    return buffer.getvalue()


# --------------------------------------------------------------------------- atomic numbered save

def _write_temp(directory: Path, data: bytes) -> Path:
    # A leading dot keeps the temporary file out of the numbering scan (its first part is no number).
    temp = directory / f".easel-{uuid.uuid4().hex}.tmp"
    with open(temp, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temp


def _place(temp: Path, final: Path) -> bool:
    """Move temp to final unless final exists. False when the name is taken."""
    try:
        os.link(temp, final)  # fails if final exists, even when another process raced us
    except FileExistsError:
        return False
    except OSError:
        if final.exists():  # file system without hard links: the lock is the only guard
            return False
        os.replace(temp, final)
        return True
    os.unlink(temp)
    return True


def _save_numbered(data: bytes, directory: Path, basename: str, name_for: Callable[[int], str]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    temp = _write_temp(directory, data)
    try:
        with _SAVE_LOCK:
            number = next_sequence_number(directory, basename)
            for attempt in range(10_000):
                final = directory / name_for(number + attempt)
                if _place(temp, final):
                    return final
        raise OSError(f"no free file name in {directory} after 10000 attempts")
    finally:
        if temp.exists():
            temp.unlink()


def save_numbered(data: bytes, directory: Path, basename: str, name_for: Callable[[int], str]) -> Path:
    """Encoded bytes to ``directory/name_for(n)`` for the first free n from A1111's next sequence
    number (among files named ``basename-…``, or all files without a basename); atomic."""
    return _save_numbered(data, Path(directory), basename, name_for)


def save_as(data: bytes, path: Path, replace: bool = True) -> Path:
    """Encoded bytes to `path`, atomically. An existing file is replaced, or with ``replace=False``
    kept, the bytes then going to ``stem-1.ext``, ``stem-2.ext``, … (A1111's "Add number suffix")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _write_temp(path.parent, data)
    try:
        if replace:
            os.replace(temp, path)
            return path
        with _SAVE_LOCK:
            for n in range(10_000):
                final = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
                if _place(temp, final):
                    return final
        raise OSError(f"no free file name for {path} after 10000 attempts")
    finally:
        if temp.exists():
            temp.unlink()


def save_image(
    image: Image.Image,
    directory: Path,
    *,
    seed: int | None,
    infotext: str | None,
    extension: str = "png",
    jpeg_quality: int = 80,
    basename_suffix: str = "",
    webp_lossless: bool | None = None,
    extra_texts: dict[str, str] | None = None,
) -> Path:
    """Save as ``directory/NNNNN-SEED{suffix}.ext`` (A1111 names) and return the path.

    The directory is created when missing. `basename_suffix` is appended after the seed, like
    A1111's ``suffix`` (e.g. ``-before-highres-fix``). A seed of None gives ``NNNNN.ext``.
    """
    ext, _ = _normalize_extension(extension)
    if any(sep in basename_suffix for sep in ("/", "\\", "\0")):
        raise ValueError(f"basename_suffix {basename_suffix!r} must not contain path separators")
    decoration = ("" if seed is None else f"-{int(seed)}") + basename_suffix
    data = encode_image(image, ext, infotext, quality=jpeg_quality, webp_lossless=webp_lossless,
                        extra_texts=extra_texts)
    return _save_numbered(data, Path(directory), "", lambda n: f"{n:05}{decoration}.{ext}")


def save_grid(
    image: Image.Image,
    directory: Path,
    infotext: str | None = None,
    extension: str = "png",
    *,
    jpeg_quality: int = 80,
    webp_lossless: bool | None = None,
) -> Path:
    """Save a grid as ``directory/grid-NNNN.ext``: A1111 numbers grids with 4 digits."""
    ext, _ = _normalize_extension(extension)
    data = encode_image(image, ext, infotext, quality=jpeg_quality, webp_lossless=webp_lossless)
    return _save_numbered(data, Path(directory), "grid", lambda n: f"grid-{n:04}.{ext}")


# --------------------------------------------------------------------------- reading

def _decode_utf16(body: bytes) -> str:
    if body.startswith(b"\xfe\xff"):
        return body[2:].decode("utf-16-be", errors="replace")
    if body.startswith(b"\xff\xfe"):
        return body[2:].decode("utf-16-le", errors="replace")
    if b"\0" not in body and body.isascii():
        return body.decode("ascii")  # mislabelled plain text: real UTF-16 of ASCII has zero bytes
    body = body[: len(body) // 2 * 2]
    zeros_high_first = body[0::2].count(0)
    zeros_low_first = body[1::2].count(0)
    order = ["utf-16-le", "utf-16-be"] if zeros_low_first > zeros_high_first else ["utf-16-be", "utf-16-le"]
    for encoding in order:
        try:
            return body.decode(encoding)
        except UnicodeDecodeError:
            continue
    return body.decode(order[0], errors="replace")


def decode_user_comment(raw: object) -> str | None:
    """EXIF UserComment bytes -> text, tolerating the variants found in the wild.

    ``UNICODE\\0`` + UTF-16 (big-endian as A1111 writes, little-endian as some tools write,
    with or without BOM), ``ASCII\\0\\0\\0`` (decoded as UTF-8), ``JIS``, an undefined
    all-zero prefix, or no prefix at all.
    """
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw
    else:
        if isinstance(raw, (tuple, list)):  # some writers tag it BYTE, which readers give as ints
            raw = bytes(raw)
        raw = bytes(raw)
        prefix, body = raw[:8], raw[8:]
        if prefix == _UNICODE_PREFIX:
            text = _decode_utf16(body)
        elif prefix == _ASCII_PREFIX or prefix == _UNDEFINED_PREFIX:
            text = body.decode("utf-8", errors="replace")
        elif prefix == _JIS_PREFIX:
            text = body.decode("shift_jis", errors="replace")
        else:
            text = raw.decode("utf-8", errors="replace")
    text = text.strip("\0")
    return text or None


def _exif_user_comment(image: Image.Image) -> str | None:
    raw_exif = image.info.get("exif")
    if not raw_exif:
        return None
    try:
        exif = Image.Exif()
        exif.load(raw_exif)
        raw = exif.get_ifd(EXIF_IFD_POINTER).get(USER_COMMENT_TAG)
    except Exception:  # corrupt EXIF must not stop reading the rest
        log.debug("unreadable EXIF block", exc_info=True)
        return None
    return decode_user_comment(raw)


def _as_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) and value else None


def _infotext_from_image(image: Image.Image) -> str | None:
    # A1111 order: the EXIF comment wins over a `parameters` text entry when both exist.
    from_exif = _exif_user_comment(image)
    if from_exif:
        return from_exif
    text = _as_text(image.info.get(INFOTEXT_KEY))
    if text:
        return text
    if image.format == "PNG" and hasattr(image, "text"):
        try:  # text chunks after IDAT are only seen once the image is loaded
            text = _as_text(image.text.get(INFOTEXT_KEY))  # type: ignore[attr-defined]
        except Exception:
            text = None
        if text:
            return text
    return _as_text(image.info.get("comment"))  # GIF / JPEG COM, as A1111 falls back to


def read_infotext(source: ImageSource) -> str | None:
    """The A1111 infotext of a PNG/JPEG/WebP (path, bytes, file object or opened image), or None."""
    if isinstance(source, Image.Image):
        return _infotext_from_image(source)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as image:
        return _infotext_from_image(image)


# A1111's IGNORED_INFO_KEYS: image info that is not text about the picture
IGNORED_INFO_KEYS = frozenset({"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop",
                               "background", "timestamp", "duration", "progressive", "progression",
                               "icc_profile", "chromaticity", "photoshop"})


def read_info(source: ImageSource) -> tuple[str | None, dict[str, str | int | float | bool | None]]:
    """A1111's ``read_info_from_image``: (the infotext, the picture's other text items), the items
    made JSON-safe (bytes as text, other values as their str())."""
    if not isinstance(source, Image.Image):
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(bytes(source))
        with Image.open(source) as image:
            image.load()  # PNG text after the pixels is only seen once loaded
            return read_info(image)
    infotext = _infotext_from_image(source)
    items: dict = {}
    for key, value in dict(source.info or {}).items():
        if key == INFOTEXT_KEY or key in IGNORED_INFO_KEYS:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        items[str(key)] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
    return infotext, items


# --------------------------------------------------------------------------- grids

def grid_layout(
    count: int,
    rows: int | None = None,
    batch_size: int | None = None,
    *,
    n_rows: int = -1,
    prevent_empty_spots: bool = False,
) -> tuple[int, int]:
    """(rows, cols) by A1111's ``image_grid`` rule.

    Explicit `rows` wins; else the ``n_rows`` option: > 0 fixed, 0 -> `batch_size` rows,
    -1 (default) -> ``round(sqrt(n))``, or with ``prevent_empty_spots`` the largest divisor of
    n not above ``floor(sqrt(n))``. Rows never exceed the image count.
    """
    if count <= 0:
        raise ValueError("image_grid needs at least one image")
    if rows is None:
        if n_rows > 0:
            rows = n_rows
        elif n_rows == 0:
            rows = batch_size or 1
        elif prevent_empty_spots:
            rows = max(1, math.floor(math.sqrt(count)))
            while count % rows:
                rows -= 1
        else:
            rows = round(math.sqrt(count))
    rows = max(1, min(int(rows), count))
    return rows, math.ceil(count / rows)


def image_grid(
    images: Sequence[Image.Image],
    rows: int | None = None,
    batch_size: int | None = None,
    *,
    n_rows: int = -1,
    prevent_empty_spots: bool = False,
    background: str = "#ffffff",
) -> Image.Image:
    """Paste images into an RGB grid (A1111 layout: cells as large as the largest image,
    smaller images centred, background colour as A1111's default option)."""
    images = list(images)
    rows, cols = grid_layout(len(images), rows, batch_size, n_rows=n_rows, prevent_empty_spots=prevent_empty_spots)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), ImageColor.getcolor(background, "RGB"))
    for index, im in enumerate(images):
        x = index % cols * cell_w + (cell_w - im.width) // 2
        y = index // cols * cell_h + (cell_h - im.height) // 2
        grid.paste(to_rgb_or_rgba(im).convert("RGB"), (x, y))
    return grid


# --------------------------------------------------------------------------- base64 (API)

def encode_pil_to_base64(
    image: Image.Image,
    fmt: str = "png",
    infotext: str | None = None,
    *,
    quality: int = 80,
    webp_lossless: bool | None = None,
) -> str:
    """Bare base64 (no ``data:`` prefix) of the encoded image, as the A1111 API returns.
    Without `infotext`, the image's own ``parameters`` info entry is embedded if present."""
    if infotext is None:
        infotext = _as_text(image.info.get(INFOTEXT_KEY))
    data = encode_image(image, fmt, infotext, quality=quality, webp_lossless=webp_lossless)
    return base64.b64encode(data).decode("ascii")


def _base64_payload(encoded: str | bytes) -> bytes:
    if isinstance(encoded, (bytes, bytearray)):
        encoded = bytes(encoded).decode("ascii", errors="replace")
    if not isinstance(encoded, str):
        raise ValueError(f"expected a base64 string, got {type(encoded).__name__}")
    text = encoded.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise ValueError("data URL is not base64-encoded (expected 'data:image/…;base64,…')")
    text = "".join(text.split())
    if not text:
        raise ValueError("empty image data")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"image data is not valid base64: {error}") from None


def base64_to_bytes(encoded: str | bytes) -> bytes:
    """The bytes of bare base64 or a ``data:…;base64,…`` URL (whitespace and missing padding
    tolerated); ValueError saying what is wrong otherwise."""
    return _base64_payload(encoded)


def decode_base64_to_image(encoded: str | bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Base64 (bare or ``data:image/…;base64,…``) -> a loaded RGB or RGBA image.

    EXIF orientation is applied (as A1111's ``images.read`` does) and the image's infotext is
    kept in ``info["parameters"]``. Raises ValueError with a message for bad base64, data that
    is not an image, truncated files, and images above `max_pixels`.
    """
    data = _base64_payload(encoded)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # far over any limit: PIL refuses before reading pixels
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1))} pixels" if found else "its size"
        raise ValueError(f"image is too large: {size} exceeds the limit of {max_pixels or Image.MAX_IMAGE_PIXELS} pixels") from None
    except Exception as error:
        raise ValueError(f"data is not a recognizable image ({len(data)} bytes): {error}") from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"image is too large: {width}x{height} exceeds the limit of {max_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception as error:
        raise ValueError(f"image data is truncated or corrupt ({image.format}, {width}x{height}): {error}") from None
    infotext = _infotext_from_image(image)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a bad orientation tag must not reject an otherwise fine image
        log.debug("could not apply EXIF orientation", exc_info=True)
    result = to_rgb_or_rgba(image)
    if result is image:
        result = image.copy()
    if infotext:
        result.info[INFOTEXT_KEY] = infotext
    return result


def decode_image(data: object, field_name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A request's image (base64 string, ``data:`` URL, raw bytes or a PIL image) -> a loaded RGB or
    RGBA image, or ``RequestError(field_name, …)`` saying what is wrong (not base64, not an image,
    truncated, over ``max_pixels``). 16-bit, CMYK, palette and greyscale images come back as RGB,
    images with transparency as RGBA (img2img flattens init images on its background colour and
    reads masks from their alpha). Nothing is written anywhere."""
    from .types import RequestError

    if isinstance(data, Image.Image):
        width, height = data.size
        if max_pixels is not None and width * height > max_pixels:
            raise RequestError(field_name, f"image is too large: {width}x{height} exceeds the limit of {max_pixels} pixels")
        try:
            data.load()
        except Exception as error:
            raise RequestError(field_name, f"image data is truncated or corrupt: {error}") from None
        converted = to_rgb_or_rgba(data)
        return converted.copy() if converted is data else converted
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data)
        if _looks_like_image_file(data):  # raw file bytes (uploads): through the one decoder below
            data = base64.b64encode(data)
    elif not isinstance(data, str):
        raise RequestError(field_name, f"must be a base64-encoded image, got {type(data).__name__}")
    try:
        return decode_base64_to_image(data, max_pixels=max_pixels)
    except ValueError as error:
        raise RequestError(field_name, str(error)) from None


_IMAGE_SIGNATURES = (PNG_SIGNATURE, b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\0", b"MM\0*")


def _looks_like_image_file(data: bytes) -> bool:
    return data.startswith(_IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def to_model_pixels(images: Sequence[Image.Image]):
    """Pictures -> a (B, 3, H, W) float tensor in [-1, 1], what the VAE encoder takes."""
    import torch

    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))
