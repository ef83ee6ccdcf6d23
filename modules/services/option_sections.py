"""A1111 option sections kept apart from modules.services.options' long table: the API's image
URLs, the Compatibility switches, the page's layout choices and the attention backends.

``defs()`` is merged into the option table last (its sections come after the others in Settings).
Each option's effect: the comment above it names the code that reads it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modules.core.attention import BACKEND_TITLES

if TYPE_CHECKING:
    from .options import OptionDef

# A1111's tab names (the page's top-level tabs: modules.ui.app); extensions' tabs are added by name
# the themes that ship with Gradio, under the names A1111's list gives them on the Hugging Face hub
# (gradio/soft is gr.themes.Soft); "Default" is Gradio's default theme (modules.ui.app)
GRADIO_THEMES = ("Default", "gradio/base", "gradio/glass", "gradio/monochrome", "gradio/soft",
                 "gradio/citrus", "gradio/ocean", "gradio/origin")

TAB_NAMES = ("txt2img", "img2img", "Extras", "PNG Info", "Checkpoint Merger", "Settings", "Extensions")


def defs(option_def: type[OptionDef]) -> dict[str, OptionDef]:
    O, C, UI = option_def, "Compatibility", "User interface"
    return {
        # input pictures given as http(s) URLs to the API (modules.api.convert): A1111's defaults, local
        # and private addresses refused unless the second is off; neither can be changed through the API
        "api_enable_requests": O(True, "Allow http:// and https:// URLs for input images in API", "API",
                                 section_id="API", restrict_api=True),
        "api_forbid_local_requests": O(True, "Forbid URLs to local resources", "API", section_id="API",
                                       restrict_api=True),
        "api_useragent": O("", "User agent for requests", "API", section_id="API", restrict_api=True),
        # A1111's compatibility switches (each reproduces an old behaviour; read at each job)
        "use_old_karras_scheduler_sigmas": O(False, "Use old karras scheduler sigmas (0.1 to 10).", C),
        "use_old_hires_fix_width_height": O(False, "For hires fix, use width/height sliders to set final resolution "
                                            "rather than first pass (disables Upscale by, Resize width/height to).", C),
        "hires_fix_use_firstpass_conds": O(False, "For hires fix, calculate conds of second pass using extra networks "
                                           "of first pass.", C),
        "use_old_scheduling": O(False, "Use old prompt editing timelines.", C),
        # (A1111 1.10 defines it and reads it nowhere: second-order samplers' prompt schedules are always
        # fixed, in Easel too; kept so that configs and API calls that set it are accepted)
        "dont_fix_second_order_samplers_schedule": O(False, "Do not fix prompt schedule for second order samplers "
                                                     "(no effect, as in A1111 1.10).", C),
        # the txt2img/img2img columns (modules.ui.generation_tab; read when the page is built)
        "samplers_in_dropdown": O(True, "Use dropdown for sampler selection instead of radio group (Reload UI "
                                  "after a change)", UI),
        "dimensions_and_batch_together": O(True, "Show Width/Height and Batch sliders in same row (Reload UI after "
                                           "a change)", UI),
        # the page's top-level tabs (modules.ui.app; read when the page is built): listed ones first / left out
        "ui_tab_order": O([], "UI tab order (Reload UI after a change)", UI, choices=TAB_NAMES, kind=list),
        "hidden_tabs": O([], "Hidden UI tabs (Reload UI after a change)", UI, choices=TAB_NAMES, kind=list),
        # the UNet's attention (modules.core.attention; applied to the loaded models before the next job)
        "cross_attention_optimization": O("Automatic", "Cross attention optimization", "Optimizations",
                                          choices=("Automatic", *BACKEND_TITLES, "None")),
        "upcast_attn": O(False, "Upcast cross attention layer to float32", "Stable Diffusion"),
        # k-diffusion's quantize: the model sees the nearest trained timestep of each sigma (the k-diffusion
        # samplers' denoiser: modules.core.ksampling), read at each job
        "enable_quantization": O(False, "Enable quantization in K samplers for sharper and cleaner results. This may "
                                 "change existing seeds", "Stable Diffusion"),
        # UniPC's time steps, A1111's get_time_steps (modules.core.samplers.build_scheduler), read at each job
        # (not here: ddim_discretize, which A1111 1.10 defines and reads nowhere)
        "uni_pc_skip_type": O("time_uniform", "UniPC skip type", "Sampler parameters",
                              choices=("time_uniform", "time_quadratic", "logSNR")),
        # the VAE's encode / decode: the checkpoint's VAE or TAESD from models/VAE-approx (modules.core.model_ops)
        "sd_vae_encode_method": O("Full", "VAE type for encode (method to encode image to latent (use in img2img, "
                                  "hires-fix or inpaint mask))", "Stable Diffusion", choices=("Full", "TAESD")),
        "sd_vae_decode_method": O("Full", "VAE type for decode (method to decode latent to image)", "Stable Diffusion",
                                  choices=("Full", "TAESD")),
        # the model cache (modules.services.model_cache): cached checkpoints other than the current one in RAM
        "sd_checkpoints_keep_in_cpu": O(True, "Only keep one model on device (will keep models other than the "
                                        "currently used one in RAM rather than VRAM)", "Stable Diffusion"),
        # the prompt / negative prompt model calls (modules.core.denoise.CondBatching), read at each job
        "pad_cond_uncond": O(False, "Pad prompt/negative prompt (improves performance when prompt and negative "
                             "prompt have different lengths; changes seeds)", "Optimizations"),
        "pad_cond_uncond_v0": O(False, "Pad prompt/negative prompt (v0) (alternative implementation for the above; "
                                "used prior to 1.6.0 for DDIM sampler; overrides the above if set; changes seeds)",
                                "Optimizations"),
        "persistent_cond_cache": O(True, "Persistent cond cache (do not recalculate conds from prompts if prompts have "
                                   "not changed since previous calculation)", "Optimizations"),
        "batch_cond_uncond": O(True, "Batch cond/uncond (do both conditional and unconditional denoising in one "
                               "batch; uses a bit more VRAM during sampling, but improves speed)", "Optimizations"),
        # the loaders and the console (System)
        "memmon_poll_rate": O(8, "VRAM usage polls per second during generation. (0 = disable)", "System",
                              minimum=0, maximum=40, step=1),
        "print_hypernet_extra": O(False, "Print extra hypernetwork information to console.", "System"),
        "disable_mmap_load_safetensors": O(False, "Disable memmapping for loading .safetensors files. (fixes very slow "
                                           "loading speed in some cases)", "System"),
        # the extra-networks panel's cards and tabs (modules.ui.extra_networks)
        "extra_networks_show_hidden_directories": O(True, "Show hidden directories (directory is hidden if its name "
                                                    "starts with \".\".)", "Extra Networks"),
        "extra_networks_hidden_models": O("When searched", "Show cards for models in hidden directories (\"When "
                                          "searched\" option will only show the item when the search string has 4 "
                                          "characters or more)", "Extra Networks",
                                          choices=("Always", "When searched", "Never")),
        "ui_extra_networks_tab_reorder": O("", "Extra networks tab order (Reload UI after a change)", "Extra Networks"),
        # the page's look and the full page image viewer (modules.ui.app, modules/ui/lightbox.js)
        "gradio_theme": O("Default", "Gradio theme (Reload UI after a change)", "User interface",
                          choices=GRADIO_THEMES),
        "js_modal_lightbox": O(True, "Enable full page image viewer", "User interface"),
        "js_modal_lightbox_initially_zoomed": O(True, "Show images zoomed in by default in full page image viewer",
                                                "User interface"),
        "js_modal_lightbox_gamepad": O(False, "Navigate image viewer with gamepad", "User interface"),
        "js_modal_lightbox_gamepad_repeat": O(250, "Gamepad repeat period, in milliseconds", "User interface",
                                              minimum=0, maximum=5000),
    }
