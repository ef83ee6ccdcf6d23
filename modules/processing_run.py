"""The work of `modules.processing.process_images(p)` on the worker, and `p` <-> core requests.

`run(p, engine)`: load the checkpoint, fill the size, set up p.all_prompts / all_seeds /
all_subseeds as A1111 does, the scripts' `process`, then `p` as a core request through the core's
`generate()` with `ScriptHooks`, and a `Processed` (grid first) for the scripts' `postprocess`.
`from_request` / `to_request` translate between Easel's requests and A1111's `p`.
"""

from __future__ import annotations

import contextvars
import types
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modules import controlnet_processing, shared
from modules.core import image_io, sampler_options, samplers
from modules.core.types import GenerationRequest, Img2ImgRequest, RequestError
from modules.processing import (Processed, StableDiffusionProcessing, StableDiffusionProcessingImg2Img,
                                StableDiffusionProcessingTxt2Img, get_fixed_seed)
from modules.processing_hooks import ScriptHooks

# option names that are request fields rather than job options (as the API's override_settings)
_OVERRIDE_FIELDS = {"sd_model_checkpoint": "checkpoint", "CLIP_stop_at_last_layers": "clip_skip"}


def _opt(key: str):
    return shared.opts.data.get(key)


def _first(value):
    return value[0] if isinstance(value, list) else value


def _pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    if isinstance(image, str):  # a base64 image, as some extensions pass
        return image_io.decode_image(image, "init_images")
    raise RequestError("init_images", f"not an image: {type(image).__name__}")


def to_request(p: StableDiffusionProcessing) -> GenerationRequest:
    """The core request `p` describes now (after the scripts' process hooks)."""
    overrides = p.override_settings or {}
    fields: dict[str, Any] = dict(
        prompt=_first(p.prompt) or "",
        negative_prompt=_first(p.negative_prompt) or "",
        sampler_name=p.sampler_name or samplers.DEFAULT_SAMPLER,
        scheduler=p.scheduler or "Automatic",
        steps=int(p.steps),
        cfg_scale=float(p.cfg_scale),
        width=int(p.width) if p.width else None,
        height=int(p.height) if p.height else None,
        seed=int(get_fixed_seed(_first(p.seed))),
        subseed=int(get_fixed_seed(_first(p.subseed))),
        subseed_strength=float(p.subseed_strength or 0),
        seed_resize_from_w=int(p.seed_resize_from_w if p.seed_resize_from_w is not None else 0),
        seed_resize_from_h=int(p.seed_resize_from_h if p.seed_resize_from_h is not None else 0),
        batch_size=int(p.batch_size),
        n_iter=int(p.n_iter),
        checkpoint=overrides.get("sd_model_checkpoint") or None,
        clip_skip=overrides.get("CLIP_stop_at_last_layers") or None,
        save_images=not p.do_not_save_samples,
        tiling=bool(p.tiling),
        # the SDXL refiner (A1111's Refiner script sets these on p in setup())
        refiner_checkpoint=_refiner_name(p.refiner_checkpoint),
        refiner_switch_at=float(p.refiner_switch_at) if p.refiner_switch_at is not None else None,
    )
    if isinstance(p, StableDiffusionProcessingImg2Img):
        return Img2ImgRequest(
            **fields,
            denoising_strength=float(p.denoising_strength if p.denoising_strength is not None else 0.75),
            init_images=[_pil(im) for im in (p.init_images or [])],
            mask=_pil(p.image_mask) if p.image_mask is not None else None,
            resize_mode=int(p.resize_mode or 0),
            mask_blur_x=int(p.mask_blur_x), mask_blur_y=int(p.mask_blur_y),
            inpainting_fill=int(p.inpainting_fill or 0),
            inpaint_full_res=bool(p.inpaint_full_res),
            inpaint_full_res_padding=int(p.inpaint_full_res_padding or 0),
            inpainting_mask_invert=int(p.inpainting_mask_invert or 0),
            image_cfg_scale=p.image_cfg_scale,
            initial_noise_multiplier=p.initial_noise_multiplier,
        )
    if isinstance(p, StableDiffusionProcessingTxt2Img):
        fields.update(
            enable_hr=bool(p.enable_hr),
            hr_scale=float(p.hr_scale),
            hr_upscaler=p.hr_upscaler or shared.latent_upscale_default_mode,
            hr_second_pass_steps=int(p.hr_second_pass_steps or 0),
            hr_resize_x=int(p.hr_resize_x or 0),
            hr_resize_y=int(p.hr_resize_y or 0),
            denoising_strength=float(p.denoising_strength if p.denoising_strength is not None else 0.75),
            hr_prompt=_first(p.hr_prompt) or "",
            hr_negative_prompt=_first(p.hr_negative_prompt) or "",
            hr_sampler_name=p.hr_sampler_name,
            hr_scheduler=p.hr_scheduler,
            hr_checkpoint_name=p.hr_checkpoint_name,
        )
    return GenerationRequest(**fields)


