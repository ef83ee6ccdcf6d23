"""Flow-matching sampling (Flux.1, SD3) behind the scheduler API the sampling loop speaks.

A flow model sees ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and predicts the velocity
``v = noise - x0``; sigma runs from 1 (pure noise) to 0. The schedule is ``steps`` evenly spaced
sigmas from 1 down to ``1 / steps`` (SD3: to its smallest shifted training sigma), bent by a shift: a fixed one (``shift * s / (1 + (shift - 1) * s)``,
SD3's 3.0, Flux schnell's 1.0) or, for Flux dev, one that grows with the picture's size
(``mu`` linear in the number of latent patches between 256 and 4096, then
``e^mu / (e^mu + 1 / s - 1)``), as the models were trained. The timestep the model sees is
``1000 * sigma``. Euler steps ``x + (sigma_next - sigma) * v``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class FlowShift:
    """How a family bends the schedule."""

    shift: float = 1.0  # fixed shift (used when dynamic is False)
    dynamic: bool = False  # Flux dev: from the picture's size
    # where the evenly spaced sigmas end before the shift: 1 / steps (Flux), or the shifted schedule's
    # smallest training sigma (SD3, as diffusers' scheduler and ComfyUI's "simple" run it)
    to_training_end: bool = False
    base_seq_len: int = 256
    max_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15

    def mu(self, seq_len: int) -> float:
        slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        return self.base_shift + slope * (seq_len - self.base_seq_len)

    def apply(self, sigmas: torch.Tensor, seq_len: int) -> torch.Tensor:
        if self.dynamic:
            e = math.exp(self.mu(seq_len))
            return e / (e + (1 / sigmas - 1))
        return self.shift * sigmas / (1 + (self.shift - 1) * sigmas)


def flow_sigmas(shift: FlowShift, seq_len: int, steps: int) -> torch.Tensor:
    """``steps`` sigmas from 1 down, bent by the shift, then 0 (float32)."""
    end = 1.0 / steps
    if shift.to_training_end:
        end = float(shift.apply(torch.tensor(1.0 / NUM_TRAIN_TIMESTEPS, dtype=torch.float64), seq_len))
    base = torch.linspace(1.0, end, steps, dtype=torch.float64)
    return torch.cat([shift.apply(base, seq_len).to(torch.float32), torch.zeros(1)])


class FlowEulerScheduler:
    """Euler on the flow-matching schedule, with the diffusers scheduler methods the loop uses."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, shift: FlowShift, seq_len: int):
        self.shift = shift
        self.seq_len = seq_len  # latent patches of the picture (dynamic shift)
        self.config = SimpleNamespace(num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow")
        self.sigmas = self.timesteps = None
        self._index = 0
        self._begin = 0

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        sigmas = flow_sigmas(self.shift, self.seq_len, num_inference_steps)
        self.sigmas = sigmas.to(device)
        self.timesteps = (sigmas[:-1] * NUM_TRAIN_TIMESTEPS).to(device)
        self._index = self._begin = 0

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin = self._index = begin_index

    def _sigma_at(self, timestep) -> torch.Tensor:
        position = (self.timesteps - timestep).abs().argmin()
        return self.sigmas[position]

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sigma = torch.stack([self._sigma_at(t) for t in timesteps.reshape(-1)]).to(original.dtype)
        sigma = sigma.reshape(-1, *([1] * (original.ndim - 1)))
        return (1 - sigma) * original + sigma * noise

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        sigma, sigma_next = self.sigmas[self._index], self.sigmas[self._index + 1]
        self._index += 1
        prev = sample.float() + (sigma_next - sigma) * model_output.float()
        denoised = sample.float() - sigma * model_output.float()
        return SimpleNamespace(prev_sample=prev.to(sample.dtype), pred_original_sample=denoised)
