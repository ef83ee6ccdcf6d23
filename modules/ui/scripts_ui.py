"""Scripts in the page: A1111's script controls in the txt2img/img2img tabs, the component
callbacks while the page is built, and the extensions' own tabs.

- `ScriptsSection` lays out one tab's `ScriptRunner` (modules/scripts.py) at the bottom of the
  parameters column, in A1111's `<tab>_script_container`: the AlwaysVisible scripts' controls
  (usually an accordion each), then the "Script" dropdown (`script_list`) with each selectable
  script's controls shown only while it is chosen. At Generate it turns the controls' values into
  the positional argument list A1111 hands to scripts and from it the job's `ScriptCall`.
- `component_callbacks()` is in force while the page is built: every Gradio component made then
  is announced to `script_callbacks.before_component/after_component` callbacks and to the tab's
  runner (`scripts.scripts_current`), with its constructor's keyword arguments (`elem_id`,
  `label`, ...), as A1111 does, so an extension can put its controls next to A1111-named ones or
  keep a handle on, say, `txt2img_generate`.
- `extension_tabs()` collects the `on_ui_tabs` callbacks' `(gr.Blocks, title, elem_id)` tabs.
- `paste_fields` is the registry of infotext fields per tab (A1111's paste fields: component ->
  infotext key), the tab's own and the scripts' `infotext_fields`, which the ↙️ button fills
  (paste_params.py).

Everything here tolerates a runner without scripts: then the dropdown offers only "None" and
Generate runs the job exactly as without the extension system.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import gradio as gr

from modules import gradio_compat

__all__ = ["ScriptsSection", "component_callbacks", "extension_tabs", "paste_fields", "register_paste_fields"]

# tab name -> [(component, infotext key or function)], A1111's paste fields
paste_fields: dict[str, list[tuple[Any, Any]]] = {}


def register_paste_fields(tabname: str, fields: list[tuple[Any, Any]], init_img=None) -> None:
    """A tab's (component, infotext key) pairs, in `paste_fields` and in A1111's registry
    (modules.infotext_utils.paste_fields) when that module is there; a page built again replaces
    its tab's entry."""
    paste_fields[tabname] = list(fields)
    try:
        from modules import infotext_utils
    except ImportError:
        return
    add = getattr(infotext_utils, "add_paste_fields", None)
    if add is not None:
        add(tabname, init_img, list(fields))


def _scripts_module():
    try:
        from modules import scripts
    except ImportError:  # the scripting runtime is optional for the page
        return None
    return scripts


def _callbacks_module():
    try:
        from modules import script_callbacks
    except ImportError:
        return None
    return script_callbacks


class _Announcer:
    """gradio_compat's component listener: the callbacks of A1111's component construction hook."""

    def __init__(self):
        self.scripts = _scripts_module()
        self.callbacks = _callbacks_module()

    def _runner(self):
        return getattr(self.scripts, "scripts_current", None) if self.scripts else None

    def before(self, component, **kwargs) -> None:
        runner = self._runner()
        if runner is not None:
            self._call(runner.before_component, component, kwargs)
        if self.callbacks is not None:
            self._call(self.callbacks.before_component_callback, component, kwargs)

    def after(self, component, **kwargs) -> None:
        if self.callbacks is not None:
            self._call(self.callbacks.after_component_callback, component, kwargs)
        runner = self._runner()
        if runner is not None:
            self._call(runner.after_component, component, kwargs)

    reported: set = set()

    def _call(self, fn, component, kwargs: dict) -> None:
        # each callback is isolated by the runtime; this guards the page against the dispatch itself
        try:
            fn(component, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the page is built regardless (reported once per kind)
            what = (getattr(fn, "__qualname__", repr(fn)), type(exc).__name__)
            if what not in self.reported:
                self.reported.add(what)
                print(f"[easel] {what[0]} failed for {type(component).__name__} "
                      f"{kwargs.get('elem_id') or ''}: {what[1]}: {exc}")


@contextlib.contextmanager
def component_callbacks() -> Iterator[None]:
    """While the page is built: announce each component to the extensions (see module doc)."""
    gradio_compat.apply()
    announcer = _Announcer()
    gradio_compat.component_listeners.append(announcer)
    try:
        yield
    finally:
        gradio_compat.component_listeners.remove(announcer)


@contextlib.contextmanager
def current_runner(tabname: str) -> Iterator[Any]:
    """`scripts.scripts_current` is the tab's runner while the tab is built (A1111), so its
    scripts' before_component/after_component see that tab's components."""
    scripts = _scripts_module()
    runner = getattr(scripts, f"scripts_{tabname}", None) if scripts else None
    if scripts is None:
        yield None
        return
    previous = scripts.scripts_current
    scripts.scripts_current = runner
    try:
        yield runner
    finally:
        scripts.scripts_current = previous


def extension_tabs() -> list[tuple[gr.Blocks, str, str]]:
    """The extensions' `on_ui_tabs` tabs: (blocks, title, id); a malformed entry is skipped."""
    callbacks = _callbacks_module()
    if callbacks is None:
        return []
    tabs = []
    for entry in callbacks.ui_tabs_callback() or []:
        if isinstance(entry, (tuple, list)) and len(entry) >= 3 and isinstance(entry[0], gr.Blocks):
            tabs.append((entry[0], str(entry[1]), str(entry[2])))
        else:
            print(f"[easel] an on_ui_tabs callback returned {entry!r}, not (gr.Blocks, title, id); skipped")
    return tabs


class ScriptsSection:
    """One tab's scripts (see module doc). `build()` inside the tab's parameters column."""

    def __init__(self, tabname: str):
        self.tabname = tabname
        self.runner = None
        self.inputs: list = []  # A1111's positional list: [Script dropdown, script controls...]

    def build(self) -> None:
        from modules.ui_components import FormGroup

        scripts = _scripts_module()
        self.runner = getattr(scripts, f"scripts_{self.tabname}", None) if scripts else None
        with FormGroup(elem_id=f"{self.tabname}_script_container"):
            if self.runner is None:
                self.inputs = [gr.Dropdown(["None"], value="None", type="index", label="Script",
                                           elem_id="script_list")]
            else:
                self.inputs = list(self.runner.setup_ui())

    @property
    def dropdown(self) -> gr.Dropdown:
        return self.inputs[0]

    def components(self) -> set:
        """What Generate sends: every control that can be an event input."""
        return {c for c in self.inputs if isinstance(c, gr.components.Component)}

    def infotext_fields(self) -> list:
        return list(getattr(self.runner, "infotext_fields", None) or [])

    def args(self, values: dict) -> list:
        """The scripts' positional argument list from Generate's values (A1111's `*args`)."""
        return [values.get(c) if isinstance(c, gr.components.Component) else None for c in self.inputs]

    def selected(self, values: dict) -> str | None:
        """The title chosen in the Script dropdown, None for "None"."""
        index = values.get(self.dropdown)
        if isinstance(index, str):  # a dropdown of titles (no runner)
            return None if index == "None" else index
        if not index or self.runner is None:
            return None
        titles = list(self.runner.titles)
        return titles[index - 1] if 0 < index <= len(titles) else None

    def call(self, values: dict):
        """The job's ScriptCall, or None when nothing would run (no script chosen and no
        AlwaysVisible script): the job then runs exactly as without scripts."""
        if self.runner is None:
            return None
        if self.selected(values) is None and not self.runner.alwayson_scripts:
            return None
        from modules.services.script_jobs import ScriptCall

        return ScriptCall.from_ui_args(self.runner, self.args(values))
