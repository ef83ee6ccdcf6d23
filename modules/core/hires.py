"""Hires. fix: A1111's txt2img second pass.

After the first pass at the request's width x height, the latents are enlarged (by ``hr_scale``,
or to ``hr_resize_x`` x ``hr_resize_y``) and refined by an img2img pass at the new size:

1. plan (before any sampling, loud checks): target size, sampler/schedule, prompts, checkpoint,
   the infotext keys;
2. upscale: a latent mode interpolates the latents; an image upscaler decodes, enlarges the
   pictures and encodes them again (with the hires checkpoint's VAE when there is one);
3. crop: when both resize sides are given and the aspect differs, the enlarged latents cover the
   target and the overhang is cut off evenly;
4. refine: noise from the same image seeds at the new size, the hires prompts, then
   ``hr_second_pass_steps`` (0 = ``steps``) steps of img2img at ``denoising_strength``;
5. decode with the hires model.

A1111's counting: the second pass runs exactly its steps, taken from the end of a schedule of
``int(steps / min(denoising_strength, 0.999))`` steps (its "img2img fix steps" rule, always on
for the hires pass); the job counts two jobs per batch, and the sampler reports its own steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from . import denoise, lora, model_ops, samplers, sampling_pass, upscaling
from .conditioning import persistent_cache
from .scheduled_conditioning import ScheduledConditioning, schedule_length
from .image_io import to_model_pixels
from .infotext import plain_number
from .types import MAX_SIDE, GenerationRequest, RequestError

SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"
SAME_CHECKPOINT = "Use same checkpoint"
MAX_HIRES_SIDE = 4 * MAX_SIDE


@dataclass(frozen=True)
class HiresSize:
    """Where the second pass goes, in pixels (A1111's ``hr_upscale_to_x/y``, ``truncate_x/y``)."""

    upscale_to: tuple[int, int]  # (width, height) the first pass is enlarged to
    truncate: tuple[int, int]  # latent columns, rows cut off afterwards (both resize sides given)
    width: int  # the result's size: whole latent pixels after the crop
    height: int


def target_size(width: int, height: int, hr_scale: float, resize_x: int = 0, resize_y: int = 0,
                latent_scale: int = 8) -> HiresSize:
    """A1111's ``calculate_target_resolution``.

    No resize side: ``hr_scale`` times the first-pass size. One side: that side, the other keeps the
    aspect. Both: the picture is enlarged to cover ``resize_x`` x ``resize_y`` and the overhang is
    cropped in latent space. Sizes are whole latent pixels (rounded down), as A1111's latents are.
    """
    tx = ty = 0
    if resize_x == 0 and resize_y == 0:
        up_w, up_h = int(width * hr_scale), int(height * hr_scale)
    elif resize_y == 0:
        up_w, up_h = resize_x, resize_x * height // width
    elif resize_x == 0:
        up_w, up_h = resize_y * width // height, resize_y
    else:
        if width / height < resize_x / resize_y:
            up_w, up_h = resize_x, resize_x * height // width
        else:
            up_w, up_h = resize_y * width // height, resize_y
        tx, ty = (up_w - resize_x) // latent_scale, (up_h - resize_y) // latent_scale
    lat_w, lat_h = up_w // latent_scale - tx, up_h // latent_scale - ty
    return HiresSize((up_w, up_h), (tx, ty), lat_w * latent_scale, lat_h * latent_scale)


def old_first_pass_size(width: int, height: int) -> tuple[int, int]:
    """A1111's ``old_hires_fix_first_pass_dimensions`` (option ``use_old_hires_fix_width_height``:
    width/height are the final size): the first pass keeps the aspect at about 512x512 pixels,
    each side rounded up to a multiple of 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


@dataclass(frozen=True)
class HiresPlan:
    upscaler: str
    size: HiresSize
    steps: int  # second-pass steps
    denoising_strength: float
    sampler: str
    schedule: str
    prompt: str
    negative_prompt: str
    checkpoint: str | None  # another checkpoint to load for the pass; None: the job's model
    infotext: dict = field(default_factory=dict)  # A1111's "Hires …" keys in its order
    used_embeddings: dict = field(default_factory=dict)  # TI name -> shorthash, filled by the refine step
    loras: object = None  # lora.JobLoras of the hires prompt (prompt above: without its <lora:...> tags)

    @property
    def width(self) -> int:
        return self.size.width

    @property
    def height(self) -> int:
        return self.size.height


def _is_same(value: str | None, same: str) -> bool:
    return value is None or value == "" or value == same


def _sampler_and_schedule(request: GenerationRequest, sampler: str, schedule: str) -> tuple[str, str]:
    raw = sampler if _is_same(request.hr_sampler_name, SAME_SAMPLER) else request.hr_sampler_name
    try:
        samplers.get_spec(raw)
    except ValueError as exc:
        raise RequestError("hr_sampler_name", str(exc)) from exc
    if not _is_same(request.hr_scheduler, SAME_SCHEDULER):
        try:
            return samplers.resolve(raw, request.hr_scheduler)
        except ValueError as exc:
            raise RequestError("hr_scheduler", str(exc)) from exc
    try:  # "same": the first pass's schedule type, else the hires sampler's own default
        return samplers.resolve(raw, schedule)
    except ValueError:
        try:
            return samplers.resolve(raw, "Automatic")
        except ValueError as exc:
            raise RequestError("hr_sampler_name", str(exc)) from exc


def plan(request: GenerationRequest, sampler: str, schedule: str, width: int, height: int, latent_scale: int,
         checkpoint_title: Callable[[str], str] | None = None,
         final_size: tuple[int, int] | None = None) -> HiresPlan | None:
    """Check and resolve the hires fields (None when hires is off). ``sampler``/``schedule`` and
    ``width``/``height`` are the first pass's; ``checkpoint_title(name)`` gives A1111's short title
    of ``hr_checkpoint_name`` and raises ValueError for an unknown one. ``final_size``: the request's
    width x height under ``use_old_hires_fix_width_height`` (the first pass then being
    :func:`old_first_pass_size`): A1111 takes it as both resize sides, ``hr_scale`` and the resize
    fields are not read."""
    if not request.enable_hr:
        return None
    try:
        upscaling.get(request.hr_upscaler)
    except ValueError as exc:
        raise RequestError("hr_upscaler", str(exc)) from exc
    resize_x, resize_y = final_size if final_size is not None else (request.hr_resize_x, request.hr_resize_y)
    size = target_size(width, height, request.hr_scale, resize_x, resize_y, latent_scale)
    resized = resize_x > 0 or resize_y > 0
    blame = ("width" if final_size is not None else
             ("hr_resize_x" if request.hr_resize_x else "hr_resize_y") if resized else "hr_scale")
    if size.width < latent_scale or size.height < latent_scale:
        raise RequestError(blame, f"the hires size {size.width}x{size.height} is empty")
    if max(size.upscale_to) > MAX_HIRES_SIDE:
        raise RequestError(blame, f"the hires size {size.upscale_to[0]}x{size.upscale_to[1]} exceeds {MAX_HIRES_SIDE}")

    hr_sampler, hr_schedule = _sampler_and_schedule(request, sampler, schedule)
    checkpoint = None if _is_same(request.hr_checkpoint_name, SAME_CHECKPOINT) else request.hr_checkpoint_name
    title = None
    if checkpoint is not None:
        if checkpoint_title is None:
            raise RequestError("hr_checkpoint_name", "another checkpoint for the hires pass is not available here")
        try:
            title = checkpoint_title(checkpoint)
        except ValueError as exc:
            raise RequestError("hr_checkpoint_name", getattr(exc, "message", str(exc))) from exc
    prompt = request.hr_prompt or request.prompt
    negative = request.hr_negative_prompt or request.negative_prompt

    # A1111's order: checkpoint, sampler, prompts, schedule type, upscale/resize, steps, upscaler
    # ("Denoising strength" has its own place earlier in the line).
    info: dict = {
        "Hires checkpoint": title,
        "Hires sampler": hr_sampler if hr_sampler != sampler else None,
        "Hires prompt": prompt if prompt != request.prompt else None,
        "Hires negative prompt": negative if negative != request.negative_prompt else None,
        "Hires schedule type": hr_schedule if hr_schedule != schedule else None,
    }
    if resized:
        info["Hires resize"] = f"{resize_x}x{resize_y}"
    else:
        info["Hires upscale"] = plain_number(request.hr_scale)
    info["Hires steps"] = request.hr_second_pass_steps or None
    info["Hires upscaler"] = request.hr_upscaler
    return HiresPlan(
        upscaler=request.hr_upscaler,
        size=size,
        steps=request.hr_second_pass_steps or request.steps,
        denoising_strength=request.denoising_strength,
        sampler=hr_sampler,
        schedule=hr_schedule,
        prompt=prompt,
        negative_prompt=negative,
        checkpoint=checkpoint,
        infotext={k: v for k, v in info.items() if v is not None},
    )


def upscale(hr: HiresPlan, model, hr_model, latents: torch.Tensor) -> torch.Tensor:
    """Steps 2-3: the first pass's latents -> latents at the hires size (for ``hr_model``)."""
    scale = hr_model.latent_scale
    lat_w, lat_h = hr.size.upscale_to[0] // scale, hr.size.upscale_to[1] // scale
    if upscaling.is_latent(hr.upscaler):
        x = upscaling.resize_latents(latents, lat_h, lat_w, hr.upscaler)
    else:
        images = model_ops.decode_latents(model, latents)
        images = [upscaling.upscale_image(im, lat_w * scale, lat_h * scale, hr.upscaler) for im in images]
        x = model_ops.encode_pixels(hr_model, to_model_pixels(images))
    tx, ty = hr.size.truncate
    return x[:, :, ty // 2:x.shape[2] - (ty + 1) // 2, tx // 2:x.shape[3] - (tx + 1) // 2].to(hr_model.device)


def timeline(hr: HiresPlan, request: GenerationRequest) -> tuple[int, int]:
    """The hires pass's prompt-editing timeline, A1111's ``calculate_hr_conds``: (the first pass's
    schedule length, the hires pass's), each doubled for a second-order sampler."""
    first_pass = schedule_length(request.steps, samplers.resolve(request.sampler_name, request.scheduler)[0])
    return first_pass, schedule_length(hr.steps, hr.sampler)


def _conds_factory(hr: HiresPlan, request: GenerationRequest, settings, shape: tuple[int, ...], batch: int, *,
                   clip_skip: int, prompts: list[str] | None, negative_prompts: list[str] | None,
                   conditioning=None) -> Callable[[object], ScheduledConditioning]:
    """``conds_for(model)``: the hires prompts' conditioning for every step of the pass, encoded by
    ``model`` as its weights are when called (its networks applied)."""
    up_w, up_h = hr.size.upscale_to  # A1111 encodes the hires prompts for this size (SDXL)
    # prompt editing goes on along the first pass's timeline (A1111's hires_steps scheduling), or,
    # with use_old_scheduling, restarts on the first pass's own (A1111's old timelines)
    first_pass, hires_steps = timeline(hr, request)
    prompts = [hr.prompt] * batch if prompts is None else prompts
    negative_prompts = [hr.negative_prompt] * batch if negative_prompts is None else negative_prompts

    def conds_for(model) -> ScheduledConditioning:
        conditioner = model.family.conditioner(model, clip_skip=clip_skip, emphasis=settings.emphasis,
                                               embeddings=settings.embeddings, options=conditioning or settings.conditioning,
                                               cache=persistent_cache(model) if settings.persistent_cond_cache else None)
        concat = None
        if model.spec.inpainting:  # A1111 (mask weight 1): a fully masked grey picture, as in txt2img
            concat = model_ops.txt2img_image_conditioning(model, batch, hr.width, hr.height)
        elif model.spec.edit_model:  # instruct-pix2pix without a picture
            concat = model_ops.edit_image_conditioning(model, None, batch, shape)
        conds = ScheduledConditioning(conditioner, prompts, negative_prompts, first_pass, up_w, up_h,
                                      hires_steps=hires_steps, image_conditioning=concat,
                                      use_old_scheduling=settings.use_old_scheduling)
        hr.used_embeddings.update(conditioner.used_embeddings)
        return conds

    return conds_for


def _refine(hr: HiresPlan, request: GenerationRequest, hr_model, settings, x: torch.Tensor, *,
            conds_for: Callable[[object], ScheduledConditioning], hooks: denoise.DenoiseHooks,
            seeds: sampling_pass.Seeds, refiner: sampling_pass.RefinerPlan | None = None,
            cond_batching: denoise.CondBatching | None = None) -> sampling_pass.PassResult:
    """Step 4: img2img of the upscaled latents at the hires size, with the image seeds' noise and
    the conditioning of ``conds_for`` (see :func:`_conds_factory`)."""
    shape = tuple(x.shape[1:])
    # Run exactly hr.steps steps from the end of a longer schedule (A1111's hires rule).
    schedule_steps = int(hr.steps / min(hr.denoising_strength, 0.999))
    strength = min(1.0, (hr.steps + 0.5) / schedule_steps)  # int(schedule_steps * strength) == hr.steps
    return sampling_pass.run(
        hr_model, settings, sampler=hr.sampler, schedule=hr.schedule, conds_for=conds_for, shape=shape,
        seeds=seeds, steps=schedule_steps, cfg_scale=request.cfg_scale, hooks=hooks, refiner=refiner,
        token_ratio=settings.token_merging_ratio_hr, cond_batching=cond_batching,
        start=lambda noise, scheduler: sampling_pass.Start(init_latents=x, strength=strength,
                                                          extra_noise=settings.img2img.extra_noise),
    )


def second_pass(hr: HiresPlan, request: GenerationRequest, model, hr_model, settings, latents: torch.Tensor, *,
                seeds: sampling_pass.Seeds, clip_skip: int, hooks: denoise.DenoiseHooks, refine: bool = True,
                conditioning=None,
                prompts: list[str] | None = None, negative_prompts: list[str] | None = None,
                before_decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                refiner: sampling_pass.RefinerPlan | None = None,
                decode: Callable[[object, torch.Tensor], list[Image.Image]] = model_ops.decode_latents,
                cond_batching: denoise.CondBatching | None = None,
                ) -> tuple[list[Image.Image], bool]:
    """Upscale one batch's first-pass latents, refine them and decode: (the final pictures, whether
    the pass switched to the refiner). ``model`` made the latents (the first pass ended on it);
    ``hr_model`` runs the pass (the hires checkpoint, or ``model``), already loaded and tiled by the
    caller; ``refiner``: switch to the SDXL refiner during this pass. ``before_decode`` gets the
    final latents and returns the ones to decode (A1111's post_sample); ``decode(model, latents)`` makes
    the pictures (the VAE's, or the live preview method's after an interrupt). ``refine=False`` (the batch
    was skipped) only upscales, like A1111's sampler stopping at once.
    """
    if hr_model.spec.latent_channels != model.spec.latent_channels:
        raise RequestError("hr_checkpoint_name", "its latents do not match the first checkpoint's")
    x = upscale(hr, model, hr_model, latents)
    final, switched = hr_model, False
    if refine and hr.denoising_strength != 0:
        conds_for = _conds_factory(hr, request, settings, tuple(x.shape[1:]), x.shape[0], clip_skip=clip_skip,
                                   prompts=prompts, negative_prompts=negative_prompts, conditioning=conditioning)
        if settings.hires_fix_use_firstpass_conds and hr.checkpoint is None:
            # A1111's hires_fix_use_firstpass_conds: the hires conds are computed with the first pass
            # (its setup_conds), under the first prompt's networks; a refiner switch encodes anew
            firstpass_conds, encode = conds_for(hr_model), conds_for
            conds_for = lambda m: firstpass_conds if m is hr_model else encode(m)  # noqa: E731
        lora.activate(hr_model, hr.loras)
        done = _refine(hr, request, hr_model, settings, x, conds_for=conds_for, seeds=seeds, hooks=hooks,
                       refiner=refiner, cond_batching=cond_batching)
        x, final, switched = done.latents, done.model, done.switched
    elif refine:
        lora.activate(hr_model, hr.loras)
    return decode(final, x if before_decode is None else before_decode(x)), switched
