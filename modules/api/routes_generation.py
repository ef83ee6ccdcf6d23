"""POST /sdapi/v1/txt2img and /sdapi/v1/img2img: parse, queue on the engine, shape A1111's answer.

Bad input never reaches the worker as a surprise: request values are checked when the core request
is built (and images decoded, off the event loop, with the `img2img_max_input_pixels` limit), and
whatever the worker still refuses comes back as a RequestError naming the field. Either way the
answer is a 4xx JSON naming the field, and the queue goes on with the next job.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from fastapi import APIRouter

from modules.core import image_io
from modules.core.types import GenerationRequest, RequestError
from modules.services.engine import Engine

from . import convert, models, request_fields
from .errors import BadImage, server_error, unprocessable

log = logging.getLogger(__name__)


async def _generate(engine: Engine, body: Any, build: Callable[[], Awaitable[GenerationRequest]],
                    submit: Callable, img2img: bool) -> Any:
    request = unstyled = None
    try:
        # fills what the request left out (a setting the command line locks is not taken from the text)
        request_fields.apply_infotext(body, img2img, engine.options.data, allowed=engine.options.allows,
                                      find_checkpoint=lambda text: _checkpoint_title(engine, text))
        # every override_settings value against its option and the locks, the ones that become
        # request fields (sd_model_checkpoint, CLIP_stop_at_last_layers) included
        engine.check_overrides(body.override_settings)
        unstyled = await build()
        request = engine.apply_styles(unstyled, body.styles)  # A1111: styles expand the prompts first
        task_id = body.force_task_id or request_fields.new_task_id("img2img" if img2img else "txt2img")
        scripts = await asyncio.to_thread(convert.script_call, body, img2img)  # script_name, alwayson_scripts
        future = submit(request, task_id=task_id, overrides=convert.job_overrides(body), scripts=scripts)
        result = await asyncio.wrap_future(future)
    except RequestError as exc:
        status = 400 if isinstance(exc, BadImage) else 422  # images that are not images: 400
        return unprocessable(convert.API_FIELD.get(exc.field, exc.field), exc.message, status)
    except ValueError as exc:  # an unreadable or unsupported checkpoint file
        if request is not None and request.checkpoint:
            return unprocessable(convert.API_FIELD["checkpoint"], str(exc))
        return server_error(exc, "the selected checkpoint cannot be used")
    except Exception as exc:  # not the request's fault: say so, with the reason
        log.exception("%s failed", "img2img" if img2img else "txt2img")
        return server_error(exc, "generation failed")
    await request_fields.keep_overrides(engine, body)  # override_settings_restore_afterwards: false
    images, first = result.images, 0
    # a plain job's grid only when it is saved and shown (A1111: do_not_save_grid = not save_images);
    # a script's own grids (X/Y/Z plot, prompt matrix) always, as A1111 returns processed.images
    if result.grid is not None and (result.grids_from_script or request_fields.grid_wanted(body, engine.options.data)):
        grids = [result.grid, *result.extra_grids]  # a script's further grids (X/Y/Z plot) follow the first
        images, first = [*grids, *images], len(grids)  # A1111: the grids and their infotexts come first
        result.infotexts = [*(g.info.get("parameters") or result.infotexts[0] for g in grids), *result.infotexts]
    send = body.send_images is not False  # null means the default, True
    encoded = [image_io.encode_pil_to_base64(im, "png", im.info.get("parameters")) for im in images] if send else []
    # A1111's info: `prompt` as sent, `all_prompts` and the infotexts with the styles applied
    info = convert.processed_info(unstyled, result, first, result.job_timestamp, styles=body.styles)
    return {"images": encoded, "parameters": convert.parameters_echo(body, img2img), "info": json.dumps(info)}


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
            init_images, mask = await asyncio.to_thread(convert.decode_images, body, limit)
            return convert.to_img2img_request(body, init_images, mask)

        return await _generate(engine, body, build, engine.submit_img2img, img2img=True)
