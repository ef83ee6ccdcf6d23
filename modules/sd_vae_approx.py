"""A1111's `modules.sd_vae_approx`: the "Approx cheap" latent -> RGB map (Easel's preview factors
of the loaded model's family). A1111's small "Approx NN" decoder needs its downloaded weights,
which Easel does not fetch; `model()` says so."""

from __future__ import annotations

import torch

from modules import shared


def _factors():
    from modules.core.families.base import SD_PREVIEW_FACTORS

    model = shared.sd_model
    family = getattr(model, "family", None)
    return getattr(family, "preview_factors", None) or SD_PREVIEW_FACTORS


def cheap_approximation(sample: torch.Tensor) -> torch.Tensor:
    """One latent (C, H, W) or a batch (B, C, H, W) -> RGB in about [-1, 1], same layout."""
    coefs = torch.as_tensor(_factors(), dtype=sample.dtype, device=sample.device)
    channels = coefs.shape[0]
    if sample.dim() == 4:
        return torch.einsum("...lxy,lr -> ...rxy", sample[:, :channels], coefs)
    return torch.einsum("lxy,lr -> rxy", sample[:channels], coefs)


class VAEApprox(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Easel has no Approx NN decoder (its weights are a download); "
                                  "use cheap_approximation")


def model():
    raise NotImplementedError("Easel has no Approx NN decoder (its weights are a download); use cheap_approximation")
