"""A1111's ui-config.json (--ui-config-file): the UI's default values, slider limits and shown
controls, by "<tab>/<label>/<field>" keys such as "txt2img/Sampling steps/value",
"img2img/Width/maximum" or "txt2img/Batch size/visible"; a script's controls as
"customscript/<script file>/<tab>/<label>/<field>"; the Checkpoint Merger's as
"modelmerger/<label>/<field>" (A1111's prefix: "modelmerger/Interpolation Method/value"); a button
without a label by its text ("txt2img/Generate/visible").

Applied to the built page before it is served: a key in the file sets that field of every
component with that label in that tab. The keys the file lacks are added with the page's own
values (as A1111 does), so the file lists what can be changed; a file that cannot be read is left
as it is and changes nothing. As in A1111, "visible" is kept for the shown sliders, number boxes,
text boxes, checkboxes, radios, dropdowns and buttons (not for a control hidden until something
shows it); false hides the control, which stays in the page (Gradio's visible="hidden"), for the
scripts and extensions that look it up. A radio's or dropdown's value that is none of its choices
is left out, as in A1111.

Settings → Defaults (modules/ui/ui_defaults.py) writes the page's changed values into the file.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import gradio as gr

# tab label -> key prefix (A1111's ifid of the tab, as its ui.py passes to ui_loadsave.add_block)
TABS = {"txt2img": "txt2img", "img2img": "img2img", "Extras": "extras", "Checkpoint Merger": "modelmerger"}
FIELDS = {gr.Slider: ("value", "minimum", "maximum", "step"), gr.Number: ("value", "minimum", "maximum"),
          gr.Textbox: ("value",), gr.Checkbox: ("value",), gr.Radio: ("value",), gr.Dropdown: ("value",),
          gr.CheckboxGroup: ("value",)}
# the kinds whose "visible" is kept (A1111's), while they are shown when the page is built
VISIBLE = (gr.Slider, gr.Number, gr.Textbox, gr.Checkbox, gr.Radio, gr.Dropdown, gr.Button)


def _tab_prefix(block) -> str | None:
    parent = getattr(block, "parent", None)
    while parent is not None:
        if isinstance(parent, gr.Tab) and parent.label in TABS:
            return TABS[parent.label]
        parent = getattr(parent, "parent", None)
    return None


def fields(block) -> tuple[str, ...]:
    """The fields of `block` that have keys."""
    kept = next((names for kind, names in FIELDS.items() if isinstance(block, kind)), ())
    if isinstance(block, VISIBLE) and getattr(block, "visible", None) is True:
        kept += ("visible",)
    return kept


def components(demo: gr.Blocks) -> Iterator[tuple[str, Any]]:
    """("<tab>/<label>" or "customscript/<file>/<tab>/<label>", component) of each component of the
    page that has keys, in the page's order (a label may come more than once)."""
    for block in list(demo.blocks.values()):
        prefix = _tab_prefix(block)
        if not prefix:
            continue
        label = getattr(block, "label", None)
        if not label and isinstance(block, gr.Button) and isinstance(block.value, str):
            label = block.value  # a button is known by its text
        if not label:
            continue
        source = getattr(block, "custom_script_source", None)
        if source:  # a script's control has keys of its own (A1111): labels repeat the page's
            prefix = f"customscript/{source}/{prefix}"
        yield f"{prefix}/{label}", block


def read(path: str) -> dict:
    """The file's keys ({} when there is no file yet); OSError or ValueError when it cannot be read
    or is no JSON object."""
    try:
        with open(path, encoding="utf8") as file:
            saved = json.load(file)
    except FileNotFoundError:
        return {}
    if not isinstance(saved, dict):
        raise ValueError("not a JSON object")
    return saved


def write(path: str, saved: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf8") as file:
        json.dump(saved, file, indent=4, ensure_ascii=False)


def apply(demo: gr.Blocks, path: str | None) -> None:
    defaults = getattr(demo, "ui_defaults", None)  # Settings → Defaults writes to the same file
    if defaults is not None:
        defaults.set_path(path)
    if path:
        try:
            saved = read(path)
        except (OSError, ValueError) as error:
            print(f"[easel] --ui-config-file {path}: not read ({error}); the UI keeps its defaults")
        else:
            if _apply_saved(demo, saved):
                try:
                    write(path, saved)
                except OSError as error:
                    print(f"[easel] --ui-config-file {path}: not written ({error})")
    demo.config = demo.get_config_file()  # Gradio made it when the page was built: again, with the changes


def _apply_saved(demo: gr.Blocks, saved: dict) -> bool:
    """Set the page's fields from `saved`; add the keys it lacks (or has as null) to it. Whether keys
    were added."""
    added, seen = False, set()
    for path, block in components(demo):
        for field in fields(block):
            key = f"{path}/{field}"
            value, current = saved.get(key), getattr(block, field, None)
            if value is None:  # (A1111 reads a null as a missing key)
                # the first component of a label that repeats in a tab (xyz_grid's text box and
                # dropdown) gives the key its value
                if key not in seen and _jsonable(current) and (key not in saved or current is not None):
                    saved[key] = current
                    added = True
                seen.add(key)
            elif field == "visible":
                if value is True or value is False or value == "hidden":
                    block.visible = True if value is True else "hidden"  # hidden, still in the page
            elif field != "value":
                setattr(block, field, value)
            else:
                value = _as_value(block, value)
                if value is not None:
                    block.value = value
    return added


def _as_value(block, value):
    """`value` as the component takes it (a text box's text, a number box's number), or None when it
    cannot be one (a radio's or dropdown's value that it does not offer, as in A1111)."""
    if isinstance(block, gr.Textbox):
        return value if isinstance(value, str) else str(value)
    if isinstance(block, gr.Number) and not isinstance(value, (int, float)):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    return value if _acceptable(block, value) else None


def _acceptable(block, value) -> bool:
    """Whether a radio or dropdown offers `value` (several, for a multiselect dropdown)."""
    if not isinstance(block, (gr.Radio, gr.Dropdown)) or getattr(block, "allow_custom_value", False):
        return True
    offered = [choice[1] if isinstance(choice, (tuple, list)) else choice for choice in block.choices or []]
    if isinstance(block, gr.Dropdown) and block.multiselect:
        return isinstance(value, list) and all(v in offered for v in value)
    return value in offered


def _jsonable(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list))
