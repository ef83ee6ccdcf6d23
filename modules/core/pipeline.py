"""The one generation function: a typed request and a loaded model in, images out.

Read top to bottom: validate, resolve defaults, then per batch: encode prompts, make
noise from the seeds, denoise, decode, write infotext, save. No globals: settings
and the job observer (progress, interrupt, skip) come in as arguments.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

from . import denoise, hires, image_io, img2img, rng, samplers, saving, tiling
from . import lora  # <lora:...> networks
from .conditioning import TextConditioner
from .scheduled_conditioning import ScheduledConditioning, schedule_length
from .embeddings import ti_hashes
from .infotext import build_infotext, plain_number
from .job_hooks import BatchValues, ImageValues, JobHooks
from .job_settings import GenerationSettings, JobObserver  # noqa: F401 (public here too)
from .model_loader import LoadedModel
from .types import GenerationRequest, GenerationResult, Img2ImgRequest, RequestError


@dataclass
class _Plan:
    sampler: str
    schedule: str
    width: int
    height: int
    seeds: list[int]
    subseeds: list[int]
    clip_skip: int
    extra: dict = field(default_factory=dict)


class _LoopHooks(denoise.DenoiseHooks):
    def __init__(self, observer: JobObserver, job_hooks: JobHooks | None = None):
        self.observer = observer
        self.job_hooks = job_hooks  # the layer above's CFG hooks (A1111's on_cfg_* callbacks)
        self.stopped = False
        self.blend = None  # img2img inpainting: keeps the unmasked area on the init image's path

    def cfg_denoiser(self, step, x, t, cond, uncond):
        if self.job_hooks is not None:
            self.job_hooks.cfg_denoiser(step, x, t, cond, uncond)

    def cfg_denoised(self, step, x_pred):
        if self.job_hooks is not None:
            self.job_hooks.cfg_denoised(step, x_pred)

    def cfg_after_cfg(self, step, x_pred):
        return x_pred if self.job_hooks is None else self.job_hooks.cfg_after_cfg(step, x_pred)

    def extra_noise(self, noise, init_latents, noised):
        return noise if self.job_hooks is None else self.job_hooks.extra_noise(noise, init_latents, noised)

    def after_step(self, step, next_timestep, latents):
        return latents if self.blend is None else self.blend(step, next_timestep, latents)

    def step_end(self, step, total, latents, denoised):
        self.observer.on_step(step, total, latents, denoised)

    def should_stop(self) -> bool:
        if self.observer.interrupted() or self.observer.skipped():
            self.stopped = True
        return self.stopped


def plan(request: GenerationRequest, model: LoadedModel, settings: GenerationSettings) -> _Plan:
    """Validate against the model and resolve every default (step 1)."""
    try:
        sampler, schedule = samplers.resolve(request.sampler_name, request.scheduler)
    except ValueError as exc:
        raise RequestError("sampler_name", str(exc)) from exc
    is_img2img = isinstance(request, Img2ImgRequest)
    native = model.spec.native_size
    if is_img2img and not (request.width and request.height):  # the init picture's own size
        native = img2img.default_size(request, model.latent_scale)
    width = request.width or native[0]
    height = request.height or native[1]
    count = request.batch_size * request.n_iter
    seed = rng.fix_seed(request.seed)
    subseed = rng.fix_seed(request.subseed)
    return _Plan(
        sampler=sampler,
        schedule=schedule,
        width=width,
        height=height,
        seeds=rng.all_seeds(seed, count, request.subseed_strength),
        subseeds=rng.all_subseeds(subseed, count),
        clip_skip=request.clip_skip or settings.clip_skip,
    )


def _unet_call(model: LoadedModel) -> Callable:
    unet = model.unet
    dtype = model.policy.unet_dtype

    def call(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        if "c_concat" in cond:
            x = torch.cat([x, cond["c_concat"]], dim=1)
        added = None
        if "text_embeds" in cond:
            added = {"text_embeds": cond["text_embeds"].to(dtype), "time_ids": cond["time_ids"].to(dtype)}
        out = unet(x.to(dtype), t, encoder_hidden_states=cond["context"].to(dtype), added_cond_kwargs=added)
        return out.sample.float()

    return call


@torch.no_grad()
def encode_pixels(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> scaled latents; the distribution's mean, so it is deterministic."""
    vae = model.vae
    dist = vae.encode(pixels.to(model.device, model.policy.vae_dtype)).latent_dist
    return dist.mean.float() * vae.config.scaling_factor


