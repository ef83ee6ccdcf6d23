"""A1111's `modules.options`: `OptionInfo`, `options_section` and `Options`, the object behind
`shared.opts`, as a façade over Easel's settings (modules.services.options.Options).

`shared.opts.add_option(key, OptionInfo(...))` becomes an `OptionDef` of the same settings, so
the Settings tab, /sdapi/v1/options and config.json know the extension's option like any other;
the `OptionInfo` itself stays in `opts.data_labels[key]` (and on the definition as `.info`) for
the UI to build the control the extension asked for.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from modules.core import atomic_write
from modules.services.options import DIRECTORY_OPTIONS, OptionDef, OptionRestricted
from modules.services.options import Options as _Settings


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh
        self.do_not_save = False
        self.comment_before = comment_before  # HTML before the label
        self.comment_after = comment_after  # HTML after the label
        self.infotext = infotext
        self.restrict_api = restrict_api

    def link(self, label, url):
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def js(self, label, js_func):
        self.comment_before += f"[<a onclick='{js_func}(); return false'>{label}</a>]"
        return self

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html):
        self.comment_after += html
        return self

    def needs_restart(self):
        self.comment_after += " <span class='info'>(requires restart)</span>"
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


class OptionHTML(OptionInfo):
    """A piece of text in the Settings tab; no value is stored."""

    def __init__(self, text):
        super().__init__(str(text).strip(), label="", component=None)
        self.do_not_save = True


def options_section(section_identifier, options_dict):
    for v in options_dict.values():
        if len(section_identifier) == 2:
            v.section = section_identifier
        elif len(section_identifier) == 3:
            v.section = section_identifier[0:2]
            v.category_id = section_identifier[2]
    return options_dict


class OptionsCategory:
    def __init__(self, id: str, label: str):
        self.id = id
        self.label = label


class OptionsCategories:
    def __init__(self):
        self.mapping: dict[str, OptionsCategory] = {}

    def register_category(self, category_id, label):
        if category_id not in self.mapping:
            self.mapping[category_id] = OptionsCategory(category_id, label)
        return category_id


categories = OptionsCategories()


def _component_name(component) -> str:
    return getattr(component, "__name__", type(component).__name__ if component is not None else "")


def _component_args(info: OptionInfo) -> dict:
    args = info.component_args
    if callable(args):
        try:
            args = args()
        except Exception:  # noqa: BLE001 - a dynamic list that cannot be read now: no bounds
            return {}
    return args if isinstance(args, dict) else {}


def option_def(info: OptionInfo) -> OptionDef:
    """Easel's definition of an extension's option: label, section name, bounds and choices where
    the component states them (a list filled at run time, `refresh=`, is not enforced)."""
    pair = isinstance(info.section, (tuple, list)) and len(info.section) > 1
    section = info.section[1] if pair else "Other"
    args = _component_args(info)
    name = _component_name(info.component).lower()
    choices = None
    if name in ("radio", "dropdown") and info.refresh is None and not callable(info.component_args):
        listed = args.get("choices")
        if isinstance(listed, (list, tuple)) and not args.get("multiselect"):
            choices = tuple(c[1] if isinstance(c, tuple) and len(c) == 2 else c for c in listed)
    bounds = {}
    if name in ("slider", "number"):
        bounds = {k: args[k] for k in ("minimum", "maximum", "step") if isinstance(args.get(k), (int, float))}
    definition = OptionDef(info.default, info.label or "", section or "Other", choices=choices, **bounds,
                           component="color" if name == "colorpicker" else None,
                           section_id=str(info.section[0]) if pair and info.section[0] else None,
                           # A1111: a control made invisible (component_args=shared.hide_dirs) is restricted
                           restrict=args.get("visible", True) is False)
    definition.info = info  # the extension's own description, for the Settings tab
    return definition


class Options:
    """`shared.opts`: attribute access to the settings, A1111's methods, Easel's storage.

    `bind(settings)` points it at the running server's settings (webui.py); before that it reads
    defaults, so extensions may touch `shared.opts` at import time."""

    typemap = {int: float}
    _own = ("_settings", "data_labels", "restricted_opts", "_callbacks")

    def __init__(self, settings: _Settings | None = None):
        object.__setattr__(self, "_settings", settings or _Settings(None))
        object.__setattr__(self, "data_labels", {})
        object.__setattr__(self, "restricted_opts", set(DIRECTORY_OPTIONS))  # A1111's; --hide-ui-dir-config locks them
        self._label_builtins()

    def bind(self, settings: _Settings) -> None:
        """Use `settings` from now on; options extensions added before move over."""
        object.__setattr__(self, "_settings", settings)
        for key, info in list(self.data_labels.items()):
            if getattr(info, "easel_builtin", False):
                del self.data_labels[key]
            elif key not in settings.defs and not info.do_not_save:
                self._define(key, info)
        self._label_builtins()

    def _label_builtins(self) -> None:
        """A1111's data_labels for Easel's own options (extensions look options up there)."""
        for key, d in self._settings.defs.items():
            if key in self.data_labels:
                continue
            args = {k: v for k, v in (("minimum", d.minimum), ("maximum", d.maximum), ("step", d.step)) if v is not None}
            if callable(d.choices):  # choices that change (sd_vae: the files on disk), as A1111's lambdas
                args = (lambda a, c: lambda: {**a, "choices": list(c())})(args, d.choices)
            elif d.choices:
                args["choices"] = list(d.choices)
            info = OptionInfo(d.default, d.label, component_args=args or None, section=(d.section_id, d.section))
            info.easel_builtin = True
            self.data_labels[key] = info

    @property
    def settings(self) -> _Settings:
        return self._settings

    @property
    def data(self) -> dict:
        return self._settings.data

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        settings = object.__getattribute__(self, "_settings")
        if item in settings.data:
            return settings.data[item]
        if item in settings.defs:
            return settings.defs[item].default
        labels = object.__getattribute__(self, "data_labels")
        if item in labels:
            return labels[item].default
        raise AttributeError(f"no option named '{item}'")

    def __setattr__(self, key, value):
        if key in self._own or key in type(self).__dict__:
            return object.__setattr__(self, key, value)
        info = self.data_labels.get(key)
        if info is not None and info.do_not_save:
            return None
        settings = self._settings
        if key in settings.data or key in settings.defs or info is not None:
            try:  # the command line's locks hold for extensions too, with A1111's exceptions
                settings.check_allowed(key, value)
            except OptionRestricted as exc:
                raise (AssertionError if exc.frozen else RuntimeError)(str(exc)) from None
        settings.data[key] = value  # A1111: plain assignment, no other checks, no onchange

    def set(self, key, value, is_api=False, run_callbacks=True) -> bool:
        """Set an option and call its onchange; True when the value changed (A1111). A value the
        option cannot hold, or --hide-ui-dir-config's lock: False; a freeze flag's lock: an
        AssertionError with A1111's message."""
        info = self.data_labels.get(key)
        if info is not None and (info.do_not_save or (is_api and info.restrict_api)):
            return False
        old = self._settings.data.get(key)
        if old == value:
            return False
        try:
            if run_callbacks:
                changed = self._settings.set(key, value) if key in self._settings.defs else self._assign(key, value)
            else:
                self._settings.data[key] = self._settings.check(key, value)
                changed = True
        except OptionRestricted as exc:
            if exc.frozen:
                raise AssertionError(str(exc)) from None
            return False
        except (ValueError, RuntimeError):
            return False
        if changed and run_callbacks and info is not None and info.onchange is not None:
            try:
                info.onchange()
            except Exception as e:  # noqa: BLE001 - A1111: reported, the old value comes back
                from modules import errors

                errors.display(e, f"changing setting {key} to {value}")
                self._settings.data[key] = old
                return False
        return changed

    def _assign(self, key, value) -> bool:
        self._settings.data[key] = self._settings.check(key, value)
        return True

    def get_default(self, key):
        d = self._settings.defs.get(key)
        if d is not None:
            return d.default
        info = self.data_labels.get(key)
        return info.default if info is not None else None

    def save(self, filename=None) -> None:
        if filename is None or self._settings.path is None or str(filename) == str(self._settings.path):
            self._settings.save()
            return
        atomic_write.write_text(filename, self._settings.dumps())

    def load(self, filename=None) -> None:
        self._settings.load()

    def same_type(self, x, y) -> bool:
        if x is None or y is None:
            return True
        return self.typemap.get(type(x), type(x)) == self.typemap.get(type(y), type(y))

    def onchange(self, key, func: Callable[[], Any], call: bool = True) -> None:
        info = self.data_labels.get(key)
        if info is not None:
            info.onchange = func
        else:
            self._settings.onchange(key, func)
        if call:
            func()

    def add_option(self, key, info: OptionInfo) -> None:
        """An extension's option: a setting like the built-in ones (A1111 replaces a re-added one)."""
        self.data_labels[key] = info
        if not info.do_not_save:
            self._define(key, info)

    def _define(self, key, info: OptionInfo) -> None:
        definition = option_def(info)
        settings = self._settings
        if key in settings.defs:
            settings.defs[key] = definition
            settings.data.setdefault(key, definition.default)
            settings.repair(key)
        else:
            settings.add(key, definition)

    def reorder(self) -> None:
        """A1111 sorts the settings into categories; Easel's Settings tab groups by section already."""

    def dumpjson(self) -> str:
        d = self._settings.as_dict()  # strict JSON: no NaN reaches the page
        d["_comments_before"] = {k: v.comment_before for k, v in self.data_labels.items()}
        d["_comments_after"] = {k: v.comment_after for k, v in self.data_labels.items()}
        return json.dumps(d, default=str)

    def cast_value(self, key, value):
        if value is None:
            return None
        default = self.get_default(key)
        if default is None:
            default = getattr(self, key, None)
        if default is None:
            return None
        expected = type(default)
        if expected is bool and value == "False":
            return False
        return expected(value)
