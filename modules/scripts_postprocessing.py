"""A1111's `modules.scripts_postprocessing`: the Extras tab's scripts and their runner.

A postprocessing script subclasses `ScriptPostprocessing`: `name` (its title, the key of the
`postprocessing_operation_order` / `postprocessing_disable_in_extras` settings and of
`create_args_for_run`), `order` (its place when the order setting does not name it), `ui()`
returning a dict {argument name: Gradio control}, and `process(pp, **args)` with those names. Every
`scripts/*.py` of the repository and of the active extensions is searched for such classes at start
(modules.scripts.load_scripts -> `postprocessing_scripts_data`); `modules.scripts.scripts_postproc`
is the runner the Extras tab, the API and `modules.postprocessing` use. Easel's own Extras steps are
such scripts (scripts/postprocessing_*.py).

Per picture the runner calls every script's `process_firstpass` (look, set `pp.shared`), then each
script's `process` on the picture and on every copy made so far (`pp.extra_images`: pictures or
`PostprocessedImage`s, which later scripts process too unless `disable_processing`). `pp.info`
becomes the PNG's `postprocessing` text, `pp.nametags` the file name's suffix, `pp.caption` a .txt
file next to the saved picture (`postprocessing_existing_caption_action`).

Easel's additions: `check(pp, **args)`, an optional method a script may define to refuse its
arguments before the job is queued (raise modules.core.types.RequestError naming the field); an
extension's script that fails in `process` is reported, credited to its extension, and the next
script runs (Easel's own scripts' failures fail the job, as A1111's do).
"""

from __future__ import annotations

import dataclasses
import os
import threading

from modules import errors, shared


@dataclasses.dataclass
class PostprocessedImageSharedInfo:
    """What the copies of one picture share (the Upscale script's target size, read by Split)."""

    target_width: int = None
    target_height: int = None


class PostprocessedImage:
    def __init__(self, image):
        self.image = image
        self.info = {}
        self.shared = PostprocessedImageSharedInfo()
        self.extra_images = []
        self.nametags = []
        self.disable_processing = False
        self.caption = None

    def get_suffix(self, used_suffixes=None):
        """"-tag1-tag2" from the nametags, made unique among `used_suffixes` with "-1", "-2", ..."""
        used_suffixes = {} if used_suffixes is None else used_suffixes
        suffix = "-".join(self.nametags)
        if suffix:
            suffix = "-" + suffix
        if suffix not in used_suffixes:
            used_suffixes[suffix] = 1
            return suffix
        for i in range(1, 100):
            candidate = f"{suffix}-{i}"
            if candidate not in used_suffixes:
                used_suffixes[candidate] = 1
                return candidate
        return suffix

    def create_copy(self, new_image, *, nametags=None, disable_processing=False):
        """A further picture from this one: same shared info, nametags and info (copied)."""
        pp = PostprocessedImage(new_image)
        pp.shared = self.shared
        pp.nametags = self.nametags.copy()
        pp.info = self.info.copy()
        pp.disable_processing = disable_processing
        if nametags is not None:
            pp.nametags += nametags
        return pp


class ScriptPostprocessing:
    filename = None
    controls = None
    args_from = None
    args_to = None

    order = 1000
    """Place in the Extras tab and in processing when postprocessing_operation_order does not name it."""

    name = None
    """The title."""

    group = None
    """The Gradio block holding the script's controls."""

    def ui(self):
        """Create the Gradio controls; return {argument name: control}. The values arrive as
        keyword arguments of process()."""

    def process(self, pp: PostprocessedImage, **args):
        """Postprocess pp.image (replace it, add to pp.info, pp.extra_images, pp.nametags, pp.caption)."""

    def process_firstpass(self, pp: PostprocessedImage, **args):
        """Called for every script before any process(): look at the picture, set pp.shared."""

    def image_changed(self):
        """The Extras tab's source picture changed (drop what was cached for it)."""


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception:  # noqa: BLE001 - reported, credited to the script's extension
        errors.report_for(filename, f"calling {os.path.basename(filename or '')}/{funcname}")
    return default


def _request_error():
    from modules.core.types import RequestError

    return RequestError


