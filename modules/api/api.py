"""A1111's /sdapi/v1 routes over the engine. Thin: parse, call, shape the answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute, Match, Mount

from modules.core import image_io, samplers
from modules.core.preview import latent_preview
from modules.core.types import GenerationRequest, GenerationResult, RequestError
from modules.services.engine import VERSION, Engine

from . import models

CORE_FIELDS = [f for f in GenerationRequest.field_specs() if f not in ("checkpoint", "extra", "clip_skip", "save_images")]

# core request fields that the API reaches through A1111's override_settings
API_FIELD = {
    "checkpoint": "override_settings.sd_model_checkpoint",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
}


def unprocessable(field: str, message: str, status: int = 422) -> JSONResponse:
    """FastAPI's error shape; `field` may be a dotted path (`override_settings.sd_model_checkpoint`)."""
    return JSONResponse(
        status_code=status,
        content={
            "error": "RequestError",
            "detail": [{"loc": ["body", *field.split(".")], "msg": message, "type": "value_error"}],
            "errors": f"{field}: {message}",
        },
    )


def to_generation_request(body: Any) -> GenerationRequest:
    data = body.model_dump()
    for field, what in (("enable_hr", "hires fix"), ("tiling", "tiling"), ("restore_faces", "face restoration")):
        if data.get(field):
            raise RequestError(field, f"{what} is not available in this version of Easel")
    if data.get("script_name"):
        raise RequestError("script_name", f"unknown script '{data['script_name']}'; no selectable scripts are installed")
    kwargs = {k: data[k] for k in CORE_FIELDS if data.get(k) is not None}
    if data.get("sampler_index") and not data.get("sampler_name"):
        kwargs["sampler_name"] = data["sampler_index"]
    overrides = data.get("override_settings") or {}
    if overrides.get("sd_model_checkpoint"):
        kwargs["checkpoint"] = overrides["sd_model_checkpoint"]
    if overrides.get("CLIP_stop_at_last_layers"):
        kwargs["clip_skip"] = overrides["CLIP_stop_at_last_layers"]
    kwargs["save_images"] = bool(data.get("save_images")) and not data.get("do_not_save_samples")
    return GenerationRequest(**kwargs)


def processed_info(request: GenerationRequest, result: GenerationResult, index_of_first_image: int,
                   job_timestamp: str) -> dict[str, Any]:
    """The keys of A1111's Processed.js(), which clients validate."""
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
        "width": result.width,
        "height": result.height,
        "sampler_name": result.sampler_name,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model_name,
        "sd_model_hash": result.model_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": None,
        "extra_generation_params": dict(result.extra_generation_params),
        "index_of_first_image": index_of_first_image,
        "infotexts": result.infotexts,
        "styles": [],
        "job_timestamp": job_timestamp,
        "clip_skip": result.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": VERSION,
    }


