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

from . import option_sections
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
    restrict_api: bool = False  # A1111's restrict_api: not changed through the API (Settings only)

    def __post_init__(self):
        if self.section_id is None:
            self.section_id = A1111_SECTION_IDS.get(self.section, section_key(self.section))

    def choice_list(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices


# A1111's ui_reorder_categories (shared_items): the parts of the txt2img/img2img settings column
UI_REORDER_CATEGORIES = ("prompt", "image", "inpaint", "sampler", "accordions", "checkboxes", "dimensions", "cfg",
                         "denoising", "seed", "batch", "override_settings", "scripts")


def _defs() -> dict[str, OptionDef]:
    S, G, P, U = "Saving images", "Stable Diffusion", "Live previews", "Sampler parameters"
    FACES = "Face restoration"
    PE = "Prompt editing"
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
        # the labels of X/Y/Z plot's and Prompt matrix's grids (modules.core.grid_labels)
        "font": OptionDef("", "Font for image grids that have text", S),
        "grid_text_active_color": OptionDef("#000000", "Text color for image grids", S, component="color"),
        "grid_text_inactive_color": OptionDef("#999999", "Inactive text color for image grids", S, component="color"),
        "grid_background_color": OptionDef("#ffffff", "Background color for image grids", S, component="color"),
        "jpeg_quality": OptionDef(80, "Quality for saved jpeg and webp images", S, minimum=1, maximum=100),
        # (A1111 1.10: in "Infotext"; modules.core.saving, Extras)
        "enable_pnginfo": OptionDef(True, "Write infotext to metadata of the generated image", "Infotext"),
        "outdir_samples": OptionDef("", "Output directory for images; if empty, defaults to three directories below", "Paths for saving", restrict=True),
        "outdir_txt2img_samples": OptionDef("outputs/txt2img-images", "Output directory for txt2img images", "Paths for saving", restrict=True),
        "outdir_img2img_samples": OptionDef("outputs/img2img-images", "Output directory for img2img images", "Paths for saving", restrict=True),
        "outdir_extras_samples": OptionDef("outputs/extras-images", "Output directory for images from extras tab", "Paths for saving", restrict=True),
        "outdir_txt2img_grids": OptionDef("outputs/txt2img-grids", "Output directory for txt2img grids", "Paths for saving", restrict=True),
        "outdir_img2img_grids": OptionDef("outputs/img2img-grids", "Output directory for img2img grids", "Paths for saving", restrict=True),
        # A1111's Save button folder and temporary files (extensions read them: images-browser, ui_common.save_files)
        "outdir_save": OptionDef("log/images", "Directory for saving images using the Save button", "Paths for saving", restrict=True),
        "save_selected_only": OptionDef(True, "When using 'Save' button, only save a single selected image", S),
        # the Extras results' file names (modules.services.extras.save; the Upscale step's nametags)
        "use_original_name_batch": OptionDef(True, "Use original name for output filename during batch process in "
                                             "extras tab", S),
        "use_upscaler_name_as_suffix": OptionDef(False, "Use upscaler name as filename suffix in the extras tab", S),
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
        # A1111's resolve_vae order (modules.services.vaes.VaeRegistry.resolve)
        "sd_vae_overrides_per_model_preferences": OptionDef(True, "Selected VAE overrides per-model preferences (you "
                                                            "can set per-model VAE either by editing user metadata for "
                                                            "checkpoints, or by making the VAE have same name as "
                                                            "checkpoint)", G),
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
        # A1111's negative guidance minimum sigma (modules.core.denoise.UncondSkipping), read at each job
        "s_min_uncond": OptionDef(0.0, "Negative Guidance minimum sigma (skip negative prompt for some steps when the "
                                  "image is almost ready; 0=disable, higher=faster)", "Optimizations",
                                  minimum=0.0, maximum=15.0, step=0.01),
        "s_min_uncond_all": OptionDef(False, "Negative Guidance minimum sigma all steps (By default, NGMS above skips "
                                      "every other step; this makes it skip all steps)", "Optimizations"),
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
        # the embeddings' names printed when a model is loaded (modules.services.embeddings.refresh)
        "textual_inversion_print_at_load": OptionDef(False, "Print a list of Textual Inversion embeddings when "
                                                     "loading model", "Extra Networks"),
        "textual_inversion_add_hashes_to_infotext": OptionDef(True, "Add Textual Inversion hashes to infotext", "Extra Networks"),
        "lora_add_hashes_to_infotext": OptionDef(True, "Add Lora hashes to infotext", "Extra Networks"),
        # the cards of the extra networks panel (modules.ui.extra_networks.card_html, read at each showing)
        "extra_networks_card_width": OptionDef(0, "Card width for Extra Networks (in pixels; 0: the page's)",
                                               "Extra Networks", minimum=0, maximum=4096, component="number"),
        "extra_networks_card_height": OptionDef(0, "Card height for Extra Networks (in pixels; 0: the page's)",
                                                "Extra Networks", minimum=0, maximum=4096, component="number"),
        "extra_networks_card_text_scale": OptionDef(1.0, "Card text scale (1 = original size)", "Extra Networks",
                                                    minimum=0.0, maximum=2.0, step=0.01),
        "extra_networks_card_show_desc": OptionDef(True, "Show description on card", "Extra Networks"),
        "extra_networks_card_description_is_html": OptionDef(False, "Treat card description as HTML", "Extra Networks"),
        # what goes before a card's text added to the prompt (modules/ui/page.js, from window.opts)
        "extra_networks_add_text_separator": OptionDef(" ", "Extra networks separator (extra text to add before "
                                                       "<...> when adding extra network to prompt)", "Extra Networks"),
        "extra_networks_default_multiplier": OptionDef(1.0, "Default multiplier for extra networks", "Extra Networks", minimum=0.0, maximum=2.0, step=0.01),
        # seed + delta seeds a torch generator, which takes at most 2**64 - 1 (seeds go up to 2**32 - 1)
        "eta_noise_seed_delta": OptionDef(0, "Eta noise seed delta", U, minimum=0, maximum=2**63, component="number"),
        "randn_source": OptionDef("CPU", "Random number generator source", U, choices=("GPU", "CPU", "NV")),
        "live_previews_enable": OptionDef(True, "Show live previews of the created image", P),
        "show_progress_every_n_steps": OptionDef(10, "Live preview display period (steps)", P, minimum=-1, maximum=32),
        # A1111's "Live preview method" (modules.services.live_previews; Full decodes on the job's thread)
        "show_progress_type": OptionDef("Approx NN", "Live preview method (Full = slow but pretty; Approx NN and TAESD "
                                        "= fast, need their files in models/VAE-approx; Approx cheap = super fast "
                                        "but terrible otherwise)",
                                        P, choices=("Full", "Approx NN", "Approx cheap", "TAESD")),
        "live_preview_allow_lowvram_full": OptionDef(False, "Allow Full live preview method with lowvram/medvram (if "
                                                     "not, Approx NN is used instead; Full is very detrimental to "
                                                     "speed under lowvram/medvram)", P),
        "live_preview_content": OptionDef("Prompt", "Live preview subject", P,
                                          choices=("Combined", "Prompt", "Negative prompt")),
        "live_previews_image_format": OptionDef("png", "Live preview file format", P,
                                                choices=("jpeg", "png", "webp")),
        "show_progress_grid": OptionDef(True, "Show previews of all images generated in a batch as a grid", P),
        # an interrupted job's pictures decoded with the live preview method (modules.services.live_previews)
        "live_preview_fast_interrupt": OptionDef(False, "Return image with chosen live preview method on interrupt "
                                                 "(makes interrupts faster)", P),
        # how often the page asks for the newest preview (read when the page is built)
        "live_preview_refresh_period": OptionDef(1000, "Live preview update period, in milliseconds (read when the page "
                                                 "is built)", P,
                                                 minimum=100, maximum=10000, component="number"),
        # the checkpoint picker's names (modules.ui.app._titles: at its next refresh or load)
        "sd_checkpoint_dropdown_use_short": OptionDef(False, "Checkpoint dropdown: use filenames without paths "
                                                      "(models in subdirectories like photo/sd15.ckpt will be listed "
                                                      "as just sd15.ckpt)", "UI alternatives",
                                                      section_id="ui_alternatives"),
        # the Hires. fix accordion's third and fourth rows (modules.ui.txt2img; read when the page is built)
        "hires_fix_show_sampler": OptionDef(False, "Hires fix: show hires checkpoint and sampler selection (after "
                                            "Reload UI)", "UI alternatives", section_id="ui_alternatives"),
        "hires_fix_show_prompts": OptionDef(False, "Hires fix: show hires prompt and negative prompt (after Reload UI)",
                                            "UI alternatives", section_id="ui_alternatives"),
        # the send-to-img2img buttons under the galleries (modules.ui.app.sent_fields)
        "send_seed": OptionDef(True, "Send seed when sending prompt or image to other interface", "User interface"),
        "send_size": OptionDef(True, "Send size when sending prompt or image to another interface", "User interface"),
        # the txt2img/img2img tabs' results gallery (modules.ui.generation_tab: the pictures are still saved)
        "do_not_show_images": OptionDef(False, "Do not show any images in gallery", "Gallery", section_id="ui_gallery"),
        "gallery_height": OptionDef("", "Gallery height (can be any valid CSS value, for example 768px or 20em; "
                                    "after Reload UI)", "Gallery", section_id="ui_gallery"),
        # the 📂 button under the galleries (modules.ui.gallery_buttons)
        "open_dir_button_choice": OptionDef("Subdirectory", "What directory the [📂] button opens", "Gallery",
                                            section_id="ui_gallery",
                                            choices=("Output Root", "Subdirectory", "Subdirectory (even temp dir)")),
        # A1111's: the options shown above the tabs instead of in Settings (read when the page is built;
        # the checkpoint picker is always there)
        "quicksettings_list": OptionDef(["sd_model_checkpoint"], "Quicksettings list (setting entries that appear at "
                                        "the top of page rather than in settings tab; Reload UI after a change)",
                                        "User interface", kind=list, component="option_keys"),
        # "None" + the localizations found (the composition root gives it modules.localization.choices)
        "localization": OptionDef("None", "Localization", "User interface", choices=("None",)),
        # A1111's "Prompt editing" (ui_prompt_editing): read by the page (modules/ui/prompt_tools.js)
        # as window.opts, when it is loaded
        "keyedit_precision_attention": OptionDef(0.1, "Precision for (attention:1.1) when editing the prompt with "
                                                 "Ctrl+up/down", PE, minimum=0.01, maximum=0.2, step=0.001,
                                                 section_id="ui_prompt_editing"),
        "keyedit_precision_extra": OptionDef(0.05, "Precision for <extra networks:0.9> when editing the prompt with "
                                             "Ctrl+up/down", PE, minimum=0.01, maximum=0.2, step=0.001,
                                             section_id="ui_prompt_editing"),
        "keyedit_delimiters": OptionDef(r".,\/!?%^*;:{}=`~() ", "Word delimiters when editing the prompt with "
                                        "Ctrl+up/down", PE, section_id="ui_prompt_editing"),
        "keyedit_delimiters_whitespace": OptionDef(["Tab", "Carriage Return", "Line Feed"], "Ctrl+up/down whitespace "
                                                   "delimiters", PE, choices=("Tab", "Carriage Return", "Line Feed"),
                                                   kind=list, section_id="ui_prompt_editing"),
        "keyedit_move": OptionDef(True, "Alt+left/right moves prompt elements", PE, section_id="ui_prompt_editing"),
        # the token counters beside the prompts (modules.ui.prompt_tools: token_count; read when the page is built)
        "disable_token_counters": OptionDef(False, "Disable prompt token counters (after Reload UI)", PE,
                                            section_id="ui_prompt_editing"),
        "include_styles_into_token_counters": OptionDef(True, "Count tokens of enabled styles (when calculating how "
                                                        "many tokens the prompt has, also consider tokens added by "
                                                        "enabled styles)", PE, section_id="ui_prompt_editing"),
        "img_max_size_mp": OptionDef(200, "Maximum image size, in megapixels", S, minimum=1),
        # img2img (A1111's "img2img" section), plus Easel's limit on what an upload may be
        "inpainting_mask_weight": OptionDef(1.0, "Inpainting conditioning mask strength", "img2img", minimum=0.0, maximum=1.0, step=0.01),
        "initial_noise_multiplier": OptionDef(1.0, "Noise multiplier for img2img", "img2img", minimum=0.0, maximum=1.5, step=0.001),
        "img2img_extra_noise": OptionDef(0.0, "Extra noise multiplier for img2img and hires fix", "img2img", minimum=0.0, maximum=1.0, step=0.01),
        # the img2img tab's pictures, read when the page is built (modules.ui.img2img: Reload UI after a change)
        "img2img_editor_height": OptionDef(720, "Height of the image editor (in pixels; after Reload UI)", "img2img",
                                           minimum=80, maximum=1600, step=1),
        "img2img_sketch_default_brush_color": OptionDef("#ffffff", "Sketch initial brush color (default brush color "
                                                        "of img2img sketch; after Reload UI)", "img2img",
                                                        component="color"),
        "img2img_inpaint_mask_brush_color": OptionDef("#ffffff", "Inpaint mask brush color (brush color of inpaint "
                                                      "mask; after Reload UI)", "img2img", component="color"),
        "img2img_inpaint_sketch_default_brush_color": OptionDef("#ffffff", "Inpaint sketch initial brush color "
                                                                "(default brush color of img2img inpaint sketch; after "
                                                                "Reload UI)", "img2img", component="color"),
        # the img2img tab's batch: how many of its pictures the gallery shows (modules.ui.img2img)
        "img2img_batch_show_results_limit": OptionDef(32, "Show the first N batch img2img results in UI (0: disable, "
                                                      "-1: show all images. Too many images can cause lag)", "img2img",
                                                      minimum=-1, maximum=1000, step=1),
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
        # which of A1111's built-in upscaler names are listed when their file is there (modules.services.upscalers)
        "realesrgan_enabled_models": OptionDef(["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"], "Select which Real-ESRGAN "
                                               "models to show in the web UI.", "Upscaling", kind=list,
                                               choices=lambda: _builtin_upscaler_names("RealESRGAN")),
        "dat_enabled_models": OptionDef(["DAT x2", "DAT x3", "DAT x4"], "Select which DAT models to show in the web UI.",
                                        "Upscaling", kind=list, choices=lambda: _builtin_upscaler_names("DAT")),
        "set_scale_by_when_changing_upscaler": OptionDef(False, "Automatically set the Scale by factor based on the "
                                                         "name of the selected Upscaler.", "Upscaling"),
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
        # A1111's "Postprocessing" section: the Extras steps (modules.scripts_postprocessing; the Settings
        # tab offers the loaded scripts' names for the three lists)
        "postprocessing_enable_in_main_ui": OptionDef([], "Enable postprocessing operations in txt2img and img2img tabs "
                                                      "(after a restart or Reload UI)", "Postprocessing", kind=list),
        "postprocessing_disable_in_extras": OptionDef([], "Disable postprocessing operations in extras tab",
                                                      "Postprocessing", kind=list),
        "postprocessing_operation_order": OptionDef([], "Postprocessing operation order", "Postprocessing", kind=list),
        "upscaling_max_images_in_cache": OptionDef(5, "Maximum number of images in upscaling cache", "Postprocessing",
                                                   minimum=0, maximum=10, step=1),
        "postprocessing_existing_caption_action": OptionDef(
            "Ignore", "Action for existing captions (a caption file next to a saved Extras picture; Ignore = use "
            "generated; Keep = use original; Prepend/Append = combine both)", "Postprocessing",
            choices=("Ignore", "Keep", "Prepend", "Append")),
        # --- A1111's "Interrogate" (DeepBooru and BLIP + CLIP: modules.services.interrogator)
        "interrogate_keep_models_in_memory": OptionDef(False, "Keep models in VRAM", "Interrogate"),
        "interrogate_return_ranks": OptionDef(False, "Include ranks of model tags matches in results. (booru only)",
                                              "Interrogate"),
        "interrogate_clip_num_beams": OptionDef(1, "BLIP: num_beams", "Interrogate", minimum=1, maximum=16, step=1),
        "interrogate_clip_min_length": OptionDef(24, "BLIP: minimum description length", "Interrogate",
                                                 minimum=1, maximum=128, step=1),
        "interrogate_clip_max_length": OptionDef(48, "BLIP: maximum description length", "Interrogate",
                                                 minimum=1, maximum=256, step=1),
        "interrogate_clip_dict_limit": OptionDef(1500, "CLIP: maximum number of lines in text file (0 = No limit)",
                                                 "Interrogate", minimum=0, component="number"),
        # choices: the lists in the interrogate folder (set by webui.py)
        "interrogate_clip_skip_categories": OptionDef([], "CLIP: skip inquire categories", "Interrogate", kind=list),
        "interrogate_deepbooru_score_threshold": OptionDef(0.5, "deepbooru: score threshold", "Interrogate",
                                                           minimum=0.0, maximum=1.0, step=0.01),
        "deepbooru_sort_alpha": OptionDef(True, "deepbooru: sort tags alphabetically (if not: sort by score)",
                                          "Interrogate"),
        "deepbooru_use_spaces": OptionDef(True, "deepbooru: use spaces in tags (if not: use underscores)", "Interrogate"),
        "deepbooru_escape": OptionDef(True, "deepbooru: escape (\\) brackets (so they are used as literal brackets "
                                      "and not for emphasis)", "Interrogate"),
        "deepbooru_filter_tags": OptionDef("", "deepbooru: filter out those tags (separate by comma)", "Interrogate"),
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
        # --- A1111 1.10's copies and masks on the way (modules.core.pipeline, modules.core.img2img; issue 13)
        "save_images_before_face_restoration": OptionDef(False, "Save a copy of image before doing face restoration.", S),
        "save_images_before_highres_fix": OptionDef(False, "Save a copy of image before applying highres fix.", S),
        "save_images_before_color_correction": OptionDef(False, "Save a copy of image before applying color "
                                                         "correction to img2img results", S),
        "save_mask": OptionDef(False, "For inpainting, save a copy of the greyscale mask", S),
        "save_mask_composite": OptionDef(False, "For inpainting, save a masked composite", S),
        "save_init_img": OptionDef(False, "Save init images when using img2img", S),
        # the 💾 / 🗃️ buttons (modules.ui_common.save_files)
        "save_write_log_csv": OptionDef(True, "Write log.csv when saving images using 'Save' button", S),
        "grid_zip_filename_pattern": OptionDef("", "Archive filename pattern", S),
        "save_incomplete_images": OptionDef(False, "Save incomplete images (save images that has been interrupted in "
                                            "mid-generation; even if not saved, they will still show up in webui "
                                            "output.)", S),
        "outdir_init_images": OptionDef("outputs/init-images", "Directory for saving init images when using img2img",
                                        "Paths for saving", restrict=True),
        "return_mask": OptionDef(False, "For inpainting, include the greyscale mask in results for web", "img2img"),
        "return_mask_composite": OptionDef(False, "For inpainting, include masked composite in results for web", "img2img"),
        "overlay_inpaint": OptionDef(True, "Overlay original for inpaint (when inpainting, overlay the original image "
                                     "over the areas that weren't inpainted.)", "img2img"),
        # the UI's logged-in user (--gradio-auth), as A1111 (the API's jobs have none)
        "add_user_name_to_info": OptionDef(False, "Add user name to infotext when authenticated", "Infotext"),
        # the API's `infotext` (the UI's paste sets no checkpoint either way)
        "disable_weights_auto_swap": OptionDef(True, "Disregard checkpoint information from pasted infotext (when "
                                               "reading generation parameters from text into UI)", "Infotext"),
        # enlarges img2img's init images (modules.core.img2img; None: Lanczos), as A1111's resize_image
        "upscaler_for_img2img": OptionDef(None, "Upscaler for img2img", "Upscaling", kind=str, choices=_image_upscalers),
        "comma_padding_backtrack": OptionDef(20, "Prompt word wrap length limit (in tokens - for texts shorter than "
                                             "specified, if they don't fit into 75 token limit, move them to the next "
                                             "75 token chunk)", G, minimum=0, maximum=74, step=1),
        "sdxl_clip_l_skip": OptionDef(False, "Clip skip SDXL (Enable Clip skip for the secondary clip model in sdxl. "
                                      "Has no effect on SD 1.5 or SD 2.0/2.1.)", G),
        "enable_console_prompts": OptionDef(False, "Print prompts to console when generating with txt2img and img2img.",
                                            "System"),
        "samples_log_stdout": OptionDef(False, "Always print all generation info to standard output", "System"),
        "multiple_tqdm": OptionDef(True, "Add a second progress bar to the console that shows progress for an entire "
                                   "job.", "System"),
        # a tqdm bar on stderr over a model upscaler's tiles (modules.services.upscalers)
        "enable_upscale_progressbar": OptionDef(True, "Show a progress bar in the console for tiled upscaling.",
                                                "System"),
        # the model lists walk into folders named ".something" or not (checkpoints, LoRA, hypernetworks,
        # upscalers: the ones A1111 finds with shared.walk_files)
        "list_hidden_files": OptionDef(True, "Load models/files in hidden directories (directory is hidden if its "
                                       "name starts with \".\")", "System"),
        # the Extensions tab's "Extension index URL" (A1111's default; the tab remembers the last one loaded)
        "extensions_index_url": OptionDef("https://raw.githubusercontent.com/AUTOMATIC1111/stable-diffusion-webui-"
                                          "extensions/master/index.json", "Extension index URL (https://, file:// or "
                                          "a path to an index.json)", "System"),
        # --- A1111 1.10's fourth batch (issue 13)
        # webui.launch_browser, once the server listens (never under CI or pytest)
        "auto_launch_browser": OptionDef("Local", "Automatically open webui in browser on startup", "System",
                                         choices=("Disable", "Local", "Remote")),
        # webui.show_warnings: Python's UserWarnings on the console or not
        "show_warnings": OptionDef(False, "Show warnings in console. (after a restart)", "System"),
        # the page (modules/ui/page.js, from window.opts): the tab's title, the bar over the gallery,
        # the sound at a job's end (notification.mp3 of the install, through /file=), the screen's wake lock
        "show_progress_in_title": OptionDef(True, "Show generation progress in window title.", "User interface"),
        "show_progressbar": OptionDef(True, "Show progressbar (after Reload UI)", P),
        "prevent_screen_sleep_during_generation": OptionDef(True, "Prevent screen sleep during generation", P),
        "notification_audio": OptionDef(True, "Play notification sound after image generation (notification.mp3 "
                                        "should be present in the root directory)", S),
        "notification_volume": OptionDef(100, "Notification sound volume (in %)", S, minimum=0, maximum=100, step=1),
        # the page's Interrupt (modules.ui.generation_tab.stop_after_current); the API's /interrupt stops at once
        "interrupt_after_current": OptionDef(True, "Don't Interrupt in the middle (when using Interrupt button, if "
                                             "generating more than one image, stop after the generation of an "
                                             "image has finished, instead of immediately)", "UI alternatives",
                                             section_id="ui_alternatives"),
        # its tag added to every prompt that does not name it (modules.core.pipeline; the composition root
        # gives the choices: "None" and the hypernetwork files)
        "sd_hypernetwork": OptionDef("None", "Add hypernetwork to prompt", "Extra Networks", choices=("None",)),
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
        **option_sections.defs(OptionDef),
    }