class ScriptPostprocessingRunner:
    def __init__(self):
        self.scripts = None
        self.ui_created = False
        self._lock = threading.RLock()

    def initialize_scripts(self, scripts_data):
        """Fresh instances of the classes of `scripts_data` (ScriptClassData rows). "Simple Upscale"
        belongs to txt2img/img2img (A1111), not to Extras."""
        self.scripts = []
        for data in scripts_data:
            try:
                script = data.script_class()
            except Exception:  # noqa: BLE001
                errors.report_for(data.path, f"creating {data.script_class.__name__}")
                continue
            script.filename = data.path
            if script.name == "Simple Upscale":
                continue
            self.scripts.append(script)

    def create_script_ui(self, script, inputs):
        script.args_from = len(inputs)
        script.args_to = len(inputs)
        controls = wrap_call(script.ui, script.filename, "ui")
        if controls is None:
            controls = {}
        elif not isinstance(controls, dict):
            errors.report(f"Error in {script.filename}: ui() of postprocessing script {script.name!r} must return "
                          f"a dict of argument name -> control, got {type(controls).__name__}")
            controls = {}
        script.controls = controls
        for control in controls.values():
            try:
                control.custom_script_source = os.path.basename(script.filename or "")
            except Exception:  # noqa: BLE001 - a control that refuses attributes still works
                pass
        inputs += list(controls.values())
        script.args_to = len(inputs)

    def scripts_in_preferred_order(self):
        """The scripts Extras runs, in order: those named in postprocessing_operation_order first
        (in its order), then the others by `order`, then name; postprocessing_disable_in_extras left out."""
        if self.scripts is None:
            import modules.scripts

            self.initialize_scripts(modules.scripts.current_postprocessing_scripts_data())
        preferred = list(getattr(shared.opts, "postprocessing_operation_order", None) or [])
        disabled = set(getattr(shared.opts, "postprocessing_disable_in_extras", None) or [])
        chosen = [s for s in self.scripts if s.name not in disabled]

        def score(item):
            index, script = item
            rank = preferred.index(script.name) if script.name in preferred else len(self.scripts)
            return rank, script.order, str(script.name), index

        return [script for _, script in sorted(enumerate(chosen), key=score)]

    def setup_ui(self):
        """Create every script's controls, in order, each in its own row; returns the inputs."""
        import gradio as gr

        with self._lock:
            inputs = []
            for script in self.scripts_in_preferred_order():
                with gr.Row() as group:
                    self.create_script_ui(script, inputs)
                script.group = group
            self.ui_created = True
            return inputs

    def ensure_layout(self):
        """Without a UI (the API, a test): build the controls once in a throwaway gr.Blocks, to learn
        each script's argument positions (A1111's API does the same)."""
        with self._lock:
            current = self.scripts_in_preferred_order()
            if self.ui_created and all(s.controls is not None and s.args_to is not None for s in current):
                return
            import gradio as gr

            with gr.Blocks(analytics_enabled=False):
                self.setup_ui()

    def _process_args(self, script, args) -> dict:
        values = list(args[script.args_from:script.args_to]) if script.args_from is not None else []
        names = list((script.controls or {}).keys())
        return dict(zip(names, values + [None] * (len(names) - len(values))))

    def _call(self, script, method: str, pp, process_args: dict) -> None:
        try:
            getattr(script, method)(pp, **process_args)
        except _request_error():
            raise
        except Exception:
            if errors.owner_of(script.filename) is None:  # Easel's own scripts: the job fails
                raise
            errors.report_for(script.filename, f"running {method} of postprocessing script {script.name!r}")

    def run(self, pp: PostprocessedImage, args):
        """Postprocess one picture: every script's process_firstpass, then each script's process
        on the picture and on every copy so far. The copies end in pp.extra_images."""
        scripts = [(script, self._process_args(script, args)) for script in self.scripts_in_preferred_order()]
        for script, process_args in scripts:
            self._call(script, "process_firstpass", pp, process_args)
        all_images = [pp]
        for script, process_args in scripts:
            if shared.state.skipped or shared.state.interrupted:
                break
            shared.state.job = script.name
            for single in list(all_images):
                if not single.disable_processing:
                    self._call(script, "process", single, process_args)
                for extra in single.extra_images:
                    all_images.append(extra if isinstance(extra, PostprocessedImage) else single.create_copy(extra))
                single.extra_images.clear()
        pp.extra_images = all_images[1:]

    def check(self, pp: PostprocessedImage, args) -> None:
        """Easel: every script's own check(pp, **args), where it has one (RequestError naming the field)."""
        request_error = _request_error()
        for script in self.scripts_in_preferred_order():
            check = getattr(script, "check", None)
            if not callable(check):
                continue
            try:
                check(pp, **self._process_args(script, args))
            except request_error:
                raise
            except (TypeError, ValueError) as exc:  # a value of the wrong kind (the API's postprocessing_scripts)
                raise request_error(f"postprocessing_scripts.{script.name}", f"bad arguments: {exc}") from None

    def create_args_for_run(self, scripts_args):
        """The positional argument list from {script name: {argument name: value}}; what is not
        given is None (A1111)."""
        self.ensure_layout()
        scripts = self.scripts_in_preferred_order()
        args = [None] * max([s.args_to for s in scripts], default=0)
        for script in scripts:
            given = scripts_args.get(script.name)
            if given is not None:
                for i, name in enumerate(script.controls or {}):
                    args[script.args_from + i] = given.get(name, None)
        return args

    def image_changed(self):
        for script in self.scripts_in_preferred_order():
            wrap_call(script.image_changed, script.filename, "image_changed")


LIST_OPTIONS = ("postprocessing_enable_in_main_ui", "postprocessing_disable_in_extras", "postprocessing_operation_order")


def script_names() -> list[str]:
    """The names of the loaded postprocessing scripts (the choices of the settings above)."""
    import modules.scripts

    return [data.script_class.name for data in modules.scripts.current_postprocessing_scripts_data()
            if getattr(data.script_class, "name", None)]


def describe_options() -> None:
    """The Settings tab shows the settings that list scripts as a multiple choice of the loaded
    scripts' names, in the order picked (A1111's DropdownMulti)."""
    from modules import ui_components
    from modules.options import OptionInfo

    defs = shared.opts.settings.defs
    for key in LIST_OPTIONS:
        d = defs.get(key)
        if d is not None:
            d.info = OptionInfo(d.default, d.label, ui_components.DropdownMulti, lambda: {"choices": script_names()},
                                section=(d.section_id, d.section))
