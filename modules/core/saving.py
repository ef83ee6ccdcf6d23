"""Pictures and grids to their files, named and foldered as A1111 1.10 does, with the job hooks'
before/after-save calls.

Folder: the output folder, then (save_to_dirs / grid_save_to_dirs) `directories_filename_pattern`
("[date]"). Name: a number (NNNNN, or grid-NNNN) and "-" and `samples_filename_pattern` ("[seed]",
or "[seed]-[prompt_spaces]" when not saving to folders), or the pattern alone when
save_images_add_number is off (an existing file then replaced, or kept with "-1", "-2" after the new
one's name, save_images_replace_action). Beside it: `NAME.txt` with the infotext (save_txt) and
`NAME.jpg`, a smaller JPEG copy, when the picture is over the size limits (export_for_4chan).
Grids get the pattern only with grid_extended_filename. A copy made on the way (before the hires
pass, face restoration, colour correction; the inpainting mask) gets A1111's suffix after the
pattern ("-before-highres-fix", "-mask", ...). The infotext goes inside the file only with
enable_pnginfo (the .txt beside it does not depend on it). img2img's init images go by their MD5
(save_init_img, `save_init_image`). All options come in as GenerationSettings.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from PIL import Image

from . import atomic_write, image_io, samplers
from .filename_pattern import NameValues, apply, safe_relative
from .job_hooks import JobHooks
from .job_settings import GenerationSettings


def scheduler_label(sampler: str, schedule: str) -> str:
    """What A1111 writes for [scheduler]: the schedule, "Automatic" replaced by the sampler's own
    default where it has one (DPM++ 2M: Karras), capitalized as A1111 does ("Sgm uniform")."""
    if schedule == "Automatic":
        try:
            effective = samplers.effective_schedule(sampler, schedule)
        except ValueError:
            effective = "Uniform"
        schedule = "Automatic" if effective == "Uniform" else effective
    return schedule.capitalize()


def name_values(request, plan, settings: GenerationSettings, *, prompt: str | None, seed: int | None,
                batch_index: int = 0, iteration: int = 0, all_seeds: Sequence[int] = ()) -> NameValues:
    """What one picture's (or the grid's) file name may use, from the job (`request`, `plan`: the
    pipeline's resolved sampler, schedule, sizes and clip skip) and its settings."""
    return NameValues(
        seed=seed, prompt=prompt, negative_prompt=request.negative_prompt, job_prompt=request.prompt,
        all_seeds=list(all_seeds), styles=tuple(settings.styles), style_prompts=tuple(settings.style_prompts),
        steps=request.steps, cfg_scale=request.cfg_scale, width=plan.width, height=plan.height,
        sampler=plan.sampler, scheduler=scheduler_label(plan.sampler, plan.schedule),
        model_hash=settings.model_hash, model_name=settings.model_name, vae_file=settings.vae_name,
        clip_skip=plan.clip_skip, denoising_strength=request.denoising_strength, user=settings.user,
        job_timestamp=settings.job_timestamp, batch_size=request.batch_size, batch_index=batch_index,
        n_iter=request.n_iter, iteration=iteration,
    )


def _max_stem(directory: Path, ext: str) -> int:
    """A1111 cuts names to what the file system takes (NAME_MAX less room for the extension)."""
    try:
        return os.statvfs(directory).f_namemax - max(4, len(ext) + 1)
    except (AttributeError, OSError):
        return 255 - max(4, len(ext) + 1)


class _Target:
    """Where one picture goes: its folder and how its name is made."""

    def __init__(self, directory: Path, settings: GenerationSettings, values: NameValues, grid: bool, ext: str,
                 suffix: str = ""):
        if (settings.grid_save_to_dirs if grid else settings.save_to_dirs):
            sub = safe_relative(apply(settings.directories_filename_pattern or "[prompt_words]", values))
            directory = directory / sub if sub else directory
        self.directory = directory
        self.ext = ext
        self.basename = "grid" if grid else ""
        short = grid and not settings.grid_extended_filename
        if short or values.seed is None:
            pattern = ""
        else:
            pattern = settings.samples_filename_pattern or ("[seed]" if settings.save_to_dirs else "[seed]-[prompt_spaces]")
        decoration = apply(pattern, values) + suffix  # A1111: the suffix after the pattern, before the number's "-"
        self.numbered = settings.save_images_add_number or decoration == ""
        if decoration and self.numbered:
            decoration = "-" + decoration
        self.decoration = decoration
        self.replace = settings.save_images_replace_action != "Add number suffix"

    def name(self, number: int | None = None) -> str:
        if self.numbered:
            first = f"{number:05}" if not self.basename else f"{self.basename}-{number:04}"
            stem = first + self.decoration
        else:
            stem = self.decoration
        limit = _max_stem(self.directory, self.ext) if self.directory.is_dir() else 250
        return f"{stem[:limit]}.{self.ext}"

    def expected(self) -> Path:
        if not self.numbered:
            return self.directory / self.name()
        return self.directory / self.name(image_io.next_sequence_number(self.directory, self.basename))

    def write(self, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.numbered:
            return image_io.save_numbered(data, self.directory, self.basename, self.name)
        return image_io.save_as(data, self.directory / self.name(), replace=self.replace)


def export_for_4chan(path: Path, image: Image.Image, text: str | None, *, threshold_mb: float, side_length: int,
                     quality: int = 80, replace: bool = True) -> Path | None:
    """A1111's "Save copy of large images as JPG" (export_for_4chan): a picture over `side_length` on
    a side, or a file over `threshold_mb` MB, gets NAME.jpg beside it (downscaled to the side limit
    if needed); returns its path, or None when the picture is small enough."""
    path = Path(path)
    limit = int(side_length)
    oversize = image.width > limit or image.height > limit
    if not (oversize or path.stat().st_size > threshold_mb * 1024 * 1024):
        return None
    if oversize:
        if image.width / image.height > 1:
            size = round(limit), round(image.height * limit / image.width)
        else:
            size = round(image.width * limit / image.height), round(limit)
        try:
            image = image.resize(size, Image.LANCZOS)
        except (ValueError, OSError):  # a mode LANCZOS refuses (I;16)
            image = image.resize(size)
    data = image_io.encode_image(image, "jpg", text, quality=quality)
    return image_io.save_as(data, path.with_suffix(".jpg"), replace=replace)


def save(job_hooks: JobHooks | None, image: Image.Image, text: str, directory: Path, settings: GenerationSettings,
         *, seed: int | None = None, grid: bool = False, names: NameValues | None = None, suffix: str = "") -> Path:
    """A picture (or the grid) into `directory` (the output folder, below which the folder pattern
    applies) under its A1111 name, with the hooks' before/after-save calls; returns its path.
    `names`: what the name may use (name_values); without it only the seed is known. `suffix`: a
    copy's ("-before-highres-fix"), after the name's pattern."""
    values = names if names is not None else NameValues(seed=seed)
    values.image = image
    values.max_prompt_words = settings.directories_max_prompt_words
    values.today = values.today or settings.today()
    values.now = values.now or settings.now()
    ext = str(settings.grid_format if grid else settings.samples_format).lower().lstrip(".")
    target = _Target(Path(directory), settings, values, grid, ext, suffix)
    if job_hooks is not None:
        image, text = job_hooks.before_save(image, text, target.expected(), grid)
    inside = text if settings.enable_pnginfo else None  # A1111: the file carries it only with enable_pnginfo
    data = image_io.encode_image(image, ext, inside, quality=settings.jpeg_quality, webp_lossless=settings.webp_lossless)
    path = target.write(data)
    if settings.export_for_4chan:
        export_for_4chan(path, image, inside, threshold_mb=settings.img_downscale_threshold,
                         side_length=settings.target_side_length, quality=settings.jpeg_quality, replace=target.replace)
    if settings.save_txt and text is not None:
        atomic_write.write_text(path.with_suffix(".txt"), f"{text}\n")
    if job_hooks is not None:
        job_hooks.after_save(image, text, path, grid)
    return path



def save_init_image(image: Image.Image, directory: Path) -> tuple[Path, str]:
    """An img2img init image as it came (A1111's save_init_img): `<MD5 of its pixels>.png` in
    `directory`, no folder pattern, its own text chunks kept (the infotext of a picture made here);
    the same picture again replaces its file. Returns (path, the MD5: the infotext's "Init image hash")."""
    digest = hashlib.md5(image.tobytes()).hexdigest()
    texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    infotext = texts.pop(image_io.INFOTEXT_KEY, None)
    data = image_io.encode_image(image, "png", infotext, extra_texts=texts)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return image_io.save_as(data, directory / f"{digest}.png", replace=True), digest