def default_definitions(**defaults: Any) -> dict[str, OptionDef]:
    """Every option's definition, with `defaults` in place of the built-in defaults: the command
    line flags A1111 makes an option's default (--enable-console-prompts). A value stored in
    config.json still wins."""
    defs = _defs()
    for key, value in defaults.items():
        defs[key].default = value
    return defs


def _builtin_upscaler_names(folder: str) -> tuple:
    """A1111's built-in upscaler names of one family ("RealESRGAN", "DAT"): realesrgan_models_names()."""
    from .upscalers import BUILTIN_NAMES

    return tuple(name for (kind, _), (name, _) in BUILTIN_NAMES.items() if kind == folder)


def _image_upscalers() -> tuple:
    from modules.core import upscaling

    return tuple(u.name for u in upscaling.image_upscalers())


def _sampler_parameter_defs(U: str) -> dict[str, OptionDef]:
    """A1111 1.10's "Sampler parameters" (modules.core.sampler_options: what each does and when the
    infotext names it). Not here: the "vary_coeff" UniPC variant (not implemented); uni_pc_skip_type and
    enable_quantization are in option_sections."""
    from modules.core.samplers import SAMPLER_NAMES

    return {
        # the UI's sampler lists only (A1111: /sdapi/v1/samplers still lists every sampler)
        "hide_samplers": OptionDef([], "Hide samplers in user interface", U, choices=tuple(SAMPLER_NAMES), kind=list),
        # A1111's: the txt2img/img2img settings column's parts, the listed ones moved up (modules.ui.generation_tab)
        "ui_reorder_list": OptionDef([], "UI item order for txt2img/img2img tabs (selected items appear first; "
                                     "Reload UI after a change)", "User interface",
                                     choices=UI_REORDER_CATEGORIES, kind=list),
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
        "skip_early_cond": OptionDef(0.0, "Ignore negative prompt during early sampling (disables CFG on a proportion "
                                     "of steps at the beginning of generation; 0=skip none; 1=skip all; can both "
                                     "improve sample diversity/quality and speed up sampling)", U,
                                     minimum=0.0, maximum=1.0, step=0.01),
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
        elif listed and value not in listed and not (value is None and d.default is None):  # None: unset
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
