"""A1111's `modules.shared`: what extensions read about the running server.

A thin façade: the composition root (webui.py) calls `bind(engine, cmd_opts)` at start, and from
then on `opts` is the engine's settings, `state` its job state, `sd_model` the loaded checkpoint,
`device` the device it runs on, `prompt_styles` the styles, `sd_upscalers` the image upscalers,
`interrogator` Interrogate CLIP (modules.interrogate).
Before `bind` (an extension imported early, a unit test) they hold defaults. The core never
imports this module.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

import torch

from modules.options import OptionHTML, OptionInfo, Options, categories, options_section  # noqa: F401
from modules.paths_internal import (  # noqa: F401  (A1111 re-exports these here)
    data_path,
    extensions_builtin_dir,
    extensions_dir,
    models_path,
    script_path,
    sd_configs_path,
)

engine = None  # modules.services.engine.Engine of the running server (None before bind)


def _default_cmd_opts() -> argparse.Namespace:
    try:
        from modules import cmd_args

        return cmd_args.defaults()
    except BaseException:  # noqa: BLE001 - never fail an import over flags
        return argparse.Namespace()


cmd_opts: argparse.Namespace = _default_cmd_opts()
opts = Options()
demo = None  # the Gradio Blocks once the UI exists
hide_dirs = {"visible": not getattr(cmd_opts, "hide_ui_dir_config", False)}
parallel_processing_allowed = False
xformers_available = False
hypernetworks: dict = {}
loaded_hypernetworks: list = []
face_restorers: list = []
sd_upscalers: list = []
latent_upscale_default_mode = "Latent"
latent_upscale_modes: dict = {}
gradio_theme = None
batch_cond_uncond = True  # A1111's old module-level flag (its option of the same name wins where read)
log = __import__("logging").getLogger("sd")  # A1111's logger extensions write to
restricted_opts: set = opts.restricted_opts  # A1111's folder options, locked by --hide-ui-dir-config
config_filename = getattr(cmd_opts, "ui_settings_file", None)


# ---- state --------------------------------------------------------------------------------------

# A1111 State fields Easel's JobState does not keep (read as these values)
_STATE_DEFAULTS = {"current_image_sampling_step": 0, "server_command": None, "textinfo2": None,
                   "stopping_generation": False, "id_live_preview": 0, "time_start": None}


class State:
    """`shared.state`: A1111's job state, read and written through to the server's JobState.

    A script that sets `job_count` announces how many jobs it will run (X/Y/Z plot: one per cell);
    `announced_job_count` keeps that, so each process_images() call counts on from the jobs done
    instead of starting over."""

    _own = ("_target", "announced_job_count", "_lock")

    def __init__(self, target=None):
        from modules.services.jobs import JobState

        object.__setattr__(self, "_target", target if target is not None else JobState())
        object.__setattr__(self, "announced_job_count", None)
        object.__setattr__(self, "_lock", threading.Lock())

    def bind(self, target) -> None:
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        target = object.__getattribute__(self, "_target")
        if not hasattr(target, name) and name in _STATE_DEFAULTS:
            return _STATE_DEFAULTS[name]
        return getattr(target, name)

    def __setattr__(self, name, value):
        if name in self._own:
            return object.__setattr__(self, name, value)
        if name == "job_count":
            object.__setattr__(self, "announced_job_count", value if isinstance(value, int) and value > 0 else None)
        setattr(self._target, name, value)

    # A1111's methods beyond JobState's
    def interrupt(self):
        self._target.interrupt()

    def skip(self):
        self._target.skip()

    def stop_generating(self):
        self._target.stopping_generation = True

    def nextjob(self):
        t = self._target
        t.job_no += 1
        t.sampling_step = 0
        t.current_image_sampling_step = 0

    def begin(self, job: str = "(unknown)"):
        object.__setattr__(self, "announced_job_count", None)
        self._target.begin(job)

    def end(self):
        self._target.end()

    def dict(self) -> dict:
        return self._target.as_dict()

    def set_current_image(self):
        """A1111 decodes a preview here; Easel's progress endpoint makes its own."""

    def do_set_current_image(self):
        """See set_current_image."""

    def assign_current_image(self, image):
        self._target.current_image = image

    @property
    def processing_has_refined_job_count(self) -> bool:
        return self.announced_job_count is not None

    @property
    def need_restart(self) -> bool:
        return False

    @property
    def server_start(self) -> float:
        return _server_start


_server_start = 0.0
state = State()


class TotalTQDM:
    """A1111's console progress bar over all jobs; Easel shows progress in the UI and the API."""

    def reset(self):
        pass

    def update(self):
        pass

    def updateTotal(self, new_total):  # noqa: N802 - A1111's name
        pass

    def clear(self):
        pass


total_tqdm = TotalTQDM()


# ---- styles, upscalers --------------------------------------------------------------------------

