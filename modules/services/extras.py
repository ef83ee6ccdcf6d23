"""Extras (A1111's postprocessing upscale) as worker jobs, for the API and the Extras tab.

One "extras" job per request: one job step per picture, Interrupt stops before the next one.
Each result keeps the input's `parameters` text and gets A1111's `postprocessing` text (when the
`enable_pnginfo` setting is on). Saving puts the results in `outdir_extras_samples`
(A1111's outputs/extras-images) as NNNNN.png with those texts.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from modules.core import image_io, postprocess
from modules.core.types import RequestError

from . import face_restorers

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class ExtrasResult:
    image: Image.Image
    infotext: str  # A1111's postprocessing text ("Postprocess upscale by: 2, ...")
    parameters: str | None = None  # the input picture's generation parameters, kept
    texts: dict[str, str] = field(default_factory=dict)  # what the PNG carries besides `parameters`


def check(engine: Engine, images: list[tuple[str, Image.Image]], settings: postprocess.UpscaleSettings) -> None:
    """RequestError naming the field for a setting or a result size the job would trip over (a
    face restoration model without its file included)."""
    max_pixels = int((engine.options.get("img_max_size_mp") or 200) * 1_000_000)
    settings.check(max_pixels)
    for name, visibility in (("GFPGAN", "gfpgan_visibility"), ("CodeFormer", "codeformer_visibility")):
        if getattr(settings, visibility) > 0:
            if face_restorers.current() is None:
                raise RequestError(visibility, "face restoration is not set up in this process")
            face_restorers.current().check(name, visibility)
    for _, image in images:
        settings.check(max_pixels, image.size)


def submit(engine: Engine, images: list[tuple[str, Image.Image]], settings: postprocess.UpscaleSettings,
           task_id: str | None = None) -> Future:
    """Queue the job (checked first); the future gives [ExtrasResult], one per picture done."""
    check(engine, images, settings)
    return engine.queue.submit("extras", _run, engine, images, settings, task_id=task_id)


def _run(engine: Engine, images: list[tuple[str, Image.Image]], settings: postprocess.UpscaleSettings
         ) -> list[ExtrasResult]:
    state, results = engine.state, []
    state.job_count = len(images)
    for i, (name, image) in enumerate(images):
        if state.interrupted:
            break
        state.job_no, state.textinfo, state.skipped = i, name or None, False
        upscaled, info = postprocess.upscale(image, settings)
        upscaled = restore_faces(upscaled, settings, info)
        text = postprocess.infotext(info)
        parameters = image.info.get("parameters") or None
        texts = {"postprocessing": text} if engine.options.get("enable_pnginfo") else {}
        results.append(ExtrasResult(upscaled, text, parameters, texts))
    return results


def restore_faces(image: Image.Image, s: postprocess.UpscaleSettings, info: dict) -> Image.Image:
    """A1111's GFPGAN (order 2000), then CodeFormer (3000) postprocessing, after the upscale (1000):
    each restores the faces and blends the result in by its visibility."""
    for name, visibility in (("GFPGAN", s.gfpgan_visibility), ("CodeFormer", s.codeformer_visibility)):
        if visibility <= 0:
            continue
        weight = s.codeformer_weight if name == "CodeFormer" else None
        restored = face_restorers.current().restore(image, name, weight)
        image = restored if visibility >= 1 else Image.blend(image, restored.convert(image.mode), visibility)
        info[f"{name} visibility"] = round(visibility, 3)
        if name == "CodeFormer":
            info["CodeFormer weight"] = round(s.codeformer_weight, 3)
    return image


def png_bytes(result: ExtrasResult) -> bytes:
    return image_io.encode_image(result.image, "png", result.parameters, extra_texts=result.texts)


def save(engine: Engine, results: list[ExtrasResult], folder: Path | None = None) -> list[Path]:
    """Write the results to `folder` (default: the extras output folder); returns the files."""
    if folder is None:
        folder = engine.data_path / (engine.options.get("outdir_extras_samples") or "outputs/extras-images")
    extension = engine.options.get("samples_format") or "png"
    quality = engine.options.get("jpeg_quality") or 80
    return [image_io.save_image(r.image, folder, seed=None, infotext=r.parameters, extension=extension,
                                jpeg_quality=quality, extra_texts=r.texts) for r in results]
