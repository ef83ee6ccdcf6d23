"""A1111 request bodies -> core requests, and core results -> A1111's `info` and `parameters`.

Pure translation, no I/O besides decoding the request's base64 images; the routes
(modules.api.routes_generation) call these and talk to the engine.
"""

from __future__ import annotations

from typing import Any

from modules import script_host
from modules.core.infotext import parse_infotext
from modules.core.sampler_options import FIELD_OPTIONS, field_overrides
from modules.core.types import GenerationRequest, GenerationResult, Img2ImgRequest, RequestError
from modules.core.version import VERSION
from modules.services import script_jobs

from . import request_fields, url_pictures
from .errors import BadImage
from .models import HIRES_FIELDS, IMG2IMG_API_DEFAULTS, NOT_AT_TOP_LEVEL, TXT2IMG_API_DEFAULTS

IMAGE_FIELDS = ("init_images", "mask")
TXT2IMG_FIELDS = [f for f in GenerationRequest.field_specs() if f not in NOT_AT_TOP_LEVEL]
IMG2IMG_FIELDS = [f for f in Img2ImgRequest.field_specs()
                  if f not in NOT_AT_TOP_LEVEL and f not in HIRES_FIELDS and f not in IMAGE_FIELDS]

# options that A1111's override_settings turns into core request fields rather than job options
OVERRIDE_FIELDS = {"sd_model_checkpoint": "checkpoint", "CLIP_stop_at_last_layers": "clip_skip"}
# core request fields that the API reaches through override_settings (for naming them in errors)
API_FIELD = {core: f"override_settings.{option}" for option, core in OVERRIDE_FIELDS.items()}


