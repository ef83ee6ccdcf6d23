"""What one job is told from outside the core: the options that apply to it (A1111 option names in
comments) and the observer that reports progress and asks to stop. No globals: the engine fills these."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import img2img, lora
from .families import ConditioningOptions
from .model_loader import LoadedModel
from .sampler_options import SamplerOptions


@dataclass
class GenerationSettings:
    """What the options say for this job (A1111 option names in comments)."""

    outdir_samples: Path | None = None  # outdir_txt2img_samples (dated subfolders below it)
    outdir_grids: Path | None = None  # outdir_txt2img_grids
    samples_format: str = "png"  # samples_format
    grid_format: str = "png"  # grid_format
    save_grid: bool = True  # grid_save
    return_grid: bool = True  # return_grid
    grid_only_if_multiple: bool = True  # grid_only_if_multiple
    grid_rows: int = -1  # n_rows (-1: about square, 0: the batch size)
    grid_prevent_empty_spots: bool = False  # grid_prevent_empty_spots
    grid_background: str = "#ffffff"  # grid_background_color
    jpeg_quality: int = 80  # jpeg_quality
    clip_skip: int = 1  # CLIP_stop_at_last_layers
    # token merging (modules.core.token_merging), as A1111's get_token_merging_ratio resolves it: the
    # first pass's (token_merging_ratio; img2img: token_merging_ratio_img2img when not 0) and the
    # hires pass's (token_merging_ratio_hr when not 0, else the first pass's)
    token_merging_ratio: float = 0.0
    token_merging_ratio_hr: float = 0.0
    eta_noise_seed_delta: int = 0  # eta_noise_seed_delta
    randn_source: str = "CPU"  # randn_source
    model_name: str = ""
    model_hash: str | None = None
    add_model_hash_to_info: bool = True
    add_model_name_to_info: bool = True
    vae_name: str | None = None  # the external VAE's file name (sd_vae); None: the checkpoint's own
    vae_hash: str | None = None
    add_vae_name_to_info: bool = True  # add_vae_name_to_info
    add_vae_hash_to_info: bool = True  # add_vae_hash_to_info
    version: str | None = None  # add_version_to_infotext
    today: Callable[[], datetime.date] = datetime.date.today
    img2img: img2img.Img2ImgSettings = field(default_factory=img2img.Img2ImgSettings)  # img2img_*, inpainting_*
    # Hires checkpoint (A1111 hr_checkpoint_name), provided by the engine: load_model(name) loads it through
    # the model cache without selecting it, load_model(None) puts the job's own checkpoint back;
    # checkpoint_title(name) is A1111's short title ("name [hash]"), ValueError for an unknown name.
    load_model: Callable[[str | None], LoadedModel] | None = None
    checkpoint_title: Callable[[str], str] | None = None
    # <lora:name:...> -> its file (None, or LookupError with the known names, for an unknown one);
    # None here: prompts with LoRA tags are refused
    find_lora: Callable[[str], "lora.LoraFile | None"] | None = None
    add_lora_hashes_to_info: bool = True  # lora_add_hashes_to_infotext
    # textual inversion: services.embeddings.EmbeddingDatabase (for_model(model) -> the usable embeddings)
    embeddings: object | None = None
    add_ti_hashes_to_info: bool = True  # textual_inversion_add_hashes_to_infotext
    emphasis: str = "Original"  # emphasis ("Emphasis mode": None, Ignore, Original, No norm)
    # -- model families and the SDXL refiner ------------------------------------------------------
    # sdxl_crop_top/left, sdxl_refiner_high/low_aesthetic_score
    conditioning: ConditioningOptions = field(default_factory=ConditioningOptions)
    hires_fix_refiner_pass: str = "second pass"  # hires_fix_refiner_pass: first pass, second pass, both passes
    # --- A1111's "Compatibility" switches (each brings an old behaviour back)
    # use_old_scheduling: [a:b:N] with N < 1 a fraction, else a step; the hires pass restarts the first
    # pass's timeline ("Old prompt editing timelines: True" where that changes a schedule)
    use_old_scheduling: bool = False
    # use_old_hires_fix_width_height: width/height are hires fix's final size, the first pass about 512x512
    use_old_hires_fix_width_height: bool = False
    # hires_fix_use_firstpass_conds: the hires prompts encoded under the first pass's networks
    hires_fix_use_firstpass_conds: bool = False
    # (use_old_karras_scheduler_sigmas is a sampler option: sampler_options below)
    refiner_switch_by_sample_steps: bool = False  # refiner_switch_by_sample_steps
    # <hypernet:name:strength> -> the file (None, or LookupError with the known names, for an unknown one);
    # None here: prompts with hypernetwork tags are refused
    find_hypernetwork: Callable[[str], Path | None] | None = None
    # sd_hypernetwork: (name, strength) whose <hypernet:name:strength> tag every prompt not naming it gets
    always_hypernetwork: tuple[str, float] | None = None
    # ControlNet units of the job (modules.core.controlnet.ControlJob), put here by the layer above
    control: object | None = None
    # --- file names and folders (A1111's "Saving images/grids", "Saving to a directory"; modules.core.saving).
    # outdir_samples / outdir_grids above are the base folders; the [date] folder below them comes from
    # directories_filename_pattern when save_to_dirs / grid_save_to_dirs are on.
    samples_filename_pattern: str = ""  # samples_filename_pattern ("": "[seed]", or "[seed]-[prompt_spaces]")
    save_images_add_number: bool = True  # save_images_add_number
    save_images_replace_action: str = "Replace"  # save_images_replace_action ("Replace", "Add number suffix")
    grid_extended_filename: bool = False  # grid_extended_filename
    save_to_dirs: bool = True  # save_to_dirs
    grid_save_to_dirs: bool = True  # grid_save_to_dirs
    directories_filename_pattern: str = "[date]"  # directories_filename_pattern
    directories_max_prompt_words: int = 8  # directories_max_prompt_words
    save_txt: bool = False  # save_txt
    export_for_4chan: bool = True  # export_for_4chan
    img_downscale_threshold: float = 4.0  # img_downscale_threshold (MB)
    target_side_length: int = 4000  # target_side_length (pixels)
    webp_lossless: bool = False  # webp_lossless
    enable_pnginfo: bool = True  # enable_pnginfo: the infotext inside the files (and the pictures' info)
    # copies saved beside the pictures (A1111's suffixes), when the pictures are saved
    save_images_before_face_restoration: bool = False  # save_images_before_face_restoration
    save_images_before_highres_fix: bool = False  # save_images_before_highres_fix
    save_images_before_color_correction: bool = False  # save_images_before_color_correction
    save_mask: bool = False  # save_mask (inpainting: the greyscale mask)
    save_mask_composite: bool = False  # save_mask_composite (inpainting: the result where the mask is)
    # inpainting: the mask and the masked composite as further result pictures
    return_mask: bool = False  # return_mask
    return_mask_composite: bool = False  # return_mask_composite
    save_incomplete_images: bool = False  # save_incomplete_images: an interrupted job's pictures are saved too
    # A1111's "Optimizations" for the prompt / negative prompt model calls (modules.core.denoise.CondBatching)
    batch_cond_uncond: bool = True  # batch_cond_uncond: both in one call when their shapes allow
    persistent_cond_cache: bool = True  # persistent_cond_cache: encoded prompts kept with the model between jobs
    pad_cond_uncond: str = ""  # "empty": pad_cond_uncond, "v0": pad_cond_uncond_v0 (wins, as in A1111), "": neither
    live_preview_content: str = "Combined"  # live_preview_content: the previews' subject (denoise.PREVIEW_CONTENTS)
    # live_preview_fast_interrupt: once the job is interrupted, its pictures are decoded with this (the live
    # preview method's decoder: (model, latents) -> pictures at the VAE's size) instead of the VAE
    interrupt_decode: Callable[[LoadedModel, torch.Tensor], list] | None = None
    outdir_init_images: Path | None = None  # save_init_img on: outdir_init_images (None: not saved)
    add_user_name_to_info: bool = False  # add_user_name_to_info: "User" (the logged-in `user`) in the infotext
    # what [styles], [prompt_no_styles], [job_timestamp], [user] say; [datetime] reads now()
    styles: tuple[str, ...] = ()
    style_prompts: tuple[str, ...] = ()
    job_timestamp: str = ""
    user: str | None = None
    now: Callable[[], datetime.datetime] = datetime.datetime.now
    # --- A1111's "Sampler parameters" (eta_ancestral, eta_ddim, s_churn/s_tmin/s_tmax/s_noise, sigma_min,
    # sigma_max, rho, always_discard_next_to_last_sigma, sgm_noise_multiplier, uni_pc_*, beta_dist_*):
    # for samplers.build_scheduler(..., options=) and samplers.infotext_params
    sampler_options: SamplerOptions = field(default_factory=SamplerOptions)


class JobObserver:
    """Progress and control for one job; the job service subclasses it."""

    def begin_batch(self, batch_index: int, batch_count: int, steps: int) -> None: ...

    def on_step(self, step: int, total: int, latents: torch.Tensor, denoised: torch.Tensor | None) -> None: ...

    def full_preview_due(self, step: int) -> bool:
        """Whether to decode a preview with the model's own VAE after this step (A1111's "Full" live
        preview method). Decoded on the job's own thread: nothing else touches the model's memory."""
        return False

    full_preview_all_rows = False  # decode every picture of the batch (show_progress_grid), not the first

    def on_full_preview(self, images: list) -> None:
        """The "Full" preview pictures (the first of the batch, or all of them), when
        ``full_preview_due`` said so."""

    def interrupted(self) -> bool:
        return False

    def skipped(self) -> bool:
        """True once per skip request: ends the current batch, the job goes on."""
        return False

    def stopping_generation(self) -> bool:
        """A1111's stop_generating (the page's Interrupt under interrupt_after_current): the pictures
        made so far are finished, no other is started."""
        return False
