"""A1111's /sdapi/v1 routes over the engine. Thin: parse, call, shape the answer.

One module per group of routes: generation (txt2img, img2img; request conversion in convert.py
and request_fields.py), extras and png-info, options, progress and task tracking, checkpoints
and VAEs, listings, styles, embeddings, LoRAs. A GET on a POST route answers 405 and a path
under /sdapi/ that nothing serves a JSON 404, so clients can probe for features.
"""

from __future__ import annotations

import argparse

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute, Match, Mount

from modules.services.engine import Engine

from . import routes_checkpoints, routes_embeddings, routes_extras, routes_generation, routes_listings
from . import routes_loras, routes_options, routes_progress, routes_styles
from . import routes_extensions
from . import routes_scripts
from . import routes_controlnet
from . import routes_jobs
from . import routes_server
from . import url_pictures
from .errors import validation_error


def build_router(engine: Engine, cmd_opts: argparse.Namespace | None = None,
                 previews: routes_progress.LivePreviews | None = None) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1")
    previews = previews or routes_progress.LivePreviews(engine)
    # a picture fetched from a URL weighs at most what a request body may (--max-request-size)
    url_pictures.set_max_bytes(getattr(cmd_opts, "max_request_size", None))

    routes_generation.add_routes(r, engine)
    routes_extras.add_routes(r, engine)
    routes_options.add_routes(r, engine)
    routes_progress.add_routes(r, engine, previews)
    routes_checkpoints.add_routes(r, engine)
    routes_listings.add_routes(r, cmd_opts)
    routes_styles.add_routes(r, engine)
    routes_embeddings.add_routes(r, engine)
    routes_loras.add_routes(r, engine)
    routes_extensions.add_routes(r, engine)
    routes_scripts.add_routes(r, engine)
    if getattr(cmd_opts, "api_server_stop", False):
        routes_server.add_routes(r)
    return r


def build_internal_router(engine: Engine, previews: routes_progress.LivePreviews) -> APIRouter:
    """A1111's /internal/progress and /internal/pending-tasks (task tracking by id)."""
    r = APIRouter()
    routes_progress.add_internal_routes(r, engine, previews)
    return r


class MethodNotAllowed(BaseRoute):
    """405 for a known /sdapi path called with the wrong method, a JSON 404 for an unknown one.

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
        if not allowed:  # an absent feature: a JSON 404, unless a sub-application mounted there serves it
            mounts = [r for r in self.app.router.routes if isinstance(r, Mount) and r.path not in ("", "/")]
            if any(m.matches(scope)[0] != Match.NONE for m in mounts):
                return Match.NONE, {}
        return Match.FULL, {"easel.allowed": allowed}

    async def handle(self, scope, receive, send):
        allowed = scope["easel.allowed"]
        if not allowed:
            response = JSONResponse({"detail": "Not Found"}, status_code=404)
        else:
            response = JSONResponse({"detail": "Method Not Allowed", "allowed": allowed}, status_code=405,
                                    headers={"Allow": ", ".join(allowed)})
        await response(scope, receive, send)


def mount(app: FastAPI, engine: Engine, cmd_opts: argparse.Namespace | None = None) -> None:
    previews = routes_progress.LivePreviews(engine)
    app.add_exception_handler(RequestValidationError, validation_error)  # strict JSON, even for a NaN input
    app.include_router(build_router(engine, cmd_opts, previews))
    app.include_router(build_internal_router(engine, previews))
    app.include_router(routes_jobs.build_router(engine))  # the asynchronous job API, /easel/v1/jobs
    app.include_router(routes_controlnet.build_router(engine))  # sd-webui-controlnet's /controlnet/*
    app.router.routes.append(MethodNotAllowed(app, "/sdapi/"))
    app.router.routes.append(MethodNotAllowed(app, "/easel/"))
