"""The ControlNet units of A1111's ``p``: the built-in ControlNet script's arguments (one per unit,
``alwayson_scripts.controlnet.args`` in the API, the accordion's units in the UI) made into the job's
``ControlJob`` and infotext, right before the core generates (modules.processing_run).

As sd-webui-controlnet: units without a picture take img2img's init picture (and its inpainting
mask); every enabled unit writes ``ControlNet N`` into the infotext. A unit that cannot run (unknown
model or preprocessor, no picture, a model for another family) stops the job with a RequestError on
``alwayson_scripts``, so the API answers 422 naming it.
"""

from __future__ import annotations

from modules.core.controlnet import ControlJob
from modules.services import controlnets

SCRIPT_TITLE = "ControlNet"


def script_args(p) -> list | None:
    """The ControlNet script's arguments in ``p`` (None: the script is not in the job's runner)."""
    runner = getattr(p, "scripts", None)
    script = runner.script(SCRIPT_TITLE) if runner is not None and hasattr(runner, "script") else None
    if script is None or script.args_from is None or script.args_to is None:
        return None
    return list((getattr(p, "script_args", None) or ())[script.args_from:script.args_to])


# what the extension's X/Y/Z axes set on p -> the unit field it overrides (scripts/controlnet.py adds the axes)
AXIS_FIELDS = {"control_net_enabled": "enabled", "control_net_model": "model", "control_net_weight": "weight",
               "control_net_guidance_start": "guidance_start", "control_net_guidance_end": "guidance_end",
               "control_net_control_mode": "control_mode", "control_net_resize_mode": "resize_mode",
               "control_net_module": "module", "control_net_pres": "processor_res",
               "control_net_pthr_a": "threshold_a", "control_net_pthr_b": "threshold_b"}


def with_axis_values(p, args: list) -> list:
    """The units with the X/Y/Z values ``p`` carries (the extension's ``selector``): a list gives one
    value per unit, a single value goes to every unit (``control_net_enabled``: to the first only)."""
    out = []
    for index, raw in enumerate(args):
        if isinstance(raw, controlnets.UnitArgs):
            raw = vars(raw)
        unit = dict(raw) if isinstance(raw, dict) else ({} if raw is None else dict(vars(raw)))
        for attr, field in AXIS_FIELDS.items():
            value = getattr(p, attr, None)
            if isinstance(value, (list, tuple)):
                value = value[index] if index < len(value) else None
            elif attr == "control_net_enabled" and index > 0:
                value = None
            if value is None:
                continue
            unit[field] = str(value).strip().lower() in ("true", "1") if attr == "control_net_enabled" else value
        out.append(unit)
    return out


def job_for(p) -> ControlJob | None:
    """The enabled units of ``p`` ready to run (None: none enabled); their infotext goes to
    ``p.extra_generation_params``."""
    args = script_args(p)
    if not args:
        return None
    units = controlnets.units_from_args(with_axis_values(p, args))
    if not any(u.enabled for u in units):
        return None
    init = p.init_images[0] if getattr(p, "init_images", None) else None
    if init is not None and not hasattr(init, "convert"):
        from modules.processing_run import _pil

        init = _pil(init)
    hires = bool(getattr(p, "enable_hr", False)) and not getattr(p, "init_images", None)  # txt2img's hires fix
    job, infotext = controlnets.prepare_job(units, width=int(p.width), height=int(p.height), init_image=init,
                                            init_mask=getattr(p, "image_mask", None),
                                            hires_height=int(getattr(p, "hr_upscale_to_y", 0) or 0) if hires else None,
                                            model=getattr(p, "sd_model", None),  # Control-LoRAs build on it
                                            # Revision units blank the text context when both prompts are empty
                                            empty_prompts=not getattr(p, "prompt", "") and not getattr(p, "negative_prompt", ""))
    p.extra_generation_params.update(infotext)
    return job
