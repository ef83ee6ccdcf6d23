"""A1111's /sdapi/v1 routes over the engine. Thin: parse, call, shape the answer.

txt2img and img2img live in routes_generation.py (request conversion: convert.py)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute, Match, Mount

from modules.core import image_io, samplers, upscaling
from modules.core.preview import latent_preview
from modules.core.types import RequestError
from modules.services.engine import Engine

from . import models, routes_generation
from . import routes_styles
from . import routes_embeddings
from . import routes_loras
from .errors import unprocessable


def build_router(engine: Engine) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1")

    routes_generation.add_routes(r, engine)
    routes_styles.add_routes(r, engine)
    routes_embeddings.add_routes(r, engine)
    routes_loras.add_routes(r, engine)

    @r.get("/samplers", response_model=list[models.SamplerItem])
    def list_samplers():
        return [{"name": n, "aliases": list(samplers.get_spec(n).aliases), "options": {}} for n in samplers.SAMPLER_NAMES]

    @r.get("/schedulers", response_model=list[models.SchedulerItem])
    def list_schedulers():
        return [{"name": sid, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for label, sid in samplers.SCHEDULE_TYPES]

    @r.get("/upscalers", response_model=list[models.UpscalerItem])
    def list_upscalers():
        return [{"name": u.name, "model_name": u.model_name, "model_path": u.model_path, "model_url": u.model_url,
                 "scale": u.scale} for u in upscaling.image_upscalers()]

    @r.get("/latent-upscale-modes", response_model=list[models.LatentUpscalerModeItem])
    def list_latent_upscale_modes():
        return [{"name": name} for name in upscaling.latent_modes()]

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
