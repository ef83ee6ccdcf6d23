"""Upscalers: A1111's latent upscale modes and its built-in image upscalers, as one registry.

Latent modes resize the latents directly with ``torch.nn.functional.interpolate`` (A1111's
``latent_upscale_modes``: interpolation mode + antialias per name). Image upscalers resize
decoded pictures; the built-in ones are ``None`` (plain Lanczos resize), ``Lanczos`` and
``Nearest`` (scale 4, A1111's ``UpscalerLanczos``/``UpscalerNearest``). Model upscalers (ESRGAN
and friends) are rows too: the service that finds their files (``modules.services.upscalers``)
passes them in with ``set_model_upscalers`` and may set a ``refresher`` that looks again when a
name is not known (a file added since). The API serves ``/sdapi/v1/upscalers`` and
``/sdapi/v1/latent-upscale-modes`` from ``image_upscalers()`` and ``latent_modes()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "Upscaler",
    "LATENT_MODES",
    "register",
    "get",
    "names",
    "image_upscalers",
    "latent_modes",
    "is_latent",
    "resize_latents",
    "upscale_image",
    "set_model_upscalers",
    "model_upscalers",
    "set_refresher",
    "refresh",
]


@dataclass(frozen=True)
class LatentMode:
    interpolation: str
    antialias: bool


# A1111 shared_items/shared.py `latent_upscale_modes`, in its order.
LATENT_MODES: dict[str, LatentMode] = {
    "Latent": LatentMode("bilinear", False),
    "Latent (antialiased)": LatentMode("bilinear", True),
    "Latent (bicubic)": LatentMode("bicubic", False),
    "Latent (bicubic antialiased)": LatentMode("bicubic", True),
    "Latent (nearest)": LatentMode("nearest", False),
    "Latent (nearest-exact)": LatentMode("nearest-exact", False),
}


def resize_latents(latents: torch.Tensor, height: int, width: int, mode_name: str = "Latent") -> torch.Tensor:
    """Resize (B, C, h, w) latents to (B, C, height, width) latent pixels with a latent mode.

    ``mode_name`` is one of ``LATENT_MODES`` (A1111 names). The result is float32 on the
    latents' device; antialias only matters when shrinking (PyTorch ignores it otherwise).
    """
    mode = LATENT_MODES.get(mode_name)
    if mode is None:
        raise ValueError(f"unknown latent upscale mode '{mode_name}'; known: {', '.join(LATENT_MODES)}")
    if latents.ndim != 4:
        raise ValueError(f"latents must be (B, C, H, W), got shape {tuple(latents.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"target latent size must be positive, got {width}x{height}")
    x = latents.float()
    if tuple(x.shape[-2:]) == (height, width):
        return x.clone()
    kwargs = {"antialias": True} if mode.antialias else {}
    return F.interpolate(x, size=(height, width), mode=mode.interpolation, **kwargs)


# -- image upscalers ---------------------------------------------------------------------

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST


@dataclass(frozen=True)
class Upscaler:
    """One registry row. ``scale`` is the model's native factor (A1111 reports 4 for Lanczos).

    ``step(image, scale) -> image`` does one native upscale (None for latent modes and for
    ``None``, which is a plain Lanczos resize to the target)."""

    name: str
    scale: float
    latent: bool = False
    step: Callable[[Image.Image, float], Image.Image] | None = None
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    kind: str | None = None  # a model upscaler's A1111 family ("ESRGAN", "RealESRGAN", "SwinIR", "DAT")


def _resample_step(resample: Image.Resampling) -> Callable[[Image.Image, float], Image.Image]:
    def step(image: Image.Image, scale: float) -> Image.Image:
        return image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)

    return step


_REGISTRY: dict[str, Upscaler] = {}


def register(upscaler: Upscaler) -> Upscaler:
    """Add a row; a name already taken is an error (names are what requests use)."""
    if upscaler.name in _REGISTRY:
        raise ValueError(f"upscaler '{upscaler.name}' is already registered")
    _REGISTRY[upscaler.name] = upscaler
    return upscaler


for _name in LATENT_MODES:
    register(Upscaler(_name, scale=1.0, latent=True))
register(Upscaler("None", scale=1.0))
register(Upscaler("Lanczos", scale=4.0, step=_resample_step(LANCZOS)))
register(Upscaler("Nearest", scale=4.0, step=_resample_step(NEAREST)))


_MODEL_NAMES: list[str] = []  # the rows set_model_upscalers put in, in its order
_refresher: Callable[[], None] | None = None


def set_model_upscalers(rows: list[Upscaler]) -> None:
    """Replace every model upscaler row with ``rows`` (listed after the built-in ones, in the
    given order). A name taken by a built-in row or twice in ``rows`` is an error; then nothing
    changes."""
    taken = [name for name in _REGISTRY if name not in _MODEL_NAMES]
    seen: set[str] = set()
    for row in rows:
        if row.latent or row.step is None:
            raise ValueError(f"model upscaler '{row.name}' needs an image step")
        if row.name in taken or row.name in seen:
            raise ValueError(f"upscaler '{row.name}' is already registered")
        seen.add(row.name)
    for name in _MODEL_NAMES:
        del _REGISTRY[name]
    _MODEL_NAMES[:] = [row.name for row in rows]
    _REGISTRY.update((row.name, row) for row in rows)


def model_upscalers() -> list[Upscaler]:
    return [_REGISTRY[name] for name in _MODEL_NAMES]


def set_refresher(refresher: Callable[[], None] | None) -> None:
    """``refresher()`` looks for model files again and calls ``set_model_upscalers``."""
    global _refresher
    _refresher = refresher


def refresh() -> None:
    if _refresher is not None:
        _refresher()


def names() -> list[str]:
    """Every name a request may give as ``hr_upscaler`` (latent modes first, as A1111's menu)."""
    return list(_REGISTRY)


def get(name: str) -> Upscaler:
    if name not in _REGISTRY:
        refresh()  # a model file put in its folder since the last look
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown upscaler '{name}'; known: {', '.join(_REGISTRY)}") from None


def is_latent(name: str) -> bool:
    return get(name).latent


def image_upscalers() -> list[Upscaler]:
    """The rows of ``/sdapi/v1/upscalers`` (A1111 lists only image upscalers there)."""
    return [u for u in _REGISTRY.values() if not u.latent]


def latent_modes() -> list[str]:
    """The names of ``/sdapi/v1/latent-upscale-modes``."""
    return [u.name for u in _REGISTRY.values() if u.latent]


def upscale_image(image: Image.Image, width: int, height: int, name: str = "None") -> Image.Image:
    """Resize one picture to exactly ``width`` x ``height`` with an image upscaler (A1111's
    ``images.resize_image`` mode 0 with ``Upscaler.upscale``).

    ``None`` is one Lanczos resize. Others, when enlarging, apply their native step up to three
    times until the picture covers the target rounded down to a multiple of 8, then a final
    Lanczos resize fixes the exact size; when shrinking only the Lanczos resize runs.
    """
    upscaler = get(name)
    if upscaler.latent:
        raise ValueError(f"'{name}' is a latent upscale mode; it resizes latents, not images")
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    scale = max(width / image.width, height / image.height)
    if upscaler.step is not None and scale > 1.0:
        dest_w, dest_h = int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)
        for _ in range(3):
            if image.width >= dest_w and image.height >= dest_h:
                break
            before = image.size
            image = upscaler.step(image, scale)
            if image.size == before:
                break
        if image.size != (dest_w, dest_h):
            image = image.resize((dest_w, dest_h), resample=LANCZOS)
    if image.size != (width, height):
        image = image.resize((width, height), resample=LANCZOS)
    return image