def _refiner_name(name) -> str | None:
    """p.refiner_checkpoint as the request's field: A1111's "no refiner" spellings are None."""
    return None if name is None or str(name).strip() in ("", "None", "none") else str(name)


def _refiner_info(p: StableDiffusionProcessing, engine):
    """A1111's p.refiner_checkpoint_info: the refiner's checkpoint, looked up before the scripts'
    process(); an unknown name stops the job with a RequestError on refiner_checkpoint."""
    name = _refiner_name(p.refiner_checkpoint)
    if name is None:
        return None
    from modules import sd_models

    info = sd_models.get_closet_checkpoint_match(name)
    if info is None:
        known = ", ".join(engine.checkpoints.titles()) or "none"
        raise RequestError("refiner_checkpoint", f"Could not find checkpoint with name {name}; known: {known}")
    return info


def from_request(request: GenerationRequest, overrides: dict | None = None) -> StableDiffusionProcessing:
    """The `p` of a request from the UI or the API (styles already applied to its prompts)."""
    common = dict(
        prompt=request.prompt, negative_prompt=request.negative_prompt, seed=request.seed, subseed=request.subseed,
        subseed_strength=request.subseed_strength, seed_resize_from_w=request.seed_resize_from_w,
        seed_resize_from_h=request.seed_resize_from_h, sampler_name=request.sampler_name,
        scheduler=request.scheduler, batch_size=request.batch_size, n_iter=request.n_iter, steps=request.steps,
        cfg_scale=request.cfg_scale, width=request.width, height=request.height, tiling=request.tiling,
        do_not_save_samples=not request.save_images, do_not_save_grid=not request.save_images,  # A1111's API
        denoising_strength=request.denoising_strength,
        override_settings=dict(overrides or {}), extra_generation_params=dict(request.extra),
        refiner_checkpoint=request.refiner_checkpoint, refiner_switch_at=request.refiner_switch_at,
    )
    if request.checkpoint:
        common["override_settings"]["sd_model_checkpoint"] = request.checkpoint
    if request.clip_skip:
        common["override_settings"]["CLIP_stop_at_last_layers"] = request.clip_skip
    if isinstance(request, Img2ImgRequest):
        p = StableDiffusionProcessingImg2Img(
            **common, init_images=list(request.init_images), mask=request.mask, resize_mode=request.resize_mode,
            mask_blur_x=request.blur_x, mask_blur_y=request.blur_y, inpainting_fill=request.inpainting_fill,
            inpaint_full_res=request.inpaint_full_res, inpaint_full_res_padding=request.inpaint_full_res_padding,
            inpainting_mask_invert=request.inpainting_mask_invert, image_cfg_scale=request.image_cfg_scale,
            initial_noise_multiplier=request.initial_noise_multiplier,
        )
        p.outpath_samples = _opt("outdir_samples") or _opt("outdir_img2img_samples")
        p.outpath_grids = _opt("outdir_grids") or _opt("outdir_img2img_grids")
    else:
        p = StableDiffusionProcessingTxt2Img(
            **common, enable_hr=request.enable_hr, hr_scale=request.hr_scale, hr_upscaler=request.hr_upscaler,
            hr_second_pass_steps=request.hr_second_pass_steps, hr_resize_x=request.hr_resize_x,
            hr_resize_y=request.hr_resize_y, hr_checkpoint_name=request.hr_checkpoint_name,
            hr_sampler_name=request.hr_sampler_name, hr_scheduler=request.hr_scheduler,
            hr_prompt=request.hr_prompt, hr_negative_prompt=request.hr_negative_prompt,
        )
        p.outpath_samples = _opt("outdir_samples") or _opt("outdir_txt2img_samples")
        p.outpath_grids = _opt("outdir_grids") or _opt("outdir_txt2img_grids")
    return p




