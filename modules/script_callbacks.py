"""A1111's `modules.script_callbacks`: extensions register functions to be called at fixed points.

Same names, parameter objects and semantics as A1111. Each registration remembers the file that
made it (`ScriptCallback.script`) and a unique name; each call is isolated: an exception in one
callback is reported with the extension's name (modules.errors.report_for) and the next callback
runs, so a broken extension never stops a generation. `clear_callbacks()` (a script reload) and
`remove_current_script_callbacks()` drop registrations, as in A1111.

Who fires what: the scripting runtime (modules.processing) fires the CFG, image-saved and grid
callbacks during a job; the model cache fires `model_loaded`; webui.py fires `app_started`,
`before_ui` and `ui_settings`; the UI (modules/ui) fires `ui_tabs`, the component callbacks and
`infotext_pasted`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Optional  # noqa: F401  (Optional: A1111 exports it here)

from modules import errors


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image = image  # the PIL image itself
        self.p = p  # the processing object (or an object with the same fields)
        self.filename = filename  # the file the image is (to be) saved to
        self.pnginfo = pnginfo  # dict of PNG text chunks; the infotext is under "parameters"


class ExtraNoiseParams:
    def __init__(self, noise, x, xi):
        self.noise = noise  # random noise from the seed
        self.x = x  # latent image
        self.xi = xi  # noisy latent image


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x  # latents about to be denoised (assign a new tensor or edit in place)
        self.image_cond = image_cond  # inpainting conditioning (None for other models)
        self.sigma = sigma  # noise level of this step, per image
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond  # prompt embeddings (SDXL: dict with "crossattn" and "vector")
        self.text_uncond = text_uncond  # negative prompt embeddings (None when CFG is off)
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x  # the model's raw output, cond rows then uncond rows (assign or edit in place)
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x  # the guided prediction the sampler steps with (assign to replace it)
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


class UiTrainTabParams:
    def __init__(self, txt2img_preview_params):
        self.txt2img_preview_params = txt2img_preview_params


class ImageGridLoopParams:
    def __init__(self, imgs, cols, rows):
        self.imgs = imgs
        self.cols = cols
        self.rows = rows


@dataclasses.dataclass
class BeforeTokenCounterParams:
    prompt: str
    steps: int
    styles: list
    is_positive: bool = True


@dataclasses.dataclass
class ScriptCallback:
    script: str  # the file that registered it
    callback: Callable
    name: str = None


callback_map: dict[str, list[ScriptCallback]] = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_train_tabs=[],
    callbacks_ui_settings=[],
    callbacks_before_image_saved=[],
    callbacks_image_saved=[],
    callbacks_extra_noise=[],
    callbacks_cfg_denoiser=[],
    callbacks_cfg_denoised=[],
    callbacks_cfg_after_cfg=[],
    callbacks_before_component=[],
    callbacks_after_component=[],
    callbacks_image_grid=[],
    callbacks_infotext_pasted=[],
    callbacks_script_unloaded=[],
    callbacks_before_ui=[],
    callbacks_on_reload=[],
    callbacks_list_optimizers=[],
    callbacks_list_unets=[],
    callbacks_before_token_counter=[],
)


def _caller_file() -> str:
    """The first file up the stack that is not this one: who registers (or removes) a callback."""
    here = os.path.normcase(os.path.abspath(__file__))
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if os.path.normcase(os.path.abspath(name)) != here:
            return name
        frame = frame.f_back
    return "unknown file"


def report_exception(c: ScriptCallback, job: str) -> None:
    errors.report_for(c.script, f"executing callback {job} ({c.name})")


def add_callback(callbacks: list, fun: Callable, *, name: str | None = None, category: str = "unknown",
                 filename: str | None = None) -> None:
    filename = filename or _caller_file()
    owner = errors.owner_of(filename) or "base"
    callback_name = f"{owner}/{os.path.basename(filename)}/{category}" + (f"/{name}" if name is not None else "")
    unique = callback_name
    taken = {c.name for c in callbacks}
    for index in range(1000):
        if unique not in taken:
            break
        unique = f"{callback_name}-{index + 1}"
    callbacks.append(ScriptCallback(filename, fun, unique))


def clear_callbacks() -> None:
    for callback_list in callback_map.values():
        callback_list.clear()


def _call_each(key: str, job: str, /, *args, **kwargs) -> None:
    for c in list(callback_map[key]):
        try:
            c.callback(*args, **kwargs)
        except Exception:  # noqa: BLE001 - isolated: reported under the extension's name
            report_exception(c, job)


def has(key: str) -> bool:
    """Whether anything is registered under `key` (lets the runtime skip building parameters)."""
    return bool(callback_map[key])


# ---- firing ------------------------------------------------------------------------------------

def app_started_callback(demo, app) -> None:
    _call_each("callbacks_app_started", "app_started_callback", demo, app)


def app_reload_callback() -> None:
    _call_each("callbacks_on_reload", "callbacks_on_reload")


def model_loaded_callback(sd_model) -> None:
    _call_each("callbacks_model_loaded", "model_loaded_callback", sd_model)


def ui_tabs_callback() -> list:
    res = []
    for c in list(callback_map["callbacks_ui_tabs"]):
        try:
            res += c.callback() or []
        except Exception:  # noqa: BLE001
            report_exception(c, "ui_tabs_callback")
    return res


def ui_train_tabs_callback(params: UiTrainTabParams) -> None:
    _call_each("callbacks_ui_train_tabs", "callbacks_ui_train_tabs", params)


def ui_settings_callback() -> None:
    _call_each("callbacks_ui_settings", "ui_settings_callback")


def before_image_saved_callback(params: ImageSaveParams) -> None:
    _call_each("callbacks_before_image_saved", "before_image_saved_callback", params)


def image_saved_callback(params: ImageSaveParams) -> None:
    _call_each("callbacks_image_saved", "image_saved_callback", params)


def extra_noise_callback(params: ExtraNoiseParams) -> None:
    _call_each("callbacks_extra_noise", "callbacks_extra_noise", params)


def cfg_denoiser_callback(params: CFGDenoiserParams) -> None:
    _call_each("callbacks_cfg_denoiser", "cfg_denoiser_callback", params)


def cfg_denoised_callback(params: CFGDenoisedParams) -> None:
    _call_each("callbacks_cfg_denoised", "cfg_denoised_callback", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams) -> None:
    _call_each("callbacks_cfg_after_cfg", "cfg_after_cfg_callback", params)


def before_component_callback(component, **kwargs) -> None:
    _call_each("callbacks_before_component", "before_component_callback", component, **kwargs)


def after_component_callback(component, **kwargs) -> None:
    _call_each("callbacks_after_component", "after_component_callback", component, **kwargs)


def image_grid_callback(params: ImageGridLoopParams) -> None:
    _call_each("callbacks_image_grid", "image_grid", params)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]) -> None:
    _call_each("callbacks_infotext_pasted", "infotext_pasted", infotext, params)


def script_unloaded_callback() -> None:
    for c in reversed(list(callback_map["callbacks_script_unloaded"])):
        try:
            c.callback()
        except Exception:  # noqa: BLE001
            report_exception(c, "script_unloaded")


def before_ui_callback() -> None:
    for c in reversed(list(callback_map["callbacks_before_ui"])):
        try:
            c.callback()
        except Exception:  # noqa: BLE001
            report_exception(c, "before_ui")


def list_optimizers_callback() -> list:
    res: list = []
    _call_each("callbacks_list_optimizers", "list_optimizers", res)
    return res


def list_unets_callback() -> list:
    res: list = []
    _call_each("callbacks_list_unets", "list_unets", res)
    return res


def before_token_counter_callback(params: BeforeTokenCounterParams) -> None:
    _call_each("callbacks_before_token_counter", "before_token_counter", params)


# ---- removing ----------------------------------------------------------------------------------

def remove_current_script_callbacks() -> None:
    filename = _caller_file()
    if filename == "unknown file":
        return
    for callback_list in callback_map.values():
        for c in [c for c in callback_list if c.script == filename]:
            callback_list.remove(c)


def remove_callbacks_for_function(callback_func: Callable) -> None:
    for callback_list in callback_map.values():
        for c in [c for c in callback_list if c.callback == callback_func]:
            callback_list.remove(c)


# ---- registering (A1111's public names) -----------------------------------------------------------

def on_app_started(callback, *, name=None):
    """Called when the server has started: `callback(demo: gr.Blocks | None, app: FastAPI)`."""
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started",
                 filename=_caller_file())


def on_before_reload(callback, *, name=None):
    """Called just before the server reloads."""
    add_callback(callback_map["callbacks_on_reload"], callback, name=name, category="on_reload", filename=_caller_file())


def on_model_loaded(callback, *, name=None):
    """Called when a checkpoint is loaded: `callback(sd_model)`."""
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded",
                 filename=_caller_file())


def on_ui_tabs(callback, *, name=None):
    """Called when the UI creates its tabs; return None or [(gr.Blocks, title, elem_id), ...]."""
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs", filename=_caller_file())


def on_ui_train_tabs(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_train_tabs"], callback, name=name, category="ui_train_tabs",
                 filename=_caller_file())


def on_ui_settings(callback, *, name=None):
    """Called before the settings are shown; add options with shared.opts.add_option(...)."""
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings",
                 filename=_caller_file())


def on_before_image_saved(callback, *, name=None):
    """Called before a picture is written: `callback(params: ImageSaveParams)`; changing
    params.image or params.pnginfo["parameters"] changes what is written."""
    add_callback(callback_map["callbacks_before_image_saved"], callback, name=name, category="before_image_saved",
                 filename=_caller_file())


def on_image_saved(callback, *, name=None):
    """Called after a picture was written: `callback(params: ImageSaveParams)`."""
    add_callback(callback_map["callbacks_image_saved"], callback, name=name, category="image_saved",
                 filename=_caller_file())


def on_extra_noise(callback, *, name=None):
    """Called before extra noise is added in img2img or hires fix: `callback(params: ExtraNoiseParams)`."""
    add_callback(callback_map["callbacks_extra_noise"], callback, name=name, category="extra_noise",
                 filename=_caller_file())


def on_cfg_denoiser(callback, *, name=None):
    """Called before each model call of the sampler: `callback(params: CFGDenoiserParams)`."""
    add_callback(callback_map["callbacks_cfg_denoiser"], callback, name=name, category="cfg_denoiser",
                 filename=_caller_file())


def on_cfg_denoised(callback, *, name=None):
    """Called after each model call, before guidance: `callback(params: CFGDenoisedParams)`."""
    add_callback(callback_map["callbacks_cfg_denoised"], callback, name=name, category="cfg_denoised",
                 filename=_caller_file())


def on_cfg_after_cfg(callback, *, name=None):
    """Called after guidance: `callback(params: AfterCFGCallbackParams)`."""
    add_callback(callback_map["callbacks_cfg_after_cfg"], callback, name=name, category="cfg_after_cfg",
                 filename=_caller_file())


def on_before_component(callback, *, name=None):
    """Called before a UI component is created: `callback(component, **kwargs)`."""
    add_callback(callback_map["callbacks_before_component"], callback, name=name, category="before_component",
                 filename=_caller_file())


def on_after_component(callback, *, name=None):
    """Called after a UI component is created: `callback(component, **kwargs)`."""
    add_callback(callback_map["callbacks_after_component"], callback, name=name, category="after_component",
                 filename=_caller_file())


def on_image_grid(callback, *, name=None):
    """Called before a grid is drawn: `callback(params: ImageGridLoopParams)`."""
    add_callback(callback_map["callbacks_image_grid"], callback, name=name, category="image_grid",
                 filename=_caller_file())


def on_infotext_pasted(callback, *, name=None):
    """Called when an infotext is pasted: `callback(infotext: str, params: dict)`; edit params."""
    add_callback(callback_map["callbacks_infotext_pasted"], callback, name=name, category="infotext_pasted",
                 filename=_caller_file())


def on_script_unloaded(callback, *, name=None):
    """Called before the scripts are reloaded (or the server stops)."""
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded",
                 filename=_caller_file())


def on_before_ui(callback, *, name=None):
    """Called before the UI is created."""
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui",
                 filename=_caller_file())


def on_list_optimizers(callback, *, name=None):
    """Called to list cross-attention optimizers: `callback(res: list)` appends to `res`."""
    add_callback(callback_map["callbacks_list_optimizers"], callback, name=name, category="list_optimizers",
                 filename=_caller_file())


def on_list_unets(callback, *, name=None):
    add_callback(callback_map["callbacks_list_unets"], callback, name=name, category="list_unets",
                 filename=_caller_file())


def on_before_token_counter(callback, *, name=None):
    add_callback(callback_map["callbacks_before_token_counter"], callback, name=name, category="before_token_counter",
                 filename=_caller_file())

