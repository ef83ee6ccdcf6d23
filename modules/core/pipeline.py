"""The one generation function: a typed request and a loaded model in, images out.

Read top to bottom: validate, resolve defaults, then per batch: encode prompts, make
noise from the seeds, denoise, decode, write infotext, save. No globals: settings
and the job observer (progress, interrupt, skip) come in as arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass, field

import torch
from PIL import Image

from . import denoise, hires, hypernetwork, image_io, img2img, model_ops, rng, sampler_options, samplers
from . import noise_inversion, prompt_parser, sampling_pass, saving, tiling
from . import lora  # <lora:...> networks
from . import upscaling
from .loop_hooks import LoopHooks
from .prompt_networks import Hypernets, PromptNetworks, with_hypernet
from .conditioning import persistent_cache
from .scheduled_conditioning import ScheduledConditioning, schedule_length
from .embeddings import ti_hashes
from .infotext import build_infotext, plain_number
from .job_hooks import BatchValues, ImageValues, JobHooks
from .job_settings import GenerationSettings, JobObserver  # noqa: F401 (public here too)
from .model_ops import decode_latents, encode_pixels, txt2img_image_conditioning  # noqa: F401 (public here too)
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
    init_image_hash: str | None = None  # save_init_img: the MD5 of the (last) init image, as A1111 writes it
    hires_final: tuple[int, int] | None = None  # use_old_hires_fix_width_height: the request's width x height


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
    hires_final = None
    if request.enable_hr and settings.use_old_hires_fix_width_height:  # A1111: the sliders give the final size
        hires_final, (width, height) = (width, height), hires.old_first_pass_size(width, height)
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
        hires_final=hires_final,
    )


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
        "ENSD": (settings.eta_noise_seed_delta if settings.eta_noise_seed_delta
                 and samplers.uses_ensd(p.sampler, settings.sampler_options.eta_ancestral) else None),
        "Token merging ratio": plain_number(settings.token_merging_ratio) if settings.token_merging_ratio else None,
        "Token merging ratio hr": (plain_number(settings.token_merging_ratio_hr)
                                   if getattr(request, "enable_hr", False) and settings.token_merging_ratio_hr else None),
        "Init image hash": p.init_image_hash,
        # A1111 names the source unless it is its default, "GPU" (Easel's default "CPU" is named too)
        "RNG": settings.randn_source if settings.randn_source != "GPU" else None,
        "Tiling": "True" if request.tiling else None,
    }
    params.update(request.extra)
    params.update(extra or {})
    params.update(p.extra)  # A1111's extra_generation_params; keys above keep their place
    params["Version"] = settings.version
    params["User"] = settings.user if settings.add_user_name_to_info else None  # A1111: last, after Version
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
        finally:
            hypernetwork.deactivate(model)  # hypernetworks hold for the job only


@torch.no_grad()
def _generate(
    request: GenerationRequest,
    model: LoadedModel,
    settings: GenerationSettings | None = None,
    observer: JobObserver | None = None,
    job_hooks: JobHooks | None = None,
) -> GenerationResult:
    job = _Job(request, model, settings or GenerationSettings(), observer or JobObserver(), job_hooks)
    job.prepare()  # 1. validate, resolve defaults, the per-image values
    for batch in range(request.n_iter):
        if job.observer.interrupted():
            job.result.interrupted = True
            break
        if job.observer.stopping_generation():  # the pictures before are finished (and saved), no other starts
            break
        with _Borrowed(job) as borrowed:  # other checkpoints this batch loads (hires, refiner)
            values = job.batch_values(batch)  # 2. this batch's values and LoRAs
            first = job.first_pass(values, borrowed)  # 3. conditioning, noise, sampling
            images = job.finish_pass(batch, values, first, borrowed)  # 4. hires fix or decode
        images = job.pictures(values, images)  # 5. the hooks' and img2img's last changes
        job.record(batch, values, images)  # 6. infotext, save
        if job.result.interrupted:
            break
    job.grid()  # 7. the grid of the whole job
    return job.result


class _Borrowed:
    """Checkpoints a batch loads besides the job's (hires checkpoint, SDXL refiner), through
    ``settings.load_model``: seamless like the job's model while in use, and the job's own checkpoint
    put back after the batch, also on errors (so each batch starts from it)."""

    def __init__(self, job: "_Job"):
        self.job = job
        self.stack = contextlib.ExitStack()
        self.used = False

    def load(self, name: str, field_name: str) -> LoadedModel:
        settings = self.job.settings
        if settings.load_model is None:
            raise RequestError(field_name, "another checkpoint is not available here")
        self.used = True
        try:
            loaded = settings.load_model(name)
        except RequestError as exc:  # the loader names the hires field; the refiner has its own
            raise RequestError(field_name, exc.message) from exc
        if loaded is not self.job.model:
            self.stack.enter_context(tiling.seamless(loaded, self.job.request.tiling))
        return loaded

    def __enter__(self) -> "_Borrowed":
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()
        if self.used:
            self.job.settings.load_model(None)


@dataclass
class _FirstPass:
    latents: torch.Tensor
    model: LoadedModel  # the model it ended on (the refiner when it switched)
    stopped: bool  # interrupted or skipped during the pass


class _Job:
    """One generation job's state between its numbered steps (see ``_generate``)."""

    def __init__(self, request, model, settings, observer, job_hooks):
        self.request, self.model, self.settings, self.observer = request, model, settings, observer
        self.job_hooks = job_hooks  # None: no layer above (nothing to call, nothing changes)
        self.hooks = job_hooks or JobHooks()
        self.networks = PromptNetworks(settings.find_lora)  # <lora:...> cut out, files read, per prompt
        self.hypernets = Hypernets(settings.find_hypernetwork)  # <hypernet:...>, files read once per job
        self.copies: dict[int, list[tuple[str, Image.Image]]] = {}  # a batch's masks to save or return

    # 1. validate against the model and resolve defaults ------------------------------------------
    def prepare(self) -> None:
        request, model, settings = self.request, self.model, self.settings
        p = self.p = plan(request, model, settings)
        if p.width % model.size_multiple or p.height % model.size_multiple:
            raise RequestError("width", f"width and height must be multiples of {model.size_multiple} for this model")
        # what the family's prompt encoder reads besides the prompts (SDXL sizes, Flux's distilled guidance)
        self.conditioning = dataclasses.replace(settings.conditioning, distilled_guidance=request.distilled_cfg_scale)
        # batch_cond_uncond, pad_cond_uncond(_v0): one record for the job's passes ("Pad conds" infotext)
        self.cond_batching = denoise.CondBatching(settings.batch_cond_uncond, settings.pad_cond_uncond)
        if model.family.uses_distilled_guidance(model):  # Forge's key
            p.extra["Distilled CFG Scale"] = plain_number(request.distilled_cfg_scale)
        if "fp8_storage" in model.extra:  # A1111's keys while the model's UNet weights are stored in fp8
            p.extra["FP8 weight"], p.extra["Cache FP16 weight for LoRA"] = model.extra["fp8_storage"]
        self.networks.get(request.prompt, "prompt")  # an unknown LoRA is refused before any work
        self.hypernets.get(request.prompt, "prompt")  # an unknown hypernetwork too
        self.refiner_title = _refiner_title(request, settings)
        self.latent_shape = (model.spec.latent_channels, p.height // model.latent_scale,
                             p.width // model.latent_scale)
        self.seed_resize = ((request.seed_resize_from_w, request.seed_resize_from_h)
                            if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0 else None)
        self.result = GenerationResult(
            images=[], seeds=[], subseeds=[], prompts=[], negative_prompts=[], infotexts=[],
            width=p.width, height=p.height, sampler_name=p.sampler, scheduler=p.schedule,
            model_name=settings.model_name, model_hash=settings.model_hash, clip_skip=p.clip_skip,
            vae_name=settings.vae_name, vae_hash=settings.vae_hash,
        )
        self.img2img = None
        if isinstance(request, Img2ImgRequest):  # init images, mask, overlays: once for the whole job
            self.img2img = img2img.prepare(request, p.width, p.height, latent_scale=model.latent_scale,
                                           encode=lambda pixels: model_ops.encode_pixels(model, pixels),
                                           inpainting_model=model.spec.inpainting, settings=settings.img2img)
            p.extra.update({"Denoising strength": plain_number(self.img2img.denoising_strength), **self.img2img.infotext})
            if settings.outdir_init_images is not None:  # save_init_img: whatever the job's own saving (A1111)
                for image in request.init_images:
                    _, p.init_image_hash = saving.save_init_image(image, settings.outdir_init_images)
        if model.spec.inpainting:
            p.extra["Conditional mask weight"] = settings.img2img.mask_weight
        # instruct-pix2pix in img2img: A1111's image CFG (a third pass without the picture unless it is 1)
        self.image_cfg_scale = None
        if model.spec.edit_model and self.img2img is not None and request.image_cfg_scale is not None:
            p.extra["Image CFG scale"] = plain_number(request.image_cfg_scale)
            self.image_cfg_scale = request.image_cfg_scale if request.image_cfg_scale != 1.0 else None
        hr = self.hr = hires.plan(request, p.sampler, p.schedule, p.width, p.height, model.latent_scale,
                                  settings.checkpoint_title, final_size=p.hires_final)
        if hr is not None:  # hires fix: the result has the second pass's size, the infotext's Size stays the first's
            p.extra.update({"Denoising strength": plain_number(hr.denoising_strength), **hr.infotext})
            self.result.first_pass_size = (p.width, p.height)
            self.result.width, self.result.height = hr.width, hr.height
        # A1111's sd_vae_encode_method / sd_vae_decode_method when not "Full": where it encodes pictures
        # (img2img, a hires pass from pixels) and where it decodes latents
        if self.img2img is not None or (hr is not None and not upscaling.is_latent(hr.upscaler)):
            if model_ops.vae_method(model, "encoder") != "Full":
                p.extra["VAE Encoder"] = model_ops.vae_method(model, "encoder")
        if model_ops.vae_method(model, "decoder") != "Full":
            p.extra["VAE Decoder"] = model_ops.vae_method(model, "decoder")
        extra_noise = settings.img2img.extra_noise  # A1111's img2img_extra_noise: img2img and the hires pass
        if extra_noise > 0 and (self.img2img is not None or (hr is not None and hr.denoising_strength > 0)):
            p.extra["Extra noise"] = plain_number(extra_noise)
        # the per-image values (A1111's all_prompts, all_seeds, ...); the hooks may replace them
        count = request.batch_size * request.n_iter
        values = self.values = ImageValues([request.prompt] * count, [request.negative_prompt] * count,
                                           list(p.seeds), list(p.subseeds))
        if hr is not None:
            values.hr_prompts, values.hr_negative_prompts = [hr.prompt] * count, [hr.negative_prompt] * count
        self.hooks.job_started(values)
        values.check(count)
        if settings.always_hypernetwork is not None:  # A1111's sd_hypernetwork: the infotext shows its tag too
            values.prompts = [with_hypernet(x, *settings.always_hypernetwork) for x in values.prompts]
            if hr is not None:
                values.hr_prompts = [with_hypernet(x, *settings.always_hypernetwork) for x in values.hr_prompts]
        # the first prompt of each batch chooses its LoRAs (A1111); the hires prompts' own tags drive the second pass
        firsts = range(0, count, request.batch_size)
        used_loras = [self.networks.get(values.prompts[i], "prompt") for i in firsts]
        if hr is not None:
            used_loras += [self.networks.get(values.hr_prompts[i], "hr_prompt") for i in firsts]
        lora_hashes = lora.infotext_hashes(*used_loras)
        if lora_hashes and settings.add_lora_hashes_to_info:  # A1111's "Lora hashes" (names as written)
            p.extra["Lora hashes"] = lora_hashes
        if settings.use_old_scheduling:  # A1111 notes it where the old timelines change a schedule
            self._note_old_timelines(values.prompts, "prompt", values.negative_prompts,
                                     schedule_length(request.steps, p.sampler))
            if hr is not None:
                self._note_old_timelines(values.hr_prompts, "hr_prompt", values.hr_negative_prompts,
                                         *hires.timeline(hr, request))
        # A1111's sampler parameters ("Eta", "Sigma churn", ...) where it writes them; the hires sampler's too
        p.extra.update(samplers.infotext_params(p.sampler, p.schedule, settings.sampler_options,
                                                txt2img=self.img2img is None,
                                                rescale_betas_zero_snr=model.spec.zero_terminal_snr))
        if hr is not None and hr.sampler != p.sampler:
            p.extra.update(samplers.infotext_params(hr.sampler, hr.schedule, settings.sampler_options, txt2img=False,
                                                    rescale_betas_zero_snr=model.spec.zero_terminal_snr))
        p.extra.update(sampler_options.uncond_skip_infotext(settings.sampler_options))
        self.result.extra_generation_params = dict(p.extra)  # A1111's Processed.extra_generation_params (API info)
        self.used_embeddings: dict[str, str] = {}
        self.samples_dir = settings.outdir_samples  # the folder pattern ([date]) below it: modules.core.saving

    def _note_old_timelines(self, prompts: list[str], field_name: str, negatives: list[str], steps: int,
                            hires_steps: int | None = None) -> None:
        """A1111's "Old prompt editing timelines: True" (use_old_scheduling changes a schedule here)."""
        texts = [self.networks.get(x, field_name).prompt for x in prompts]  # as encoded: without <lora:...>
        if "Old prompt editing timelines" not in self.p.extra and prompt_parser.old_timelines_differ(
                texts + list(negatives), steps, hires_steps):
            self.p.extra["Old prompt editing timelines"] = True

    # 2. this batch's values; its LoRAs applied ---------------------------------------------------
    def batch_values(self, batch: int) -> BatchValues:
        request, values, hr = self.request, self.values, self.hr
        passes = 1 if hr is None else 2  # A1111 counts the hires pass as a job of its own
        self.observer.begin_batch(batch * passes, request.n_iter * passes, request.steps)
        lo, hi = batch * request.batch_size, (batch + 1) * request.batch_size
        values_b = BatchValues(values.prompts[lo:hi], values.negative_prompts[lo:hi], values.seeds[lo:hi],
                               values.subseeds[lo:hi], index=batch)
        if hr is not None:
            values_b.hr_prompts, values_b.hr_negative_prompts = values.hr_prompts[lo:hi], values.hr_negative_prompts[lo:hi]
        self.hooks.batch_started(values_b)
        values_b.check(request.batch_size, f"batch {batch}")
        lora.activate(self.model, self.networks.get(values_b.prompts[0], "prompt"))  # no-op when already applied
        self._activate_hypernets(self.model, values_b.prompts[0], "prompt")
        self.hr_hypernet_prompt = values_b.hr_prompts[0] if hr is not None else None
        values_b.prompts = [self.networks.get(x, "prompt").prompt for x in values_b.prompts]  # the infotext keeps the tags
        if hr is not None:
            self.hr = dataclasses.replace(hr, loras=self.networks.get(values_b.hr_prompts[0], "hr_prompt"),
                                          used_embeddings=hr.used_embeddings)
            values_b.hr_prompts = [self.networks.get(x, "hr_prompt").prompt for x in values_b.hr_prompts]
        self.hooks.batch_conditioning(values_b)
        values_b.check(request.batch_size, f"batch {batch}")
        return values_b

    # 3. the first pass: conditioning for every step, noise from the seeds, the sampling loop ------
    def first_pass(self, values_b: BatchValues, borrowed: _Borrowed) -> _FirstPass:
        request, p, settings, job = self.request, self.p, self.settings, self.img2img
        prompts, negatives = values_b.prompts, values_b.negative_prompts

        def conds_for(model: LoadedModel, prompts=prompts, negatives=negatives,
                      length: int | None = None) -> ScheduledConditioning:
            conditioner = model.family.conditioner(model, clip_skip=p.clip_skip, emphasis=settings.emphasis,
                                                   embeddings=settings.embeddings, options=self.conditioning,
                                                   cache=persistent_cache(model) if settings.persistent_cond_cache
                                                   else None)
            concat = None
            if model.spec.inpainting:
                concat = (job.conditioning(len(prompts), model.device) if job
                          else model_ops.txt2img_image_conditioning(model, len(prompts), p.width, p.height))
            elif model.spec.edit_model:  # instruct-pix2pix: the init picture's latents, unscaled (A1111)
                concat = model_ops.edit_image_conditioning(model, job.init_latents if job else None, len(prompts),
                                                           self.latent_shape)
            conds = ScheduledConditioning(conditioner, prompts, negatives,
                                          length or schedule_length(request.steps, p.sampler),
                                          p.width, p.height, image_conditioning=concat,
                                          use_old_scheduling=settings.use_old_scheduling)
            if conditioner.emphasis_noted:  # A1111: a mode other than Original, once an encoded text has brackets
                p.extra["Emphasis"] = self.result.extra_generation_params["Emphasis"] = settings.emphasis
            self.used_embeddings.update(conditioner.used_embeddings)
            return conds

        hooks = LoopHooks(self.observer, self.job_hooks, self.model)
        on_blend = self.hooks.mask_blend if self.job_hooks is not None else None

        def img2img_start(noise, scheduler) -> sampling_pass.Start:
            """img2img: start from the init latents noised to the first step."""
            init_latents = job.start_latents(len(prompts), noise)
            noise = noise * job.noise_multiplier
            if self.job_hooks is not None:  # a script may start from other noise (img2img alternative test)
                noise = self.hooks.start_noise(values_b, noise_inversion.start_for(
                    self.model, scheduler, noise, init_latents, values_b.seeds, conds_for, request.steps,
                    settings.randn_source))
            hooks.blend = job.step_blender(scheduler, init_latents, noise, on_blend)
            self._init_latents = init_latents
            return sampling_pass.Start(init_latents, noise, job.sampler_strength, job.schedule_steps,
                                       settings.img2img.extra_noise)

        refiner = self._refiner_for(first=True, borrowed=borrowed)
        done = sampling_pass.run(self.model, settings, sampler=p.sampler, schedule=p.schedule, conds_for=conds_for,
                                 image_cfg_scale=self.image_cfg_scale,
                                 shape=self.latent_shape, seeds=self._seeds(values_b), steps=request.steps,
                                 cfg_scale=request.cfg_scale, hooks=hooks, refiner=refiner,
                                 start=img2img_start if job is not None else None,
                                 token_ratio=settings.token_merging_ratio, cond_batching=self.cond_batching)
        self._note_padding()
        latents = done.latents
        if job is not None:
            latents = job.blend(latents, self._init_latents, on_blend, final=True)
        if done.switched:
            self._note_refiner()
        if self.observer.interrupted():
            self.result.interrupted = True
        return _FirstPass(latents, done.model, hooks.stopped)

    # 4. hires fix (upscale, second pass) or plain decode --------------------------------------------
    def finish_pass(self, batch: int, values_b: BatchValues, first: _FirstPass, borrowed: _Borrowed) -> list[Image.Image]:
        def sampled(final_latents: torch.Tensor) -> torch.Tensor:  # A1111's post_sample
            return self.hooks.batch_sampled(values_b, final_latents)

        hr = self.hr
        if hr is None or self.result.interrupted:  # (an interrupted batch with hires is shown, not upscaled)
            return self._decode(first.model, sampled(first.latents))
        if self.settings.save_images_before_highres_fix and self._saving():
            for i, image in enumerate(model_ops.decode_latents(first.model, first.latents)):
                self._save_copy(batch, i, values_b, image, "-before-highres-fix")
        self.observer.begin_batch(2 * batch + 1, 2 * self.request.n_iter, hr.steps)
        self.hooks.before_hires(values_b)
        # the hires checkpoint when there is one, else the model the first pass ended on (A1111)
        hr_model = borrowed.load(hr.checkpoint, "hr_checkpoint_name") if hr.checkpoint is not None else first.model
        if hr_model is not self.model:
            hypernetwork.deactivate(self.model)
        self._activate_hypernets(hr_model, self.hr_hypernet_prompt, "hr_prompt")  # A1111: the hires prompt's
        refiner = None
        if hr.checkpoint is not None or first.model is self.model:  # not already on the refiner
            refiner = self._refiner_for(first=False, borrowed=borrowed)
        images, switched = hires.second_pass(
            hr, self.request, first.model, hr_model, self.settings, first.latents, seeds=self._seeds(values_b),
            clip_skip=self.p.clip_skip, conditioning=self.conditioning,
            hooks=LoopHooks(self.observer, self.job_hooks, hr_model),
            refine=not first.stopped,  # skipped: only upscaled, as in A1111
            prompts=values_b.hr_prompts, negative_prompts=values_b.hr_negative_prompts, before_decode=sampled,
            refiner=refiner, decode=self._decode, cond_batching=self.cond_batching)
        self._note_padding()
        if switched:
            self._note_refiner()
        self.used_embeddings.update(hr.used_embeddings)
        self.result.interrupted = self.observer.interrupted()
        return images

    def _decode(self, model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
        """The VAE's pictures; once interrupted, with live_preview_fast_interrupt, the live preview
        method's (A1111's decode_first_stage then uses show_progress_type)."""
        fast = self.settings.interrupt_decode
        if fast is not None and self.observer.interrupted():
            return fast(model, latents)
        return model_ops.decode_latents(model, latents)

    # 5. the pictures' last changes: the hooks, img2img's colour correction and paste-back -----------
    def pictures(self, values_b: BatchValues, images: list[Image.Image]) -> list[Image.Image]:
        request, values, batch = self.request, self.values, values_b.index
        lo, hi = batch * request.batch_size, (batch + 1) * request.batch_size
        # A1111: the pictures' own values are the job's again (tags included), as their infotexts show them
        values_b.prompts, values_b.negative_prompts = values.prompts[lo:hi], values.negative_prompts[lo:hi]
        self.copies = {}  # picture -> [(what, picture)]: the masks returned after it (return_mask ...)
        if self.job_hooks is not None:
            images = self.hooks.batch_decoded(values_b, images)
            if self.settings.save_images_before_face_restoration and self.hooks.restores_faces() and self._saving():
                for i, image in enumerate(images):
                    self._save_copy(batch, i, values_b, image, "-before-face-restoration")
            images = [self.hooks.image_ready(values_b, i, image) for i, image in enumerate(images)]
            values_b.check(len(images), f"batch {batch} (after its pictures were replaced)")
        if self.img2img is not None:  # colour correction, paste back under the original
            on_overlay = functools.partial(self.hooks.mask_overlay, values_b) if self.job_hooks is not None else None
            copies = self._img2img_copies()
            on_copy = functools.partial(self._img2img_copy, batch, values_b) if copies else None
            images = self.img2img.finish(images, on_overlay, on_copy, copies)
        if self.job_hooks is not None:
            images = [self.hooks.image_composited(values_b, i, image) for i, image in enumerate(images)]
        return images

    # 6. infotext, result, files ------------------------------------------------------------------
    def record(self, batch: int, values_b: BatchValues, images: list[Image.Image]) -> None:
        request, p, settings, result, values = self.request, self.p, self.settings, self.result, self.values
        hashes = ti_hashes(self.used_embeddings) if settings.add_ti_hashes_to_info else None
        if hashes:  # A1111's "TI hashes", after the keys known before sampling
            p.extra["TI hashes"] = result.extra_generation_params["TI hashes"] = hashes
        day_dir = self.samples_dir
        for i, image in enumerate(images):
            seed, subseed = values_b.seeds[i], values_b.subseeds[i]
            text = self._infotext(batch, i, values_b)
            if settings.enable_pnginfo:  # A1111: the picture carries its infotext only with enable_pnginfo
                image.info["parameters"] = text
            result.images.append(image)
            result.seeds.append(seed)
            result.subseeds.append(subseed)
            result.prompts.append(values_b.prompts[i])
            result.negative_prompts.append(values_b.negative_prompts[i])
            result.infotexts.append(text)
            if self._saving():
                path = saving.save(self.job_hooks, image, text, day_dir, settings, seed=seed, names=saving.name_values(
                    request, p, settings, prompt=values_b.prompts[i], seed=seed, batch_index=i, iteration=batch,
                    all_seeds=values.seeds))
                result.paths.append(str(path))
            # inpainting's mask and masked composite (A1111: saved with a suffix, returned after the picture;
            # here each returned one has the picture's infotext, so images and infotexts stay in step)
            for what, copy in self.copies.get(i, ()):
                if self._saving() and getattr(settings, "save_" + what.replace("-", "_")):
                    self._save_copy(batch, i, values_b, copy, "-" + what, text)
                if getattr(settings, "return_" + what.replace("-", "_")):
                    result.images.append(copy)
                    result.infotexts.append(text)

    # 7. the grid of the whole job ----------------------------------------------------------------
    def grid(self) -> None:
        request, p, settings, result, values = self.request, self.p, self.settings, self.result, self.values
        if not result.images or not (settings.return_grid or settings.save_grid):
            return
        if len(result.images) < 2 and settings.grid_only_if_multiple:
            return
        layout = dict(n_rows=settings.grid_rows, prevent_empty_spots=settings.grid_prevent_empty_spots)
        rows, cols = image_io.grid_layout(len(result.images), None, request.batch_size, **layout)
        pictures = list(result.images)
        if self.job_hooks is not None:  # the hooks may change the pictures and the layout (A1111's on_image_grid)
            pictures, rows, cols = self.hooks.grid(pictures, rows, cols)
        grid = image_io.image_grid(pictures, rows=rows, background=settings.grid_background)
        grid_text = result.infotexts[0]
        if settings.enable_pnginfo:
            grid.info["parameters"] = grid_text
        result.grid = grid if settings.return_grid else None
        if settings.save_grid and request.save_images and settings.outdir_grids \
                and (not result.interrupted or settings.save_incomplete_images):
            grid_dir = settings.outdir_grids  # the folder pattern below it: modules.core.saving
            result.grid_path = str(saving.save(self.job_hooks, grid, grid_text, grid_dir, settings, grid=True, names=saving.name_values(
                request, p, settings, prompt=values.prompts[0], seed=values.seeds[0], all_seeds=values.seeds)))

    # -- helpers ---------------------------------------------------------------------------------
    def _saving(self) -> bool:
        """Whether this batch's pictures are saved (A1111's p.save_samples(): not after an interrupt,
        unless save_incomplete_images)."""
        return bool(self.request.save_images and self.samples_dir is not None
                    and (not self.result.interrupted or self.settings.save_incomplete_images))

    def _infotext(self, batch: int, i: int, values_b: BatchValues) -> str:
        """Picture `i` of batch `batch`'s infotext (the job's prompts, tags included)."""
        index = batch * self.request.batch_size + i
        params = infotext_params(self.request, self.p, self.settings, index, seed=values_b.seeds[i],
                                 subseed=values_b.subseeds[i], extra=self.hooks.extra_params())
        lo = batch * self.request.batch_size
        return build_infotext(self.values.prompts[lo + i], self.values.negative_prompts[lo + i], params)

    def _save_copy(self, batch: int, i: int, values_b: BatchValues, image: Image.Image, suffix: str,
                   text: str | None = None) -> None:
        """A copy of picture `i` on the way (A1111's save_image(..., suffix=...)): beside the
        pictures, named like it with the suffix, with its infotext; not among the result's paths."""
        request, settings, seed = self.request, self.settings, values_b.seeds[i]
        text = self._infotext(batch, i, values_b) if text is None else text
        saving.save(self.job_hooks, image, text, self.samples_dir, settings, seed=seed, suffix=suffix,
                    names=saving.name_values(request, self.p, settings, prompt=self.values.prompts[
                        batch * request.batch_size + i], seed=seed, batch_index=i, iteration=batch,
                        all_seeds=self.values.seeds))

    def _img2img_copies(self) -> set[str]:
        """The pictures img2img hands back besides the results (options save_images_before_color_correction,
        save_mask / return_mask, save_mask_composite / return_mask_composite)."""
        s, saving_now = self.settings, self._saving()
        wanted = set()
        if s.save_images_before_color_correction and saving_now:
            wanted.add("before-color-correction")
        if s.return_mask or (s.save_mask and saving_now):
            wanted.add("mask")
        if s.return_mask_composite or (s.save_mask_composite and saving_now):
            wanted.add("mask-composite")
        return wanted

    def _img2img_copy(self, batch: int, values_b: BatchValues, i: int, what: str, image: Image.Image) -> None:
        if what == "before-color-correction":
            self._save_copy(batch, i, values_b, image, "-before-color-correction")
        else:
            self.copies.setdefault(i, []).append((what, image))

    def _activate_hypernets(self, model: LoadedModel, prompt: str, field_name: str) -> None:
        try:
            hypernetwork.activate(model, self.hypernets.get(prompt, field_name))
        except hypernetwork.HypernetworkError as exc:
            raise RequestError(field_name, str(exc)) from exc

    def _seeds(self, values_b: BatchValues) -> sampling_pass.Seeds:
        return sampling_pass.Seeds(values_b.seeds, values_b.subseeds, self.request.subseed_strength, self.seed_resize)

    def _refiner_for(self, *, first: bool, borrowed: _Borrowed) -> sampling_pass.RefinerPlan | None:
        """The refiner switch for the first or the hires pass (A1111's hires_fix_refiner_pass)."""
        if self.refiner_title is None:
            return None
        if self.hr is not None:
            wanted = {"first pass": (True,), "second pass": (False,), "both passes": (True, False)}
            if first not in wanted.get(self.settings.hires_fix_refiner_pass, (False,)):
                return None
        name = self.request.refiner_checkpoint
        return sampling_pass.RefinerPlan(
            switch_at=self.request.refiner_switch_at or 0.0,
            load=lambda: borrowed.load(name, "refiner_checkpoint"),
            by_steps=self.settings.refiner_switch_by_sample_steps)

    def _note_padding(self) -> None:
        """A1111 writes "Pad conds" / "Pad conds v0" once its CFG denoiser has padded a context."""
        extra = {key: True for mode, key in (("empty", "Pad conds"), ("v0", "Pad conds v0"))
                 if mode in self.cond_batching.padded}
        self.p.extra.update(extra)
        self.result.extra_generation_params.update(extra)

    def _note_refiner(self) -> None:
        """A1111 writes the refiner's keys once it has switched to it."""
        extra = {}
        if self.hr is not None and self.settings.hires_fix_refiner_pass != "second pass":
            extra["Hires refiner"] = self.settings.hires_fix_refiner_pass
        extra["Refiner"] = self.refiner_title
        extra["Refiner switch at"] = plain_number(self.request.refiner_switch_at or 0.0)
        if self.settings.refiner_switch_by_sample_steps:
            extra["Refiner switch by sampling steps"] = "True"
        self.p.extra.update(extra)
        self.result.extra_generation_params.update(extra)


def _refiner_title(request: GenerationRequest, settings: GenerationSettings) -> str | None:
    """A1111's short title of ``refiner_checkpoint`` (None: no refiner); an unknown name is refused."""
    name = request.refiner_checkpoint
    if name is None or name.strip() in ("", "None", "none"):
        return None
    if settings.checkpoint_title is None:
        raise RequestError("refiner_checkpoint", "another checkpoint for the refiner is not available here")
    try:
        return settings.checkpoint_title(name)
    except ValueError as exc:
        raise RequestError("refiner_checkpoint", getattr(exc, "message", str(exc))) from exc
