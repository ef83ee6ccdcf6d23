"""The model upscaler files in A1111's folders, as rows of the upscaler registry.

A1111 reads ``models/ESRGAN``, ``models/RealESRGAN``, ``models/SwinIR`` and ``models/DAT`` (or the
``--esrgan-models-path``, ... flags), each with its subfolders. Every ``.pth``/``.pt``/
``.safetensors`` there is read once (again when it changes) to learn its architecture and scale;
a file spandrel does not recognise, or a pickle holding more than tensors, is listed in
``unusable`` with the reason and logged, and the launch goes on. A row is named as A1111 names it:
the file's stem, or A1111's built-in name (``R-ESRGAN 4x+``, ``DAT x4``, ...) for the file A1111
would have downloaded for it.

``refresh`` looks at the folders again (cheap when nothing changed) and hands the rows to
``modules.core.upscaling``; the registry calls it when asked for a name it does not know, and the
upscaler listings call it before they answer. Running a model: ``modules.core.upscaler_models.run``
with the tile options read at that moment, the device policy, and the job's interrupt flag.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from tqdm import tqdm

from modules.core import upscaler_models, upscaling

# (folder, cmd_opts attribute, A1111's model_name for its rows, the options with its tile size / overlap)
FOLDERS = (
    ("ESRGAN", "esrgan_models_path", "ESRGAN_4x", ("ESRGAN_tile", "ESRGAN_tile_overlap")),
    ("RealESRGAN", "realesrgan_models_path", None, ("ESRGAN_tile", "ESRGAN_tile_overlap")),
    ("SwinIR", "swinir_models_path", "SwinIR 4x", ("ESRGAN_tile", "ESRGAN_tile_overlap")),
    ("DAT", "dat_models_path", None, ("DAT_tile", "DAT_tile_overlap")),
)

_RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"
# A1111's built-in upscalers: (folder, file name) -> (name, download address); A1111 downloads the
# file on first use, Easel shows the name when the file is there.
BUILTIN_NAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("RealESRGAN", "realesr-general-x4v3.pth"): ("R-ESRGAN General 4xV3", f"{_RELEASES}/v0.2.5.0/realesr-general-x4v3.pth"),
    ("RealESRGAN", "realesr-general-wdn-x4v3.pth"): ("R-ESRGAN General WDN 4xV3", f"{_RELEASES}/v0.2.5.0/realesr-general-wdn-x4v3.pth"),
    ("RealESRGAN", "realesr-animevideov3.pth"): ("R-ESRGAN AnimeVideo", f"{_RELEASES}/v0.2.5.0/realesr-animevideov3.pth"),
    ("RealESRGAN", "RealESRGAN_x4plus.pth"): ("R-ESRGAN 4x+", f"{_RELEASES}/v0.1.0/RealESRGAN_x4plus.pth"),
    ("RealESRGAN", "RealESRGAN_x4plus_anime_6B.pth"): ("R-ESRGAN 4x+ Anime6B", f"{_RELEASES}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth"),
    ("RealESRGAN", "RealESRGAN_x2plus.pth"): ("R-ESRGAN 2x+", f"{_RELEASES}/v0.2.1/RealESRGAN_x2plus.pth"),
    ("ESRGAN", "ESRGAN_4x.pth"): ("ESRGAN_4x", "https://github.com/cszn/KAIR/releases/download/v1.0/ESRGAN.pth"),
    ("SwinIR", "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth"): (
        "SwinIR 4x", "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth"),
    ("DAT", "DAT_x2.pth"): ("DAT x2", "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT/DAT_x2.pth"),
    ("DAT", "DAT_x3.pth"): ("DAT x3", "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT/DAT_x3.pth"),
    ("DAT", "DAT_x4.pth"): ("DAT x4", "https://github.com/n0kovo/dat_upscaler_models/raw/main/DAT/DAT_x4.pth"),
}


# the options that list A1111's built-in names of a family (its realesrgan/dat_enabled_models): such a
# file's row is there only while its name is ticked; a file under a name of its own is always listed
ENABLED_OPTIONS = {"RealESRGAN": "realesrgan_enabled_models", "DAT": "dat_enabled_models"}


def folders_for(opts, models_dir: Path) -> dict[str, Path]:
    """Each A1111 folder: its flag's value, else MODELS_DIR/<folder>."""
    return {kind: Path(getattr(opts, attr, None) or models_dir / kind) for kind, attr, _, _ in FOLDERS}


@dataclass(frozen=True)
class ModelFile:
    kind: str  # the folder: "ESRGAN", "RealESRGAN", "SwinIR", "DAT"
    path: Path
    name: str  # as A1111 shows it
    url: str | None
    architecture: str  # spandrel's name: "ESRGAN", "RealESRGAN Compact", "SwinIR", "HAT", ...
    scale: int


