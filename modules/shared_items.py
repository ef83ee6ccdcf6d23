"""A1111's `modules.shared_items`: choice lists the settings and extensions' dropdowns read."""

from __future__ import annotations

from modules import shared


def realesrgan_models_names():
    from modules.core import upscaling

    return [u.name for u in upscaling.model_upscalers() if u.kind == "RealESRGAN"]


def dat_models_names():
    from modules.core import upscaling

    return [u.name for u in upscaling.model_upscalers() if u.kind == "DAT"]


def postprocessing_scripts(filter_out_extra_only: bool = False, filter_out_main_ui_only: bool = False):
    """The Extras steps (A1111: the postprocessing runner's scripts; each has .name). The filters
    (Forge's) leave out scripts marked `extra_only` / `main_ui_only`."""
    from modules import scripts

    runner = scripts.scripts_postproc
    if runner.scripts is None:
        runner.scripts_in_preferred_order()
    return [s for s in runner.scripts
            if not (filter_out_extra_only and getattr(s, "extra_only", False))
            and not (filter_out_main_ui_only and getattr(s, "main_ui_only", False))]


def sd_vae_items():
    """"Automatic", "None" and the VAE files (the sd_vae setting's choices)."""
    engine = shared.engine
    if engine is not None and engine.vaes is not None:
        choices = engine.vaes.choices
        return list(choices() if callable(choices) else choices)
    return ["Automatic", "None"]


def refresh_vae_list():
    engine = shared.engine
    if engine is not None and engine.vaes is not None and hasattr(engine.vaes, "refresh"):
        engine.vaes.refresh()


def cross_attention_optimizations():
    return ["Automatic", "None"]


def sd_unet_items():
    return ["Automatic", "None"]


def refresh_unet_list():
    """Easel has no separate UNet files."""


def list_checkpoint_tiles(use_short=False):
    from modules import sd_models

    return sd_models.checkpoint_tiles(use_short)


def refresh_checkpoints():
    from modules import sd_models

    return sd_models.list_models()


def list_samplers():
    from modules import sd_samplers

    return sd_samplers.all_samplers


def reload_hypernetworks():
    """Easel lists hypernetworks from their folder when asked."""


def get_infotext_names():
    from modules import infotext_utils

    return sorted({label for label, _ in infotext_utils.infotext_to_setting_name_mapping})


ui_reorder_categories_builtin_items = ["prompt", "image", "inpaint", "sampler", "accordions", "checkboxes",
                                       "dimensions", "cfg", "denoising", "seed", "batch", "override_settings"]


def ui_reorder_categories():
    yield from ui_reorder_categories_builtin_items
    yield "scripts"
