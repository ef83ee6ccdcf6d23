"""ControlNet models in A1111's folders, and sd-webui-controlnet's units turned into a core ControlJob.

**Models**: every ``.safetensors``/``.pth``/``.pt``/``.ckpt``/``.bin`` under ``models/ControlNet``
(subfolders too) and ``--controlnet-dir``, named as the extension names them: ``stem [hash]`` with
A1111's short file hash. A unit's ``model`` may be that title, the stem alone, or any case of them.
A file is read with weights only when a job first uses it, and kept built on the device (the few
last used).

**Units** (``units_from_args``): the extension's unit fields and value forms, as API clients send
them in ``alwayson_scripts.controlnet.args``: dicts (or objects) with ``enabled``, ``module``,
``model``, ``weight``, ``image`` (base64, a data URL, ``{"image": ..., "mask": ...}``, a PIL
picture or an array), ``mask`` / ``mask_image``, ``resize_mode`` (name, old alias or 0/1/2),
``processor_res``, ``threshold_a``/``threshold_b`` (-1 or out of range: the preprocessor's
default), ``guidance_start``/``guidance_end``, ``pixel_perfect``, ``control_mode`` (name or 0/1/2);
the deprecated ``guidance``, ``lowvram``, ``input_image`` aliases too. ``prepare_job`` preprocesses
the enabled ones for the job's size and loads their models.

**Infotext**: ``ControlNet N: "Module: canny, Model: name [hash], Weight: 1, ..."`` (the extension's
``serialize``) and its parse.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules.core import controlnet, controlnet_model, controlnet_preprocessors, image_io, memory
from modules.core.checkpoint_file import CheckpointError
from modules.core.checkpoint_shapes import UnsupportedCheckpoint
from modules.core.types import RequestError

API_VERSION = 3  # /controlnet/version: the extension's external_code.get_api_version()
EXTENSIONS = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")
DEFAULT_UNIT_COUNT = 3
FIELD = "alwayson_scripts"
RESIZE_ALIASES = {"Inner Fit (Scale to Fit)": "Crop and Resize", "Outer Fit (Shrink to Fit)": "Resize and Fill",
                  "Scale to Fit (Inner Fit)": "Crop and Resize", "Envelope (Outer Fit)": "Resize and Fill"}
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                   "guidance_start", "guidance_end", "pixel_perfect", "control_mode")


def short_hash(path: Path) -> str:
    """A1111's old model hash (sd_models.model_hash), which the extension shows after the name."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0x100000)
            return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
    except OSError:
        return "NOFILE"


class ControlNets:
    """The ControlNet files of the folders, and the built ones (the last ``keep`` used)."""

    def __init__(self, folders: list[Path], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 keep: int = 3):
        self.folders = [Path(f) for f in folders]
        self.device, self.dtype, self.keep = torch.device(device), dtype, keep
        self._titles: dict[str, Path] = {}
        self._hashes: dict[tuple[str, float, int], str] = {}
        self._built: OrderedDict[tuple[str, float], controlnet_model.ControlNetFile] = OrderedDict()
        self._lock = threading.Lock()

    def refresh(self) -> dict[str, Path]:
        """Look at the folders again: {"stem [hash]": path}, sorted by name, the first folder winning."""
        found: dict[str, Path] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for root, _dirs, files in os.walk(folder, followlinks=True):
                for name in files:
                    path = Path(root) / name
                    if path.suffix.lower() not in EXTENSIONS or path.stem == "None":
                        continue
                    stat = path.stat()
                    key = (str(path), stat.st_mtime, stat.st_size)
                    if key not in self._hashes:
                        self._hashes[key] = short_hash(path)
                    found.setdefault(f"{path.stem} [{self._hashes[key]}]", path)
        self._titles = dict(sorted(found.items(), key=lambda item: item[1].name.lower()))
        return dict(self._titles)

    def titles(self, refresh: bool = True) -> list[str]:
        """The titles, looking at the folders again (``refresh``) or as last seen."""
        return list(self.refresh() if refresh or not self._titles else self._titles)

    def find(self, name: str) -> tuple[str, Path] | None:
        """(title, path) for a unit's ``model``: the title, the stem, case-insensitive; None for "None"."""
        wanted = (name or "").strip()
        if wanted.lower() in ("", "none"):
            return None
        for attempt in range(2):
            titles = self._titles if attempt == 0 else self.refresh()
            for title, path in titles.items():
                if wanted.lower() in (title.lower(), path.stem.lower(), path.name.lower()):
                    return title, path
            stem = wanted.split(" [")[0].strip().lower()
            for title, path in titles.items():
                if path.stem.lower() == stem:
                    return title, path
        return None

    def load(self, path: Path) -> controlnet_model.ControlNetFile:
        """The built ControlNet of ``path`` on the device (built once per file version)."""
        key = (str(path), path.stat().st_mtime)
        with self._lock:
            if key in self._built:
                self._built.move_to_end(key)
                return self._built[key]
            built = controlnet_model.load(path, self.dtype)
            memory.move(built.module, self.device)
            self._built[key] = built
            while len(self._built) > self.keep:
                self._built.popitem(last=False)
            return built


