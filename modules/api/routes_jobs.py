"""The asynchronous job API, beside A1111's synchronous routes: /easel/v1/jobs.

    POST   /easel/v1/jobs/txt2img, /img2img  A1111's request body -> 202 {"id", "status", "position"} at once
    GET    /easel/v1/jobs                    every job the queue knows (the UI's and /sdapi's too), oldest first
    GET    /easel/v1/jobs/{id}               state, queue position, progress; the result once done
    GET    /easel/v1/jobs/{id}/preview       the running job's current picture (PNG)
    GET    /easel/v1/workers                 the workers (one local thread, or the Ray actors) and their jobs
    DELETE /easel/v1/jobs/{id}               cancel: a queued job is dropped, a running one interrupted
    POST   /easel/v1/jobs/{id}/cancel        the same, for clients that cannot send DELETE

The jobs are the engine queue's (modules.services.job_registry): the UI's Generate button and
`/sdapi/v1/txt2img` submit to the same queue under their task ids, so their jobs are listed and can be
followed and cancelled here. The request is checked as A1111's route checks it (same pydantic models,
same conversion, same 4xx answers naming the field) before the job id is given. A finished job's
result is the answer `/sdapi/v1/txt2img` would have given, kept `--job-retention` seconds; the
pictures are saved to the output folders as any job's are. Finished jobs are kept on disk as well,
in the data folder's `jobs/` (`<id>.json`: this answer without the base64, with the picture files:
those the job saved, else PNG copies in `jobs/<id>/`), so they are still answered after a restart
until they expire, when both are deleted.

Under /easel/ rather than /sdapi/: /sdapi/v1 is A1111's namespace, which clients probe route by route
and A1111 may extend; Easel's own API gets its own versioned prefix (the same logins and request
guards apply to both, modules.auth and modules.request_guard).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from modules.core import image_io
from modules.core.preview import latent_preview
from modules.services.engine import Engine
from modules.services.job_registry import DONE, JobRecord

from . import convert, models, routes_generation

PREFIX = "/easel/v1/jobs"
WORKERS = "/easel/v1/workers"
Status = Literal["queued", "running", "done", "failed", "cancelled"]


class JobSubmitted(BaseModel):
    id: str = Field(description="The job's id (A1111's task id): follow it at GET /easel/v1/jobs/{id}.")
    status: Status
    position: Optional[int] = Field(None, description="Place in the queue, 1 for the next to run.")


class JobError(BaseModel):
    field: Optional[str] = Field(None, description="The request field at fault, if it was the request's fault.")
    message: str
    status_code: int = Field(description="The HTTP status /sdapi/v1 would have answered with.")


class JobResult(BaseModel):
    images: list[str] = Field(default_factory=list, description="Base64 PNG images (grids first, as A1111).")
    parameters: dict[str, Any] = Field(default_factory=dict)
    info: str = Field(description="A1111's info JSON (seeds, infotexts, ...).")
    paths: list[str] = Field(default_factory=list, description="Where the pictures were saved (if saved).")


class JobInfo(BaseModel):
    id: str
    kind: Literal["txt2img", "img2img"]
    status: Status
    created: float = Field(description="Unix time the job was queued.")
    started: Optional[float] = None
    finished: Optional[float] = None
    position: Optional[int] = Field(None, description="Place in the queue while queued, 1 for the next to run.")
    progress: float = Field(0.0, description="0 to 1.")
    eta: Optional[float] = Field(None, description="Seconds left, estimated as A1111 does.")
    step: Optional[int] = None
    steps: Optional[int] = None
    textinfo: Optional[str] = None
    worker: Optional[str] = Field(None, description="The worker that ran it ('local': the single worker thread).")
    attempts: int = Field(0, description="Times a worker started it (over 1: a worker died and it ran again).")
    checkpoint: Optional[str] = None
    error: Optional[JobError] = None
    result: Optional[JobResult] = Field(None, description="When done (or cancelled after it started).")


class JobList(BaseModel):
    jobs: list[JobInfo]


class WorkerInfo(BaseModel):
    name: str = Field(description="'local' (the worker thread) or 'ray-N' ('ray-N.G': its G-th replacement).")
    pid: Optional[int] = Field(None, description="The worker's process id (None while it starts).")
    checkpoint: Optional[str] = Field(None, description="The checkpoint file it last ran a job on (Ray workers).")
    job: Optional[str] = Field(None, description="The job it runs now.")
    jobs_done: int
    busy_s: Optional[float] = None
    replaced: int = Field(0, description="How many times the worker in this place died and was replaced.")


class WorkerList(BaseModel):
    workers: list[WorkerInfo]


class CancelAnswer(BaseModel):
    id: str
    status: Status
    cancelled: bool = Field(description="False when the job had already ended.")


def build_router(engine: Engine) -> APIRouter:
    r = APIRouter(tags=["jobs"])
    engine.queue.jobs.persist(engine.data_path / "jobs", lambda record, pictures: stored(engine, record, pictures))

    @r.get(WORKERS, response_model=WorkerList, summary="The generation workers and what they do")
    def workers():
        return {"workers": engine.queue.workers()}

    finishing: set[asyncio.Task] = set()  # the override_settings_restore_afterwards tasks, kept alive

    async def start(body: Any, build, submit_job, img2img: bool):
        request = None
        try:
            future, request, job_id = await routes_generation.submit(engine, body, build, submit_job, img2img)
        except Exception as exc:
            return routes_generation.error_answer(exc, request is not None and bool(request.checkpoint), img2img)
        record = engine.queue.jobs.get(job_id)
        if record is not None:
            record.meta.update(body=body, unstyled=request, img2img=img2img)

        async def finish():
            try:
                await asyncio.wrap_future(future)
            except BaseException:
                return
            await routes_generation.request_fields.keep_overrides(engine, body)

        task = asyncio.create_task(finish())
        finishing.add(task)
        task.add_done_callback(finishing.discard)
        status = record.status if record is not None else "queued"
        return JSONResponse({"id": job_id, "status": status, "position": engine.queue.position(job_id)},
                            status_code=202, headers={"Location": f"{PREFIX}/{job_id}"})

    @r.post(PREFIX + "/txt2img", status_code=202, response_model=JobSubmitted,
            summary="Queue a txt2img job (A1111's request), answer its id at once")
    async def submit_txt2img(body: models.StableDiffusionTxt2ImgProcessingAPI):
        async def build():
            return convert.to_generation_request(body)

        return await start(body, build, engine.submit_txt2img, img2img=False)

    @r.post(PREFIX + "/img2img", status_code=202, response_model=JobSubmitted,
            summary="Queue an img2img job (A1111's request), answer its id at once")
    async def submit_img2img(body: models.StableDiffusionImg2ImgProcessingAPI):
        async def build():
            limit = engine.options.get("img2img_max_input_pixels")
            init_images, mask = await asyncio.to_thread(convert.decode_images, body, limit, engine.options)
            return convert.to_img2img_request(body, init_images, mask)

        return await start(body, build, engine.submit_img2img, img2img=True)

    @r.get(PREFIX, response_model=JobList, summary="Every job the queue knows, oldest first (no images)")
    def list_jobs(status: Optional[Status] = None):
        records = [rec for rec in engine.queue.jobs.list() if status is None or rec.status == status]
        return {"jobs": [describe(engine, rec, images=False) for rec in records]}

    @r.get(PREFIX + "/{job_id}", response_model=JobInfo, summary="A job's state, position, progress and result")
    def get_job(job_id: str, images: bool = True):
        record = engine.queue.jobs.get(job_id)
        if record is None:
            return _not_found(job_id)
        return describe(engine, record, images=images)

    @r.get(PREFIX + "/{job_id}/preview", summary="The running job's current picture (PNG)",
           responses={200: {"content": {"image/png": {}}, "description": "PNG"}, 404: {"description": "none"}})
    def preview(job_id: str):
        record = engine.queue.jobs.get(job_id)
        if record is None:
            return _not_found(job_id)

        def render(latent):
            model = engine.models.model
            return latent_preview(latent, model.family.preview_factors) if model is not None else None

        image = engine.queue.preview(job_id, render) if record.status == "running" else None
        if image is None:
            return JSONResponse({"detail": f"job {job_id} has no preview ({record.status})"}, status_code=404)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})

    def cancel(job_id: str):
        record = engine.queue.jobs.get(job_id)
        if record is None:
            return _not_found(job_id)
        cancelled = engine.queue.cancel_job(job_id)  # a dropped job's status is already "cancelled"
        return {"id": job_id, "status": record.status, "cancelled": cancelled}

    r.add_api_route(PREFIX + "/{job_id}", cancel, methods=["DELETE"], response_model=CancelAnswer,
                    summary="Cancel a job: drop it from the queue, or interrupt it while it runs")
    r.add_api_route(PREFIX + "/{job_id}/cancel", cancel, methods=["POST"], response_model=CancelAnswer,
                    summary="Cancel a job (as DELETE)", name="cancel_job_post")
    return r


def _not_found(job_id: str) -> JSONResponse:
    return JSONResponse({"detail": f"no job {job_id} (unknown, or its result has expired)"}, status_code=404)


def describe(engine: Engine, record: JobRecord, images: bool = True) -> dict:
    if record.stored is not None:  # an earlier run's job, read back from disk
        return _from_disk(record.stored, images)
    info: dict[str, Any] = {
        "id": record.id, "kind": record.kind, "status": record.status, "created": record.created,
        "started": record.started, "finished": record.finished, "worker": record.worker,
        "attempts": record.attempts, "checkpoint": record.checkpoint,
        "position": engine.queue.position(record.id) if record.status == "queued" else None,
        "progress": 1.0 if record.status == DONE else 0.0,
    }
    if record.status == "running":
        live = engine.queue.live(record.id) or {}
        info.update(progress=live.get("progress", 0.0), eta=live.get("eta"), step=live.get("step"),
                    steps=live.get("steps"), textinfo=live.get("textinfo"))
    if record.error is not None:
        info["error"] = _error(record)
    if record.result is not None:
        info["result"] = _result(engine, record, images)
    return info


def _error(record: JobRecord) -> dict:
    checkpoint_named = bool(record.checkpoint)
    answer = routes_generation.error_answer(record.error, checkpoint_named, record.kind == "img2img", quiet=True)
    content = json.loads(answer.body.decode("utf8"))
    detail = content.get("detail")
    field = None
    if isinstance(detail, list) and detail:
        field = ".".join(str(x) for x in detail[0].get("loc", [])[1:]) or None
        message = detail[0].get("msg", "")
    else:
        message = str(detail or content.get("errors") or record.error)
    return {"field": field, "message": message, "status_code": answer.status_code}


def _result(engine: Engine, record: JobRecord, images: bool) -> dict:
    result = record.result
    paths = [p for p in ([result.grid_path] if result.grid_path else []) + list(result.paths) if p]
    body = record.meta.get("body")
    if body is not None:  # the job API's own job: exactly /sdapi's answer
        answer = routes_generation.answer(engine, body, record.meta.get("unstyled"), result, record.meta["img2img"])
        if not images:
            answer["images"] = []
        return {**answer, "paths": paths}
    # a job from the UI or /sdapi/v1: its pictures and A1111's info
    encoded = [image_io.encode_pil_to_base64(im, "png", im.info.get("parameters")) for im in result.images] \
        if images else []
    info = convert.processed_info(record.request, result, 0, result.job_timestamp)
    return {"images": encoded, "parameters": {}, "info": json.dumps(info), "paths": paths}


def stored(engine: Engine, record: JobRecord, pictures: Path) -> dict:
    """A finished job as written to disk: its answer, the pictures as files instead of base64 (the
    files the job saved when they are its PNG pictures, else copies written to `pictures`)."""
    info = describe(engine, record, images=True)
    result = info.get("result")
    if result is not None:
        encoded = result.pop("images")
        result["files"] = _picture_files(encoded, result.get("paths") or [], pictures)
    return info


def _picture_files(encoded: list[str], paths: list[str], pictures: Path) -> list[str]:
    answered = [base64.b64decode(data.split(",", 1)[-1]) for data in encoded]
    if answered and len(paths) == len(answered) and all(_same_picture(p, data) for p, data in zip(paths, answered)):
        return [str(Path(p).resolve()) for p in paths]
    files = []
    for n, data in enumerate(answered):
        pictures.mkdir(parents=True, exist_ok=True)
        path = pictures / f"{n:05d}.png"
        path.write_bytes(data)
        files.append(str(path.resolve()))
    return files


def _same_picture(path: str, data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as saved, Image.open(io.BytesIO(data)) as answered:
            return saved.format == "PNG" and saved.size == answered.size and saved.mode == answered.mode
    except OSError:
        return False


def _from_disk(data: dict, images: bool) -> dict:
    info = dict(data)
    if info.get("result") is not None:
        result = dict(info["result"])
        files = result.pop("files", [])
        result["images"] = [base64.b64encode(Path(f).read_bytes()).decode("ascii")
                            for f in files if Path(f).is_file()] if images else []
        info["result"] = result
    return info
