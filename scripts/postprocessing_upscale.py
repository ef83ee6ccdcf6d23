"""A1111's "Upscale" Extras step (order 1000) and "Simple Upscale" (txt2img/img2img only, left out of
Extras as in A1111), over Easel's image upscalers (modules.core.postprocess).

Arguments (A1111's names, from ui()): upscale_enabled, upscale_mode (0: scale by, 1: scale to),
upscale_by, max_side_length (scale by: the longer side is held to it; 0: no limit), upscale_to_width,
upscale_to_height, upscale_crop, upscaler_1_name, upscaler_2_name, upscaler_2_visibility. The
first pass sets `pp.shared.target_width/height` (what "Split oversized images" splits to). The last
`upscaling_max_images_in_cache` results are kept, so changing a later step (face restoration) does
not upscale again; a new source picture in the tab empties the cache.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict

import gradio as gr

from modules import scripts_postprocessing, shared
from modules.core import postprocess
from modules.core.types import RequestError
from modules.ui_components import InputAccordion

upscale_cache: OrderedDict = OrderedDict()


def limit_size_by_one_dimention(w, h, limit):
    """(w, h) scaled down so the longer side is `limit` (A1111's name, typo included)."""
    if h > w and h > limit:
        return int(limit * w // h), int(limit)
    if w > limit:
        return int(limit), int(limit * h // w)
    return int(w), int(h)


def _number(value, default):
    return default if value is None else value


def _settings(upscale_mode=0, upscale_by=2.0, upscale_to_width=512, upscale_to_height=512, upscale_crop=True,
              upscaler_1_name="None", upscaler_2_name="None", upscaler_2_visibility=0.0) -> postprocess.UpscaleSettings:
    return postprocess.UpscaleSettings(
        mode=int(_number(upscale_mode, 0)), upscale_by=float(_number(upscale_by, 2.0)),
        width=int(_number(upscale_to_width, 512)), height=int(_number(upscale_to_height, 512)),
        crop=bool(_number(upscale_crop, True)), upscaler_1=upscaler_1_name or "None",
        upscaler_2=upscaler_2_name or "None", upscaler_2_visibility=float(_number(upscaler_2_visibility, 0.0)))


def _limited(size, s: postprocess.UpscaleSettings, max_side_length) -> postprocess.UpscaleSettings | None:
    """Scale by with a longest side: the same as scale to the limited size without crop (A1111)."""
    limit = int(_number(max_side_length, 0) or 0)
    if s.mode != 0 or limit <= 0 or max(size) * s.upscale_by <= limit:
        return None
    w, h = limit_size_by_one_dimention(size[0] * s.upscale_by, size[1] * s.upscale_by, limit)
    return postprocess.UpscaleSettings(mode=1, width=max(w, 1), height=max(h, 1), crop=False, upscaler_1=s.upscaler_1,
                                       upscaler_2=s.upscaler_2, upscaler_2_visibility=s.upscaler_2_visibility)


def _max_pixels() -> int:
    return int((getattr(shared.opts, "img_max_size_mp", None) or 200) * 1_000_000)


def upscale(image, s: postprocess.UpscaleSettings, max_side_length=0):
    """(picture, info) of the upscale, from the cache when the same picture was upscaled the same way."""
    limited = _limited(image.size, s, max_side_length)
    key = (hashlib.sha1(image.tobytes()).hexdigest(), image.size, image.mode, s, limited)
    if key in upscale_cache:
        upscale_cache.move_to_end(key)
        cached, info = upscale_cache[key]
        return cached.copy(), dict(info)
    result, info = postprocess.upscale(image, limited or s)
    if limited is not None:  # A1111 records the asked scale and the limit, not the size it came to
        info.pop("Postprocess upscale to", None)
        info = {"Postprocess upscale by": s.upscale_by, "Max side length": int(max_side_length), **info}
    size = int(getattr(shared.opts, "upscaling_max_images_in_cache", 5) or 0)
    if size > 0:
        upscale_cache[key] = (result.copy(), dict(info))
        while len(upscale_cache) > size:
            upscale_cache.popitem(last=False)
    return result, info


def scale_for_upscaler(name: str):
    """Upscaler 1 chosen: with A1111's set_scale_by_when_changing_upscaler, "Resize" takes the
    scale its name says ("4x-Tiny", "DAT x2"); otherwise, or without one, it stays."""
    if not getattr(shared.opts, "set_scale_by_when_changing_upscaler", False):
        return gr.update()
    found = re.search(r"(\d)[xX]|[xX](\d)", name or "")
    return gr.update(value=int(found.group(1) or found.group(2))) if found else gr.update()


class ScriptPostprocessingUpscale(scripts_postprocessing.ScriptPostprocessing):
    name = "Upscale"
    order = 1000

    def ui(self):
        names = postprocess.image_upscaler_names()
        selected_tab = gr.Number(value=0, visible=False, elem_id="extras_upscale_mode")
        with InputAccordion(True, label="Upscale", elem_id="extras_upscale") as upscale_enabled:
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as tab_scale_by:
                    with gr.Row():
                        upscaling_resize = gr.Slider(1.0, 8.0, step=0.05, value=2.0, label="Resize", scale=4,
                                                     elem_id="extras_upscaling_resize")
                        max_side_length = gr.Number(label="Max side length", value=0, precision=0, minimum=0, step=8,
                                                    scale=1, min_width=160, elem_id="extras_upscale_max_side_length",
                                                    info="0 = no limit; else the longer side is at most this")
                with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as tab_scale_to:
                    with gr.Row():
                        upscaling_resize_w = gr.Slider(64, 8192, step=8, value=512, label="Width",
                                                       elem_id="extras_upscaling_resize_w")
                        upscaling_resize_h = gr.Slider(64, 8192, step=8, value=512, label="Height",
                                                       elem_id="extras_upscaling_resize_h")
                        upscaling_crop = gr.Checkbox(value=True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                upscaler_1 = gr.Dropdown(names, value=names[0], label="Upscaler 1", elem_id="extras_upscaler_1")
                upscaler_2 = gr.Dropdown(names, value=names[0], label="Upscaler 2", elem_id="extras_upscaler_2")
                upscaler_2_visibility = gr.Slider(0.0, 1.0, step=0.001, value=0.0, label="Upscaler 2 visibility",
                                                  elem_id="extras_upscaler_2_visibility")
        tab_scale_by.select(lambda: 0, outputs=selected_tab, queue=False)
        tab_scale_to.select(lambda: 1, outputs=selected_tab, queue=False)
        upscaler_1.change(scale_for_upscaler, inputs=upscaler_1, outputs=upscaling_resize, queue=False,
                          show_progress="hidden")
        return {
            "upscale_enabled": upscale_enabled,
            "upscale_mode": selected_tab,
            "upscale_by": upscaling_resize,
            "max_side_length": max_side_length,
            "upscale_to_width": upscaling_resize_w,
            "upscale_to_height": upscaling_resize_h,
            "upscale_crop": upscaling_crop,
            "upscaler_1_name": upscaler_1,
            "upscaler_2_name": upscaler_2,
            "upscaler_2_visibility": upscaler_2_visibility,
        }

    def check(self, pp, upscale_enabled=True, max_side_length=0, **args):
        if upscale_enabled is False:
            return
        if max_side_length is not None and max_side_length < 0:
            raise RequestError("max_side_length", f"must be 0 (no limit) or more, got {max_side_length}")
        s = _settings(**args)
        s.check(_max_pixels(), None)
        limited = _limited(pp.image.size, s, max_side_length)
        (limited or s).check(_max_pixels(), pp.image.size)

    def process_firstpass(self, pp, upscale_enabled=True, max_side_length=0, **args):
        if upscale_enabled is False:
            return
        s = _settings(**args)
        if s.mode == 1:
            pp.shared.target_width, pp.shared.target_height = s.width, s.height
            return
        w, h = int(pp.image.width * s.upscale_by), int(pp.image.height * s.upscale_by)
        if max_side_length:
            w, h = limit_size_by_one_dimention(w, h, int(max_side_length))
        pp.shared.target_width, pp.shared.target_height = w, h

    def process(self, pp, upscale_enabled=True, max_side_length=0, **args):
        if upscale_enabled is False:
            return
        s = _settings(**args)
        if s.upscaler_1 == "None":
            return
        pp.image, info = upscale(pp.image, s, max_side_length)
        pp.info.update(info)
        if getattr(shared.opts, "use_upscaler_name_as_suffix", False):  # A1111: the file name's "-<upscaler>"
            pp.nametags.append(s.upscaler_1)
            if "Postprocess upscaler 2" in info:
                pp.nametags.append(f"{s.upscaler_2} {s.upscaler_2_visibility}")

    def image_changed(self):
        upscale_cache.clear()


class ScriptPostprocessingUpscaleSimple(ScriptPostprocessingUpscale):
    """One upscaler, scale by (A1111 offers it in txt2img/img2img; Extras leaves it out)."""

    name = "Simple Upscale"
    order = 900

    def ui(self):
        names = postprocess.image_upscaler_names()
        with gr.Row():
            upscaler_name = gr.Dropdown(names, value=names[0], label="Upscaler")
            upscale_by = gr.Slider(0.05, 8.0, step=0.05, value=2.0, label="Upscale by")
        return {"upscale_by": upscale_by, "upscaler_name": upscaler_name}

    def check(self, pp, upscale_by=2.0, upscaler_name=None):
        _settings(upscale_by=upscale_by, upscaler_1_name=upscaler_name).check(_max_pixels(), pp.image.size)

    def process_firstpass(self, pp, **args):
        pass

    def process(self, pp, upscale_by=2.0, upscaler_name=None):
        if not upscaler_name or upscaler_name == "None":
            return
        pp.image, info = upscale(pp.image, _settings(upscale_by=upscale_by, upscaler_1_name=upscaler_name))
        pp.info.update(info)
