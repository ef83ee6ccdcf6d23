"""Settings under A1111's option names, stored in config.json.

One definition per option (default, label, section, choices); unknown keys in a
loaded config are kept (extensions' options appear later) but never invented.

Every change goes through `check` (the value's type, bounds and choices, then the command line's
locks, modules.services.option_locks): the API's POST /options and override_settings, the Settings tab, and extensions'
`shared.opts` all end up here, so a locked option is refused the same way everywhere. A stored
value an option cannot hold (NaN, infinity, out of bounds, the wrong type: a hand-edited
config.json) is replaced by the default when it is read, with a message naming the option.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from modules.core import atomic_write
from modules.core.devices import FP8_CHOICES, VAE_TILING_CHOICES
from modules.core.infotext_defaults import PASTE_KEYS
from modules.core.finite import describe, first_non_finite, replace_non_finite

from .option_locks import A1111_SECTION_IDS, section_key
from .option_locks import DIRECTORY_OPTIONS, OptionRestricted, Restrictions  # noqa: F401  (with the options)


@dataclass
class OptionDef:
    default: Any
    label: str
    section: str = "Saving images"
    choices: tuple | Callable[[], tuple] | None = None  # a function: choices that change (files on disk)
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None  # the Settings tab's slider step (a bounded number is a slider)
    component: str | None = None  # the Settings tab's control when the type does not say it: "color", "number"
    section_id: str | None = None  # A1111's id of the section (--freeze-settings-in-sections); None: from the name
    restrict: bool = False  # a folder or file name on the server: locked by --hide-ui-dir-config
    kind: type | None = None  # the value's type where the default (None) does not say it

    def __post_init__(self):
        if self.section_id is None:
            self.section_id = A1111_SECTION_IDS.get(self.section, section_key(self.section))

    def choice_list(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices


def _defs() -> dict[str, OptionDef]:
    S, G, P, U = "Saving images", "Stable Diffusion", "Live previews", "Sampler parameters"
    FACES = "Face restoration"
    return {
        "samples_save": OptionDef(True, "Always save all generated images", S),
        "samples_format": OptionDef("png", "File format for images", S, choices=("png", "jpg", "jpeg", "webp")),
        "grid_save": OptionDef(True, "Always save all generated image grids", S),
        "grid_format": OptionDef("png", "File format for grids", S, choices=("png", "jpg", "jpeg", "webp")),
        "return_grid": OptionDef(True, "Show grid in gallery", S),
        "grid_only_if_multiple": OptionDef(True, "Do not save grids consisting of one picture", S),
        "grid_prevent_empty_spots": OptionDef(False, "Prevent empty spots in grid (when set to autodetect)", S),
        "n_rows": OptionDef(-1, "Grid row count; use -1 for autodetect and 0 for it to be same as batch size", S,
                            minimum=-1, maximum=16, step=1),
        "grid_background_color": OptionDef("#ffffff", "Background color for image grids", S, component="color"),
        "jpeg_quality": OptionDef(80, "Quality for saved jpeg and webp images", S, minimum=1, maximum=100),
        "enable_pnginfo": OptionDef(True, "Save text information about generation parameters as chunks to png files", S),
        "outdir_samples": OptionDef("", "Output directory for images; if empty, defaults to three directories below", "Paths for saving", restrict=True),
        "outdir_txt2img_samples": OptionDef("outputs/txt2img-images", "Output directory for txt2img images", "Paths for saving", restrict=True),
        "outdir_img2img_samples": OptionDef("outputs/img2img-images", "Output directory for img2img images", "Paths for saving", restrict=True),
        "outdir_extras_samples": OptionDef("outputs/extras-images", "Output directory for images from extras tab", "Paths for saving", restrict=True),
        "outdir_txt2img_grids": OptionDef("outputs/txt2img-grids", "Output directory for txt2img grids", "Paths for saving", restrict=True),
        "outdir_img2img_grids": OptionDef("outputs/img2img-grids", "Output directory for img2img grids", "Paths for saving", restrict=True),
        # A1111's Save button folder and temporary files (extensions read them: images-browser, ui_common.save_files)
        "outdir_save": OptionDef("log/images", "Directory for saving images using the Save button", "Paths for saving", restrict=True),
        "save_selected_only": OptionDef(True, "When using 'Save' button, only save a single selected image", S),
        # (the 💾 / 🗃️ buttons under the gallery: modules/ui/gallery_buttons.py, ui_common.save_files)
        "use_save_to_dirs_for_ui": OptionDef(False, "When using \"Save\" button, save images to a subdirectory",
                                             "Saving to a directory"),
        "temp_dir": OptionDef("", "Directory for temporary images; leave empty for default", S, restrict=True),
        "clean_temp_dir_at_start": OptionDef(False, "Cleanup non-default temporary directory when starting webui", S),
        "sd_model_checkpoint": OptionDef(None, "Stable Diffusion checkpoint", G, kind=str),
        "sd_vae": OptionDef("Automatic", "SD VAE", G),
        "emphasis": OptionDef("Original", "Emphasis mode", G, choices=("None", "Ignore", "Original", "No norm")),
        "CLIP_stop_at_last_layers": OptionDef(1, "Clip skip", G, minimum=1, maximum=12),
        "sd_checkpoint_cache": OptionDef(0, "Checkpoints to cache in RAM", G, minimum=0, maximum=10),
        # the model cache and the VAE (modules.services.model_cache; the engine applies them before each job)
        "sd_checkpoints_limit": OptionDef(1, "Maximum number of checkpoints loaded at the same time", G,
                                          minimum=1, maximum=10, step=1),
        "sd_vae_checkpoint_cache": OptionDef(0, "VAE Checkpoints to cache in RAM", G, minimum=0, maximum=10, step=1),
        "auto_vae_precision": OptionDef(True, "Automatically revert VAE to 32-bit floats (triggers when a tensor with "
                                        "NaNs is produced in VAE; disabling the option in this case will result in a "
                                        "black square image)", G),
        "vae_tiling": OptionDef("Automatic", "Tiled VAE decode and encode (Automatic: when the picture would not fit "
                                "in memory)", G, choices=VAE_TILING_CHOICES),
        # A1111's "Optimizations": read when a checkpoint is loaded (a change reloads it at the next job)
        "fp8_storage": OptionDef("Disable", "FP8 weight (Use FP8 to store Linear/Conv layers' weight. Require "
                                 "pytorch>=2.1.0.)", "Optimizations", choices=FP8_CHOICES),
        "cache_fp16_weight": OptionDef(False, "Cache FP16 weight for LoRA (Cache fp16 weight when enabling FP8, will "
                                       "increase the quality of LoRA. Use more system ram.)", "Optimizations"),
        # A1111's token merging (ToMe, modules.core.token_merging), read at each job: 0 is off
        "token_merging_ratio": OptionDef(0.0, "Token merging ratio (0=disable, higher=faster)", "Optimizations",
                                         minimum=0.0, maximum=0.9, step=0.1),
        "token_merging_ratio_img2img": OptionDef(0.0, "Token merging ratio for img2img (only applies if non-zero and "
                                                 "overrides above)", "Optimizations", minimum=0.0, maximum=0.9, step=0.1),
        "token_merging_ratio_hr": OptionDef(0.0, "Token merging ratio for high-res pass (only applies if non-zero and "
                                            "overrides above)", "Optimizations", minimum=0.0, maximum=0.9, step=0.1),
        # the SDXL refiner (A1111 1.10: infotext "Hires refiner"; modules.core.pipeline reads these)
        "hires_fix_refiner_pass": OptionDef("second pass", "Hires fix: which pass to enable refiner for", G,
                                            choices=("first pass", "second pass", "both passes")),
        "add_model_hash_to_info": OptionDef(True, "Add model hash to infotext", "Infotext"),
        "add_model_name_to_info": OptionDef(True, "Add model name to infotext", "Infotext"),
        "add_vae_hash_to_info": OptionDef(True, "Add VAE hash to infotext", "Infotext"),
        "add_vae_name_to_info": OptionDef(True, "Add VAE name to infotext", "Infotext"),
        "add_version_to_infotext": OptionDef(True, "Add program version to infotext", "Infotext"),
        # a paste (↙️, PNG Info's send buttons, the API's `infotext`) leaves these keys out
        "infotext_skip_pasting": OptionDef([], "Disregard fields from pasted infotext", "Infotext", choices=PASTE_KEYS,
                                           kind=list),
        # a paste takes the styles' text out of the prompts and selects the styles (modules.services.styles)
        "infotext_styles": OptionDef("Apply if any", "Infer styles from prompts of pasted infotext", "Infotext",
                                     choices=("Ignore", "Apply", "Discard", "Apply if any")),
        "textual_inversion_add_hashes_to_infotext": OptionDef(True, "Add Textual Inversion hashes to infotext", "Extra Networks"),
        "lora_add_hashes_to_infotext": OptionDef(True, "Add Lora hashes to infotext", "Extra Networks"),
        "extra_networks_default_multiplier": OptionDef(1.0, "Default multiplier for extra networks", "Extra Networks", minimum=0.0, maximum=2.0, step=0.01),
        # seed + delta seeds a torch generator, which takes at most 2**64 - 1 (seeds go up to 2**32 - 1)
        "eta_noise_seed_delta": OptionDef(0, "Eta noise seed delta", U, minimum=0, maximum=2**63, component="number"),
        "randn_source": OptionDef("CPU", "Random number generator source", U, choices=("GPU", "CPU", "NV")),
        "live_previews_enable": OptionDef(True, "Show live previews of the created image", P),
        "show_progress_every_n_steps": OptionDef(10, "Live preview display period (steps)", P, minimum=-1, maximum=32),
        # A1111's "Live preview method" (modules.services.live_previews: the two that need no model call)
        "show_progress_type": OptionDef("Approx NN", "Live preview method (Approx NN and TAESD = fast, need their "
                                        "files in models/VAE-approx; Approx cheap = super fast but terrible otherwise)",
                                        P, choices=("Approx NN", "Approx cheap", "TAESD")),
        # how often the page asks for the newest preview (read when the page is built)
        "live_preview_refresh_period": OptionDef(1000, "Live preview update period, in milliseconds (read when the page "
                                                 "is built)", P,
                                                 minimum=100, maximum=10000, component="number"),
        "send_seed": OptionDef(True, "Send seed when sending prompt or image to other interface", "User interface"),
        # A1111's: the options shown above the tabs instead of in Settings (read when the page is built;
        # the checkpoint picker is always there)
        "quicksettings_list": OptionDef(["sd_model_checkpoint"], "Quicksettings list (setting entries that appear at "
                                        "the top of page rather than in settings tab; Reload UI after a change)",
                                        "User interface", kind=list, component="option_keys"),
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
        # what one request may ask for (0: no limit); the API and the UI refuse more with the field named
        "max_prompt_length": OptionDef(20000, "Longest prompt accepted, in characters (each of the prompts; 0: no limit)", "Limits", minimum=0),
        "max_job_pixels": OptionDef(2048 * 2048 * 16, "Largest job accepted, in pixels: width x height x batch size, at the hires size with hires fix (0: no limit)", "Limits", minimum=0),
        "img2img_max_input_pixels": OptionDef(4096 * 4096, "Largest init image or mask accepted, in pixels (width x height)", "img2img", minimum=4096),
        # model upscalers' tiles (A1111's "Upscaling" section; modules.services.upscalers reads them at each run)
        "ESRGAN_tile": OptionDef(192, "Tile size for ESRGAN upscalers.", "Upscaling", minimum=0, maximum=512, step=16),
        "ESRGAN_tile_overlap": OptionDef(8, "Tile overlap for ESRGAN upscalers.", "Upscaling", minimum=0, maximum=48, step=1),
        "DAT_tile": OptionDef(192, "Tile size for DAT upscalers.", "Upscaling", minimum=0, maximum=512, step=16),
        "DAT_tile_overlap": OptionDef(8, "Tile overlap for DAT upscalers.", "Upscaling", minimum=0, maximum=48, step=1),
        # A1111's "Face restoration" section (modules.services.face_restorers; restore_faces sets the first per job)
        "face_restoration": OptionDef(False, "Restore faces", FACES, section_id="face-restoration"),
        "face_restoration_model": OptionDef("CodeFormer", "Face restoration model", FACES, section_id="face-restoration",
                                            choices=("CodeFormer", "GFPGAN")),
        "code_former_weight": OptionDef(0.5, "CodeFormer weight (0 = maximum effect; 1 = minimum effect)", FACES, section_id="face-restoration",
                                        minimum=0.0, maximum=1.0, step=0.01),
        "face_restoration_unload": OptionDef(False, "Move face restoration model from VRAM into RAM after processing",
                                             FACES, section_id="face-restoration"),
        # --- file names and folders (A1111 1.10's "Saving images/grids", "Paths for saving", "Saving to a
        # directory"; used by modules.core.saving through GenerationSettings, tags: modules.core.filename_pattern)
        "samples_filename_pattern": OptionDef("", "Images filename pattern", S, restrict=True),
        "save_images_add_number": OptionDef(True, "Add number to filename when saving", S),
        "save_images_replace_action": OptionDef("Replace", "Saving the image to an existing file", S, choices=("Replace", "Add number suffix")),
        "grid_extended_filename": OptionDef(False, "Add extended info (seed, prompt) to filename when saving grid", S),
        "webp_lossless": OptionDef(False, "Use lossless compression for webp images", S),
        "export_for_4chan": OptionDef(True, "Save copy of large images as JPG", S),
        "img_downscale_threshold": OptionDef(4.0, "File size limit for the above option, MB", S, minimum=0.0, maximum=10000.0,
                                             component="number"),
        "target_side_length": OptionDef(4000, "Width/height limit for the above option, in pixels", S, minimum=1, maximum=65535,
                                        component="number"),
        "save_txt": OptionDef(False, "Create a text file with infotext next to every generated image", "Infotext"),
        "outdir_grids": OptionDef("", "Output directory for grids; if empty, defaults to two directories below", "Paths for saving", restrict=True),
        "save_to_dirs": OptionDef(True, "Save images to a subdirectory", "Saving to a directory"),
        "grid_save_to_dirs": OptionDef(True, "Save grids to a subdirectory", "Saving to a directory"),
        "directories_filename_pattern": OptionDef("[date]", "Directory name pattern", "Saving to a directory", restrict=True),
        "directories_max_prompt_words": OptionDef(8, "Max prompt words for [prompt_words] pattern", "Saving to a directory", minimum=1, maximum=20, step=1),
        **_sampler_parameter_defs(U),
        # (sections of their own, last: the Settings tab lists sections in the order they first appear)
        "sdxl_crop_top": OptionDef(0, "crop top coordinate", "Stable Diffusion XL", component="number", section_id="sdxl",
                                   minimum=0, maximum=16384),
        "sdxl_crop_left": OptionDef(0, "crop left coordinate", "Stable Diffusion XL", component="number", section_id="sdxl",
                                    minimum=0, maximum=16384),
        "sdxl_refiner_low_aesthetic_score": OptionDef(2.5, "SDXL low aesthetic score", "Stable Diffusion XL",
                                                      component="number", section_id="sdxl", minimum=0.0, maximum=100.0),
        "sdxl_refiner_high_aesthetic_score": OptionDef(6.0, "SDXL high aesthetic score", "Stable Diffusion XL",
                                                       component="number", section_id="sdxl", minimum=0.0, maximum=100.0),
        "refiner_switch_by_sample_steps": OptionDef(False, "Switch to refiner by sampling steps instead of model timesteps. Old behavior for refiner.", "Compatibility"),
    }


def _sampler_parameter_defs(U: str) -> dict[str, OptionDef]:
    """A1111 1.10's "Sampler parameters" (modules.core.sampler_options: what each does and when the
    infotext names it). Not here: ddim_discretize, uni_pc_skip_type and skip_early_cond (not
    implemented), the "vary_coeff" UniPC variant (likewise)."""
    from modules.core.samplers import SAMPLER_NAMES

    return {
        # the UI's sampler lists only (A1111: /sdapi/v1/samplers still lists every sampler)
        "hide_samplers": OptionDef([], "Hide samplers in user interface", U, choices=tuple(SAMPLER_NAMES), kind=list),
        "eta_ddim": OptionDef(0.0, "Eta for DDIM", U, minimum=0.0, maximum=1.0, step=0.01),
        "eta_ancestral": OptionDef(1.0, "Eta for k-diffusion samplers", U, minimum=0.0, maximum=1.0, step=0.01),
        "s_churn": OptionDef(0.0, "sigma churn", U, minimum=0.0, maximum=100.0, step=0.01),
        "s_tmin": OptionDef(0.0, "sigma tmin", U, minimum=0.0, maximum=10.0, step=0.01),
        "s_tmax": OptionDef(0.0, "sigma tmax", U, minimum=0.0, maximum=999.0, step=0.01),
        "s_noise": OptionDef(1.0, "sigma noise", U, minimum=0.0, maximum=1.1, step=0.001),
        "sigma_min": OptionDef(0.0, "sigma min", U, minimum=0.0, maximum=1000.0, component="number"),
        "sigma_max": OptionDef(0.0, "sigma max", U, minimum=0.0, maximum=1000.0, component="number"),
        "rho": OptionDef(0.0, "rho", U, minimum=0.0, maximum=100.0, component="number"),
        "always_discard_next_to_last_sigma": OptionDef(False, "Always discard next-to-last sigma", U),
        "sgm_noise_multiplier": OptionDef(False, "SGM noise multiplier", U),
        "uni_pc_variant": OptionDef("bh1", "UniPC variant", U, choices=("bh1", "bh2")),
        "uni_pc_order": OptionDef(3, "UniPC order", U, minimum=1, maximum=50, step=1),
        "uni_pc_lower_order_final": OptionDef(True, "UniPC lower order final", U),
        "beta_dist_alpha": OptionDef(0.6, "Beta scheduler - alpha", U, minimum=0.01, maximum=1.0, step=0.01),
        "beta_dist_beta": OptionDef(0.6, "Beta scheduler - beta", U, minimum=0.01, maximum=1.0, step=0.01),
        "sd_noise_schedule": OptionDef("Default", "Noise schedule for sampling", U, choices=("Default", "Zero Terminal SNR")),
    }


class Options:
    def __init__(self, path: Path | None, defs: dict[str, OptionDef] | None = None,
                 restrictions: Restrictions | None = None):
        self.path = path
        self.defs = defs or _defs()
        self.restrictions = restrictions or Restrictions()
        self.data: dict[str, Any] = {k: d.default for k, d in self.defs.items()}
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self._lock = threading.RLock()  # every change and every save: a save writes one consistent state
        if path is not None and path.is_file():
            self.load()

    def load(self) -> None:
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # unreadable, not JSON, not text, numbers too long
            # keep defaults; a broken config must not stop the server
            print(f"[options] could not read {self.path}: {exc}; using defaults")
            return
        if not isinstance(stored, dict):
            print(f"[options] {self.path} holds no settings (a JSON object); using defaults")
            return
        with self._lock:
            self.data.update(stored)
            for key in stored:
                self.repair(key)

    def repair(self, key: str) -> None:
        """Replace a stored value the option cannot hold (NaN, infinity, out of bounds, the wrong
        type) by its default, saying so; a NaN under a name with no definition yet is dropped.
        Choices are not checked: what they are may depend on files and extensions present later."""
        with self._lock:
            if key not in self.data:
                return
            value = self.data[key]
            try:
                self.data[key] = self.validate(key, value, choices=False)
                return
            except ValueError as exc:
                reason = exc
            d = self.defs.get(key)
            where = self.path.name if self.path is not None else "settings"
            if d is None:
                del self.data[key]
                print(f"[options] {where}: dropped {key} ({reason})")
            else:
                self.data[key] = d.default
                print(f"[options] {where}: {reason}; using the default {d.default!r} instead")

    def save(self) -> None:
        """Write config.json whole or not at all (a unique temporary file, then a rename), one save
        at a time. Strict JSON: a NaN that reached `data` directly is written as null (and read
        back as the default). --freeze-settings: nothing is written (A1111 refuses to save)."""
        if self.path is None or self.restrictions.freeze_all:
            return
        with self._lock:
            atomic_write.write_text(self.path, self.dumps())

    def dumps(self) -> str:
        """config.json's text: the values as strict JSON (a NaN or infinity as null)."""
        with self._lock:
            return json.dumps(replace_non_finite(dict(self.data)), indent=4, ensure_ascii=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def validate(self, key: str, value: Any, choices: bool = True) -> Any:
        """Returns the value coerced to the option's type, or raises ValueError naming the option.
        NaN and infinity are never a value, whatever the option (they pass every bound)."""
        found = first_non_finite(value)
        if found is not None:
            where = f" (at {found[0]})" if found[0] else ""
            raise ValueError(f"option {key} must be a finite number, got {describe(found[1])}{where}")
        d = self.defs.get(key)
        if d is None:
            return value
        if d.default is not None and value is None:
            raise ValueError(f"option {key} needs a value")
        kind = type(d.default) if d.default is not None else d.kind
        if kind is not None and value is not None:
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                try:
                    value = float(value)
                except OverflowError:
                    raise ValueError(f"option {key} is too large") from None
            if kind is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"option {key} must be {kind.__name__}, got {type(value).__name__}")
        listed = d.choice_list() if choices else None
        if listed and isinstance(value, list):  # several of the choices (hide_samplers)
            unknown = [v for v in value if v not in listed]
            if unknown:
                raise ValueError(f"option {key} takes only {', '.join(map(str, listed))}; not {', '.join(map(str, unknown))}")
        elif listed and value not in listed:
            raise ValueError(f"option {key} must be one of {', '.join(map(str, listed))}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if d.minimum is not None and number and value < d.minimum:
            raise ValueError(f"option {key} must be at least {d.minimum}")
        if d.maximum is not None and number and value > d.maximum:
            raise ValueError(f"option {key} must be at most {d.maximum}")
        return value

    def refusal(self, key: str) -> OptionRestricted | None:
        """Why the command line locks `key` (whatever the value), or None."""
        return self.restrictions.refusal(key, self.defs.get(key))

    def check_allowed(self, key: str, value: Any) -> None:
        """Raise OptionRestricted when setting `key` to `value` would change a locked option. The
        value it already has is no change, and allowed (A1111's `Options.set` returns first)."""
        if key in self.data and _same(self.data[key], value):
            return
        refusal = self.refusal(key)
        if refusal is not None:
            raise refusal

    def allows(self, key: str, value: Any) -> bool:
        try:
            self.check_allowed(key, value)
        except OptionRestricted:
            return False
        return True

    def check(self, key: str, value: Any) -> Any:
        """`validate`, then the restrictions: the value to store, or ValueError naming the option
        (OptionRestricted with A1111's message for a locked one). Every change goes through here."""
        value = self.validate(key, value)
        self.check_allowed(key, value)
        return value

    def set(self, key: str, value: Any) -> bool:
        """Check, set and notify; returns True if the value changed."""
        value = self.check(key, value)
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
        with self._lock:
            self.defs[key] = definition
            self.data.setdefault(key, definition.default)
            self.repair(key)  # a value stored before the definition came (config.json)

    def as_dict(self) -> dict[str, Any]:
        """Every value, as strict JSON can carry it: a NaN or infinity that reached `data` directly
        (an extension's write) reads as the option's default, or null."""
        with self._lock:
            data = dict(self.data)
        if first_non_finite(data) is None:
            return data
        return {k: (v if first_non_finite(v) is None else
                    (self.defs[k].default if k in self.defs else replace_non_finite(v)))
                for k, v in data.items()}


def _same(old: Any, new: Any) -> bool:
    """Equal and of the same kind (True is no 1; 1 and 1.0 are the same number)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is type(new) and old == new
    try:
        return bool(old == new)
    except Exception:  # noqa: BLE001 - values that cannot be compared are different
        return False
