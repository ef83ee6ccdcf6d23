"""Recognise a Stable Diffusion checkpoint from its key names and tensor shapes.

Works on shapes alone (a safetensors header is enough), so a checkpoint of any size, full-size or a
tiny test model, goes through the same code: the registry (``modules.core.families``) picks the
family, ``checkpoint_shapes`` reads the UNet, VAE and text encoder configs, and the family supplies
what the weights do not say (heads, VAE scaling, native size).
"""

from __future__ import annotations

import re
from typing import Mapping

from . import families
from .checkpoint_shapes import (UNET_PREFIX, VAE_PREFIX, ModelSpec, Shapes, TextEncoderSpec,  # noqa: F401 (public)
                                UnsupportedCheckpoint)


def detect_family(shapes: Shapes) -> families.ModelFamily:
    family = families.detect(shapes)
    if family is not None:
        return family
    if not any(k.startswith(UNET_PREFIX) for k in shapes):
        raise UnsupportedCheckpoint(
            "no UNet weights (model.diffusion_model.*) found: this is not a full Stable Diffusion "
            "checkpoint (a LoRA, VAE or embedding file belongs in its own folder)"
        )
    raise UnsupportedCheckpoint("no text encoder weights found (expected cond_stage_model.* or conditioner.*)")


def _parse_resolution(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[x×,]\s*(\d+)\s*", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _prediction_type(shapes: Shapes, metadata: Mapping[str, str], yaml_parameterization: str | None) -> str | None:
    """From, in order: a `<checkpoint>.yaml` beside the file (A1111's convention), a `v_pred` key in
    the state dict (ComfyUI's), the safetensors `modelspec.prediction_type`; None when none says."""
    if yaml_parameterization:
        return "v_prediction" if yaml_parameterization.strip().strip("\"'") == "v" else "epsilon"
    if "v_pred" in shapes:
        return "v_prediction"
    if metadata.get("modelspec.prediction_type"):
        return "v_prediction" if metadata["modelspec.prediction_type"].lower() in ("v", "v_prediction") else "epsilon"
    return None


def detect(shapes: Shapes, metadata: Mapping[str, str] | None = None, yaml_parameterization: str | None = None) -> ModelSpec:
    """Build the full spec of a checkpoint from its tensor shapes.

    When nothing says the prediction type, it is epsilon, except for a family that can probe its
    UNet (SD2: A1111's test), which the loader then runs (the spec notes it as undetermined).
    """
    metadata = metadata or {}
    family = detect_family(shapes)
    unet, vae, encoders = family.configs(shapes)
    prediction = _prediction_type(shapes, metadata, yaml_parameterization)
    undetermined = prediction is None and family.can_probe_v_prediction
    return ModelSpec(
        family=family.name,
        inpainting=unet["in_channels"] == 9,
        prediction_type=prediction or family.default_prediction,
        zero_terminal_snr="ztsnr" in shapes,
        native_size=_parse_resolution(metadata.get("modelspec.resolution")) or family.native_size(prediction),
        unet_config=unet,
        vae_config=vae,
        text_encoders=encoders,
        notes=("prediction type undetermined",) if undetermined else (),
        family_label=family.label,
    )
