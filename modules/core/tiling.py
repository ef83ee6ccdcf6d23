"""Seamless tiling for one request: every Conv2d of the UNet and the VAE pads circularly.

With circular padding the networks see the latent (and the decoded picture) as a torus, so the
left edge continues the right one and the top the bottom: the image tiles without seams
(A1111's "Tiling", which switches ``padding_mode`` the same way). The switch is per request: the
context manager records each layer's padding mode and puts exactly that back afterwards, also
when the job raises or is interrupted, so other requests on the same loaded model are unaffected.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["seamless", "conv_layers"]


def conv_layers(model) -> list[torch.nn.Conv2d]:
    """The Conv2d layers of a LoadedModel's UNet and VAE (text encoders have none)."""
    return [m for part in (model.unet, model.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]


@contextmanager
def seamless(model, enabled: bool = True) -> Iterator[None]:
    """Within the block the model's UNet and VAE pad circularly; ``enabled=False`` changes nothing."""
    if not enabled:
        yield
        return
    saved = [(layer, layer.padding_mode) for layer in conv_layers(model)]
    try:
        for layer, _ in saved:
            layer.padding_mode = "circular"
        yield
    finally:
        for layer, mode in saved:
            layer.padding_mode = mode
