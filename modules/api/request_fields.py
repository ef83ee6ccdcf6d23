"""A1111's request details around the core request: `infotext`, sampler names, task ids, the grid,
and `override_settings_restore_afterwards`.

- ``infotext`` (A1111's ``Api.apply_infotext``): a generation-parameters text fills the fields
  the request left out; a field the request sets, even to null, wins. txt2img reads the fields
  A1111's txt2img paste list names with an API field; img2img only its sampler and seed fields
  (A1111's img2img paste list has no API names for the rest). Settings the text names
  (Clip skip, ENSD, RNG, Emphasis, ...) join ``override_settings`` unless the request sets them
  or they already have that value; ``Model hash`` is not followed (A1111's default,
  "disable_weights_auto_swap").
- sampler: ``sampler_name``, else ``sampler_index``, else A1111's API default "Euler"; an old
  combined name ("DPM++ 2M Karras", ``k_dpmpp_2m_ka``) carries its schedule type, which an
  explicit ``scheduler`` overrides; schedule types by label (``Karras``) or id (``karras``).
- grid: A1111's API asks for no grid unless ``save_images`` (``do_not_save_grid = not
  save_images``), so the grid comes first in ``images`` only with save_images and the
  ``return_grid`` option; its infotext is then first in ``infotexts`` too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import string
from typing import Any, Callable, Mapping

from modules.core import samplers
from modules.core.infotext_defaults import parse_generation_parameters
from modules.core.infotext import parse_infotext
from modules.core.types import RequestError
from modules.services.styles import infer_styles

from .models import DEFAULT_SAMPLER

log = logging.getLogger(__name__)

# A1111's schedule type aliases (sd_schedulers: SGM Uniform is also "SGMUniform")
SCHEDULER_ALIASES = {"sgmuniform": "SGM Uniform"}


# ------------------------------------------------------------------------------------- values

def _number(kind: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return kind(value)
        number = float(str(value).strip())
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a finite number")
        if kind is int:
            if not number.is_integer():
                raise ValueError(f"{value!r} is not a whole number")
            return int(number)
        return number

    return convert


def _flag(value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _text(value: Any) -> str:
    return str(value)


INT, FLOAT = _number(int), _number(float)


def _sampler(d: dict) -> str | None:
    return d.get("Sampler") or None


def _scheduler(d: dict) -> str | None:
    return d.get("Schedule type") or None


def _enable_hr(raw: dict) -> bool | None:
    # A1111: "Denoising strength" and any hires key in the text (read from the text itself: A1111's
    # filled-in default "Hires resize-1: 0" would turn hires on for every img2img infotext)
    hires = any(k in raw for k in ("Hires upscale", "Hires upscaler", "Hires resize-1"))
    return True if "Denoising strength" in raw and hires else None


# api field -> (infotext key or a function of the parsed dict, conversion)
_SCRIPT_FIELDS: dict[str, tuple[Any, Callable]] = {  # A1111's Sampler and Seed scripts' paste fields
    "steps": ("Steps", INT),
    "sampler_name": (_sampler, _text),
    "scheduler": (_scheduler, _text),
    "seed": ("Seed", INT),
    "subseed": ("Variation seed", INT),
    "subseed_strength": ("Variation seed strength", FLOAT),
    "seed_resize_from_w": ("Seed resize from-1", INT),
    "seed_resize_from_h": ("Seed resize from-2", INT),
    # A1111's Refiner script (both tabs): "Refiner" is a checkpoint title, looked up (find_checkpoint)
    "refiner_checkpoint": ("Refiner", _text),
    "refiner_switch_at": ("Refiner switch at", FLOAT),
    "distilled_cfg_scale": ("Distilled CFG Scale", FLOAT),  # Forge's key (Flux dev), both tabs
}
_TXT2IMG_FIELDS: dict[str, tuple[Any, Callable]] = {
    "prompt": ("Prompt", _text),
    "negative_prompt": ("Negative prompt", _text),
    "cfg_scale": ("CFG scale", FLOAT),
    "width": ("Size-1", INT),
    "height": ("Size-2", INT),
    "batch_size": ("Batch size", INT),
    "denoising_strength": ("Denoising strength", FLOAT),
    "hr_scale": ("Hires upscale", FLOAT),
    "hr_upscaler": ("Hires upscaler", _text),
    "hr_second_pass_steps": ("Hires steps", INT),
    "hr_resize_x": ("Hires resize-1", INT),
    "hr_resize_y": ("Hires resize-2", INT),
    "hr_checkpoint_name": ("Hires checkpoint", _text),
    "hr_sampler_name": ("Hires sampler", _text),
    "hr_scheduler": ("Hires schedule type", _text),
    "hr_prompt": ("Hires prompt", _text),
    "hr_negative_prompt": ("Hires negative prompt", _text),
    "tiling": ("Tiling", _flag),
    **_SCRIPT_FIELDS,
}

# infotext key -> option (A1111's infotext_to_setting_name_mapping, the options Easel has)
SETTINGS_FROM_INFOTEXT = {
    "Clip skip": ("CLIP_stop_at_last_layers", INT),
    "Conditional mask weight": ("inpainting_mask_weight", FLOAT),
    "ENSD": ("eta_noise_seed_delta", INT),
    "Noise multiplier": ("initial_noise_multiplier", FLOAT),
    "Extra noise": ("img2img_extra_noise", FLOAT),
    "RNG": ("randn_source", _text),
    "Emphasis": ("emphasis", _text),
    "Hires refiner": ("hires_fix_refiner_pass", _text),
    "Refiner switch by sampling steps": ("refiner_switch_by_sample_steps", _flag),
    "Token merging ratio": ("token_merging_ratio", FLOAT),
    "Token merging ratio hr": ("token_merging_ratio_hr", FLOAT),
    "Old prompt editing timelines": ("use_old_scheduling", _flag),
    "VAE Encoder": ("sd_vae_encode_method", _text),  # OptionInfo(infotext=...) in A1111
    "VAE Decoder": ("sd_vae_decode_method", _text),
    "FP8 weight": ("fp8_storage", _text),  # OptionInfo(infotext=...) in A1111
    "Cache FP16 weight for LoRA": ("cache_fp16_weight", _flag),
    "Pad conds": ("pad_cond_uncond", _flag),  # OptionInfo(infotext=...) in A1111
    "Pad conds v0": ("pad_cond_uncond_v0", _flag),
}


def _sampler_parameter_settings() -> dict:
    """A1111's "Sampler parameters" keys (modules.core.sampler_options.INFOTEXT_TO_OPTION), each
    converted to its option's type."""
    import dataclasses

    from modules.core.sampler_options import INFOTEXT_TO_OPTION, SamplerOptions

    kinds = {f.name: type(f.default) for f in dataclasses.fields(SamplerOptions)}
    convert = {bool: _flag, int: INT, float: FLOAT, str: _text}
    return {key: (option, convert[kinds[option]]) for key, option in INFOTEXT_TO_OPTION.items()}


