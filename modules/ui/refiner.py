"""A1111's "Refiner" accordion (its built-in Refiner script), on both generation tabs: another
checkpoint takes over part way through sampling (modules.core.pipeline, the SDXL refiner).

Element ids are A1111's: `<tab>_enable` (the accordion; open means on), `<tab>_checkpoint` and its
🔄 `<tab>_checkpoint_refresh`, `<tab>_switch_at`. The request gets `refiner_checkpoint` and
`refiner_switch_at` only while the accordion is open and a checkpoint is chosen, as A1111's
script's setup() does. Pasting an infotext opens it exactly when the text has a "Refiner" key.
"""

from __future__ import annotations

import gradio as gr

from modules.ui_components import ToolButton

NO_REFINER = ("", "None", "none")  # A1111's spellings of "no refiner"
SWITCH_AT_DEFAULT = 0.8  # A1111's UI default (its API's is None: at once)
# tooltips by element id without the tab's prefix (A1111's texts; modules.ui.app shows them)
HINTS = {
    "checkpoint": "switch to another model in the middle of generation",
    "checkpoint_refresh": "Refresh the list of checkpoints",
    "switch_at": "fraction of sampling steps when the switch to refiner model should happen; "
                 "1=never, 0.5=switch in the middle of generation",
}


class RefinerControls:
    def __init__(self, engine, tabname: str):
        self.engine = engine
        self.tabname = tabname
        self.enable = None  # built by build()

    def _id(self, name: str) -> str:
        return f"{self.tabname}_{name}"

    def choices(self) -> list[str]:
        return ["", *self.engine.checkpoints.titles()]

    def build(self) -> None:
        # A1111's InputAccordion, made as the Hires. fix one is: open means on, mirrored in a hidden
        # checkbox (`<tab>_enable-checkbox`, as A1111's) because a layout block cannot be an input
        self.enable = gr.Checkbox(value=False, visible=False, elem_id=self._id("enable-checkbox"))
        with gr.Accordion("Refiner", open=False, elem_id=self._id("enable"),
                          elem_classes=["input-accordion"]) as self.accordion:
            with gr.Row():
                self.checkpoint = gr.Dropdown(
                    self.choices(), value="", label="Checkpoint", elem_id=self._id("checkpoint"))
                self.refresh = ToolButton(value="\U0001f504", elem_id=self._id("checkpoint_refresh"))
                self.switch_at = gr.Slider(
                    0.01, 1.0, step=0.01, value=SWITCH_AT_DEFAULT, label="Switch at", elem_id=self._id("switch_at"))

    def wire(self) -> None:
        def refresh():
            self.engine.checkpoints.refresh()
            return gr.update(choices=self.choices())

        # open = on, in the browser (no round trip a quick Generate could overtake)
        self.accordion.expand(None, js="() => true", outputs=self.enable, queue=False)
        self.accordion.collapse(None, js="() => false", outputs=self.enable, queue=False)
        # like the main checkpoint picker's 🔄, and the list as it is now when it opens (the
        # choices only: a value sent back could undo a pick made while the answer was on its way)
        self.refresh.click(refresh, outputs=self.checkpoint, queue=False)
        self.checkpoint.focus(lambda: gr.update(choices=self.choices()), outputs=self.checkpoint, queue=False)

    def components(self) -> set:
        return set() if self.enable is None else {self.enable, self.checkpoint, self.switch_at}

    def request_fields(self, values: dict) -> dict:
        """The request's refiner fields from the event's values (none while off or without a checkpoint)."""
        if self.enable is None or not values.get(self.enable):
            return {}
        name = values.get(self.checkpoint)
        if name is None or str(name).strip() in NO_REFINER:
            return {}
        switch_at = values.get(self.switch_at)
        return {"refiner_checkpoint": name,
                "refiner_switch_at": float(switch_at) if switch_at is not None else SWITCH_AT_DEFAULT}

    def paste_fields(self) -> list:
        """A1111's: on when the text has "Refiner", the checkpoint looked up, "Refiner switch at"."""
        if self.enable is None:
            return []

        def checkpoint(params: dict):
            text = params.get("Refiner")
            if not text:
                return None
            info = self.engine.checkpoints.find(str(text))
            if info is None:
                return None
            # the list again: a checkpoint's title gains its hash once it has been loaded
            return gr.update(choices=self.choices(), value=info.title)

        def on(params: dict) -> bool:
            return "Refiner" in params

        return [(self.accordion, on), (self.enable, on), (self.checkpoint, checkpoint),
                (self.switch_at, "Refiner switch at")]
