"""The page's part of A1111's localizations: the chosen one's JSON goes to the page at each load
(a hidden `localization_json` box, filled by a load event) and modules/ui/localization.js applies
it. The choice is the option `localization` as it is when the page is opened, so a change in
Settings shows on the next page load (A1111: "requires Reload UI")."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from modules import localization
from modules.services.options import Options

HERE = Path(__file__).resolve().parent


def translations_json(options: Options) -> str:
    return json.dumps(localization.load(options.get("localization")), ensure_ascii=False)


def page_script() -> str:
    return (HERE / "localization.js").read_text(encoding="utf-8").strip()


def add_to_page(demo: gr.Blocks, options: Options) -> None:
    """Inside `demo`'s context: the hidden box and the load events that apply the localization."""
    box = gr.Textbox("{}", visible=False, elem_id="localization_json")
    demo.load(lambda: translations_json(options), outputs=box, queue=False).then(
        None, inputs=box, js=page_script(), queue=False)
