"""POST /sdapi/v1/txt2img and /sdapi/v1/img2img: parse, queue on the engine, shape A1111's answer.

Bad input never reaches the worker as a surprise: request values are checked when the core request
is built (and images decoded, off the event loop, with the `img2img_max_input_pixels` limit), and
whatever the worker still refuses comes back as a RequestError naming the field. Either way the
answer is a 4xx JSON naming the field, and the queue goes on with the next job.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from concurrent.futures import Future
from typing import Any, Awaitable, Callable

from fastapi import APIRouter

from modules.core import image_io
from modules.core.types import GenerationRequest, RequestError
from modules.services.engine import Engine

from . import convert, models, request_fields, url_pictures
from .errors import BadImage, server_error, unprocessable

log = logging.getLogger(__name__)


async def submit(engine: Engine, body: Any, build: Callable[[], Awaitable[GenerationRequest]],
                 submit_job: Callable, img2img: bool) -> tuple[Future, GenerationRequest, str]:
    """Check and queue the body's job: (its future, the request before styles, its task id). Bad
    input raises here (RequestError naming the field, ValueError for an unusable checkpoint)."""
    # fills what the request left out (a setting the command line locks is not taken from the text)
    request_fields.apply_infotext(body, img2img, engine.options.data, allowed=engine.options.allows,
                                  find_checkpoint=lambda text: _checkpoint_title(engine, text),
                                  extract_styles=engine.styles.extract if engine.styles is not None else None)
    # every override_settings value against its option and the locks, the ones that become
    # request fields (sd_model_checkpoint, CLIP_stop_at_last_layers) included
    engine.check_overrides(body.override_settings)
    unstyled = await build()
    request = engine.apply_styles(unstyled, body.styles)  # A1111: styles expand the prompts first
    task_id = body.force_task_id or request_fields.new_task_id("img2img" if img2img else "txt2img")
    # ControlNet units' pictures given as URLs are fetched here, as the top-level pictures are
    alwayson = await asyncio.to_thread(url_pictures.script_pictures, body.alwayson_scripts, engine.options)
    scripts = await asyncio.to_thread(convert.script_call, body, img2img, alwayson)  # script_name, alwayson_scripts
    future = submit_job(request, task_id=task_id, overrides=convert.job_overrides(body), scripts=scripts)
    return future, unstyled, task_id


def error_answer(exc: BaseException, checkpoint_named: bool, img2img: bool, quiet: bool = False):
    """The JSON answer for a job that was refused or failed: 4xx naming the field when it is the
    request's fault, else 500 with the reason."""
    if isinstance(exc, RequestError):
        status = 400 if isinstance(exc, BadImage) else 422  # images that are not images: 400
        return unprocessable(convert.API_FIELD.get(exc.field, exc.field), exc.message, status)
    if isinstance(exc, ValueError):  # an unreadable or unsupported checkpoint file
        if checkpoint_named:
            return unprocessable(convert.API_FIELD["checkpoint"], str(exc))
        return server_error(exc, "the selected checkpoint cannot be used")
    # not the request's fault: say so, with the reason
    if not quiet:
        log.error("%s failed", "img2img" if img2img else "txt2img", exc_info=exc)
    return server_error(exc, "generation failed")


def answer(engine: Engine, body: Any, unstyled: GenerationRequest | None, result, img2img: bool) -> dict:
    """A1111's answer for a finished job: images (base64 PNG, grids first), parameters, info."""
    images, first = result.images, 0
    # a plain job's grid only when it is saved and shown (A1111: do_not_save_grid = not save_images);
    # a script's own grids (X/Y/Z plot, prompt matrix) always, as A1111 returns processed.images
    infotexts = list(result.infotexts)
    if result.grid is not None and (result.grids_from_script or request_fields.grid_wanted(body, engine.options.data)):
        grids = [result.grid, *result.extra_grids]  # a script's further grids (X/Y/Z plot) follow the first
        images, first = [*grids, *images], len(grids)  # A1111: the grids and their infotexts come first
        infotexts = [*(g.info.get("parameters") or infotexts[0] for g in grids), *infotexts]
    send = body.send_images is not False  # null means the default, True
    encoded = [image_io.encode_pil_to_base64(im, "png", im.info.get("parameters")) for im in images] if send else []
    # A1111's info: `prompt` as sent, `all_prompts` and the infotexts with the styles applied
    shown = copy.copy(result)
    shown.infotexts = infotexts
    info = convert.processed_info(unstyled, shown, first, result.job_timestamp, styles=body.styles)
    return {"images": encoded, "parameters": convert.parameters_echo(body, img2img), "info": json.dumps(info)}


async def _generate(engine: Engine, body: Any, build: Callable[[], Awaitable[GenerationRequest]],
                    submit_job: Callable, img2img: bool) -> Any:
    request = None
    try:
        future, request, _ = await submit(engine, body, build, submit_job, img2img)
        result = await asyncio.wrap_future(future)
    except Exception as exc:
        return error_answer(exc, request is not None and bool(request.checkpoint), img2img)
    await request_fields.keep_overrides(engine, body)  # override_settings_restore_afterwards: false
    return answer(engine, body, request, result, img2img)


def _checkpoint_title(engine: Engine, text: str) -> str | None:
    info = engine.checkpoints.find(text)
    return info.title if info is not None else None


def add_routes(r: APIRouter, engine: Engine) -> None:
    @r.post("/txt2img", response_model=models.TextToImageResponse)
    async def txt2img(body: models.StableDiffusionTxt2ImgProcessingAPI):
        async def build() -> GenerationRequest:
            return convert.to_generation_request(body)

        return await _generate(engine, body, build, engine.submit_txt2img, img2img=False)

    @r.post("/img2img", response_model=models.ImageToImageResponse)
    async def img2img(body: models.StableDiffusionImg2ImgProcessingAPI):
        async def build() -> GenerationRequest:
            limit = engine.options.get("img2img_max_input_pixels")
            init_images, mask = await asyncio.to_thread(convert.decode_images, body, limit, engine.options)
            return convert.to_img2img_request(body, init_images, mask)

        return await _generate(engine, body, build, engine.submit_img2img, img2img=True)
