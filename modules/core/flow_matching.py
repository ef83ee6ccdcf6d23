"""Flow-matching sampling (Flux.1, SD3) behind the scheduler API the sampling loop speaks.

A flow model sees ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and predicts the velocity
``v = noise - x0``; sigma runs from 1 (pure noise) to 0. The schedule is ``steps`` evenly spaced
sigmas from 1 down to ``1 / steps`` (SD3: to its smallest shifted training sigma), bent by a shift: a fixed one (``shift * s / (1 + (shift - 1) * s)``,
SD3's 3.0, Flux schnell's 1.0) or, for Flux dev, one that grows with the picture's size
(``mu`` linear in the number of latent patches between 256 and 4096, then
``e^mu / (e^mu + 1 / s - 1)``), as the models were trained. The timestep the model sees is
``1000 * sigma``. Euler steps ``x + (sigma_next - sigma) * v``.

A1111's other samplers and schedule types run on the flow as ComfyUI runs them on its flow model
sampling (training sigmas ``shift(t / 1000)``, t = 1..1000): :func:`schedule_sigmas` makes the
schedule types' sigmas, :class:`FlowSpace` tells the noise-adding k-diffusion algorithms how a flow
is noised, :class:`FlowUniPCScheduler` and :class:`FlowCFGPPScheduler` are UniPC and DDIM CFG++.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from .sigma_schedules import TrainingSigmas, sigmas_for

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


class FlowCFGPPScheduler(FlowEulerScheduler):
    """A1111's DDIM CFG++ on a flow model, as ComfyUI's euler_(ancestral_)cfg_pp runs on one: the
    guidance (scale / 12.5) gives the x0 estimate, the unconditional prediction the direction back
    to the next sigma, ``x' = (1 - s') x0 + s_down (x - (1 - s) x0_uncond) / s``; eta (A1111's
    eta_ddim) splits s' k-diffusion's ancestral way in ``sigma / alpha`` and adds the rest as noise.
    ``sigmas_for(steps)``: the schedule's sigmas. The loop hands ``step`` the unconditional
    prediction as ``noise_uncond`` (``needs_uncond_prediction``)."""

    needs_uncond_prediction = True
    cfg_scale_multiplier = 1 / 12.5

    def __init__(self, sigmas_for: Callable[[int], torch.Tensor], eta: float = 0.0):
        super().__init__(FlowShift(), seq_len=0)  # (its schedule comes from sigmas_for)
        self.sigmas_for, self.eta = sigmas_for, eta

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        sigmas = self.sigmas_for(num_inference_steps)
        self.sigmas = sigmas.to(device)
        self.timesteps = (sigmas[:-1] * NUM_TRAIN_TIMESTEPS).to(device)
        self._index = self._begin = 0

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, noise_uncond=None, generator=None,
             return_dict: bool = True):
        sigma, sigma_next = float(self.sigmas[self._index]), float(self.sigmas[self._index + 1])
        self._index += 1
        x, v = sample.float(), model_output.float()
        denoised = x - sigma * v
        denoised_uncond = denoised if noise_uncond is None else x - sigma * noise_uncond.float()
        if sigma_next == 0:
            prev = denoised
        else:
            alpha, alpha_next = 1 - sigma, 1 - sigma_next
            toward_noise = (x - alpha * denoised_uncond) / sigma
            # k-diffusion's ancestral split of sigma / alpha (ratio: that of sigma_next's to sigma's)
            ratio = (sigma_next / alpha_next) * alpha / sigma
            up = min(sigma_next / alpha_next, self.eta * sigma_next / alpha_next * (1 - ratio ** 2) ** 0.5)
            down = alpha_next * ((sigma_next / alpha_next) ** 2 - up ** 2) ** 0.5
            prev = alpha_next * denoised + down * toward_noise
            if up > 0:
                prev = prev + alpha_next * up * randn_tensor(sample.shape, generator=generator, device=sample.device,
                                                             dtype=torch.float32)
        return SimpleNamespace(prev_sample=prev.to(sample.dtype), pred_original_sample=denoised)


# ---- A1111's samplers and schedule types on a flow model ----------------------------------------

PERCENT_OFFSET = 1e-4  # ComfyUI's offset of a first sigma of 1 for the SDE solvers (log-SNR -inf there)


def model_sigmas(shift: FlowShift, seq_len: int) -> torch.Tensor:
    """The model's 1000 training sigmas, ascending: ``shift(t / 1000)`` for t = 1 .. 1000 (ComfyUI's
    ``ModelSamplingDiscreteFlow`` / ``ModelSamplingFlux``): from its shifted sigma_min to 1."""
    t = torch.arange(1, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float64) / NUM_TRAIN_TIMESTEPS
    return shift.apply(t, seq_len).to(torch.float32)


class FlowSpace:
    """The flow parametrisation for the noise-adding samplers (:mod:`modules.core.ksampling_algorithms`):
    ``x = (1 - sigma) x0 + sigma noise``, alpha = 1 - sigma, half log-SNR ``log((1 - sigma) / sigma)``
    (ComfyUI's CONST model sampling)."""

    flow = True

    def __init__(self, shift: FlowShift, seq_len: int):
        # where the SDE solvers start instead of sigma 1: the sigma at ComfyUI's percent 1e-4
        self.top = float(shift.apply(torch.tensor(1.0 - PERCENT_OFFSET, dtype=torch.float64), seq_len))

    def alpha(self, sigma):
        return 1 - sigma

    def half_log_snr(self, sigma):
        return torch.as_tensor(sigma).logit().neg()

    def sigma_of(self, half_log_snr):
        return torch.as_tensor(half_log_snr).neg().sigmoid()

    def first(self, sigmas: torch.Tensor) -> torch.Tensor:
        if len(sigmas) > 1 and sigmas[0] >= 1:
            sigmas = sigmas.clone()
            sigmas[0] = self.top
        return sigmas

    def level(self, ve_sigma: float) -> float:
        return ve_sigma / (1 + ve_sigma)

    def ancestral_down(self, sigma, sigma_next, eta: float):
        """ComfyUI's RF ancestral step: eta 1 goes down to sigma_next^2 / sigma, eta 0 to sigma_next."""
        return sigma_next * (1 + (sigma_next / sigma - 1) * eta)

    def lift(self, sigma_from, sigma_to):
        scale = (1 - sigma_to) / (1 - sigma_from)
        return scale, max(sigma_to ** 2 - (scale * sigma_from) ** 2, 0) ** 0.5


def _sgm_uniform(n: int, sigmas: torch.Tensor, shift: FlowShift, seq_len: int, lo: float, hi: float) -> list[float]:
    """ComfyUI's sgm_uniform: n timesteps evenly from the top's down (the last one left out)."""
    t = torch.linspace(hi * NUM_TRAIN_TIMESTEPS, lo * NUM_TRAIN_TIMESTEPS, n + 1, dtype=torch.float64)[:-1]
    return shift.apply(t / NUM_TRAIN_TIMESTEPS, seq_len).tolist() + [0.0]


def _normal(n: int, sigmas: torch.Tensor, shift: FlowShift, seq_len: int, lo: float, hi: float) -> list[float]:
    """ComfyUI's normal: n timesteps evenly from the top's to the bottom's (no 0 after a bottom of 0)."""
    bottom = float(shift.apply(torch.tensor(lo, dtype=torch.float64), seq_len))
    zero_end = math.isclose(bottom, 0, abs_tol=1e-5)
    t = torch.linspace(hi * NUM_TRAIN_TIMESTEPS, lo * NUM_TRAIN_TIMESTEPS, n + (1 if zero_end else 0),
                       dtype=torch.float64)
    return shift.apply(t / NUM_TRAIN_TIMESTEPS, seq_len).tolist() + ([] if zero_end else [0.0])


def _kl_optimal(n: int, sigmas: torch.Tensor, shift: FlowShift, seq_len: int, lo: float, hi: float) -> list[float]:
    """ComfyUI's KL optimal: n sigmas evenly in arctan(sigma) from the top to the bottom, then 0."""
    if n == 1:
        return [hi, 0.0]
    frac = torch.arange(n, dtype=torch.float64) / (n - 1)
    return (frac * math.atan(lo) + (1 - frac) * math.atan(hi)).tan().tolist() + [0.0]


def _beta(n: int, sigmas: torch.Tensor, shift: FlowShift, seq_len: int, lo: float, hi: float,
          alpha: float = 0.6, beta: float = 0.6) -> list[float]:
    """ComfyUI's beta: training sigmas at the Beta(alpha, beta) quantiles of n evenly spaced points,
    repeats dropped, then 0."""
    from scipy import stats

    quantiles = 1 - np.linspace(0, 1, n, endpoint=False)
    picks = np.rint(stats.beta.ppf(quantiles, alpha, beta) * (len(sigmas) - 1))
    out, last = [], None
    for t in picks:
        if t != last:
            out.append(float(sigmas[int(t)]))
        last = t
    return out + [0.0]


# A1111's schedule types that ComfyUI computes on the flow model's timesteps; the rest (Uniform,
# Karras, Exponential, Polyexponential, Simple, DDIM) are A1111's on the model's sigmas
_TIMESTEP_SCHEDULES = {"sgm_uniform": _sgm_uniform, "normal": _normal, "kl_optimal": _kl_optimal, "beta": _beta}
SCHEDULE_IDS = ("uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal", "simple",
                "normal", "ddim", "beta")


def schedule_sigmas(schedule_id: str, steps: int, shift: FlowShift, seq_len: int, discard_penultimate: bool = False,
                    *, sigma_min: float | None = None, sigma_max: float | None = None, rho: float | None = None,
                    alpha: float | None = None, beta: float | None = None) -> torch.Tensor:
    """An A1111 schedule type's sigmas on the flow model (float32, high to low, ending at 0), as
    ComfyUI's ``calculate_sigmas`` makes them on its flow model sampling: Karras, Exponential,
    Polyexponential and KL Optimal over [shifted sigma_min, 1]; Simple and DDIM pick training
    sigmas; SGM Uniform and Normal space timesteps (1000 * sigma) evenly and shift them; Beta
    picks training sigmas at Beta quantiles; Uniform is k-diffusion's evenly spaced training
    timesteps. ``sigma_min``/``sigma_max``/``rho``/``alpha``/``beta``/``discard_penultimate``: A1111's
    sampler parameters, as :func:`~modules.core.sigma_schedules.sigmas_for` takes them."""
    if schedule_id not in SCHEDULE_IDS:
        raise ValueError(f"no flow schedule {schedule_id!r}; known: {', '.join(SCHEDULE_IDS)}")
    sigmas = model_sigmas(shift, seq_len)
    if schedule_id not in _TIMESTEP_SCHEDULES:
        return sigmas_for(schedule_id, steps, TrainingSigmas.from_sigmas(sigmas), "flow", discard_penultimate,
                          sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, alpha=alpha, beta=beta)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lo = float(sigmas[0]) if sigma_min is None else float(sigma_min)
    hi = float(sigmas[-1]) if sigma_max is None else float(sigma_max)
    extra = {}
    if schedule_id == "beta":
        extra = {"alpha": 0.6 if alpha is None else alpha, "beta": 0.6 if beta is None else beta}
    n = steps + (1 if discard_penultimate else 0)
    out = torch.tensor(_TIMESTEP_SCHEDULES[schedule_id](n, sigmas, shift, seq_len, lo, hi, **extra),
                       dtype=torch.float32)
    if discard_penultimate:
        out = torch.cat([out[:-2], out[-1:]])
    return out


UNIPC_END = 1e-3  # where UniPC ends instead of 0 (ComfyUI's last timestep for it; bh1 divides by 0 there)


class FlowUniPCScheduler(UniPCMultistepScheduler):
    """A1111's UniPC on a flow model: diffusers' UniPC in its flow form (alpha = 1 - sigma, the
    model's velocity as ``flow_prediction``) on the sigmas ``sigmas_for(steps)`` gives (a schedule
    type's, ending at 0). Like ComfyUI's UniPC it ends at sigma 1e-3 instead of 0 (half the last
    sigma where the schedule is already there); the model sees the unrounded ``1000 * sigma``.
    ``config``: UniPC's solver options (A1111's variant, order, lower order final)."""

    def __init__(self, sigmas_for: Callable[[int], torch.Tensor], **config):
        super().__init__(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0,
                         final_sigmas_type="zero", **config)
        self.sigmas_for = sigmas_for

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu=None):
        planned = self.sigmas_for(num_inference_steps)
        positive = planned[planned > 0].double()
        super().set_timesteps(sigmas=positive.numpy(), device=device)
        self.sigmas[-1] = min(UNIPC_END, float(positive[-1]) / 2)
        self.timesteps = (self.sigmas[:-1] * NUM_TRAIN_TIMESTEPS).to(device)
