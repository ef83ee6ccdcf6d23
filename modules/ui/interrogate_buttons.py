"""The img2img tab's "Interrogate CLIP" and "Interrogate DeepBooru" buttons (A1111's element ids
``interrogate`` and ``deepbooru``, in ``img2img_interrogate_container`` beside the prompts): the
caption of the current sub-tab's picture goes into the prompt box. It runs as an "interrogate"
job on the worker (modules.services.interrogator: CLIP is A1111's BLIP caption plus CLIP's matches
in the category lists); a missing model file or a missing picture is a warning toast naming it, and
the prompt is left as it was."""

from __future__ import annotations

import html

import gradio as gr

from modules.core.types import RequestError
from modules.services import interrogator

BUTTONS = (("Interrogate\nCLIP", "interrogate", "clip"), ("Interrogate\nDeepBooru", "deepbooru", "deepdanbooru"))


class InterrogateButtons:
    def __init__(self, engine):
        self.engine = engine
        self.buttons: list[tuple[gr.Button, str]] = []

    def build(self) -> None:
        with gr.Column(scale=1, min_width=120, elem_id="img2img_interrogate_container",
                       elem_classes=["interrogate-col"]):
            for label, elem_id, model in BUTTONS:
                self.buttons.append((gr.Button(label, elem_id=elem_id), model))

    def wire(self, tab) -> None:
        """``tab``: the img2img tab (its ``mode``, ``pictures`` and ``prompt``)."""
        for button, model in self.buttons:
            button.click(lambda values, m=model: self.caption(tab, m, values), inputs=tab.inputs(),
                         outputs=tab.prompt, concurrency_limit=None)

    def caption(self, tab, model: str, values: dict):
        """The new prompt, or (with a warning) the prompt unchanged."""
        from .img2img import BATCH  # the tab imports this module

        try:
            if values[tab.mode] == BATCH:
                raise RequestError("init_images", "Interrogate takes the picture of the img2img, Sketch or "
                                   "Inpaint tabs, not a batch folder")
            image, _mask = tab.pictures(values, values[tab.mode])
            return interrogator.submit(self.engine, image.convert("RGB"), model).result()
        except RequestError as error:
            gr.Warning(html.escape(error.message), title="Interrogate")
        except Exception as error:  # noqa: BLE001 - never a traceback on the page
            gr.Warning(html.escape(f"interrogation failed: {error}"), title="Interrogate")
        return gr.skip()