# ---- running ----------------------------------------------------------------------------------------

# every process_images() of the running script job (the adapters' result collects their files)
_job_results: contextvars.ContextVar[list | None] = contextvars.ContextVar("easel_job_results", default=None)


def _job_overrides(engine, p) -> dict:
    rest = {k: v for k, v in (p.override_settings or {}).items() if k not in _OVERRIDE_FIELDS}
    # p.eta, p.s_churn, ... (a script's or the API's): given, they win over the options (A1111)
    rest.update(sampler_options.field_overrides(p.sampler_name, **{name: getattr(p, name, None)
                                                                  for name in sampler_options.FIELD_OPTIONS}))
    return engine.check_overrides(rest)


def _observer(engine, model=None):
    """Progress of one process_images() call; when a script announced more jobs (state.job_count,
    as X/Y/Z plot does), this call's batches count on from the jobs done so far."""
    from modules.services.jobs import StateObserver

    announced = shared.state.announced_job_count
    model = model if model is not None else engine.models.model
    observer = StateObserver(engine.state, full_preview_every=engine.full_preview_every(model) if model else None,
                             full_preview_grid=bool(engine.options.get("show_progress_grid")))
    if announced is None:
        return observer
    offset = engine.state.job_no
    begin = observer.begin_batch

    def begin_batch(batch_index, batch_count, steps):
        begin(batch_index, batch_count, steps)
        engine.state.job_no = offset + batch_index
        engine.state.job_count = max(announced, offset + batch_count)
        engine.state.textinfo = f"Job {offset + batch_index + 1} out of {engine.state.job_count}"

    observer.begin_batch = begin_batch
    return observer