SETTINGS_FROM_INFOTEXT.update(_sampler_parameter_settings())


def apply_infotext(body: Any, img2img: bool, options: Mapping[str, Any],
                   allowed: Callable[[str, Any], bool] | None = None,
                   find_checkpoint: Callable[[str], str | None] | None = None,
                   extract_styles: Callable[[str, str], tuple[list[str], str, str]] | None = None) -> dict:
    """Fill `body` (a request model) from its `infotext`, A1111's way; returns the parsed params.
    `allowed(option, value)`: False for a setting the command line locks, which the text then
    does not set (as A1111's UI paste under --freeze-settings). `find_checkpoint(text)`: the title
    of the checkpoint a text names, or None (A1111's get_closet_checkpoint_match): the "Refiner"
    key goes through it, and a checkpoint not here leaves refiner_checkpoint unset, as in A1111.
    `extract_styles(prompt, negative)`: the styles database's, for A1111's `infotext_styles` (the
    styles the text's prompts carry go to `styles`, their text out of the prompts)."""
    text = getattr(body, "infotext", None)
    if not text:
        return {}
    if not isinstance(text, str):
        raise RequestError("infotext", f"must be text, got {type(text).__name__}")
    skip = list(options.get("infotext_skip_pasting") or [])  # A1111: those keys are not pasted
    raw = {k: v for k, v in parse_infotext(text).items() if k not in skip}
    params = {k: v for k, v in parse_generation_parameters(text).items() if k not in skip}
    if extract_styles is not None:
        infer_styles(params, options.get("infotext_styles") or "Apply if any", extract_styles)
    given = set(body.model_fields_set)
    fields = _SCRIPT_FIELDS if img2img else _TXT2IMG_FIELDS
    for field, (source, convert) in fields.items():
        if field in given:
            continue
        value = source(params) if callable(source) else params.get(source)
        if value is not None and field == "refiner_checkpoint" and find_checkpoint is not None:
            value = find_checkpoint(str(value))
        if value is None:
            continue
        try:
            setattr(body, field, convert(value))
        except ValueError as exc:
            raise RequestError("infotext", f"{source if isinstance(source, str) else field}: {exc}") from None
    if not img2img and "enable_hr" not in given and _enable_hr(raw):
        body.enable_hr = True
    if isinstance(params.get("Styles array"), list) and "styles" not in given:
        body.styles = list(params["Styles array"])

    overrides = dict(body.override_settings or {})
    for key, (option, convert) in SETTINGS_FROM_INFOTEXT.items():
        if key not in raw or option in overrides:
            continue
        try:
            value = convert(raw[key])
        except ValueError as exc:
            raise RequestError("infotext", f"{key}: {exc}") from None
        if options.get(option) != value and (allowed is None or allowed(option, value)):
            overrides[option] = value
    _swap_weights(raw, options, overrides, allowed, find_checkpoint)
    body.override_settings = overrides
    return params


