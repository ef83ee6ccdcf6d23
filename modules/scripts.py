"""A1111's `modules.scripts`: the `Script` base class extensions subclass, and the runners.

`load_scripts()` imports every `scripts/*.py` of the repository and of each active extension
(modules.extensions.active()), with the extension's root on sys.path while its files import and
`basedir()` answering that root; a file that fails to import is reported with its name and skipped.
`scripts_txt2img` / `scripts_img2img` are `ScriptRunner`s over fresh instances of every Script class;
`scripts_postproc` runs the Extras steps, every `ScriptPostprocessing` class found
(modules.scripts_postprocessing).

Arguments: A1111 passes a script's UI values positionally; `ScriptRunner.inputs` is the list of
components (index 0: the "Script" dropdown, then every script's controls), each script owning
`inputs[args_from:args_to]`. The UI builds that list with `setup_ui()`; without a UI (the API, a
test) `ensure_layout()` builds it in a throwaway gr.Blocks, as A1111's API does for its defaults.

Every hook call is isolated: an exception is reported with the script's file (credited to its
extension) and the job goes on.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import threading
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

from modules import errors, paths_internal, script_callbacks, script_loading, scripts_postprocessing

AlwaysVisible = object()


class MaskBlendArgs:
    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None):
        self.current_latent = current_latent
        self.nmask = nmask
        self.init_latent = init_latent
        self.mask = mask
        self.blended_latent = blended_latent
        self.denoiser = denoiser
        self.is_final_blend = denoiser is None
        self.sigma = sigma


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostProcessMaskOverlayArgs:
    def __init__(self, index, mask_for_overlay, overlay_image):
        self.index = index
        self.mask_for_overlay = mask_for_overlay
        self.overlay_image = overlay_image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


@dataclass
class OnComponent:
    component: Any


class Script:
    name = None  # the title in lower case, once the UI (or the API layout) is built
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None  # [(component, infotext key or function)], set in ui()
    paste_field_names = None  # [infotext key], set in ui()
    api_info = None  # {name, is_alwayson, is_img2img, args: [{label, value, minimum, maximum, step, choices}]}
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        """The title shown in the Script dropdown (and matched, lower-cased, by the API)."""
        raise NotImplementedError()

    def ui(self, is_img2img):
        """Create the Gradio controls; their values arrive as *args of the hooks and run()."""

    def show(self, is_img2img):
        """False: hidden; True: in the Script dropdown; AlwaysVisible: always on, its hooks run."""
        return True

    def run(self, p, *args):
        """Selected in the dropdown: do all the processing, return a Processed (usually from
        processing.process_images(p))."""

    def setup(self, p, *args):
        """AlwaysVisible: the processing object was just set up."""

    def before_process(self, p, *args):
        """AlwaysVisible: very early, before anything is derived from p."""

    def process(self, p, *args):
        """AlwaysVisible: before processing; p.all_prompts, p.all_seeds, ... are filled."""

    def before_process_batch(self, p, *args, **kwargs):
        """Before a batch's extra networks are read: batch_number, prompts, seeds, subseeds."""

    def after_extra_networks_activate(self, p, *args, **kwargs):
        """After a batch's extra networks are applied (A1111; Easel calls process_batch there)."""

    def process_batch(self, p, *args, **kwargs):
        """Per batch, extra networks applied: batch_number, prompts, seeds, subseeds."""

    def postprocess_batch(self, p, *args, **kwargs):
        """Per batch after decoding: batch_number, images (tensor B×3×H×W in 0..1, edit in place)."""

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        """Per batch after decoding: pp.images, a list of 3×H×W tensors; replace or resize the list."""

    def on_mask_blend(self, p, mba: MaskBlendArgs, *args):
        """Inpainting put the kept area back (after each step, and once at the end with
        mba.is_final_blend): replace mba.blended_latent to change what sampling goes on with."""

    def post_sample(self, p, ps: PostSampleArgs, *args):
        """After sampling (and the hires pass), before decoding: replace ps.samples (latents)."""

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        """Per picture: replace pp.image."""

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs, *args):
        """Inpainting, per picture before the original is pasted back: ppmo.overlay_image (RGBA,
        alpha 255 where the original shows) and ppmo.mask_for_overlay (L); replace them to change
        the paste-back."""

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs, *args):
        """Per picture after img2img's colour correction and overlay (every picture): replace pp.image."""

    def postprocess(self, p, processed, *args):
        """AlwaysVisible: after processing, with the Processed result."""

    def before_component(self, component, **kwargs):
        """Before a UI component is created (kwargs: its constructor's, elem_id, label, ...)."""

    def after_component(self, component, **kwargs):
        """After a UI component is created."""

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self):
        return ""

    def elem_id(self, item_id):
        """A1111's element id: script_[tab_]<title>_<item>."""
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"

    def before_hr(self, p, *args):
        """Hires fix: the batch's first pass is done, its second pass is about to start."""


