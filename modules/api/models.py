"""Pydantic models of A1111's /sdapi/v1 request and response bodies.

Fields shared with the core request take their bounds and descriptions from
`GenerationRequest`'s field specs. Every request field is optional: `null` or absent
means "the default", and unknown fields are ignored, as clients such as `webuiapi`
send dozens of deprecated ones.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from modules.core.types import GenerationRequest

_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict}


def _core_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, fs in GenerationRequest.field_specs().items():
        if name in ("checkpoint", "extra", "clip_skip", "save_images"):
            continue  # reached through A1111's own fields below
        annotation = GenerationRequest.__dataclass_fields__[name].type
        py = _TYPES[str(annotation).split("|")[0].strip()]
        bounds = {}
        if fs.minimum is not None:
            bounds["ge"] = fs.minimum
        if fs.maximum is not None:
            bounds["le"] = fs.maximum
        fields[name] = (Optional[py], Field(None, description=fs.description, **bounds))
    return fields


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


_A1111_ONLY: dict[str, Any] = {
    "styles": (Optional[list[str]], Field(None, description="Style names (applied by the styles issue).")),
    "sampler_index": (Optional[str], Field(None, description="Old name of sampler_name.")),
    "restore_faces": (Optional[bool], None),
    "tiling": (Optional[bool], None),
    "do_not_save_samples": (Optional[bool], None),
    "do_not_save_grid": (Optional[bool], None),
    "eta": (Optional[float], None),
    "denoising_strength": (Optional[float], None),
    "s_min_uncond": (Optional[float], None),
    "s_churn": (Optional[float], None),
    "s_tmax": (Optional[float], None),
    "s_tmin": (Optional[float], None),
    "s_noise": (Optional[float], None),
    "override_settings": (Optional[dict[str, Any]], Field(None, description="Options for this request only.")),
    "override_settings_restore_afterwards": (Optional[bool], True),
    "refiner_checkpoint": (Optional[str], None),
    "refiner_switch_at": (Optional[float], None),
    "disable_extra_networks": (Optional[bool], None),
    "comments": (Optional[dict[str, Any]], None),
    "enable_hr": (Optional[bool], None),
    "firstphase_width": (Optional[int], None),
    "firstphase_height": (Optional[int], None),
    "hr_scale": (Optional[float], None),
    "hr_upscaler": (Optional[str], None),
    "hr_second_pass_steps": (Optional[int], None),
    "hr_resize_x": (Optional[int], None),
    "hr_resize_y": (Optional[int], None),
    "hr_checkpoint_name": (Optional[str], None),
    "hr_sampler_name": (Optional[str], None),
    "hr_scheduler": (Optional[str], None),
    "hr_prompt": (Optional[str], None),
    "hr_negative_prompt": (Optional[str], None),
    "force_task_id": (Optional[str], None),
    "script_name": (Optional[str], None),
    "script_args": (Optional[list[Any]], None),
    "send_images": (Optional[bool], Field(True, description="Return the images in the response.")),
    "save_images": (Optional[bool], Field(False, description="Save the images to the outputs folder.")),
    "alwayson_scripts": (Optional[dict[str, Any]], None),
    "infotext": (Optional[str], None),
}

StableDiffusionTxt2ImgProcessingAPI = create_model(
    # a core field (typed, with bounds) wins over the same A1111 name listed above
    "StableDiffusionTxt2ImgProcessingAPI", __base__=_Lenient, **{**_A1111_ONLY, **_core_fields()}
)


class TextToImageResponse(BaseModel):
    images: Optional[list[str]] = Field(None, description="Base64 PNG images.")
    parameters: dict[str, Any]
    info: str


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: Optional[list[str]] = None
    default_rho: Optional[float] = -1
    need_inner_model: Optional[bool] = False


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: Optional[str] = None
    sha256: Optional[str] = None
    filename: str
    config: Optional[str] = None


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: Optional[str] = None
    textinfo: Optional[str] = None
    current_task: Optional[str] = None
