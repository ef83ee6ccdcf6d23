"""Checkpoints and VAEs: sd-models, refresh-checkpoints, reload-checkpoint, unload-checkpoint,
sd-vae and refresh-vae, in A1111's shapes.

unload-checkpoint frees the loaded checkpoint (on the worker, after queued jobs); the selected
one stays selected, so the next generation or reload-checkpoint loads it again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter

from modules.core.types import RequestError
from modules.services.engine import Engine

from . import models
from .errors import server_error, unprocessable


def config_near(filename: Path) -> str | None:
    """A1111's find_checkpoint_config_near_filename: a .yaml of the same name next to it."""
    config = Path(filename).with_suffix(".yaml")
    return str(config) if config.is_file() else None


def add_routes(r: APIRouter, engine: Engine) -> None:
    @r.get("/sd-models", response_model=list[models.SDModelItem])
    def sd_models():
        return [{"title": i.title, "model_name": i.model_name, "hash": i.shorthash, "sha256": i.sha256,
                 "filename": str(i.filename), "config": config_near(i.filename)} for i in engine.checkpoints.list()]

    @r.post("/refresh-checkpoints")
    def refresh_checkpoints():
        engine.checkpoints.refresh()
        return {}

    @r.post("/unload-checkpoint")
    async def unload_checkpoint():
        await asyncio.wrap_future(engine.queue.submit("unload checkpoint", engine.models.unload))
        return {}

    @r.post("/reload-checkpoint")
    async def reload_checkpoint():
        """Load the selected checkpoint (after an unload); nothing to do when it is loaded."""
        try:
            await asyncio.to_thread(engine.select_checkpoint, engine.options.get("sd_model_checkpoint") or "")
        except RequestError as exc:
            return unprocessable("sd_model_checkpoint", exc.message, 404)
        except ValueError as exc:  # the file cannot be loaded
            return server_error(exc, "the selected checkpoint cannot be loaded")
        return {}

    @r.get("/sd-vae", response_model=list[models.SDVaeItem])
    def sd_vae():
        if engine.vaes is None:
            return []
        return [{"model_name": v.model_name, "filename": str(v.filename)} for v in engine.vaes.list()]

    @r.post("/refresh-vae")
    def refresh_vae():
        if engine.vaes is not None:
            engine.vaes.refresh()
        return {}
