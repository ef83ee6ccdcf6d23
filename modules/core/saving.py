"""Pictures and grids to their files, with the job hooks' before/after-save calls."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from . import image_io
from .job_hooks import JobHooks
from .job_settings import GenerationSettings


def save(job_hooks: JobHooks | None, image: Image.Image, text: str, directory: Path, settings: GenerationSettings,
         *, seed: int | None = None, grid: bool = False) -> Path:
    """A picture (or the grid) to its numbered file, with the hooks' before/after-save calls."""

    def write(picture: Image.Image, infotext: str) -> Path:
        if grid:
            return image_io.save_grid(picture, directory, infotext=infotext, extension=settings.grid_format)
        return image_io.save_image(picture, directory, seed=seed, infotext=infotext,
                                   extension=settings.samples_format, jpeg_quality=settings.jpeg_quality)

    if job_hooks is None:
        return write(image, text)
    ext = (settings.grid_format if grid else settings.samples_format).lower()
    number = image_io.next_sequence_number(directory, "grid" if grid else "") if directory.is_dir() else 0
    expected = directory / (f"grid-{number:04}.{ext}" if grid else f"{number:05}-{seed}.{ext}")
    image, text = job_hooks.before_save(image, text, expected, grid)
    path = write(image, text)
    job_hooks.after_save(image, text, path, grid)
    return path