class ScriptBuiltinUI(Script):
    setup_for_ui_only = True

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabname = ("img2img" if self.is_img2img else "txt2img") + "_" if need_tabname else ""
        return f"{tabname}{item_id}"


current_basedir = paths_internal.script_path


def basedir():
    """The folder of the script being loaded: the extension's root for an extension's script,
    the repository root for the repository's scripts/ (A1111)."""
    return current_basedir


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list[ScriptClassData] = []
postprocessing_scripts_data: list[ScriptClassData] = []
load_errors: list[tuple[str, str]] = []  # (file, message) of the scripts that did not import, last load
_loaded_once = False


def list_scripts(scriptdirname: str, extension: str, *, include_extensions: bool = True,
                 extension_list=None) -> list[ScriptFile]:
    """The repository's `scriptdirname/*extension` files, then each active extension's, sorted by
    file name within each folder (A1111's order without its metadata.ini dependency sort)."""
    found: list[ScriptFile] = []
    root = os.path.join(paths_internal.script_path, scriptdirname)
    if os.path.isdir(root):
        for filename in sorted(os.listdir(root)):
            path = os.path.join(root, filename)
            if os.path.isfile(path) and os.path.splitext(filename)[1].lower() == extension:
                found.append(ScriptFile(paths_internal.script_path, filename, path))
    if include_extensions:
        for ext in _active_extensions(extension_list):
            for f in ext.list_files(scriptdirname, extension):
                found.append(ScriptFile(f.basedir, f.filename, f.path))
    return found


def _active_extensions(extension_list=None) -> list:
    if extension_list is not None:
        return list(extension_list)
    try:
        from modules import extensions
    except ImportError:
        return []
    return extensions.active()


def list_files_with_name(filename: str, extension_list=None) -> list[str]:
    dirs = [paths_internal.script_path] + [ext.path for ext in _active_extensions(extension_list)]
    return [os.path.join(d, filename) for d in dirs if os.path.isfile(os.path.join(d, filename))]


def load_scripts(extension_list=None) -> None:
    """(Re)load every script file and build fresh runners. On a reload the old scripts'
    `on_script_unloaded` callbacks run first and every registered callback is dropped."""
    global current_basedir, scripts_txt2img, scripts_img2img, scripts_current, scripts_postproc, _loaded_once
    if _loaded_once:
        script_callbacks.script_unloaded_callback()
    scripts_data.clear()
    postprocessing_scripts_data.clear()
    load_errors.clear()
    script_callbacks.clear_callbacks()

    lora_modules = os.path.join(paths_internal.extensions_builtin_dir, "Lora")
    if lora_modules not in sys.path:  # A1111's built-in Lora modules stay importable: `import lora`, `networks`
        sys.path.append(lora_modules)
    for scriptfile in list_scripts("scripts", ".py", extension_list=extension_list):
        syspath = list(sys.path)
        try:
            if scriptfile.basedir != paths_internal.script_path:
                sys.path.insert(0, scriptfile.basedir)  # the extension imports its own packages
            current_basedir = scriptfile.basedir
            module = script_loading.load_module(scriptfile.path)
            for value in list(module.__dict__.values()):
                if inspect.isclass(value) and issubclass(value, Script) and value not in (Script, ScriptBuiltinUI):
                    scripts_data.append(ScriptClassData(value, scriptfile.path, scriptfile.basedir, module))
                elif _is_postprocessing_class(value):  # an Extras step (A1111's scripts_postproc)
                    postprocessing_scripts_data.append(ScriptClassData(value, scriptfile.path, scriptfile.basedir, module))
        except BaseException as exc:  # noqa: BLE001 - a broken script is skipped (SystemExit included)
            if isinstance(exc, KeyboardInterrupt):
                raise
            load_errors.append((scriptfile.path, f"{type(exc).__name__}: {exc}"))
            errors.report_for(scriptfile.path, f"loading script {scriptfile.filename}")
        finally:
            sys.path[:] = syspath
            current_basedir = paths_internal.script_path

    _loaded_once = True
    scripts_postproc = scripts_postprocessing.ScriptPostprocessingRunner()
    scripts_postprocessing.describe_options()
    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()
    scripts_txt2img.initialize_scripts(is_img2img=False)
    scripts_img2img.initialize_scripts(is_img2img=True)
    scripts_current = None


