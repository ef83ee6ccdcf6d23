"""Progress and control: GET /sdapi/v1/progress, POST /sdapi/v1/interrupt and /skip, and A1111's
task tracking, POST /internal/progress and GET /internal/pending-tasks (by the `force_task_id`
of a request, or the id the API gave it).

Live previews: modules/services/live_previews.py (shared with the page).
"""

from __future__ import annotations

import base64
import io
import time

from fastapi import APIRouter

from modules.core import image_io
from modules.services.engine import Engine
from modules.services.live_previews import LivePreviews

from . import models


def _fraction(state) -> float:
    progress = state.job_no / state.job_count if state.job_count > 0 else 0.0
    if state.sampling_steps > 0 and state.job_count > 0:
        progress += state.sampling_step / state.sampling_steps / state.job_count
    return min(progress, 1.0)


def add_routes(r: APIRouter, engine: Engine, previews: LivePreviews) -> None:
    @r.get("/progress", response_model=models.ProgressResponse)
    def progress(skip_current_image: bool = False):
        state = engine.state
        if not state.busy or state.job_count == 0:
            return {"progress": 0.0, "eta_relative": 0.0, "state": state.as_dict(), "textinfo": state.textinfo,
                    "current_task": state.task_id}
        frac, eta = state.progress()
        _, image = previews.current()
        current = image_io.encode_pil_to_base64(image, "png") if image is not None and not skip_current_image else None
        return {"progress": frac, "eta_relative": eta or 0.0, "state": state.as_dict(), "current_image": current,
                "textinfo": state.textinfo, "current_task": state.task_id}

    @r.post("/interrupt")
    def interrupt():
        engine.state.interrupt()
        return {}

    @r.post("/skip")
    def skip():
        engine.state.skip()
        return {}


def add_internal_routes(r: APIRouter, engine: Engine, previews: LivePreviews) -> None:
    @r.post("/internal/progress", response_model=models.InternalProgressResponse)
    def internal_progress(req: models.InternalProgressRequest):
        state, queue = engine.state, engine.queue
        active = req.id_task is not None and state.busy and req.id_task == state.task_id
        waiting = sorted(dict(queue.queued).items(), key=lambda item: item[1])
        queued = req.id_task in dict(waiting)
        completed = req.id_task in list(queue.finished)
        if not active:
            textinfo = "Waiting..."
            if queued:
                position = [task for task, _ in waiting].index(req.id_task)
                textinfo = f"In queue: {position + 1}/{len(waiting)}"
            return {"active": False, "queued": queued, "completed": completed, "id_live_preview": -1,
                    "textinfo": textinfo}
        progress = _fraction(state)
        elapsed = time.time() - (state.time_start or time.time())
        eta = elapsed / progress - elapsed if progress > 0 else None
        live_preview, id_live_preview = None, req.id_live_preview
        if req.live_preview and engine.options.get("live_previews_enable"):
            preview_id, image = previews.current()
            if image is not None and preview_id != req.id_live_preview:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                live_preview = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
                id_live_preview = preview_id
        return {"active": True, "queued": queued, "completed": completed, "progress": progress, "eta": eta,
                "live_preview": live_preview, "id_live_preview": id_live_preview, "textinfo": state.textinfo}

    @r.get("/internal/pending-tasks", response_model=models.PendingTasksResponse)
    def pending_tasks():
        waiting = [task for task, _ in sorted(dict(engine.queue.queued).items(), key=lambda item: item[1])]
        return {"size": len(waiting), "tasks": waiting}
