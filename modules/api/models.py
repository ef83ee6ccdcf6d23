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

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from modules.core.finite import describe, first_non_finite
from modules.core.types import GenerationRequest, Img2ImgRequest

# core fields the API reaches through A1111's own fields (override_settings, save_images)
NOT_AT_TOP_LEVEL = ("checkpoint", "extra", "clip_skip", "save_images")
# txt2img only: A1111's img2img request has no hires fix (they are ignored there, as unknown fields)
HIRES_FIELDS = ("enable_hr", *(name for name in GenerationRequest.field_specs() if name.startswith("hr_")))

_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict,
          "list": list[str], "Image.Image": str}  # images travel as base64 text

# A1111's API defaults where they differ from the core's (which follow its UI); shown in the schema,
# and what a null becomes (modules.api.convert)
TXT2IMG_API_DEFAULTS: dict[str, Any] = {"steps": 50}
IMG2IMG_API_DEFAULTS: dict[str, Any] = {"steps": 50, "inpaint_full_res": True, "inpaint_full_res_padding": 0}
# A1111's API: no sampler_name and no sampler_index means sampler_index's default, "Euler"
DEFAULT_SAMPLER = "Euler"

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
    # NaN and infinity are no values for any field (they would slip past every bound), nor inside
    # one (override_settings, script_args, alwayson_scripts): Python's json reads NaN, Infinity and
    # 1e309 as floats, so they are refused here, naming the field and the place inside it
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _finite(cls, value: Any, info: ValidationInfo) -> Any:
        found = first_non_finite(value)
        if found is not None:
            where, number = found
            inside = f" (at {info.field_name}.{where})" if where else ""
            raise ValueError(f"must be a finite number, got {describe(number)}{inside}")
        return value


_MAX_SIDE = GenerationRequest.field_specs()["width"].maximum


_A1111_ONLY: dict[str, Any] = {
    "styles": (Optional[list[str]], Field(None, description=(
        "Prompt styles to apply, in order (names from /sdapi/v1/prompt-styles); an unknown name is refused."))),
    "sampler_index": (Optional[str], Field(DEFAULT_SAMPLER, description=(
        "Old name of sampler_name, used when sampler_name is empty (A1111's API default: Euler)."))),
    "restore_faces": (Optional[bool], None),
    "tiling": (Optional[bool], None),
    "do_not_save_samples": (Optional[bool], None),
    "do_not_save_grid": (Optional[bool], None),
    # A1111's sampler parameters, bounded by its sliders (accepted for compatibility; a huge value
    # is refused rather than carried into a job)
    "eta": (Optional[float], Field(None, ge=0, le=1)),
    "denoising_strength": (Optional[float], Field(None, ge=0, le=1)),
    "s_min_uncond": (Optional[float], Field(None, ge=0, le=15)),
    "s_churn": (Optional[float], Field(None, ge=0, le=100)),
    "s_tmax": (Optional[float], Field(None, ge=0, le=999)),
    "s_tmin": (Optional[float], Field(None, ge=0, le=10)),
    "s_noise": (Optional[float], Field(None, ge=0, le=1.1)),
    "override_settings": (Optional[dict[str, Any]], Field(None, description="Options for this request only.")),
    "override_settings_restore_afterwards": (Optional[bool], Field(True, description=(
        "true: override_settings hold for this request only; false: they stay set afterwards (as in A1111)."))),
    "refiner_checkpoint": (Optional[str], None),
    "refiner_switch_at": (Optional[float], Field(None, ge=0, le=1)),
    "disable_extra_networks": (Optional[bool], None),
    "comments": (Optional[dict[str, Any]], None),
    "enable_hr": (Optional[bool], None),
    "firstphase_width": (Optional[int], Field(None, ge=0, le=_MAX_SIDE)),
    "firstphase_height": (Optional[int], Field(None, ge=0, le=_MAX_SIDE)),
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
    "force_task_id": (Optional[str], Field(None, description=(
        "The task id to track this request by with POST /internal/progress (default: a new one)."))),
    "script_name": (Optional[str], None),
    "script_args": (Optional[list[Any]], None),
    "send_images": (Optional[bool], Field(True, description="Return the images in the response.")),
    "save_images": (Optional[bool], Field(False, description="Save the images to the outputs folder.")),
    "alwayson_scripts": (Optional[dict[str, Any]], None),
    "infotext": (Optional[str], Field(None, description=(
        "Generation parameters text (A1111 infotext): fills the fields this request leaves out."))),
}

