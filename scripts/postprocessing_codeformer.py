"""A1111's "CodeFormer" Extras step (order 3000, after GFPGAN): the faces restored by CodeFormer
(a model file in models/Codeformer, modules.services.face_restorers) with its weight (0 = the most
restoration, 1 = closest to the input) and blended in by the visibility. Arguments: enable,
codeformer_visibility (0: off), codeformer_weight. Infotext: `CodeFormer visibility`,
`CodeFormer weight`."""

from __future__ import annotations

import gradio as gr

from modules import scripts_postprocessing
from modules.services import extras
from modules.ui_components import InputAccordion



class ScriptPostprocessingCodeFormer(scripts_postprocessing.ScriptPostprocessing):
    name = "CodeFormer"
    order = 3000

    def ui(self):
        with InputAccordion(False, label="CodeFormer", elem_id="extras_codeformer") as enable:
            with gr.Row():
                codeformer_visibility = gr.Slider(0.0, 1.0, step=0.001, value=1.0, label="Visibility",
                                                  elem_id="extras_codeformer_visibility")
                codeformer_weight = gr.Slider(0.0, 1.0, step=0.001, value=0.0,
                                              label="Weight (0 = maximum effect, 1 = minimum effect)",
                                              elem_id="extras_codeformer_weight")
        return {"enable": enable, "codeformer_visibility": codeformer_visibility, "codeformer_weight": codeformer_weight}

    def check(self, pp, enable=True, codeformer_visibility=0.0, codeformer_weight=0.0):
        extras.check_fraction("codeformer_visibility", codeformer_visibility)
        extras.check_fraction("codeformer_weight", codeformer_weight)
        if enable and codeformer_visibility:
            extras.check_face_restoration("CodeFormer", "codeformer_visibility")

    def process(self, pp, enable=True, codeformer_visibility=0.0, codeformer_weight=0.0):
        if not enable or not codeformer_visibility:
            return
        weight = float(codeformer_weight or 0.0)
        pp.image = extras.restore(pp.image, "CodeFormer", float(codeformer_visibility), weight)
        pp.info["CodeFormer visibility"] = round(float(codeformer_visibility), 3)
        pp.info["CodeFormer weight"] = round(weight, 3)