reload_scripts = load_scripts  # A1111's alias


def _is_postprocessing_class(value) -> bool:
    return (inspect.isclass(value) and issubclass(value, scripts_postprocessing.ScriptPostprocessing)
            and value is not scripts_postprocessing.ScriptPostprocessing)


_builtin_postprocessing: list[ScriptClassData] = []


def current_postprocessing_scripts_data() -> list[ScriptClassData]:
    """The Extras steps: what load_scripts found; before it ever ran (an engine without the script
    layer started: a test, an embedding), Easel's own scripts/postprocessing_*.py, so Extras keeps
    its upscale and face restoration."""
    if _loaded_once:
        return postprocessing_scripts_data
    if not _builtin_postprocessing:
        for scriptfile in list_scripts("scripts", ".py", include_extensions=False):
            if not scriptfile.filename.startswith("postprocessing_"):
                continue
            try:
                module = script_loading.load_module(scriptfile.path)
            except Exception:  # noqa: BLE001
                errors.report_for(scriptfile.path, f"loading script {scriptfile.filename}")
                continue
            for value in list(module.__dict__.values()):
                if _is_postprocessing_class(value):
                    _builtin_postprocessing.append(ScriptClassData(value, scriptfile.path, scriptfile.basedir, module))
    return _builtin_postprocessing


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception:  # noqa: BLE001
        errors.report_for(filename, f"calling {os.path.basename(filename or '')}/{funcname}")
    return default


def _is_overridden(script: Script, name: str) -> bool:
    return getattr(type(script), name, None) is not getattr(Script, name, None)


