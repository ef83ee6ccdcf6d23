"""A1111's "GFPGAN" Extras step (order 2000, after the upscale): the faces restored by GFPGAN
(a model file in models/GFPGAN, modules.services.face_restorers) and blended in by the visibility.
Arguments: enable, gfpgan_visibility (0: off). Infotext: `GFPGAN visibility`."""

from __future__ import annotations

import gradio as gr

from modules import scripts_postprocessing
from modules.services import extras
from modules.ui_components import InputAccordion



class ScriptPostprocessingGfpGan(scripts_postprocessing.ScriptPostprocessing):
    name = "GFPGAN"
    order = 2000

    def ui(self):
        with InputAccordion(False, label="GFPGAN", elem_id="extras_gfpgan") as enable:
            gfpgan_visibility = gr.Slider(0.0, 1.0, step=0.001, value=1.0, label="Visibility",
                                          elem_id="extras_gfpgan_visibility")
        return {"enable": enable, "gfpgan_visibility": gfpgan_visibility}

    def check(self, pp, enable=True, gfpgan_visibility=0.0):
        extras.check_fraction("gfpgan_visibility", gfpgan_visibility)
        if enable and gfpgan_visibility:
            extras.check_face_restoration("GFPGAN", "gfpgan_visibility")

    def process(self, pp, enable=True, gfpgan_visibility=0.0):
        if not enable or not gfpgan_visibility:
            return
        pp.image = extras.restore(pp.image, "GFPGAN", float(gfpgan_visibility))
        pp.info["GFPGAN visibility"] = round(float(gfpgan_visibility), 3)