def txt2img_image_conditioning(model: LoadedModel, batch: int, width: int, height: int) -> torch.Tensor:
    """What an inpainting UNet sees in txt2img (A1111): everything masked, over a grey image."""
    grey = torch.zeros(1, 3, height, width)  # 0.5 grey in [-1, 1]
    latent = encode_pixels(model, grey)
    mask = torch.ones_like(latent[:, :1])
    return torch.cat([mask, latent], dim=1).repeat(batch, 1, 1, 1)


@torch.no_grad()
def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    vae = model.vae
    scaled = latents.to(model.device, model.policy.vae_dtype) / vae.config.scaling_factor
    pixels = vae.decode(scaled).sample.float()
    array = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def infotext_params(request: GenerationRequest, p: _Plan, settings: GenerationSettings, index: int,
                    seed: int | None = None, subseed: int | None = None, extra: dict | None = None) -> dict:
    """The settings line in A1111's order. `seed`/`subseed` default to the plan's for `index`;
    `extra` (the hooks' keys, A1111's script-written extra_generation_params) follows the request's."""
    seed = p.seeds[index] if seed is None else seed
    subseed = p.subseeds[index] if subseed is None else subseed
    params = {
        "Steps": request.steps,
        "Sampler": p.sampler,
        "Schedule type": p.schedule,
        "CFG scale": plain_number(request.cfg_scale),
        "Seed": seed,
        "Size": f"{p.width}x{p.height}",
        "Model hash": settings.model_hash if settings.add_model_hash_to_info else None,
        "Model": (settings.model_name or None) if settings.add_model_name_to_info else None,
        "VAE hash": settings.vae_hash if settings.add_vae_hash_to_info else None,
        "VAE": settings.vae_name if settings.add_vae_name_to_info else None,
        "Variation seed": subseed if request.subseed_strength > 0 else None,
        "Variation seed strength": request.subseed_strength if request.subseed_strength > 0 else None,
        "Seed resize from": (
            f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
            if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0
            else None
        ),
        "Denoising strength": p.extra.get("Denoising strength"),
        "Conditional mask weight": p.extra.get("Conditional mask weight"),
        "Clip skip": p.clip_skip if p.clip_skip > 1 else None,
        "ENSD": settings.eta_noise_seed_delta if settings.eta_noise_seed_delta and samplers.is_ancestral(p.sampler) else None,
        # A1111 names the source unless it is its default, "GPU" (Easel's default "CPU" is named too)
        "RNG": settings.randn_source if settings.randn_source != "GPU" else None,
        "Tiling": "True" if request.tiling else None,
    }
    params.update(request.extra)
    params.update(extra or {})
    params.update(p.extra)  # A1111's extra_generation_params; keys above keep their place
    params["Version"] = settings.version
    return params


def generate(
    request: GenerationRequest,
    model: LoadedModel,
    settings: GenerationSettings | None = None,
    observer: JobObserver | None = None,
    hooks: JobHooks | None = None,
) -> GenerationResult:
    """One job. `hooks` (modules.core.job_hooks) let the layer above see and change the per-image
    values, the CFG steps, the pictures and what is saved; without them nothing changes."""
    # seamless tiling switches the model's padding for this job only (A1111: for the whole job)
    with tiling.seamless(model, request.tiling):
        try:
            return _generate(request, model, settings, observer, hooks)
        except BaseException:
            lora.deactivate(model)  # a failed job leaves the base weights (a finished one keeps its LoRAs)
            raise


