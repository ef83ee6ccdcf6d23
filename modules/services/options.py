"""Settings under A1111's option names, stored in config.json.

One definition per option (default, label, section, choices); unknown keys in a
loaded config are kept (extensions' options appear later) but never invented.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class OptionDef:
    default: Any
    label: str
    section: str = "Saving images"
    choices: tuple | Callable[[], tuple] | None = None  # a function: choices that change (files on disk)
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None  # the Settings tab's slider step (a bounded number is a slider)
    component: str | None = None  # the Settings tab's control when the type does not say it: "color"

    def choice_list(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices


def _defs() -> dict[str, OptionDef]:
    S, G, P, U = "Saving images", "Stable Diffusion", "Live previews", "Sampler parameters"
    return {
        "samples_save": OptionDef(True, "Always save all generated images", S),
        "samples_format": OptionDef("png", "File format for images", S, choices=("png", "jpg", "jpeg", "webp")),
        "grid_save": OptionDef(True, "Always save all generated image grids", S),
        "grid_format": OptionDef("png", "File format for grids", S, choices=("png", "jpg", "jpeg", "webp")),
        "return_grid": OptionDef(True, "Show grid in gallery", S),
        "jpeg_quality": OptionDef(80, "Quality for saved jpeg and webp images", S, minimum=1, maximum=100),
        "enable_pnginfo": OptionDef(True, "Save text information about generation parameters as chunks to png files", S),
        "outdir_samples": OptionDef("", "Output directory for images; if empty, defaults to three directories below", "Paths for saving"),
        "outdir_txt2img_samples": OptionDef("outputs/txt2img-images", "Output directory for txt2img images", "Paths for saving"),
        "outdir_img2img_samples": OptionDef("outputs/img2img-images", "Output directory for img2img images", "Paths for saving"),
        "outdir_extras_samples": OptionDef("outputs/extras-images", "Output directory for images from extras tab", "Paths for saving"),
        "outdir_txt2img_grids": OptionDef("outputs/txt2img-grids", "Output directory for txt2img grids", "Paths for saving"),
        "outdir_img2img_grids": OptionDef("outputs/img2img-grids", "Output directory for img2img grids", "Paths for saving"),
        "sd_model_checkpoint": OptionDef(None, "Stable Diffusion checkpoint", G),
        "sd_vae": OptionDef("Automatic", "SD VAE", G),
        "emphasis": OptionDef("Original", "Emphasis mode", G, choices=("None", "Ignore", "Original", "No norm")),
        "CLIP_stop_at_last_layers": OptionDef(1, "Clip skip", G, minimum=1, maximum=12),
        "sd_checkpoint_cache": OptionDef(0, "Checkpoints to cache in RAM", G, minimum=0),
        "add_model_hash_to_info": OptionDef(True, "Add model hash to infotext", "Infotext"),
        "add_model_name_to_info": OptionDef(True, "Add model name to infotext", "Infotext"),
        "add_vae_hash_to_info": OptionDef(True, "Add VAE hash to infotext", "Infotext"),
        "add_vae_name_to_info": OptionDef(True, "Add VAE name to infotext", "Infotext"),
        "add_version_to_infotext": OptionDef(True, "Add program version to infotext", "Infotext"),
        "textual_inversion_add_hashes_to_infotext": OptionDef(True, "Add Textual Inversion hashes to infotext", "Extra Networks"),
        "lora_add_hashes_to_infotext": OptionDef(True, "Add Lora hashes to infotext", "Extra Networks"),
        "extra_networks_default_multiplier": OptionDef(1.0, "Default multiplier for extra networks", "Extra Networks", minimum=0.0, maximum=2.0, step=0.01),
        "eta_noise_seed_delta": OptionDef(0, "Eta noise seed delta", U, minimum=0),
        "randn_source": OptionDef("CPU", "Random number generator source", U, choices=("GPU", "CPU", "NV")),
        "live_previews_enable": OptionDef(True, "Show live previews of the created image", P),
        "show_progress_every_n_steps": OptionDef(10, "Live preview display period (steps)", P, minimum=-1, maximum=32),
        "send_seed": OptionDef(True, "Send seed when sending prompt or image to other interface", "User interface"),
        # "None" + the localizations found (the composition root gives it modules.localization.choices)
        "localization": OptionDef("None", "Localization", "User interface", choices=("None",)),
        "img_max_size_mp": OptionDef(200, "Maximum image size, in megapixels", S, minimum=1),
        # img2img (A1111's "img2img" section), plus Easel's limit on what an upload may be
        "inpainting_mask_weight": OptionDef(1.0, "Inpainting conditioning mask strength", "img2img", minimum=0.0, maximum=1.0, step=0.01),
        "initial_noise_multiplier": OptionDef(1.0, "Noise multiplier for img2img", "img2img", minimum=0.0, maximum=1.5, step=0.001),
        "img2img_extra_noise": OptionDef(0.0, "Extra noise multiplier for img2img and hires fix", "img2img", minimum=0.0, maximum=1.0, step=0.01),
        "img2img_color_correction": OptionDef(False, "Apply color correction to img2img results to match original colors.", "img2img"),
        "img2img_fix_steps": OptionDef(False, "With img2img, do exactly the amount of steps the slider specifies.", "img2img"),
        "img2img_background_color": OptionDef("#ffffff", "With img2img, fill transparent parts of the input image with this color.", "img2img", component="color"),
        "img2img_max_input_pixels": OptionDef(4096 * 4096, "Largest init image or mask accepted, in pixels (width x height)", "img2img", minimum=4096),
    }


class Options:
    def __init__(self, path: Path | None, defs: dict[str, OptionDef] | None = None):
        self.path = path
        self.defs = defs or _defs()
        self.data: dict[str, Any] = {k: d.default for k, d in self.defs.items()}
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self._lock = threading.RLock()
        if path is not None and path.is_file():
            self.load()

    def load(self) -> None:
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            # keep defaults; a broken config must not stop the server
            print(f"[options] could not read {self.path}: {exc}; using defaults")
            return
        if isinstance(stored, dict):
            self.data.update(stored)

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=4, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def validate(self, key: str, value: Any) -> Any:
        """Returns the value coerced to the option's type, or raises ValueError."""
        d = self.defs.get(key)
        if d is None:
            return value
        if d.default is not None and value is not None:
            kind = type(d.default)
            if kind is float and isinstance(value, int):
                value = float(value)
            if kind is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"option {key} must be {kind.__name__}, got {type(value).__name__}")
        choices = d.choice_list()
        if choices and value not in choices:
            raise ValueError(f"option {key} must be one of {', '.join(map(str, choices))}")
        if d.minimum is not None and value is not None and value < d.minimum:
            raise ValueError(f"option {key} must be at least {d.minimum}")
        if d.maximum is not None and value is not None and value > d.maximum:
            raise ValueError(f"option {key} must be at most {d.maximum}")
        return value

    def set(self, key: str, value: Any) -> bool:
        """Set and notify; returns True if the value changed."""
        value = self.validate(key, value)
        with self._lock:
            if self.data.get(key) == value:
                return False
            self.data[key] = value
        for fn in self._listeners.get(key, []):
            fn()
        return True

    def onchange(self, key: str, fn: Callable[[], None]) -> None:
        self._listeners.setdefault(key, []).append(fn)

    def add(self, key: str, definition: OptionDef) -> None:
        if key in self.defs:
            raise ValueError(f"option {key} is already defined")
        self.defs[key] = definition
        self.data.setdefault(key, definition.default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.data)
