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
    sampler_name: str = spec("Euler a", "Sampler (A1111 name).")
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
                kind = {str: "text", int: "an integer", float: "a number", bool: "true or false", dict: "an object"}[expected]
                raise RequestError(f.name, f"must be {kind}, got {type(value).__name__}")
            if fs.minimum is not None and value < fs.minimum:
                raise RequestError(f.name, f"must be at least {_fmt(fs.minimum)}, got {value}")
            if fs.maximum is not None and value > fs.maximum:
                raise RequestError(f.name, f"must be at most {_fmt(fs.maximum)}, got {value}")
            if fs.multiple_of and value % fs.multiple_of:
                raise RequestError(f.name, f"must be a multiple of {fs.multiple_of}, got {value}")

    @classmethod
    def field_specs(cls) -> dict[str, FieldSpec]:
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}


def _expected_type(annotation: str) -> type:
    base = str(annotation).split("|")[0].strip()
    return {"str": str, "int": int, "float": float, "bool": bool, "dict": dict}[base]


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


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
    clip_skip: int = 1
    extra_generation_params: dict = field(default_factory=dict)
    job_timestamp: str = ""  # set by the job service
