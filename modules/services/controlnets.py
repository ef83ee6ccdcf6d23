"""ControlNet models in A1111's folders, and sd-webui-controlnet's units turned into a core ControlJob.

**Models**: every ``.safetensors``/``.pth``/``.pt``/``.ckpt``/``.bin`` under ``models/ControlNet``
(subfolders too) and ``--controlnet-dir``, named as the extension names them: ``stem [hash]`` with
A1111's short file hash. A unit's ``model`` may be that title, the stem alone, or any case of them.
A file is read with weights only when a job first uses it, and kept built on the device (the few
last used). T2I-Adapter files (``t2iadapter_canny_sd14v1.pth``, ``t2i-adapter_diffusers_xl_*``) sit
in the same folders and lists, and run through the same units, as in the extension; so do IP-Adapter
files (``ip-adapter_sd15.pth``, ``ip-adapter-plus_sd15.safetensors``, ...), whose unit's picture the
``ip-adapter_clip_sd15`` / ``ip-adapter_clip_sdxl_plus_vith`` / ``ip-adapter_clip_sdxl`` preprocessor's
CLIP vision file (``clip_vision/clip_h.pth`` or ``clip_g.pth`` under the annotator folder, or a ComfyUI
``CLIP-ViT-H-14*`` / ``CLIP-ViT-bigG-14*`` safetensors in ``models/clip_vision``) encodes into image
tokens when the job starts. FaceID IP-Adapters (``ip-adapter-faceid_sd15.bin``, ``-plusv2``, ``_sdxl``)
read the largest face's embedding found by the ``ip-adapter_face_id`` / ``ip-adapter_face_id_plus`` module
(insightface's buffalo_l files under the annotator folder: ``modules.core.face_analysis``; plus: and the
picture's ``clip_h.pth`` features); a FaceID file with another module, or a CLIP one with a face module,
is refused. Control-LoRA files (``control-lora-canny-rank128.safetensors``, ...) are
built on the job's checkpoint (``prepare_job``'s ``model``), once per file version and checkpoint.

**Units** (``units_from_args``): the extension's unit fields and value forms, as API clients send
them in ``alwayson_scripts.controlnet.args``: dicts (or objects) with ``enabled``, ``module``,
``model``, ``weight``, ``image`` (base64, a data URL, ``{"image": ..., "mask": ...}``, a PIL
picture or an array), ``mask`` / ``mask_image``, ``resize_mode`` (name, old alias or 0/1/2),
``processor_res``, ``threshold_a``/``threshold_b`` (-1 or out of range: the preprocessor's
default), ``guidance_start``/``guidance_end``, ``pixel_perfect``, ``control_mode`` (name or 0/1/2);
the deprecated ``guidance``, ``lowvram``, ``input_image`` aliases too. ``prepare_job`` preprocesses
the enabled ones for the job's size and loads their models.

**Annotator files**: the preprocessors that run a network read the extension's annotator files
from ``MODELS_DIR/ControlNetPreprocessor/<folder>/<file>`` (the layout of the extension's
``annotator/downloads``; ``--controlnet-annotator-models-path`` as in the extension). Easel downloads
none of them: a unit or ``/controlnet/detect`` asking for one whose files are missing gets a 422
naming the files and the folder they go in. The networks Easel has (HED, PiDiNet, M-LSD, the
lineart ones, MiDaS and Depth Anything: ``modules.core.controlnet_preprocessors``) run from the
user's files; the others are refused even with their files in place, saying Easel has no such
network.

**Reference** units (``reference_only``, ``reference_adain``, ``reference_adain+attn``) need no model:
their ``model`` is ignored ("None", as the extension sends it) and their picture guides the UNet
itself (``modules.core.controlnet_reference``), with the Style Fidelity slider as ``threshold_a``.

**Revision** units (``revision_clipvision``, ``revision_ignore_prompt``; SDXL) need no model either:
their picture's CLIP-G embedding (``clip_g.pth``) becomes the pooled prompt embedding
(``modules.core.controlnet.Revision``). **Recolor** units' gray maps are written into the decoded
pictures (``recolor_feeds`` + ``controlnet.recolor``, by the script's postprocess).

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

import cv2
import numpy as np
import torch
from PIL import Image

from modules.core import controlnet, controlnet_model, controlnet_preprocessors, image_io, memory
from modules.core import controlnet_colorfix, controlnet_reference, face_analysis, ip_adapter
from modules.core import control_lora
from modules.core.checkpoint_file import CheckpointError
from modules.core.controlnet_colorfix import ColorFix
from modules.core.checkpoint_shapes import UnsupportedCheckpoint
from modules.core.ip_adapter import IPAdapterFile
from modules.core.t2i_adapter import AdapterFile
from modules.core.types import RequestError

API_VERSION = 3  # /controlnet/version: the extension's external_code.get_api_version()
EXTENSIONS = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")
DEFAULT_UNIT_COUNT = 3
ANNOTATOR_FOLDER = "ControlNetPreprocessor"  # under MODELS_DIR; the extension's annotator/downloads
EXTENSION_ANNOTATOR_DIR = "extensions/sd-webui-controlnet/annotator/downloads"
CLIP_VISION_FOLDER = "clip_vision"  # under MODELS_DIR: ComfyUI's CLIP vision encoders
# an annotator CLIP vision file -> (ComfyUI's name of the encoder, the words that name it among its files)
CLIP_VISION_NAMES = {controlnet_preprocessors.CLIP_VISION_H: ("CLIP-ViT-H-14", ("clip_h", "vit-h")),
                     controlnet_preprocessors.CLIP_VISION_G: ("CLIP-ViT-bigG-14", ("clip_g", "vit-bigg", "vit-g"))}
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
                 keep: int = 3, annotator_dir: Path | None = None):
        self.folders = [Path(f) for f in folders]
        # the preprocessors' annotator files: by default beside models/ControlNet
        self.annotator_dir = Path(annotator_dir) if annotator_dir else (
            self.folders[0].parent / ANNOTATOR_FOLDER if self.folders else Path(ANNOTATOR_FOLDER))
        self.clip_vision_dir = self.folders[0].parent / CLIP_VISION_FOLDER if self.folders else Path(CLIP_VISION_FOLDER)
        self.device, self.dtype, self.keep = torch.device(device), dtype, keep
        self._titles: dict[str, Path] = {}
        self._hashes: dict[tuple[str, float, int], str] = {}
        self._built: OrderedDict[tuple[str, float], controlnet_model.ControlNetFile | AdapterFile | IPAdapterFile] \
            = OrderedDict()
        self._clip: tuple[tuple[str, float], torch.nn.Module] | None = None  # the last CLIP vision model used
        self._control_loras: set[tuple[str, float]] = set()  # the file versions that are Control-LoRAs
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

    def annotator_file(self, weight: str) -> Path | None:
        """Where an annotator file is: ``annotator_dir/<weight>``, or for a CLIP vision encoder a ComfyUI
        file of models/clip_vision naming the same encoder; None: nowhere."""
        path = self.annotator_dir / weight
        if path.is_file():
            return path
        words = CLIP_VISION_NAMES.get(weight, ("", ()))[1]
        if words and self.clip_vision_dir.is_dir():
            for found in sorted(self.clip_vision_dir.iterdir()):
                if found.is_file() and found.suffix.lower() in EXTENSIONS and any(w in found.name.lower() for w in words):
                    return found
        return None

    def clip_vision(self, path: Path) -> torch.nn.Module:
        """The CLIP vision model of ``path`` (an IP-Adapter preprocessor's file) on the device, kept built."""
        key = (str(path), path.stat().st_mtime)
        with self._lock:
            if self._clip is None or self._clip[0] != key:
                self._clip = None
                model = ip_adapter.load_clip_vision(path, self.dtype)
                self._clip = (key, memory.move(model, self.device))
            return self._clip[1]

    def load(self, path: Path, model=None) -> controlnet_model.ControlNetFile | AdapterFile | IPAdapterFile:
        """The built ControlNet, T2I-Adapter or IP-Adapter of ``path`` on the device (built once per
        file version). A Control-LoRA is built on ``model``'s UNet (the job's checkpoint), once per file
        version and checkpoint (a checkpoint loaded again is another one)."""
        key = (str(path), path.stat().st_mtime)
        base = (str(getattr(model, "path", "")), id(model))
        with self._lock:
            if key in self._control_loras:
                key += base
            if key in self._built:
                self._built.move_to_end(key)
                return self._built[key]
            built = controlnet_model.load(path, self.dtype)
            if isinstance(built, control_lora.ControlLoraFile):
                self._control_loras.add(key)
                if model is None:
                    raise UnsupportedCheckpoint("a Control-LoRA is built on the job's checkpoint; none was given")
                built, key = control_lora.build(built, model, self.dtype), key + base
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


def annotator_dir_for(opts, models_dir: Path) -> Path:
    """--controlnet-annotator-models-path (the extension's flag), else MODELS_DIR/ControlNetPreprocessor."""
    chosen = getattr(opts, "controlnet_annotator_models_path", None)
    return Path(chosen) if chosen else Path(models_dir) / ANNOTATOR_FOLDER


def weights_problem(pre: controlnet_preprocessors.Preprocessor, registry: ControlNets | None = None) -> str | None:
    """Why a preprocessor that runs a network cannot run here (None: it can): the files missing and
    the folder each goes in, or, all present, that Easel has no such network."""
    if not pre.weights:
        return None
    registry = registry or get()
    root = registry.annotator_dir
    missing = [w for w in pre.weights if registry.annotator_file(w) is None]
    if missing:
        where = "; ".join(f"put {Path(w).name} in {root / Path(w).parent}" + (
            f" (or ComfyUI's {CLIP_VISION_NAMES[w][0]} .safetensors in {registry.clip_vision_dir})"
            if w in CLIP_VISION_NAMES else "") for w in missing)
        return (f"preprocessor {pre.name} needs the annotator weights {', '.join(missing)}: {where} "
                f"(the files sd-webui-controlnet downloads into {EXTENSION_ANNOTATOR_DIR}/; Easel downloads nothing)")
    if pre.run is not None:
        return None
    return (f"preprocessor {pre.name}: its annotator weights are in {root}, but Easel has no built-in "
            f"{pre.title} network to run them; make the map elsewhere and send it with module \"none\"")


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
        (-1: not given) become its defaults (a hidden threshold slider's: 0.5 in [0, 1]). A hidden
        resolution slider keeps the extension's range for the row (``resolution_range``): 64..2048
        (512) for its legacy rows, whose preprocessors get the unit's processor_res too."""
        pre = controlnet_preprocessors.find(self.module)
        self.module = pre.name
        self.processor_res = pre.resolution_range.pick(self.processor_res)
        self.threshold_a = float((pre.slider_1 or _HIDDEN).pick(self.threshold_a))
        self.threshold_b = float((pre.slider_2 or _HIDDEN).pick(self.threshold_b))


_HIDDEN = controlnet_preprocessors.HIDDEN


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


def hr_option_name(value) -> str:
    """The extension's HiResFixOption: its value ("Low res only") or its member's name (LOW_RES_ONLY)."""
    text = str(getattr(value, "value", value))
    names = {"BOTH": "Both", "LOW_RES_ONLY": "Low res only", "HIGH_RES_ONLY": "High res only"}
    text = names.get(text.split(".")[-1].upper(), text) if text not in controlnet.HR_OPTIONS else text
    if text not in controlnet.HR_OPTIONS:
        raise ValueError(f"unknown hr_option {value!r}; known: {', '.join(controlnet.HR_OPTIONS)}")
    return text


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
        for key in ("module", "model"):
            if values.get(key) is not None:
                setattr(unit, key, str(values[key]))
        if values.get("hr_option") is not None:
            unit.hr_option = hr_option_name(values["hr_option"])
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
           threshold_a=-1, threshold_b=-1, registry: ControlNets | None = None,
           exact_resolution: bool = False, for_unit: bool = False) -> np.ndarray:
    """Run a preprocessor on a picture (and mask): the map, (H, W, 3) or (H, W, 4) uint8. A network's
    annotator files are read from the registry's ``annotator_dir``. ``resolution``: the unit's
    processor_res, settled in the row's range (``exact_resolution``: as given, pixel perfect's).
    The Revision rows give an embedding, not a map: only a unit (``for_unit``) runs them, as the
    extension's /controlnet/detect refuses them."""
    pre = controlnet_preprocessors.find(module)
    if pre is None:
        raise RequestError("controlnet_module", f"Module {module} not available")
    if pre.name in controlnet.REVISION and not for_unit:
        raise RequestError("controlnet_module", "Module not supported")
    registry = registry or get()
    problem = weights_problem(pre, registry)
    if problem:
        raise RequestError("controlnet_module", problem)
    array = np.asarray(picture.convert("RGB"))
    if pre.accepts_mask:
        if mask is None:
            raise RequestError("controlnet_masks", f"Preprocessor {module} requires a mask")
        alpha = np.asarray(mask.convert("L").resize(picture.size, Image.NEAREST))
        array = np.concatenate([array, alpha[:, :, None]], axis=2)
    try:
        return pre(array, resolution, threshold_a, threshold_b, annotator_dir=registry.annotator_dir,
                   exact_resolution=exact_resolution)
    except ValueError as exc:
        raise RequestError("controlnet_module", str(exc)) from None
    except OSError as exc:  # an annotator file that cannot be read (a bad one: CheckpointError, a ValueError)
        raise RequestError("controlnet_module", f"preprocessor {pre.name}: {exc}") from None


def prepare_job(units: list[UnitArgs], *, width: int, height: int, init_image: Image.Image | None = None,
                init_mask: Image.Image | None = None, registry: ControlNets | None = None,
                hires_height: int | None = None, model=None,
                empty_prompts: bool = False) -> tuple[controlnet.ControlJob, dict[str, str]]:
    """The enabled units ready to run (preprocessed, models loaded) and their infotext entries.
    ``hires_height``: the hires pass's picture height when the job has one (units' ``hr_option``);
    ``model``: the job's checkpoint, which Control-LoRA units are built on; ``empty_prompts``: the job's
    prompt and negative prompt are both empty (Revision units then blank the text context)."""
    registry = registry or get()
    ready, infotext = [], {}
    for index, unit in enumerate(units):
        if not unit.enabled:
            continue
        name = f"ControlNet {index}"
        problem = weights_problem(controlnet_preprocessors.find(unit.module), registry)
        if problem:
            raise RequestError(FIELD, f"{name}: module({unit.module}): {problem}")
        pre = controlnet_preprocessors.find(unit.module)
        reference = pre.name in controlnet_reference.NAMES  # model-free: the UNet itself is guided
        revision = pre.name in controlnet.REVISION  # model-free: the pooled embedding is the picture's
        found = None if reference or revision else registry.find(unit.model)
        if found is None and not (reference or revision):
            known = ", ".join(registry.titles()) or "none"
            raise RequestError(FIELD, f"{name}: model({unit.model}) not found; ControlNet models here: {known}")
        title, path = found or ("None", None)
        picture, mask = unit_pictures(unit, index)
        if picture is None:  # the extension: img2img's picture (and its inpainting mask) when the unit has none
            picture, mask = init_image, mask if mask is not None else init_mask
        if picture is None:
            raise RequestError(FIELD, f"{name}: ControlNet is enabled but no input image is given")
        # the extension: pixel perfect sets processor_res for every row, its slider shown or hidden
        resolution = controlnet_preprocessors.pixel_perfect_resolution(
            picture.height, picture.width, height, width, unit.resize_mode) if unit.pixel_perfect \
            else unit.processor_res
        try:
            detected = detect(unit.module, picture, mask, resolution=resolution, threshold_a=unit.threshold_a,
                              threshold_b=unit.threshold_b, registry=registry, exact_resolution=unit.pixel_perfect,
                              for_unit=True)
        except RequestError as exc:
            raise RequestError(FIELD, f"{name}: module({unit.module}): {exc.message}") from None
        try:
            if revision:
                built = _revision(pre, unit, detected, registry, name)
            elif reference:
                built = controlnet_reference.Reference(pre.name, float(pre.slider_1.pick(unit.threshold_a)))
            else:
                built = registry.load(path, model)
        except (CheckpointError, UnsupportedCheckpoint) as exc:
            raise RequestError(FIELD, f"{name}: {path.name}: {exc}") from None
        tokens = _image_tokens(built, pre, detected, registry, name) if isinstance(built, IPAdapterFile) else None
        ready.append(controlnet.ControlUnit(built, detected, weight=unit.weight, guidance_start=unit.guidance_start,
                                            guidance_end=unit.guidance_end, control_mode=unit.control_mode,
                                            resize_mode=unit.resize_mode, name=name, hr_option=unit.hr_option,
                                            colorfix=_colorfix(pre, unit), image_tokens=tokens,
                                            noise_from_map=pre.name == "inpaint_only+lama"))
        unit.model = title
        unit.settle()
        infotext[name] = unit.serialize()
    job = controlnet.ControlJob(ready, first_height=height if hires_height else None, hires_height=hires_height or None,
                                empty_prompts=empty_prompts)
    return job, infotext


def _revision(pre: controlnet_preprocessors.Preprocessor, unit: UnitArgs, detected: np.ndarray,
              registry: ControlNets, name: str) -> controlnet.Revision:
    """A Revision unit's embedding: its picture through clip_g.pth (present: ``weights_problem`` has
    checked), noise-augmented by the Noise Augmentation slider (``threshold_a``)."""
    clip_file = controlnet_preprocessors.CLIP_VISION_G
    try:
        clip = registry.clip_vision(registry.annotator_file(clip_file))
        embedding = controlnet.revision_embedding(clip, detected, float(pre.slider_1.pick(unit.threshold_a)))
    except (CheckpointError, UnsupportedCheckpoint, ValueError) as exc:
        raise RequestError(FIELD, f"{name}: module({pre.name}): {Path(clip_file).name}: {exc}") from None
    return controlnet.Revision(pre.name, embedding)


def _image_tokens(adapter: IPAdapterFile, pre: controlnet_preprocessors.Preprocessor, detected: np.ndarray,
                  registry: ControlNets, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """An IP-Adapter unit's (conditional, unconditional) image tokens: its picture through the CLIP
    vision file of its preprocessor (present: ``weights_problem`` has checked) and the projection; a
    FaceID one's: the face embedding of ``ip-adapter_face_id`` (FaceID plus: ``ip-adapter_face_id_plus``,
    the embedding and the picture's CLIP-H features), as the extension pairs them."""
    clip_file = next((w for w in pre.weights if w.startswith("clip_vision/")), None)
    face_module = {"faceid": "ip-adapter_face_id", "faceid_plus": "ip-adapter_face_id_plus"}.get(adapter.kind)
    if face_module or pre.name in FACE_ID_MODULES:
        if pre.name != face_module:
            wants = face_module or "ip-adapter_clip_sd15, ip-adapter_clip_sdxl_plus_vith or ip-adapter_clip_sdxl"
            raise RequestError(FIELD, f"{name}: the IP-Adapter {adapter.path.name} needs the module {wants}; "
                                      f"got module({pre.name})")
        return _face_tokens(adapter, pre, detected, registry, name, clip_file)
    if clip_file is None:
        raise RequestError(FIELD, f"{name}: the IP-Adapter {adapter.path.name} needs a module that encodes the "
                                  f"picture (ip-adapter_clip_sd15, ip-adapter_clip_sdxl_plus_vith, "
                                  f"ip-adapter_clip_sdxl); got module({pre.name})")
    try:
        clip = registry.clip_vision(registry.annotator_file(clip_file))
        return ip_adapter.image_tokens(adapter, clip, Image.fromarray(np.ascontiguousarray(detected[:, :, :3])))
    except (CheckpointError, UnsupportedCheckpoint, ValueError) as exc:
        raise RequestError(FIELD, f"{name}: module({pre.name}): {Path(clip_file).name}: {exc}") from None


FACE_ID_MODULES = ("ip-adapter_face_id", "ip-adapter_face_id_plus")


def _face_tokens(adapter: IPAdapterFile, pre: controlnet_preprocessors.Preprocessor, detected: np.ndarray,
                 registry: ControlNets, name: str, clip_file: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A FaceID unit's tokens: the picture's largest face's normed buffalo_l embedding (the preprocessor
    has found it; the analysis is kept), through the adapter's projection."""
    picture = np.ascontiguousarray(detected[:, :, :3])
    face_files = [registry.annotator_file(w) for w in face_analysis.BUFFALO_L_FILES]
    current = face_analysis.BUFFALO_L_FILES[0]
    try:
        embedding = face_analysis.face_id_embedding(picture, face_files)
        if adapter.kind == "faceid":
            return ip_adapter.face_tokens(adapter, embedding)
        current = clip_file
        clip = registry.clip_vision(registry.annotator_file(clip_file))
        return ip_adapter.face_tokens(adapter, embedding, clip, Image.fromarray(picture))
    except (CheckpointError, UnsupportedCheckpoint, ValueError) as exc:
        raise RequestError(FIELD, f"{name}: module({pre.name}): {Path(current).name}: {exc}") from None


def _colorfix(pre: controlnet_preprocessors.Preprocessor, unit: UnitArgs) -> ColorFix | None:
    """tile_colorfix(+sharp)'s fix from the unit's sliders (out of range: the defaults)."""
    if pre.name not in controlnet_colorfix.NAMES:
        return None
    sharpness = pre.slider_2.pick(unit.threshold_b) if pre.slider_2 is not None else None
    return ColorFix(int(pre.slider_1.pick(unit.threshold_a)), sharpness)


INPAINT_ONLY = ("inpaint_only", "inpaint_only+lama")
INPAINT_BLUR_SIGMA = 7  # the extension's control_net_inpaint_blur_sigma


def inpaint_keeps(units: list[UnitArgs], *, width: int, height: int, init_image: Image.Image | None = None,
                  sigma: int = INPAINT_BLUR_SIGMA) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each enabled ``inpaint_only`` unit, what the extension pastes back over the decoded picture:
    (the unit's picture fitted to (height, width) as (H, W, 3) float in [0, 1], the weight of the
    generated pixels (H, W, 1): the mask dilated and box-blurred by ``sigma``, 0 away from it)."""
    out = []
    for index, unit in enumerate(units):
        if not unit.enabled or controlnet_preprocessors.find(unit.module) is None \
                or controlnet_preprocessors.find(unit.module).name not in INPAINT_ONLY:
            continue
        picture, mask = unit_pictures(unit, index)
        if picture is None:
            picture = init_image
        if picture is None or mask is None:
            continue
        alpha = np.asarray(mask.convert("L").resize(picture.size, Image.NEAREST))
        rgba = np.concatenate([np.asarray(picture.convert("RGB")), alpha[:, :, None]], axis=2)
        fitted = controlnet.fit_map(rgba, width, height, unit.resize_mode).astype(np.float32) / 255.0
        keep = fitted[:, :, 3]
        if sigma > 0:
            keep = cv2.blur(cv2.dilate(keep, np.ones((sigma, sigma), dtype=np.uint8)), (sigma, sigma))
        out.append((fitted[:, :, :3], keep[:, :, None].astype(np.float32)))
    return out


def recolor_feeds(units: list[UnitArgs], *, width: int, height: int,
                  init_image: Image.Image | None = None) -> list[tuple[str, np.ndarray]]:
    """For each enabled ``recolor_luminance`` / ``recolor_intensity`` unit, what the extension writes
    into the decoded (width x height) picture (``controlnet.recolor``): (the kind, "luminance" or
    "intensity"; the unit's gray map fitted to the picture as (H, W) uint8)."""
    out = []
    for index, unit in enumerate(units):
        pre = controlnet_preprocessors.find(unit.module) if unit.enabled else None
        if pre is None or pre.name not in controlnet.RECOLOR:
            continue
        picture, _mask = unit_pictures(unit, index)
        picture = picture if picture is not None else init_image
        if picture is None:
            continue
        detected = pre(np.asarray(picture.convert("RGB")), unit.processor_res, unit.threshold_a, unit.threshold_b)
        fitted = controlnet.fit_map(detected, width, height, unit.resize_mode)
        out.append((controlnet.RECOLOR[pre.name], controlnet.recolor_feed(fitted)))
    return out


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
