"""The styles controls under Generate (A1111's ids): the styles dropdown (several at once), 📋
apply the selected styles to the prompt boxes, 🔄 re-read the styles files, and a name box with
💾 that saves the current prompts as a style.

The styles chosen in the dropdown are applied when a job is made (`apply`), through the same
services function as the API's `styles` field, so the infotext holds the expanded prompts.
"""

from __future__ import annotations

import html

import gradio as gr

from modules.core.types import RequestError
from modules.services.engine import Engine

HINTS = {
    "styles": "Styles: their text is added to the prompts when you generate",
    "style_apply": "Apply all selected styles to prompts",
    "style_refresh": "Read the styles files again",
    "style_create": "Save the current prompts as a style under this name",
}


class StylesControls:
    def __init__(self, engine: Engine, tabname: str):
        self.engine = engine
        self.tabname = tabname

    def _id(self, name: str) -> str:
        return f"{self.tabname}_{name}"

    def names(self) -> list[str]:
        return self.engine.styles.names() if self.engine.styles is not None else []

    # -- layout ----------------------------------------------------------------------
    def build_buttons(self) -> None:
        """📋 and 🔄; called in the tab's row of tool buttons under Generate."""
        self.apply_button = gr.Button("📋", elem_id=self._id("style_apply"), elem_classes=["tool"],
                                      min_width=40, scale=0)
        self.refresh_button = gr.Button("🔄", elem_id=self._id("style_refresh"), elem_classes=["tool"],
                                        min_width=40, scale=0)

    def build(self) -> None:
        """The dropdown and the save row; called in the actions column, under the tool buttons."""
        self.dropdown = gr.Dropdown(self.names(), value=[], multiselect=True, label="Styles",
                                    elem_id=self._id("styles"), elem_classes=["styles"])
        with gr.Row(elem_id=self._id("style_save_row"), elem_classes=["styles-row"]):
            self.name = gr.Textbox(show_label=False, label="Style name", placeholder="New style name",
                                   elem_id=self._id("style_name"), scale=4, min_width=60, max_lines=1)
            self.save_button = gr.Button("💾", elem_id=self._id("style_create"), elem_classes=["tool"],
                                         min_width=40, scale=0)

    # -- events ----------------------------------------------------------------------
    def wire(self, prompt: gr.Textbox, negative: gr.Textbox) -> None:
        # queued where a message may come: a toast only reaches the page through the queue's stream
        self.apply_button.click(self.apply_to_prompts, inputs=[prompt, negative, self.dropdown],
                                outputs=[prompt, negative, self.dropdown], concurrency_limit=None,
                                show_progress="hidden")
        self.refresh_button.click(self.refresh, inputs=self.dropdown, outputs=self.dropdown, queue=False)
        # the other tab may have saved one since this list was drawn
        self.dropdown.focus(self.current, inputs=self.dropdown, outputs=self.dropdown, queue=False)
        self.save_button.click(self.save, inputs=[self.name, prompt, negative, self.dropdown],
                               outputs=[self.name, self.dropdown], concurrency_limit=None, show_progress="hidden")

    def choices(self, selected: list[str] | None = None):
        names = self.names()
        return gr.update(choices=names, value=[s for s in (selected or []) if s in names])

    def refresh(self, selected: list[str] | None = None):
        if self.engine.styles is not None:
            self.engine.styles.reload()
        return self.choices(selected)

    def current(self, selected: list[str] | None = None):
        """The choices as they are now: saved from any page, or the files edited since."""
        if self.engine.styles is not None:
            self.engine.styles.reload_if_changed()
        return self.choices(selected)

    def apply_to_prompts(self, prompt: str, negative: str, selected: list[str]):
        """📋: the selected styles' text goes into the prompt boxes and the selection is cleared
        (so they are not applied twice)."""
        if not selected:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            prompt, negative = self._database().apply(prompt or "", negative or "", selected)
        except RequestError as exc:
            gr.Warning(html.escape(exc.message), title="Styles")
            return gr.skip(), gr.skip(), self.choices(selected)
        return prompt, negative, gr.update(value=[])

    def save(self, name: str, prompt: str, negative: str, selected: list[str]):
        try:
            style = self._database().save_style(name, prompt or "", negative or "")
        except RequestError as exc:
            gr.Warning(html.escape(exc.message), title="Styles")
            return gr.skip(), gr.skip()
        except OSError as exc:
            gr.Warning(html.escape(f"Could not save the style: {exc}"), title="Styles")
            return gr.skip(), gr.skip()
        gr.Info(html.escape(f"Saved style '{style.name}' to {style.path}"), title="Styles")
        return "", self.choices(selected)

    def _database(self):
        if self.engine.styles is None:
            raise RequestError("styles", "no styles are available")
        return self.engine.styles

    # -- requests --------------------------------------------------------------------
    def apply(self, values: dict, fields: dict) -> dict:
        """Request keyword arguments with the selected styles applied to their prompts."""
        names = values.get(self.dropdown) or []
        return self._database().apply_to_fields(fields, names) if names else fields