def run(p: StableDiffusionProcessing, engine) -> Processed:
    """process_images' work on the worker, after before_process and the opts overrides (see processing)."""
    from modules.core import hires as core_hires
    from modules.core import img2img as core_img2img
    from modules.core.pipeline import generate

    is_img2img = isinstance(p, StableDiffusionProcessingImg2Img)
    kind = "img2img" if is_img2img else "txt2img"
    overrides = _job_overrides(engine, p)
    checkpoint = p.override_settings.get("sd_model_checkpoint") or None
    info = engine.resolve_checkpoint(checkpoint)
    model = engine._load(info, remember=checkpoint is None, vae=overrides.get("sd_vae"), overrides=overrides)
    if engine.embeddings is not None and not p.do_not_reload_embeddings:
        engine.embeddings.refresh(model, announce=bool({**engine.options.data, **overrides}.get(
            "textual_inversion_print_at_load")))
    describe_model(model, info)
    p.sd_model_name = info.model_name.rsplit("/", 1)[-1]
    p.sd_model_hash = info.shorthash
    if p.tiling is None:
        p.tiling = False
    if p.restore_faces is None:  # A1111: the face_restoration option decides
        p.restore_faces = bool({**engine.options.data, **overrides}.get("face_restoration"))
    if p.restore_faces:
        from modules.services import face_restorers

        # a script's choice first (X/Y/Z's Face restore axis), else the options'
        p.face_restoration_model = getattr(p, "face_restoration_model", None) or face_restorers.wanted(
            {**engine.options.data, **overrides, "face_restoration": True})
        face_restorers.check_job({"face_restoration": True, "face_restoration_model": p.face_restoration_model})
    p.refiner_checkpoint_info = _refiner_info(p, engine)
    if not p.width or not p.height:  # Easel's requests may leave the size to the model / the image
        if is_img2img and p.init_images:
            shape = types.SimpleNamespace(init_images=[_pil(p.init_images[0])])
            width, height = core_img2img.default_size(shape, model.latent_scale)
        else:
            width, height = model.spec.native_size
        p.width, p.height = p.width or width, p.height or height

    seed, subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)
    p.setup_prompts()
    p.all_seeds = (seed if isinstance(seed, list)
                   else [int(seed) + (x if not p.subseed_strength else 0) for x in range(len(p.all_prompts))])
    p.all_subseeds = subseed if isinstance(subseed, list) else [int(subseed) + x for x in range(len(p.all_prompts))]
    if isinstance(p, StableDiffusionProcessingTxt2Img) and p.enable_hr:  # known to the scripts, as in A1111
        size = core_hires.target_size(p.width, p.height, p.hr_scale, p.hr_resize_x, p.hr_resize_y, model.latent_scale)
        p.hr_upscale_to_x, p.hr_upscale_to_y = size.width, size.height
    if p.scripts is not None:
        p.scripts.process(p)

    request = to_request(p)
    request.seed, request.subseed = int(p.all_seeds[0]), int(p.all_subseeds[0])
    if len(p.all_prompts) != request.batch_size * request.n_iter:
        raise RequestError("prompt", f"{len(p.all_prompts)} prompts for batch_size {request.batch_size} x "
                                     f"n_iter {request.n_iter}: give one per picture")
    settings = engine.settings_for(info, kind, overrides)
    _apply_output_choices(p, settings, engine)
    settings.control = controlnet_processing.job_for(p)  # the built-in ControlNet's enabled units
    hooks = ScriptHooks(p, model)
    try:
        result = generate(request, model, settings, _observer(engine, model), hooks)
    finally:
        hooks.deactivate_extra_networks()
    result.job_timestamp = engine.state.job_timestamp
    collected = _job_results.get()
    if collected is not None:
        collected.append(result)

    p.clip_skip = result.clip_skip
    p.sampler_name, p.resolved_scheduler = result.sampler_name, result.scheduler
    if isinstance(p, StableDiffusionProcessingTxt2Img) and p.enable_hr:
        p.hr_upscale_to_x, p.hr_upscale_to_y = result.width, result.height
    p.is_using_inpainting_conditioning = "Conditional mask weight" in result.extra_generation_params
    images, infotexts, first = list(result.images), list(result.infotexts), 0
    if result.grid is not None:
        images, infotexts, first = [result.grid, *images], [result.infotexts[0], *infotexts], 1
    processed = Processed(p, images_list=images, seed=p.all_seeds[0], info=infotexts[0] if infotexts else "",
                          subseed=p.all_subseeds[0], index_of_first_image=first, infotexts=infotexts or None,
                          all_prompts=list(result.prompts) or None, all_negative_prompts=list(result.negative_prompts) or None,
                          all_seeds=list(result.seeds) or None, all_subseeds=list(result.subseeds) or None)
    merged = dict(p.extra_generation_params)
    for key, value in result.extra_generation_params.items():
        merged.setdefault(key, value)
    processed.extra_generation_params = merged
    processed.result = result
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed


def _apply_output_choices(p, settings, engine) -> None:
    """A1111's p.do_not_save_grid (no grid at all) and p.outpath_samples / outpath_grids."""
    if p.do_not_save_grid:
        settings.save_grid = False
        settings.return_grid = False
    for attr, name in (("outpath_samples", "outdir_samples"), ("outpath_grids", "outdir_grids")):
        value = getattr(p, attr, None)
        current = getattr(settings, name)
        if value and current is not None:
            path = Path(value)
            setattr(settings, name, path if path.is_absolute() else engine.data_path / path)


def describe_model(model, info) -> None:
    """A1111's attributes on shared.sd_model that extensions test (is_sdxl, sd_model_hash, ...), and
    its ``model.diffusion_model`` with LDM's CrossAttention modules (modules.ldm_view)."""
    from modules import ldm_view

    try:
        ldm_view.attach(model)
    except Exception as error:  # noqa: BLE001 - a model type the view does not fit: extensions only lose it
        print(f"[easel] {info.name}: no A1111 model.diffusion_model view ({error})")
    for name, value in (*model.family.a1111_flags.items(), ("sd_model_hash", info.shorthash),
                        ("sd_checkpoint_info", info), ("sd_model_checkpoint", str(info.filename))):
        try:
            setattr(model, name, value)
        except Exception:  # noqa: BLE001 - a model type that refuses attributes
            return


class collect_results:  # noqa: N801 - used as a context manager, like a function
    """Collect the core results of every process_images() in the block (script_jobs uses it)."""

    def __enter__(self) -> list:
        self.results: list = []
        self.token = _job_results.set(self.results)
        return self.results

    def __exit__(self, *exc):
        _job_results.reset(self.token)
