"""ControlNet units applied while sampling, as sd-webui-controlnet applies them.

A job's units (:class:`ControlUnit`: a built ControlNet, the preprocessed map, weight, guidance
range, control and resize modes) make a :class:`ControlJob`, which the layer above puts in the job's
``GenerationSettings.control``. Every sampling pass (the first one, the hires one) asks it for the
pass's :class:`UnetResiduals` (``for_pass``): the map fitted to the pass's size, then at each model
call the ControlNets' residuals, summed over the units, for the UNet's
``down_block_additional_residuals`` / ``mid_block_additional_residual``.

The extension's rules, kept here:

- **guidance range**: a unit acts while ``step / total`` (the loop's iteration over its iterations,
  A1111's sampling_step / total_sampling_steps) is within ``[guidance_start, guidance_end]``;
- **control modes**: "Balanced" scales every residual by the weight; "My prompt is more important"
  scales them by ``weight * 0.825 ** (12 - i)`` (soft injection: the shallow ones least); "ControlNet
  is more important" does that too and applies the residuals to the conditional rows only
  (classifier-free guidance then amplifies the control: CFG injection). The rows are told apart by
  the ``control_mark`` entry this module adds to the cond dicts (1 conditional, 0 unconditional);
- **resize modes** of the map: "Just Resize" stretches, "Crop and Resize" fills and crops the centre,
  "Resize and Fill" fits inside and fills the borders with the map's median border colour;
- **inpaint maps** (``inpaint_only``): RGBA, the hint is ``rgb * (1 - mask) - mask`` (masked pixels -1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from .controlnet_model import ControlNetFile
from .types import RequestError

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
MARK = "control_mark"  # the cond dicts' entry telling conditional rows (1) from unconditional ones (0)
SOFT_INJECTION_BASE = 0.825  # the extension's per-block factor for the prompt-first modes


@dataclass
class ControlUnit:
    """One enabled unit, ready to run: its ControlNet (on the device), the preprocessed map (H, W, 3
    uint8, or H, W, 4 with the inpaint mask as alpha) and the extension's parameters."""

    controlnet: ControlNetFile
    detected_map: np.ndarray
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "Balanced"
    resize_mode: str = "Crop and Resize"
    name: str = "ControlNet 0"  # for messages

    def __post_init__(self):
        if self.control_mode not in CONTROL_MODES:
            raise RequestError("alwayson_scripts", f"{self.name}: unknown control_mode {self.control_mode!r}; "
                                                   f"known: {', '.join(CONTROL_MODES)}")
        if self.resize_mode not in RESIZE_MODES:
            raise RequestError("alwayson_scripts", f"{self.name}: unknown resize_mode {self.resize_mode!r}; "
                                                   f"known: {', '.join(RESIZE_MODES)}")
        if not 0.0 <= self.guidance_start <= self.guidance_end <= 1.0:
            raise RequestError("alwayson_scripts", f"{self.name}: guidance_start ({self.guidance_start}) must be "
                                                   f"<= guidance_end ({self.guidance_end}), both within [0, 1]")
        if self.detected_map.ndim != 3 or self.detected_map.shape[2] not in (3, 4):
            raise RequestError("alwayson_scripts", f"{self.name}: the control map must be (H, W, 3 or 4)")

    def scales(self, count: int) -> list[float]:
        """The factor of each of the ControlNet's ``count`` outputs (the down ones, then the middle)."""
        if self.control_mode == "Balanced":
            return [self.weight] * count
        soft = [self.weight * SOFT_INJECTION_BASE ** float(12 - i) for i in range(13)]
        return (soft + [self.weight] * count)[:count]  # SDXL's 10: the first ten, as the extension

    def active(self, fraction: float) -> bool:
        return self.guidance_start <= fraction <= self.guidance_end and self.weight != 0


