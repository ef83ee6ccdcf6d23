"""img2img and inpainting around the sampling loop, with A1111's semantics.

:func:`prepare` turns an :class:`Img2ImgRequest` into an :class:`Img2ImgJob` once per job (A1111's
``StableDiffusionProcessingImg2Img.init``):

1. every init image is flattened to RGB (transparency over the background colour setting);
2. the mask is made binary, resized to the init image, inverted ("Inpaint not masked") and blurred;
   a mask that ends up empty is dropped and the job is plain img2img (see :func:`_prepare_mask`);
3. "Whole picture": images and mask are resized to the processing size with the resize mode;
   "Only masked": the mask's bounding box plus padding, widened to the processing aspect ratio, is
   cut out of the full-size image and scaled to the processing size;
4. the masked area is pre-filled ("Masked content: fill"), colour-correction targets are taken;
5. the images are VAE-encoded (the distribution's mean); "Just resize (latent upscale)" resizes
   the latents instead of the pixels; inpainting UNets get their mask + masked-image conditioning.

The pipeline then asks the job, per batch, for the starting latents (:meth:`Img2ImgJob.start_latents`,
where "latent noise"/"latent nothing" are applied), the inpainting conditioning, a per-step blend that
keeps the unmasked area on the init image's trajectory, and finally :meth:`Img2ImgJob.finish` for
colour correction and for pasting the result back under the original (so pixels outside the blurred
mask are the input's, exactly).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor

from . import color_correction, masks, samplers, upscaling
from .image_io import to_model_pixels, to_rgb_or_rgba
from .types import Img2ImgRequest, RequestError

__all__ = ["Img2ImgSettings", "Img2ImgJob", "prepare", "default_size", "flatten", "sampler_steps",
           "MASKED_CONTENT"]

log = logging.getLogger(__name__)

# inpainting_fill values, as A1111 names them in the UI and the infotext.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
LATENT_RESIZE_MODE = "Latent"  # A1111 resizes img2img latents bilinearly, without antialiasing
# (current latents, generate mask, init latents, blended, final) -> the latents to go on with
BlendHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]
# (picture index, overlay RGBA (alpha 255 = the original shows), mask L) -> (overlay, mask)
OverlayHook = Callable[[int, Image.Image, Image.Image], tuple[Image.Image, Image.Image]]
# (picture index, what: one of COPIES, the picture): the pictures A1111 saves or returns besides the result
CopyHook = Callable[[int, str, Image.Image], None]
COPIES = ("before-color-correction", "mask", "mask-composite")


@dataclass
class Img2ImgSettings:
    """The options img2img reads (A1111 option names in comments)."""

    color_correction: bool = False  # img2img_color_correction
    mask_weight: float = 1.0  # inpainting_mask_weight ("Inpainting conditioning mask strength")
    noise_multiplier: float = 1.0  # initial_noise_multiplier
    extra_noise: float = 0.0  # img2img_extra_noise (img2img and the hires pass; "Extra noise" in the infotext)
    fix_steps: bool = False  # img2img_fix_steps
    background_color: str = "#ffffff"  # img2img_background_color
    max_input_pixels: int = 4096 * 4096  # img2img_max_input_pixels
    overlay: bool = True  # overlay_inpaint: the original pasted over what was not inpainted
    upscaler: str | None = None  # upscaler_for_img2img: enlarges init images (None / "None": Lanczos)


# --------------------------------------------------------------------------- small helpers

def default_size(request: Img2ImgRequest, multiple: int = 8) -> tuple[int, int]:
    """Processing size when the request gives none: the first init image's, rounded down to a
    multiple of ``multiple``, at least 64 (A1111's "Resize by 1"). A picture with a side over
    MAX_SIDE is refused, not shrunk: the request must say what size it wants."""
    from .types import MAX_SIDE

    width, height = request.init_images[0].size
    if max(width, height) > MAX_SIDE:
        raise RequestError("init_images", f"the picture is {width}x{height}; its own size is used when width and "
                                          f"height are not given, and sides over {MAX_SIDE} are not possible: "
                                          f"give width and height (at most {MAX_SIDE}) to resize it")
    snap = lambda v: max(v // multiple * multiple, 64)  # noqa: E731
    return snap(width), snap(height)


def flatten(image: Image.Image, background: str) -> Image.Image:
    """Any mode -> RGB; transparent parts show ``background`` (A1111's ``images.flatten``)."""
    image = to_rgb_or_rgba(image)
    if image.mode != "RGBA":
        return image
    canvas = Image.new("RGBA", image.size, ImageColor.getrgb(background))
    canvas.alpha_composite(image)
    return canvas.convert("RGB")


def sampler_steps(steps: int, strength: float, fix_steps: bool, kdiffusion: bool = False) -> tuple[int, float]:
    """(schedule length, strength for the sampler: ``denoise.sample`` runs int(schedule * strength)
    steps at the end of the schedule). A1111's ``setup_img2img_steps``: with ``img2img_fix_steps``
    on, exactly ``steps`` steps run, at the end of a schedule of int(steps / strength) steps. Off,
    the schedule is ``steps`` long and t_enc = int(min(strength, 0.999) * steps); A1111's k-diffusion
    samplers (``kdiffusion``) run t_enc + 1 steps of it (``sigmas[steps - t_enc - 1:]``: 11 of 20 at
    strength 0.5), its timestep samplers (DDIM, PLMS, UniPC) t_enc."""
    if not fix_steps or strength <= 0.0 or strength >= 1.0:
        if not kdiffusion or strength >= 1.0 or strength <= 0.0:  # 0: the init image as it is
            return steps, strength
        run = int(min(strength, 0.999) * steps) + 1
        return steps, min(1.0, (run + 0.5) / steps)  # +0.5: int(steps * s) lands on `run`
    schedule = int(steps / min(strength, 0.999))
    return schedule, min(1.0, (steps + 0.5) / schedule)  # +0.5: int(schedule * s) lands on `steps`


def _runs_on_k_diffusion(sampler_name: str) -> bool:
    try:
        return samplers.get_spec(sampler_name).kdiff is not None
    except ValueError:  # refused later, with the field named
        return False


def _check_pixels(image: Image.Image, field_name: str, limit: int) -> None:
    width, height = image.size
    if width * height > limit:
        raise RequestError(field_name, f"image is {width}x{height} = {width * height} pixels, over the limit of "
                                       f"{limit} pixels (option img2img_max_input_pixels)")
    if width < 1 or height < 1:
        raise RequestError(field_name, "image is empty (0 pixels)")


def _binary_tensor(mask: Image.Image, size: tuple[int, int], resample=Image.Resampling.BICUBIC) -> torch.Tensor:
    """L mask -> (1, 1, h, w) of 0/1 at ``size`` (w, h), rounded as A1111 does."""
    resized = mask if mask.size == size else mask.resize(size, resample=resample)
    values = np.asarray(resized.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.round(values))[None, None]


# --------------------------------------------------------------------------- the mask

@dataclass
class _Mask:
    processing: Image.Image  # L at the processing size: what the sampler repaints (white)
    overlay: Image.Image  # L at the output size: how much of the result shows through the original
    crop: tuple[int, int, int, int] | None = None  # "Only masked": region of the full-size image


def _prepare_mask(request: Img2ImgRequest, image_size: tuple[int, int], width: int, height: int) -> _Mask | None:
    """Binary, resized to the init image, inverted, blurred; then fitted to the processing size.

    An empty mask (nothing white after inverting) returns None and the job runs as plain img2img:
    the UI sends an all-black mask when nothing was drawn, and A1111 itself falls back to img2img
    for a blank mask in "Only masked" mode; an error would fail that ordinary case, and running the
    sampler to paste the whole input back unchanged would only waste the time."""
    mask = masks.binary_mask(request.mask)
    if mask.size != image_size:  # A1111 accepts a mask of another size and stretches it
        mask = masks.binary_mask(mask.resize(image_size, resample=Image.Resampling.BILINEAR))
    if request.inpainting_mask_invert:
        mask = masks.invert(mask)
    blur_x, blur_y = request.blur_x, request.blur_y
    mask = masks.blur(mask, blur_x, blur_y)
    if masks.is_empty(mask):
        log.info("the mask is empty: running plain img2img")
        return None
    if request.inpaint_full_res:
        region = masks.crop_region(mask, request.inpaint_full_res_padding)
        region = masks.expand_to_aspect(region, width, height, mask.width, mask.height)
        return _Mask(masks.resize_image(2, mask.crop(region), width, height), mask, region)
    processing = masks.resize_image(0 if request.resize_mode == 3 else request.resize_mode, mask, width, height)
    # the overlay keeps the original up to half way into the blur band
    overlay = Image.fromarray(np.clip(np.asarray(processing, dtype=np.float32) * 2, 0, 255).astype(np.uint8), "L")
    return _Mask(processing, overlay)


# --------------------------------------------------------------------------- the job

@dataclass
class _Overlay:
    picture: np.ndarray  # (H, W, 3) uint8: the init image at the output size
    opacity: np.ndarray  # (H, W) float: 1 = the original shows, 0 = the result shows


@dataclass
class Img2ImgJob:
    init_latents: torch.Tensor  # (N, C, h, w), N = number of init images
    denoising_strength: float
    schedule_steps: int  # steps of the noise schedule (see sampler_steps)
    sampler_strength: float
    noise_multiplier: float
    inpainting_fill: int
    generate_mask: torch.Tensor | None = None  # (1, 1, h, w): 1 = sampled, 0 = kept from the init image
    image_conditioning: torch.Tensor | None = None  # (N, 5, h, w) for inpainting UNets
    overlays: list[_Overlay] | None = None
    paste_to: tuple[int, int, int, int] | None = None  # (x, y, w, h) in the output image
    color_targets: list[np.ndarray] | None = None
    conditional_mask_weight: float | None = None
    infotext: dict = field(default_factory=dict)  # A1111's extra_generation_params, in its order
    overlay_mask: Image.Image | None = None  # L at the output size: A1111's mask_for_overlay (save_mask, ...)

    def _per_image(self, tensor: torch.Tensor, batch: int) -> torch.Tensor:
        return tensor.expand(batch, *tensor.shape[1:]).clone() if tensor.shape[0] == 1 else tensor.clone()

    def start_latents(self, batch: int, seed_noise: torch.Tensor) -> torch.Tensor:
        """Init latents for a batch; "latent noise" puts the seeds' noise, "latent nothing" zeros in
        the masked area (A1111 does this in latent space, after encoding)."""
        latents = self._per_image(self.init_latents, batch).to(seed_noise.device)
        if self.generate_mask is not None and self.inpainting_fill in (2, 3):
            keep = 1.0 - self.generate_mask.to(latents.device)
            fresh = seed_noise if self.inpainting_fill == 2 else torch.zeros_like(latents)
            latents = latents * keep + fresh * (1.0 - keep)
        return latents

    def conditioning(self, batch: int, device) -> torch.Tensor:
        return self._per_image(self.image_conditioning, batch).to(device)

    def blend(self, latents: torch.Tensor, target: torch.Tensor, on_blend: BlendHook | None = None,
              final: bool = True) -> torch.Tensor:
        """The kept area from `target`; `on_blend` (the job hooks' ``mask_blend``) may change the result."""
        if self.generate_mask is None:
            return latents
        generate = self.generate_mask.to(latents.device, latents.dtype)
        blended = target * (1.0 - generate) + latents * generate
        return blended if on_blend is None else on_blend(latents, generate, target, blended, final)

    def step_blender(self, scheduler, init: torch.Tensor, noise: torch.Tensor, on_blend: BlendHook | None = None
                     ) -> Callable[[int, torch.Tensor | None, torch.Tensor], torch.Tensor] | None:
        """After each sampler step, the kept area gets the init latents noised to the next timestep
        with the sampler's own starting noise (un-noised after the last step)."""
        if self.generate_mask is None:
            return None

        def blend_step(step: int, next_timestep: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
            if next_timestep is None:
                return self.blend(latents, init, on_blend, final=False)
            noised = scheduler.add_noise(init, noise, next_timestep.reshape(1).expand(init.shape[0]))
            return self.blend(latents, noised, on_blend, final=False)

        return blend_step

    def finish(self, images: list[Image.Image], on_overlay: OverlayHook | None = None,
               on_copy: CopyHook | None = None, copies: frozenset[str] | set[str] = frozenset()) -> list[Image.Image]:
        """Colour correction, then the result pasted back under the original (A1111's order).
        Image ``i`` of a batch belongs to init image ``i`` (or to the only one). `on_overlay` (the
        job hooks' ``mask_overlay``) sees each overlay first and may replace it. `on_copy` gets the
        `copies` asked for (of COPIES): the picture before colour correction (pasted back), the
        greyscale mask (RGB) and the result where the mask is, transparent elsewhere (RGBA)."""
        done = []
        for i, image in enumerate(images):
            overlay = None
            if self.overlays is not None:
                overlay = self.overlays[i % len(self.overlays)]
                if on_overlay is not None:
                    overlay = _hooked_overlay(overlay, on_overlay, i)
            if self.color_targets is not None:
                if on_copy is not None and "before-color-correction" in copies:
                    on_copy(i, "before-color-correction", image if overlay is None else self._paste_back(image, overlay))
                image = color_correction.correct(self.color_targets[i % len(self.color_targets)], image)
            denoised = image if overlay is None else self._uncropped(image, overlay)
            if overlay is not None:
                image = self._mix(denoised, overlay)
            if on_copy is not None and self.overlay_mask is not None:
                if "mask" in copies:
                    on_copy(i, "mask", self.overlay_mask.convert("RGB"))
                if "mask-composite" in copies:
                    on_copy(i, "mask-composite", _mask_composite(denoised, self.overlay_mask, image.size))
            done.append(image)
        return done

    def _paste_back(self, image: Image.Image, overlay: _Overlay) -> Image.Image:
        return self._mix(self._uncropped(image, overlay), overlay)

    def _uncropped(self, image: Image.Image, overlay: _Overlay) -> Image.Image:
        """The result at the output size ("Only masked": in its place in the original)."""
        height, width = overlay.opacity.shape
        if self.paste_to is not None:
            x, y, w, h = self.paste_to
            canvas = overlay.picture.copy()
            canvas[y:y + h, x:x + w] = np.asarray(masks.resize_image(1, image.convert("RGB"), w, h))
            return Image.fromarray(canvas, "RGB")
        if image.size != (width, height):
            return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        return image.convert("RGB")

    @staticmethod
    def _mix(denoised: Image.Image, overlay: _Overlay) -> Image.Image:
        result = np.asarray(denoised, dtype=np.float32)
        opacity = overlay.opacity[:, :, None]
        mixed = overlay.picture.astype(np.float32) * opacity + result * (1.0 - opacity)
        out = np.clip(mixed.round(), 0, 255).astype(np.uint8)
        fully = overlay.opacity >= 1.0
        out[fully] = overlay.picture[fully]  # exactly the input outside the mask
        return Image.fromarray(out, "RGB")


def _mask_composite(denoised: Image.Image, mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A1111's "masked composite": the result where the mask is white, transparent where it is black."""
    width, height = size
    if denoised.size != size:
        denoised = denoised.resize(size, Image.Resampling.LANCZOS)
    fitted = mask if mask.size == size else masks.resize_image(2, mask, width, height)
    return Image.composite(denoised.convert("RGBA"), Image.new("RGBA", size), fitted.convert("L"))


def prepare(
    request: Img2ImgRequest,
    width: int,
    height: int,
    *,
    latent_scale: int,
    encode: Callable[[torch.Tensor], torch.Tensor],
    inpainting_model: bool,
    settings: Img2ImgSettings,
) -> Img2ImgJob:
    """Everything that is the same for every batch of the job (see the module docstring).

    ``encode`` maps (B, 3, H, W) pixels in [-1, 1] to scaled latents (the VAE mean)."""
    # 1. check and flatten the inputs
    count = len(request.init_images)
    if count not in (1, request.batch_size):
        raise RequestError("init_images", f"{count} init images for a batch size of {request.batch_size}: give one "
                                          "(used for every image of a batch) or one per image of the batch")
    for i, image in enumerate(request.init_images):
        _check_pixels(image, "init_images", settings.max_input_pixels)
    if request.mask is not None:
        _check_pixels(request.mask, "mask", settings.max_input_pixels)
    try:
        images = [flatten(image, settings.background_color) for image in request.init_images]
    except ValueError as exc:
        raise RequestError("img2img_background_color", f"not a colour: {exc}") from exc

    # 2. the mask
    mask = None
    if request.mask is not None:
        if request.inpaint_full_res and len({image.size for image in images}) > 1:
            raise RequestError("init_images", "with a mask and 'Only masked', all init images must have one size")
        mask = _prepare_mask(request, images[0].size, width, height)
    infotext = _mask_infotext(request, mask)

    # 3.-4. pixels at the processing size, overlays, fill, colour targets
    mode = request.resize_mode
    resize = _resizer(settings.upscaler)
    overlays, targets, pixels = [], [], []
    for image in images:
        if mask is None or mask.crop is None:
            image = masks.resize_image(mode, image, width, height, resize) if mode != 3 else image
        if mask is not None:
            shown = image if mode != 3 or mask.crop is not None else masks.resize_image(0, image, width, height)
            overlays.append(_Overlay(np.asarray(shown.convert("RGB")).copy(),
                                     1.0 - np.asarray(mask.overlay, dtype=np.float32) / 255.0))
            if mask.crop is not None:
                image = masks.resize_image(2, image.crop(mask.crop), width, height, resize)
            if request.inpainting_fill != 1:
                image = masks.fill(image, mask.processing)
        if settings.color_correction:
            targets.append(color_correction.color_target(image))
        pixels.append(to_model_pixels([image]))

    # 5. latents, latent mask, inpainting conditioning
    latent_size = (height // latent_scale, width // latent_scale)
    latents = torch.cat([_fit_latents(encode(p), latent_size) for p in pixels])
    generate_mask = None
    if mask is not None:
        generate_mask = _binary_tensor(mask.processing, (latent_size[1], latent_size[0]))
    conditioning = None
    if inpainting_model:
        conditioning = torch.cat([
            _inpainting_conditioning(p, mask.processing if mask else None, settings.mask_weight, encode, latent_size)
            for p in pixels
        ])
    multiplier = settings.noise_multiplier if request.initial_noise_multiplier is None else request.initial_noise_multiplier
    if multiplier != 1.0:
        infotext["Noise multiplier"] = multiplier
    schedule, strength = sampler_steps(request.steps, request.denoising_strength, settings.fix_steps,
                                       kdiffusion=_runs_on_k_diffusion(request.sampler_name))
    return Img2ImgJob(
        init_latents=latents,
        denoising_strength=request.denoising_strength,
        schedule_steps=schedule,
        sampler_strength=strength,
        noise_multiplier=multiplier,
        inpainting_fill=request.inpainting_fill,
        generate_mask=generate_mask,
        image_conditioning=conditioning,
        overlays=(overlays or None) if settings.overlay else None,  # overlay_inpaint off: the result as sampled
        overlay_mask=mask.overlay if mask is not None else None,
        paste_to=None if mask is None or mask.crop is None else _paste_box(mask.crop),
        color_targets=targets or None,
        conditional_mask_weight=settings.mask_weight if inpainting_model else None,
        infotext=infotext,
    )


def _resizer(name: str | None) -> Callable[[Image.Image, int, int], Image.Image] | None:
    """A1111's upscaler_for_img2img in its resize_image: a picture to enlarge goes through the
    upscaler (then Lanczos to the exact size); None or "None": Lanczos alone."""
    if not name or name == "None":
        return None
    try:
        upscaling.get(name)
    except (KeyError, ValueError) as exc:
        raise RequestError("upscaler_for_img2img", str(exc.args[0] if exc.args else exc)) from None
    if upscaling.is_latent(name):
        raise RequestError("upscaler_for_img2img", f"'{name}' resizes latents, not pictures")

    def resize(image: Image.Image, width: int, height: int) -> Image.Image:
        if image.size == (width, height):
            return image
        return upscaling.upscale_image(image, width, height, name)

    return resize


def _hooked_overlay(overlay: _Overlay, hook: OverlayHook, index: int) -> _Overlay:
    """The overlay as A1111's pictures (RGBA overlay, L mask of the repainted area), through the
    hook; an overlay the hook left alone is used as it was, to the bit."""
    alpha = np.clip(np.round(overlay.opacity * 255.0), 0, 255).astype(np.uint8)
    picture = Image.fromarray(np.dstack([overlay.picture, alpha]), "RGBA")
    given, _mask = hook(index, picture, Image.fromarray(255 - alpha, "L"))
    if given is picture:
        return overlay
    height, width = overlay.opacity.shape
    given = given.convert("RGBA")
    if given.size != (width, height):
        given = given.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(given)
    return _Overlay(array[..., :3].copy(), array[..., 3].astype(np.float32) / 255.0)


def _paste_box(crop: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = crop
    return x1, y1, x2 - x1, y2 - y1


def _fit_latents(latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """"Just resize (latent upscale)": the latents of the full-size image are resized instead."""
    if tuple(latents.shape[-2:]) == size:
        return latents
    return upscaling.resize_latents(latents, size[0], size[1], LATENT_RESIZE_MODE)


def _inpainting_conditioning(pixels: torch.Tensor, mask: Image.Image | None, weight: float,
                             encode: Callable[[torch.Tensor], torch.Tensor], latent_size: tuple[int, int]
                             ) -> torch.Tensor:
    """What a 9-channel UNet sees besides the latents: the binary mask and the latents of the image
    with the masked area greyed out (``weight`` < 1 lets some of the original through; A1111's
    "Inpainting conditioning mask strength"). No mask: everything counts as masked."""
    height, width = pixels.shape[-2:]
    if mask is None:
        binary = torch.ones(1, 1, height, width)
    else:
        binary = _binary_tensor(mask, (width, height), Image.Resampling.NEAREST)
    masked = torch.lerp(pixels, pixels * (1.0 - binary), weight)
    latents = _fit_latents(encode(masked), latent_size)
    small = F.interpolate(binary, size=latent_size).to(latents.device, latents.dtype)
    return torch.cat([small, latents], dim=1)


def _mask_infotext(request: Img2ImgRequest, mask: _Mask | None) -> dict:
    """A1111's inpainting fields, in the order it adds them."""
    if mask is None:
        return {}
    params: dict = {}
    if request.inpainting_mask_invert:
        params["Mask mode"] = "Inpaint not masked"
    if (request.blur_x > 0 or request.blur_y > 0) and request.blur_x == request.blur_y:
        params["Mask blur"] = request.blur_x  # A1111 writes one value only when x and y agree
    if mask.crop is not None:
        params["Inpaint area"] = "Only masked"
        params["Masked area padding"] = request.inpaint_full_res_padding
    if request.inpainting_fill != 1:
        params["Masked content"] = MASKED_CONTENT[request.inpainting_fill]
    return params
