"""A1111's ui-config.json (--ui-config-file): the UI's default values and slider limits, by
"<tab>/<label>/<field>" keys such as "txt2img/Sampling steps/value" or "img2img/Width/maximum";
a script's controls as "customscript/<script file>/<tab>/<label>/<field>".

Applied to the built page before it is served: a key in the file sets that field of every
component with that label in that tab. The keys the file lacks are added with the page's own
values (as A1111 does), so the file lists what can be changed; a file that cannot be read is left
as it is and changes nothing.
"""

from __future__ import annotations

import json
import os

import gradio as gr

TABS = {"txt2img": "txt2img", "img2img": "img2img", "Extras": "extras"}  # tab label -> key prefix
FIELDS = {gr.Slider: ("value", "minimum", "maximum", "step"), gr.Number: ("value", "minimum", "maximum"),
          gr.Textbox: ("value",), gr.Checkbox: ("value",), gr.Radio: ("value",), gr.Dropdown: ("value",),
          gr.CheckboxGroup: ("value",)}


def _tab_prefix(block) -> str | None:
    parent = getattr(block, "parent", None)
    while parent is not None:
        if isinstance(parent, gr.Tab) and parent.label in TABS:
            return TABS[parent.label]
        parent = getattr(parent, "parent", None)
    return None


def _fields(block) -> tuple[str, ...]:
    return next((fields for kind, fields in FIELDS.items() if isinstance(block, kind)), ())


def apply(demo: gr.Blocks, path: str | None) -> None:
    if not path:
        return
    try:
        with open(path, encoding="utf8") as file:
            saved = json.load(file)
        readable = isinstance(saved, dict)
    except FileNotFoundError:
        saved, readable = {}, True
    except (OSError, ValueError) as error:
        print(f"[easel] --ui-config-file {path}: not read ({error}); the UI keeps its defaults")
        return
    if not readable:
        print(f"[easel] --ui-config-file {path}: not a JSON object; the UI keeps its defaults")
        return
    added = False
    for block in demo.blocks.values():
        label, prefix = getattr(block, "label", None), _tab_prefix(block)
        if not label or not prefix:
            continue
        source = getattr(block, "custom_script_source", None)
        if source:  # a script's control has keys of its own (A1111): labels repeat the page's
            prefix = f"customscript/{source}/{prefix}"
        for field in _fields(block):
            key = f"{prefix}/{label}/{field}"
            if key in saved:
                setattr(block, field, saved[key])
            elif _jsonable(getattr(block, field, None)):
                saved[key] = getattr(block, field, None)
                added = True
    demo.config = demo.get_config_file()  # Gradio made it when the page was built: again, with the changes
    if added:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w", encoding="utf8") as file:
                json.dump(saved, file, indent=4, ensure_ascii=False)
        except OSError as error:
            print(f"[easel] --ui-config-file {path}: not written ({error})")


def _jsonable(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list))
