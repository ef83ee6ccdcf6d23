"""The typed edge of the core: one generation request in, one result out.

Every request field is declared once here with its type, default, bounds and
description; the API schema and the UI's slider limits are read from these specs.
A request validates itself on creation and names the offending field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from . import samplers, upscaling


class RequestError(ValueError):
    """Invalid request value. `field` names the request field at fault."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class FieldSpec:
    description: str
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    ui_step: float | None = None


def spec(default: Any, description: str, **bounds: Any) -> Any:
    return field(default=default, metadata={"spec": FieldSpec(description, **bounds)})


MAX_SIDE = 2048


@dataclass
class GenerationRequest:
    """One txt2img job (img2img adds its fields in a later issue)."""

    prompt: str = spec("", "What the image should show.")
    negative_prompt: str = spec("", "What the image should not show.")
    sampler_name: str = spec(samplers.DEFAULT_SAMPLER, "Sampler (A1111 name).")
    scheduler: str = spec("Automatic", "Schedule type: Automatic, Uniform, Karras, Exponential, SGM Uniform.")
    steps: int = spec(20, "Sampling steps.", minimum=1, maximum=150, ui_step=1)
    cfg_scale: float = spec(7.0, "Classifier-free guidance scale.", minimum=1.0, maximum=30.0, ui_step=0.5)
    width: int | None = spec(None, "Image width in pixels; default: the model's native size.",
                             minimum=64, maximum=MAX_SIDE, multiple_of=8, ui_step=8)
    height: int | None = spec(None, "Image height in pixels; default: the model's native size.",
                              minimum=64, maximum=MAX_SIDE, multiple_of=8, ui_step=8)
    seed: int = spec(-1, "Seed; -1 picks a random one.", minimum=-1, maximum=2**32 - 1)
    subseed: int = spec(-1, "Variation seed; -1 picks a random one.", minimum=-1, maximum=2**32 - 1)
    subseed_strength: float = spec(0.0, "Variation strength (0 = none).", minimum=0.0, maximum=1.0, ui_step=0.01)
    seed_resize_from_w: int = spec(0, "Resize seed from width (0 = off).", minimum=-1, maximum=MAX_SIDE)
    seed_resize_from_h: int = spec(0, "Resize seed from height (0 = off).", minimum=-1, maximum=MAX_SIDE)
    batch_size: int = spec(1, "Images per batch (run together).", minimum=1, maximum=8, ui_step=1)
    n_iter: int = spec(1, "Batch count (batches run one after another).", minimum=1, maximum=100, ui_step=1)
    checkpoint: str | None = spec(None, "Checkpoint title or name; default: the loaded one.")
    clip_skip: int | None = spec(None, "CLIP skip; default: the setting.", minimum=1, maximum=12)
    save_images: bool = spec(True, "Save images to the outputs folder.")
    # Hires. fix (A1111 txt2img): a second pass at a larger size; see modules.core.hires.
    enable_hr: bool = spec(False, "Hires. fix: upscale, then refine with a second sampling pass.")
    hr_scale: float = spec(2.0, "Hires upscale factor (unused when hr_resize_x/y is given).",
                           minimum=1.0, maximum=4.0, ui_step=0.05)
    hr_upscaler: str = spec("Latent", "Hires upscaler: a latent mode or an image upscaler (see /sdapi/v1/upscalers).")
    hr_second_pass_steps: int = spec(0, "Hires steps (0 = same as steps).", minimum=0, maximum=150, ui_step=1)
    hr_resize_x: int = spec(0, "Resize width to (0 = from height, or use hr_scale).", minimum=0, maximum=MAX_SIDE, ui_step=8)
    hr_resize_y: int = spec(0, "Resize height to (0 = from width, or use hr_scale).", minimum=0, maximum=MAX_SIDE, ui_step=8)
    # A1111's API default is 0.75; its UI's hires slider starts at 0.7.
    denoising_strength: float = spec(0.75, "Denoising strength of the hires pass (img2img: of the image).",
                                     minimum=0.0, maximum=1.0, ui_step=0.01)
    hr_prompt: str = spec("", "Hires prompt (empty = the prompt).")
    hr_negative_prompt: str = spec("", "Hires negative prompt (empty = the negative prompt).")
    hr_sampler_name: str | None = spec(None, "Hires sampler (None or 'Use same sampler' = the sampler).")
    hr_scheduler: str | None = spec(None, "Hires schedule type (None or 'Use same scheduler' = the schedule type).")
    hr_checkpoint_name: str | None = spec(None, "Hires checkpoint (None or 'Use same checkpoint' = the checkpoint).")
    # SDXL refiner (A1111 1.6+): another checkpoint takes over part way through sampling; see modules.core.sampling_pass
    refiner_checkpoint: str | None = spec(None, "Refiner checkpoint (None, '' or 'None' = no refiner).")
    refiner_switch_at: float | None = spec(None, "Refiner: switch at this share of the sampling (0-1; None = at once).",
                                           minimum=0.0, maximum=1.0, ui_step=0.01)
    tiling: bool = spec(False, "Seamless tiling: the image wraps around left/right and top/bottom.")
    distilled_cfg_scale: float = spec(3.5, "Flux dev: the guidance the model was distilled with (Forge's Distilled CFG "
                                           "Scale); other models ignore it.", minimum=0.0, maximum=30.0, ui_step=0.1)
    extra: dict = field(default_factory=dict, metadata={"spec": FieldSpec("Extra infotext fields (scripts).")})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fs: FieldSpec = f.metadata["spec"]
            expected = _expected_type(f.type)
            if value is None:
                if "None" not in str(f.type):
                    raise RequestError(f.name, "is required")
                continue
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if expected is int and isinstance(value, float) and value.is_integer():
                value = int(value)
                setattr(self, f.name, value)
            if not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
                kind = {str: "text", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
                        list: "a list", Image.Image: "an image"}[expected]
                raise RequestError(f.name, f"must be {kind}, got {type(value).__name__}")
            if expected is list or expected is Image.Image:
                continue  # element checks and bounds of image fields: Img2ImgRequest.__post_init__
            if fs.minimum is not None and value < fs.minimum:
                raise RequestError(f.name, f"must be at least {_fmt(fs.minimum)}, got {value}")
            if fs.maximum is not None and value > fs.maximum:
                raise RequestError(f.name, f"must be at most {_fmt(fs.maximum)}, got {value}")
            if fs.multiple_of and value % fs.multiple_of:
                raise RequestError(f.name, f"must be a multiple of {fs.multiple_of}, got {value}")
        if self.enable_hr and self.hr_upscaler not in upscaling.names():  # A1111 checks it only with hires on
            raise RequestError("hr_upscaler", f"unknown upscaler '{self.hr_upscaler}'; known: {', '.join(upscaling.names())}")

    @classmethod
    def field_specs(cls) -> dict[str, FieldSpec]:
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}


