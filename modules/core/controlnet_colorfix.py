"""sd-webui-controlnet's ``tile_colorfix`` and ``tile_colorfix+sharp``: the tile ControlNet, plus a fix
of the colours on the UNet's output side, in latent space.

At each model call the prediction is turned into the x0 it implies; its low frequencies (a box blur
of ``variation`` latent pixels, doubled in the hires pass) are replaced by those of the control
picture's latents: ``x0 = x0 - blur(x0) + blur(picture)``. With ``+sharp`` the unconditional rows
get a blurrier x0 (``sharpness * 0.01`` of the blur mixed in, the extension's scale), so guidance
pushes towards detail. The fixed x0 goes back to a prediction, mixed with the model's own by the
unit's weight (clipped to [0, 1]). As in the extension this acts at every step, whatever the
unit's guidance range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAMES = ("tile_colorfix", "tile_colorfix+sharp")


@dataclass(frozen=True)
class ColorFix:
    variation: int  # the blur's radius in latent pixels (the preprocessor's slider 1)
    sharpness: float | None = None  # +sharp's slider 2; None: plain tile_colorfix


def blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """A (2k+1)-wide box blur with replicated edges (the extension's ``blur``)."""
    padded = F.pad(x, (k, k, k, k), mode="replicate")
    return F.avg_pool2d(padded, (2 * k + 1, 2 * k + 1), stride=(1, 1))


def apply(fix: ColorFix, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
          prediction_type: str, picture_latents: torch.Tensor, weight: float, hires: bool,
          cond_mark: torch.Tensor | None) -> torch.Tensor:
    """The model's prediction ``out`` (eps or v) for the UNet input ``x`` at timesteps ``t``, colour-fixed
    towards ``picture_latents`` (the control picture's scaled latents at the pass's size)."""
    k = fix.variation * (2 if hires else 1)
    steps = torch.round(t.float().reshape(-1)).long().clamp(0, len(alphas_cumprod) - 1)
    a = alphas_cumprod.to(out.device)[steps.to(out.device)].float().view(-1, 1, 1, 1)
    if a.shape[0] == 1:
        a = a.expand(out.shape[0], -1, -1, -1)
    xt = x[:, :out.shape[1]].float()
    if prediction_type == "v_prediction":
        x0 = a.sqrt() * xt - (1 - a).sqrt() * out
    else:
        x0 = (xt - (1 - a).sqrt() * out) / a.sqrt()
    origin = picture_latents.to(out.device, out.dtype)
    fixed = x0 - blur(x0, k) + blur(origin, k).expand_as(x0)
    if fix.sharpness is not None:
        detail = fix.sharpness * 0.01
        blurry = detail * blur(fixed, k) + (1 - detail) * fixed
        mark = torch.ones(out.shape[0], device=out.device) if cond_mark is None else cond_mark.to(out.device)
        mark = mark.to(out.dtype).view(-1, 1, 1, 1)
        fixed = mark * fixed + (1 - mark) * blurry
    if prediction_type == "v_prediction":
        pred = (a.sqrt() * xt - fixed) / (1 - a).sqrt()
    else:
        pred = (xt - a.sqrt() * fixed) / (1 - a).sqrt()
    w = max(0.0, min(1.0, float(weight)))
    return pred * w + out * (1 - w)
