"""img2img "Batch": every picture of an input folder through img2img, results into an output folder.

A1111's rules (``modules/img2img.py: process_batch``), kept here:

- every file of the input folder is a candidate; one that is not a readable picture is reported and
  skipped, and the rest go on;
- with a mask folder that holds files, the job is an inpainting batch: an image's mask is the mask
  file with the same name stem (any extension); a folder with exactly one mask uses it for every
  image; an image without a mask is reported and skipped. An empty mask folder means plain img2img;
- results are written under the input file's stem (``name.png``; ``name-1.png``, ``name-2.png``, …
  when a file gives several images), replacing what is there, with the infotext embedded; nothing
  goes to the usual outputs folder.

One img2img job per file goes through the engine's queue, one after another, so the worker is
shared fairly with other users and an interrupt ends the batch after the current file.
"""

from __future__ import annotations

import itertools
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from PIL import Image, UnidentifiedImageError

from modules.core import atomic_write, image_io
from modules.core.types import GenerationResult, Img2ImgRequest, RequestError

if TYPE_CHECKING:
    from .engine import Engine
    from .script_jobs import ScriptCall

__all__ = ["BatchReport", "Skipped", "folder_field", "list_files", "find_mask", "read_picture", "scaled_size", "run_batch"]

_batch_numbers = itertools.count(1)


@dataclass
class Skipped:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path.name}: {self.reason}"


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    results: list[GenerationResult] = field(default_factory=list)  # the first `keep_results` files'
    processed: int = 0  # input files that gave results
    total: int = 0  # input files found
    interrupted: bool = False

    def summary(self) -> str:
        lines = [f"Processed {self.processed} of {self.total} files; wrote {len(self.written)} images."]
        if self.interrupted:
            lines.append("Interrupted: the remaining files were not processed.")
        lines += [f"Skipped {s}" for s in self.skipped]
        return "\n".join(lines)


def list_files(folder: Path) -> list[Path]:
    """The folder's regular files, by name (hidden files left out)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=lambda p: p.name)


def find_mask(masks: list[Path], image: Path) -> Path | None:
    """The mask for ``image``: the only mask there is, else the one with the same stem."""
    if len(masks) == 1:
        return masks[0]
    return next((m for m in masks if m.stem == image.stem), None)


def read_picture(path: Path) -> Image.Image:
    """A file -> a loaded RGB/RGBA picture, or ValueError saying why it cannot be read."""
    try:
        with Image.open(path) as opened:
            opened.load()
            return image_io.to_rgb_or_rgba(opened).copy()
    except UnidentifiedImageError:
        raise ValueError("not a readable image") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"not a readable image ({exc})") from None
    except OSError as exc:
        raise ValueError(f"cannot read the file ({exc})") from None


def scaled_size(image: Image.Image, scale: float) -> tuple[int, int]:
    """A1111's "Resize by": the picture's size times ``scale``, rounded down to a multiple of 8.
    Not clamped: a size out of bounds is the request's error to report, not a silent new aspect."""
    return int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8


def folder_field(path: str | Path | None, name: str, *, must_exist: bool) -> Path | None:
    """A folder typed into field `name` (None when left empty); RequestError when it must exist and does not."""
    if path is None or not str(path).strip():
        return None
    folder = Path(str(path).strip()).expanduser()
    if must_exist and not folder.is_dir():
        raise RequestError(name, f"'{folder}' is not a folder")
    return folder


# A runner takes (file number, file count, the file, task id, future) and waits for the future; the
# UI passes one that shows progress and lets Interrupt reach the job.
Follow = Callable[[int, int, Path, str, Future], None]


def run_batch(
    engine: Engine,
    fields: dict,
    input_dir: str | Path,
    output_dir: str | Path,
    mask_dir: str | Path | None = None,
    *,
    scale: float | None = None,
    follow: Follow | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    keep_results: int = 32,
    overrides: dict | None = None,
    scripts: ScriptCall | None = None,
) -> BatchReport:
    """img2img for every file of ``input_dir``; see the module docstring.

    ``fields`` are :class:`Img2ImgRequest` fields besides ``init_images``/``mask`` (prompt, steps,
    denoising_strength, width/height, inpainting fields, …). With ``scale`` (A1111's "Resize by"),
    each job's size is its picture's size times ``scale``. Problems with the batch as a whole (no
    input folder, no output folder given, invalid fields) raise :class:`RequestError`; problems with
    one file skip that file and are listed in the report. ``scripts`` (the page's AlwaysVisible
    scripts and selected script) run with every file's job, as in A1111's batch."""
    source = folder_field(input_dir, "input_dir", must_exist=True)
    if source is None:
        raise RequestError("input_dir", "no input folder given")
    target = folder_field(output_dir, "output_dir", must_exist=False)
    if target is None:
        raise RequestError("output_dir", "no output folder given")
    mask_folder = folder_field(mask_dir, "mask_dir", must_exist=True)
    masks = list_files(mask_folder) if mask_folder is not None else []
    for reserved in ("init_images", "mask"):
        if reserved in fields:
            raise TypeError(f"run_batch takes the {reserved} from the folders, not from fields")
    checked = engine.check_overrides(overrides)
    # the fields are checked once up front (with a stand-in picture), so a typo is one message
    # instead of one per file
    Img2ImgRequest(init_images=[Image.new("RGB", (64, 64))], **fields)

    files = list_files(source)
    report = BatchReport(total=len(files))
    extension = engine.options.get("samples_format") or "png"
    quality = engine.options.get("jpeg_quality") or 80
    batch_id = next(_batch_numbers)
    for number, path in enumerate(files, start=1):
        if should_stop():
            report.interrupted = True
            break
        try:
            picture = read_picture(path)
            mask = None
            if masks:
                mask_path = find_mask(masks, path)
                if mask_path is None:
                    raise ValueError(f"no mask named {path.stem}.* in {mask_folder}")
                try:
                    mask = read_picture(mask_path)
                except ValueError as exc:
                    raise ValueError(f"mask {mask_path.name}: {exc}") from None
            job_fields = dict(fields, save_images=False)
            if scale is not None:
                job_fields["width"], job_fields["height"] = scaled_size(picture, scale)
            request = Img2ImgRequest(init_images=[picture], mask=mask, **job_fields)
            task_id = f"img2img-batch-{batch_id}-{number}"
            future = engine.submit_img2img(request, task_id=task_id, overrides=checked, scripts=scripts)
            if follow is not None:
                follow(number, len(files), path, task_id, future)
            result: GenerationResult = future.result()
        except ValueError as exc:  # RequestError included: this file cannot be done, the next may
            report.skipped.append(Skipped(path, str(exc)))
            continue
        if result.interrupted:
            report.interrupted = True
            break
        report.processed += 1
        report.written += _write(result, target, path.stem, extension, quality)
        if len(report.results) < keep_results:
            report.results.append(result)
    return report


def _write(result: GenerationResult, folder: Path, stem: str, extension: str, quality: int) -> list[Path]:
    """``stem.ext`` for one image, ``stem-1.ext``, ``stem-2.ext``, … for several; replaces old files."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = "jpg" if extension == "jpeg" else extension
    several = len(result.images) > 1
    written = []
    for i, (image, text) in enumerate(zip(result.images, result.infotexts), start=1):
        path = folder / (f"{stem}-{i}.{ext}" if several else f"{stem}.{ext}")
        atomic_write.write_bytes(path, image_io.encode_image(image, ext, text, quality=quality))
        written.append(path)
    return written
