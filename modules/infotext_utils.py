"""A1111's `modules.infotext_utils` (formerly `generation_parameters_copypaste`): reading an
infotext back into parameters, and the registry of "send to"/paste bindings extensions add to.

`parse_generation_parameters` is the core's reading with A1111's defaults filled in
(modules.core.infotext_defaults), then the on_infotext_pasted callbacks, then the
`infotext_skip_pasting` setting. The paste-button registry records what extensions register;
the UI connects those buttons once the page is built (modules/ui/send_to.py), so
`connect_paste_params_buttons` has nothing left to do when an extension calls it.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

from PIL import Image

from modules.core import infotext as _infotext
from modules.core.infotext_defaults import parse_generation_parameters as _parse
from modules.core.sampler_options import INFOTEXT_TO_OPTION as _SAMPLER_PARAMETER_KEYS

# infotext label -> setting name (A1111's older table; new code declares OptionInfo(infotext=...))
infotext_to_setting_name_mapping: list[tuple[str, str]] = [
    ("Clip skip", "CLIP_stop_at_last_layers"),
    ("Conditional mask weight", "inpainting_mask_weight"),
    ("Model hash", "sd_model_checkpoint"),
    ("ENSD", "eta_noise_seed_delta"),
    ("Noise multiplier", "initial_noise_multiplier"),
    ("Extra noise", "img2img_extra_noise"),
    ("RNG", "randn_source"),
    ("Emphasis", "emphasis"),
    ("VAE", "sd_vae"),
    ("Hires refiner", "hires_fix_refiner_pass"),  # the SDXL refiner's options (OptionInfo infotext= in A1111)
    ("Refiner switch by sampling steps", "refiner_switch_by_sample_steps"),
    ("Token merging ratio", "token_merging_ratio"),  # OptionInfo(infotext=...) in A1111
    ("Old prompt editing timelines", "use_old_scheduling"),  # (idem)
    ("Token merging ratio hr", "token_merging_ratio_hr"),
    ("VAE Encoder", "sd_vae_encode_method"),  # OptionInfo(infotext=...) in A1111
    ("VAE Decoder", "sd_vae_decode_method"),
    ("FP8 weight", "fp8_storage"),  # OptionInfo(infotext=...) in A1111
    ("Cache FP16 weight for LoRA", "cache_fp16_weight"),
    ("Pad conds", "pad_cond_uncond"),  # OptionInfo(infotext=...) in A1111
    ("Pad conds v0", "pad_cond_uncond_v0"),
    # A1111's "Sampler parameters" (their OptionInfo infotext names, and the keys A1111 writes)
    *_SAMPLER_PARAMETER_KEYS.items(),
]

paste_fields: dict[str, dict] = {}
registered_param_bindings: list["ParamBinding"] = []


class ParamBinding:
    def __init__(self, paste_button, tabname, source_text_component=None, source_image_component=None,
                 source_tabname=None, override_settings_component=None, paste_field_names=None):
        self.paste_button = paste_button
        self.tabname = tabname
        self.source_text_component = source_text_component
        self.source_image_component = source_image_component
        self.source_tabname = source_tabname
        self.override_settings_component = override_settings_component
        self.paste_field_names = paste_field_names or []


def reset() -> None:
    paste_fields.clear()
    registered_param_bindings.clear()


def quote(text) -> str:
    return _infotext.quote(text)


def unquote(text: str) -> str:
    return _infotext.unquote(text)


def _opts():
    try:
        from modules import shared
    except Exception:  # noqa: BLE001 - reading an infotext must work without the server's façade
        return None
    return getattr(shared, "opts", None)


def _option(name: str, default=None):
    opts = _opts()
    if opts is None:
        return default
    try:
        value = getattr(opts, name)
    except AttributeError:
        return default
    return default if value is None else value


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None) -> dict[str, Any]:
    """The infotext `x` as a dict of A1111's keys ("Prompt", "Negative prompt", "Steps", "Size-1",
    ...), the defaults of missing keys filled in; on_infotext_pasted callbacks may change it."""
    res = _parse(x or "")
    _infer_styles(res)
    if skip_fields is None:
        skip_fields = _option("infotext_skip_pasting", []) or []
    try:
        from modules import script_callbacks
    except ImportError:  # noqa: BLE001 - reading works without the scripting layer
        script_callbacks = None
    if script_callbacks is not None and hasattr(script_callbacks, "infotext_pasted_callback"):
        script_callbacks.infotext_pasted_callback(x, res)
    for key in skip_fields:
        res.pop(key, None)
    return res


def _infer_styles(res: dict) -> None:
    """A1111's `infotext_styles`: the styles the pasted prompts carry become "Styles array"."""
    from modules import shared
    from modules.services.styles import infer_styles

    styles = getattr(shared, "prompt_styles", None)
    if styles is not None:
        infer_styles(res, _option("infotext_styles", "Apply if any"), styles.extract_styles_from_prompt)


