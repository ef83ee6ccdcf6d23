"""Seamless tiling on a tiny real checkpoint: the picture wraps around, and the model is exactly as
before once the request is over (also after errors and interrupts)."""

import datetime

import numpy as np
import pytest
import torch

from modules.core import tiling
from modules.core.devices import choose_policy
from modules.core.model_loader import load_checkpoint
from modules.core.model_ops import decode_latents, denoiser
from modules.core.pipeline import GenerationSettings, JobObserver, generate
from modules.core.types import GenerationRequest, RequestError

POLICY, _ = choose_policy()
SMALL = dict(width=64, height=64, steps=3, save_images=False)


def settings() -> GenerationSettings:
    return GenerationSettings(model_name="tiny-sd1", today=lambda: datetime.date(2026, 11, 23))


def modes(model) -> list[str]:
    return [layer.padding_mode for layer in tiling.conv_layers(model)]


def wrap_and_inner(images) -> tuple[float, float]:
    """Mean step across the wrap-around seams (right->left, bottom->top) and between neighbours."""
    a = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    wrap = (np.abs(a[:, :, 0] - a[:, :, -1]).mean() + np.abs(a[:, 0] - a[:, -1]).mean()) / 2
    inner = (np.abs(a[:, :, 1:] - a[:, :, :-1]).mean() + np.abs(a[:, 1:] - a[:, :-1]).mean()) / 2
    return float(wrap), float(inner)


def test_tiled_image_continues_across_its_edges(sd1):
    request = dict(prompt="a pattern", seed=1, batch_size=4, **SMALL)
    plain = generate(GenerationRequest(**request), sd1, settings())
    tiled = generate(GenerationRequest(**request, tiling=True), sd1, settings())
    plain_wrap, _ = wrap_and_inner(plain.images)
    tiled_wrap, tiled_inner = wrap_and_inner(tiled.images)
    # untiled, the opposite edges are unrelated; tiled, they are neighbours like any other columns
    assert tiled_wrap < 0.8 * plain_wrap
    assert tiled_wrap < 1.15 * tiled_inner
    assert "Tiling: True" in tiled.infotexts[0] and "Tiling" not in plain.infotexts[0]
    assert tiled.infotexts[0].index("Tiling: True") > tiled.infotexts[0].index("Size: 64x64")


def test_circular_networks_are_shift_equivariant(sd1):
    """The exact property behind seamless tiles: shifting the latents around the torus shifts the
    UNet's prediction and the decoded picture the same way (8 pixels per latent pixel)."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    shifted = torch.roll(x, (2, 4), dims=(-2, -1))
    context = {"context": torch.randn(1, 77, sd1.unet.config.cross_attention_dim,
                                      generator=torch.Generator().manual_seed(1))}
    t = torch.tensor([500.0])
    unet = denoiser(sd1)
    with tiling.seamless(sd1):
        eps, eps_shifted = unet(x, t, context), unet(shifted, t, context)
        image = np.asarray(decode_latents(sd1, x)[0], dtype=np.int16)
        image_shifted = np.asarray(decode_latents(sd1, shifted)[0], dtype=np.int16)
    assert torch.allclose(torch.roll(eps, (2, 4), dims=(-2, -1)), eps_shifted, atol=1e-4)
    assert np.abs(np.roll(image, (16, 32), axis=(0, 1)) - image_shifted).max() <= 1
    # zero padding breaks it at the borders
    plain = np.asarray(decode_latents(sd1, x)[0], dtype=np.int16)
    plain_shifted = np.asarray(decode_latents(sd1, shifted)[0], dtype=np.int16)
    assert np.abs(np.roll(plain, (16, 32), axis=(0, 1)) - plain_shifted).mean() > 5


def test_the_model_is_exactly_as_before_after_a_tiled_request(sd1):
    before_modes = modes(sd1)
    assert before_modes and set(before_modes) == {"zeros"}
    request = dict(prompt="a", seed=5, **SMALL)
    before = np.asarray(generate(GenerationRequest(**request), sd1, settings()).images[0])
    generate(GenerationRequest(**request, tiling=True), sd1, settings())
    assert modes(sd1) == before_modes
    after = np.asarray(generate(GenerationRequest(**request), sd1, settings()).images[0])
    assert np.array_equal(before, after)


def test_restores_each_layer_own_mode_also_on_errors_and_interrupts(tiny_checkpoints):
    model = load_checkpoint(tiny_checkpoints.sd1, POLICY)  # its own copy: one layer is changed here
    layers = tiling.conv_layers(model)
    layers[3].padding_mode = "reflect"
    before = modes(model)
    with pytest.raises(RuntimeError, match="boom"):
        with tiling.seamless(model):
            assert set(modes(model)) == {"circular"}
            raise RuntimeError("boom")
    assert modes(model) == before and layers[3].padding_mode == "reflect"

    with tiling.seamless(model, enabled=False):
        assert modes(model) == before

    with pytest.raises(RequestError):  # refused after the switch (unknown sampler): still restored
        generate(GenerationRequest(prompt="a", sampler_name="nope", tiling=True, **SMALL), model, settings())
    assert modes(model) == before

    class InterruptAtSecondStep(JobObserver):
        def __init__(self):
            self.steps = 0

        def on_step(self, step, total, latents, denoised):
            self.steps += 1
            assert set(modes(model)) == {"circular"}  # tiled while sampling

        def interrupted(self):
            return self.steps >= 2

    result = generate(GenerationRequest(prompt="a", tiling=True, **SMALL), model, settings(), InterruptAtSecondStep())
    assert result.interrupted and modes(model) == before
