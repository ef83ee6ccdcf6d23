"""A1111's `modules.ui_components`: the small Gradio pieces extensions build their UIs from.

Each is a plain Gradio 6 component or layout under A1111's name and behaviour:

- `ToolButton`: a small button holding one emoji (`value` first, as A1111's), class `tool`;
- `FormRow`, `FormColumn`, `FormGroup`, `ResizeHandleRow`: rows/columns/groups (the "Form" names
  meant "fits inside a Gradio 3 form"; Gradio 6 needs no such care);
- `FormHTML`, `FormColorPicker`, `DropdownMulti` (multiselect), `DropdownEditable` (custom values);
- `InputAccordion`: an accordion that is also an input: its value (True when open) reaches a
  script's `run`/`process` like a checkbox's. It is a hidden checkbox that follows the accordion
  (opening/closing sets it, in the browser, before any Generate can overtake it) and that the
  accordion follows (a value set from Python or a pasted infotext opens/closes it).

A subclass tells Gradio's page which widget to draw with `get_block_name()`, the base widget's.
"""

from __future__ import annotations

import itertools

import gradio as gr

from modules import gradio_compat

gradio_compat.apply()  # before the classes below: Gradio must not write .pyi files beside this one

__all__ = ["FormComponent", "ToolButton", "ResizeHandleRow", "FormRow", "FormColumn", "FormGroup", "FormHTML",
           "FormColorPicker", "DropdownMulti", "DropdownEditable", "InputAccordion"]


class FormComponent:
    """A1111's marker for components that sit in forms; kept for `isinstance` checks and subclasses."""

    webui_do_not_create_gradio_pyi_thank_you = True


def _classes(kwargs: dict, *extra: str) -> list[str]:
    given = kwargs.pop("elem_classes", None) or []
    return [*extra, *([given] if isinstance(given, str) else given)]


class ToolButton(FormComponent, gr.Button):
    """A small button with a single emoji as its text."""

    def __init__(self, value: str = "", *args, **kwargs):
        kwargs.setdefault("min_width", 40)
        kwargs.setdefault("scale", 0)
        super().__init__(value, *args, elem_classes=_classes(kwargs, "tool"), **kwargs)

    def get_block_name(self) -> str:
        return "button"


class ResizeHandleRow(gr.Row):
    """A row whose columns A1111 lets the user resize (here: a row with A1111's class)."""

    def __init__(self, **kwargs):
        super().__init__(elem_classes=_classes(kwargs, "resize-handle-row"), **kwargs)

    def get_block_name(self) -> str:
        return "row"


class FormRow(FormComponent, gr.Row):
    def get_block_name(self) -> str:
        return "row"


class FormColumn(FormComponent, gr.Column):
    def get_block_name(self) -> str:
        return "column"


class FormGroup(FormComponent, gr.Group):
    def get_block_name(self) -> str:
        return "group"


class FormHTML(FormComponent, gr.HTML):
    def get_block_name(self) -> str:
        return "html"


class FormColorPicker(FormComponent, gr.ColorPicker):
    def get_block_name(self) -> str:
        return "colorpicker"


class DropdownMulti(FormComponent, gr.Dropdown):
    def __init__(self, **kwargs):
        super().__init__(multiselect=True, **kwargs)

    def get_block_name(self) -> str:
        return "dropdown"


class DropdownEditable(FormComponent, gr.Dropdown):
    def __init__(self, **kwargs):
        super().__init__(allow_custom_value=True, **kwargs)

    def get_block_name(self) -> str:
        return "dropdown"


_accordion_numbers = itertools.count()


class InputAccordion(gr.Checkbox):
    """`with InputAccordion(False, label="My script") as enabled:` lays out the controls inside an
    accordion; `enabled` is the input whose value says whether it is open."""

    def __init__(self, value: bool, **kwargs):
        self.accordion_id = kwargs.get("elem_id") or f"input-accordion-{next(_accordion_numbers)}"
        checkbox_kwargs = {**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False}
        super().__init__(value, **checkbox_kwargs)
        accordion_kwargs = {k: v for k, v in kwargs.items() if k in ("visible", "render")}
        self.accordion = gr.Accordion(label=kwargs.get("label", "Accordion"), open=bool(value),
                                      elem_id=self.accordion_id, elem_classes=["input-accordion"],
                                      **accordion_kwargs)
        # open/close -> the value, in the browser (no round trip a quick Generate could overtake)
        self.accordion.expand(None, js="() => true", outputs=[self], queue=False)
        self.accordion.collapse(None, js="() => false", outputs=[self], queue=False)
        # the value -> open/close (a value set from Python, an infotext paste)
        self.change(_open_to, inputs=[self], outputs=[self.accordion], queue=False, show_progress="hidden")

    def extra(self) -> gr.Column:
        """A column for controls that belong with the accordion's title (A1111 puts them in it)."""
        return gr.Column(elem_id=f"{self.accordion_id}-extra", elem_classes=["input-accordion-extra"], min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self) -> str:
        return "checkbox"


def _open_to(value: bool):
    return gr.update(open=bool(value))


def create_refresh_button(refresh_component, refresh_method, refreshed_args, elem_id: str) -> ToolButton:
    """A1111's 🔄 button: runs `refresh_method()`, then sets `refreshed_args` (a dict, or a function
    returning one) on the component(s), on the server's copy and in the page."""
    components = refresh_component if isinstance(refresh_component, list) else [refresh_component]

    def refresh():
        refresh_method()
        args = refreshed_args() if callable(refreshed_args) else refreshed_args
        for component in components:
            for key, value in args.items():
                setattr(component, key, value)
        update = gr.update(**args)
        return [update] * len(components) if len(components) > 1 else update

    button = ToolButton(value="\U0001f504", elem_id=elem_id)
    button.click(fn=refresh, inputs=[], outputs=components, queue=False)
    return button
