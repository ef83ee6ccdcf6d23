"""Pydantic models of A1111's /sdapi/v1 request and response bodies.

Fields shared with the core request take their bounds and descriptions from the core's field specs
(`GenerationRequest` for txt2img, `Img2ImgRequest` for img2img). Every request field is optional:
`null` or absent means "the default", and unknown fields are ignored, as clients such as `webuiapi`
send dozens of deprecated ones.

img2img `width`/`height`: A1111's API defaults them to 512; here absent or null means the first
init image's size (rounded down to a multiple of 8), as in the core and A1111's "Resize by 1".
A1111 clients nearly always send both, and then they are used as given.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from modules.core.types import GenerationRequest, Img2ImgRequest

# core fields the API reaches through A1111's own fields (override_settings, save_images)
NOT_AT_TOP_LEVEL = ("checkpoint", "extra", "clip_skip", "save_images")
# txt2img only: A1111's img2img request has no hires fix (they are ignored there, as unknown fields)
HIRES_FIELDS = ("enable_hr", *(name for name in GenerationRequest.field_specs() if name.startswith("hr_")))

_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict,
          "list": list[str], "Image.Image": str}  # images travel as base64 text

# A1111's API defaults where they differ from the core's (which follow its UI); shown in the schema,
# and what a null becomes (modules.api.convert)
IMG2IMG_API_DEFAULTS: dict[str, Any] = {"inpaint_full_res": True, "inpaint_full_res_padding": 0}

_API_DESCRIPTIONS = {
    "init_images": "Init images as base64 PNG/JPEG/WebP (bare or 'data:image/...;base64,'): one for the "
                   "whole batch, or one per image of the batch.",
    "mask": "Inpainting mask as base64 (bare or data: URL): white is repainted; an image with "
            "transparency counts its opaque part. Another size than the init image is stretched to it.",
    "width": "Width in pixels; default: the first init image's width (A1111's API: 512).",
    "height": "Height in pixels; default: the first init image's height (A1111's API: 512).",
    "inpaint_full_res": "Inpaint area: false = Whole picture, true = Only masked (A1111's API default: true).",
    "inpaint_full_res_padding": "Only masked padding, pixels (A1111's API default: 0).",
    "include_init_images": "Echo init_images and mask in the response's parameters.",
}


def _core_fields(request_class: type, skip: tuple[str, ...] = (), descriptions: dict[str, str] | None = None,
                 defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, fs in request_class.field_specs().items():
        if name in NOT_AT_TOP_LEVEL or name in skip:
            continue
        annotation = request_class.__dataclass_fields__[name].type
        py = _TYPES[str(annotation).split("|")[0].strip()]
        bounds = {}
        if fs.minimum is not None:
            bounds["ge"] = fs.minimum
        if fs.maximum is not None:
            bounds["le"] = fs.maximum
        description = (descriptions or {}).get(name, fs.description)
        fields[name] = (Optional[py], Field((defaults or {}).get(name), description=description, **bounds))
    return fields


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


_A1111_ONLY: dict[str, Any] = {
    "styles": (Optional[list[str]], Field(None, description=(
        "Prompt styles to apply, in order (names from /sdapi/v1/prompt-styles); an unknown name is refused."))),
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
    "StableDiffusionTxt2ImgProcessingAPI", __base__=_Lenient, **{**_A1111_ONLY, **_core_fields(GenerationRequest)}
)

_IMG2IMG_A1111_ONLY: dict[str, Any] = {
    **{k: v for k, v in _A1111_ONLY.items() if k not in HIRES_FIELDS and k not in ("firstphase_width", "firstphase_height")},
    "mask_blur": (Optional[int], Field(None, ge=0, le=64, description=(
        "Mask blur in pixels, both directions; when given it replaces mask_blur_x and mask_blur_y (as in A1111)."))),
}

StableDiffusionImg2ImgProcessingAPI = create_model(
    "StableDiffusionImg2ImgProcessingAPI", __base__=_Lenient,
    **{**_IMG2IMG_A1111_ONLY,
       **_core_fields(Img2ImgRequest, skip=HIRES_FIELDS, descriptions=_API_DESCRIPTIONS,
                      defaults={**IMG2IMG_API_DEFAULTS, "mask_blur_x": 4, "mask_blur_y": 4}),
       "mask_blur": _IMG2IMG_A1111_ONLY["mask_blur"]},
)


class TextToImageResponse(BaseModel):
    images: Optional[list[str]] = Field(None, description="Base64 PNG images.")
    parameters: dict[str, Any]
    info: str


class ImageToImageResponse(BaseModel):
    images: Optional[list[str]] = Field(None, description="Base64 PNG images.")
    parameters: dict[str, Any]
    info: str


class UpscalerItem(BaseModel):
    name: str
    model_name: Optional[str] = None
    model_path: Optional[str] = None
    model_url: Optional[str] = None
    scale: Optional[float] = None


class LatentUpscalerModeItem(BaseModel):
    name: str


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
