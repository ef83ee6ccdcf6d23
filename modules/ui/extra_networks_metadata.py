"""The ✏️ editor of an extra network card's user metadata (A1111's UserMetadataEditor and, for a
Lora, its LoraUserMetadataEditor): Description and Notes, for a Lora also the Stable Diffusion
version, Activation text, Preferred weight and Negative prompt text. Save merges them into the
`.json` beside the model file (modules.services.user_metadata) and redraws the page's cards.

One editor per tab and page, with A1111's ids: the box `{tabname}_{page}_edit_user_metadata`, the
hidden `..._name` box and `..._button` that page.js fills and clicks for a card's ✏️. The card is
named by its key only; the file comes from the server's own card list, and a save writes only
inside the models folders of that kind of network. It runs as Gradio events, so the UI's login
covers it.
"""

from __future__ import annotations

import datetime
import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import gradio as gr

from modules.services import user_metadata as um

if TYPE_CHECKING:
    from .extra_networks import Card


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def roots_for(engine, page: str) -> list[Path]:
    """The folders a save for this page may write in: where its kind of network is listed from."""
    if page == "checkpoints":
        registry = engine.checkpoints
        return [Path(d) for d in registry.dirs] + [Path(f).parent for f in getattr(registry, "extra_files", [])]
    source = getattr(engine, "loras" if page == "lora" else "embeddings", None)
    return [Path(d) for d in getattr(source, "dirs", [])]


class MetadataEditor:
    def __init__(self, engine, tabname: str, page: str, cards: Callable[[], list["Card"]],
                 html_of: Callable[[list["Card"]], str]):
        self.engine = engine
        self.page = page
        self.id_part = f"{tabname}_{page}_edit_user_metadata"
        self.cards = cards  # the page's cards as the server lists them now
        self.html_of = html_of  # cards -> the page's HTML

    def build(self) -> None:
        """Called inside the page's tab, under its cards."""
        lora = self.page == "lora"
        self.editing = gr.State("")  # the key of the card being edited (this page's session)
        # A1111's pair: the card's name goes into `_name`, then `_button` is clicked (page.js)
        self.name_input = gr.Textbox(visible="hidden", elem_id=f"{self.id_part}_name")
        self.button = gr.Button("Edit user metadata", visible="hidden", elem_id=f"{self.id_part}_button")
        with gr.Column(visible=False, elem_id=self.id_part, elem_classes=["edit-user-metadata"]) as self.box:
            self.title = gr.HTML(elem_classes=["edit-user-metadata-title"])
            self.description = gr.Textbox(label="Description", lines=4, elem_id=f"{self.id_part}_description")
            self.fields = [self.description]
            if lora:
                self.fields += [
                    gr.Dropdown(list(um.SD_VERSIONS), value="Unknown", label="Stable Diffusion version",
                                allow_custom_value=True, elem_id=f"{self.id_part}_sd_version"),
                    gr.Textbox(label="Activation text", info="Will be added to prompt along with Lora",
                               elem_id=f"{self.id_part}_activation_text"),
                    gr.Slider(0.0, 2.0, value=0.0, step=0.01, label="Preferred weight", info="Set to 0 to disable",
                              elem_id=f"{self.id_part}_preferred_weight"),
                    gr.Textbox(label="Negative prompt", info="Will be added to negative prompts",
                               elem_id=f"{self.id_part}_negative_text"),
                ]
            self.fields.append(gr.TextArea(label="Notes", lines=4, elem_id=f"{self.id_part}_notes"))
            with gr.Row(elem_classes=["edit-user-metadata-buttons"]):
                self.cancel = gr.Button("Cancel", elem_id=f"{self.id_part}_cancel")
                self.save = gr.Button("Save", variant="primary", elem_id=f"{self.id_part}_save")
            self.status = gr.HTML(elem_classes=["edit-user-metadata-status"])

    def keys(self) -> list[str]:
        """The metadata keys of the editor's fields, in their order (A1111's order of a save)."""
        if self.page == "lora":
            return [um.DESCRIPTION, um.SD_VERSION, um.ACTIVATION_TEXT, um.PREFERRED_WEIGHT, um.NEGATIVE_TEXT, um.NOTES]
        return [um.DESCRIPTION, um.NOTES]

    def _card(self, key: str) -> "Card | None":
        return next((c for c in self.cards() if c.key == key and c.path is not None), None)

    def _title(self, card: "Card") -> str:
        rows = []
        path = Path(card.path)
        relative = path.name
        for root in roots_for(self.engine, self.page):
            if um.inside(path, [root]):
                relative = os.path.relpath(path, root)
                break
        try:
            st = path.stat()
            rows = [("Filename:", relative), ("File size:", _size(st.st_size)),
                    ("Modified:", datetime.datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M"))]
        except OSError:
            rows = [("Filename:", relative)]
        table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        return f"<div class='extra-network-name'>{html.escape(card.name)}</div><table class='file-metadata'>{table}</table>"

    def open(self, key: str):
        card = self._card(key or "")
        if card is None:
            gr.Warning(f"{key or 'That card'} is no longer listed; press Refresh")
            return "", gr.update(visible=False), "", *[gr.skip()] * len(self.fields), ""
        values = card.metadata
        shown = []
        for name in self.keys():
            if name == um.DESCRIPTION:
                shown.append(card.description)  # the json's, else the card's own (A1111)
            elif name == um.PREFERRED_WEIGHT:
                shown.append(min(max(um.preferred_weight(values), 0.0), 2.0))
            elif name == um.SD_VERSION:
                shown.append(um.text(values, name) or "Unknown")
            else:
                shown.append(um.text(values, name))
        return key, gr.update(visible=True), self._title(card), *shown, ""

    def store(self, key: str, *values):
        card = self._card(key or "")
        if card is None:
            return "<span class='error'>That card is no longer listed; press Refresh.</span>", gr.skip(), gr.skip()
        changes = dict(zip(self.keys(), values))
        if um.PREFERRED_WEIGHT in changes:
            changes[um.PREFERRED_WEIGHT] = float(changes[um.PREFERRED_WEIGHT] or 0.0)
        try:
            um.write(card.path, changes, roots_for(self.engine, self.page))
        except (um.MetadataError, OSError) as exc:
            return f"<span class='error'>{html.escape(str(exc))}</span>", gr.skip(), gr.skip()
        return "", gr.update(visible=False), self.html_of(self.cards())

    def wire(self, cards_html: gr.HTML) -> None:
        self.button.click(self.open, inputs=self.name_input,
                          outputs=[self.editing, self.box, self.title, *self.fields, self.status],
                          js="(name) => window.easelEditCard || name", queue=False)
        self.save.click(self.store, inputs=[self.editing, *self.fields], outputs=[self.status, self.box, cards_html],
                        queue=False)
        self.cancel.click(lambda: gr.update(visible=False), outputs=self.box, queue=False)