def create_override_settings_dict(text_pairs) -> dict[str, Any]:
    """["Clip skip: 2", ...] -> {"CLIP_stop_at_last_layers": 2, ...} for the settings that have an
    infotext label."""
    params = {}
    for pair in text_pairs or []:
        key, _, value = str(pair).partition(":")
        params[key.strip()] = value.strip()
    result = {}
    for label, setting in _mapping():
        value = params.get(label)
        if value is None:
            continue
        result[setting] = _cast(setting, value)
    return result


def _mapping() -> list[tuple[str, str]]:
    mapping = list(infotext_to_setting_name_mapping)
    opts = _opts()
    for key, info in (getattr(opts, "data_labels", None) or {}).items():
        label = getattr(info, "infotext", None)
        if label:
            mapping.append((label, key))
    return mapping


def _cast(setting: str, value):
    current = _option(setting)
    if isinstance(current, bool):
        return str(value).lower() in ("true", "1", "yes")
    if isinstance(current, int):
        try:
            return int(float(value))
        except ValueError:
            return value
    if isinstance(current, float):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def get_override_settings(params: dict, *, skip_fields=None) -> list[tuple[str, str, Any]]:
    """(infotext label, setting name, value) for every setting the infotext sets to a value other
    than the current one."""
    result = []
    for label, setting in _mapping():
        if skip_fields and label in skip_fields:
            continue
        value = params.get(label)
        if value is None:
            continue
        if setting == "sd_model_checkpoint":
            from modules import sd_models

            info = sd_models.get_closet_checkpoint_match(str(value))
            if info is None or info.title == _option("sd_model_checkpoint"):
                continue
            value = info.title
        else:
            value = _cast(setting, value)
            if value == _option(setting):
                continue
        result.append((label, setting, value))
    return result


def image_from_url_text(filedata):
    """A gallery entry, file dict, data URL or path -> PIL image (A1111)."""
    if filedata is None:
        return None
    if isinstance(filedata, Image.Image):
        return filedata
    if isinstance(filedata, list):
        if not filedata:
            return None
        filedata = filedata[0]
    if isinstance(filedata, tuple):
        filedata = filedata[0]
    if isinstance(filedata, dict):
        path = filedata.get("name") or filedata.get("path") or (filedata.get("image") or {}).get("path")
        if path and os.path.isfile(path):
            return Image.open(path)
        filedata = filedata.get("url") or filedata.get("data")
    if isinstance(filedata, str) and filedata.startswith("data:image/"):
        filedata = filedata.split(",", 1)[1]
        return Image.open(io.BytesIO(base64.b64decode(filedata)))
    if isinstance(filedata, str) and os.path.isfile(filedata):
        return Image.open(filedata)
    return None


def add_paste_fields(tabname: str, init_img, fields, override_settings_component=None) -> None:
    paste_fields[tabname] = {"init_img": init_img, "fields": fields,
                             "override_settings_component": override_settings_component}


def create_buttons(tabs_list) -> dict:
    import gradio as gr

    buttons = {}
    for tab in tabs_list:
        buttons[tab] = gr.Button(f"Send to {tab}", elem_id=f"{tab}_tab")
    return buttons


def bind_buttons(buttons, send_image, send_generate_info) -> None:
    """A1111's older API: register a binding per button."""
    for tabname, button in buttons.items():
        source_text = send_generate_info if not isinstance(send_generate_info, str) else None
        source_tab = send_generate_info if isinstance(send_generate_info, str) else None
        register_paste_params_button(ParamBinding(paste_button=button, tabname=tabname, source_text_component=source_text,
                                                  source_image_component=send_image, source_tabname=source_tab))


def register_paste_params_button(binding: ParamBinding) -> None:
    registered_param_bindings.append(binding)


def connect_paste_params_buttons() -> None:
    """The page connects the bindings in `registered_param_bindings` when it is built
    (modules/ui/send_to.py)."""


def send_image_and_dimensions(x):
    image = x if isinstance(x, Image.Image) else image_from_url_text(x)
    if image is None:
        return None, None, None
    return image, image.width, image.height


def restore_old_hires_fix_params(res: dict) -> None:
    """Old infotexts with "First pass size" become the hires-fix fields (A1111)."""
    firstpass_width = res.get("First pass size-1")
    firstpass_height = res.get("First pass size-2")
    if firstpass_width is None or firstpass_height is None:
        return
    width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    firstpass_width, firstpass_height = int(firstpass_width), int(firstpass_height)
    if firstpass_width == 0 or firstpass_height == 0:
        return
    res["Size-1"], res["Size-2"] = firstpass_width, firstpass_height
    res["Hires resize-1"], res["Hires resize-2"] = width, height
