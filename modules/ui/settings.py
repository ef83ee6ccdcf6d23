"""The Settings tab (A1111's): one control per option of `Options.defs`, grouped by section, with
the option's current value; "Apply settings" checks every changed value with `Options.check`
(its type and bounds, then the command line's locks: --freeze-settings and the like, with A1111's
message naming the option), stores them all or none, and saves config.json. A locked option's
control is read-only; a folder under --hide-ui-dir-config is not shown (as in A1111).

Element ids are A1111's: the tab `tab_settings`, the button `settings_submit`, the report
`settings_result`, each control `setting_<option name>`, the hidden `settings_json` (all
values as JSON: the page's `window.opts`, refreshed after Apply). The quicksettings (A1111's
`quicksettings_list`: the checkpoint picker and the options the user put there, above the tabs) are
not repeated here: their ids would clash. Each quicksetting takes effect and is saved as soon as it
is changed (`apply_one`), as in A1111.

An extension's option (`shared.opts.add_option(key, OptionInfo(...))` in an `on_ui_settings`
callback, run before this tab is built) gets the control its OptionInfo names
(`component=gr.Slider, component_args={...}`), or, without one, the control its type gives.

The last section, "Defaults" (`settings_tab_defaults`), is A1111's editor of the ui-config file
(modules/ui/ui_defaults.py).
"""

from __future__ import annotations

import html
import json
import re
from typing import Any, Callable

import gradio as gr

from modules.services.options import OptionDef, OptionRestricted, Options

from .generation_tab import error_html
from .ui_defaults import UiDefaults

__all__ = ["QUICKSETTINGS", "SettingsTab", "component_for", "quicksettings"]

QUICKSETTINGS = ("sd_model_checkpoint",)  # always above the tabs (the checkpoint picker loads the model)
MAX_RADIO_CHOICES = 5  # more choices than this become a dropdown


def quicksettings(options: Options) -> list[str]:
    """The options shown above the tabs: the checkpoint picker, then `quicksettings_list`'s defined
    options in its order (an unknown name is reported and skipped; an extension's option is known
    once its on_ui_settings callback has run, before the page is built)."""
    listed = options.get("quicksettings_list") or []
    keys = list(QUICKSETTINGS)
    for key in listed if isinstance(listed, list) else []:
        if key in keys:
            continue
        if not isinstance(key, str) or key not in options.defs:
            print(f"[easel] quicksettings_list names {key!r}, which is no option; it is left out")
            continue
        keys.append(key)
    return keys


def _change_events(component: gr.components.Component) -> list[str]:
    """When a quicksetting applies: a finished change, not every keystroke or slider tick."""
    if isinstance(component, gr.Slider):
        return ["release"]
    if isinstance(component, (gr.Textbox, gr.Number)):
        return ["submit", "blur"]
    return ["input"]


