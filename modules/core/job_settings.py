"""What one job is told from outside the core: the options that apply to it (A1111 option names in
comments) and the observer that reports progress and asks to stop. No globals: the engine fills these."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import img2img, lora
from .model_loader import LoadedModel


@dataclass
class GenerationSettings:
    """What the options say for this job (A1111 option names in comments)."""

    outdir_samples: Path | None = None  # outdir_txt2img_samples (dated subfolders below it)
    outdir_grids: Path | None = None  # outdir_txt2img_grids
    samples_format: str = "png"  # samples_format
    grid_format: str = "png"  # grid_format
    save_grid: bool = True  # grid_save
    return_grid: bool = True  # return_grid
    jpeg_quality: int = 80  # jpeg_quality
    clip_skip: int = 1  # CLIP_stop_at_last_layers
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


class JobObserver:
    """Progress and control for one job; the job service subclasses it."""

    def begin_batch(self, batch_index: int, batch_count: int, steps: int) -> None: ...

    def on_step(self, step: int, total: int, latents: torch.Tensor, denoised: torch.Tensor | None) -> None: ...

    def interrupted(self) -> bool:
        return False

    def skipped(self) -> bool:
        """True once per skip request: ends the current batch, the job goes on."""
        return False
