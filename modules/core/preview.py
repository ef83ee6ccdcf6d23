"""Cheap live previews: a linear map from latent channels to RGB (A1111's
"Approx cheap"), so a progress poll never costs a VAE decode."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# rows: latent channels, columns: R, G, B (published approximation factors)
_FACTORS = {
    "sd": torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]),
    "sdxl": torch.tensor([[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]]),
}


def latent_preview(latents: torch.Tensor, family: str) -> Image.Image:
    """First image of a latent batch as a small RGB picture."""
    factors = _FACTORS["sdxl" if family == "sdxl" else "sd"]
    x = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->rhw", x[: factors.shape[0]], factors)
    array = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))
