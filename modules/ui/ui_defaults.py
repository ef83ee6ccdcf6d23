"""Settings → Defaults (A1111's ui_loadsave.create_ui): the page's controls as they are now become
the defaults of the ui-config file (--ui-config-file, modules/ui/ui_config.py).

"View changes" (`ui_defaults_view`) shows a table (in `ui_defaults_review`) of every control
whose value in the browser differs from its "<tab>/<label>/value" key in the file: the key, the
file's value, the page's value. "Apply" (`ui_defaults_apply`) writes those values into the file;
they take effect at the next start. The values come from the browser: the controls that have keys
are the buttons' inputs, sent as the page holds them (unprocessed, so a radio or dropdown sends its
choice, not an index, and nothing the component would refuse stops the table).
"""

from __future__ import annotations

import html
from typing import Any, Iterator

import gradio as gr

from . import ui_config
from .generation_tab import error_html


class UiDefaults:
    def __init__(self):
        self.path: str | None = None  # ui_config.apply names it
        self.keys: list[str] = []
        self.components: list[gr.components.Component] = []

    def build(self) -> None:
        """The tab's content (in Settings' "Defaults" tab, `settings_tab_defaults`)."""
        self.intro = gr.HTML(self._intro(), elem_id="ui_defaults_intro")
        with gr.Row():
            self.view_button = gr.Button("View changes", elem_id="ui_defaults_view", variant="secondary")
            self.apply_button = gr.Button("Apply", elem_id="ui_defaults_apply", variant="primary")
        self.review = gr.HTML("", elem_id="ui_defaults_review")

    def wire(self, demo: gr.Blocks) -> None:
        """Once the whole page is built, inside its Blocks: the controls that have a value key are the
        buttons' inputs (a key's first control where a label repeats in a tab, as in A1111)."""
        keyed: dict[str, gr.components.Component] = {}
        for path, block in ui_config.components(demo):
            if "value" in ui_config.fields(block):
                keyed.setdefault(f"{path}/value", block)
        self.keys, self.components = list(keyed), list(keyed.values())
        for button, action in ((self.view_button, self.view_changes), (self.apply_button, self.apply_changes)):
            button.click(action, inputs=self.components, outputs=self.review, preprocess=False, queue=False)
        demo.ui_defaults = self  # for ui_config.apply

    def set_path(self, path: str | None) -> None:
        self.path = path
        self.intro.value = self._intro()

    def _intro(self) -> str:
        target = f"<code>{html.escape(self.path)}</code>" if self.path else "the ui-config file (--ui-config-file)"
        return ("<p>Change controls on the other tabs to the values you want them to start with, press "
                "<b>View changes</b> to see which defaults change, then <b>Apply</b> to write them to "
                f"{target}. The new defaults take effect when Easel is started again.</p>")

    def _saved(self) -> dict:
        if not self.path:
            raise ValueError("no ui-config file is in use")
        try:
            return ui_config.read(self.path)
        except (OSError, ValueError) as error:
            raise ValueError(f"{self.path} cannot be read: {error}") from None

    def changes(self, saved: dict, values) -> Iterator[tuple[str, Any, Any]]:
        """(key, value in the file, value in the page) of each control that differs from the file."""
        for key, new in zip(self.keys, values):
            old = saved.get(key)
            if new == old or (old is None and new in ("", [], None)):
                continue
            yield key, old, new

    def view_changes(self, *values) -> str:
        try:
            changed = list(self.changes(self._saved(), values))
        except ValueError as error:
            return error_html(str(error))
        rows = [f"<tr><td>{_cell(key)}</td><td>{_cell(old)}</td><td>{_cell(new)}</td></tr>"
                for key, old, new in changed] or ["<tr><td colspan='3'>No changes</td></tr>"]
        return ("<table class='ui-defaults-changes'><thead><tr><th>Path</th><th>Old value</th><th>New value</th>"
                f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def apply_changes(self, *values) -> str:
        try:
            saved = self._saved()
        except ValueError as error:
            return error_html(str(error))
        changed = list(self.changes(saved, values))
        if not changed:
            return "<p>No changes.</p>"
        saved.update((key, new) for key, _, new in changed)
        try:
            ui_config.write(self.path, saved)
        except OSError as error:
            return error_html(f"{self.path} not written: {error}")
        return f"<p>Wrote {len(changed)} changes to {html.escape(self.path)}; they take effect at the next start.</p>"


def _cell(value) -> str:
    if value is None:
        return "<span class='ui-defaults-none'>None</span>"
    return html.escape(str(value))
