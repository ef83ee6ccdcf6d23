"""A1111's `modules.modelloader`: finding model files in a folder. Easel runs offline: nothing is
downloaded, so `load_file_from_url` finds an already-placed file or says where to put it."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from modules import shared


def friendly_name(file: str) -> str:
    if file.startswith("http"):
        file = urlparse(file).path
    return os.path.splitext(os.path.basename(file))[0]


def load_file_from_url(url: str, *, model_dir: str, progress: bool = True, file_name: str | None = None,
                       hash_prefix: str | None = None) -> str:
    """The path of `file_name` (or the URL's file name) in `model_dir`, when it is there."""
    os.makedirs(model_dir, exist_ok=True)
    name = file_name or os.path.basename(urlparse(url).path)
    cached = os.path.abspath(os.path.join(model_dir, name))
    if os.path.exists(cached):
        return cached
    raise FileNotFoundError(f"Easel runs offline and downloads no models: place {name} in {model_dir} "
                            f"(from {url})")


def load_models(model_path: str, model_url: str | None = None, command_path: str | None = None,
                ext_filter=None, download_name=None, ext_blacklist=None, hash_prefix=None) -> list[str]:
    """The model files in `model_path` (and `command_path`), filtered by extension (A1111); with
    `model_url` and nothing found, the already-placed `download_name`, else nothing (offline)."""
    output: list[str] = []
    for place in (model_path, command_path):
        if not place or not os.path.isdir(place):
            continue
        for full_path in shared.walk_files(place, allowed_extensions=ext_filter):
            if os.path.islink(full_path) and not os.path.exists(full_path):
                continue
            if ext_blacklist is not None and any(full_path.endswith(x) for x in ext_blacklist):
                continue
            if full_path not in output:
                output.append(full_path)
    if model_url is not None and not output and download_name is not None:
        placed = os.path.join(model_path, download_name)
        if os.path.exists(placed):
            output.append(placed)
    return output


def cleanup_models() -> None:
    """A1111 moves files from its old folders here; Easel keeps files where the user put them."""


def move_files(src_path: str, dest_path: str, ext_filter: str | None = None) -> None:
    """See cleanup_models."""


def load_upscalers() -> list:
    """`shared.sd_upscalers`, refreshed from the upscaler folders."""
    from modules.core import upscaling

    upscaling.refresh()
    shared.sd_upscalers[:] = shared._upscalers()
    return shared.sd_upscalers


def load_spandrel_model(path, *, device, prefer_half: bool = False, dtype=None, expected_architecture=None):
    """A spandrel model from a weights file (Easel's model upscalers use spandrel too)."""
    import spandrel

    descriptor = spandrel.ModelLoader(device=device).load_from_file(str(path))
    arch = descriptor.architecture
    if expected_architecture and arch.name != expected_architecture:
        print(f"Model {path!r} is not a {expected_architecture!r} model (got {arch.name!r})")
    if prefer_half and descriptor.supports_half:
        descriptor.model.half()
    if dtype is not None:
        descriptor.model.to(dtype=dtype)
    descriptor.model.eval()
    return descriptor
