"""Extras (A1111's postprocessing) as worker jobs, for the API and the Extras tab.

One "extras" job per request: one job step per picture, Interrupt stops before the next one. What
happens to a picture is the `Postprocessor` the caller hands in (A1111's postprocessing scripts,
modules.postprocessing over modules.scripts.scripts_postproc; the services never import them): it
checks the pictures before the job is queued and turns one picture into one or more results (the
picture, then its copies: flipped, split parts). Each result keeps the input's `parameters` text and
gets A1111's `postprocessing` text (when the `enable_pnginfo` setting is on). Saving puts the results
in `outdir_extras_samples` (A1111's outputs/extras-images) as NNNNN{suffix}.png with those texts,
or, for a batch's pictures with `use_original_name_batch` on, as {the input's name}{suffix}.png; a
result's caption goes in a .txt file of the same name (`postprocessing_existing_caption_action`).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from modules.core import image_io, postprocess
from modules.core.types import RequestError

from . import face_restorers

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class Output:
    """One picture a postprocessor made: the input's, or a copy of it."""

    image: Image.Image
    info: dict  # A1111's pp.info: the postprocessing text's fields
    suffix: str = ""  # the file name's suffix ("-1", "-flipped")
    caption: str | None = None


class Postprocessor(Protocol):
    def check(self, images: list[tuple[str, Image.Image]]) -> None:
        """RequestError naming the field for anything the job would trip over."""

    def process(self, image: Image.Image) -> list[Output]:
        """On the worker: the picture's results, the picture itself first."""


@dataclass
class ExtrasResult:
    image: Image.Image
    infotext: str  # A1111's postprocessing text ("Postprocess upscale by: 2, ...")
    parameters: str | None = None  # the input picture's generation parameters, kept
    texts: dict[str, str] = field(default_factory=dict)  # what the PNG carries besides `parameters`
    suffix: str = ""  # of the saved file's name
    caption: str | None = None  # written next to the saved file
    source: str = ""  # the input picture's file name ("": none known)


def check(engine: Engine, images: list[tuple[str, Image.Image]], postprocessor: Postprocessor) -> None:
    postprocessor.check(images)


def submit(engine: Engine, images: list[tuple[str, Image.Image]], postprocessor: Postprocessor,
           task_id: str | None = None) -> Future:
    """Queue the job (checked first); the future gives [ExtrasResult]: each picture's results in turn."""
    check(engine, images, postprocessor)
    return engine.queue.submit("extras", _run, engine, images, postprocessor, task_id=task_id)


def _run(engine: Engine, images: list[tuple[str, Image.Image]], postprocessor: Postprocessor) -> list[ExtrasResult]:
    state, results = engine.state, []
    state.job_count = len(images)
    for i, (name, image) in enumerate(images):
        if state.interrupted:
            break
        state.job_no, state.textinfo, state.skipped = i, name or None, False
        outputs = postprocessor.process(image)
        if state.skipped:  # Skip: this picture is left out (A1111)
            continue
        parameters = image.info.get("parameters") or None
        for out in outputs:
            text = postprocess.infotext(out.info)
            texts = {"postprocessing": text} if engine.options.get("enable_pnginfo") else {}
            results.append(ExtrasResult(out.image, text, parameters, texts, out.suffix, out.caption, name or ""))
    return results


def check_fraction(field_name: str, value) -> None:
    """RequestError naming `field_name` unless `value` is None or within [0, 1] (visibilities, weights)."""
    if value is not None and not 0.0 <= float(value) <= 1.0:
        raise RequestError(field_name, f"must be between 0 and 1, got {value}")


def check_face_restoration(name: str, field_name: str) -> None:
    """RequestError naming `field_name` when `name` ("GFPGAN", "CodeFormer") cannot run here."""
    if face_restorers.current() is None:
        raise RequestError(field_name, "face restoration is not set up in this process")
    face_restorers.current().check(name, field_name)


def restore(image: Image.Image, name: str, visibility: float, weight: float | None = None) -> Image.Image:
    """The faces of `image` restored by `name` ("GFPGAN", "CodeFormer" with its weight), blended in
    by `visibility` (A1111's Extras face restoration)."""
    restored = face_restorers.current().restore(image, name, weight)
    return restored if visibility >= 1 else Image.blend(image, restored.convert(image.mode), visibility)


def restore_faces(image: Image.Image, s: postprocess.UpscaleSettings, info: dict) -> Image.Image:
    """A1111's GFPGAN (order 2000), then CodeFormer (3000) postprocessing, after the upscale (1000):
    each restores the faces and blends the result in by its visibility."""
    for name, visibility in (("GFPGAN", s.gfpgan_visibility), ("CodeFormer", s.codeformer_visibility)):
        if visibility <= 0:
            continue
        image = restore(image, name, visibility, s.codeformer_weight if name == "CodeFormer" else None)
        info[f"{name} visibility"] = round(visibility, 3)
        if name == "CodeFormer":
            info["CodeFormer weight"] = round(s.codeformer_weight, 3)
    return image


def png_bytes(result: ExtrasResult) -> bytes:
    return image_io.encode_image(result.image, "png", result.parameters, extra_texts=result.texts)


def save(engine: Engine, results: list[ExtrasResult], folder: Path | None = None, batch: bool = False) -> list[Path]:
    """Write the results to `folder` (default: the extras output folder); returns the files.
    `batch`: the pictures are a batch's (uploaded files, a folder), which A1111's
    use_original_name_batch names after their input files (replacing a file of that name, or with
    save_images_replace_action "Add number suffix" beside it)."""
    if folder is None:
        folder = engine.data_path / (engine.options.get("outdir_extras_samples") or "outputs/extras-images")
    extension = engine.options.get("samples_format") or "png"
    quality = engine.options.get("jpeg_quality") or 80
    action = engine.options.get("postprocessing_existing_caption_action") or "Ignore"
    original_names = batch and bool(engine.options.get("use_original_name_batch"))
    replace = engine.options.get("save_images_replace_action") != "Add number suffix"
    paths = []
    for r in results:
        stem = _safe_suffix(Path(r.source.replace("\\", "/")).stem) if original_names else ""
        if stem:
            data = image_io.encode_image(r.image, extension, r.parameters, quality=quality, extra_texts=r.texts)
            name = f"{stem}{_safe_suffix(r.suffix)}.{str(extension).lower().lstrip('.')}"
            path = image_io.save_as(data, Path(folder) / name, replace)
        else:
            path = image_io.save_image(r.image, folder, seed=None, infotext=r.parameters, extension=extension,
                                       jpeg_quality=quality, extra_texts=r.texts,
                                       basename_suffix=_safe_suffix(r.suffix))
        if r.caption:
            write_caption(path.with_suffix(".txt"), r.caption, action)
        paths.append(path)
    return paths


def _safe_suffix(suffix: str) -> str:
    return "".join("_" if c in "/\\\0" else c for c in suffix or "")


def write_caption(path: Path, caption: str, action: str = "Ignore") -> None:
    """The caption file of a saved picture; one already there is kept, prepended, appended or
    replaced by `action` (A1111's postprocessing_existing_caption_action)."""
    try:
        existing = path.read_text(encoding="utf8").strip()
    except FileNotFoundError:
        existing = ""
    if existing and action == "Keep":
        text = existing
    elif existing and action == "Prepend":
        text = f"{existing} {caption}"
    elif existing and action == "Append":
        text = f"{caption} {existing}"
    else:
        text = caption
    text = text.strip()
    if text:
        path.write_text(text, encoding="utf8")
