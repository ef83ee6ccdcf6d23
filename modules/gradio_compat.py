"""The Gradio 3 calls A1111 extensions make, accepted by Gradio 6.

Extensions were written against A1111's Gradio 3.41. Rather than ship that old Gradio, `apply()`
(called once by the composition root before any extension is imported, and again, harmlessly,
by `modules.ui_components` and the UI builder) teaches Gradio 6 the old spellings:

- event listeners take `_js=` as `js=`, `show_api=` as `api_visibility=`, `every=` (a timer that
  calls the same function), and ignore `status_tracker=`;
- `Component.update(...)` / `gr.Dropdown.update(...)` return `gr.update(...)`; `.style(...)` is
  accepted and does nothing (it returns the component, so `with gr.Row().style(...)` works);
- constructor arguments Gradio 6 dropped: `source=` becomes `sources=[...]`, `grid=` becomes
  `columns=`, `show_copy_button=True` becomes `buttons=["copy"]`, `gr.File(type="file")` becomes
  `type="filepath"`; the rest of `DROPPED_ARGS` (`tool=`, `brush_radius=`, `shape=`, ...) is left
  out with one console note per class and argument;
- names: `gr.Box` (`gr.Group`), `gr.Variable` (`gr.State`), `gr.components.IOComponent`
  (`gr.components.Component`), `gr.inputs.*` / `gr.outputs.*` (`default=` read as `value=`),
  `gradio.processing_utils.encode_pil_to_base64` / `decode_base64_to_image`;
- a subclass of a Gradio component defined outside Gradio (an extension's `ToolButton`) no longer
  makes Gradio write a `.pyi` file beside the extension's source, and keeps the properties of its
  Gradio base (elem_id, classes, ...) when its own `__init__` names fewer, and may come from a
  script A1111's loader ran without a registered module (Gradio looks for its source file);
- a `tooltip=` Gradio 6 lacks is kept as `webui_tooltip` (A1111's attribute) instead of failing;
- components an extension makes with `visible=False` are put in the page hidden (`visible="hidden"`),
  and its tabs render their children from the start (`render_children=True`), as Gradio 3 did:
  extensions' scripts look those elements up (sd-dynamic-prompts' message boxes).

`component_listeners` is the seam for A1111's `before_component` / `after_component`: every
Gradio block constructed while `apply()` is in force calls each listener's
`before(component, **kwargs)` before it is built (and placed) and `after(component, **kwargs)`
after; modules/ui/scripts_ui.py registers the scripts' callbacks there while the tabs are built.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import inspect
import io
import sys
import threading
import types
from typing import Any, Callable, Protocol

import gradio as gr

__all__ = ["DROPPED_ARGS", "ComponentListener", "apply", "component_listeners", "notes"]

# Gradio 3 constructor arguments with no Gradio 6 counterpart: left out with a note
DROPPED_ARGS = frozenset({
    "tool", "shape", "brush_radius", "brush_color", "mask_opacity", "invert_colors", "mirror_webcam",
    "show_edit_button", "show_download_button", "show_share_button", "show_fullscreen_button",
    "max_rows", "overflow_row_behaviour", "color_map", "optional", "source", "show_copy_button", "grid",
    "variant", "numeric", "keep_filename",
})


class ComponentListener(Protocol):
    def before(self, component, **kwargs) -> None: ...

    def after(self, component, **kwargs) -> None: ...


component_listeners: list[ComponentListener] = []
notes: list[str] = []  # what was translated or left out, once each (also printed)

_applied = False
_lock = threading.Lock()
_building = threading.local()  # ids of the blocks whose constructor runs on this thread


def apply() -> None:
    """Install the compatibility layer (idempotent)."""
    global _applied
    with _lock:
        if _applied:
            return
        _patch_listeners()
        _patch_constructors()
        _patch_blocks_api()
        _add_names()
        _quiet_pyi_writer()
        _applied = True


# -- event listeners ------------------------------------------------------------------------
def _note(text: str) -> None:
    if text not in notes:
        notes.append(text)
        print(f"[easel] gradio compat: {text}")


def _listener_kwargs(kwargs: dict) -> Any:
    """Gradio 3 listener arguments -> Gradio 6 ones, in place; returns `every` (or None)."""
    if "_js" in kwargs:
        js = kwargs.pop("_js")
        if kwargs.get("js") is None:
            kwargs["js"] = js
    if "show_api" in kwargs:
        if kwargs.pop("show_api") is False:
            kwargs.setdefault("api_visibility", "undocumented")
    kwargs.pop("status_tracker", None)
    return kwargs.pop("every", None)


def _wrap_listener(trigger: Callable) -> Callable:
    if getattr(trigger, "_easel_compat", False):
        return trigger

    @functools.wraps(trigger)  # keeps event_name, has_trigger, ... that gr.on() reads
    def listener(*args, **kwargs):
        every = _listener_kwargs(kwargs)
        dependency = trigger(*args, **kwargs)
        if every:
            _repeat(args, kwargs, float(every))
        return dependency

    listener._easel_compat = True
    return listener


def _repeat(args: tuple, kwargs: dict, every: float) -> None:
    """Gradio 3's `every=`: the same function again every `every` seconds, on a gr.Timer."""
    fn = args[1] if len(args) > 1 else kwargs.get("fn")
    if fn is None or fn == "decorator":
        return
    inputs = args[2] if len(args) > 2 else kwargs.get("inputs")
    outputs = args[3] if len(args) > 3 else kwargs.get("outputs")
    timer = gr.Timer(every)
    timer.tick(fn, inputs=inputs, outputs=outputs, js=kwargs.get("js"), queue=kwargs.get("queue", True),
               show_progress="hidden")


