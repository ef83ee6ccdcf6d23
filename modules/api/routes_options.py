"""GET/POST /sdapi/v1/options: every setting under its A1111 name.

POST checks every value first (type, choices, bounds, NaN and infinity; an unknown key is
refused, where A1111 fails with a KeyError; then the command line's locks: --freeze-settings,
--freeze-settings-in-sections, --freeze-specific-settings, --hide-ui-dir-config, with A1111's
messages) and sets all or none, each refusal a 422 naming the option. An option marked
`restrict_api` (api_enable_requests, api_forbid_local_requests, api_useragent) is skipped as A1111
skips it: the answer is still 200, the option keeps its value, the others in the body are set. `sd_model_checkpoint`
loads that checkpoint on the worker, after the queued jobs, and a checkpoint that cannot be
found or read changes nothing. GET always answers strict JSON (see Options.as_dict).
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import APIRouter, Request

from modules.core.types import RequestError
from modules.services.engine import Engine

from .errors import unprocessable


log = logging.getLogger(__name__)


def restricted_to_settings(engine: Engine, key: str) -> bool:
    """A1111's `restrict_api`: an option that only the Settings tab (or config.json) changes."""
    definition = engine.options.defs.get(key)
    return bool(getattr(definition, "restrict_api", False))


def add_routes(r: APIRouter, engine: Engine) -> None:
    @r.get("/options")
    def get_options():
        return engine.options.as_dict()

    @r.post("/options")
    async def set_options(request: Request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return unprocessable("body", "must be a JSON object")
        if not isinstance(body, dict):
            return unprocessable("body", "must be a JSON object")
        checkpoint = body.pop("sd_model_checkpoint", None)
        if checkpoint is not None and not isinstance(checkpoint, str):
            return unprocessable("sd_model_checkpoint", f"must be a checkpoint title (text), got {type(checkpoint).__name__}")
        for key in [k for k in body if restricted_to_settings(engine, k)]:
            log.warning("option %s is not changed through the API (restrict_api): use the Settings tab", key)
            del body[key]  # A1111: skipped without a word, the others still set
        for key, value in body.items():
            if key not in engine.options.defs and key not in engine.options.data:
                return unprocessable(key, f"unknown option '{key}'")
            try:
                engine.options.check(key, value)
            except ValueError as exc:
                return unprocessable(key, str(exc))
        if checkpoint:
            try:
                await asyncio.to_thread(engine.select_checkpoint, checkpoint)
            except RequestError as exc:
                return unprocessable("sd_model_checkpoint", exc.message, 404)
            except ValueError as exc:
                return unprocessable("sd_model_checkpoint", str(exc))
        if "sd_vae" in body:  # put into the loaded model first: a VAE that does not fit changes nothing
            try:
                await asyncio.to_thread(engine.select_vae, body.pop("sd_vae"))
            except ValueError as exc:
                return unprocessable("sd_vae", str(exc))
        for key, value in body.items():
            engine.options.set(key, value)
        engine.options.save()
        return {}