def build_router(engine: Engine) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1")

    @r.post("/txt2img", response_model=models.TextToImageResponse)
    async def txt2img(body: models.StableDiffusionTxt2ImgProcessingAPI):
        request = None
        try:
            request = to_generation_request(body)
            overrides = {k: v for k, v in (body.override_settings or {}).items()
                         if k not in ("sd_model_checkpoint", "CLIP_stop_at_last_layers")}
            future = engine.submit_txt2img(request, task_id=body.force_task_id, overrides=overrides)
            result = await asyncio.wrap_future(future)
        except RequestError as exc:
            return unprocessable(API_FIELD.get(exc.field, exc.field), exc.message)
        except ValueError as exc:  # an unreadable or unsupported checkpoint file
            if request is not None and request.checkpoint:
                return unprocessable(API_FIELD["checkpoint"], str(exc))
            return JSONResponse(status_code=500, content={"error": type(exc).__name__, "detail": str(exc),
                                                          "errors": f"the selected checkpoint cannot be used: {exc}"})
        images = result.images
        first = 0
        if result.grid is not None and engine.options.get("return_grid"):
            images, first = [result.grid, *images], 1
        send = body.send_images is not False  # null means the default, True
        encoded = [image_io.encode_pil_to_base64(im, "png", im.info.get("parameters")) for im in images] if send else []
        info = processed_info(request, result, first, result.job_timestamp)
        return {"images": encoded, "parameters": body.model_dump(), "info": json.dumps(info)}

    @r.get("/samplers", response_model=list[models.SamplerItem])
    def list_samplers():
        return [{"name": n, "aliases": list(samplers.get_spec(n).aliases), "options": {}} for n in samplers.SAMPLER_NAMES]

    @r.get("/schedulers", response_model=list[models.SchedulerItem])
    def list_schedulers():
        return [{"name": sid, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for label, sid in samplers.SCHEDULE_TYPES]

    @r.get("/sd-models", response_model=list[models.SDModelItem])
    def sd_models():
        return [{"title": i.title, "model_name": i.model_name, "hash": i.shorthash, "sha256": i.sha256,
                 "filename": str(i.filename), "config": None} for i in engine.checkpoints.list()]

    @r.post("/refresh-checkpoints")
    def refresh_checkpoints():
        engine.checkpoints.refresh()
        return {}

    @r.get("/options")
    def get_options():
        return engine.options.as_dict()

    @r.post("/options")
    async def set_options(request: Request):
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return unprocessable("body", "must be a JSON object")
        if not isinstance(body, dict):
            return unprocessable("body", "must be a JSON object")
        checkpoint = body.pop("sd_model_checkpoint", None)
        if checkpoint is not None and not isinstance(checkpoint, str):
            return unprocessable("sd_model_checkpoint", f"must be a checkpoint title (text), got {type(checkpoint).__name__}")
        for key, value in body.items():
            if key not in engine.options.defs and key not in engine.options.data:
                return unprocessable(key, f"unknown option '{key}'")
            try:
                engine.options.validate(key, value)
            except ValueError as exc:
                return unprocessable(key, str(exc))
        if checkpoint:
            try:
                await asyncio.to_thread(engine.select_checkpoint, checkpoint)
            except RequestError as exc:
                return unprocessable("sd_model_checkpoint", exc.message, 404)
            except ValueError as exc:
                return unprocessable("sd_model_checkpoint", str(exc))
        for key, value in body.items():
            engine.options.set(key, value)
        engine.options.save()
        return {}

    @r.get("/progress", response_model=models.ProgressResponse)
    def progress(skip_current_image: bool = False):
        state = engine.state
        frac, eta = state.progress()
        image = None
        if not skip_current_image and engine.options.get("live_previews_enable") and state.current_latent is not None:
            model = engine.models.model
            if model is not None:
                image = image_io.encode_pil_to_base64(latent_preview(state.current_latent, model.spec.family), "png")
        return {"progress": frac, "eta_relative": eta or 0.0, "state": state.as_dict(), "current_image": image,
                "textinfo": state.textinfo, "current_task": state.task_id}

    @r.post("/interrupt")
    def interrupt():
        engine.state.interrupt()
        return {}

    @r.post("/skip")
    def skip():
        engine.state.skip()
        return {}

    return r


class MethodNotAllowed(BaseRoute):
    """405 for a known /sdapi path called with the wrong method.

    Starlette answers 405 itself only when no route matches fully, but the UI is mounted at
    "/" and matches everything, so without this a GET on a POST route would get the UI's 404.
    Checked at request time, so routes added later (extensions) are seen too.
    """

    def __init__(self, app: FastAPI, prefix: str):
        self.app = app
        self.prefix = prefix

    def matches(self, scope):
        if scope.get("type") != "http" or not scope.get("path", "").startswith(self.prefix):
            return Match.NONE, {}
        routes = [r for r in self.app.router.routes if r is not self and not isinstance(r, Mount)]

        def served(method: str) -> bool:  # asks the routes themselves: included routers hide `methods`
            return any(r.matches({**scope, "method": method})[0] == Match.FULL for r in routes)

        if served(scope["method"]):
            return Match.NONE, {}
        allowed = [m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if served(m)]
        return (Match.FULL, {"easel.allowed": allowed}) if allowed else (Match.NONE, {})

    async def handle(self, scope, receive, send):
        allowed = ", ".join(scope["easel.allowed"])
        response = JSONResponse({"detail": "Method Not Allowed", "allowed": scope["easel.allowed"]},
                                status_code=405, headers={"Allow": allowed})
        await response(scope, receive, send)


def mount(app: FastAPI, engine: Engine) -> None:
    app.include_router(build_router(engine))
    app.router.routes.append(MethodNotAllowed(app, "/sdapi/"))
