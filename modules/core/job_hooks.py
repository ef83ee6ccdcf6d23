"""The hook points of one `pipeline.generate()` call, for the layer above the core.

A1111's scripts and callbacks (modules.scripts, modules.script_callbacks, modules.processing) are
built on these; the core knows nothing of them. Every method is a no-op here: subclass and
override what you need, and pass the object as ``generate(..., hooks=...)``.

The order for one job (N batches of B images):

1. ``job_started(values)``: the per-image prompts, negative prompts, seeds and subseeds of the whole
   job (and the hires prompts when hires fix is on); edit the lists in place (same lengths).
2. Per batch:
   a. ``batch_started(batch)``: the batch's slice, prompts still with their ``<lora:...>`` tags;
   b. the tags are cut out, the first prompt's LoRAs are applied (A1111: the first prompt of a batch
      chooses the extra networks);
   c. ``batch_conditioning(batch)``: the prompts the text encoder will see, seeds the noise comes from;
   d. sampling, with ``cfg_denoiser`` / ``cfg_denoised`` / ``cfg_after_cfg`` at every model call
      (the hires pass included), ``extra_noise`` once before an img2img loop when the extra noise
      setting is on, and ``mask_blend`` wherever inpainting puts the kept area back (after every
      step and once at the end); with hires fix, ``before_hires(batch)`` before its pass;
      then ``batch_sampled(batch, latents)``: the final latents, before decoding;
   e. ``batch_decoded(batch, images)``: the decoded pictures (``batch.prompts`` are the job's prompts
      again, tags included, as the infotexts show them); return the list to go on with; a hook that
      changes the number of pictures must change ``batch``'s lists to match;
   f. ``image_ready(batch, i, image)`` for each picture, before img2img's colour correction and
      paste-back; ``mask_overlay(batch, i, overlay, mask)`` before an inpainting picture's
      paste-back; ``image_composited(batch, i, image)`` after them (txt2img too); each returns
      what to go on with;
   g. per picture: the infotext (``extra_params()`` adds its keys), then, when it is saved,
      ``before_save`` (may replace picture and text written to the file) and ``after_save``.
3. ``grid(images, rows, cols)`` before the job's grid is drawn, then the grid's save hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch import Tensor


@dataclass
class ImageValues:
    """One entry per picture of the job (A1111's ``all_prompts``, ``all_seeds``, ...)."""

    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    subseeds: list[int]
    hr_prompts: list[str] | None = None  # hires fix only
    hr_negative_prompts: list[str] | None = None

    def check(self, count: int, what: str = "job") -> None:
        """Loud failure when a hook left lists of the wrong length or type behind."""
        for name in ("prompts", "negative_prompts", "seeds", "subseeds", "hr_prompts", "hr_negative_prompts"):
            items = getattr(self, name)
            if items is None and name.startswith("hr_"):
                continue
            if not isinstance(items, list) or len(items) != count:
                got = f"{len(items)} entries" if isinstance(items, list) else type(items).__name__
                raise ValueError(f"the {what}'s {name} must be a list of {count} entries, a hook left {got}")
            kind = int if name.endswith("seeds") else str
            for item in items:
                if not isinstance(item, kind) or isinstance(item, bool):
                    raise ValueError(f"the {what}'s {name} must hold {kind.__name__} values, a hook left {item!r}")


@dataclass
class BatchValues(ImageValues):
    """The slice of one batch; ``index`` is the batch number (0-based)."""

    index: int = 0


class JobHooks:
    """No-op hook points of one job (see the module docstring for the order)."""

    def job_started(self, values: ImageValues) -> None:
        """Before the first batch: edit the job's per-image values in place."""

    def batch_started(self, batch: BatchValues) -> None:
        """Before the batch's extra-network tags are read: edit its values in place."""

    def batch_conditioning(self, batch: BatchValues) -> None:
        """LoRAs applied, tags cut out: the prompts and seeds this batch will be made from."""

    def cfg_denoiser(self, step: int, x: Tensor, t: Tensor, cond: dict, uncond: dict | None) -> None:
        """Before each model call (see ``denoise.DenoiseHooks.cfg_denoiser``)."""

    def cfg_denoised(self, step: int, x_pred: Tensor) -> None:
        """After each model call, before classifier-free guidance is combined."""

    def cfg_after_cfg(self, step: int, x_pred: Tensor) -> Tensor:
        """After the combine: return the prediction the sampler steps with."""
        return x_pred

    def extra_noise(self, noise: Tensor, init_latents: Tensor, noised: Tensor) -> Tensor:
        """img2img with extra noise: return the noise to add (``denoise.DenoiseHooks.extra_noise``)."""
        return noise

    def start_noise(self, batch: BatchValues, start) -> Tensor:
        """img2img, once per batch before the loop: the noise the sampling starts from
        (``start``: :class:`modules.core.noise_inversion.StartNoise`, with the means to find the
        noise that gives the init picture back). Default: the seeds' noise."""
        return start.noise

    def mask_blend(self, current: Tensor, generate: Tensor, init: Tensor, blended: Tensor,
                   final: bool) -> Tensor:
        """Inpainting put the kept area back: ``blended = init * (1 - generate) + current * generate``
        (``generate``: 1 where the picture is sampled; ``init``: the init latents, noised to the next
        step unless ``final``). Return the latents to go on with."""
        return blended

    def before_hires(self, batch: BatchValues) -> None:
        """Hires fix: the first pass of the batch is done, its second pass is about to run."""

    def batch_sampled(self, batch: BatchValues, latents: Tensor) -> Tensor:
        """The batch's final latents (after the hires pass, if any), before decoding: return the
        latents to decode."""
        return latents

    def batch_decoded(self, batch: BatchValues, images: list[Image.Image]) -> list[Image.Image]:
        """The batch's pictures right after decoding."""
        return images

    def image_ready(self, batch: BatchValues, position: int, image: Image.Image) -> Image.Image:
        """One picture, before colour correction and paste-back (img2img)."""
        return image

    def restores_faces(self) -> bool:
        """Whether `image_ready` restores faces (then save_images_before_face_restoration saves the
        pictures before it)."""
        return False

    def mask_overlay(self, batch: BatchValues, position: int, overlay: Image.Image,
                     mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        """Inpainting: the original to paste back over the picture (RGBA; alpha 255 where the
        original shows) and the mask of the repainted area (L). Return the pair to use."""
        return overlay, mask

    def image_composited(self, batch: BatchValues, position: int, image: Image.Image) -> Image.Image:
        """One picture after img2img's colour correction and paste-back (the final picture)."""
        return image

    def extra_params(self) -> dict:
        """Infotext keys to add (after the standard ones, before the pipeline's own extras)."""
        return {}

    def before_save(self, image: Image.Image, infotext: str, path: Path, is_grid: bool) -> tuple[Image.Image, str]:
        """About to write `image` to `path` (the name it is expected to get): return what to write."""
        return image, infotext

    def after_save(self, image: Image.Image, infotext: str, path: Path, is_grid: bool) -> None:
        """`image` was written to `path`."""

    def grid(self, images: list[Image.Image], rows: int, cols: int) -> tuple[list[Image.Image], int, int]:
        """The pictures of the job's grid and its layout, before it is drawn."""
        return images, rows, cols
