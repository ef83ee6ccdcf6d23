"""The noise that gives an img2img picture back: A1111's "img2img alternative test".

Euler's method run backwards: from the init latents (sigma 0) up the model's training schedule to
its largest sigma, each step moving the latents along the guided prediction's direction
``(x - denoised) / sigma``. What comes out, divided by its standard deviation (or, with A1111's
"sigma adjustment", by the last sigma), is the noise from which sampling with the same prompt
retraces the picture; mixed with fresh noise it is a way to vary a picture while keeping its
layout. The sigmas are k-diffusion's for CompVis models (``get_sigmas(steps)``: evenly spaced
timesteps, then 0): the "Uniform" schedule here.

Unlike A1111, whose script always wraps the model as an epsilon model, v-prediction models (SD 2.x
768-v) are converted with their own parametrisation, so the noise found for them is right too.
Flow models (SD3, Flux) are refused: their schedule has no k-diffusion sigmas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .sigma_schedules import TrainingSigmas, uniform

# denoised(x, sigma, t_sigma): the guided x0 prediction for latents x at noise level ``sigma``; the
# model is told the timestep of ``t_sigma`` (A1111's sigma adjustment asks once for another one)
Denoised = Callable[[torch.Tensor, float, float], torch.Tensor]


def inversion_sigmas(steps: int, training: TrainingSigmas) -> torch.Tensor:
    """0 first, then up to the largest training sigma: ``steps + 1`` values."""
    return uniform(steps, training, "sd1").flip(0)


@torch.no_grad()
def find_noise(denoised: Denoised, init_latents: torch.Tensor, sigmas: torch.Tensor, *,
               sigma_adjustment: bool = False, on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The noise for ``init_latents`` (see the module docstring); ``sigmas`` ascend from 0."""
    x = init_latents.to(torch.float32).clone()
    values = [float(s) for s in sigmas]
    total = len(values) - 1
    for i in range(1, len(values)):
        low, high = values[i - 1], values[i]
        if sigma_adjustment:
            # evaluated where the latents are (the first step at the next sigma's timestep, the
            # direction then halved), as briansemrau suggested in A1111 issue 736
            x0 = denoised(x, low, high if i == 1 else low)
            d = (x - x0) / (2 * high) if i == 1 else (x - x0) / low
        else:
            x0 = denoised(x, high, high)
            d = (x - x0) / high
        x = x + d * (high - low)
        if on_step is not None:
            on_step(i, total)
    if sigma_adjustment:
        return x / values[-1]
    return x / x.std()


@dataclass
class EpsilonOrV:
    """A UNet's raw prediction (``call(x, t, cond)``, diffusers' timesteps) as k-diffusion's
    denoised x0 with classifier-free guidance: the scalings of its parametrisation."""

    call: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]
    training: TrainingSigmas
    prediction_type: str  # "epsilon" or "v_prediction"
    cond: dict
    uncond: dict
    cfg_scale: float

    def __call__(self, x: torch.Tensor, sigma: float, t_sigma: float) -> torch.Tensor:
        if sigma == 0:  # c_out is 0: the prediction is the latents themselves
            return x
        c_in = 1.0 / (sigma ** 2 + 1) ** 0.5
        t = self.training.sigma_to_t(torch.tensor([t_sigma])).to(x.device).expand(x.shape[0])
        rows = [self.cond] if self.cfg_scale == 1.0 else [self.uncond, self.cond]
        outs = [self._x0(x, self.call(x * c_in, t, cond), sigma) for cond in rows]
        if len(outs) == 1:
            return outs[0]
        uncond, cond = outs
        return uncond + (cond - uncond) * self.cfg_scale

    def _x0(self, x: torch.Tensor, out: torch.Tensor, sigma: float) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return x - sigma * out
        return x / (sigma ** 2 + 1) - out * (sigma / (sigma ** 2 + 1) ** 0.5)


@dataclass
class StartNoise:
    """What a job hook sees when img2img is about to start (``JobHooks.start_noise``): the noise the
    job would start from and the means to make another. The noise returned is in the sampler's
    units: sampling starts from ``init_latents + sigma_start * noise``."""

    noise: torch.Tensor  # the seeds' noise, as the job would use it (noise multiplier applied)
    init_latents: torch.Tensor
    seeds: list[int]
    first_sigma: Callable[[], float]  # the first sigma of the sampler's whole schedule (A1111's sigmas[0])
    invert: Callable[..., torch.Tensor]  # (prompt, negative, cfg_scale, steps, sigma_adjustment) -> noise
    seed_noise: Callable[[list[int]], torch.Tensor]  # the noise of other seeds, one per picture


def start_for(model, scheduler, noise: torch.Tensor, init_latents: torch.Tensor, seeds: list[int], conds_for,
              steps: int, randn_source: str) -> StartNoise:
    """The :class:`StartNoise` of one img2img batch. ``conds_for(model, prompts, negatives, length)``
    encodes prompts as the job does (clip skip, emphasis, embeddings; an inpainting model's mask).
    Nothing is computed until a hook asks."""
    from . import model_ops, rng
    from .types import RequestError

    def training() -> TrainingSigmas:
        if model.spec.prediction_type not in ("epsilon", "v_prediction"):
            raise RequestError("sd_model_checkpoint", "finding the noise of a picture needs an SD 1.x, 2.x or XL "
                                                      "model (flow models such as SD3 and Flux have no sigmas for it)")
        return TrainingSigmas.from_config(rescale_betas_zero_snr=bool(model.spec.zero_terminal_snr))

    def first_sigma() -> float:
        """Read off the scheduler's own noising at its first timestep: every scheduler noises as
        ``c * (x0 + sigma * noise)`` (c = 1 for Euler's sigma space, sqrt(alpha_cumprod) for DDIM's)."""
        training()
        scheduler.set_timesteps(steps, device=noise.device)  # denoise.sample sets them again
        first = scheduler.timesteps[:1]
        one, zero = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
        scale = float(scheduler.add_noise(one, zero, first).flatten()[0])
        return float(scheduler.add_noise(zero, one, first).flatten()[0]) / scale

    def invert(prompt: str, negative: str, cfg_scale: float, decode_steps: int, sigma_adjustment: bool = False,
               on_step=None) -> torch.Tensor:
        sigmas_of = training()
        count = init_latents.shape[0]
        cond, uncond = conds_for(model, [prompt] * count, [negative] * count, 1).cond_for_step(0)
        denoised = EpsilonOrV(model_ops.denoiser(model), sigmas_of, model.spec.prediction_type, cond, uncond,
                              float(cfg_scale))
        return find_noise(denoised, init_latents, inversion_sigmas(int(decode_steps), sigmas_of),
                          sigma_adjustment=bool(sigma_adjustment), on_step=on_step).to(noise.dtype)

    def seed_noise(other_seeds: list[int]) -> torch.Tensor:
        return rng.create_noise(tuple(init_latents.shape[1:]), list(other_seeds), device=noise.device,
                                source=randn_source).to(noise.dtype)

    return StartNoise(noise, init_latents, list(seeds), first_sigma, invert, seed_noise)