class ScriptRunner:
    def __init__(self):
        self.scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.titles: list[str] = []
        self.title_map: dict[str, Script] = {}
        self.infotext_fields: list = []
        self.paste_field_names: list = []
        self.inputs: list = [None]
        self.on_before_component_elem_id: dict = {}
        self.on_after_component_elem_id: dict = {}
        self.is_img2img = False
        self.layout_ready = False  # inputs/args_from/args_to are known (setup_ui or ensure_layout ran)
        self._layout_lock = threading.RLock()

    # -- building ------------------------------------------------------------------------------
    def initialize_scripts(self, is_img2img: bool) -> None:
        self.is_img2img = is_img2img
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        from modules import scripts_auto_postprocessing

        auto = scripts_auto_postprocessing.create_auto_preprocessing_script_data()  # postprocessing_enable_in_main_ui
        for data in auto + scripts_data:
            try:
                script = data.script_class()
            except Exception:  # noqa: BLE001
                errors.report_for(data.path, f"creating {getattr(data.script_class, '__name__', data.script_class)}")
                continue
            script.filename = data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = wrap_call(script.show, script.filename, "show", script.is_img2img)
            if visibility is AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)
        all_titles = [wrap_call(s.title, s.filename, "title") or s.filename for s in self.scripts]
        self.title_map = {title.lower(): s for title, s in zip(all_titles, self.scripts)}
        self.titles = [wrap_call(s.title, s.filename, "title") or f"{s.filename} [error]"
                       for s in self.selectable_scripts]
        self.apply_on_before_component_callbacks()

    def apply_on_before_component_callbacks(self) -> None:
        for script in self.scripts:
            for elem_id, callback in script.on_before_component_elem_id or []:
                self.on_before_component_elem_id.setdefault(elem_id, []).append((callback, script))
            for elem_id, callback in script.on_after_component_elem_id or []:
                self.on_after_component_elem_id.setdefault(elem_id, []).append((callback, script))
            if script.on_before_component_elem_id:
                script.on_before_component_elem_id.clear()
            if script.on_after_component_elem_id:
                script.on_after_component_elem_id.clear()

    def create_script_ui(self, script: Script) -> None:
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        try:
            self.create_script_ui_inner(script)
        except Exception:  # noqa: BLE001
            errors.report_for(script.filename, f"creating the UI of {script.name or script.filename}")

    def create_script_ui_inner(self, script: Script) -> None:
        controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        if not isinstance(controls, (list, tuple)):
            controls = [controls]
            script.controls = controls
        script.name = (wrap_call(script.title, script.filename, "title", default=script.filename) or "").lower()
        args = []
        for control in controls:
            try:
                control.custom_script_source = os.path.basename(script.filename)
            except Exception:  # noqa: BLE001 - a control that refuses attributes still works
                pass
            args.append(_arg_info(control))
        script.api_info = {"name": script.name, "is_img2img": script.is_img2img, "is_alwayson": script.alwayson,
                           "args": args}
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += list(controls)
        script.args_to = len(self.inputs)

    def setup_ui_for_section(self, section, scriptlist=None) -> None:
        import gradio as gr

        if scriptlist is None:
            scriptlist = self.alwayson_scripts
        for script in scriptlist:
            if script.alwayson and script.section != section:
                continue
            if script.create_group:
                with gr.Group(visible=script.alwayson) as group:
                    self.create_script_ui(script)
                script.group = group
            else:
                self.create_script_ui(script)

    def prepare_ui(self) -> None:
        self.inputs = [None]

    def setup_ui(self) -> list:
        """Create every script's controls in the current gr.Blocks: AlwaysVisible scripts first, then
        the "Script" dropdown (inputs[0], type index) and the selectable scripts, each in a group
        shown when chosen. Returns `inputs`."""
        import gradio as gr

        with self._layout_lock:
            self.inputs = [None]
            self.infotext_fields = []
            self.paste_field_names = []
            for section in dict.fromkeys(s.section for s in self.alwayson_scripts):
                self.setup_ui_for_section(section)
            dropdown = gr.Dropdown(label="Script", elem_id="script_list", choices=["None"] + self.titles,
                                   value="None", type="index")
            self.inputs[0] = dropdown
            self.setup_ui_for_section(None, self.selectable_scripts)

            def select_script(script_index):
                if script_index is None:
                    script_index = 0
                selected = self.selectable_scripts[script_index - 1] if script_index > 0 else None
                return [gr.update(visible=selected is s) for s in self.selectable_scripts]

            groups = [s.group for s in self.selectable_scripts if s.group is not None]
            if len(groups) == len(self.selectable_scripts) and groups:
                dropdown.change(fn=select_script, inputs=[dropdown], outputs=groups, queue=False,
                                show_progress="hidden")
            self.infotext_fields.append((dropdown, lambda x: gr.update(value=x.get("Script", "None"))))
            self.apply_on_before_component_callbacks()
            self.layout_ready = True
            return self.inputs

    def ensure_layout(self) -> None:
        """Without a UI: build the controls once in a throwaway gr.Blocks to learn every script's
        argument positions and default values (A1111's API does the same)."""
        if self.layout_ready:
            return
        with self._layout_lock:
            if self.layout_ready:
                return
            import gradio as gr

            with gr.Blocks():
                self.setup_ui()

    def default_args(self) -> list:
        """A full positional argument list with every control's initial value (index 0: no script)."""
        self.ensure_layout()
        values = [0]
        for control in self.inputs[1:]:
            values.append(_initial_value(control))
        return values

    # -- lookups -----------------------------------------------------------------------------
    def script(self, title: str) -> Script | None:
        return self.title_map.get((title or "").lower())

    def selectable_index(self, title: str) -> int | None:
        """Position of a selectable script in the dropdown (1-based; None: unknown)."""
        wanted = (title or "").strip().lower()
        for i, script in enumerate(self.selectable_scripts):
            if (wrap_call(script.title, script.filename, "title") or "").lower() == wanted:
                return i + 1
        return None

    # -- running -------------------------------------------------------------------------------
    def run(self, p, *args):
        script_index = args[0] if args else 0
        if isinstance(script_index, str):  # a title instead of the dropdown's index
            script_index = 0 if script_index == "None" else (self.selectable_index(script_index) or 0)
        if not script_index:
            return None
        if not 0 < script_index <= len(self.selectable_scripts):
            from modules.core.types import RequestError

            raise RequestError("script_name", f"no script number {script_index}; there are {len(self.titles)}: "
                                              + ", ".join(self.titles))
        script = self.selectable_scripts[script_index - 1]
        script_args = args[script.args_from:script.args_to]
        processed = script.run(p, *script_args)  # errors propagate: the job fails with the script's error
        return processed

    def _each(self, hook: str, p, call) -> None:
        for script in self.alwayson_scripts:
            if not _is_overridden(script, hook):
                continue
            try:
                script_args = _args_of(p, script)
                call(script, script_args)
            except Exception:  # noqa: BLE001 - reported, credited, the job goes on
                errors.report_for(script.filename, f"running {hook}")

    def setup_scrips(self, p, *, is_ui=True) -> None:
        for script in self.alwayson_scripts:
            if not is_ui and script.setup_for_ui_only:
                continue
            if not _is_overridden(script, "setup"):
                continue
            try:
                script.setup(p, *_args_of(p, script))
            except Exception:  # noqa: BLE001
                errors.report_for(script.filename, "running setup")

    setup_scripts = setup_scrips

    def before_process(self, p) -> None:
        self._each("before_process", p, lambda s, a: s.before_process(p, *a))

    def process(self, p) -> None:
        self._each("process", p, lambda s, a: s.process(p, *a))

    def before_process_batch(self, p, **kwargs) -> None:
        self._each("before_process_batch", p, lambda s, a: s.before_process_batch(p, *a, **kwargs))

    def after_extra_networks_activate(self, p, **kwargs) -> None:
        self._each("after_extra_networks_activate", p, lambda s, a: s.after_extra_networks_activate(p, *a, **kwargs))

    def process_batch(self, p, **kwargs) -> None:
        self._each("process_batch", p, lambda s, a: s.process_batch(p, *a, **kwargs))

    def postprocess(self, p, processed) -> None:
        self._each("postprocess", p, lambda s, a: s.postprocess(p, processed, *a))

    def postprocess_batch(self, p, images, **kwargs) -> None:
        self._each("postprocess_batch", p, lambda s, a: s.postprocess_batch(p, *a, images=images, **kwargs))

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs) -> None:
        self._each("postprocess_batch_list", p, lambda s, a: s.postprocess_batch_list(p, pp, *a, **kwargs))

    def post_sample(self, p, ps: PostSampleArgs) -> None:
        self._each("post_sample", p, lambda s, a: s.post_sample(p, ps, *a))

    def on_mask_blend(self, p, mba: MaskBlendArgs) -> None:
        self._each("on_mask_blend", p, lambda s, a: s.on_mask_blend(p, mba, *a))

    def postprocess_image(self, p, pp: PostprocessImageArgs) -> None:
        self._each("postprocess_image", p, lambda s, a: s.postprocess_image(p, pp, *a))

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs) -> None:
        self._each("postprocess_maskoverlay", p, lambda s, a: s.postprocess_maskoverlay(p, ppmo, *a))

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs) -> None:
        self._each("postprocess_image_after_composite", p, lambda s, a: s.postprocess_image_after_composite(p, pp, *a))

    def before_hr(self, p) -> None:
        self._each("before_hr", p, lambda s, a: s.before_hr(p, *a))

    def has_hook(self, hook: str) -> bool:
        return any(_is_overridden(s, hook) for s in self.alwayson_scripts)

    # -- UI component callbacks --------------------------------------------------------------------
    def before_component(self, component, **kwargs) -> None:
        self._component_event("before", self.on_before_component_elem_id.get(kwargs.get("elem_id"), []),
                              component, kwargs)

    def after_component(self, component, **kwargs) -> None:
        self._component_event("after", self.on_after_component_elem_id.get(getattr(component, "elem_id", None), []),
                              component, kwargs)

    def _component_event(self, phase: str, elem_callbacks, component, kwargs) -> None:
        """A component is about to be / was made: the callbacks scripts registered for its elem_id,
        then every script's before_component / after_component; each failure is reported alone."""
        for callback, script in elem_callbacks:
            try:
                callback(OnComponent(component=component))
            except Exception:  # noqa: BLE001
                errors.report_for(script.filename, f"running on_{phase}_component")
        for script in self.scripts:
            try:
                getattr(script, f"{phase}_component")(component, **kwargs)
            except Exception:  # noqa: BLE001
                errors.report_for(script.filename, f"running {phase}_component")

    def reload_sources(self, cache) -> None:
        for si, script in list(enumerate(self.scripts)):
            module = cache.get(script.filename)
            if module is None:
                module = script_loading.load_module(script.filename)
                cache[script.filename] = module
            for value in module.__dict__.values():
                if inspect.isclass(value) and issubclass(value, Script) and value is not Script:
                    fresh = value()
                    fresh.filename, fresh.args_from, fresh.args_to = script.filename, script.args_from, script.args_to
                    self.scripts[si] = fresh

    def set_named_arg(self, args, script_type, arg_elem_id, value):
        script = next((x for x in self.scripts if type(x).__name__ == script_type), None)
        if script is None or not script.controls:
            return None
        for i, control in enumerate(script.controls):
            if arg_elem_id in (getattr(control, "elem_id", None) or ""):
                index = script.args_from + i
                if isinstance(args, list):
                    args[index] = value
                    return args
                if isinstance(args, tuple):
                    return args[:index] + (value,) + args[index + 1:]
                return None
        return None