def _all_block_classes() -> list[type]:
    seen, stack = [], [gr.blocks.Block]
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return seen


def _patch_listeners() -> None:
    from gradio.events import EventListener

    original_setup = EventListener._setup

    def _setup(*args, **kwargs):  # listeners made from now on (new classes, Dependency.then/...)
        return _wrap_listener(original_setup(*args, **kwargs))

    EventListener._setup = staticmethod(_setup)
    for cls in _all_block_classes():  # listeners the existing classes already hold
        for name, value in list(vars(cls).items()):
            if callable(value) and hasattr(value, "event_name") and not isinstance(value, type):
                setattr(cls, name, _wrap_listener(value))


# -- constructors ---------------------------------------------------------------------------
def _parameters(init: Callable) -> tuple[set[str], bool]:
    """(named parameters, takes **kwargs) of a constructor."""
    params = inspect.signature(init).parameters.values()
    return ({p.name for p in params}, any(p.kind is p.VAR_KEYWORD for p in params))


def _constructor_kwargs(cls: type, accepted: set[str], kwargs: dict) -> None:
    """Gradio 3 constructor arguments -> Gradio 6 ones, in place (only those `accepted` lacks)."""
    name = cls.__name__
    if kwargs.get("type") == "file" and "type" in accepted and name in ("File", "Files", "UploadButton"):
        kwargs["type"] = "filepath"
        _note(f"{name}(type='file') is read as type='filepath' (a path string)")
    for key in [k for k in kwargs if k not in accepted and k in DROPPED_ARGS]:
        value = kwargs.pop(key)
        if key == "source" and "sources" in accepted and value in ("upload", "webcam", "clipboard", "microphone"):
            kwargs.setdefault("sources", [value])
            continue
        if key == "grid" and "columns" in accepted:
            if isinstance(value, (list, tuple)):  # Gradio 3 took one number per screen size
                value = value[0] if value else None
            if isinstance(value, int):
                kwargs.setdefault("columns", value)
            continue
        if key == "show_copy_button" and "buttons" in accepted:
            if value and kwargs.get("buttons") is None:
                kwargs["buttons"] = ["copy"]
            continue
        _note(f"{name}({key}=...) is a Gradio 3 argument Gradio 6 lacks; left out")


