"""A1111's "DDIM CFG++": DDIM whose renoising direction is the *unconditional* noise prediction.

CFG++ (Chung et al. 2024, "Manifold-constrained Classifier Free Guidance"): the guided prediction
(with the CFG scale divided by 12.5, so A1111's 0..12.5 maps to CFG++'s 0..1) gives the x0
estimate, the unconditional one the direction back to the next noise level:

    x0    = (x - sqrt(1 - a_t) * eps_guided) / sqrt(a_t)
    x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev - s_t^2) * eps_uncond + s_t * noise

The timestep grid is A1111's timestep samplers' one: ``range(0, 1000, 1000 // steps) + 1``, walked
from the top down to its second entry (so ``steps - 1`` model calls, as in A1111), each step going to
the next lower grid point. A1111's eta for DDIM defaults to 0 (deterministic).

The loop (:func:`modules.core.denoise.sample`) reads ``cfg_scale_multiplier`` and, because of
``needs_uncond_prediction``, always runs the unconditional pass and hands it to ``step`` as
``noise_uncond``. v-prediction models' outputs are turned into eps as A1111's
``CompVisTimestepsVDenoiser`` does (sqrt(a_t) * v + sqrt(1 - a_t) * x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .sigma_schedules import TrainingSigmas


@dataclass
class DDIMCFGPPOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class DDIMCFGPPScheduler:
    order = 1
    cfg_scale_multiplier = 1 / 12.5
    needs_uncond_prediction = True

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", prediction_type: str = "epsilon",
                 rescale_betas_zero_snr: bool = False, eta: float = 0.0, steps_offset: int = 1,
                 timestep_spacing: str = "leading"):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', not {prediction_type!r}")
        if (steps_offset, timestep_spacing) != (1, "leading"):
            raise ValueError("DDIM CFG++ walks A1111's grid (leading spacing, offset 1) only")
        training = TrainingSigmas.from_config(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                              beta_end=beta_end, beta_schedule=beta_schedule,
                                              rescale_betas_zero_snr=rescale_betas_zero_snr)
        self.alphas_cumprod = training.alphas_cumprod
        self.config = SimpleNamespace(num_train_timesteps=num_train_timesteps, prediction_type=prediction_type,
                                      eta=eta, steps_offset=steps_offset, timestep_spacing=timestep_spacing,
                                      rescale_betas_zero_snr=rescale_betas_zero_snr)
        self.init_noise_sigma = 1.0
        self.timesteps = None

    def set_timesteps(self, num_inference_steps: int, device=None):
        last = self.config.num_train_timesteps - 1
        stride = self.config.num_train_timesteps // num_inference_steps
        self._grid = torch.arange(0, self.config.num_train_timesteps, stride).add(1).clamp(0, last)
        self.timesteps = self._grid[1:].flip(0).to(device)
        self.num_inference_steps = num_inference_steps

    def set_begin_index(self, begin_index: int = 0):
        pass  # every step is located by its timestep

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def _alpha(self, timestep) -> float:
        return float(self.alphas_cumprod[int(timestep)])

    def _eps(self, output: torch.Tensor, sample: torch.Tensor, a_t: float) -> torch.Tensor:
        if self.config.prediction_type == "epsilon":
            return output
        return math.sqrt(a_t) * output + math.sqrt(1 - a_t) * sample

    def step(self, model_output, timestep, sample, noise_uncond=None, generator=None, return_dict: bool = True):
        """``model_output``: the guided prediction; ``noise_uncond``: the unconditional one (without
        it this is plain DDIM)."""
        position = int((self._grid == int(timestep)).nonzero()[0])
        if position == 0:
            raise ValueError(f"timestep {int(timestep)} is the bottom of the grid; no step leads below it")
        a_t, a_prev = self._alpha(self._grid[position]), self._alpha(self._grid[position - 1])
        eps = self._eps(model_output, sample, a_t)
        eps_uncond = eps if noise_uncond is None else self._eps(noise_uncond, sample, a_t)
        eta = self.config.eta
        s_t = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) if eta else 0.0
        pred_x0 = (sample - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        prev = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - s_t ** 2) * eps_uncond
        if s_t:
            prev = prev + s_t * randn_tensor(sample.shape, generator=generator, device=sample.device,
                                             dtype=sample.dtype)
        if not return_dict:
            return (prev, pred_x0)
        return DDIMCFGPPOutput(prev_sample=prev, pred_original_sample=pred_x0)

    def add_noise(self, original_samples, noise, timesteps):
        a = self.alphas_cumprod[torch.as_tensor(timesteps).long().cpu()].to(original_samples.device,
                                                                            original_samples.dtype)
        while a.ndim < original_samples.ndim:
            a = a.unsqueeze(-1)
        return a.sqrt() * original_samples + (1 - a).sqrt() * noise
