"""The ↙️ button of the prompt row (A1111's "paste"): the generation parameters written in the
prompt box, or this page's last generation's when the box is empty, go into the tab's controls.

A tab lists its paste fields as (component, infotext key) pairs, or (component, function of the
parsed parameters) for values that are not one key (A1111's `paste_fields`, scripts'
`infotext_fields` included). The text is read with `modules.infotext_utils.parse_generation_parameters`,
so extensions' `on_infotext_pasted` callbacks see and may change it. A key the text does not give
leaves its control as it is; a value a control cannot take (a sampler Easel lacks, a slider value
out of range, a word where a number belongs) is left out or clamped rather than breaking the page.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules import infotext_utils

HINT = "Read generation parameters from prompt or last generation if prompt is empty into user interface."

PasteField = tuple[Any, "str | Callable[[dict], Any]"]


def build_button(tabname: str) -> gr.Button:
    return gr.Button("↙️", elem_id=f"{tabname}_paste", min_width=40, scale=0, elem_classes=["tool"])


def unique(fields: list[PasteField]) -> list[PasteField]:
    """One entry per component (the first wins): an event cannot output a component twice."""
    seen, kept = set(), []
    for component, key in fields:
        if id(component) not in seen:
            seen.add(id(component))
            kept.append((component, key))
    return kept


def wire(button: gr.Button, prompt: gr.Textbox, last_result: gr.State, fields: list[PasteField]) -> None:
    """`last_result` is the tab's per-page result state (its "infotexts" list)."""
    fields = unique(fields)

    def paste(text: str, result: dict):
        text = (text or "").strip()
        if not text:
            shown = (result or {}).get("infotexts") or []
            text = shown[0] if shown else ""
        return updates(fields, text)

    button.click(paste, inputs=[prompt, last_result], outputs=[c for c, _ in fields], queue=False,
                 show_progress="hidden")


def updates(fields: list[PasteField], text: str) -> list:
    """One update per field for the infotext `text` (no change anywhere for an empty text)."""
    if not (text or "").strip():
        return [gr.update() for _ in fields]
    params = infotext_utils.parse_generation_parameters(text)
    return [update_for(component, key(params) if callable(key) else params.get(key)) for component, key in fields]


def update_for(component, value) -> dict:
    """The update that puts an infotext value into `component` (no change when it cannot take it)."""
    if value is None:
        return gr.update()
    if isinstance(value, dict) and value.get("__type__") == "update":  # a key function's own update
        return value
    try:
        if isinstance(component, gr.Accordion):
            return gr.update(open=_flag(value))
        if isinstance(component, gr.Checkbox):
            return gr.update(value=_flag(value))
        if isinstance(component, gr.Slider):
            number = float(value)
            if component.minimum is not None:
                number = max(number, component.minimum)
            if component.maximum is not None:
                number = min(number, component.maximum)
            return gr.update(value=_whole(number, component.step))
        if isinstance(component, gr.Number):
            number = float(value)
            return gr.update(value=int(number) if component.precision == 0 else number)
        if isinstance(component, (gr.Dropdown, gr.Radio)):
            labels = [c[0] if isinstance(c, (tuple, list)) else c for c in component.choices or []]
            values = [c[1] if isinstance(c, (tuple, list)) else c for c in component.choices or []]
            text = str(value)
            if text in values:
                return gr.update(value=text)
            if text in labels:
                return gr.update(value=values[labels.index(text)])
            return gr.update()
        if isinstance(component, gr.Textbox):
            return gr.update(value=str(value))
        return gr.update(value=value)
    except (TypeError, ValueError):
        return gr.update()


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes", "on")


def _whole(number: float, step) -> float | int:
    integral_step = step is None or float(step).is_integer()
    return int(round(number)) if integral_step and float(number).is_integer() else number
