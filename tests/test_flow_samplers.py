"""A1111 samplers on flow-matching models (Flux, SD3): Euler, Heun, DPM2, LMS and DPM++ 2M on the
flow schedule land on the latents of k-diffusion's own samplers run on the same sigmas with a CONST
denoiser (``denoised = x - sigma * v``, ComfyUI's and Forge's way), for a toy velocity model; the
others are refused with the list."""

from __future__ import annotations

import pytest
import torch

from modules.core import denoise, flow_matching
from modules.core.families import get
from modules.core.types import RequestError
from tests.k_reference import _load_k_diffusion

SHAPE = (2, 16, 8, 8)


def velocity(x: torch.Tensor, t: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
    """A smooth toy velocity field that depends on the latents and the timestep."""
    s = (t / 1000).view(-1, 1, 1, 1)
    return torch.tanh(x * (0.5 + s)) - 0.3 * x + 0.2 * s


@pytest.fixture(scope="module")
def kd():
    return _load_k_diffusion()[0]


class _Spec:
    unet_config = {"guidance_embeds": True}


@pytest.mark.parametrize("sampler,function", [("Euler", "sample_euler"), ("Heun", "sample_heun"),
                                              ("DPM2", "sample_dpm_2"), ("LMS", "sample_lms"),
                                              ("DPM++ 2M", "sample_dpmpp_2m")])
def test_flow_samplers_match_k_diffusion_on_const(kd, sampler, function):
    flux = get("flux")
    scheduler = flux.build_scheduler(sampler, "Automatic", _Spec(), SHAPE[1:])
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    cond = {"context": torch.zeros(SHAPE[0], 1, 4)}  # the toy model reads no text
    ours = denoise.sample(velocity, scheduler, noise, lambda i: (cond, None), steps=6, cfg_scale=1.0)
    sigmas = flow_matching.flow_sigmas(flux.flow_shift(_Spec()), 16, 6)

    def const_denoiser(x, sigma, **kwargs):
        return x - sigma.view(-1, 1, 1, 1) * velocity(x, sigma * 1000)

    theirs = getattr(kd, function)(const_denoiser, noise.clone(), sigmas, disable=True)
    assert torch.allclose(ours, theirs, atol=2e-4), (ours - theirs).abs().max()


def test_flow_img2img_noises_the_flow_way():
    sd3 = get("sd3")
    scheduler = sd3.build_scheduler("DPM++ 2M", "Automatic", _Spec(), SHAPE[1:])
    scheduler.set_timesteps(5)
    x0, noise = torch.ones(1, 16, 8, 8), torch.zeros(1, 16, 8, 8)
    t = scheduler.timesteps[2:3]
    sigma = float(t) / 1000
    assert torch.allclose(scheduler.add_noise(x0, noise, t), x0 * (1 - sigma), atol=1e-6)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DPM++ SDE", "UniPC", "DDIM"])
def test_other_samplers_are_refused_with_the_list(sampler):
    with pytest.raises(RequestError) as info:
        get("flux").build_scheduler(sampler, "Automatic", _Spec(), SHAPE[1:])
    assert info.value.field == "sampler_name" and "DPM++ 2M" in info.value.message