class PromptStyles:
    """`shared.prompt_styles` over the engine's StyleDatabase (A1111's StyleDatabase methods)."""

    def __init__(self, database=None):
        self.database = database

    @property
    def styles(self) -> dict:
        if self.database is None:
            return {}
        return {s.name: s for s in self.database.items()}

    def _texts(self, names, negative: bool) -> list[str]:
        if self.database is None:
            return []
        return [(s.negative_prompt if negative else s.prompt) for s in self.database.resolve(list(names or []))]

    def apply_styles_to_prompt(self, prompt, styles):
        from modules.services.styles import apply_styles_to_prompt

        return apply_styles_to_prompt(prompt, self._texts(styles, False))

    def apply_negative_styles_to_prompt(self, prompt, styles):
        from modules.services.styles import apply_styles_to_prompt

        return apply_styles_to_prompt(prompt, self._texts(styles, True))

    def get_style_prompts(self, styles):
        return self._texts(styles, False)

    def get_negative_style_prompts(self, styles):
        return self._texts(styles, True)

    def reload(self):
        if self.database is not None:
            self.database.reload()

    def extract_styles_from_prompt(self, prompt, negative_prompt):
        if self.database is None:
            return [], prompt, negative_prompt
        return self.database.extract(prompt, negative_prompt)


prompt_styles = PromptStyles()


class UpscalerData:
    """One entry of `shared.sd_upscalers` (A1111's fields); `scaler` is the modules.upscaler.Upscaler
    that upscales with it (`scaler.upscale(image, scale, data_path)`)."""

    def __init__(self, name: str, scale: float = 4, model_path: str | None = None, model_url: str | None = None):
        from modules.upscaler import Upscaler

        self.name = name
        self.data_path = model_path
        self.local_data_path = model_path
        self.model_path = model_path
        self.model_url = model_url
        self.scale = scale
        self.scaler = Upscaler(name=name)
        self.scaler.model_path, self.scaler.model_url = model_path, model_url
        self.scaler.scalers = [self]
        self.model = None

    def __repr__(self) -> str:
        return f"<UpscalerData name={self.name} scale={self.scale}>"


def _upscalers() -> list[UpscalerData]:
    from modules.core import upscaling

    return [UpscalerData(u.name, u.scale, u.model_path, u.model_url) for u in upscaling.image_upscalers()]


def _latent_modes() -> dict:
    from modules.core import upscaling

    return {name: {"mode": name} for name in upscaling.latent_modes()}


# ---- binding ------------------------------------------------------------------------------------

def bind(engine_: Any, cmd_opts_: argparse.Namespace | None = None) -> None:
    """Point the façade at the running server (webui.py, once the engine exists)."""
    global engine, cmd_opts, config_filename, _server_start
    import time

    engine = engine_
    if cmd_opts_ is not None:
        cmd_opts = cmd_opts_
        hide_dirs["visible"] = not getattr(cmd_opts_, "hide_ui_dir_config", False)
    config_filename = str(engine_.options.path) if engine_.options.path else config_filename
    opts.bind(engine_.options)
    state.bind(engine_.state)
    prompt_styles.database = engine_.styles
    sd_upscalers[:] = _upscalers()
    latent_upscale_modes.clear()
    latent_upscale_modes.update(_latent_modes())
    _server_start = time.time()


def _current_device() -> torch.device:
    if engine is not None:
        return engine.models.policy.device
    from modules.core.devices import choose_policy

    return choose_policy()[0].device


def __getattr__(name: str):
    # A1111's shared.sd_model and shared.device follow the loaded model; module attributes
    # cannot be properties, so they are answered here (only names not defined above get here)
    if name == "sd_model":
        return engine.models.model if engine is not None else None
    if name == "device":
        return _current_device()
    if name == "interrogator":  # A1111's Interrogate CLIP (modules.interrogate)
        from modules import interrogate

        return interrogate.interrogator
    if name == "mem_mon":  # A1111's memory monitor, made when first asked for
        from modules import memmon

        globals()["mem_mon"] = memmon.MemUsageMonitor("MemMon", _current_device(), opts)
        return globals()["mem_mon"]
    raise AttributeError(f"module 'modules.shared' has no attribute '{name}'")


def listfiles(dirname: str) -> list[str]:
    import os

    names = sorted(n for n in os.listdir(dirname) if not n.startswith("."))
    return [os.path.join(dirname, n) for n in names if os.path.isfile(os.path.join(dirname, n))]


def walk_files(path: str, allowed_extensions=None):
    import os

    if not os.path.exists(path):
        return
    allowed = set(allowed_extensions) if allowed_extensions else None
    show_hidden = getattr(opts, "list_hidden_files", True)  # A1111: files in ".name" folders, or not
    for root, dirs, files in os.walk(path, followlinks=True):
        if not show_hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        for filename in sorted(files):
            if allowed is None or os.path.splitext(filename)[1] in allowed:
                yield os.path.join(root, filename)


def html_path(filename: str) -> str:
    import os

    return os.path.join(script_path, "html", filename)


def html(filename: str) -> str:
    import os

    path = html_path(filename)
    if os.path.exists(path):
        with open(path, encoding="utf8") as file:
            return file.read()
    return ""


def reload_gradio_theme(theme_name=None):
    """A1111 switches the Gradio theme here; Easel's page takes the gradio_theme option when it is built
    (modules.ui.app.page_theme; `gradio_theme` above is the page's theme once it is served)."""

