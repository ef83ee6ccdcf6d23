"""A1111's "Create flipped copies" Extras step (order 4030): mirrored copies of the picture as extra
results (saved and returned after it). Arguments: enable, option (any of "Horizontal", "Vertical",
"Both")."""

from __future__ import annotations

import gradio as gr
from PIL import Image, ImageOps

from modules import scripts_postprocessing
from modules.core.types import RequestError
from modules.ui_components import InputAccordion

CHOICES = ("Horizontal", "Vertical", "Both")


class ScriptPostprocessingCreateFlippedCopies(scripts_postprocessing.ScriptPostprocessing):
    name = "Create flipped copies"
    order = 4030

    def ui(self):
        with InputAccordion(False, label="Create flipped copies", elem_id="extras_flipped_copies") as enable:
            with gr.Row():
                option = gr.CheckboxGroup(list(CHOICES), value=["Horizontal"], show_label=False,
                                          elem_id="extras_flipped_copies_option")
        return {"enable": enable, "option": option}

    def check(self, pp, enable=False, option=None):
        if not enable:
            return
        unknown = [o for o in (option or []) if o not in CHOICES]
        if unknown or isinstance(option, str):
            raise RequestError("option", f"takes a list of {', '.join(CHOICES)}; got {option!r}")

    def process(self, pp, enable=False, option=None):
        if not enable:
            return
        option = option or []
        if "Horizontal" in option:
            pp.extra_images.append(ImageOps.mirror(pp.image))
        if "Vertical" in option:
            pp.extra_images.append(pp.image.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
        if "Both" in option:
            pp.extra_images.append(pp.image.transpose(Image.Transpose.ROTATE_180))