def _common(data: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """The fields txt2img and img2img share: refusals, A1111's aliases, checkpoint and clip skip
    from override_settings, and save_images (A1111's API default: false). The script fields are
    script_call's."""
    kwargs = {k: data[k] for k in fields if data.get(k) is not None}
    kwargs.update(request_fields.sampler_fields(data))  # sampler_name / sampler_index / old combined names
    overrides = data.get("override_settings") or {}
    for option, core in OVERRIDE_FIELDS.items():
        if overrides.get(option):
            kwargs[core] = overrides[option]
    kwargs["save_images"] = bool(data.get("save_images")) and not data.get("do_not_save_samples")
    return kwargs


def job_overrides(body: Any) -> dict[str, Any]:
    """override_settings minus the ones that became request fields: option values for this job.
    restore_faces, when given, is the job's face_restoration option (A1111: None = the option)."""
    overrides = {k: v for k, v in (body.override_settings or {}).items() if k not in OVERRIDE_FIELDS}
    if getattr(body, "restore_faces", None) is not None:
        overrides["face_restoration"] = bool(body.restore_faces)
    # eta, s_churn, s_tmin, s_tmax, s_noise, s_min_uncond: given, they win over the options (A1111)
    fields = {name: getattr(body, name, None) for name in FIELD_OPTIONS}
    if any(value is not None for value in fields.values()):
        data = {"sampler_name": getattr(body, "sampler_name", None), "sampler_index": getattr(body, "sampler_index", None),
                "scheduler": getattr(body, "scheduler", None)}
        overrides.update(field_overrides(request_fields.sampler_fields(data)["sampler_name"], **fields))
    return overrides


def to_generation_request(body: Any) -> GenerationRequest:
    """A txt2img body -> GenerationRequest (hires fix and tiling pass straight through)."""
    data = body.model_dump()
    for name, default in TXT2IMG_API_DEFAULTS.items():
        if data.get(name) is None:
            data[name] = default
    return GenerationRequest(**_common(data, TXT2IMG_FIELDS))


def decode_images(body: Any, max_pixels: int, options: Any) -> tuple[list, Any]:
    """The img2img body's init images and mask, decoded (RequestError naming the field otherwise);
    a picture may be an http(s) URL, fetched as the engine's `options` allow (url_pictures). Slow for big images and URLs: the route runs it off the event loop."""
    if not body.init_images:  # A1111 answers 404 "Init image not found"; a 422 naming the field says more
        raise RequestError("init_images", "needs at least one base64-encoded image")

    def decode(item: Any, field: str) -> Any:
        return url_pictures.decode(item, field, options, max_pixels)

    try:
        images = [decode(item, "init_images") for item in body.init_images]
        mask = decode(body.mask, "mask") if body.mask else None  # "" = no mask, as A1111
    except RequestError as exc:  # not an image: answered 400
        raise BadImage(exc.field, exc.message) from None
    return images, mask


def to_img2img_request(body: Any, init_images: list, mask: Any) -> Img2ImgRequest:
    """An img2img body with its decoded images -> Img2ImgRequest, with A1111's API defaults."""
    data = body.model_dump()
    for name, default in IMG2IMG_API_DEFAULTS.items():
        if data.get(name) is None:
            data[name] = default
    kwargs = _common(data, IMG2IMG_FIELDS)
    if data.get("mask_blur") is not None:  # A1111: mask_blur sets both directions
        kwargs.pop("mask_blur_x", None)
        kwargs.pop("mask_blur_y", None)
    else:
        kwargs.pop("mask_blur", None)
        kwargs.setdefault("mask_blur_x", 4)
        kwargs.setdefault("mask_blur_y", 4)
    return Img2ImgRequest(**kwargs, init_images=init_images, mask=mask)


def script_call(body: Any, img2img: bool, alwayson_scripts: Any = None) -> script_jobs.ScriptCall:
    """A1111's script_name / script_args / alwayson_scripts as the job's ScriptCall, checked
    against the loaded scripts now (an unknown script: RequestError naming the field and the known
    scripts). `alwayson_scripts`: the body's, with URL pictures fetched (url_pictures.script_pictures)
    when given. Builds the scripts' argument layout on first use: the route runs it off the event loop."""
    alwayson = body.alwayson_scripts if alwayson_scripts is None else alwayson_scripts
    call = script_jobs.ScriptCall.from_api(body.script_name, body.script_args, alwayson)
    if not call.empty:  # (an empty call runs the AlwaysVisible scripts with their defaults, if any)
        call.script_args(script_host.runner_for("img2img" if img2img else "txt2img"))
    return call


def parameters_echo(body: Any, img2img: bool = False) -> dict[str, Any]:
    """The request as A1111 echoes it; img2img drops the images unless include_init_images."""
    params = body.model_dump()
    if img2img and not params.get("include_init_images"):
        params["init_images"] = None
        params["mask"] = None
    return params


def processed_info(request: GenerationRequest, result: GenerationResult, index_of_first_image: int,
                   job_timestamp: str, styles: list[str] | None = None) -> dict[str, Any]:
    """The keys of A1111's Processed.js(), which clients validate. `request` is the one before the
    `styles` were applied: A1111's `prompt` is the prompt as sent (`all_prompts` are expanded)."""
    img2img = isinstance(request, Img2ImgRequest)
    # A1111's p.width/p.height: with hires fix the first pass's size (the infotext's Size), not the image's
    width, height = result.first_pass_size or (result.width, result.height)
    # the face restoration hooks write the infotext's key (A1111: p.restore_faces, the option's model)
    restored_with = (parse_infotext(result.infotexts[0]).get("Face restoration") if result.infotexts else None) or None
    return {
        "prompt": request.prompt,
        "all_prompts": result.prompts,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": result.negative_prompts,
        "seed": result.seeds[0] if result.seeds else request.seed,
        "all_seeds": result.seeds,
        "subseed": result.subseeds[0] if result.subseeds else request.subseed,
        "all_subseeds": result.subseeds,
        "subseed_strength": request.subseed_strength,
        "width": width,
        "height": height,
        "sampler_name": result.sampler_name,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": restored_with is not None,
        "face_restoration_model": restored_with,
        "sd_model_name": result.model_name,
        "sd_model_hash": result.model_hash,
        "sd_vae_name": result.vae_name,
        "sd_vae_hash": result.vae_hash,
        "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": request.denoising_strength if img2img or request.enable_hr else None,
        "extra_generation_params": dict(result.extra_generation_params),
        "index_of_first_image": index_of_first_image,
        "infotexts": result.infotexts,
        "styles": list(styles or []),
        "job_timestamp": job_timestamp,
        "clip_skip": result.clip_skip,
        # A1111: the model is an inpainting one (its conditioning key is hybrid/concat); the
        # pipeline writes "Conditional mask weight" exactly then
        "is_using_inpainting_conditioning": "Conditional mask weight" in result.extra_generation_params,
        "version": VERSION,
    }
