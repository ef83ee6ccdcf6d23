"""sd-webui-controlnet's routes, at the root as the extension mounts them: ``GET /controlnet/version``,
``/controlnet/model_list``, ``/controlnet/module_list``, ``/controlnet/control_types``,
``/controlnet/settings`` and ``POST /controlnet/detect``, with its answer shapes."""

from __future__ import annotations

import asyncio
from typing import List, Optional

import numpy as np
from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse
from PIL import Image

from modules.core import controlnet_preprocessors as preprocessors
from modules.core import image_io
from modules.core.types import RequestError
from modules.services import controlnets
from modules.services.engine import Engine

from . import url_pictures

# the extension's tag -> extra words that pick models (Preprocessor.tag_to_filters)
TAG_FILTERS = {"instructp2p": ["ip2p"], "segmentation": ["seg"], "normalmap": ["normal"],
               "t2i-adapter": ["t2i_adapter", "t2iadapter", "t2ia"], "ip-adapter": ["ip_adapter", "ipadapter"],
               "openpose": ["openpose", "densepose"], "instant-id": ["instant_id", "instantid"],
               "scribble": ["sketch"], "tile": ["blur"]}


def _detail(message: str, status: int = 422) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


def _control_type(tag: str, models: list[str]) -> dict:
    rows = preprocessors.sorted_rows()
    if tag == "All":
        return {"module_list": [p.title for p in rows], "model_list": ["None", *models],
                "default_option": "none", "default_model": "None"}
    filters = {tag.lower(), *TAG_FILTERS.get(tag.lower(), [])}
    chosen = [p for p in rows if tag in p.tags or p.name == "none"]
    wanted = ["None", *[m for m in models if any(f in m.lower() for f in filters)]]
    return {"module_list": [p.title for p in chosen], "model_list": wanted,
            "default_option": (chosen[1] if len(chosen) > 1 else chosen[0]).title,
            "default_model": wanted[1] if len(wanted) > 1 else wanted[0]}


def build_router(engine: Engine) -> APIRouter:
    r = APIRouter(prefix="/controlnet", tags=["ControlNet"])

    @r.get("/version")
    def version():
        return {"version": controlnets.API_VERSION}

    @r.get("/model_list")
    def model_list(update: bool = True):
        return {"model_list": controlnets.get().titles(refresh=update)}

    @r.get("/module_list")
    def module_list(alias_names: bool = False):
        rows = preprocessors.sorted_rows()
        names = [p.title if alias_names else p.name for p in rows]
        detail = {name: {"model_free": p.model_free, "sliders": [s.api_json() for s in p.sliders()]}
                  for name, p in zip(names, rows)}
        return {"module_list": names, "module_detail": detail}

    @r.get("/control_types")
    def control_types():
        models = controlnets.get().titles()
        return {"control_types": {tag: _control_type(tag, models) for tag in preprocessors.tags()}}

    @r.get("/settings")
    def settings():
        value = engine.options.data.get("control_net_unit_count", controlnets.DEFAULT_UNIT_COUNT)
        return {"control_net_unit_count": int(value)}

    @r.post("/detect")
    async def detect(
        controlnet_module: str = Body("none", title="Controlnet Module"),
        controlnet_input_images: List[str] = Body([], title="Controlnet Input Images"),
        controlnet_images: Optional[List[str]] = Body(None, title="Alias of controlnet_input_images (webuiapi)"),
        controlnet_processor_res: float = Body(-1, title="Controlnet Processor Resolution"),
        controlnet_threshold_a: float = Body(-1, title="Controlnet Threshold a"),
        controlnet_threshold_b: float = Body(-1, title="Controlnet Threshold b"),
        controlnet_masks: List[str] = Body([], title="Controlnet Masks"),
        low_vram: bool = Body(False, title="Low vram"),
    ):
        pre = preprocessors.find(controlnet_module)
        if pre is None:
            return _detail("Module not available")
        images = controlnet_input_images or controlnet_images or []
        if not images:
            return _detail("No image selected")
        if pre.requires_mask and len(controlnet_masks) != len(images):
            return _detail(f"Preprocessor {controlnet_module} requires `controlnet_masks` param.")

        def run() -> list[str]:
            out, limit = [], image_io.DEFAULT_MAX_PIXELS
            for i, data in enumerate(images):
                picture = url_pictures.decode(data, f"controlnet_input_images.{i}", engine.options, limit)
                mask = (url_pictures.decode(controlnet_masks[i], f"controlnet_masks.{i}", engine.options, limit)
                        if i < len(controlnet_masks) and pre.accepts_mask else None)
                detected = controlnets.detect(pre.name, picture, mask, resolution=controlnet_processor_res,
                                              threshold_a=controlnet_threshold_a, threshold_b=controlnet_threshold_b)
                shown = Image.fromarray(np.ascontiguousarray(detected[:, :, :3]))
                out.append(image_io.encode_pil_to_base64(shown))
            return out

        try:
            encoded = await asyncio.to_thread(run)
        except RequestError as exc:
            return _detail(f"{exc.field}: {exc.message}")
        return {"images": encoded, "info": "Success"}

    return r