def _expected_type(annotation: str) -> type:
    base = str(annotation).split("|")[0].strip()
    return {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "list": list,
            "Image.Image": Image.Image}[base]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass
class Img2ImgRequest(GenerationRequest):
    """One img2img / inpainting job (A1111's img2img fields; ``denoising_strength`` is inherited).

    Images are decoded PIL images (``image_io.decode_image`` turns API base64 into them). Width and
    height default to the first init image's size (rounded down to a multiple of 8)."""

    init_images: list = spec(None, "Init images: one (used for the whole batch) or one per image of the batch.")
    mask: Image.Image | None = spec(None, "Inpainting mask: white is repainted (an RGBA mask: its opaque part).")
    resize_mode: int = spec(0, "0 Just resize, 1 Crop and resize, 2 Resize and fill, 3 Just resize (latent upscale).",
                            minimum=0, maximum=3)
    mask_blur: int = spec(4, "Mask blur in pixels (both directions unless mask_blur_x/y are given).",
                          minimum=0, maximum=64, ui_step=1)
    mask_blur_x: int | None = spec(None, "Horizontal mask blur; default: mask_blur.", minimum=0, maximum=256)
    mask_blur_y: int | None = spec(None, "Vertical mask blur; default: mask_blur.", minimum=0, maximum=256)
    inpainting_fill: int = spec(0, "Masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing.",
                                minimum=0, maximum=3)
    inpaint_full_res: bool = spec(False, "Inpaint area: false = Whole picture, true = Only masked.")
    inpaint_full_res_padding: int = spec(32, "Only masked padding, pixels.", minimum=0, maximum=256, ui_step=4)
    inpainting_mask_invert: int = spec(0, "Mask mode: 0 Inpaint masked, 1 Inpaint not masked.", minimum=0, maximum=1)
    image_cfg_scale: float | None = spec(None, "Image CFG scale (instruct-pix2pix models only).",
                                         minimum=0.0, maximum=3.0)
    initial_noise_multiplier: float | None = spec(None, "Noise multiplier; default: the setting.",
                                                  minimum=0.0, maximum=1.5)
    include_init_images: bool = spec(False, "Return the init images with the results (API).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.init_images:
            raise RequestError("init_images", "needs at least one image")
        for i, image in enumerate(self.init_images):
            if not isinstance(image, Image.Image):
                raise RequestError("init_images", f"item {i} is not an image (got {type(image).__name__})")
        if self.enable_hr:
            raise RequestError("enable_hr", "hires fix is a txt2img feature; img2img has denoising_strength instead")

    @property
    def blur_x(self) -> int:
        return self.mask_blur if self.mask_blur_x is None else self.mask_blur_x

    @property
    def blur_y(self) -> int:
        return self.mask_blur if self.mask_blur_y is None else self.mask_blur_y


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    infotexts: list[str]
    width: int
    height: int
    sampler_name: str
    scheduler: str
    paths: list[str] = field(default_factory=list)
    grid: Image.Image | None = None
    grid_path: str | None = None
    interrupted: bool = False
    model_name: str = ""
    model_hash: str | None = None
    vae_name: str | None = None  # the external VAE file used (A1111's sd_vae_name); None: the checkpoint's
    vae_hash: str | None = None
    clip_skip: int = 1
    extra_generation_params: dict = field(default_factory=dict)
    job_timestamp: str = ""  # set by the job service
    extra_grids: list[Image.Image] = field(default_factory=list)  # more grids after `grid` (scripts: X/Y/Z plot's)
    # hires fix: the first pass's (width, height), A1111's p.width/p.height; `width`/`height` are the result's
    first_pass_size: tuple[int, int] | None = None
    grids_from_script: bool = False  # the grids are a script's own result: always returned (A1111's API)