def fit_map(detected: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """The map at (height, width) by the extension's resize modes."""
    h, w = detected.shape[:2]
    if mode == "Just Resize":
        return _resize(detected, width, height)
    k = (max if mode == "Crop and Resize" else min)(height / h, width / w)
    new_w, new_h = max(1, int(round(w * k))), max(1, int(round(h * k)))
    resized = _resize(detected, new_w, new_h)
    if mode == "Crop and Resize":
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return np.ascontiguousarray(resized[top:top + height, left:left + width])
    borders = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]], axis=0)
    out = np.empty((height, width, detected.shape[2]), dtype=detected.dtype)
    out[:] = np.median(borders, axis=0).astype(detected.dtype)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrink = width * height < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return out if out.ndim == 3 else out[:, :, None]


def hint_tensor(fitted: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] (an inpaint map: masked pixels at -1), as the ControlNet reads it."""
    x = torch.from_numpy(np.array(fitted, dtype=np.float32)).div(255.0).permute(2, 0, 1)[None]
    if x.shape[1] == 4:
        rgb, mask = x[:, :3], (x[:, 3:4] > 0.5).float()
        x = rgb * (1 - mask) - mask
    return x


@dataclass
class ControlJob:
    """A job's units; ``for_pass`` makes each sampling pass's residual provider."""

    units: list[ControlUnit] = field(default_factory=list)

    def for_pass(self, model, latent_shape: tuple[int, ...]) -> "UnetResiduals | None":
        if not self.units:
            return None
        family = model.spec.family
        for unit in self.units:
            cn = unit.controlnet
            if cn.family != family or cn.cross_attention_dim != model.spec.unet_config.get("cross_attention_dim"):
                raise RequestError("alwayson_scripts", f"{unit.name}: the ControlNet '{cn.path.name}' is for "
                                                       f"{cn.family.upper()} models, the checkpoint is {model.spec.label}")
        height, width = latent_shape[-2] * model.latent_scale, latent_shape[-1] * model.latent_scale
        return UnetResiduals(model, self.units, width, height)


class UnetResiduals:
    """One pass's ControlNet residuals: ``at_step`` before each iteration, ``mark`` on the cond
    dicts, then called with the UNet's inputs; returns the UNet's extra keyword arguments."""

    def __init__(self, model, units: list[ControlUnit], width: int, height: int):
        self.model = model
        self.dtype = model.policy.unet_dtype
        self.units = units
        self.hints = [hint_tensor(fit_map(u.detected_map, width, height, u.resize_mode)).to(model.device, self.dtype)
                      for u in units]
        self.fraction = 0.0

    def at_step(self, step: int, total: int) -> None:
        self.fraction = step / max(total, 1)

    @staticmethod
    def mark(cond: dict, uncond: dict | None) -> tuple[dict, dict | None]:
        def marked(d: dict, value: float) -> dict:
            rows = d["context"].shape[0]
            return {**d, MARK: torch.full((rows,), value, device=d["context"].device)}

        return marked(cond, 1.0), (marked(uncond, 0.0) if uncond is not None else None)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> dict:
        down_sum: list[torch.Tensor] | None = None
        mid_sum: torch.Tensor | None = None
        family = self.model.family
        for unit, hint in zip(self.units, self.hints):
            if not unit.active(self.fraction):
                continue
            module = unit.controlnet.module
            dtype = next(module.parameters()).dtype  # the ControlNet's own (the UNet's when built for it)
            down, mid = module(
                x.to(dtype), t, encoder_hidden_states=cond["context"].to(dtype),
                controlnet_cond=hint.to(dtype).expand(x.shape[0], -1, -1, -1),
                added_cond_kwargs=family.added_cond(cond, dtype), return_dict=False)
            outs = [o.to(self.dtype) * s for o, s in zip((*down, mid), unit.scales(len(down) + 1))]
            if unit.control_mode == "ControlNet is more important":  # conditional rows only
                mark = cond.get(MARK)
                if mark is not None:
                    outs = [o * mark.to(o.device, o.dtype).view(-1, 1, 1, 1) for o in outs]
            if down_sum is None:
                down_sum, mid_sum = outs[:-1], outs[-1]
            else:
                down_sum = [a + b for a, b in zip(down_sum, outs[:-1])]
                mid_sum = mid_sum + outs[-1]
        if down_sum is None:
            return {}
        return {"down_block_additional_residuals": tuple(down_sum), "mid_block_additional_residual": mid_sum}
