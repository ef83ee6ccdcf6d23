"""POST /sdapi/v1/extra-single-image, /extra-batch-images and /png-info, in A1111's shapes.

Extras run on the worker queue (job "extras", one job step per image, interrupt stops a batch)
through A1111's postprocessing scripts (modules.scripts.scripts_postproc): A1111's fields are the
"Upscale" (image upscalers of /sdapi/v1/upscalers), "GFPGAN" and "CodeFormer" scripts' arguments
as A1111's run_extras maps them (a missing face model file is a 422 naming the field, the file and
the folder); Easel's `postprocessing_scripts` gives any script's arguments by name (flipped copies,
split oversized images, an extension's step). Results are PNGs carrying the input's `parameters`
and A1111's `postprocessing` text; the single-image route returns the picture, the batch route
every result (copies included, after their picture). Images that are not images are 400, naming
the field. POST /sdapi/v1/interrogate: A1111's caption of a picture by `model` "deepdanbooru" or
"clip" (a BLIP caption, then CLIP's best matches in the category lists; modules.services.interrogator,
a worker job); a missing model file or an unknown model is a 422 naming `model`, an unreadable
image one naming `image`.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter
from PIL import Image

from modules import postprocessing
from modules.core import image_io, postprocess
from modules.core.infotext_defaults import parse_generation_parameters
from modules.core.types import RequestError
from modules.services import extras, interrogator
from modules.services.engine import Engine

from . import models, url_pictures
from .errors import server_error, unprocessable


def _postprocessor(body: Any) -> postprocessing.ScriptsPostprocessor:
    def value(name: str, default: Any) -> Any:
        v = getattr(body, name)
        return default if v is None else v

    fields = postprocessing.extras_args(
        resize_mode=value("resize_mode", 0), upscaling_resize=value("upscaling_resize", 2.0),
        upscaling_resize_w=value("upscaling_resize_w", 512), upscaling_resize_h=value("upscaling_resize_h", 512),
        upscaling_crop=value("upscaling_crop", True), extras_upscaler_1=value("upscaler_1", "None"),
        extras_upscaler_2=value("upscaler_2", "None"),
        extras_upscaler_2_visibility=value("extras_upscaler_2_visibility", 0.0),
        gfpgan_visibility=value("gfpgan_visibility", 0.0), codeformer_visibility=value("codeformer_visibility", 0.0),
        codeformer_weight=value("codeformer_weight", 0.0), max_side_length=value("max_side_length", 0))
    return postprocessing.postprocessor_for(postprocessing.merge_script_args(fields, body.postprocessing_scripts))


async def _extras(engine: Engine, body: Any, sources: list[tuple[str, str, str]]) -> tuple[list, str]:
    """sources: (field name for errors, file name, base64). Returns (encoded images, html_info)."""
    postprocessor = await asyncio.to_thread(_postprocessor, body)
    limit = engine.options.get("img2img_max_input_pixels")

    def decode() -> list[tuple[str, Image.Image]]:
        try:
            return [(name, url_pictures.decode(data, field, engine.options, limit)) for field, name, data in sources]
        except RequestError as exc:
            raise _BadImage(exc) from None

    images = await asyncio.to_thread(decode)
    results = await asyncio.wrap_future(extras.submit(engine, images, postprocessor))
    encoded = await asyncio.to_thread(
        lambda: [base64.b64encode(extras.png_bytes(r)).decode("ascii") for r in results])
    last = results[-1].infotext if results else ""
    return encoded, postprocess.plaintext_to_html(last)


class _BadImage(Exception):
    def __init__(self, error: RequestError):
        super().__init__(str(error))
        self.error = error


async def _answer(work, bad_image_status: int = 400) -> Any:
    try:
        return await work
    except _BadImage as bad:
        return unprocessable(bad.error.field, bad.error.message, bad_image_status)
    except RequestError as exc:
        return unprocessable(exc.field, exc.message)
    except Exception as exc:  # not the request's fault
        return server_error(exc, "extras failed")


def _pasted_callbacks(infotext: str, params: dict) -> None:
    """Extensions' on_infotext_pasted callbacks may add to the parsed parameters (A1111's png-info)."""
    try:
        from modules import script_callbacks
    except ImportError:  # the scripting layer is optional here
        return
    callback = getattr(script_callbacks, "infotext_pasted_callback", None)
    if callback is not None:
        callback(infotext, params)


def add_routes(r: APIRouter, engine: Engine) -> None:
    @r.post("/extra-single-image", response_model=models.ExtrasSingleImageResponse)
    async def extra_single_image(body: models.ExtrasSingleImageRequest):
        async def work():
            if not body.image:
                raise _BadImage(RequestError("image", "needs a base64-encoded image"))
            encoded, html_info = await _extras(engine, body, [("image", "", body.image)])
            return {"image": encoded[0] if encoded else None, "html_info": html_info}

        return await _answer(work())

    @r.post("/extra-batch-images", response_model=models.ExtrasBatchImagesResponse)
    async def extra_batch_images(body: models.ExtrasBatchImagesRequest):
        async def work():
            sources = [(f"imageList.{i}.data", item.name, item.data) for i, item in enumerate(body.imageList)]
            encoded, html_info = await _extras(engine, body, sources)
            return {"images": encoded, "html_info": html_info}

        return await _answer(work())

    @r.post("/interrogate", response_model=models.InterrogateResponse)
    async def interrogate(body: models.InterrogateRequest):
        async def work():
            if not body.image:
                raise _BadImage(RequestError("image", "needs a base64-encoded image"))
            limit = engine.options.get("img2img_max_input_pixels")
            try:
                image = await asyncio.to_thread(url_pictures.decode, body.image, "image", engine.options, limit)
            except RequestError as exc:
                raise _BadImage(exc) from None
            return {"caption": await asyncio.wrap_future(interrogator.submit(engine, image, body.model))}

        return await _answer(work(), bad_image_status=422)

    @r.post("/png-info", response_model=models.PNGInfoResponse)
    async def png_info(body: models.PNGInfoRequest):
        def work() -> dict:
            try:
                data = url_pictures.picture_data(body.image, "image", engine.options)
                image_io.decode_image(data, "image", engine.options.get("img2img_max_input_pixels"))
                infotext, items = image_io.read_info(image_io.base64_to_bytes(data))
            except RequestError as exc:
                raise _BadImage(exc) from None
            except ValueError as exc:
                raise _BadImage(RequestError("image", str(exc))) from None
            infotext = infotext or ""
            params = parse_generation_parameters(infotext)
            _pasted_callbacks(infotext, params)
            return {"info": infotext, "items": items, "parameters": params}

        return await _answer(asyncio.to_thread(work))