def _args_of(p, script: Script) -> tuple:
    args = getattr(p, "script_args", None) or ()
    if script.args_from is None or script.args_to is None:
        return ()
    return tuple(args[script.args_from:script.args_to])


def _choices(control) -> list | None:
    choices = getattr(control, "choices", None)
    if choices is None:
        return None
    return [c[0] if isinstance(c, (tuple, list)) else c for c in choices]


def _choice_values(control) -> list | None:
    choices = getattr(control, "choices", None)
    if choices is None:
        return None
    return [c[1] if isinstance(c, (tuple, list)) and len(c) > 1 else c for c in choices]


def _initial_value(control):
    """A control's value as the script receives it (a radio/dropdown of type "index": its index)."""
    value = getattr(control, "value", None)
    if callable(value):
        try:
            value = value()
        except Exception:  # noqa: BLE001
            value = None
    if getattr(control, "type", None) == "index":
        values = _choice_values(control) or []
        if isinstance(value, list):
            return [values.index(v) for v in value if v in values]
        return values.index(value) if value in values else None
    return value


def _arg_info(control) -> dict:
    """A1111's ScriptArg: label, value, minimum, maximum, step, choices."""
    info: dict = {"label": getattr(control, "label", None) or "", "value": None, "minimum": None, "maximum": None,
                  "step": None, "choices": None}
    value = getattr(control, "value", None)
    info["value"] = None if callable(value) else value
    for name in ("minimum", "maximum", "step"):
        v = getattr(control, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            info[name] = v
    info["choices"] = _choices(control)
    return info


scripts_txt2img: ScriptRunner = ScriptRunner()
scripts_img2img: ScriptRunner = ScriptRunner()
scripts_img2img.is_img2img = True
scripts_postproc = scripts_postprocessing.ScriptPostprocessingRunner()  # the Extras steps (replaced by load_scripts)
scripts_current: ScriptRunner | None = None


def reload_script_body_only() -> None:
    cache: dict = {}
    scripts_txt2img.reload_sources(cache)
    scripts_img2img.reload_sources(cache)