def _made_by_extension() -> bool:
    """Whether the code constructing a component (the first frame outside Gradio and this module)
    is an extension's. Gradio 3 put an invisible component in the page (hidden); Gradio 6 leaves it
    out, and extensions' scripts look up their hidden textboxes and buttons to pass messages."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename.replace("\\", "/")
        if "/gradio/" not in filename and not filename.endswith(("/gradio_compat.py", "/ui_components.py")):
            break
        frame = frame.f_back
    if frame is None:
        return False
    try:
        from modules import errors

        return errors.owner_of(frame.f_code.co_filename) is not None
    except Exception:  # noqa: BLE001 - never fail a constructor over this
        return False


def _input_accordion(kwargs: dict) -> bool:
    """A1111's InputAccordion (modules.ui_components): its open state is its checkbox's value, which
    sets it again from the server; opened and closed at load, the two would answer each other."""
    classes = kwargs.get("elem_classes") or []
    return "input-accordion" in ([classes] if isinstance(classes, str) else classes)


def _mount_closed(kwargs: dict) -> None:
    """An extension's closed accordion is marked; the page opens and closes it once at load (page.js):
    Gradio 6 mounts a closed accordion's children only when it is first opened, Gradio 3 had them in
    the page, and extensions' scripts click the buttons in them (sd-dynamic-prompts' Wildcards
    Manager loads its tree so)."""
    classes = kwargs.get("elem_classes") or []
    kwargs["elem_classes"] = [*([classes] if isinstance(classes, str) else classes), "easel-mount-closed"]


def _wrap_init(cls: type, init: Callable) -> Callable:
    accepted, open_ended = _parameters(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if not open_ended:  # a constructor with **kwargs hands them on to one that is wrapped too
            _constructor_kwargs(cls, accepted, kwargs)
            if "tooltip" in kwargs and "tooltip" not in accepted:  # A1111 gave every component one
                self.webui_tooltip = kwargs.pop("tooltip")
            if kwargs.get("visible") is False and "visible" in accepted and _made_by_extension():
                kwargs["visible"] = "hidden"  # in the page, not shown: extensions' JS talks through them
            if "render_children" in accepted and "render_children" not in kwargs and _made_by_extension():
                kwargs["render_children"] = True  # an extension's tab's elements are in the page from the start
            if issubclass(cls, gr.Accordion) and kwargs.get("open") is False and not _input_accordion(kwargs) \
                    and _made_by_extension():
                _mount_closed(kwargs)
        building = _building.__dict__.setdefault("ids", set())
        outermost = id(self) not in building  # subclass -> base constructors: one announcement
        if not outermost or not component_listeners:
            return init(self, *args, **kwargs)
        building.add(id(self))
        try:
            listeners = list(component_listeners)
            for listener in listeners:
                listener.before(self, **kwargs)
            result = init(self, *args, **kwargs)
            for listener in listeners:
                listener.after(self, **kwargs)
            return result
        finally:
            building.discard(id(self))

    __init__._easel_compat = True
    return __init__


def _patch_constructors() -> None:
    for cls in _all_block_classes():
        init = vars(cls).get("__init__")
        if init is None or getattr(init, "_easel_compat", False) or not cls.__module__.startswith("gradio"):
            continue
        cls.__init__ = _wrap_init(cls, init)


# -- methods and names ----------------------------------------------------------------------
def _update(*args, **kwargs) -> dict:
    """Gradio 3's `Component.update(value, **props)` (also called on an instance)."""
    if args:
        kwargs.setdefault("value", args[0])
    return gr.update(**kwargs)


def _style(self, *args, **kwargs):
    """Gradio 3's `.style(...)`: accepted, without effect (Gradio 6 takes these in the constructor)."""
    return self


def _patch_blocks_api() -> None:
    block = gr.blocks.Block
    if not hasattr(block, "style"):
        block.style = _style
    _patch_get_config(block)
    _patch_class_id(block)
    block.update = staticmethod(_update)  # Row's own update(visible=) included: same result, more keys
    for cls in _all_block_classes():
        if "update" in vars(cls) and cls is not block:
            cls.update = staticmethod(_update)


def _patch_get_config(block: type) -> None:
    """Gradio sends a component's properties named in its class's `__init__` signature; a subclass
    made outside Gradio with a narrower one (A1111's `ToolButton(value="", *args, **kwargs)`, an
    extension's `ToolButton(**kwargs)`) would lose its elem_id, classes, visibility... So such a
    subclass sends what its nearest Gradio base would, plus what its own signature names."""
    original = block.get_config

    def get_config(self, cls=None):
        own = type(self)
        if cls is not None or own.__module__.startswith("gradio"):
            return original(self, cls)
        base = next((c for c in own.__mro__ if c.__module__.startswith("gradio") and "__init__" in vars(c)), None)
        config = original(self, base) if base is not None else {}
        config.update(original(self, own))
        return config

    block.get_config = get_config


