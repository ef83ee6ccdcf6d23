"""Progress and control: GET /sdapi/v1/progress, POST /sdapi/v1/interrupt and /skip, and A1111's
task tracking, POST /internal/progress and GET /internal/pending-tasks (by the `force_task_id`
of a request, or the id the API gave it).

Live previews: modules/services/live_previews.py (shared with the page).
"""

from __future__ import annotations

import base64
import io

from fastapi import APIRouter

from modules.core import image_io
from modules.services.engine import Engine
from modules.services.live_previews import LivePreviews

from . import models


def _preview_uri(image, fmt: str | None) -> str:
    """A preview as a data URI in A1111's live_previews_image_format (png, jpeg or webp)."""
    fmt = (fmt or "png").lower()
    fmt = fmt if fmt in ("png", "jpeg", "webp") else "png"
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt.upper())
    return f"data:image/{fmt};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def add_routes(r: APIRouter, engine: Engine, previews: LivePreviews) -> None:
    """With several workers (`--workers ray`) /progress reports the job that started first of those
    running, and /interrupt and /skip reach every running job, as A1111's do the one it runs."""

    @r.get("/progress", response_model=models.ProgressResponse)
    def progress(skip_current_image: bool = False):
        running = engine.queue.running_ids()
        live = engine.queue.live(running[0]) if running else None
        if live is None:
            state = engine.state
            return {"progress": 0.0, "eta_relative": 0.0, "state": state.as_dict(), "textinfo": state.textinfo,
                    "current_task": state.task_id}
        current = None
        if not skip_current_image:
            _, image = engine.queue.live_preview(running[0], previews)
            current = image_io.encode_pil_to_base64(image, "png") if image is not None else None
        return {"progress": live["progress"], "eta_relative": live["eta"] or 0.0, "state": live["state"],
                "current_image": current, "textinfo": live["textinfo"], "current_task": running[0]}

    @r.post("/interrupt")
    def interrupt():
        engine.queue.interrupt_all()
        return {}

    @r.post("/skip")
    def skip():
        engine.queue.skip_all()
        return {}


def add_internal_routes(r: APIRouter, engine: Engine, previews: LivePreviews) -> None:
    @r.post("/internal/progress", response_model=models.InternalProgressResponse)
    def internal_progress(req: models.InternalProgressRequest):
        queue = engine.queue
        live = queue.live(req.id_task) if req.id_task is not None else None
        waiting = sorted(dict(queue.queued).items(), key=lambda item: item[1])
        queued = req.id_task in dict(waiting)
        completed = req.id_task in list(queue.finished)
        if live is None:
            textinfo = "Waiting..."
            if queued:
                position = [task for task, _ in waiting].index(req.id_task)
                textinfo = f"In queue: {position + 1}/{len(waiting)}"
            return {"active": False, "queued": queued, "completed": completed, "id_live_preview": -1,
                    "textinfo": textinfo}
        live_preview, id_live_preview = None, req.id_live_preview
        if req.live_preview and engine.options.get("live_previews_enable"):
            preview_id, image = queue.live_preview(req.id_task, previews)
            if image is not None and preview_id != req.id_live_preview:
                live_preview = _preview_uri(image, engine.options.get("live_previews_image_format"))
                id_live_preview = preview_id
        return {"active": True, "queued": queued, "completed": completed, "progress": live["progress"],
                "eta": live["eta"], "live_preview": live_preview, "id_live_preview": id_live_preview,
                "textinfo": live["textinfo"]}

    @r.get("/internal/pending-tasks", response_model=models.PendingTasksResponse)
    def pending_tasks():
        waiting = [task for task, _ in sorted(dict(engine.queue.queued).items(), key=lambda item: item[1])]
        return {"size": len(waiting), "tasks": waiting}