def _swap_weights(raw: Mapping[str, Any], options: Mapping[str, Any], overrides: dict,
                  allowed: Callable[[str, Any], bool] | None,
                  find_checkpoint: Callable[[str], str | None] | None) -> None:
    """A1111's disable_weights_auto_swap off: the text's checkpoint ("Model hash"; here also
    "Model" when the hash names none here) becomes the job's sd_model_checkpoint, when it is here and is not
    the selected one. The request's own override_settings may set the option for its job."""
    if overrides.get("disable_weights_auto_swap", options.get("disable_weights_auto_swap", True)):
        return
    if "sd_model_checkpoint" in overrides or find_checkpoint is None:
        return
    title = next((t for t in (find_checkpoint(str(raw[k])) for k in ("Model hash", "Model") if raw.get(k)) if t), None)
    if title and title != options.get("sd_model_checkpoint") and (allowed is None or allowed("sd_model_checkpoint", title)):
        overrides["sd_model_checkpoint"] = title


# ------------------------------------------------------------------------------------ sampler

def _schedule_known(name: str) -> bool:
    return name.strip().lower() in {k.lower() for pair in samplers.SCHEDULE_TYPES for k in pair}


def sampler_fields(data: Mapping[str, Any]) -> dict[str, str]:
    """The core's sampler_name and scheduler for a request dict, or a RequestError naming the field."""
    field = "sampler_name" if data.get("sampler_name") else "sampler_index"
    name = data.get("sampler_name") or data.get("sampler_index") or DEFAULT_SAMPLER
    schedule = data.get("scheduler")
    if isinstance(schedule, str):
        schedule = SCHEDULER_ALIASES.get(schedule.strip().lower(), schedule)
    try:
        spec = samplers.get_spec(name)
    except ValueError as exc:
        raise RequestError(field, str(exc)) from None
    if schedule and not _schedule_known(schedule):
        known = ", ".join(f"{label} ({sid})" for label, sid in samplers.SCHEDULE_TYPES)
        raise RequestError("scheduler", f"unknown schedule type '{schedule}'; known: {known}")
    explicit = schedule if schedule and schedule.strip().lower() != "automatic" else None
    try:  # an explicit schedule type wins over the one a combined name carries (A1111)
        sampler, label = samplers.resolve(spec.name if explicit else name, explicit)
    except ValueError as exc:
        raise RequestError("scheduler", str(exc)) from None
    return {"sampler_name": sampler, "scheduler": label}


# ----------------------------------------------------------------------------------- task ids

def new_task_id(kind: str) -> str:
    """A1111's create_task_id: task(<kind>-<7 upper-case letters and digits>)."""
    return f"task({kind}-{''.join(random.choices(string.ascii_uppercase + string.digits, k=7))})"


# ---------------------------------------------------------------------------------------- grid

def grid_wanted(body: Any, options: Mapping[str, Any]) -> bool:
    overrides = getattr(body, "override_settings", None) or {}
    return_grid = overrides.get("return_grid", options.get("return_grid"))
    return bool(getattr(body, "save_images", False)) and not getattr(body, "do_not_save_grid", False) and bool(return_grid)


# --------------------------------------------------------------------------- kept overrides

async def keep_overrides(engine: Any, body: Any) -> None:
    """override_settings_restore_afterwards = false: the job's override_settings stay set (A1111
    sets them on the options and does not put them back). Not saved to config.json, as in A1111
    (except that selecting a checkpoint saves it, as Easel always does)."""
    if getattr(body, "override_settings_restore_afterwards", True) is not False:
        return
    for key, value in (body.override_settings or {}).items():
        try:
            if key == "sd_model_checkpoint":
                await asyncio.to_thread(engine.select_checkpoint, value)
            else:
                engine.options.set(key, value)
        except ValueError as exc:  # validated before the job ran; report, do not fail the answer
            log.warning("override_settings.%s could not be kept: %s", key, exc)