@torch.no_grad()
def _generate(
    request: GenerationRequest,
    model: LoadedModel,
    settings: GenerationSettings | None = None,
    observer: JobObserver | None = None,
    job_hooks: JobHooks | None = None,
) -> GenerationResult:
    settings = settings or GenerationSettings()
    observer = observer or JobObserver()
    jhooks = job_hooks or JobHooks()  # (`hooks` below is the sampling loop's)

    # 1. validate against the model and resolve defaults
    p = plan(request, model, settings)
    if p.width % model.latent_scale or p.height % model.latent_scale:
        raise RequestError("width", f"width and height must be multiples of {model.latent_scale} for this model")
    networks = _PromptNetworks(settings.find_lora)  # <lora:...> cut out, files found and read, per prompt
    networks.get(request.prompt, "prompt")  # an unknown LoRA is refused before any work
    conditioner = TextConditioner(model, clip_skip=p.clip_skip, emphasis=settings.emphasis,
                                  embeddings=settings.embeddings)
    unet_call = _unet_call(model)
    latent_shape = (model.spec.unet_config["out_channels"], p.height // model.latent_scale, p.width // model.latent_scale)
    seed_resize = (
        (request.seed_resize_from_w, request.seed_resize_from_h)
        if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0
        else None
    )
    result = GenerationResult(
        images=[], seeds=[], subseeds=[], prompts=[], negative_prompts=[], infotexts=[],
        width=p.width, height=p.height, sampler_name=p.sampler, scheduler=p.schedule,
        model_name=settings.model_name, model_hash=settings.model_hash, clip_skip=p.clip_skip,
        vae_name=settings.vae_name, vae_hash=settings.vae_hash,
    )
    job = None
    if isinstance(request, Img2ImgRequest):  # init images, mask, overlays: once for the whole job
        job = img2img.prepare(request, p.width, p.height, latent_scale=model.latent_scale,
                              encode=lambda pixels: encode_pixels(model, pixels),
                              inpainting_model=model.spec.inpainting, settings=settings.img2img)
        p.extra.update({"Denoising strength": plain_number(job.denoising_strength), **job.infotext})
    if model.spec.inpainting:
        p.extra["Conditional mask weight"] = settings.img2img.mask_weight
    hr = hires.plan(request, p.sampler, p.schedule, p.width, p.height, model.latent_scale, settings.checkpoint_title)
    if hr is not None:  # hires fix: the result has the second pass's size, the infotext's Size stays the first's
        p.extra.update({"Denoising strength": plain_number(hr.denoising_strength), **hr.infotext})
        result.first_pass_size = (p.width, p.height)
        result.width, result.height = hr.width, hr.height
    extra_noise = settings.img2img.extra_noise  # A1111's img2img_extra_noise: img2img and the hires pass
    if extra_noise > 0 and (job is not None or (hr is not None and hr.denoising_strength > 0)):
        p.extra["Extra noise"] = plain_number(extra_noise)
    # 1b. the per-image values (A1111's all_prompts, all_seeds, ...); the hooks may replace them
    count = request.batch_size * request.n_iter
    values = ImageValues([request.prompt] * count, [request.negative_prompt] * count, list(p.seeds),
                         list(p.subseeds))
    if hr is not None:
        values.hr_prompts, values.hr_negative_prompts = [hr.prompt] * count, [hr.negative_prompt] * count
    jhooks.job_started(values)
    values.check(count)
    # the first prompt of each batch chooses its LoRAs (A1111); the hires prompts' own tags drive the second pass
    firsts = range(0, count, request.batch_size)
    used_loras = [networks.get(values.prompts[i], "prompt") for i in firsts]
    if hr is not None:
        used_loras += [networks.get(values.hr_prompts[i], "hr_prompt") for i in firsts]
    lora_hashes = lora.infotext_hashes(*used_loras)
    if lora_hashes and settings.add_lora_hashes_to_info:  # A1111's "Lora hashes" (names as written)
        p.extra["Lora hashes"] = lora_hashes
    result.extra_generation_params = dict(p.extra)  # A1111's Processed.extra_generation_params (API info)
    day_dir = image_io.dated_subdir(settings.outdir_samples, settings.today()) if settings.outdir_samples else None

    for batch in range(request.n_iter):
        if observer.interrupted():
            result.interrupted = True
            break
        passes = 1 if hr is None else 2  # A1111 counts the hires pass as a job of its own
        observer.begin_batch(batch * passes, request.n_iter * passes, request.steps)
        lo, hi = batch * request.batch_size, (batch + 1) * request.batch_size
        values_b = BatchValues(values.prompts[lo:hi], values.negative_prompts[lo:hi], values.seeds[lo:hi],
                               values.subseeds[lo:hi], index=batch)
        if hr is not None:
            values_b.hr_prompts, values_b.hr_negative_prompts = values.hr_prompts[lo:hi], values.hr_negative_prompts[lo:hi]
        jhooks.batch_started(values_b)
        values_b.check(request.batch_size, f"batch {batch}")
        loras = networks.get(values_b.prompts[0], "prompt")
        lora.activate(model, loras)  # no-op when already applied (the hires pass may have changed them)
        values_b.prompts = [networks.get(x, "prompt").prompt for x in values_b.prompts]  # the infotext keeps the tags
        if hr is not None:
            hr_loras = networks.get(values_b.hr_prompts[0], "hr_prompt")
            hr = dataclasses.replace(hr, loras=hr_loras, used_embeddings=hr.used_embeddings)
            values_b.hr_prompts = [networks.get(x, "hr_prompt").prompt for x in values_b.hr_prompts]
        jhooks.batch_conditioning(values_b)
        values_b.check(request.batch_size, f"batch {batch}")
        prompts, negatives = values_b.prompts, values_b.negative_prompts
        seeds, subseeds = values_b.seeds, values_b.subseeds

        # 2. conditioning for every step: prompt editing, alternation and AND from the parsed prompts
        concat = None
        if model.spec.inpainting:
            concat = (job.conditioning(len(prompts), model.device) if job
                      else txt2img_image_conditioning(model, len(prompts), p.width, p.height))
        conds = ScheduledConditioning(conditioner, prompts, negatives, schedule_length(request.steps, p.sampler),
                                      p.width, p.height, image_conditioning=concat)
        if conditioner.emphasis_noted:  # A1111: a mode other than Original, once an encoded text has brackets
            p.extra["Emphasis"] = result.extra_generation_params["Emphasis"] = settings.emphasis

        # 3. noise from the seeds, on the CPU by default for reproducibility
        noise = rng.create_noise(
            latent_shape, seeds, subseeds, request.subseed_strength, seed_resize,
            device=model.device, source=settings.randn_source,
        )
        scheduler = samplers.build_scheduler(p.sampler, p.schedule, prediction_type=model.spec.prediction_type,
                                             rescale_betas_zero_snr=model.spec.zero_terminal_snr,
                                             model_family=model.spec.family)
        generators = rng.step_generators(seeds, settings.eta_noise_seed_delta, device=model.device,
                                         shape=latent_shape, source=settings.randn_source)

        # 4. the sampling loop
        hooks = _LoopHooks(observer, job_hooks)
        init_latents, strength, schedule_steps = None, 1.0, request.steps
        on_blend = jhooks.mask_blend if job_hooks is not None else None
        if job is not None:  # img2img: start from the init latents noised to the first step
            init_latents = job.start_latents(len(seeds), noise)
            noise = noise * job.noise_multiplier
            hooks.blend = job.step_blender(scheduler, init_latents, noise, on_blend)
            strength, schedule_steps = job.sampler_strength, job.schedule_steps
        latents = denoise.sample(
            unet_call, scheduler, noise.to(model.device), conds.cond_for_step,
            steps=schedule_steps, cfg_scale=request.cfg_scale, generators=generators, hooks=hooks,
            brownian_seeds=seeds,  # A1111 seeds DPM++ SDE's Brownian trees from the image seeds
            init_latents=init_latents, denoising_strength=strength, composition=conds.composition,
            extra_noise=extra_noise if job is not None else 0.0,
        )
        if job is not None:
            latents = job.blend(latents, init_latents, on_blend, final=True)
        if observer.interrupted():
            result.interrupted = True

        # 5. decode, infotext, save (an interrupted, half-denoised batch is shown, not saved)
        def sampled(final_latents: torch.Tensor) -> torch.Tensor:  # A1111's post_sample
            return jhooks.batch_sampled(values_b, final_latents)

        if hr is not None and not result.interrupted:  # hires fix: upscale, a second pass at the new size, decode
            observer.begin_batch(2 * batch + 1, 2 * request.n_iter, hr.steps)
            jhooks.before_hires(values_b)
            images = hires.second_pass(hr, request, model, settings, latents, seeds=seeds, subseeds=subseeds,
                                       seed_resize=seed_resize, clip_skip=p.clip_skip,
                                       hooks=_LoopHooks(observer, job_hooks), refine=not hooks.stopped,  # skipped:
                                       prompts=values_b.hr_prompts,  # only upscaled, as in A1111
                                       negative_prompts=values_b.hr_negative_prompts, before_decode=sampled)
            result.interrupted = observer.interrupted()
        else:
            images = decode_latents(model, sampled(latents))
        # A1111: the pictures' own values are the job's again (tags included), as their infotexts show them
        values_b.prompts, values_b.negative_prompts = values.prompts[lo:hi], values.negative_prompts[lo:hi]
        if job_hooks is not None:
            images = jhooks.batch_decoded(values_b, images)
            images = [jhooks.image_ready(values_b, i, image) for i, image in enumerate(images)]
            values_b.check(len(images), f"batch {batch} (after its pictures were replaced)")
        if job is not None:  # colour correction, paste back under the original
            on_overlay = functools.partial(jhooks.mask_overlay, values_b) if job_hooks is not None else None
            images = job.finish(images, on_overlay)
        if job_hooks is not None:
            images = [jhooks.image_composited(values_b, i, image) for i, image in enumerate(images)]
        used = {**conditioner.used_embeddings, **(hr.used_embeddings if hr is not None else {})}
        hashes = ti_hashes(used) if settings.add_ti_hashes_to_info else None
        if hashes:  # A1111's "TI hashes", after the keys known before sampling
            p.extra["TI hashes"] = result.extra_generation_params["TI hashes"] = hashes
        for i, image in enumerate(images):
            index = lo + i
            seed, subseed = values_b.seeds[i], values_b.subseeds[i]
            params = infotext_params(request, p, settings, index, seed=seed, subseed=subseed, extra=jhooks.extra_params())
            text = build_infotext(values_b.prompts[i], values_b.negative_prompts[i], params)
            image.info["parameters"] = text
            result.images.append(image)
            result.seeds.append(seed)
            result.subseeds.append(subseed)
            result.prompts.append(values_b.prompts[i])
            result.negative_prompts.append(values_b.negative_prompts[i])
            result.infotexts.append(text)
            if request.save_images and day_dir is not None and not result.interrupted:
                path = saving.save(job_hooks, image, text, day_dir, settings, seed=seed)
                result.paths.append(str(path))
        if result.interrupted:
            break

    # 6. grid of the whole job
    if len(result.images) > 1 and (settings.return_grid or settings.save_grid):
        if job_hooks is None:
            grid = image_io.image_grid(result.images, batch_size=request.batch_size)
        else:  # the hooks may change the pictures and the layout (A1111's on_image_grid)
            rows, cols = image_io.grid_layout(len(result.images), None, request.batch_size)
            pictures, rows, cols = jhooks.grid(list(result.images), rows, cols)
            grid = image_io.image_grid(pictures, rows=rows)
        grid_text = result.infotexts[0]
        grid.info["parameters"] = grid_text
        result.grid = grid if settings.return_grid else None
        if settings.save_grid and request.save_images and settings.outdir_grids and not result.interrupted:
            grid_dir = image_io.dated_subdir(settings.outdir_grids, settings.today())
            result.grid_path = str(saving.save(job_hooks, grid, grid_text, grid_dir, settings, grid=True))
    return result


class _PromptNetworks:
    """Each distinct prompt's <lora:...> tags, cut out and their files read once per job."""

    def __init__(self, find_lora):
        self.find_lora = find_lora
        self._done: dict[tuple[str, str], lora.JobLoras] = {}

    def get(self, prompt: str, field_name: str) -> "lora.JobLoras":
        key = (prompt, field_name)
        if key not in self._done:
            self._done[key] = lora.prepare(prompt, self.find_lora, field_name)
        return self._done[key]
