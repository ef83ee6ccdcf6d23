"""Progress and control: GET /sdapi/v1/progress, POST /sdapi/v1/interrupt and /skip, and A1111's
task tracking, POST /internal/progress and GET /internal/pending-tasks (by the `force_task_id`
of a request, or the id the API gave it).

Live previews follow A1111's `state.set_current_image`: with "live_previews_enable" on, a new
preview is made when `show_progress_every_n_steps` steps have passed since the last one (-1:
none while sampling); it is the cheap latent-to-RGB approximation of the current step, so a
poll never costs a VAE decode.
"""

from __future__ import annotations

import base64
import io
import threading
import time

from fastapi import APIRouter
from PIL import Image

from modules.core import image_io
from modules.core.preview import latent_preview
from modules.services.engine import Engine

from . import models


class LivePreviews:
    """The current job's preview image and its id, remade every N sampling steps."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._job: tuple | None = None
        self._step = 0
        self._id = -1
        self._image: Image.Image | None = None

    def current(self) -> tuple[int, Image.Image | None]:
        state, options = self.engine.state, self.engine.options
        with self._lock:
            job = (state.task_id, state.job_timestamp, state.job_no)
            if job != self._job:  # a new job or batch: A1111 starts counting steps again
                self._job, self._step, self._image, self._id = job, 0, None, -1
            every = options.get("show_progress_every_n_steps")
            latent, model = state.current_latent, self.engine.models.model
            if (options.get("live_previews_enable") and every is not None and every != -1 and latent is not None
                    and model is not None and state.sampling_step - self._step >= every
                    and state.id_live_preview != self._id):
                self._image = latent_preview(latent, model.family.preview_factors)
                self._step, self._id = state.sampling_step, state.id_live_preview
            return self._id, self._image


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