class ModelUpscalers:
    """The files found, the ones that could not be used, and the loaded model (one, on the CPU)."""

    def __init__(self, folders: dict[str, Path], options=None, device: torch.device | None = None,
                 half: bool = True, interrupted: Callable[[], bool] = lambda: False, log=print):
        self.folders = folders
        self.options = options
        self.device = device or torch.device("cpu")
        self.half = half
        self.interrupted = interrupted
        self.log = log
        self.files: list[ModelFile] = []
        self.unusable: dict[Path, str] = {}  # file -> why it is not listed
        self._probed: dict[Path, tuple[tuple, ModelFile | str]] = {}  # file -> (stat, row or reason)
        self._signature: tuple | None = None
        self._scan_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._loaded: tuple[tuple, upscaler_models.UpscalerModel] | None = None

    # -- finding -------------------------------------------------------------------------
    def _candidates(self) -> list[tuple[str, Path, tuple]]:
        found = []
        for kind, folder in self.folders.items():
            if not folder.is_dir():
                continue
            for root, dirs, files in os.walk(folder, followlinks=True):
                if not self._option("list_hidden_files", True):  # A1111's walk_files: skip ".name" folders
                    dirs[:] = [d for d in dirs if not d.startswith(".")]
                dirs.sort()
                for file in sorted(files):
                    path = Path(root) / file
                    if path.suffix.lower() in upscaler_models.SUFFIXES:
                        try:
                            stat = path.stat()
                        except OSError:
                            continue
                        found.append((kind, path, (stat.st_size, stat.st_mtime_ns)))
        return found

    def _probe(self, kind: str, path: Path) -> ModelFile | str:
        try:
            model = upscaler_models.build(path)
        except upscaler_models.UpscalerFileError as error:
            return str(error)
        except Exception as error:  # noqa: BLE001 - a broken file never stops the launch
            return f"{path.name}: {type(error).__name__}: {error}"
        name, url = BUILTIN_NAMES.get((kind, path.name), (path.stem, None))
        return ModelFile(kind, path, name, url, model.architecture, model.scale)

    def refresh(self) -> bool:
        """Look at the folders again; True when the list of upscalers changed."""
        with self._scan_lock:
            candidates = self._candidates()
            enabled = {kind: (None if self.options is None else tuple(self.options.get(key) or ()))
                       for kind, key in ENABLED_OPTIONS.items()}  # None: no options, all listed
            signature = (tuple((str(path), stat) for _, path, stat in candidates), tuple(enabled.items()))
            if signature == self._signature:
                return False
            files, unusable, names = [], {}, {}
            for kind, path, stat in candidates:
                cached = self._probed.get(path)
                if cached is None or cached[0] != stat:
                    cached = (stat, self._probe(kind, path))
                    self._probed[path] = cached
                    if isinstance(cached[1], str):
                        self.log(f"[easel] upscaler model not usable: {path}: {cached[1]}")
                row = cached[1]
                if isinstance(row, str):
                    unusable[path] = row
                elif row.name in names or row.name in _builtin_names():
                    unusable[path] = f"{path.name}: the name '{row.name}' is taken by {names.get(row.name, 'a built-in upscaler')}"
                else:
                    names[row.name] = path
                    files.append(row)
            known = {path for _, path, _ in candidates}
            self._probed = {p: v for p, v in self._probed.items() if p in known}
            self.files, self.unusable, self._signature = files, unusable, signature
            upscaling.set_model_upscalers([self._row(f) for f in files if self._shown(f, enabled)])
            return True

    def _row(self, file: ModelFile) -> upscaling.Upscaler:
        model_name = next(m for kind, _, m, _ in FOLDERS if kind == file.kind)
        return upscaling.Upscaler(file.name, scale=float(file.scale), step=lambda image, _scale: self.upscale(file, image),
                                  model_name=model_name, model_path=str(file.path), model_url=file.url, kind=file.kind)

    def _option(self, key: str, default):
        return default if self.options is None else self.options.get(key, default)

    @staticmethod
    def _shown(file: ModelFile, enabled: dict[str, tuple | None]) -> bool:
        """Listed as an upscaler: not one of A1111's built-in RealESRGAN/DAT names, or ticked in its option."""
        if file.kind not in ENABLED_OPTIONS or file.url is None or enabled[file.kind] is None:
            return True
        return file.name in enabled[file.kind]

    def realesrgan_models(self) -> list[ModelFile]:
        return [f for f in self.files if f.kind == "RealESRGAN"]

    # -- running -------------------------------------------------------------------------
    def _model(self, file: ModelFile) -> upscaler_models.UpscalerModel:
        """The file's model, built again only when another file (or a changed one) is asked for."""
        stat = file.path.stat()
        key = (str(file.path), stat.st_size, stat.st_mtime_ns)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # the previous model goes before the next one is built
            self._loaded = (key, upscaler_models.build(file.path))
        return self._loaded[1]

    def tile_options(self, file: ModelFile) -> tuple[int, int]:
        tile_key, overlap_key = next(keys for kind, _, _, keys in FOLDERS if kind == file.kind)
        if self.options is None:
            return 192, 8
        return int(self.options.get(tile_key, 192)), int(self.options.get(overlap_key, 8))

    def upscale(self, file: ModelFile, image: Image.Image) -> Image.Image:
        """One native upscale with the file's model (A1111's ``do_upscale``); with tiles and
        enable_upscale_progressbar on, a console bar over the tiles (A1111's "Tiled upscale")."""
        tile, overlap = self.tile_options(file)
        shown = tile > 0 and (self.options is None or self.options.get("enable_upscale_progressbar", True))
        with self._run_lock, tqdm(total=upscaler_models.tile_count(image.width, image.height, tile),
                                  desc=f"Tiled upscale ({file.name})", unit="tile", file=sys.stderr,
                                  disable=not shown) as bar:
            model = self._model(file)
            return upscaler_models.run(model, image, self.device, half=self.half, tile=tile, overlap=overlap,
                                       interrupted=self.interrupted, on_tile=bar.update)

    def unload(self) -> None:
        self._loaded = None


def _builtin_names() -> set[str]:
    return set(upscaling.names()) - {u.name for u in upscaling.model_upscalers()}


def install(upscalers: ModelUpscalers) -> ModelUpscalers:
    """Make ``upscalers`` the registry's source of model rows (webui.py calls this at start)."""
    upscaling.set_refresher(upscalers.refresh)
    upscalers.refresh()
    return upscalers