def _patch_class_id(block: type) -> None:
    """Gradio names a component class by its source file; a class from a script that A1111's loader
    executed without registering its module (every extension script) has none that `inspect` can
    find, and Gradio would fail to make the component. Such a class is named by its module."""
    original = block.get_component_class_id.__func__

    def get_component_class_id(cls) -> str:
        try:
            return original(cls)
        except TypeError:
            return hashlib.sha256(f"{cls.__name__}_{cls.__module__}".encode()).hexdigest()

    block.get_component_class_id = classmethod(get_component_class_id)


def _namespace(name: str, classes: dict[str, type]) -> types.ModuleType:
    """`gr.inputs` / `gr.outputs`: Gradio 2-3's component factories (`default=` meant `value=`)."""
    module = types.ModuleType(name)

    def factory(cls: type) -> Callable:
        def make(*args, **kwargs):
            if "default" in kwargs:
                kwargs.setdefault("value", kwargs.pop("default"))
            kwargs.pop("optional", None)
            return cls(*args, **kwargs)

        make.__name__ = make.__qualname__ = cls.__name__
        return make

    for key, cls in classes.items():
        setattr(module, key, factory(cls))
    return module


def encode_pil_to_base64(image) -> str:
    """Gradio 3's helper: a picture as a PNG data URL (its text chunks kept)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (getattr(image, "info", None) or {}).items():
        if isinstance(key, str) and isinstance(value, str):
            info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_base64_to_image(encoding: str):
    """Gradio 3's helper: a (data URL or bare) base64 picture -> PIL image."""
    from PIL import Image

    data = encoding.split(",", 1)[1] if encoding.startswith("data:") else encoding
    return Image.open(io.BytesIO(base64.b64decode(data)))


def _add_names() -> None:
    aliases = {"Box": gr.Group, "Variable": gr.State}
    for name, target in aliases.items():
        if not hasattr(gr, name):
            setattr(gr, name, target)
    if not hasattr(gr.components, "IOComponent"):
        gr.components.IOComponent = gr.components.Component
    common = ("Textbox", "Number", "Slider", "Checkbox", "CheckboxGroup", "Radio", "Dropdown", "Image", "Video",
              "Audio", "File", "Dataframe", "State")
    inputs = _namespace("gradio.inputs", {n: getattr(gr, n) for n in common})
    outputs = _namespace("gradio.outputs", {
        **{n: getattr(gr, n) for n in common},
        **{n: getattr(gr, n) for n in ("Label", "HighlightedText", "JSON", "HTML", "Chatbot")},
        "KeyValues": gr.HighlightedText, "Carousel": gr.Gallery,
    })
    for module in (inputs, outputs):
        short = module.__name__.split(".")[1]
        if not hasattr(gr, short):
            setattr(gr, short, module)
            sys.modules.setdefault(module.__name__, module)
    utils = gr.processing_utils
    for fn in (encode_pil_to_base64, decode_base64_to_image):
        if not hasattr(utils, fn.__name__):
            setattr(utils, fn.__name__, fn)


def _quiet_pyi_writer() -> None:
    """Gradio writes a `.pyi` stub beside the source of every component class it meets; for a
    class outside Gradio (an extension's ToolButton) that file lands in the extension's folder
    (A1111 stopped it too). Outside Gradio's own folder it is not written."""
    from pathlib import Path

    from gradio import component_meta

    original = component_meta.create_or_modify_pyi
    gradio_dir = Path(gr.__file__).resolve().parent

    def create_or_modify_pyi(component_class, class_name, events):
        try:
            source = Path(inspect.getfile(component_class)).resolve()
        except (OSError, TypeError):
            return None
        if gradio_dir not in source.parents:
            return None
        return original(component_class, class_name, events)

    component_meta.create_or_modify_pyi = create_or_modify_pyi