_INSTANCE: ControlNets | None = None


def install(instance: ControlNets) -> None:
    global _INSTANCE
    _INSTANCE = instance


def get() -> ControlNets:
    """The installed registry (webui.py installs it; a bare one over nothing otherwise)."""
    global _INSTANCE
    if _INSTANCE is None:
        _INSTANCE = ControlNets([])
    return _INSTANCE


def folders_for(opts, models_dir: Path) -> list[Path]:
    """models/ControlNet, then --controlnet-dir (as the extension: both are read)."""
    folders = [Path(models_dir) / "ControlNet"]
    extra = getattr(opts, "controlnet_dir", None)
    if extra:
        folders.append(Path(extra))
    return folders


# -- units ----------------------------------------------------------------------------------------

@dataclass
class UnitArgs:
    """One unit's fields in the extension's names, values normalised."""

    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: object = None
    mask: object = None
    resize_mode: str = "Crop and Resize"
    processor_res: float = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    hr_option: str = "Both"

    def serialize(self) -> str:
        """The extension's infotext value: ``Module: canny, Model: ..., Weight: 1, ...``."""
        def text(field: str) -> str:
            value = getattr(self, field)
            if field == "processor_res" and float(value).is_integer():
                return str(int(value))  # an int field in the extension, the others floats (str: "1.0")
            return str(value)

        return ", ".join(f"{' '.join(w.capitalize() for w in f.split('_'))}: {text(f)}" for f in INFOTEXT_FIELDS)

    def settle(self) -> None:
        """The extension's bound check: processor_res / thresholds outside the preprocessor's sliders
        (-1: not given) become its defaults (a hidden slider's: 0.5 in [0, 1])."""
        pre = controlnet_preprocessors.find(self.module)
        self.module = pre.name
        self.processor_res = (pre.resolution or _HIDDEN).pick(self.processor_res)
        self.threshold_a = float((pre.slider_1 or _HIDDEN).pick(self.threshold_a))
        self.threshold_b = float((pre.slider_2 or _HIDDEN).pick(self.threshold_b))


_HIDDEN = controlnet_preprocessors.Slider("", 0.5, 0.0, 1.0, 0.01)


