"""img2img's "Script" dropdown (A1111's `#script_list`) and the scripts behind it.

A script here is small: a title, `ui()` that lays out its controls and returns them (in the
order its arguments come), and `make_request(image, fields, *args)` that turns the init image,
the tab's other request fields and those arguments into the job's request. The list is plain
data (`SCRIPTS`), so the extension system can hand `ScriptSelector` other scripts instead.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence

import gradio as gr
from PIL import Image

from modules.core import outpaint
from modules.core.img2img import MASKED_CONTENT
from modules.core.types import Img2ImgRequest

__all__ = ["NONE", "SCRIPTS", "OutpaintingScript", "ScriptSelector", "elem_id"]

NONE = "None"


def elem_id(title: str, item: str) -> str:
    """A1111's id of a script's control (an img2img-only script: no tab name in it)."""
    name = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", title.lower()))
    return f"script_{name}_{item}"


class UiScript(Protocol):
    title: str

    def ui(self) -> list[gr.components.Component]: ...

    def make_request(self, image: Image.Image, fields: dict, *args) -> Img2ImgRequest: ...


class OutpaintingScript:
    """A1111's "Poor man's outpainting": the canvas grows on the chosen sides and the new area
    (plus a blend band) is inpainted (modules.core.outpaint)."""

    title = "Poor man's outpainting"
    # what outpainting decides itself; the tab's values of these are left out
    OWNED = ("width", "height", "resize_mode", "mask_blur", "mask_blur_x", "mask_blur_y", "inpainting_fill",
             "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert")

    def ui(self) -> list[gr.components.Component]:
        pixels = gr.Slider(8, 256, step=8, value=128, label="Pixels to expand", elem_id=elem_id(self.title, "pixels"))
        mask_blur = gr.Slider(0, 64, step=1, value=4, label="Mask blur", elem_id=elem_id(self.title, "mask_blur"))
        fill = gr.Radio(list(MASKED_CONTENT), value=MASKED_CONTENT[0], type="index", label="Masked content",
                        elem_id=elem_id(self.title, "inpainting_fill"))
        direction = gr.CheckboxGroup(list(outpaint.DIRECTIONS), value=list(outpaint.DIRECTIONS),
                                     label="Outpainting direction", elem_id=elem_id(self.title, "direction"))
        return [pixels, mask_blur, fill, direction]

    def make_request(self, image: Image.Image, fields: dict, pixels, mask_blur, fill, direction) -> Img2ImgRequest:
        kept = {k: v for k, v in fields.items() if k not in self.OWNED}
        # sliders give floats; the outpainting checks want whole numbers
        return outpaint.outpaint_request(image, _whole(pixels), direction or [], _whole(mask_blur), _whole(fill),
                                         **kept)


def _whole(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


SCRIPTS: tuple[UiScript, ...] = (OutpaintingScript(),)


class ScriptSelector:
    """The dropdown and, under it, the controls of the chosen script (the others hidden)."""

    def __init__(self, scripts: Sequence[UiScript] = SCRIPTS):
        titles = [s.title for s in scripts]
        if len(set(titles)) != len(titles) or NONE in titles:
            raise ValueError(f"script titles must be unique and not '{NONE}': {titles}")
        self.scripts = list(scripts)
        self.args: dict[str, list[gr.components.Component]] = {}

    def build(self) -> None:
        self.dropdown = gr.Dropdown([NONE, *(s.title for s in self.scripts)], value=NONE, label="Script",
                                    elem_id="script_list")
        groups = {}
        for script in self.scripts:
            with gr.Group(visible=False, elem_classes=["script-controls"]) as group:
                self.args[script.title] = script.ui()
            groups[script.title] = group
        # a dict of updates: right for any number of scripts (a one-element list would be taken
        # as the value of a single output)
        self.dropdown.change(lambda chosen: {g: gr.update(visible=chosen == t) for t, g in groups.items()},
                             inputs=self.dropdown, outputs=list(groups.values()), queue=False,
                             show_progress="hidden")

    def inputs(self) -> set[gr.components.Component]:
        return {self.dropdown, *(c for components in self.args.values() for c in components)}

    def chosen(self, values: dict) -> UiScript | None:
        title = values.get(self.dropdown) or NONE
        if title == NONE:
            return None
        for script in self.scripts:
            if script.title == title:
                return script
        raise ValueError(f"unknown script '{title}'")

    def make_request(self, values: dict, image: Image.Image, fields: dict) -> Img2ImgRequest | None:
        """The chosen script's request, or None when no script is chosen."""
        script = self.chosen(values)
        if script is None:
            return None
        return script.make_request(image, fields, *(values[c] for c in self.args[script.title]))