def _slug(section: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", section.lower()).strip("_")


def _number_hint(d: OptionDef) -> str | None:
    if d.minimum is not None and d.maximum is not None:
        return f"{d.minimum} to {d.maximum}"
    if d.minimum is not None:
        return f"at least {d.minimum}"
    if d.maximum is not None:
        return f"at most {d.maximum}"
    return None


def _extension_component(info, common: dict, value: Any) -> gr.components.Component | None:
    """The control an extension's OptionInfo asks for (a Gradio class and its arguments, which may
    be a function returning them), or None to fall back on the type's control."""
    component = getattr(info, "component", None)
    if component is None or not callable(component):
        return None
    args = getattr(info, "component_args", None)
    try:
        args = args() if callable(args) else dict(args or {})
        return component(value=value, **{**args, **common})
    except Exception as exc:  # noqa: BLE001 - a control the extension got wrong: the plain one instead
        print(f"[easel] setting {common['elem_id'][len('setting_'):]}: its control failed ({exc}); "
              "showing a plain one")
        return None


def component_for(key: str, d: OptionDef, value: Any, locked: OptionRestricted | None = None,
                  option_keys: list[str] | None = None, **layout) -> gr.components.Component:
    """The control of one option: an extension's own (OptionInfo), else from its `component`,
    else its choices, else the default's type (a number with both bounds is a slider, other
    numbers a plain field). `locked`: the command line's refusal of any change: the control is
    read-only, and hidden for a folder under --hide-ui-dir-config (as A1111). `option_keys`: the
    names an "option_keys" control (quicksettings_list) offers; `layout`: e.g. scale, min_width."""
    common = {"label": d.label, "elem_id": f"setting_{key}", "interactive": locked is None, **layout}
    if locked is not None and not locked.frozen:
        common["visible"] = False
    info = getattr(d, "info", None)
    if info is not None:
        own = _extension_component(info, common, value)
        if own is not None:
            return own
    if d.component == "color":
        return gr.ColorPicker(value=value, **common)
    if d.component == "option_keys":  # names of options, several (an extension's may come later)
        return gr.Dropdown(list(option_keys or []), value=list(value or []), multiselect=True,
                           allow_custom_value=True, **common)
    if isinstance(d.default, list) and d.choices:  # several of the choices (hide_samplers): A1111's checkboxes
        return gr.CheckboxGroup(list(d.choice_list()), value=list(value or []), **common)
    if callable(d.choices):  # choices that change (files on disk, e.g. sd_vae): always a dropdown
        return gr.Dropdown(list(d.choice_list()), value=value, **common)
    if d.choices:
        if len(d.choices) <= MAX_RADIO_CHOICES:
            return gr.Radio(list(d.choices), value=value, **common)
        return gr.Dropdown(list(d.choices), value=value, **common)
    if isinstance(d.default, bool):
        return gr.Checkbox(value=value, **common)
    if isinstance(d.default, (int, float)):
        integer = isinstance(d.default, int)
        if d.minimum is not None and d.maximum is not None and d.component != "number":
            step = d.step or (1 if integer else 0.01)
            return gr.Slider(d.minimum, d.maximum, step=step, value=value, **common)
        # no bounds handed to Gradio: an out-of-range value reaches Options.validate, whose
        # message names the option, instead of Gradio's anonymous refusal
        return gr.Number(value=value, precision=0 if integer else None, info=_number_hint(d), **common)
    return gr.Textbox(value="" if value is None else str(value), **common)


class SettingsTab:
    """`appliers`: option -> a function that puts a new value into effect before it is stored
    (sd_vae: the engine loads the VAE into the model); a ValueError it raises is the message and
    nothing is stored."""

    def __init__(self, options: Options, appliers: dict[str, Callable[[Any], None]] | None = None):
        self.options = options
        self.appliers = dict(appliers or {})
        self.quick_keys = quicksettings(options)
        self.keys = [k for k in options.defs if k not in self.quick_keys]
        self.components: list[gr.components.Component] = []
        self.quick_components: list[gr.components.Component] = []  # build_quicksettings
        self.defaults = UiDefaults()  # the Defaults tab; app.py wires it once the page is built

    def sections(self) -> dict[str, list[str]]:
        """Section -> its option names, both in the order the options were defined."""
        grouped: dict[str, list[str]] = {}
        for key in self.keys:
            grouped.setdefault(self.options.defs[key].section, []).append(key)
        return grouped

    def build(self) -> None:
        with gr.Row(elem_id="settings_top"):
            self.submit = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        self.result = gr.HTML(elem_id="settings_result")
        self.json = gr.Textbox(self.options_json(), visible=False, elem_id="settings_json")
        by_key = {}
        with gr.Tabs(elem_id="settings", overflow_behavior="wrap"):  # every section reachable (no "..." menu)
            for section, keys in self.sections().items():
                with gr.Tab(section, elem_id=f"settings_{_slug(section)}"):
                    for key in keys:
                        by_key[key] = component_for(key, self.options.defs[key], self.options.get(key),
                                                    self.options.refusal(key), option_keys=list(self.options.defs))
            with gr.Tab("Defaults", id="defaults", elem_id="settings_tab_defaults"):  # A1111's: the ui-config file
                self.defaults.build()
        self.components = [by_key[k] for k in self.keys]
        # unprocessed: each value reaches `apply` as the page sent it, so Options.check is the
        # one judge (and names the option), not a component's own bounds
        applied = self.submit.click(self.apply, inputs=self.components, outputs=[self.result, *self.components],
                                    preprocess=False, queue=False)
        # the page's window.opts and its onOptionsChanged callbacks (modules/ui/webui_globals.js)
        applied.then(self.options_json, outputs=self.json, queue=False).then(
            None, inputs=self.json, js="(json) => { if (window.easelOptionsChanged) easelOptionsChanged(json); }",
            queue=False)

    def build_quicksettings(self) -> None:
        """The quicksettings beside the checkpoint picker (inside the page's `#quicksettings` row),
        each applied and saved when changed; the page's window.opts follows."""
        for key in self.quick_keys[len(QUICKSETTINGS):]:
            component = component_for(key, self.options.defs[key], self.options.get(key), self.options.refusal(key),
                                      option_keys=list(self.options.defs), scale=1, min_width=160)
            self.quick_components.append(component)

            def apply(value, key=key):
                return self.apply_one(key, value), self.options_json()

            for event in _change_events(component):
                # (through the queue: a refusal shows as a toast)
                getattr(component, event)(apply, inputs=component, outputs=[component, self.json]).then(
                    None, inputs=self.json, js="(json) => { if (window.easelOptionsChanged) easelOptionsChanged(json); }",
                    queue=False)

    def quick_values(self) -> list:
        return [self.options.get(k) for k in self.quick_keys[len(QUICKSETTINGS):]]

    def apply_one(self, key: str, value: Any):
        """A quicksetting changed: check it, put it into effect (its applier, e.g. sd_vae), store and
        save it; refused, the message shows and the control goes back to the stored value."""
        if value == self.options.get(key):
            return gr.skip()
        try:
            value = self.check(key, value)
            if key in self.appliers:
                self.appliers[key](value)
            else:
                self.options.set(key, value)
            self.options.save()
        except (ValueError, OSError) as exc:
            gr.Warning(html.escape(str(exc)), title="Setting not changed")
            return self.options.get(key)
        return gr.skip()

    def options_json(self) -> str:
        """Every option's value as JSON, A1111's `opts` of the page."""
        return json.dumps(self.options.as_dict(), default=str, allow_nan=False)

    def values(self) -> list:
        """The current value of every option, for the controls (at page load and after Apply)."""
        return [self.options.get(k) for k in self.keys]

    def check(self, key: str, value: Any) -> Any:
        if value is None and self.options.defs[key].default is not None:
            raise ValueError(f"option {key} needs a value")
        try:
            return self.options.check(key, value)  # the value's checks, then the command line's locks
        except OptionRestricted as exc:  # "changing settings is disabled" names no option: say which
            raise ValueError(str(exc) if key in str(exc) else f"{key}: {exc}") from None

    def apply(self, *submitted):
        """Validate the changed values; store them all (and save config.json) or, on the first
        bad one, none, with the message naming that option."""
        changes = {}
        try:
            for key, value in zip(self.keys, submitted):
                if value != self.options.get(key):
                    changes[key] = self.check(key, value)
            applied = []
            for key, apply in self.appliers.items():  # before the rest: a refusal stores nothing
                if key in changes:
                    apply(changes.pop(key))  # it stores the value itself once it took effect
                    applied.append(key)
        except ValueError as exc:
            return error_html(str(exc)), *[gr.skip()] * len(self.keys)
        changed = applied + [key for key, value in changes.items() if self.options.set(key, value)]
        try:
            self.options.save()
        except OSError as exc:
            return error_html(f"settings changed but not saved: {exc}"), *self.values()
        report = f"{len(changed)} settings changed{': ' if changed else ''}{', '.join(changed)}."
        return f"<div class='settings-result'>{html.escape(report)}</div>", *self.values()
