"""Cheap live previews: a linear map from latent channels to RGB (A1111's
"Approx cheap"), so a progress poll never costs a VAE decode."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image



def latent_preview(latents: torch.Tensor, factors) -> Image.Image:
    """First image of a latent batch as a small RGB picture; ``factors``: rows of latent channels,
    columns R, G, B (the family's ``preview_factors``)."""
    factors = torch.as_tensor(factors, dtype=torch.float32)
    x = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->rhw", x[: factors.shape[0]], factors)
    array = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))
