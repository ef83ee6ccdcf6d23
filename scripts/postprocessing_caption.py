"""A1111's "Caption" Extras step (order 4000): the picture's caption, written by Extras in a .txt
file next to the saved picture (`postprocessing_existing_caption_action`). Arguments: enable,
option (a list of "Deepbooru", "BLIP"; A1111's default ["Deepbooru"]). "Deepbooru" adds the
DeepBooru tags under the Interrogate options (model file models/torch_deepdanbooru/
model-resnet_custom_v3.pt, modules.services.interrogator); "BLIP" adds the BLIP caption (A1111's
``generate_caption``; model file models/BLIP/model_base_caption_capfilt_large.pth). A missing
model file is refused before the job runs, naming the file and the folder."""

from __future__ import annotations

import gradio as gr

from modules import scripts_postprocessing
from modules.core.types import RequestError
from modules.services import interrogator
from modules.ui_components import InputAccordion

CHOICES = ("Deepbooru", "BLIP")  # A1111's


class ScriptPostprocessingCaption(scripts_postprocessing.ScriptPostprocessing):
    name = "Caption"
    order = 4000

    def ui(self):
        with InputAccordion(False, label="Caption", elem_id="extras_caption") as enable:
            option = gr.CheckboxGroup(list(CHOICES), value=["Deepbooru"], show_label=False,
                                      elem_id="extras_caption_option")
        return {"enable": enable, "option": option}

    def check(self, pp, enable=False, option=None):
        if not enable:
            return
        option = ["Deepbooru"] if option is None else option
        unknown = [o for o in option if o not in CHOICES]
        if unknown or isinstance(option, str):
            raise RequestError("option", f"takes a list of {', '.join(CHOICES)}; got {option!r}")
        if "Deepbooru" in option:
            interrogator.current().check("deepdanbooru", "option")
        if "BLIP" in option:
            interrogator.current().check_blip("option")

    def process(self, pp, enable=False, option=None):
        if not enable:
            return
        option = ["Deepbooru"] if option is None else option
        captions = [pp.caption]
        if "Deepbooru" in option:
            captions.append(interrogator.current().tag(pp.image.convert("RGB")))
        if "BLIP" in option:
            captions.append(interrogator.current().caption(pp.image))
        pp.caption = ", ".join(c for c in captions if c)