def resize_mode_name(value) -> str:
    if isinstance(value, bool):
        raise ValueError(f"resize_mode {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        index = int(value)
        if index < 0:
            raise ValueError(f"resize_mode {value!r}")
        return controlnet.RESIZE_MODES[index] if index < len(controlnet.RESIZE_MODES) else "Just Resize"
    name = RESIZE_ALIASES.get(str(value), str(value))
    if name not in controlnet.RESIZE_MODES:
        raise ValueError(f"unknown resize_mode {value!r}; known: {', '.join(controlnet.RESIZE_MODES)}")
    return name


def control_mode_name(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        index = int(value)
        if not 0 <= index < len(controlnet.CONTROL_MODES):
            raise ValueError(f"control_mode {value!r}: 0, 1 or 2")
        return controlnet.CONTROL_MODES[index]
    if str(value) not in controlnet.CONTROL_MODES:
        raise ValueError(f"unknown control_mode {value!r}; known: {', '.join(controlnet.CONTROL_MODES)}")
    return str(value)


_ALIASES = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image", "mask_image": "mask"}


def parse_unit(raw, index: int) -> UnitArgs:
    """A dict (or an object with the fields as attributes) -> UnitArgs; RequestError naming the unit."""
    name = f"ControlNet {index}"
    if isinstance(raw, UnitArgs):
        return raw
    if raw is None:
        return UnitArgs()
    values = dict(raw) if isinstance(raw, dict) else {k: v for k, v in vars(raw).items() if not k.startswith("_")}
    for alias, key in _ALIASES.items():
        if alias in values and values.get(key) is None:
            values[key] = values.pop(alias)
    unit = UnitArgs()
    try:
        for key in ("enabled", "pixel_perfect"):
            if values.get(key) is not None:
                setattr(unit, key, bool(values[key]))
        for key in ("module", "model", "hr_option"):
            if values.get(key) is not None:
                setattr(unit, key, str(values[key]))
        for key in ("weight", "processor_res", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
            if values.get(key) is not None:
                setattr(unit, key, float(values[key]))
        if values.get("resize_mode") is not None:
            unit.resize_mode = resize_mode_name(values["resize_mode"])
        if values.get("control_mode") is not None:
            unit.control_mode = control_mode_name(values["control_mode"])
        elif values.get("guessmode"):
            unit.control_mode = "ControlNet is more important"
    except (TypeError, ValueError) as exc:
        raise RequestError(FIELD, f"{name}: {exc}") from None
    unit.image, unit.mask = values.get("image"), values.get("mask")
    if not 0.0 <= unit.weight <= 2.0:
        raise RequestError(FIELD, f"{name}: weight must be within [0, 2], got {unit.weight}")
    if not 0.0 <= unit.guidance_start <= unit.guidance_end <= 1.0:
        raise RequestError(FIELD, f"{name}: guidance_start ({unit.guidance_start}) must be <= guidance_end "
                                  f"({unit.guidance_end}), both within [0, 1]")
    if controlnet_preprocessors.find(unit.module) is None:
        raise RequestError(FIELD, f"{name}: module({unit.module}) not found in supported modules: "
                                  f"{', '.join(controlnet_preprocessors.PREPROCESSORS)}")
    return unit


def units_from_args(args) -> list[UnitArgs]:
    """The script's arguments (one per unit; a single list of units is accepted too)."""
    args = list(args or [])
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    return [parse_unit(a, i) for i, a in enumerate(args)]


def _picture(value, what: str) -> Image.Image | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
        return _picture(value, what)
    if isinstance(value, np.ndarray):
        return Image.fromarray(value.astype(np.uint8))
    return image_io.decode_image(value, what)


def unit_pictures(unit: UnitArgs, index: int) -> tuple[Image.Image | None, Image.Image | None]:
    """(picture, mask) of a unit: ``image`` may be a picture or ``{"image": ..., "mask": ...}``."""
    image, mask = unit.image, unit.mask
    if isinstance(image, (list, tuple)) and image and isinstance(image[0], dict):
        image = image[0]
    if isinstance(image, dict):
        mask = image.get("mask", mask)
        image = image.get("image")
    what = f"{FIELD}.controlnet.args[{index}]"
    return _picture(image, what + ".image"), _picture(mask, what + ".mask")


def detect(module: str, picture: Image.Image, mask: Image.Image | None = None, *, resolution=-1,
           threshold_a=-1, threshold_b=-1) -> np.ndarray:
    """Run a preprocessor on a picture (and mask): the map, (H, W, 3) or (H, W, 4) uint8."""
    pre = controlnet_preprocessors.find(module)
    if pre is None:
        raise RequestError("controlnet_module", f"Module {module} not available")
    array = np.asarray(picture.convert("RGB"))
    if pre.accepts_mask:
        if mask is None:
            raise RequestError("controlnet_masks", f"Preprocessor {module} requires a mask")
        alpha = np.asarray(mask.convert("L").resize(picture.size, Image.NEAREST))
        array = np.concatenate([array, alpha[:, :, None]], axis=2)
    try:
        return pre(array, resolution, threshold_a, threshold_b)
    except ValueError as exc:
        raise RequestError("controlnet_module", str(exc)) from None


def prepare_job(units: list[UnitArgs], *, width: int, height: int, init_image: Image.Image | None = None,
                init_mask: Image.Image | None = None, registry: ControlNets | None = None,
                ) -> tuple[controlnet.ControlJob, dict[str, str]]:
    """The enabled units ready to run (preprocessed, models loaded) and their infotext entries."""
    registry = registry or get()
    ready, infotext = [], {}
    for index, unit in enumerate(units):
        if not unit.enabled:
            continue
        name = f"ControlNet {index}"
        found = registry.find(unit.model)
        if found is None:
            known = ", ".join(registry.titles()) or "none"
            raise RequestError(FIELD, f"{name}: model({unit.model}) not found; ControlNet models here: {known}")
        title, path = found
        picture, mask = unit_pictures(unit, index)
        if picture is None:  # the extension: img2img's picture (and its inpainting mask) when the unit has none
            picture, mask = init_image, mask if mask is not None else init_mask
        if picture is None:
            raise RequestError(FIELD, f"{name}: ControlNet is enabled but no input image is given")
        pre = controlnet_preprocessors.find(unit.module)
        resolution = unit.processor_res
        if unit.pixel_perfect and pre.resolution is not None:
            resolution = controlnet_preprocessors.pixel_perfect_resolution(
                picture.height, picture.width, height, width, unit.resize_mode)
        detected = detect(unit.module, picture, mask, resolution=resolution, threshold_a=unit.threshold_a,
                          threshold_b=unit.threshold_b)
        try:
            built = registry.load(path)
        except (CheckpointError, UnsupportedCheckpoint) as exc:
            raise RequestError(FIELD, f"{name}: {path.name}: {exc}") from None
        ready.append(controlnet.ControlUnit(built, detected, weight=unit.weight, guidance_start=unit.guidance_start,
                                            guidance_end=unit.guidance_end, control_mode=unit.control_mode,
                                            resize_mode=unit.resize_mode, name=name))
        unit.model = title
        unit.settle()
        infotext[name] = unit.serialize()
    return controlnet.ControlJob(ready), infotext


def parse_infotext_value(text: str) -> dict:
    """``Module: canny, Model: x [h], Weight: 1.0, ...`` -> {"module": "canny", "model": ..., ...}
    with the extension's value parsing (True/False, int, float, else the text)."""
    out = {}
    for item in str(text).split(","):
        key, sep, value = item.strip().partition(": ")
        if not sep:
            continue
        value = value.strip()
        field = "_".join(w.lower() for w in key.split(" "))
        if value in ("True", "False"):
            out[field] = value == "True"
            continue
        for kind in (int, float):
            try:
                out[field] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[field] = value
    return out