StableDiffusionTxt2ImgProcessingAPI = create_model(
    # a core field (typed, with bounds) wins over the same A1111 name listed above
    "StableDiffusionTxt2ImgProcessingAPI", __base__=_Lenient,
    **{**_A1111_ONLY, **_core_fields(GenerationRequest, defaults=TXT2IMG_API_DEFAULTS)}
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


# -- Extras (A1111's ExtrasBaseRequest) -----------------------------------------------------------

class ExtrasBaseRequest(_Lenient):
    resize_mode: Optional[int] = Field(0, ge=0, le=1, description="0: upscale by upscaling_resize; 1: to upscaling_resize_w x upscaling_resize_h.")
    show_extras_results: Optional[bool] = Field(True, description="Accepted for A1111 compatibility; the images are always returned.")
    gfpgan_visibility: Optional[float] = Field(0, ge=0, le=1, description="GFPGAN face restoration, blended in by this much (0: off; needs a file in models/GFPGAN).")
    codeformer_visibility: Optional[float] = Field(0, ge=0, le=1, description="CodeFormer face restoration, blended in by this much (0: off; needs a file in models/Codeformer).")
    codeformer_weight: Optional[float] = Field(0, ge=0, le=1, description="CodeFormer's fidelity: 0 = the most restoration, 1 = closest to the input.")
    upscaling_resize: Optional[float] = Field(2, gt=0, description="By how much to upscale (resize_mode 0).")
    upscaling_resize_w: Optional[int] = Field(512, ge=1, description="Target width (resize_mode 1).")
    upscaling_resize_h: Optional[int] = Field(512, ge=1, description="Target height (resize_mode 1).")
    upscaling_crop: Optional[bool] = Field(True, description="Crop to fit the target size (resize_mode 1).")
    upscaler_1: Optional[str] = Field("None", description="Main upscaler (names from /sdapi/v1/upscalers); 'None' = no upscale.")
    upscaler_2: Optional[str] = Field("None", description="Secondary upscaler, blended over the first.")
    extras_upscaler_2_visibility: Optional[float] = Field(0, ge=0, le=1, description="Visibility of the secondary upscaler.")
    upscale_first: Optional[bool] = Field(False, description="Accepted for A1111 compatibility (the order is the postprocessing_operation_order setting's).")
    max_side_length: Optional[int] = Field(0, ge=0, description="resize_mode 0: the longer side of the result is at most this (0: no limit; A1111 1.10's Extras).")
    postprocessing_scripts: Optional[dict[str, dict[str, Any]]] = Field(
        None, description="Easel: arguments of postprocessing scripts by script name and argument name (the keys of the "
                          "script's ui()), over the fields above, e.g. {\"Create flipped copies\": {\"enable\": true, "
                          "\"option\": [\"Horizontal\"]}, \"Split oversized images\": {\"enable\": true}}; "
                          "an unknown script or argument is a 422.")


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: Optional[str] = Field("", description="The image, base64 (bare or data: URL).")


class FileData(BaseModel):
    data: str = Field(description="Base64 of the file (bare or data: URL).")
    name: str = Field(description="File name.")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(description="The images to work on.")


class ExtrasSingleImageResponse(BaseModel):
    html_info: str = Field(description="The postprocessing infotext as HTML.")
    image: Optional[str] = Field(None, description="The result, base64 PNG.")


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str = Field(description="The postprocessing infotext of the last image as HTML.")
    images: list[str] = Field(description="The results, base64 PNG.")


class PNGInfoRequest(BaseModel):
    image: str = Field(description="The image, base64 (bare or data: URL).")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="The generation parameters text (infotext).")
    items: dict[str, Any] = Field(description="The image's other text fields.")
    parameters: dict[str, Any] = Field(description="The infotext parsed, with A1111's defaults filled in.")


class InterrogateRequest(BaseModel):
    image: str = Field(default="", description="Image to work on, must be a Base64 string containing the image's data.")
    model: str = Field(default="clip", description="The interrogate model used: 'deepdanbooru' or 'clip'.")


class InterrogateResponse(BaseModel):
    caption: str | None = Field(default=None, description="The generated caption for the image.")


# -- listings ----------------------------------------------------------------------------------

class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class HypernetworkItem(BaseModel):
    name: str
    path: Optional[str] = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: Optional[str] = None


class RealesrganItem(BaseModel):
    name: str
    path: Optional[str] = None
    scale: Optional[int] = None


class MemoryResponse(BaseModel):
    ram: dict = Field(description="System memory: free, used (this process), total, in bytes.")
    cuda: dict = Field(description="CUDA memory (system, active, allocated, reserved, inactive, events) or an error.")


# -- /internal/progress (A1111's modules/progress.py) -------------------------------------------

class InternalProgressRequest(BaseModel):
    id_task: Optional[str] = Field(None, description="The task id (force_task_id of the request).")
    id_live_preview: int = Field(-1, description="The id of the last live preview received.")
    live_preview: bool = Field(True, description="Include the live preview image.")


class InternalProgressResponse(BaseModel):
    active: bool
    queued: bool
    completed: bool
    progress: Optional[float] = None
    eta: Optional[float] = None
    live_preview: Optional[str] = Field(None, description="The current live preview, a data: URL.")
    id_live_preview: Optional[int] = None
    textinfo: Optional[str] = None


class PendingTasksResponse(BaseModel):
    size: int
    tasks: list[str]
